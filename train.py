"""
Training: the tokenizers, Show-o's three stages, and the pipeline that runs them all.

    python train.py                      # the main job: tokenizers, Show-o's three stages, evaluation (shapes)
    python train.py --dataset cifar10 --data-dir ../shared/data     # the same pipeline on real photos
    python train.py tokenizer --help     # every option of a part, with its presets
    python train.py tokenizer --dataset cifar10 --data-dir ../shared/data --out out/cifar10
    python train.py showo --stage 2 --init out/shapes/stage1/showo.pt    # one stage of Show-o
    torchrun --standalone --nproc_per_node=2 train.py ...                 # any of these on 2 processes

`tokenizer` trains (1) a small byte-level BPE vocabulary on the dataset's captions (seconds) and
(2) the LFQ image tokenizer of tokenizer.py (MAGVIT-v2, arXiv 2310.05737): reconstruction MSE + 0.25
commitment + an entropy penalty that keeps the 2^K codebook in use. Every --eval-every steps it
measures PSNR and codebook use on held-out images, writes recon.png (originals above,
reconstructions below) and a checkpoint.

`showo` trains the Show-o transformer of model.py for one of the paper's three stages (section 3.4)
on images encoded once by the image tokenizer, with mixed batches of text-to-image, captioning,
question-answering and text-only rows (data/tasks.py) and the joint loss
L = w_t2i L_MTP + w_mmu L_MMU + w_lm L_LM (equation 4). log.jsonl holds every step's per-task losses.

Nothing is lost on a crash: checkpoints are written atomically (temporary file, then rename), and
--resume continues from the last one. Every step's data, condition dropout and masks are a pure
function of (seed, stage, step), so a run resumed after any crash, even kill -9 between two
checkpoints, has exactly the losses the uninterrupted run would have had (on a CPU; CUDA kernels
such as SDPA's backward are not bit-deterministic).

Several processes (torchrun): each builds the step's whole batch, takes its share of the rows and
backpropagates its part of the batch's loss; the gradients summed over the processes (one
all-reduce) are exactly the whole batch's (`batch_loss`). Process k drives GPU k (NCCL), or all
share the CPU (gloo); rank 0 alone writes files. Options, batch size and --resume are as on one.
"""
import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

import data
from data.tasks import TASK_NAMES, batch_indices, build_batch, seeded, showo_batch, task_counts, task_rows
from model import (Showo, ShowoConfig, autocast, load_showo, loss_positions, optimizer_groups, pick_device,
                   showo_checkpoint)
from tokenizer import (ImageTokenizer, ImageTokenizerConfig, TextTokenizer, bpe_text, image_tokenizer_checkpoint,
                       images_to_tensor, load_image_tokenizer, option, psnr, read_checkpoint, save_checkpoint, tensor_to_images,
                       train_bpe)

# -----------------------------------------------------------------------------
# Configs: one dataclass per trainer, with the model's own config inside; presets are plain dicts


@dataclass
class RunConfig:
    """What both trainers' runs share: the data, the device and precision, the run folder. Each trainer's
    config adds its own options and its model's config (`model`), whose fields are options too."""
    dataset: str = option("shapes", "shapes | cifar10 | coco | folder")
    data_dir: str = option(None, "where cifar10/coco/folder data lives (shapes needs none)")
    limit: int = option(None, "use at most this many training images")
    seed: int = option(0, "data order, masks, initial weights and the shapes world all follow it")
    device: str = option("auto", "auto (cuda -> mps -> cpu) | cpu | cuda | cuda:N | mps")
    compile: bool = option(False, "torch.compile the model (pays on GPUs; minutes of compiling on a CPU)")
    bf16: bool = option(False, "bf16 autocast (pays on GPUs; slower on most CPUs)")
    resume: bool = option(False, "continue from the run folder's checkpoint")
    max_steps: int = option(1000, "optimizer steps in all (the schedule's length: --resume needs the same)")
    batch_size: int = option(64, "images (tokenizer) or rows (Show-o) per step")
    lr: float = option(1e-3, "peak AdamW learning rate")
    warmup_steps: int = option(50, "linear warm-up, then cosine decay to lr * min_lr_frac")
    min_lr_frac: float = option(0.1, "final learning rate as a fraction of --lr")
    grad_clip: float = option(1.0, "clip the gradient's global norm to this")
    out: str = option(None, "run folder (None: out/DATASET for the tokenizers, out/DATASET/stageN for Show-o)")
    eval_every: int = option(100, "evaluate and write a checkpoint every this many steps")

    def check(self, at_least_one):
        """A known dataset with its data folder, positive counts."""
        if self.dataset not in data.DATASETS:
            raise ValueError(f"--dataset must be one of {', '.join(data.DATASETS)}")
        if (self.dataset == "shapes") != (self.data_dir is None):
            raise ValueError(f"--data-dir is needed for {self.dataset}: the folder holding its data" if self.dataset != "shapes"
                             else "--data-dir is not needed for shapes: the world is generated")
        for name in at_least_one + ("limit",):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")


@dataclass
class TokenizerTrainConfig(RunConfig):
    model: ImageTokenizerConfig = field(default_factory=ImageTokenizerConfig)
    eval_images: int = option(500, "held-out images for the periodic evaluation")
    bpe_vocab: int = option(512, "text tokenizer size (stops early if the captions run out of pairs)")
    # the tokenizer's own defaults of four RunConfig options (a field declared again replaces its default)
    max_steps: int = option(1500, "optimizer steps in all (the schedule's length: --resume needs the same)")
    lr: float = option(2e-3, "peak AdamW learning rate")
    min_lr_frac: float = option(0.05, "final learning rate as a fraction of --lr")
    warmup_steps: int = option(100, "linear warm-up, then cosine decay to lr * min_lr_frac")

    def __post_init__(self):
        self.check(("max_steps", "batch_size", "eval_every", "eval_images"))


@dataclass
class ShowoTrainConfig(RunConfig):
    model: ShowoConfig = field(default_factory=ShowoConfig)
    tokenizer: str = option(None, "image tokenizer, text.tiktoken beside it (default: INIT/../../tokenizer.pt, else OUT/../tokenizer.pt)")
    mirror: bool = option(False, "training rows also show the image mirrored left to right (its own codes)")
    hide_codes: float = option(0.0, "understanding rows hide a share u ~ U(0, this) of their image codes behind [MASK]")
    eval_rows: int = option(256, "held-out rows for the periodic held-out losses")
    stage: int = option(1, "1: class/caption-conditional generation + captions + text; 2: captions; 3: + QA")
    init: str = option(None, "start from this Show-o checkpoint's weights (the previous stage's)")
    t2i_frac: float = option(0.5, "share of text-to-image rows (MTP loss); the shares are normalised")
    caption_frac: float = option(0.4, "share of captioning rows (understanding, NTP loss)")
    vqa_frac: float = option(0.0, "share of question -> answer rows (understanding, NTP loss)")
    lm_frac: float = option(0.1, "share of text-only language-modelling rows (NTP loss)")
    story_frac: float = option(0.0, "share of stories, text and images interleaved (shapes only; MTP + NTP)")
    cond_dropout: float = option(0.1, "probability that a text-to-image prompt is emptied (for guidance)")
    w_t2i: float = option(1.0, "weight of the MTP loss in L = w_t2i L_MTP + w_mmu L_MMU + w_lm L_LM (equation 4)")
    w_mmu: float = option(1.0, "weight of the understanding rows' NTP loss")
    w_lm: float = option(0.1, "weight of the text-only rows' NTP loss (Show-o's configs: 1, 1, 0.1)")
    weight_decay: float = option(0.05, "on linear-layer matrices only (not norms, biases, embeddings)")

    def __post_init__(self):
        self.check(("max_steps", "batch_size", "eval_every", "eval_rows"))
        if self.stage not in STAGES:
            raise ValueError(f"--stage must be 1, 2 or 3, not {self.stage}")
        if not 0 <= self.hide_codes <= 1 or not 0 <= self.cond_dropout <= 1:
            raise ValueError("--hide-codes and --cond-dropout must be in [0, 1]")
        shares = [getattr(self, f"{task}_frac") for task in TASK_NAMES]
        if min(shares) < 0 or sum(shares) <= 0:
            raise ValueError("the task shares (--t2i-frac, ...) must be >= 0 and not all 0")
        if self.story_frac > 0 and self.dataset != "shapes":
            raise ValueError("--story-frac: stories exist in the shapes world only")
        if self.mirror and self.dataset == "shapes":  # a mirrored scene contradicts every "left" and "right" said of it
            raise ValueError("--mirror is not for the shapes world: its captions and answers say left and right")


# Presets per dataset (any option of --help). shapes: 8x downsampling (4x4 tokens), K = 12 and a narrow network
# reach 100% scorer agreement for every seed tried (docs/findings.md); CIFAR-10: 4x (8x8 tokens), K = 12 for the
# whole pipeline (each code is a row of Show-o's tables), a stronger entropy penalty; coco / folder: smoke-tested.
TOKENIZER_PRESETS = {
    "shapes": dict(codebook_bits=12, channels=(32, 64, 64), max_steps=1200, eval_every=300, entropy_weight=0.025),
    "cifar10": dict(codebook_bits=12, entropy_tokens=4096, max_steps=3000, eval_every=750, entropy_weight=0.03,
                    bpe_vocab=320),
    "coco": dict(codebook_bits=12, max_steps=1000, eval_every=250, entropy_weight=0.05, bpe_vocab=2048),
    "folder": dict(codebook_bits=12, max_steps=1000, eval_every=250, entropy_weight=0.05),
}
# shapes: at a CPU budget of minutes a narrow model that takes more steps learns more than a wide one,
# and 8 heads of 16 dimensions more than 4 of 32 (docs/findings.md); both additions are on. CIFAR-10:
# mirrored and partly hidden images and codes that say their bits, against learning 10,000 images by heart.
SHOWO_PRESETS = {"shapes": dict(n_embd=128, n_head=8, lr=5e-3, slot_embedding=True, text_conv=3),
                 "cifar10": dict(mirror=True, hide_codes=0.5, code_bits=True), "coco": {}, "folder": {}}
# The paper's three stages (section 3.4) as batch mixes. Stage 1 conditions generation on class names
# where the data has classes (CIFAR-10), else on captions; stage 3 adds question -> answer rows and keeps
# the other tasks in the mix so nothing learned earlier is forgotten.
STAGES = {1: dict(t2i_frac=0.5, caption_frac=0.4, vqa_frac=0.0, lm_frac=0.1),
          2: dict(t2i_frac=0.5, caption_frac=0.5, vqa_frac=0.0, lm_frac=0.0),
          3: dict(t2i_frac=0.4, caption_frac=0.2, vqa_frac=0.4, lm_frac=0.0)}
# The pipelines (`python train.py [--dataset D]`): steps per stage on a CPU (shapes: the main job)...
PIPELINE_STEPS = {"shapes": {1: 1400, 2: 600, 3: 1400}, "cifar10": {1: 1200, 2: 200, 3: 800},
                  "coco": {1: 200, 2: 100, 3: 200}, "folder": {1: 200, 2: 100, 3: 200}}
# COCO / a folder: coco-mini's steps (80 images) x f for n training images, f = PASSES n / (Show-o's rows in all
# three stages), in [1, cap]: the cap bounds the minutes (README; past it each image is read fewer times)
PASSES, GROWTH_CAP = 15, {False: 2.4, True: 4.0}  # the cap by gpu: the CPU recipe's, --preset gpu's
GPU = dict(compile=True, bf16=True)  # ... and on one GPU (--preset gpu, the default on CUDA): larger, longer
GPU_PIPELINES = {"cifar10": dict(tokenizer=dict(GPU, channels=(128, 256), batch_size=256, max_steps=4000, eval_every=1000),
                                 showo=dict(GPU, n_layer=8, n_embd=512, n_head=8, batch_size=256),
                                 steps={1: 4000, 2: 600, 3: 2400}),
                 "coco": dict(tokenizer=dict(GPU, channels=(128, 256)), showo=dict(GPU, n_layer=8, n_embd=512, n_head=8),
                              steps={1: 1000, 2: 500, 3: 1000})}
GPU_PIPELINES["folder"] = GPU_PIPELINES["coco"]
FROM_TOKENIZERS = ("text_vocab_size", "codebook_size", "image_tokens")  # ShowoConfig fields the tokenizers set
RUN_ONLY = ("out", "resume", "device", "compile", "eval_every", "eval_images", "eval_rows", "init", "tokenizer")


def make_config(cls, values):
    """cls from one flat dict of option values: the nested model config takes its own fields."""
    nested = {f.name: make_config(f.default_factory, values) for f in fields(cls) if is_dataclass(f.default_factory)}
    return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values and f.name not in nested}, **nested)


def add_options(parser, cls, presets, title):
    """One --flag per field of cls and of the model config inside it, documented by the field's help;
    defaults stay None, so the dataset's preset (shown in the help) can fill what the user leaves out."""
    group = parser.add_argument_group(title)
    for f in fields(cls):
        if is_dataclass(f.default_factory):
            add_options(parser, f.default_factory, presets, f"the model ({f.default_factory.__name__})")
        elif f.name not in FROM_TOKENIZERS:
            shown = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else v  # noqa: E731
            notes = ", ".join(f"{k}: {shown(v[f.name])}" for k, v in presets.items() if f.name in v)
            text = f"{f.metadata['help']} [default {shown(f.default)}" + (f"; {notes}]" if notes else "]")
            kind = (dict(action=argparse.BooleanOptionalAction) if f.type is bool else
                    dict(type=lambda s: tuple(int(c) for c in s.split(","))) if f.type is tuple else dict(type=f.type))
            group.add_argument("--" + f.name.replace("_", "-"), default=None, help=text.replace("%", "%%"), **kind)


# -----------------------------------------------------------------------------
# Shared by both trainers: processes, the schedule, the update, the run folder


def start(cfg, name):
    """-> (rank, world size, device, checkpoint path). torchrun sets WORLD_SIZE and LOCAL_RANK: each
    process then joins the group and uses GPU LOCAL_RANK (or the CPU, without CUDA). An existing run
    is only continued when asked (--resume), never overwritten."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(cfg.device)
    if world > 1:
        local = int(os.environ["LOCAL_RANK"])
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
        if cfg.device not in ("auto", device.type, str(device)):
            raise ValueError(f"--device {cfg.device}: under torchrun process {local} uses {device}; leave --device out")
        if cfg.batch_size < world:
            raise ValueError(f"--batch-size {cfg.batch_size} gives some of the {world} processes no row")
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    path = os.path.join(cfg.out, name)
    if os.path.exists(path) and not cfg.resume:
        raise ValueError(f"{path} exists; pass --resume to continue it or choose another --out")
    os.makedirs(cfg.out, exist_ok=True)
    return (dist.get_rank() if world > 1 else 0), world, device, path


def process_share(groups, rank, world):
    """This process's rows of a step's groups [(ids, labels, task)]: those whose place in the whole
    batch, counted across the groups, is rank modulo world (the shares differ by at most one row)."""
    mine, first = [], 0
    for group in groups:
        keep = [i for i in range(len(group[0])) if (first + i) % world == rank]
        first += len(group[0])
        mine += [tuple(t[keep] for t in group)] if keep else []
    return mine


def lr_at(step, cfg):
    """Linear warm-up, then cosine decay from lr to lr * min_lr_frac. Warm-up keeps AdamW's first
    steps, taken with second-moment estimates from a single batch, from throwing the weights far."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def update(loss, model, optimizer, cfg, step, path, world, finite=None):
    """One optimizer step: backward, the gradients summed over the processes, the global norm
    clipped, AdamW. A NaN or infinite loss (finite: the whole batch's verdict) stops the run first."""
    if not (bool(torch.isfinite(loss)) if finite is None else finite):
        raise ValueError(f"the loss became {loss.item() if finite is None else 'nan'} at step {step}; stopped. The last "
                         f"good checkpoint is {path}; try a lower --lr")
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:  # a share without loss positions adds nothing (its gradients count as 0)
        loss.backward()
    if world > 1:  # one all-reduce of every gradient (a parameter no row of a share used counts as 0)
        params = list(model.parameters())
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        dist.all_reduce(flat)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad = g.view_as(p)
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)  # one rare batch must not undo many steps
    optimizer.step()


def resume_state(cfg, path, ckpt, optimizer):
    """A checkpoint to continue from -> its step, after loading its optimizer state. The options that
    shape the run must be the same, or the losses after resuming would not be the uninterrupted run's."""
    flat = lambda c: {**c, **c["model"]}  # noqa: E731 (the model's own options by their names)
    now, saved = flat(asdict(cfg)), flat(ckpt["train_config"])
    changed = [k for k in now if k not in RUN_ONLY + ("model",) and saved.get(k) != now[k]]
    if changed:
        raise ValueError(f"cannot resume {path} with different {', '.join('--' + k.replace('_', '-') for k in changed)} "
                         "(choose another --out)")
    optimizer.load_state_dict(ckpt["optimizer"])
    print(f"resumed from {path} at step {ckpt['step']}")
    return ckpt["step"]


def load_splits(cfg, image_size, n_eval):
    """(training data, held-out data, what its figures are of): at most n_eval of the val split (CIFAR-10:
    the test batch's first n_eval, the judge's half by default). A folder has none: say so, not pretend."""
    train_ds = data.load(cfg.dataset, "train", cfg.data_dir, image_size, cfg.limit, cfg.seed)  # shapes: seed = world
    if len(train_ds) < cfg.batch_size:
        raise ValueError(f"{len(train_ds)} training images is fewer than one batch ({cfg.batch_size}): "
                         "use more images (--limit) or a smaller --batch-size")
    if cfg.dataset == "folder":
        return train_ds, train_ds, "training-set (a folder has no held-out split)"
    eval_ds = data.load(cfg.dataset, "test" if cfg.dataset == "cifar10" else "val", cfg.data_dir, image_size, n_eval,
                        cfg.seed)
    return train_ds, eval_ds, f"held-out {eval_ds.split}"


# -----------------------------------------------------------------------------
# The tokenizers: the text BPE, then the LFQ image tokenizer


def train_text_tokenizer(ds, cfg):
    """The BPE vocabulary of every text the model reads and writes: the captions, and the questions
    and answers where there are some (else an answer such as "top left" is spelled byte by byte)."""
    path = os.path.join(cfg.out, "text.tiktoken")
    if cfg.resume and os.path.exists(path):
        return
    texts = [c for caps in ds.captions for c in caps] + [f"{q} {a}" for pairs in ds.qa or [] for q, a, _ in pairs]
    text = bpe_text(train_bpe(texts, cfg.bpe_vocab))
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)  # written before the image tokenizer's first checkpoint
    print(f"text tokenizer: {TextTokenizer(text).vocab_size}-token BPE trained on {len(texts)} lines -> {path}")


def evaluate_tokenizer_now(model, images, cfg, done):
    """Held-out PSNR and codebook use (over every held-out token: a batch of 64 x 16 tokens could never
    show 4,096 codes), and recon.png: 16 originals above their reconstructions."""
    model.eval()
    codes = model.encode_images(images)                                           # (n, h*w)
    side = cfg.model.latent_size
    recon = np.concatenate([tensor_to_images(model.decode(c.view(-1, side, side).to(next(model.parameters()).device)))
                            for c in codes.split(256)])                           # (n, H, W, 3)
    model.train()
    grid = np.concatenate([np.concatenate(list(images[:16]), 1), np.concatenate(list(recon[:16]), 1)])  # (2H, 16W, 3)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(os.path.join(cfg.out, "recon.png"))
    return dict(step=done, eval_psnr=round(float(psnr(images, recon).mean()), 3),
                eval_usage=round(codes.unique().numel() / 2 ** cfg.model.codebook_bits, 4))


def train_tokenizer(cfg):
    """`train.py tokenizer`: the BPE, then the LFQ image tokenizer (ImageTokenizer.forward gives the loss:
    MSE + commitment + entropy penalty). -> the checkpoint's path."""
    cfg.out = cfg.out or f"out/{cfg.dataset}"
    rank, world, device, path = start(cfg, "tokenizer.pt")
    torch.manual_seed(cfg.seed)  # the initial weights (the same in every process) and the entropy subsets
    train_ds, eval_ds, held_out = load_splits(cfg, cfg.model.image_size, cfg.eval_images)
    eval_images = eval_ds.images[:cfg.eval_images]
    if rank == 0:
        train_text_tokenizer(train_ds, cfg)
    model = ImageTokenizer(cfg.model).to(device).train()
    # no weight decay: a small conv autoencoder does not need it, and it pulls GroupNorm gains toward 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0,
                                  fused=device.type in ("cpu", "cuda"))
    step = 0
    if cfg.resume and os.path.exists(path):
        ckpt = read_checkpoint(path, "image_tokenizer", needs=("train_config", "optimizer", "rng"))
        step = resume_state(cfg, path, ckpt, optimizer)
        model.load_state_dict(ckpt["model"])
        torch.set_rng_state(ckpt["rng"])  # the entropy penalty's token subsets draw from it
    print(f"image tokenizer: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {cfg.model.image_size}px "
          f"-> {cfg.model.latent_size}x{cfg.model.latent_size} tokens of {cfg.model.codebook_bits} bits; {len(train_ds)} "
          f"images; evaluation on {len(eval_images)} {held_out} images; {device}" + (f", {world} processes" if world > 1 else ""))
    forward = torch.compile(model) if cfg.compile else model  # `model` is what gets saved and evaluated
    images = torch.from_numpy(train_ds.images)  # (N, H, W, 3) uint8, indexed per batch
    t0 = time.time()
    for step in tqdm(range(step, cfg.max_steps), initial=step, total=cfg.max_steps, desc="tokenizer",
                     dynamic_ncols=True, mininterval=1.0, disable=rank > 0):
        batch = batch_indices(step, len(images), cfg.batch_size, cfg.seed)[rank::world]  # this process's share
        with autocast(device, cfg.bf16):  # the losses themselves are taken in fp32
            _, _, losses = forward(images_to_tensor(images[batch]).to(device))
        # a share's mean times its share of the batch: summed over the processes, the batch's mean
        update(losses["loss"] * len(batch) / cfg.batch_size, model, optimizer, cfg, step, path, world)
        done = step + 1
        if rank == 0 and (done % cfg.eval_every == 0 or done == cfg.max_steps):
            stats = evaluate_tokenizer_now(model, eval_images, cfg, done)
            tqdm.write(f"step {done}: loss {losses['loss'].item():.4f}, {held_out} PSNR {stats['eval_psnr']:.2f} dB, "
                       f"codes used {100 * stats['eval_usage']:.1f}% of {2 ** cfg.model.codebook_bits}")
            save_checkpoint(image_tokenizer_checkpoint(model, optimizer=optimizer.state_dict(), step=done,
                                                       train_config=asdict(cfg), rng=torch.get_rng_state()), path)
            with open(os.path.join(cfg.out, "tokenizer_log.jsonl"), "a") as log:  # after the checkpoint it reports
                log.write(json.dumps(dict(stats, minutes=round((time.time() - t0) / 60, 2))) + "\n")
    print(f"done: {path} ({(time.time() - t0) / 60:.1f} min), reconstructions in {cfg.out}/recon.png")
    if dist.is_initialized():
        dist.barrier()  # Show-o, on every process, reads the final checkpoint next
    return path


# -----------------------------------------------------------------------------
# Show-o: the tokenizers it reads, the loss of a batch, the loop


def showo_tokenizers(cfg):
    """The image tokenizer checkpoint and the BPE beside it -> (text tokenizer, image tokenizer, both as
    the checkpoint dict every Show-o checkpoint carries, so it samples on its own). Sets the model's
    sizes that the tokenizers fix: T text ids + 7 specials + 2^K codes + [MASK]; h x w tokens per image."""
    image_tok, image_ckpt = load_image_tokenizer(cfg.tokenizer)
    text_tok = TextTokenizer(open(os.path.join(os.path.dirname(os.path.abspath(cfg.tokenizer)), "text.tiktoken")).read())
    cfg.model = replace(cfg.model, text_vocab_size=text_tok.vocab_size, codebook_size=image_tok.codebook_size,
                        image_tokens=image_tok.cfg.latent_size ** 2)
    tokenizers = dict(image=dict(kind="image_tokenizer", config=image_ckpt["config"], model=image_ckpt["model"]),
                      text=text_tok.text)
    return text_tok, image_tok, tokenizers


def batch_loss(model, groups, counts, cfg, device):
    """Equation 4 on this process's groups of a batch -> (the loss to backpropagate, each term's sum).
    A term is a mean over all its loss positions in the WHOLE batch (counts: how many, summed over
    every group and process): each group's mean over its own positions, times their number, over the
    batch's count. Summed over groups and processes, these are exactly the batch's means."""
    sums = {}
    for ids, labels, task in groups:
        with autocast(device, cfg.bf16):
            _, losses = model(ids.to(device), labels.to(device), task.to(device))
        positions = loss_positions(labels, task, cfg.model.space)
        for name, mean in losses.items():
            sums[name] = sums.get(name, 0.0) + mean * int(positions[name].sum())
    weights = dict(t2i=cfg.w_t2i, mmu=cfg.w_mmu, lm=cfg.w_lm)
    loss = sum((weights[k] * total / counts[k] for k, total in sums.items()), torch.zeros((), device=device))
    return loss, {k: total.detach() for k, total in sums.items()}


def position_counts(groups, space):
    """{term: loss positions in these groups}: what batch_loss divides by."""
    counts = dict.fromkeys(("t2i", "mmu", "lm"), 0)
    for _, labels, task in groups:
        for name, where in loss_positions(labels, task, space).items():
            counts[name] += int(where.sum())
    return counts


@torch.no_grad()
def held_out_losses(model, rows_of, cfg, device):
    """Per-task mean losses over fixed held-out rows (the same rows and masks at every evaluation)."""
    model.eval()
    n = min(cfg.eval_rows, len(rows_of.codes))
    groups = [group for start in range(0, n, cfg.batch_size)  # built a batch at a time, as in training
              for group in build_batch(rows_of, list(range(start, min(start + cfg.batch_size, n))), cfg,
                                       *seeded(cfg.seed, "eval", start))]
    counts = position_counts(groups, cfg.model.space)
    sums = batch_loss(model, groups, counts, cfg, device)[1]  # each term's sum over all its positions
    model.train()
    return {name: round(float(value) / counts[name], 4) for name, value in sums.items()}


def train_showo(cfg):
    """`train.py showo`: one stage of Show-o (section 3.4) on the tokenized dataset. -> the checkpoint's path."""
    cfg.tokenizer = cfg.tokenizer or os.path.normpath(os.path.join(cfg.init or os.path.join(cfg.out, "showo.pt"), "../../tokenizer.pt"))
    rank, world, device, path = start(cfg, "showo.pt")
    text_tok, image_tok, tokenizers = showo_tokenizers(cfg)
    train_ds, eval_ds, held_out = load_splits(cfg, image_tok.cfg.image_size, cfg.eval_rows)
    train_rows = task_rows(train_ds, text_tok, image_tok.to(device), cfg, training=True)  # every image encoded once
    eval_rows = task_rows(eval_ds, text_tok, image_tok, cfg, training=False)
    torch.manual_seed(cfg.seed)  # the initial weights: the same in every process
    model = Showo(cfg.model)
    resuming, ckpt = cfg.resume and os.path.exists(path), None
    if cfg.init or resuming:  # the previous stage's weights (with a fresh optimizer), or this run's own
        source = path if resuming else cfg.init
        model, ckpt = load_showo(source)
        if model.cfg != cfg.model:
            raise ValueError(f"{source} has another model shape ({model.cfg}); use the same model options")
        theirs = ckpt["tokenizers"]  # the same sizes are not enough: a retrained tokenizer's ids mean other things
        if theirs["text"] != tokenizers["text"] or not all(torch.equal(v, tokenizers["image"]["model"][k])
                                                           for k, v in theirs["image"]["model"].items()):
            raise ValueError(f"{source} was trained with other tokenizers than {cfg.tokenizer}: its ids mean other things")
    model.to(device).train()
    # fused: one kernel for every parameter's update instead of a dozen small ops each (CPU and CUDA)
    optimizer = torch.optim.AdamW(optimizer_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95),
                                  fused=device.type in ("cpu", "cuda"))
    step = resume_state(cfg, path, ckpt, optimizer) if resuming else 0
    log_path = os.path.join(cfg.out, "log.jsonl")
    if rank == 0:  # keep exactly the log lines of the steps the checkpoint holds: later ones will be redone
        lines = open(log_path).read().splitlines() if resuming and os.path.exists(log_path) else []
        with open(log_path + ".tmp", "w") as f:  # line k is step k + 1's, written before its checkpoint
            f.writelines(line + "\n" for line in lines[:step])  # (a line cut short by a crash can only be the last)
        os.replace(log_path + ".tmp", log_path)
    space = cfg.model.space
    print(f"Show-o stage {cfg.stage}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocabulary {space.vocab_size} "
          f"({space.text_vocab_size} text + 7 special + {space.codebook_size} image codes + [MASK]), "
          f"{cfg.model.image_tokens} tokens per image; batch of {cfg.batch_size} rows: "
          + ", ".join(f"{n} {k}" for k, n in task_counts(cfg, cfg.batch_size).items() if n) + f"; {device}"
          + (f", {world} processes" if world > 1 else ""))
    forward = torch.compile(model) if cfg.compile else model  # `model` is what gets saved and evaluated
    weights, t0 = dict(t2i=cfg.w_t2i, mmu=cfg.w_mmu, lm=cfg.w_lm), time.time()
    bar = tqdm(range(step, cfg.max_steps), initial=step, total=cfg.max_steps, desc=f"showo stage {cfg.stage}",
               dynamic_ncols=True, mininterval=1.0, disable=rank > 0)
    for step in bar:
        batch = showo_batch(train_rows, step, cfg)  # drawn from (seed, stage, step) alone: resuming redraws it
        counts = position_counts(batch, space)  # the whole batch's, whatever share this process takes
        if not any(counts.values()):
            raise ValueError(f"the batch of step {step} has no loss targets; raise --max-text")
        loss, sums = batch_loss(forward, process_share(batch, rank, world), counts, cfg, device)
        totals = torch.tensor([float(sums.get(k, 0.0)) for k in counts], dtype=torch.float64, device=device)
        if world > 1:  # the whole batch's loss sums on every process: logged as one process would, and a
            dist.all_reduce(totals)  # NaN in any share stops every process in update()
        losses = {k: v / counts[k] for k, v in zip(counts, totals.tolist()) if counts[k]}
        update(loss, model, optimizer, cfg, step, path, world, finite=bool(totals.isfinite().all() and loss.isfinite()))
        record = dict(step=step + 1, lr=lr_at(step, cfg), loss=round(sum(weights[k] * v for k, v in losses.items()), 5),
                      **{k: round(v, 5) for k, v in losses.items()})
        bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("loss", "t2i", "mmu", "lm")})
        done = step + 1
        checkpoint_now = done % cfg.eval_every == 0 or done == cfg.max_steps
        if rank > 0:
            continue
        if checkpoint_now:
            record["eval"] = held_out_losses(model, eval_rows, cfg, device)
            record["minutes"] = round((time.time() - t0) / 60, 2)
            tqdm.write(f"step {done}: {held_out} losses " + ", ".join(f"{k} {v:.3f}" for k, v in record["eval"].items()))
        with open(log_path, "a") as log:  # first the line, then the checkpoint: never a saved step without its line
            log.write(json.dumps(record) + "\n")
        if checkpoint_now:
            save_checkpoint(showo_checkpoint(model, optimizer=optimizer.state_dict(), step=done, train_config=asdict(cfg),
                                             tokenizers=tokenizers), path)
    print(f"done: {path} ({(time.time() - t0) / 60:.1f} min), per-step losses in {log_path}")
    if dist.is_initialized():
        dist.barrier()  # the next stage, on every process, starts from this stage's final checkpoint
    return path


# -----------------------------------------------------------------------------
# The pipeline: `python train.py [--dataset D]`, one dataset's tokenizers, three stages and evaluation


def run_pipeline(dataset="shapes", data_dir=None, seed=0, limit=None, out=None, preset=None, device="auto",
                 **showo_options):
    """The tokenizers, Show-o's three stages (each from the previous one's weights) and the evaluation
    on held-out data; each part is skipped when finished and resumed when interrupted. showo_options:
    any Show-o option for every stage (the ablations: slot_embedding=False, text_conv=0)."""
    t0 = time.time()
    gpu = (preset or ("gpu" if torch.cuda.is_available() else "cpu")) == "gpu" and dataset in GPU_PIPELINES
    if preset == "gpu" and not gpu:
        raise ValueError(f"there is no GPU preset for {dataset}; its CPU recipe runs as fast on a GPU")
    recipe = GPU_PIPELINES[dataset] if gpu else dict(tokenizer={}, showo={}, steps=PIPELINE_STEPS[dataset])
    steps = dict(tokenizer={**TOKENIZER_PRESETS[dataset], **recipe["tokenizer"]}["max_steps"],
                 **{f"stage{stage}": n for stage, n in recipe["steps"].items()})  # metrics.json's keys
    if dataset in ("coco", "folder"):  # coco-mini's steps, grown with the data
        n = len(data.load(dataset, "train", data_dir, limit=limit))
        rows = {**SHOWO_PRESETS[dataset], **recipe["showo"]}.get("batch_size", ShowoTrainConfig.batch_size) * sum(recipe["steps"].values())
        grow = min(GROWTH_CAP[gpu], max(1.0, PASSES * n / rows))
        steps = {part: round(grow * s) for part, s in steps.items()}
        print(f"{n} training images: {grow:.2f} x coco-mini's steps (at most {GROWTH_CAP[gpu]}), {grow * rows / n:.1f} passes: {steps}")
    out = out or f"out/{dataset}" + (f"-seed{seed}" if seed else "")
    common = dict(dataset=dataset, data_dir=data_dir, seed=seed, limit=limit, device=device, resume=True)
    showo_options = {k: v for k, v in showo_options.items() if v is not None}  # None: the preset's
    showo = [make_config(ShowoTrainConfig, {**SHOWO_PRESETS[dataset], **STAGES[stage], **recipe["showo"],
                                            **showo_options, **common, "stage": stage, "max_steps": steps[f"stage{stage}"],
                                            "out": os.path.join(out, f"stage{stage}")})
             for stage in STAGES]  # every stage's options checked before any training
    tokenizer = train_tokenizer(make_config(TokenizerTrainConfig, {**TOKENIZER_PRESETS[dataset], **recipe["tokenizer"],
                                                                    **common, "out": out, "max_steps": steps["tokenizer"]}))
    minutes, init = dict(tokenizer=round((time.time() - t0) / 60, 2)), None
    for cfg in showo:
        init = train_showo(replace(cfg, tokenizer=tokenizer, init=init))
    minutes["stages"] = round((time.time() - t0) / 60 - minutes["tokenizer"], 2)
    if dist.is_initialized() and dist.get_rank() > 0:
        return None  # under torchrun the evaluation runs once, on rank 0
    from evaluation.evaluate import evaluate_pipeline, print_summary  # the evaluation: not on the training path
    metrics = evaluate_pipeline(tokenizer, init, [os.path.join(cfg.out, "log.jsonl") for cfg in showo], out,
                                dataset, data_dir, seed, minutes, t0, steps)
    print_summary(metrics, out)
    return metrics


def main(argv=None):
    """No command: a dataset's whole pipeline; `tokenizer` / `showo`: one part, every option on the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    job = parser.add_argument_group("the pipeline (no command): one dataset's tokenizers, three stages and evaluation")
    # own names (job_*): a command's options of the same name (train.py showo --seed 1) are its own
    job.add_argument("--dataset", dest="job_dataset", default="shapes", choices=data.DATASETS, help="[default shapes]")
    job.add_argument("--data-dir", dest="job_data_dir", metavar="DIR", help="where cifar10/coco/folder data lives")
    job.add_argument("--limit", dest="job_limit", type=int, metavar="N", help="train on at most this many images")
    job.add_argument("--seed", dest="job_seed", type=int, default=0, metavar="N", help="seed of every part [default 0]")
    job.add_argument("--out", dest="job_out", metavar="DIR", help="run folder [default out/DATASET, out/DATASET-seedN]")
    job.add_argument("--device", dest="job_device", default="auto", help="auto (cuda -> mps -> cpu) | cpu | cuda | mps")
    job.add_argument("--preset", dest="job_preset", choices=("cpu", "gpu"), help="gpu: larger, longer, compiled, bf16 "
                     "(cifar10/coco/folder) [default: gpu on CUDA]")
    job.add_argument("--slot-embedding", dest="job_slot_embedding", action=argparse.BooleanOptionalAction,
                     help="an addition, in every stage [default: the preset's]")
    job.add_argument("--text-conv", dest="job_text_conv", type=int, metavar="N", help="an addition's width, 0 = off")
    sub = parser.add_subparsers(dest="command")
    tok = sub.add_parser("tokenizer", help="train the text BPE and the LFQ image tokenizer")
    add_options(tok, TokenizerTrainConfig, TOKENIZER_PRESETS, "the run")
    showo = sub.add_parser("showo", help="train the Show-o transformer (one stage) on tokenized data")
    add_options(showo, ShowoTrainConfig, {**SHOWO_PRESETS, **{f"stage {k}": v for k, v in STAGES.items()}}, "the run")
    args = parser.parse_args(argv)
    typed = {k: v for k, v in vars(args).items() if v is not None and not k.startswith("job_") and k != "command"}
    try:
        if args.command is None:
            return run_pipeline(**{a.dest[4:]: getattr(args, a.dest) for a in job._group_actions})
        if any(getattr(args, a.dest) != a.default for a in job._group_actions):
            parser.error("options before a command belong to the pipeline: put the command's own options after "
                         f"it (python train.py {args.command} --dataset D --seed N ...)")
        dataset = typed.get("dataset", "shapes")
        if args.command == "tokenizer":
            return train_tokenizer(make_config(TokenizerTrainConfig, {**TOKENIZER_PRESETS.get(dataset, {}), **typed}))
        stage = typed.get("stage", 1)
        defaults = {**SHOWO_PRESETS.get(dataset, {}), **STAGES.get(stage, {}), "out": f"out/{dataset}/stage{stage}"}
        return train_showo(make_config(ShowoTrainConfig, {**defaults, **typed}))
    except (OSError, ValueError) as e:  # bad options, data or checkpoints: the message says what
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # Ctrl-C: nothing is lost but the steps since the last checkpoint
        sys.exit("interrupted: the last checkpoint is kept; --resume (the pipeline: run it again) continues")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
