"""
Training programs.

    python train.py                      # the main job: tokenizers, Show-o's three stages, evaluation (shapes)
    python train.py tokenizer --dataset shapes --out out/shapes
    python train.py tokenizer --dataset cifar10 --data-dir ../shared/data --out out/cifar10
    python train.py tokenizer --help     # every option, grouped (model, data, optimisation, run), with presets
    python train.py showo --dataset shapes --stage 1                 # Show-o on the tokenized data
    python train.py showo --stage 2 --init out/shapes/stage1/showo.pt

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
import hashlib
import inspect
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace

import torch
from tqdm import tqdm

import data
from data.tasks import TASK_NAMES, TaskRows
from evaluate import evaluate_showo, evaluate_tokenizer, psnr, reconstruct
from model import (Showo, ShowoConfig, autocast, autodetect_device, file_digest, generate_images, joint_loss,
                   load_showo, mask_image_tokens, optimizer_groups, showo_checkpoint, training_labels)
from sample import Pipeline, image_grid, plot_losses, steps_strip
from tokenizer import (ImageTokenizer, ImageTokenizerConfig, TextTokenizer, TASKS, images_to_tensor,
                       image_tokenizer_checkpoint, load_image_tokenizer, read_checkpoint, save_bpe, train_bpe)

# -----------------------------------------------------------------------------
# Shared by both trainers: checkpoints, the schedule, the data order, the run folder


def atomic_save(obj, path):
    """torch.save to a temporary file in the same folder, then rename: readers only ever see a
    complete old file or a complete new one, even after kill -9 mid-write."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def lr_at(step, cfg):
    """Linear warm-up, then cosine decay from lr to lr * min_lr_frac."""
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
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def batch_indices(step, n, batch_size, seed):
    """The images of training step `step`: epoch e is a random permutation seeded by (seed, e), and
    step s takes its slice. A pure function of the step, so a resumed run sees exactly the data the
    uninterrupted run would have seen."""
    per_epoch = max(1, n // batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[i * batch_size:(i + 1) * batch_size]


def start_run(cfg, checkpoint_name):
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
    train_ds = data.load(cfg.dataset, "train", cfg.data_dir, image_size, cfg.limit, cfg.seed)
    if cfg.dataset == "folder":
        eval_ds, held_out = train_ds, f"training-set {measured} (a folder has no held-out split)"
    else:
        eval_ds = data.load(cfg.dataset, "val" if cfg.dataset == "coco" else "test", cfg.data_dir, image_size,
                            n_eval, cfg.seed)
        held_out = f"held-out {eval_ds.split} {measured}"
    if len(train_ds) < cfg.batch_size:
        sys.exit(f"error: {len(train_ds)} training images is fewer than one batch ({cfg.batch_size})")
    return train_ds, eval_ds, held_out


def check_run_options(cfg, at_least_one):
    """What both trainers' configs must hold: a known dataset with its data folder, positive counts."""
    if cfg.dataset not in data.DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(data.DATASETS)}")
    if cfg.dataset != "shapes" and cfg.data_dir is None:
        raise ValueError(f"--data-dir is needed for {cfg.dataset} (e.g. ../shared/data)")
    for name in at_least_one + ("limit",):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")


# -----------------------------------------------------------------------------
# Tokenizer training: the run's options, and a CPU-sized preset per dataset


@dataclass
class TokenizerTrainConfig:
    """`train.py tokenizer`. The image tokenizer it trains is `model`, its own config."""
    model: ImageTokenizerConfig = field(default_factory=ImageTokenizerConfig)
    # data
    dataset: str = "shapes"       # shapes | cifar10 | coco | folder
    data_dir: str = None          # where cifar10/coco/folder data lives (shapes needs none)
    limit: int = None             # use at most this many training images
    eval_images: int = 500        # held-out images used by the periodic evaluation
    bpe_vocab: int = 512          # text tokenizer size (stops early if the captions run out of pairs)
    # optimisation
    max_steps: int = 1500         # optimizer steps in all (a resumed run continues to this)
    batch_size: int = 64          # images per step
    lr: float = 2e-3              # peak AdamW learning rate
    warmup_steps: int = 100       # linear warm-up, then cosine decay to lr * min_lr_frac
    min_lr_frac: float = 0.05     # final learning rate as a fraction of --lr
    grad_clip: float = 1.0        # clip the gradient's global norm to this
    # run
    out: str = "out/shapes"       # run folder: tokenizer.pt, text.tiktoken, recon.png, log
    eval_every: int = 250         # evaluate + grid + checkpoint every this many steps
    seed: int = 0                 # data order, model init and the shapes world all follow it
    device: str = "auto"          # auto (cuda -> mps -> cpu) | cpu | cuda | mps
    compile: bool = False         # torch.compile the model (CUDA only; ignored elsewhere)
    resume: bool = False          # continue from OUT/tokenizer.pt

    def __post_init__(self):
        check_run_options(self, ("max_steps", "batch_size", "eval_every", "eval_images"))


# Presets per dataset, for the README's quality targets; any option of --help may appear here.
TOKENIZER_PRESETS = {
    # shapes: 8x downsampling, 4x4 tokens per image (a grid cell of the scene is 2x2 tokens). The
    # narrow network reaches 100% scorer agreement for every seed tried; K = 12 bits, because at
    # K = 10 small objects of similar colour or shape shared codes for longer (docs/findings.md).
    "shapes": dict(codebook_bits=12, channels=(32, 64, 64), max_steps=1200, eval_every=300, entropy_weight=0.025,
                   out="out/shapes"),
    # CIFAR-10: 4x downsampling (8x8 tokens). A stronger entropy penalty, taken over every token of
    # the batch, keeps >= 90% of the 2^15 codes in use on natural images (README, "Image tokenizer").
    "cifar10": dict(codebook_bits=15, entropy_tokens=4096, max_steps=7000, eval_every=1000, entropy_weight=0.03,
                    out="out/cifar10", bpe_vocab=320),
    # Photos like CIFAR-10's; these two presets are smoke-tested only, not tuned.
    "coco": dict(codebook_bits=12, max_steps=3000, entropy_weight=0.05, out="out/coco", bpe_vocab=2048),
    "folder": dict(codebook_bits=12, max_steps=3000, entropy_weight=0.05, out="out/folder"),
}
# Options that fix the data order and the schedule: a resumed run must use the same ones.
RESUME_MUST_MATCH = ("dataset", "limit", "batch_size", "seed", "lr", "warmup_steps", "min_lr_frac")


def train_text_tokenizer(ds, cfg):
    """Train the BPE vocabulary on every text the model will read (the captions, and the questions
    and answers where there are some) unless a resumed run already has one. Written atomically
    like the checkpoints."""
    path = os.path.join(cfg.out, "text.tiktoken")
    if cfg.resume and os.path.exists(path):
        tok = TextTokenizer.from_file(path)
        print(f"text tokenizer: kept {path} ({tok.vocab_size} tokens)")
        return tok
    texts, source = [c for caps in ds.captions for c in caps], f"{cfg.dataset} captions"
    if ds.qa is not None:
        texts, source = texts + [f"{q} {a}" for pairs in ds.qa for q, a, _ in pairs], source + " and QA"
    t0 = time.time()
    ranks = train_bpe(texts, cfg.bpe_vocab)
    save_bpe(ranks, path + ".tmp")
    os.replace(path + ".tmp", path)
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
        changed = [k for k in RESUME_MUST_MATCH if ckpt["train_config"][k] != getattr(cfg, k)]
        if changed:
            sys.exit(f"error: cannot resume {ckpt_path} with different "
                     f"{', '.join('--' + k.replace('_', '-') for k in changed)} (they fix the data order and schedule)")
        step = ckpt["step"]
    model.to(device).train()
    # No weight decay anywhere here: a small conv autoencoder does not need it, and decaying
    # GroupNorm scales is a known way to hurt (see the reference notes on Show-o's quirks).
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
    bits = cfg.model.codebook_bits
    stats = dict(step=done, loss=round(losses["loss"].item(), 5), lr=lr_at(done - 1, cfg),
                 eval_psnr=round(float(psnr(eval_images, recon).mean()), 3),
                 eval_usage=round(codes.unique().numel() / 2 ** bits, 4),
                 token_entropy=round(losses["token_entropy"].item(), 4),
                 batch_entropy=round(losses["batch_entropy"].item(), 4))
    tqdm.write(f"step {done}: eval PSNR {stats['eval_psnr']:.2f} dB, codes used "
               f"{100 * stats['eval_usage']:.1f}% (of {2 ** bits}, {len(eval_images)} images)")
    image_grid([eval_images[:16], recon[:16]]).save(os.path.join(cfg.out, "recon.png"))
    rng = dict(rng_cpu=torch.get_rng_state())
    if device.type == "cuda":
        rng["rng_cuda"] = torch.cuda.get_rng_state()
    atomic_save(image_tokenizer_checkpoint(model, optimizer=optimizer.state_dict(), step=done,
                                           dataset=cfg.dataset, train_config=asdict(cfg), **rng), ckpt_path)
    return stats


def train_tokenizer(cfg):
    device, ckpt_path = start_run(cfg, "tokenizer.pt")
    torch.manual_seed(cfg.seed)
    train_ds, eval_ds, held_out = load_splits(cfg, cfg.model.image_size, cfg.eval_images, "images")
    eval_images = eval_ds.images[:cfg.eval_images]
    print(f"data: {len(train_ds)} {cfg.dataset} training images; evaluation on {len(eval_images)} {held_out}")
    train_text_tokenizer(train_ds, cfg)
    model, optimizer, step = tokenizer_and_optimizer(cfg, ckpt_path, device)
    n_params, side = sum(p.numel() for p in model.parameters()), cfg.model.latent_size
    print(f"image tokenizer: {n_params / 1e6:.2f}M parameters, {cfg.model.image_size}px -> {side}x{side} tokens "
          f"of {cfg.model.codebook_bits} bits ({2 ** cfg.model.codebook_bits} codes), device {device}")
    train_model = torch.compile(model) if cfg.compile and device.type == "cuda" else model

    images = torch.from_numpy(train_ds.images)  # (N, H, W, 3) uint8, indexed per batch
    log = open(os.path.join(cfg.out, "tokenizer_log.txt"), "a")
    t0 = time.time()
    bar = tqdm(range(step, cfg.max_steps), initial=step, total=cfg.max_steps, desc="tokenizer",
               dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        x = images_to_tensor(images[batch_indices(step, len(images), cfg.batch_size, cfg.seed)]).to(device)
        with autocast(device):
            _, _, losses = train_model(x)
        update(losses["loss"], model, optimizer, cfg.grad_clip, step, ckpt_path)
        # PSNR of the batch from its MSE: pixels span [-1, 1], so the peak-to-peak squared is 4
        bar.set_postfix(loss=f"{losses['loss'].item():.4f}",
                        psnr=f"{10 * math.log10(4 / max(losses['mse'].item(), 1e-10)):.1f}")
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.max_steps:
            stats = evaluate_and_save_tokenizer(model, optimizer, cfg, done, losses, eval_images, device, ckpt_path)
            # Log after the checkpoint: a crash in between never leaves a logged step to be redone.
            log.write(json.dumps(dict(stats, minutes=round((time.time() - t0) / 60, 2))) + "\n")
            log.flush()
    log.close()
    print(f"done: {ckpt_path}, reconstructions in {os.path.join(cfg.out, 'recon.png')} "
          f"({(time.time() - t0) / 60:.1f} min)")
    return ckpt_path


# -----------------------------------------------------------------------------
# Show-o training: the batch mix, the run's options, the three stages


@dataclass
class TaskMix:
    """What one batch holds (section 3.4): its share of rows per task, and the joint loss's weights."""
    t2i_frac: float = 0.5         # text-to-image rows (MTP loss); the fractions are normalised to sum to 1
    caption_frac: float = 0.4     # captioning rows (understanding, NTP loss)
    vqa_frac: float = 0.0         # question -> answer rows (understanding, NTP loss)
    lm_frac: float = 0.1          # text-only language-modelling rows (NTP loss)
    cond_dropout: float = 0.1     # probability that a text-to-image prompt is replaced by the empty one (for guidance)
    w_t2i: float = 1.0            # weight of the MTP loss in L = w_t2i L_MTP + w_mmu L_MMU + w_lm L_LM (equation 4)
    w_mmu: float = 1.0            # weight of the understanding rows' NTP loss
    w_lm: float = 0.1             # weight of the text-only rows' NTP loss (Show-o's configs: 1, 1, 0.1)

    def __post_init__(self):
        fracs = (self.t2i_frac, self.caption_frac, self.vqa_frac, self.lm_frac)
        if min(fracs) < 0 or sum(fracs) <= 0:
            raise ValueError("the task fractions must be >= 0 and not all 0")
        if not 0 <= self.cond_dropout <= 1:
            raise ValueError("--cond-dropout must be in [0, 1]")

    def counts(self, batch_size):
        """Rows per task in a batch of batch_size, from the fractions (largest remainder rounding)."""
        fracs = dict(zip(TASK_NAMES, (self.t2i_frac, self.caption_frac, self.vqa_frac, self.lm_frac)))
        exact = {k: batch_size * v / sum(fracs.values()) for k, v in fracs.items()}
        counts = {k: int(v) for k, v in exact.items()}
        for k in sorted(exact, key=lambda k: counts[k] - exact[k])[:batch_size - sum(counts.values())]:
            counts[k] += 1
        return counts


@dataclass
class ShowoTrainConfig:
    """`train.py showo`. The transformer it trains is `model` (model.ShowoConfig), its batches `mix`."""
    model: ShowoConfig = field(default_factory=ShowoConfig)
    mix: TaskMix = field(default_factory=TaskMix)
    # data
    dataset: str = "shapes"       # shapes | cifar10 | coco | folder
    data_dir: str = None          # where cifar10/coco/folder data lives (shapes needs none)
    tokenizer: str = None         # image tokenizer checkpoint, text.tiktoken beside it (None: the one in OUT/..)
    limit: int = None             # use at most this many training images
    eval_rows: int = 256          # held-out rows for the periodic evaluation
    # stage (section 3.4): each stage sets the defaults of the mix options
    stage: int = 1                # 1: class/label-conditional generation + captioning + LM; 2: captions; 3: QA
    init: str = None              # start from this Show-o checkpoint's weights (the previous stage's)
    # optimisation
    max_steps: int = 1000         # optimizer steps in all (a resumed run continues to this)
    batch_size: int = 64          # rows per step
    lr: float = 1e-3              # peak AdamW learning rate
    weight_decay: float = 0.05    # on linear-layer matrices only (not norms, biases, embeddings)
    warmup_steps: int = 50        # linear warm-up, then cosine decay to lr * min_lr_frac
    min_lr_frac: float = 0.1      # final learning rate as a fraction of --lr
    grad_clip: float = 1.0        # clip the gradient's global norm to this
    # run
    out: str = None               # run folder for showo.pt and log.jsonl (None: out/DATASET/stageN)
    eval_every: int = 100         # held-out losses + checkpoint every this many steps
    seed: int = 0                 # data order, masking and model init all follow it
    device: str = "auto"          # auto (cuda -> mps -> cpu) | cpu | cuda | mps
    compile: bool = False         # torch.compile the model (CUDA only; ignored elsewhere)
    resume: bool = False          # continue from OUT/showo.pt

    def __post_init__(self):
        check_run_options(self, ("max_steps", "batch_size", "eval_every", "eval_rows"))
        if self.stage not in SHOWO_STAGES:
            raise ValueError(f"--stage must be 1, 2 or 3, not {self.stage}")


# The paper's three stages (section 3.4) as batch mixes. Stage 1 conditions generation on class
# names where the data has classes (CIFAR-10); the shapes world and COCO have none, so their stage 1
# uses captions, like stage 2. Stage 3 adds question -> answer rows and keeps the other tasks in the
# mix so nothing learned earlier is forgotten.
SHOWO_STAGES = {
    1: dict(t2i_frac=0.5, caption_frac=0.4, vqa_frac=0.0, lm_frac=0.1),
    2: dict(t2i_frac=0.5, caption_frac=0.5, vqa_frac=0.0, lm_frac=0.0),
    3: dict(t2i_frac=0.4, caption_frac=0.2, vqa_frac=0.4, lm_frac=0.0),
}
# shapes: at a CPU budget of minutes a narrow model that takes more steps learns more than a wide
# one, and 8 heads of 16 dimensions learn more than 4 of 32 at the same cost (docs/findings.md). The
# two additions (model.py, "Additions") are on here; the README shows the main job without each.
SHOWO_PRESETS = {"shapes": dict(max_steps=1000, n_embd=128, n_head=8, lr=5e-3, slot_embedding=True, text_conv=3),
                 "cifar10": dict(max_steps=2000),
                 "coco": dict(max_steps=1000), "folder": dict(max_steps=1000)}
SHOWO_RESUME_MUST_MATCH = ("dataset", "data_dir", "limit", "stage", "batch_size", "seed", "lr", "weight_decay",
                           "warmup_steps", "min_lr_frac", "max_steps", "grad_clip") + tuple(f.name for f in fields(TaskMix))
FROM_TOKENIZERS = ("text_vocab_size", "codebook_size", "image_tokens")  # ShowoConfig fields the tokenizers fix


def image_codes(ds, tokenizer_path, device):
    """Tokenize every image of ds once and cache the codes next to the tokenizer, so training steps
    never run the image encoder. The cache file is named by the tokenizer's digest and a digest of
    the images themselves: other data (another folder, another --limit or seed) gets another file.
    -> (N, h*w) int64 codes."""
    images_digest = hashlib.sha256(ds.images.tobytes()).hexdigest()[:16]
    key = f"{ds.name}-{ds.split}-{len(ds)}-{images_digest}-{file_digest(tokenizer_path)}"
    cache = os.path.join(os.path.dirname(os.path.abspath(tokenizer_path)), "cache", f"codes-{key}.pt")
    if os.path.exists(cache):
        try:
            codes = read_checkpoint(cache)
            if isinstance(codes, torch.Tensor) and codes.shape[0] == len(ds):
                return codes.long()
        except ValueError:
            pass
        print(f"cache {cache} is damaged; tokenizing again")
    model, _ = load_image_tokenizer(tokenizer_path)
    model.to(device)
    codes = []
    for i in tqdm(range(0, len(ds), 256), desc=f"tokenizing {ds.name} {ds.split}", dynamic_ncols=True):
        x = images_to_tensor(ds.images[i:i + 256]).to(device)
        with torch.no_grad(), autocast(device):
            codes.append(model.encode(x).flatten(1).cpu())  # (b, h, w) -> (b, h*w), row-major
    codes = torch.cat(codes).to(torch.int32)  # half the disk of int64; 2^K <= 2^24 fits
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    atomic_save(codes, cache)
    return codes.long()


def seeded(*parts):
    """(random.Random, torch.Generator) seeded from the parts, e.g. (seed, "train", step): every
    step's randomness is a pure function of its name, whatever ran before it."""
    name = "/".join(map(str, parts))
    number = int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)
    return random.Random(name), torch.Generator().manual_seed(number)


def build_batch(rows_of, items, cfg, rng, gen):
    """Dataset items -> one batch with its rows split over the tasks by the configured fractions,
    prompts dropped for guidance, and images masked for MTP, as one padded group per loss term:
    text-to-image rows, understanding rows (captions and questions), text-only rows. Each group is
    padded to its own longest row, not the batch's: in stage 3 a text-to-image row (about 27 ids)
    would otherwise be padded to a question row's 61, and the CPU computes padding like any token.
    Every loss term lives in one group, so the per-task mean losses are those of one padded batch.
    -> [(input ids (b, L), labels (b, L), task (b,))], one per task present."""
    rows = []
    for task, n in cfg.mix.counts(len(items)).items():
        rows += [rows_of.row(task, i, rng, cfg.mix.cond_dropout) for i in items[len(rows):len(rows) + n]]
    space, groups, flex = rows_of.space, [], cfg.model.flex_attention
    # FlexAttention compiles one kernel per sequence length: give it the one longest possible length,
    # and one group (every group would be that long, so splitting would only add forward passes).
    length = rows_of.max_len if flex else None
    for kinds in [TASKS] if flex else [(kind,) for kind in TASKS]:
        group = [r for r in rows if r.task in kinds]
        if group:
            ids, text_targets, task = space.pad_rows(group, length)               # (b, L), (b, L), (b,)
            inputs, masked = mask_image_tokens(ids, task, space, gen)             # MTP: hide part of each image
            groups.append((inputs, training_labels(ids, text_targets, masked, space), task))
    return groups


def showo_batch(rows_of, step, cfg):
    """The batch of training step `step` (its groups, see build_batch): a pure function of (seed,
    stage, step), like batch_indices, so a resumed run sees the same rows, the same condition
    dropout and the same masks, and a later stage does not replay an earlier one's draws."""
    rng, gen = seeded(cfg.seed, "train", cfg.stage, step)
    items = batch_indices(step, len(rows_of.codes), cfg.batch_size, cfg.seed + 1000 * cfg.stage).tolist()
    return build_batch(rows_of, items, cfg, rng, gen)


def batch_losses(model, groups, device):
    """The per-task losses of one batch built by build_batch: one forward pass per row group, their
    loss terms side by side (each term must come from one group, or its mean would be wrong)."""
    losses = {}
    for ids, labels, task in groups:
        with autocast(device):
            _, group_losses = model(ids.to(device), labels.to(device), task.to(device))
        if set(group_losses) & set(losses):  # e.g. interleaved rows (t2i + mmu terms) in their own group
            raise RuntimeError(f"two row groups both have {set(group_losses) & set(losses)} losses")
        losses.update(group_losses)
    return losses


@torch.no_grad()
def held_out_losses(model, rows_of, cfg, device, n_rows):
    """Per-task losses on fixed held-out rows (same rows and masks at every evaluation)."""
    model.eval()
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
    (text tokenizer, image size, {what: (path, digest)}); fills in the model config's sizes that
    the tokenizers fix (vocabulary, codebook, tokens per image)."""
    text_path = os.path.join(os.path.dirname(os.path.abspath(cfg.tokenizer)), "text.tiktoken")
    image_tok, _ = load_image_tokenizer(cfg.tokenizer)
    if not os.path.exists(text_path):
        raise FileNotFoundError(f"no text tokenizer at {text_path} (train.py tokenizer writes it next to tokenizer.pt)")
    text_tok = TextTokenizer.from_file(text_path)
    cfg.model = replace(cfg.model, text_vocab_size=text_tok.vocab_size, codebook_size=image_tok.codebook_size,
                        image_tokens=image_tok.cfg.latent_size ** 2)
    files = dict(tokenizer=(os.path.abspath(cfg.tokenizer), file_digest(cfg.tokenizer)),
                 text_tokenizer=(text_path, file_digest(text_path)))
    return text_tok, image_tok.cfg.image_size, files


def check_vocabulary(ckpt, path, model_cfg, files):
    """A checkpoint is only usable with the tokenizers it was trained with: the same sizes are not
    enough, the ids must mean the same things."""
    cfg = ckpt["config"]
    if cfg["text_vocab_size"] != model_cfg.text_vocab_size or cfg["codebook_size"] != model_cfg.codebook_size:
        raise ValueError(f"{path} was trained with {cfg['text_vocab_size']} text ids and {cfg['codebook_size']} "
                         f"image codes, but the tokenizers give {model_cfg.text_vocab_size} and {model_cfg.codebook_size}")
    if ckpt.get("tokenizer_digest") != files["tokenizer"][1]:
        raise ValueError(f"{path} was trained with a different image tokenizer ({ckpt.get('tokenizer')}, digest "
                         f"{ckpt.get('tokenizer_digest')}) than {files['tokenizer'][1]}: its image codes mean other things")
    if ckpt.get("text_tokenizer_digest") != files["text_tokenizer"][1]:
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
        saved = resume_ckpt.get("train_config", {})
        saved = {**saved, **saved.get("mix", {})}                  # the batch mix's options inline
        now = {**asdict(cfg), **asdict(cfg.mix)}
        changed = [k for k in SHOWO_RESUME_MUST_MATCH if saved.get(k) != now[k]]
        if model.cfg != cfg.model or changed:
            sys.exit(f"error: cannot resume {ckpt_path} with different "
                     f"{', '.join('--' + k.replace('_', '-') for k in changed) or 'model options'}")
        step = resume_ckpt["step"]
    elif cfg.init:
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
    device, ckpt_path = start_run(cfg, "showo.pt")
    log_path = os.path.join(cfg.out, "log.jsonl")
    text_tok, image_size, files = showo_tokenizers(cfg)
    # Data: images become codes once (cached); rows are built per step from codes and text.
    train_ds, eval_ds, held_out = load_splits(cfg, image_size, cfg.eval_rows, "losses")
    train_rows = TaskRows(train_ds, image_codes(train_ds, cfg.tokenizer, device), text_tok, cfg.model, cfg.stage)
    eval_rows = TaskRows(eval_ds, image_codes(eval_ds, cfg.tokenizer, device), text_tok, cfg.model, cfg.stage)
    model, optimizer, step, resumed = showo_and_optimizer(cfg, ckpt_path, device, files)
    trim_log(log_path, step, resumed)
    space = cfg.model.space
    print(f"Show-o stage {cfg.stage}: {model.num_params() / 1e6:.2f}M parameters, vocabulary {space.vocab_size} "
          f"({space.text_vocab_size} text + 7 special + {space.codebook_size} image codes + [MASK]), "
          f"{cfg.model.image_tokens} tokens per image; batch of {cfg.batch_size} rows: "
          + ", ".join(f"{n} {k}" for k, n in cfg.mix.counts(cfg.batch_size).items() if n) + f"; device {device}")
    train_model = torch.compile(model) if cfg.compile and device.type == "cuda" else model
    weights = dict(t2i=cfg.mix.w_t2i, mmu=cfg.mix.w_mmu, lm=cfg.mix.w_lm)
    saved_with = dict(tokenizer=files["tokenizer"][0], tokenizer_digest=files["tokenizer"][1],
                      text_tokenizer=files["text_tokenizer"][0], text_tokenizer_digest=files["text_tokenizer"][1])

    log = open(log_path, "a")
    t0 = time.time()
    bar = tqdm(range(step, cfg.max_steps), initial=step, total=cfg.max_steps, desc=f"showo stage {cfg.stage}",
               dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = batch_losses(train_model, showo_batch(train_rows, step, cfg), device)
        if not losses:  # possible only when every row's text was cut before its answer
            sys.exit(f"error: the batch of step {step} has no loss targets; raise --max-text")
        loss = joint_loss(losses, weights)  # equation 4
        update(loss, model, optimizer, cfg.grad_clip, step, ckpt_path)
        record = dict(step=step + 1, lr=lr, loss=round(loss.item(), 5), **{k: round(v.item(), 5) for k, v in losses.items()})
        bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("loss", "t2i", "mmu", "lm")})
        done = step + 1
        checkpoint_now = done % cfg.eval_every == 0 or done == cfg.max_steps
        if checkpoint_now:
            record["eval"] = held_out_losses(model, eval_rows, cfg, device, cfg.eval_rows)
            record["minutes"] = round((time.time() - t0) / 60, 2)
            tqdm.write(f"step {done}: {held_out} " + ", ".join(f"{k} {v:.3f}" for k, v in record["eval"].items()))
        # The log line goes first: a crash between it and the checkpoint leaves a line that resume
        # drops and redoes, never a checkpointed step without its line.
        log.write(json.dumps(record) + "\n")
        log.flush()
        if checkpoint_now:
            atomic_save(showo_checkpoint(model, optimizer=optimizer.state_dict(), step=done, train_config=asdict(cfg),
                                         **saved_with), ckpt_path)
    log.close()
    print(f"done: {ckpt_path} ({(time.time() - t0) / 60:.1f} min), per-step losses in {log_path}")
    return ckpt_path


# -----------------------------------------------------------------------------
# Command line: one --flag per config field, grouped as the dataclasses group them


def documented_fields(config_cls, title):
    """{field: (group, help)} from the dataclass's source, so every option is documented once, where
    it is defined: the `# comment` after a field is its help, and a comment on a line of its own
    ("# optimisation") opens the group of the fields below it (the first group is `title`)."""
    names, group, found = {f.name for f in fields(config_cls)}, title, {}
    for line in inspect.getsource(config_cls).splitlines():
        if heading := re.match(r"^\s+# (.+)$", line):
            group = heading[1]
        elif (m := re.match(r"^\s+(\w+): [^=]+=[^#\n]*(?:#\s*(.+))?$", line)) and m[1] in names:
            found[m[1]] = (group, m[2] or "")
    return found


def add_config_arguments(parser, config_cls, presets, title, skip=()):
    """One --flag per field of config_cls and of its nested configs, each in its --help group;
    defaults stay None so that a dataset preset (shown in the help) can fill them."""
    for nested_cls, nested_title in nested_configs(config_cls):
        add_config_arguments(parser, nested_cls, presets, nested_title, skip)
    groups, documented = {}, documented_fields(config_cls, title)
    for f in fields(config_cls):
        if f.name in skip or is_dataclass(f.default_factory):
            continue
        group, comment = documented[f.name]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        preset_note = ", ".join(f"{k}: {v[f.name]}" for k, v in presets.items() if f.name in v)
        text = f"{comment} [default {f.default}" + (f"; presets: {preset_note}]" if preset_note else "]")
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:  # --flag / --no-flag; when neither is given a dataset preset or the default decides
            groups[group].add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = (lambda s: tuple(int(c) for c in s.split(","))) if f.type is tuple else f.type  # "32,64,64"
            groups[group].add_argument(flag, type=kind, default=None, help=text)


def nested_configs(config_cls):
    """[(dataclass, --help title)] of a config's nested configs: the model's own, the batch mix."""
    nested = [(f.name, f.default_factory) for f in fields(config_cls) if is_dataclass(f.default_factory)]
    return [(cls, f"{name} ({cls.__name__}, {'train' if cls.__module__ == '__main__' else cls.__module__}.py)")
            for name, cls in nested]


def make_config(config_cls, values):
    """config_cls from one flat dict of option values: each nested config takes its own fields."""
    parts = {f.name: make_config(f.default_factory, values) for f in fields(config_cls) if is_dataclass(f.default_factory)}
    own = {f.name: values[f.name] for f in fields(config_cls) if f.name in values and f.name not in parts}
    return config_cls(**own, **parts)


def config_from_args(args, parser, config_cls, preset):
    """The defaults, then the dataset's preset, then what the user typed; a bad value is a usage error."""
    values = {**preset, **{k: v for k, v in vars(args).items() if v is not None}}
    try:
        return make_config(config_cls, values)
    except ValueError as e:
        parser.error(str(e))


def main_showo(args, parser):
    stage = ShowoTrainConfig.stage if args.stage is None else args.stage
    if stage not in SHOWO_STAGES:
        parser.error(f"--stage must be 1, 2 or 3, not {stage}")
    dataset = args.dataset or ShowoTrainConfig.dataset
    # defaults: the dataset preset, then the stage's batch mix, then whatever the user typed
    preset = {**SHOWO_PRESETS.get(dataset, {}), **SHOWO_STAGES[stage], "out": os.path.join("out", dataset, f"stage{stage}")}
    cfg = config_from_args(args, parser, ShowoTrainConfig, preset)
    if cfg.tokenizer is None:
        cfg.tokenizer = os.path.join(os.path.dirname(os.path.normpath(cfg.out)), "tokenizer.pt")
    try:
        return train_showo(cfg)
    except (OSError, ValueError) as e:  # missing/incompatible tokenizers or checkpoints, bad data
        sys.exit(f"error: {e}")


def main_tokenizer(args, parser):
    cfg = config_from_args(args, parser, TokenizerTrainConfig, TOKENIZER_PRESETS.get(args.dataset or "shapes", {}))
    try:
        return train_tokenizer(cfg)
    except (OSError, ValueError) as e:  # bad data paths/files/options: the messages say what
        sys.exit(f"error: {e}")


# -----------------------------------------------------------------------------
# The main job: `python train.py`

# The main job's Show-o stages on the shapes world: steps per stage (the README gives their minutes).
MAIN_JOB_STAGES = {1: 1400, 2: 600, 3: 1400}
MAIN_JOB_PROMPT = "a red circle above a blue square"


def main_job(args, tok_parser, showo_parser):
    """`python train.py`: the image and text tokenizers, Show-o's three stages and the evaluation on
    the shapes world; every part resumes if the job was interrupted and is skipped if finished.
    args: the main job's own options (--seed, --out, and the model's additions for ablations)."""
    t0 = time.time()
    preset = SHOWO_PRESETS["shapes"]
    slot = preset["slot_embedding"] if args.job_slot_embedding is None else args.job_slot_embedding
    conv = preset["text_conv"] if args.job_text_conv is None else args.job_text_conv
    if conv < 0:  # checked before the tokenizer's minutes of training, not after
        sys.exit("error: --text-conv must be >= 0 (0: no text convolution)")
    # A changed addition gets its own run folder, so it never collides with the preset's checkpoints.
    suffix = f"-seed{args.job_seed}" if args.job_seed else ""
    if slot != preset["slot_embedding"]:
        suffix += "-slot" if slot else "-noslot"
    if conv != preset["text_conv"]:
        suffix += f"-textconv{conv}"
    run_dir = args.job_out or f"out/shapes{suffix}"
    common = ["--seed", str(args.job_seed)]
    tokenizer_ckpt = main_tokenizer(tok_parser.parse_args(common + ["--out", run_dir, "--resume"]), tok_parser)
    minutes = dict(tokenizer=round((time.time() - t0) / 60, 2))
    additions = ["--slot-embedding" if slot else "--no-slot-embedding", "--text-conv", str(conv)]
    init, logs = None, []
    for stage, steps in MAIN_JOB_STAGES.items():
        argv = common + additions + ["--stage", str(stage), "--max-steps", str(steps), "--resume",
                                     "--tokenizer", tokenizer_ckpt, "--out", os.path.join(run_dir, f"stage{stage}")]
        init = main_showo(showo_parser.parse_args(argv + (["--init", init] if init else [])), showo_parser)
        logs.append(os.path.join(os.path.dirname(init), "log.jsonl"))
    minutes["stages"] = round((time.time() - t0) / 60 - minutes["tokenizer"], 2)
    t_eval = time.time()
    metrics = {"tokenizer": evaluate_tokenizer(tokenizer_ckpt, "shapes")}
    metrics["showo"] = evaluate_showo(init, "shapes", seed=args.job_seed, out_dir=run_dir)
    pipe = Pipeline(init)  # one decoding, step by step, for learners to watch
    _, history = generate_images(pipe.model, [pipe.encode_text(MAIN_JOB_PROMPT)], steps=12, guidance=2.0,
                                 generator=torch.Generator().manual_seed(args.job_seed), record=True)
    steps_strip(pipe, history).save(os.path.join(run_dir, "steps.png"))
    plot_losses(logs, os.path.join(run_dir, "losses.png"))
    # wall-clock minutes of this call: a part skipped because it was finished costs (nearly) nothing
    metrics["minutes"] = dict(**minutes, evaluation=round((time.time() - t_eval) / 60, 2),
                              training=round(minutes["tokenizer"] + minutes["stages"], 2),
                              total=round((time.time() - t0) / 60, 2))
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    print_job_summary(metrics, run_dir)
    return metrics


def print_job_summary(metrics, run_dir):
    g, tok, showo = metrics["showo"]["geneval"], metrics["tokenizer"], metrics["showo"]
    print(f"\ntokenizer: held-out PSNR {tok['psnr']:.2f} dB, scorer agreement {100 * tok['scorer_agreement']:.1f}%")
    print("GenEval-style (shapes): " + ", ".join(f"{k} {v:.2f}" for k, v in g.items()))
    print(f"VQA {showo['vqa']:.3f}, POPE {showo['pope']:.3f}, caption exact-match {showo['caption_exact']:.3f} "
          f"(POPE answers yes {showo['pope_yes_ratio']:.2f})")
    print("minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["minutes"].items()))
    print(f"-> {run_dir}/: samples.png, steps.png, losses.png, metrics.json")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    job = parser.add_argument_group("the main job (no command)")
    # own dest names: a command's options of the same name (python train.py showo --seed 1) are its own
    job.add_argument("--seed", dest="job_seed", type=int, default=0, help="seed of every part of the main job [default 0]")
    job.add_argument("--out", dest="job_out", default=None,
                     help="run folder [default out/shapes, plus -seedN for seed N and a suffix per changed addition]")
    job.add_argument("--slot-embedding", dest="job_slot_embedding", action=argparse.BooleanOptionalAction, default=None,
                     help="turn the slot-embedding addition on or off in every stage [default: the shapes preset]")
    job.add_argument("--text-conv", dest="job_text_conv", type=int, default=None,
                     help="the text-convolution addition's width in every stage, 0 = off [default: the shapes preset]")
    sub = parser.add_subparsers(dest="command")
    tok = sub.add_parser("tokenizer", help="train the text BPE and the LFQ image tokenizer")
    add_config_arguments(tok, TokenizerTrainConfig, TOKENIZER_PRESETS, "data")
    showo = sub.add_parser("showo", help="train the Show-o transformer (one stage) on tokenized data")
    add_config_arguments(showo, ShowoTrainConfig, SHOWO_PRESETS, "data", skip=FROM_TOKENIZERS)
    args = parser.parse_args(argv)
    if args.command is None:
        return main_job(args, tok, showo)
    if (args.job_seed, args.job_out, args.job_slot_embedding, args.job_text_conv) != (0, None, None, None):
        parser.error("the main job's options (--seed, --out, --slot-embedding, --text-conv) go after the "
                     f"command: python train.py {args.command} --seed N ...")
    if args.command == "showo":
        return main_showo(args, showo)
    return main_tokenizer(args, tok)


if __name__ == "__main__":
    main()
