"""
Training programs.

    python train.py                      # the main job: tokenizers on the shapes world, then evaluation
    python train.py tokenizer --dataset shapes --out out/shapes
    python train.py tokenizer --dataset cifar10 --data-dir ../shared/data --out out/cifar10
    python train.py tokenizer --help     # every knob, with its preset value per dataset

`tokenizer` trains (1) a small byte-level BPE text vocabulary on the dataset's captions (seconds)
and (2) the LFQ image tokenizer of tokenizer.py (MAGVIT-v2, arXiv 2310.05737): reconstruction MSE +
0.25 commitment + an entropy penalty that keeps the 2^K codebook in use. Every `--eval-every` steps
it measures PSNR and codebook use on held-out images, writes a reconstruction grid
(`recon.png`: originals above, reconstructions below) and a checkpoint. Checkpoints are written
atomically (temporary file, then rename), so a crash never leaves a half-written file, and
`--resume` continues from the last one with the same step, optimizer state and data order.
"""
import argparse
import inspect
import json
import math
import os
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import data
from tokenizer import (ImageTokenizer, ImageTokenizerConfig, TextTokenizer, images_to_tensor,
                       image_tokenizer_checkpoint, load_bpe, load_image_tokenizer, save_bpe,
                       tensor_to_images, train_bpe)

# -----------------------------------------------------------------------------
# Shared plumbing (evaluate.py and bench.py import these)


def autodetect_device(requested="auto"):
    """cuda -> mps -> cpu, unless the user asked for one."""
    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            sys.exit(f"error: --device {requested} asked for, but CUDA is not available here")
        if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            sys.exit("error: --device mps asked for, but MPS is not available here")
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device):
    """bf16 autocast on CUDA only; CPU and MPS run in fp32 (CPU bf16 is slow, MPS support patchy)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def atomic_save(obj, path):
    """torch.save to a temporary file in the same folder, then rename: readers only ever see a
    complete old file or a complete new one, even after kill -9 mid-write."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def psnr(originals, reconstructions):
    """Per-image PSNR in dB of uint8 images (B, H, W, 3), the images a user actually sees."""
    err = (originals.astype(np.float64) - reconstructions.astype(np.float64)) ** 2
    mse = err.reshape(len(err), -1).mean(1)
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))  # (B,)


def image_grid(rows, labels=None, scale=4):
    """rows: list of uint8 (N, H, W, 3) arrays of equal N -> one PIL image, each row a strip.
    Images are upscaled with NEAREST so pixels stay visible."""
    n, h, w, _ = rows[0].shape
    pad = 2
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for i, img in enumerate(row):
            y, x = pad + r * (h + pad), pad + i * (w + pad)
            grid[y:y + h, x:x + w] = img
    img = Image.fromarray(grid)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


# -----------------------------------------------------------------------------
# Tokenizer training: the knobs, and a CPU-sized preset per dataset


@dataclass
class TokenizerTrainConfig:
    dataset: str = "shapes"       # shapes | cifar10 | coco | folder
    data_dir: str = None          # where cifar10/coco/folder data lives (shapes needs none)
    out: str = "out/shapes"       # run folder: tokenizer.pt, text.tiktoken, recon.png, log
    limit: int = None             # use at most this many training images
    image_size: int = 32          # images are resized (shorter side) and centre-cropped to this
    # model (ImageTokenizerConfig)
    bits: int = 10                # K: 2^K codes
    channels: str = "32,64,128"   # encoder/decoder widths per resolution (3 levels = 4x downsampling)
    res_blocks: int = 1           # residual blocks per resolution
    entropy_weight: float = 0.02  # weight of LFQ's entropy penalty (codebook use vs reconstruction)
    mse_weight: float = 1.0       # reconstruction loss = mse_weight * MSE + l1_weight * L1
    l1_weight: float = 0.0        # (pixels in [-1, 1]); e.g. --mse-weight 0 --l1-weight 1 for L1 only
    # optimisation
    max_steps: int = 1500         # optimizer steps in all (a resumed run continues to this)
    batch_size: int = 64          # images per step
    lr: float = 2e-3              # peak AdamW learning rate
    warmup_steps: int = 100       # linear warm-up, then cosine decay to lr * min_lr_frac
    min_lr_frac: float = 0.05     # final learning rate as a fraction of --lr
    grad_clip: float = 1.0        # clip the gradient's global norm to this
    eval_every: int = 250         # evaluate + grid + checkpoint every this many steps
    eval_images: int = 500        # held-out images used by the periodic evaluation
    bpe_vocab: int = 512          # text tokenizer size (stops early if the captions run out of pairs)
    bpe_text: str = None          # train the BPE on this UTF-8 text file instead of the captions
    seed: int = 0                 # data order, model init and the shapes world all follow it
    device: str = "auto"          # auto (cuda -> mps -> cpu) | cpu | cuda | mps
    compile: bool = False         # torch.compile the model (CUDA only; ignored elsewhere)
    resume: bool = False          # continue from OUT/tokenizer.pt


# Presets: chosen to meet the README's targets on a 2-core CPU within the stated time.
TOKENIZER_PRESETS = {
    "shapes": dict(bits=10, max_steps=600, eval_every=100, entropy_weight=0.01, out="out/shapes"),
    # CIFAR-10: a stronger entropy penalty keeps >= 90% of the 4096 codes in use on natural images.
    "cifar10": dict(bits=12, max_steps=4000, eval_every=500, entropy_weight=0.05, out="out/cifar10",
                    bpe_vocab=320),
    # Photos like CIFAR-10's; these two presets are smoke-tested only, not tuned.
    "coco": dict(bits=12, max_steps=3000, entropy_weight=0.05, out="out/coco", bpe_vocab=2048),
    "folder": dict(bits=12, max_steps=3000, entropy_weight=0.05, out="out/folder"),
}


def lr_at(step, cfg):
    """Linear warm-up, then cosine decay from lr to lr * min_lr_frac."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def batch_indices(step, n, batch_size, seed):
    """The images of training step `step`: epoch e is a random permutation seeded by (seed, e), and
    step s takes its slice. A pure function of the step, so a resumed run sees exactly the data the
    uninterrupted run would have seen."""
    per_epoch = max(1, n // batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[i * batch_size:(i + 1) * batch_size]


@torch.no_grad()
def reconstruct(model, images_uint8, device, batch_size=256):
    """uint8 (N, H, W, 3) -> (codes (N, h, w) int64, reconstructions uint8 (N, H, W, 3))."""
    codes, recons = [], []
    for i in range(0, len(images_uint8), batch_size):
        x = images_to_tensor(images_uint8[i:i + batch_size]).to(device)
        with autocast(device):
            c = model.encode(x)
            r = model.decode(c)
        codes.append(c.cpu())
        recons.append(tensor_to_images(r))
    return torch.cat(codes), np.concatenate(recons)


def train_text_tokenizer(ds, cfg):
    """Train the BPE vocabulary on the dataset's captions (or on --bpe-text) unless a resumed run
    already has one. Written atomically like the checkpoints."""
    path = os.path.join(cfg.out, "text.tiktoken")
    if cfg.resume and os.path.exists(path):
        tok = TextTokenizer.from_file(path)
        print(f"text tokenizer: kept {path} ({tok.vocab_size} tokens)")
        return tok
    if cfg.bpe_text:
        with open(cfg.bpe_text, encoding="utf-8") as f:
            texts, source = f.read().splitlines(), cfg.bpe_text
    else:
        texts, source = [c for caps in ds.captions for c in caps], f"{cfg.dataset} captions"
    t0 = time.time()
    ranks = train_bpe(texts, cfg.bpe_vocab)
    save_bpe(ranks, path + ".tmp")
    os.replace(path + ".tmp", path)
    tok = TextTokenizer.from_ranks(ranks)
    example = texts[0]
    print(f"text tokenizer: {len(ranks)}-token BPE trained on {len(texts)} lines of {source} in "
          f"{time.time() - t0:.1f}s -> {path}; {example!r} is {len(tok.encode(example))} tokens")
    return tok


# Options that fix the data order and the schedule: a resumed run must use the same ones.
RESUME_MUST_MATCH = ("dataset", "limit", "image_size", "batch_size", "seed", "lr", "warmup_steps", "min_lr_frac")


def train_tokenizer(cfg):
    device = autodetect_device(cfg.device)
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.out, exist_ok=True)
    ckpt_path = os.path.join(cfg.out, "tokenizer.pt")
    if os.path.exists(ckpt_path) and not cfg.resume:
        sys.exit(f"error: {ckpt_path} exists; pass --resume to continue it or choose another --out")

    train_ds = data.load(cfg.dataset, "train", cfg.data_dir, cfg.image_size, cfg.limit, cfg.seed)
    if cfg.dataset == "folder":  # a user's folder has no held-out split: say so rather than pretend
        eval_ds, held_out = train_ds, "training images (a folder has no held-out split)"
    else:
        eval_ds = data.load(cfg.dataset, "val" if cfg.dataset == "coco" else "test", cfg.data_dir,
                            cfg.image_size, cfg.eval_images, cfg.seed)
        held_out = f"held-out {eval_ds.split} images"
    eval_images = eval_ds.images[:cfg.eval_images]
    print(f"data: {len(train_ds)} {cfg.dataset} training images; evaluation on {len(eval_images)} {held_out}")
    if len(train_ds) < cfg.batch_size:
        sys.exit(f"error: {len(train_ds)} training images is fewer than one batch ({cfg.batch_size})")
    train_text_tokenizer(train_ds, cfg)

    model_cfg = ImageTokenizerConfig(image_size=cfg.image_size, codebook_bits=cfg.bits,
                                     channels=tuple(int(c) for c in cfg.channels.split(",")),
                                     res_blocks=cfg.res_blocks, entropy_weight=cfg.entropy_weight,
                                     mse_weight=cfg.mse_weight, l1_weight=cfg.l1_weight)
    model, ckpt, step = ImageTokenizer(model_cfg), None, 0
    if cfg.resume and os.path.exists(ckpt_path):
        model, ckpt = load_image_tokenizer(ckpt_path)
        if model.cfg != model_cfg:
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
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in ckpt:
            torch.cuda.set_rng_state(ckpt["rng_cuda"])
        print(f"resumed from {ckpt_path} at step {step}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"image tokenizer: {n_params / 1e6:.2f}M parameters, {cfg.image_size}px -> "
          f"{model_cfg.latent_size}x{model_cfg.latent_size} tokens of {cfg.bits} bits "
          f"({2 ** cfg.bits} codes), device {device}")
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
        loss = losses["loss"]
        if not torch.isfinite(loss):
            sys.exit(f"error: loss became {loss.item()} at step {step}; stopping. The last good "
                     f"checkpoint is {ckpt_path}. Try a lower --lr.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{10 * math.log10(4 / max(losses['mse'].item(), 1e-10)):.1f}")

        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.max_steps:
            model.eval()
            codes, recon = reconstruct(model, eval_images, device)
            model.train()
            stats = dict(step=done, loss=round(loss.item(), 5), lr=lr_at(step, cfg),
                         eval_psnr=round(float(psnr(eval_images, recon).mean()), 3),
                         eval_usage=round(codes.unique().numel() / 2 ** cfg.bits, 4),
                         token_entropy=round(losses["token_entropy"].item(), 4),
                         batch_entropy=round(losses["batch_entropy"].item(), 4),
                         minutes=round((time.time() - t0) / 60, 2))
            tqdm.write(f"step {done}: eval PSNR {stats['eval_psnr']:.2f} dB, codes used "
                       f"{100 * stats['eval_usage']:.1f}% (of {2 ** cfg.bits}, {len(eval_images)} images)")
            image_grid([eval_images[:16], recon[:16]]).save(os.path.join(cfg.out, "recon.png"))
            rng = dict(rng_cpu=torch.get_rng_state())
            if device.type == "cuda":
                rng["rng_cuda"] = torch.cuda.get_rng_state()
            atomic_save(image_tokenizer_checkpoint(model, optimizer=optimizer.state_dict(), step=done,
                                                   dataset=cfg.dataset, train_config=asdict(cfg), **rng), ckpt_path)
            # Log after the checkpoint: a crash in between never leaves a logged step to be redone.
            log.write(json.dumps(stats) + "\n")
            log.flush()
    log.close()
    print(f"done: {ckpt_path}, reconstructions in {os.path.join(cfg.out, 'recon.png')} "
          f"({(time.time() - t0) / 60:.1f} min)")
    return ckpt_path


# -----------------------------------------------------------------------------
# Command line


def field_comments(config_cls):
    """The `# comment` after each field in the dataclass's source: the knobs are documented once,
    where they are defined, and --help shows the same words."""
    source = inspect.getsource(config_cls)
    return dict(re.findall(r"^\s+(\w+): [^=]+=[^#\n]*#\s*(.+)$", source, flags=re.M))


def add_config_arguments(parser, config_cls, presets):
    """One --flag per dataclass field; defaults stay None so a dataset preset can fill them."""
    comments = field_comments(config_cls)
    for f in fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            parser.add_argument(flag, action="store_true", help=comments.get(f.name))
        else:
            preset_note = ", ".join(f"{k}: {v[f.name]}" for k, v in presets.items() if f.name in v)
            parser.add_argument(flag, type=f.type, default=None,
                                help=f"{comments.get(f.name, '')} [default {f.default}"
                                + (f"; presets: {preset_note}]" if preset_note else "]"))


def config_from_args(args, config_cls, presets):
    values = presets.get(args.dataset or config_cls.dataset, {}).copy()
    values.update({k: v for k, v in vars(args).items() if v is not None and k in {f.name for f in fields(config_cls)}})
    for f in fields(config_cls):
        if f.type is bool:
            values[f.name] = getattr(args, f.name)
    return config_cls(**values)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    tok = sub.add_parser("tokenizer", help="train the text BPE and the LFQ image tokenizer")
    add_config_arguments(tok, TokenizerTrainConfig, TOKENIZER_PRESETS)
    args = parser.parse_args(argv)
    main_job = args.command is None
    if main_job:  # the main job: the shapes preset, resumed if it was interrupted, then evaluated
        args = parser.parse_args(["tokenizer", "--resume"])
    if args.dataset is not None and args.dataset not in data.DATASETS:
        parser.error(f"--dataset must be one of {', '.join(data.DATASETS)}")
    cfg = config_from_args(args, TokenizerTrainConfig, TOKENIZER_PRESETS)
    for name in ("max_steps", "batch_size", "eval_every", "eval_images", "bits", "res_blocks"):
        if getattr(cfg, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.bits > 24:
        parser.error("--bits above 24 makes codebooks too large for this toy setting")
    if cfg.dataset != "shapes" and cfg.data_dir is None:
        parser.error(f"--data-dir is needed for {cfg.dataset} (e.g. ../shared/data)")
    try:
        ckpt_path = train_tokenizer(cfg)
        if main_job:  # finish the main job with the held-out evaluation of evaluate.py
            from evaluate import evaluate_tokenizer
            metrics = evaluate_tokenizer(ckpt_path, cfg.dataset, cfg.data_dir, device=cfg.device)
            with open(os.path.join(cfg.out, "metrics.json"), "w") as f:
                json.dump(metrics, f, indent=1)
            print(f"held-out {metrics['split']} split: PSNR {metrics['psnr']:.2f} dB, codes used "
                  f"{100 * metrics['usage']:.1f}%, scorer agreement {100 * metrics['scorer_agreement']:.1f}% "
                  f"-> {os.path.join(cfg.out, 'metrics.json')}")
    except (OSError, ValueError) as e:  # bad data paths/files/options: the messages say what
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
