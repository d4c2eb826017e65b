"""
Training programs.

    python train.py                      # the main job: tokenizers, Show-o's three stages, evaluation (shapes)
    python train.py --dataset cifar10 --data-dir ../shared/data     # the same pipeline on real photos
    python train.py --dataset coco --data-dir ../shared/data/coco-mini --limit 64
    python train.py tokenizer --dataset cifar10 --data-dir ../shared/data --out out/cifar10
    python train.py tokenizer --help     # every option, grouped (model, data, optimisation, run), with presets
    python train.py showo --dataset shapes --stage 1                 # Show-o on the tokenized data
    python train.py showo --stage 2 --init out/shapes/stage1/showo.pt
    torchrun --standalone --nproc_per_node=2 train.py ...           # any of these on 2 processes (distributed.py)

`tokenizer` trains (1) a small byte-level BPE text vocabulary on the dataset's captions (seconds)
and (2) the LFQ image tokenizer of tokenizer.py (MAGVIT-v2, arXiv 2310.05737): reconstruction MSE +
0.25 commitment + an entropy penalty that keeps the 2^K codebook in use. Every `--eval-every` steps
it measures PSNR and codebook use on held-out images, writes a reconstruction grid
(`recon.png`: originals above, reconstructions below) and a checkpoint. Checkpoints are written
atomically (temporary file, then rename), so a crash never leaves a half-written file, and
`--resume` continues from the last one with the same step, optimizer state and data order.

`showo` trains the Show-o transformer of model.py for one of the paper's three stages (section
3.4) on images tokenized once by the image tokenizer (cached), with mixed batches of
text-to-image, captioning, question-answering and text-only rows and the joint loss
L = w_t2i L_MTP + w_mmu L_MMU + w_lm L_LM. Every step's data, condition dropout and masks are a pure
function of (seed, stage, step), so `--resume` after any crash, even kill -9 between two checkpoints,
continues with exactly the losses the uninterrupted run would have had (on CPU; CUDA kernels such
as SDPA's backward are not bit-deterministic). log.jsonl holds every step's per-task losses.

One config story: each trainer's config holds the model's own config (tokenizer.ImageTokenizerConfig,
model.ShowoConfig) and, for Show-o, the batch mix (TaskMix); the command line is generated from
those dataclasses, and a checkpoint saves the model's config exactly as it was built.
"""
import argparse
import base64
import json
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, replace
from types import SimpleNamespace

import torch
from tqdm import tqdm

import data
import distributed
from config import (FROM_TOKENIZERS, RESUME_MUST_MATCH, SHOWO_PRESETS, SHOWO_RESUME_MUST_MATCH, SHOWO_STAGES,
                    TOKENIZER_PRESETS, ShowoTrainConfig, TokenizerTrainConfig, add_config_arguments, autodetect_device,
                    TaskMix, check_run_options, config_from_args, pipeline_recipe)
from data.tasks import batch_indices, build_batch, seeded, showo_batch, task_rows
from evaluate import evaluate_pipeline, held_out_split, print_pipeline_summary, psnr, reconstruct
from model import (Showo, atomic_save, autocast, file_digest, load_showo, loss_positions, optimizer_groups,
                   showo_checkpoint)
from sample import image_grid
from tokenizer import (SPLIT_PATTERN, ImageTokenizer, TextTokenizer, image_tokenizer_checkpoint, images_to_tensor,
                       load_image_tokenizer)

# -----------------------------------------------------------------------------
# Shared by both trainers: checkpoints, the schedule, the data order, the run folder


def lr_at(step, cfg):
    """Linear warm-up, then cosine decay from lr to lr * min_lr_frac. Warm-up keeps AdamW's first
    steps, taken with second-moment estimates from a single batch, from throwing the weights far."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def update(loss, model, optimizer, grad_clip, step, ckpt_path):
    """One optimizer step: backward, clip the gradient's global norm, AdamW. A NaN or infinite loss
    stops the run before it can touch the weights; the last checkpoint on disk is the last good one."""
    if not torch.isfinite(loss):
        sys.exit(f"error: loss became {loss.item()} at step {step}; stopping. The last good checkpoint is "
                 f"{ckpt_path}. Try a lower --lr.")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # one rare batch (a blank canvas, a long answer) must not undo many steps: cap the step's size
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def start_run(cfg, checkpoint_name):  # cfg: either trainer's config
    """-> (device, checkpoint path) of a run folder; a finished or interrupted run is only
    continued when asked (--resume), never overwritten."""
    device = autodetect_device(cfg.device)
    os.makedirs(cfg.out, exist_ok=True)
    ckpt_path = os.path.join(cfg.out, checkpoint_name)
    if os.path.exists(ckpt_path) and not cfg.resume:
        sys.exit(f"error: {ckpt_path} exists; pass --resume to continue it or choose another --out")
    return device, ckpt_path


def load_splits(cfg, image_size, n_eval, measured):
    """(training data, held-out data, what the held-out numbers are): the test split (COCO: val) of
    the dataset, at most n_eval of it. A user's folder has no held-out split: say so rather than pretend."""
    # the shapes world is generated from the seed: another seed is another world of the same kind
    train_ds = data.load(cfg.dataset, "train", cfg.data_dir, image_size, cfg.limit, cfg.seed)
    if cfg.dataset == "folder":
        eval_ds, held_out = train_ds, f"training-set {measured} (a folder has no held-out split)"
    else:
        eval_ds = data.load(cfg.dataset, held_out_split(cfg.dataset), cfg.data_dir, image_size, n_eval, cfg.seed)
        held_out = f"held-out {eval_ds.split} {measured}"
    if len(train_ds) < cfg.batch_size:
        sys.exit(f"error: {len(train_ds)} training images is fewer than one batch ({cfg.batch_size}): "
                 "use more images (--limit) or a smaller --batch-size")
    return train_ds, eval_ds, held_out


# -----------------------------------------------------------------------------
# Tokenizer training: the text BPE, then the LFQ image tokenizer


def train_bpe(texts, vocab_size):
    """Learn byte-level BPE merges from an iterable of strings.

    Returns `ranks`: dict bytes -> rank, the format tiktoken encodes with. Ranks 0..255 are the 256
    single bytes (so any string, in any script, can be encoded); each merge then adds the byte
    string of the most frequent adjacent pair, in order. tiktoken encodes by repeatedly merging the
    adjacent pair whose concatenation has the lowest rank, which replays these merges in order.
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be >= 256 (the single bytes), got {vocab_size}")
    # Count chunks once; BPE then works on the distinct chunks weighted by their counts.
    chunk_counts = Counter()
    for text in texts:
        chunk_counts.update(re.findall(SPLIT_PATTERN, text))
    # every chunk starts as its UTF-8 bytes: no character is ever unknown, whatever the script
    words = [[bytes([b]) for b in chunk.encode("utf-8")] for chunk in chunk_counts]
    counts = list(chunk_counts.values())
    ranks = {bytes([b]): b for b in range(256)}
    while len(ranks) < vocab_size:
        pair_counts = Counter()
        for word, count in zip(words, counts):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += count
        if not pair_counts:
            break  # every chunk is a single token already: the corpus is exhausted
        # Most frequent pair; ties go to the lexicographically smallest so training is deterministic.
        best = min(pair_counts, key=lambda p: (-pair_counts[p], p))
        merged = best[0] + best[1]
        if merged not in ranks:  # two different pairs can spell the same bytes; keep one rank
            ranks[merged] = len(ranks)
        for word in words:  # replace every occurrence of the pair, left to right
            i = 0
            while i < len(word) - 1:
                if word[i] == best[0] and word[i + 1] == best[1]:
                    word[i:i + 2] = [merged]
                i += 1
    return ranks


def save_bpe(ranks, path):
    """tiktoken's rank-file format: one line per token, `base64(token bytes) rank`."""
    with open(path, "w") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")


def train_text_tokenizer(ds, cfg):
    """Train the BPE vocabulary on every text the model will read (the captions, and the questions
    and answers where there are some) unless a resumed run already has one. Written atomically
    like the checkpoints."""
    path = os.path.join(cfg.out, "text.tiktoken")
    if cfg.resume and os.path.exists(path):
        tok = TextTokenizer.from_file(path)
        print(f"text tokenizer: kept {path} ({tok.vocab_size} tokens)")
        return tok
    # the vocabulary must cover what the model reads AND writes: questions and answers too (shapes),
    # or answers such as "top left" would be spelled byte by byte
    texts, source = [c for caps in ds.captions for c in caps], f"{cfg.dataset} captions"
    if ds.qa is not None:
        texts, source = texts + [f"{q} {a}" for pairs in ds.qa for q, a, _ in pairs], source + " and QA"
    t0 = time.time()
    ranks = train_bpe(texts, cfg.bpe_vocab)
    save_bpe(ranks, path + ".tmp")
    os.replace(path + ".tmp", path)  # the image tokenizer's checkpoints are written after this file
    tok = TextTokenizer.from_ranks(ranks)
    print(f"text tokenizer: {len(ranks)}-token BPE trained on {len(texts)} lines of {source} in "
          f"{time.time() - t0:.1f}s -> {path}; {texts[0]!r} is {len(tok.encode(texts[0]))} tokens")
    return tok


def tokenizer_and_optimizer(cfg, ckpt_path, device):
    """-> (model, AdamW, first step): a new image tokenizer, or the checkpoint's when resuming (its
    weights, optimizer state, step and random state), refused if its options differ."""
    model, step = ImageTokenizer(cfg.model), 0
    ckpt = None
    if cfg.resume and os.path.exists(ckpt_path):
        model, ckpt = load_image_tokenizer(ckpt_path)
        if model.cfg != cfg.model:
            sys.exit(f"error: {ckpt_path} was trained with a different model config; "
                     "use another --out or the same options")
        # a different batch size or seed would continue a different run under the old one's name
        changed = [k for k in RESUME_MUST_MATCH if ckpt["train_config"][k] != getattr(cfg, k)]
        if changed:
            sys.exit(f"error: cannot resume {ckpt_path} with different "
                     f"{', '.join('--' + k.replace('_', '-') for k in changed)} (they fix the data order and schedule)")
        step = ckpt["step"]
    model.to(device).train()
    # No weight decay anywhere here: a small conv autoencoder does not need it, and decay pulls
    # GroupNorm's gains toward 0 instead of their neutral 1.
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0,
                                  fused=device.type in ("cpu", "cuda"))
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng_cpu"])  # the entropy penalty's token subset draws from it
        if device.type == "cuda" and "rng_cuda" in ckpt:
            torch.cuda.set_rng_state(ckpt["rng_cuda"])
        print(f"resumed from {ckpt_path} at step {step}")
    return model, optimizer, step


def evaluate_and_save_tokenizer(model, optimizer, cfg, done, losses, eval_images, device, ckpt_path):
    """Held-out PSNR and codebook use, the reconstruction grid, then the checkpoint. -> the log record."""
    model.eval()
    codes, recon = reconstruct(model, eval_images, device)
    model.train()
    # usage over all held-out tokens, not one batch: a batch of 64 x 16 tokens could never show 4,096 codes
    bits = cfg.model.codebook_bits
    stats = dict(step=done, loss=round(losses["loss"].item(), 5), lr=lr_at(done - 1, cfg),
                 eval_psnr=round(float(psnr(eval_images, recon).mean()), 3),
                 eval_usage=round(codes.unique().numel() / 2 ** bits, 4),
                 token_entropy=round(losses["token_entropy"].item(), 4),
                 batch_entropy=round(losses["batch_entropy"].item(), 4))
    tqdm.write(f"step {done}: eval PSNR {stats['eval_psnr']:.2f} dB, codes used "
               f"{100 * stats['eval_usage']:.1f}% (of {2 ** bits}, {len(eval_images)} images)")
    image_grid([eval_images[:16], recon[:16]]).save(os.path.join(cfg.out, "recon.png"))
    # the random state goes into the checkpoint, so a resumed run draws what the uninterrupted one would
    rng = dict(rng_cpu=torch.get_rng_state())
    if device.type == "cuda":
        rng["rng_cuda"] = torch.cuda.get_rng_state()
    atomic_save(image_tokenizer_checkpoint(model, optimizer=optimizer.state_dict(), step=done,
                                           dataset=cfg.dataset, train_config=asdict(cfg), **rng), ckpt_path)
    return stats


def train_tokenizer(cfg):
    """`train.py tokenizer`: the BPE, then the LFQ image tokenizer (tokenizer.ImageTokenizer.forward
    gives the loss: MSE + commitment + entropy penalty), on one process or several (distributed.py).
    -> the checkpoint's path."""
    rank, world = distributed.start(cfg.batch_size)
    device, ckpt_path = start_run(cfg, "tokenizer.pt")
    torch.manual_seed(cfg.seed)  # the initial weights and the entropy penalty's token subsets
    train_ds, eval_ds, held_out = load_splits(cfg, cfg.model.image_size, cfg.eval_images, "images")
    eval_images = eval_ds.images[:cfg.eval_images]
    print(f"data: {len(train_ds)} {cfg.dataset} training images; evaluation on {len(eval_images)} {held_out}")
    if rank == 0:  # the image tokenizer does not read text: the other processes need no BPE
        train_text_tokenizer(train_ds, cfg)
    model, optimizer, step = tokenizer_and_optimizer(cfg, ckpt_path, device)
    n_params, side = sum(p.numel() for p in model.parameters()), cfg.model.latent_size
    print(f"image tokenizer: {n_params / 1e6:.2f}M parameters, {cfg.model.image_size}px -> {side}x{side} tokens "
          f"of {cfg.model.codebook_bits} bits ({2 ** cfg.model.codebook_bits} codes), device {device}")
    # compiled on CUDA only: on a CPU compiling costs more minutes than it saves (docs/findings.md);
    # `model` (not the compiled wrapper) is what gets saved and evaluated
    compiled = torch.compile(model) if cfg.compile and device.type == "cuda" else model
    train_model = distributed.wrap(compiled, device, world)  # DDP under torchrun

    images = torch.from_numpy(train_ds.images)  # (N, H, W, 3) uint8, indexed per batch
    log = open(os.path.join(cfg.out, "tokenizer_log.txt"), "a") if rank == 0 else None
    t0 = time.time()
    bar = tqdm(range(step, cfg.max_steps), initial=step, total=cfg.max_steps, desc="tokenizer",
               dynamic_ncols=True, mininterval=1.0, disable=rank > 0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = distributed.share(batch_indices(step, len(images), cfg.batch_size, cfg.seed), rank, world)
        x = images_to_tensor(images[batch]).to(device)  # this process's share of the step's images
        with autocast(device):  # bf16 on CUDA; the losses themselves are taken in fp32
            _, _, losses = train_model(x)
        update(losses["loss"], model, optimizer, cfg.grad_clip, step, ckpt_path)
        # PSNR of the batch from its MSE: pixels span [-1, 1], so the peak-to-peak squared is 4
        bar.set_postfix(loss=f"{losses['loss'].item():.4f}",
                        psnr=f"{10 * math.log10(4 / max(losses['mse'].item(), 1e-10)):.1f}")
        done = step + 1
        if rank == 0 and (done % cfg.eval_every == 0 or done == cfg.max_steps):
            stats = evaluate_and_save_tokenizer(model, optimizer, cfg, done, losses, eval_images, device, ckpt_path)
            # Log after the checkpoint: a crash in between never leaves a logged step to be redone.
            log.write(json.dumps(dict(stats, minutes=round((time.time() - t0) / 60, 2))) + "\n")
            log.flush()
    if rank == 0:
        log.close()
        print(f"done: {ckpt_path}, reconstructions in {os.path.join(cfg.out, 'recon.png')} "
              f"({(time.time() - t0) / 60:.1f} min)")
    distributed.barrier()  # Show-o, on every process, reads the final checkpoint next
    return ckpt_path


# -----------------------------------------------------------------------------
# Show-o training: the batch of each step, the stages' checkpoints, the loop


def batch_losses(model, groups, device):
    """The per-task losses of one batch built by build_batch: one forward pass per row group. A term
    found in several groups (story rows add to t2i and mmu) is the mean over all its positions: each
    group's mean weighted by its count of loss positions (model.loss_positions)."""
    losses, counts = {}, {}
    for ids, labels, task in groups:
        with autocast(device):
            _, group_losses = model(ids.to(device), labels.to(device), task.to(device))
        for name, loss in group_losses.items():  # a term of one group is its loss exactly, as it was
            n, m = int(loss_positions(labels, task, model.space)[name].sum()), counts.get(name, 0)
            losses[name], counts[name] = (loss if m == 0 else (losses[name] * m + loss * n) / (m + n)), m + n
    return losses


class StepLosses(torch.nn.Module):
    """batch_losses as one module call, the unit DDP wraps (distributed.py): DDP expects one forward
    per backward, and a step runs one forward pass per row group."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, groups, device):
        return batch_losses(self.model, groups, device)


@torch.no_grad()
def held_out_losses(model, rows_of, cfg, device, n_rows):
    """Per-task losses on fixed held-out rows (same rows and masks at every evaluation)."""
    model.eval()  # no dropout here, but eval mode is the contract for every evaluation
    totals, counts = {}, {}
    n_rows = min(n_rows, len(rows_of.codes))
    for start in range(0, n_rows, cfg.batch_size):
        items = list(range(start, min(start + cfg.batch_size, n_rows)))  # each held-out item once
        rng, gen = seeded(cfg.seed, "eval", start)
        for name, value in batch_losses(model, build_batch(rows_of, items, cfg, rng, gen), device).items():
            totals[name] = totals.get(name, 0.0) + value.item() * len(items)  # batches weighted by their rows
            counts[name] = counts.get(name, 0) + len(items)
    model.train()
    return {name: round(totals[name] / counts[name], 4) for name in totals}


def showo_tokenizers(cfg):
    """The image tokenizer checkpoint and the BPE written beside it by `train.py tokenizer` ->
    (text tokenizer, image size, the files and digests a checkpoint records); fills in the model
    config's sizes that the tokenizers fix (vocabulary, codebook, tokens per image)."""
    text_path = os.path.join(os.path.dirname(os.path.abspath(cfg.tokenizer)), "text.tiktoken")
    image_tok, _ = load_image_tokenizer(cfg.tokenizer)
    if not os.path.exists(text_path):
        raise FileNotFoundError(f"no text tokenizer at {text_path} (train.py tokenizer writes it next to tokenizer.pt)")
    text_tok = TextTokenizer.from_file(text_path)
    # the one place the model's sizes are set: the unified vocabulary is T text ids + 7 specials +
    # 2^K codes + [MASK] (tokenizer.TokenSpace), and an image is the tokenizer's h x w grid
    cfg.model = replace(cfg.model, text_vocab_size=text_tok.vocab_size, codebook_size=image_tok.codebook_size,
                        image_tokens=image_tok.cfg.latent_size ** 2)
    files = dict(tokenizer=os.path.abspath(cfg.tokenizer), tokenizer_digest=file_digest(cfg.tokenizer),
                 text_tokenizer=text_path, text_tokenizer_digest=file_digest(text_path))
    return text_tok, image_tok.cfg.image_size, files


def check_vocabulary(ckpt, path, model_cfg, files):
    """A checkpoint is only usable with the tokenizers it was trained with: the same sizes are not
    enough, the ids must mean the same things."""
    cfg = ckpt["config"]
    if cfg["text_vocab_size"] != model_cfg.text_vocab_size or cfg["codebook_size"] != model_cfg.codebook_size:
        raise ValueError(f"{path} was trained with {cfg['text_vocab_size']} text ids and {cfg['codebook_size']} "
                         f"image codes, but the tokenizers give {model_cfg.text_vocab_size} and {model_cfg.codebook_size}")
    if ckpt.get("tokenizer_digest") != files["tokenizer_digest"]:
        raise ValueError(f"{path} was trained with a different image tokenizer ({ckpt.get('tokenizer')}, digest "
                         f"{ckpt.get('tokenizer_digest')}) than {files['tokenizer_digest']}: its image codes mean other things")
    if ckpt.get("text_tokenizer_digest") != files["text_tokenizer_digest"]:
        raise ValueError(f"{path} was trained with a different text tokenizer ({ckpt.get('text_tokenizer')}): "
                         "its text ids mean other things")


def showo_and_optimizer(cfg, ckpt_path, device, files):
    """-> (model, AdamW, first step, resumed?): a new Show-o, the previous stage's (--init) or this
    run's checkpoint (--resume), each checked against the tokenizers and the options."""
    torch.manual_seed(cfg.seed)  # the model's initial weights, whatever ran before (e.g. a cache miss)
    model, step, resume_ckpt = Showo(cfg.model), 0, None
    if cfg.resume and os.path.exists(ckpt_path):
        model, resume_ckpt = load_showo(ckpt_path)
        check_vocabulary(resume_ckpt, ckpt_path, cfg.model, files)
        # the options that fix the data and the schedule must match, or the losses after resuming
        # would not be the uninterrupted run's
        saved = resume_ckpt.get("train_config", {})
        saved = {**asdict(TaskMix()), **saved, **saved.get("mix", {})}  # mix inline; newer options: defaults
        now = {**asdict(cfg), **asdict(cfg.mix)}
        changed = [k for k in SHOWO_RESUME_MUST_MATCH if saved.get(k) != now[k]]
        if model.cfg != cfg.model or changed:
            sys.exit(f"error: cannot resume {ckpt_path} with different "
                     f"{', '.join('--' + k.replace('_', '-') for k in changed) or 'model options'}")
        step = resume_ckpt["step"]
    elif cfg.init:  # the next stage starts from the last one's weights, with a fresh optimizer
        init_model, init_ckpt = load_showo(cfg.init)
        check_vocabulary(init_ckpt, cfg.init, cfg.model, files)
        if init_model.cfg != cfg.model:
            sys.exit(f"error: {cfg.init} has a different model shape ({init_model.cfg}); "
                     "use the same model options (--n-*, --slot-embedding, --text-conv, ...)")
        model = init_model
        print(f"initialised from {cfg.init} (stage {init_ckpt.get('train_config', {}).get('stage')}, "
              f"step {init_ckpt.get('step')})")
    model.to(device).train()
    # fused: one kernel for every parameter's update instead of a dozen small ops each (CPU and CUDA)
    optimizer = torch.optim.AdamW(optimizer_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95),
                                  fused=device.type in ("cpu", "cuda"))
    if resume_ckpt is not None:
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        print(f"resumed from {ckpt_path} at step {step}")
    return model, optimizer, step, resume_ckpt is not None


def logged_step(line):
    """The step of one log line; a line cut short by a crash counts as not logged."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def trim_log(log_path, step, resumed):
    """Keep exactly the log lines of the steps the checkpoint contains: steps logged after it (by a
    run killed before its next checkpoint) are dropped and will be redone identically."""
    old_log = open(log_path).read().splitlines() if (resumed and os.path.exists(log_path)) else []
    with open(log_path + ".tmp", "w") as f:
        f.writelines(line + "\n" for line in old_log if logged_step(line) <= step)
    os.replace(log_path + ".tmp", log_path)


def train_showo(cfg):
    """`train.py showo`: one stage of Show-o (section 3.4) on the tokenized dataset, with the joint
    loss of model.joint_loss over mixed batches (data/tasks.py), on one process or, under torchrun,
    on several (distributed.py; only rank 0 logs and saves). -> the checkpoint's path."""
    rank, world = distributed.start(cfg.batch_size)
    device, ckpt_path = start_run(cfg, "showo.pt")
    log_path = os.path.join(cfg.out, "log.jsonl")
    text_tok, image_size, files = showo_tokenizers(cfg)
    # Data: images become codes once (cached); rows are built per step from codes and text.
    train_ds, eval_ds, held_out = load_splits(cfg, image_size, cfg.eval_rows, "losses")
    train_rows = task_rows(train_ds, text_tok, cfg, device, training=True)  # --mirror / --hide-codes if asked for
    eval_rows = task_rows(eval_ds, text_tok, cfg, device, training=False)
    model, optimizer, step, resumed = showo_and_optimizer(cfg, ckpt_path, device, files)
    if rank == 0:
        trim_log(log_path, step, resumed)
    space = cfg.model.space
    print(f"Show-o stage {cfg.stage}: {model.num_params() / 1e6:.2f}M parameters, vocabulary {space.vocab_size} "
          f"({space.text_vocab_size} text + 7 special + {space.codebook_size} image codes + [MASK]), "
          f"{cfg.model.image_tokens} tokens per image; batch of {cfg.batch_size} rows: "
          + ", ".join(f"{n} {k}" for k, n in cfg.mix.counts(cfg.batch_size).items() if n) + f"; device {device}"
          + (f"; {world} processes" if world > 1 else ""))
    compiled = torch.compile(model) if cfg.compile and device.type == "cuda" else model
    train_model = distributed.wrap(StepLosses(compiled), device, world)
    weights = dict(t2i=cfg.mix.w_t2i, mmu=cfg.mix.w_mmu, lm=cfg.mix.w_lm)  # equation 4's w

    log = open(log_path, "a") if rank == 0 else None
    t0 = time.time()
    bar = tqdm(range(step, cfg.max_steps), initial=step, total=cfg.max_steps, desc=f"showo stage {cfg.stage}",
               dynamic_ncols=True, mininterval=1.0, disable=rank > 0)
    for step in bar:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # the step's batch is drawn from (seed, stage, step) alone: resuming redraws it exactly
        groups = distributed.process_share(showo_batch(train_rows, step, cfg), rank, world)  # one process: the whole batch
        loss, losses = distributed.whole_batch_loss(train_model(groups, device), groups, weights, space, world)  # equation 4
        if not losses:  # possible only when every row's text was cut before its answer
            sys.exit(f"error: the batch of step {step} has no loss targets; raise --max-text")
        update(loss, model, optimizer, cfg.grad_clip, step, ckpt_path)
        joint = sum(weights[k] * v for k, v in losses.items())
        record = dict(step=step + 1, lr=lr, loss=round(joint, 5), **{k: round(v, 5) for k, v in losses.items()})
        bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("loss", "t2i", "mmu", "lm")})
        done = step + 1
        checkpoint_now = done % cfg.eval_every == 0 or done == cfg.max_steps
        if rank > 0:
            continue  # the others wait for rank 0 at the next step's first all-reduce
        if checkpoint_now:
            record["eval"] = held_out_losses(model, eval_rows, cfg, device, cfg.eval_rows)
            record["minutes"] = round((time.time() - t0) / 60, 2)
            tqdm.write(f"step {done}: {held_out} " + ", ".join(f"{k} {v:.3f}" for k, v in record["eval"].items()))
        # The log line goes first: a crash between it and the checkpoint leaves a line that resume
        # drops and redoes, never a checkpointed step without its line.
        log.write(json.dumps(record) + "\n")
        log.flush()
        if checkpoint_now:
            # the model's own config, the run's options and the tokenizers' digests: enough to resume,
            # to start the next stage, and to sample with exactly the tokenizers it learned
            atomic_save(showo_checkpoint(model, optimizer=optimizer.state_dict(), step=done, train_config=asdict(cfg),
                                         **files), ckpt_path)
    if rank == 0:
        log.close()
        print(f"done: {ckpt_path} ({(time.time() - t0) / 60:.1f} min), per-step losses in {log_path}")
    distributed.barrier()  # the next stage, on every process, starts from this stage's final checkpoint
    return ckpt_path


# -----------------------------------------------------------------------------
# The two commands (their options: config.py)


def main_showo(args, parser):
    """`train.py showo ...`: the config from the command line, then one stage of training."""
    # the stage comes first: its batch mix is part of the defaults the user's options override
    stage = ShowoTrainConfig.stage if args.stage is None else args.stage
    if stage not in SHOWO_STAGES:
        parser.error(f"--stage must be 1, 2 or 3, not {stage}")
    dataset = args.dataset or ShowoTrainConfig.dataset
    # defaults: the dataset preset, then the stage's batch mix, then whatever the user typed
    preset = {**SHOWO_PRESETS.get(dataset, {}), **SHOWO_STAGES[stage], "out": os.path.join("out", dataset, f"stage{stage}")}
    cfg = config_from_args(args, parser, ShowoTrainConfig, preset)
    if cfg.tokenizer is None:  # the run's layout: out/<run>/tokenizer.pt beside out/<run>/stage<k>/
        cfg.tokenizer = os.path.join(os.path.dirname(os.path.normpath(cfg.out)), "tokenizer.pt")
    try:
        return train_showo(cfg)
    except (OSError, ValueError) as e:  # missing/incompatible tokenizers or checkpoints, bad data
        sys.exit(f"error: {e}")


def main_tokenizer(args, parser):
    """`train.py tokenizer ...`: the config from the command line, then the two tokenizers."""
    dataset = args.dataset or TokenizerTrainConfig.dataset
    cfg = config_from_args(args, parser, TokenizerTrainConfig, TOKENIZER_PRESETS.get(dataset, {}))
    try:
        return train_tokenizer(cfg)
    except (OSError, ValueError) as e:  # bad data paths/files/options: the messages say what
        sys.exit(f"error: {e}")


# -----------------------------------------------------------------------------
# The main job: `python train.py [--dataset D]`, one command for a dataset's whole pipeline (its
# recipe: config.pipeline_recipe)


def main_job(args, tok_parser, showo_parser):
    """`python train.py [--dataset D]`: the image and text tokenizers, Show-o's three stages and the
    evaluation; every part resumes if the job was interrupted and is skipped if finished."""
    t0 = time.time()
    run_dir, tokenizer_flags, showo_flags, stages = pipeline_recipe(args)
    # every part runs through its own command line, exactly as a user would type it (--resume: a
    # finished part loads and returns at once, an interrupted one continues)
    tokenizer_ckpt = main_tokenizer(tok_parser.parse_args(tokenizer_flags + ["--out", run_dir, "--resume"]), tok_parser)
    minutes = dict(tokenizer=round((time.time() - t0) / 60, 2))
    init, logs = None, []
    for stage, steps in stages.items():
        argv = showo_flags + ["--stage", str(stage), "--max-steps", str(steps), "--resume",
                              "--tokenizer", tokenizer_ckpt, "--out", os.path.join(run_dir, f"stage{stage}")]
        init = main_showo(showo_parser.parse_args(argv + (["--init", init] if init else [])), showo_parser)
        logs.append(os.path.join(os.path.dirname(init), "log.jsonl"))
    minutes["stages"] = round((time.time() - t0) / 60 - minutes["tokenizer"], 2)
    if distributed.start()[0] > 0:
        return None  # under torchrun the evaluation runs once, on rank 0
    try:  # the README's tables on held-out data, then the pictures
        metrics = evaluate_pipeline(tokenizer_ckpt, init, logs, run_dir, args.job_dataset, args.job_data_dir,
                                    args.job_seed, minutes, t0)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print_pipeline_summary(metrics, run_dir)
    return metrics


def main(argv=None):
    """No command: the main job; `tokenizer` / `showo`: one part, every option on the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    job = parser.add_argument_group("the main job (no command): one dataset's whole pipeline")
    # own dest names: a command's options of the same name (python train.py showo --seed 1) are its own
    job.add_argument("--dataset", dest="job_dataset", default="shapes", choices=data.DATASETS,
                     help="the data the pipeline trains on [default shapes, the built-in world]")
    job.add_argument("--data-dir", dest="job_data_dir", default=None, metavar="DIR", help="where cifar10/coco/folder data lives")
    job.add_argument("--limit", dest="job_limit", type=int, default=None, metavar="N", help="train on at most this many images")
    job.add_argument("--preset", dest="job_preset", choices=("cpu", "gpu"), default=None,
                     help="gpu: a larger model trained longer, for cifar10/coco/folder (config.GPU_PIPELINES) "
                          "[default: gpu on CUDA, else cpu]")
    job.add_argument("--seed", dest="job_seed", type=int, default=0, metavar="N", help="seed of every part of the main job [default 0]")
    job.add_argument("--out", dest="job_out", default=None, metavar="DIR",
                     help="run folder [default out/DATASET, plus a suffix per change: -gpu, -seedN, -limitN, ...]")
    job.add_argument("--slot-embedding", dest="job_slot_embedding", action=argparse.BooleanOptionalAction, default=None,
                     help="turn the slot-embedding addition on or off in every stage [default: the dataset's preset]")
    job.add_argument("--text-conv", dest="job_text_conv", type=int, default=None, metavar="W",
                     help="the text-convolution addition's width in every stage, 0 = off [default: the dataset's preset]")
    sub = parser.add_subparsers(dest="command")
    tok = sub.add_parser("tokenizer", help="train the text BPE and the LFQ image tokenizer")
    add_config_arguments(tok, TokenizerTrainConfig, TOKENIZER_PRESETS, "data")
    showo = sub.add_parser("showo", help="train the Show-o transformer (one stage) on tokenized data")
    stage_mixes = {f"stage {k}": mix for k, mix in SHOWO_STAGES.items()}  # the mix options' defaults per stage
    add_config_arguments(showo, ShowoTrainConfig, {**SHOWO_PRESETS, **stage_mixes}, "data", skip=FROM_TOKENIZERS)
    args = parser.parse_args(argv)
    if args.command is None:
        if args.job_dataset == "shapes" and args.job_data_dir is not None:  # the world is generated
            parser.error("--data-dir is not needed for shapes")
        try:  # the trainers' own check of the data options, before any part starts
            check_run_options(SimpleNamespace(dataset=args.job_dataset, data_dir=args.job_data_dir,
                                              limit=args.job_limit), ())
        except ValueError as e:
            parser.error(str(e))
        return main_job(args, tok, showo)
    if any(getattr(args, a.dest) != a.default for a in job._group_actions):
        parser.error("options before a command belong to the main job: put the command's own options after "
                     f"it (python train.py {args.command} --dataset D --seed N ...)")
    if args.command == "showo":
        return main_showo(args, showo)
    return main_tokenizer(args, tok)


if __name__ == "__main__":
    main()
