"""
Training on several processes with torch's DistributedDataParallel (DDP), started by torchrun.

    torchrun --standalone --nproc_per_node=2 train.py showo --dataset shapes --stage 1   # 2 CPU processes
    torchrun --standalone --nproc_per_node=8 train.py --dataset cifar10 --data-dir DIR   # 8 GPUs, the whole job

torchrun starts N copies of the program, each with its RANK, LOCAL_RANK and WORLD_SIZE in the
environment. Every copy builds the same global batch of each step (a pure function of the seed and
the step: data/tasks.py), keeps its share of the rows and runs forward and backward on that share
only; during the backward DDP averages the gradients over the processes (an all-reduce per bucket
of parameters), so every process takes the same optimizer step from the same weights (DDP copies
rank 0's weights to the others when it wraps the model). Only rank 0 writes logs, pictures and
checkpoints. On CUDA each process drives GPU LOCAL_RANK and the processes talk over NCCL; elsewhere
they share the CPU and talk over gloo. Nothing else changes: the options, the batch size (the
global one), the schedule and --resume are those of one process.

Exactness. Each loss term of equation 4 is a mean over the positions that carry it in the whole
batch, and each share holds its own number of those positions, so the mean of the shares' means is
not the batch's mean. Each process therefore counts its positions (model.loss_positions), the counts
are summed over the processes, and each process backpropagates N x (its sum of losses) / (the global
count): DDP's average of the N gradients is then exactly the gradient one process would compute on
the whole batch. The image tokenizer's terms are means over equal shares, which average exactly,
except the entropy penalty's batch term, an entropy of the mean code distribution over the batch:
each process takes it over its own share (as MAGVIT-v2 does per device), so N processes train the
tokenizer almost, but not exactly, as one would.
"""
import os

import torch
import torch.distributed as dist

from model import joint_loss, loss_positions


def start(batch_size=None):
    """Join the process group when torchrun started several processes -> (rank, world size);
    (0, 1) for a plain `python train.py`. On CUDA, process k then uses GPU k of its machine.
    batch_size: the training batch, of which every process needs at least one row."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if batch_size is not None and batch_size < world:
        raise SystemExit(f"error: --batch-size {batch_size} gives some of the {world} processes no row")
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # "cuda" now means this process's GPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def wrap(module, device, world):
    """The module that training calls: DDP around it on several processes, itself on one.
    find_unused_parameters: a share may hold no row of some task (e.g. no text-to-image row, so no
    [MASK] slot for the slot embedding); DDP then still averages every gradient, that one as 0."""
    if world == 1:
        return module
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def share(rows, rank, world, first=0):
    """This process's rows of a batch tensor (B, ...): those whose place in the whole batch
    (first + index) is rank modulo world. first: the place of rows[0] when a batch is split into
    groups, so that the processes' shares of all groups together differ by at most one row."""
    return rows[[i for i in range(len(rows)) if (first + i) % world == rank]]


def all_sum(values):
    """{name: number} -> the same names, each summed over the processes (one all-reduce). Every
    process must pass the same names in the same order."""
    if not dist.is_initialized():
        return dict(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only
    total = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return dict(zip(values, total.tolist()))


def barrier():
    """Wait until every process gets here (a no-op on one process): e.g. until rank 0 has written
    the checkpoint that every process reads next."""
    if dist.is_initialized():
        dist.barrier()


# -----------------------------------------------------------------------------
# Show-o's step on a share of the batch

def process_share(groups, rank, world):
    """This process's rows of a step's groups (distributed.share), numbered across the groups so the
    processes' shares differ by at most one row; a group this process has no row of is left out."""
    mine, first = [], 0
    for group in groups:
        rows = tuple(share(t, rank, world, first) for t in group)  # (ids, labels, task)
        first += len(group[0])
        if len(rows[0]):
            mine.append(rows)
    return mine


def whole_batch_loss(losses, groups, weights, space, world):
    """Equation 4 for the whole batch from this process's share of it (distributed.py, "Exactness"):
    each term's mean over the share, times the share's count of loss positions, over the batch's
    count, times the number of processes DDP averages over. -> (loss to backpropagate, the batch's
    per-task mean losses, as one process on the whole batch would log them)."""
    counts = dict.fromkeys(("t2i", "mmu", "lm"), 0)
    for _, labels, task in groups:
        for name, where in loss_positions(labels, task, space).items():
            counts[name] += int(where.sum())
    sums = {f"{k} sum": losses[k].item() * n if k in losses else 0.0 for k, n in counts.items()}
    totals = all_sum({**counts, **sums})  # the batch's counts and loss sums, in one all-reduce
    scaled = {k: v * (counts[k] * world / totals[k]) for k, v in losses.items()}  # exactly v on one process
    return joint_loss(scaled, weights), {k: totals[f"{k} sum"] / totals[k] for k in counts if totals[k]}
