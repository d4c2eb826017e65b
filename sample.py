"""
Sample from a trained Show-o: images from text, captions and answers from images, inpainting,
extrapolation and plain text (Show-o, arXiv 2408.12528, section 3.5).

    python sample.py --ckpt out/shapes/stage3 --prompt "a red circle above a blue square" -n 4
    python sample.py --ckpt out/shapes/stage3 --prompt "two green triangles" --show-steps
    python sample.py --ckpt out/shapes/stage3 --task caption --image some.png
    python sample.py --ckpt out/shapes/stage3 --task vqa --image some.png --question "what color is the circle?"
    python sample.py --ckpt out/shapes/stage3 --task inpaint --image some.png --mask 16,0,32,16 --prompt "a red square"
    python sample.py --ckpt out/shapes/stage3 --task extrapolate --image some.png --direction right --prompt "..."
    python sample.py --ckpt out/shapes/stage3 --task lm --prompt "a red"
    python sample.py --ckpt out/shapes/stories --task story --prompt "a large red circle in the top left" \
        --then "a small blue square appears below the red circle" --then "the circle turns green"

Follow one prompt: the text tokenizer turns it into ids; TokenSpace.t2i lays out
[T2I] [SOT] prompt [EOT] [SOI] [MASK] x N [EOI] (N = 16 image tokens with the shapes preset);
model.generate_images fills the N slots in --steps MaskGIT steps; the image tokenizer decodes the
codes to pixels; a labelled PNG grid is written to --out. Image outputs go to --out (default
out/samples/); text outputs are printed.
"""
import argparse
import json
import os
import sys
import textwrap
import warnings

import numpy as np
import torch
from PIL import Image, ImageDraw

from config import autodetect_device
from model import file_digest, generate_images, generate_text, load_showo
from tokenizer import TextTokenizer, images_to_tensor, load_image_tokenizer, tensor_to_images

# Every task is one of the paper's uses of the same network (section 3.5): the image tasks run the
# MaskGIT loop of model.generate_images, the text tasks the next-token loop of model.generate_text.
TASKS = ("t2i", "caption", "vqa", "inpaint", "extrapolate", "lm", "story")
DIRECTIONS = ("left", "right", "up", "down")
GUIDANCE = 2.0  # classifier-free guidance s of every image task but stories (evaluate.py's too)
# Stories are drawn without guidance: their texts pin every object down, and guidance, which raises
# in every cell what the text makes likely, adds objects (first images of held-out stories drawn as
# exactly their scene after the README's story run: 0.965 at s = 0, 0.455 at s = 2, 0.16 at s = 4)
STORY_GUIDANCE = 0.0


# -----------------------------------------------------------------------------
# Loading: the Show-o checkpoint and the two tokenizers it was trained with

class Pipeline:
    """A Show-o checkpoint with its image and text tokenizers, checked to be the ones it was
    trained with (by file digest), ready to turn prompts and pixels into ids and back."""

    def __init__(self, ckpt, device="auto"):
        self.device = autodetect_device(device)
        path = os.path.join(ckpt, "showo.pt") if os.path.isdir(ckpt) else ckpt  # a run folder or a file
        # loaded on the CPU first, so a checkpoint written on a GPU opens on any machine
        self.model, self.ckpt = load_showo(path, map_location="cpu")
        self.model.to(self.device)
        self.space = self.model.space
        run = os.path.join(os.path.dirname(os.path.abspath(path)), "..")
        # the run's own layout (out/<run>/stage<k>/showo.pt beside out/<run>/tokenizer.pt) or the
        # paths recorded at training time: the first file whose digest matches the checkpoint's
        tok_path = self.find([os.path.join(run, "tokenizer.pt"), self.ckpt.get("tokenizer")],
                             self.ckpt.get("tokenizer_digest"), "image tokenizer", path)
        text_path = self.find([os.path.join(run, "text.tiktoken"), self.ckpt.get("text_tokenizer")],
                              self.ckpt.get("text_tokenizer_digest"), "text tokenizer", path)
        self.image_tokenizer, _ = load_image_tokenizer(tok_path)
        self.image_tokenizer.to(self.device)
        self.text = TextTokenizer.from_file(text_path)
        self.grid = self.image_tokenizer.cfg.latent_size          # tokens per side (4 with the shapes preset)
        self.image_size = self.image_tokenizer.cfg.image_size

    @property
    def trained_on_stories(self):
        """Did the checkpoint's batches hold story rows (--story-frac)?"""
        return bool(self.ckpt.get("train_config", {}).get("mix", {}).get("story_frac"))

    @staticmethod
    def find(candidates, digest, what, ckpt_path):
        """The first candidate file whose SHA-256 digest is the one the checkpoint recorded. A file of
        the right name is not enough: a retrained tokenizer gives its codes other meanings, and the
        model would draw noise without any error."""
        existing = [c for c in candidates if c and os.path.exists(c)]
        for candidate in existing:
            if file_digest(candidate) == digest:
                return candidate
        if existing:
            raise ValueError(f"{', '.join(map(os.path.normpath, existing))}: not the {what} {ckpt_path} was trained with")
        raise FileNotFoundError(f"cannot find the {what} of {ckpt_path} (looked at "
                                f"{', '.join(os.path.normpath(c) for c in candidates if c)})")

    def encode_text(self, text):
        """A prompt -> BPE text ids; the task tokens are added by TokenSpace, never by the BPE."""
        return self.text.encode(text)

    def encode_images(self, images):
        """uint8 (B, H, W, 3) -> codes (B, N), the grid flattened row-major as in training."""
        with torch.no_grad():
            return self.image_tokenizer.encode(images_to_tensor(images).to(self.device)).flatten(1).cpu()

    def decode_codes(self, codes):
        """codes (B, N), -1 for still-masked slots -> uint8 (B, H, W, 3), masked slots painted grey."""
        codes = torch.as_tensor(codes)
        masked = codes < 0
        # a masked slot still needs some code to decode; code 0 stands in, then its cell is painted over
        grid = codes.clamp(min=0).view(-1, self.grid, self.grid).to(self.device)    # (B, N) -> (B, h, w)
        with torch.no_grad():
            images = tensor_to_images(self.image_tokenizer.decode(grid))
        if masked.any():
            # each token covers a cell x cell patch of pixels (8x8 for shapes): paint it grey
            cell = self.image_size // self.grid
            block = masked.view(-1, self.grid, self.grid).numpy().repeat(cell, 1).repeat(cell, 2)  # (B, H, W)
            images[block] = 128
        return images


def read_image(path, size):
    """A user's image file -> (size, size, 3) uint8, with a clear error when it cannot be read."""
    # the one decoding path every image takes (EXIF rotation, transparency, 16-bit greyscale,
    # centre crop): data/folder.py owns it; here its errors are reworded for a command-line user
    from data.folder import IMAGE_ERRORS, read_image as decode
    try:
        return decode(path, size)
    except FileNotFoundError:
        raise FileNotFoundError(f"no image at {path}") from None
    except IMAGE_ERRORS as e:
        raise ValueError(f"cannot read {path} as an image: {e}") from e


# -----------------------------------------------------------------------------
# Pictures

def image_grid(rows, scale=4):
    """rows: list of uint8 (N, H, W, 3) arrays of equal N -> one PIL image, each row a strip.
    Images are upscaled with NEAREST so pixels stay visible."""
    n, h, w, _ = rows[0].shape
    pad = 2  # white lines between images, so neighbouring reconstructions never look like one picture
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for i, img in enumerate(row):
            y, x = pad + r * (h + pad), pad + i * (w + pad)
            grid[y:y + h, x:x + w] = img
    img = Image.fromarray(grid)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def labelled_grid(images, labels, scale=4, per_row=None, label_width=22):
    """uint8 (N, H, W, 3) images with one caption each -> a PIL grid, captions wrapped under the
    images (NEAREST upscaling keeps the pixels visible)."""
    n, h, w, _ = images.shape
    per_row = per_row or min(n, 8)
    tile_w, tile_h = w * scale, h * scale
    # Pillow's default bitmap font is about 12 px a line: leave room for the longest wrapped caption
    lines = [textwrap.wrap(label, label_width) or [""] for label in labels]
    text_h = 12 * max(len(x) for x in lines) + 4
    rows = (n + per_row - 1) // per_row
    sheet = Image.new("RGB", (per_row * (tile_w + 6) + 6, rows * (tile_h + text_h + 6) + 6), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, text) in enumerate(zip(images, lines)):
        x, y = 6 + (i % per_row) * (tile_w + 6), 6 + (i // per_row) * (tile_h + text_h + 6)
        sheet.paste(Image.fromarray(img).resize((tile_w, tile_h), Image.NEAREST), (x, y))
        for j, line in enumerate(text):
            draw.text((x, y + tile_h + 2 + 12 * j), line, fill="black")
    return sheet


def steps_strip(pipe, history):
    """The canvas after every MaskGIT step of one sample, left to right: grey = still [MASK].
    history: generate_images' record, a list of (B, N) codes with -1 at masked slots; row 0 is drawn.
    With the cosine schedule few tokens are fixed at first and many at the end (section 3.5)."""
    frames = pipe.decode_codes(torch.stack([h[0] for h in history]))
    labels = [f"step {i + 1}: {int((h[0] < 0).sum())} masked" for i, h in enumerate(history)]
    return labelled_grid(frames, labels, per_row=len(frames), label_width=16)


def story_sheet(images, texts):
    """Stories as rows: images[b] (k_b, H, W, 3) with the k_b texts of story b under them; a row
    shorter than the longest ends in white."""
    width, tiles, labels = max(map(len, texts)), [], []
    for drawn, story in zip(images, texts):
        tiles += list(drawn) + [np.full_like(drawn[0], 255)] * (width - len(drawn))
        labels += list(story) + [""] * (width - len(drawn))
    return labelled_grid(np.stack(tiles), labels, per_row=width)


def plot_losses(log_paths, path, width=640, height=320):
    """Per-task training losses of consecutive runs (the stages), one line per task, as a PNG drawn
    with Pillow (no plotting library needed). Vertical lines mark where a stage begins."""
    # one x axis for the whole job: stage k's steps continue where stage k - 1 ended
    series, offsets, offset = {}, [], 0
    for log_path in log_paths:
        records = [json.loads(line) for line in open(log_path)]
        offsets.append(offset)
        for r in records:
            for task in ("t2i", "mmu", "lm"):
                if task in r:
                    series.setdefault(task, []).append((offset + r["step"], r[task]))
        offset += records[-1]["step"] if records else 0
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    # data -> pixels: a 40 px margin on the left for the scale, 30 px below for the stage names
    top = max(v for points in series.values() for _, v in points)
    x = lambda step: 40 + (width - 50) * step / max(offset, 1)            # noqa: E731
    y = lambda value: height - 30 - (height - 50) * value / max(top, 1e-9)  # noqa: E731
    draw.line([(40, 10), (40, height - 30), (width - 10, height - 30)], fill="black")
    for frac in (0, 0.5, 1):
        draw.text((2, y(top * frac) - 6), f"{top * frac:.1f}", fill="black")
    for stage, start in enumerate(offsets, 1):
        draw.line([(x(start), 10), (x(start), height - 30)], fill=(200, 200, 200))
        draw.text((x(start) + 3, height - 26), f"stage {stage}", fill="gray")
    # the colours of attention.py's pictures: orange for image (MTP) losses, blue and grey for text (NTP)
    colours = {"t2i": (244, 160, 0), "mmu": (66, 133, 244), "lm": (120, 120, 120)}
    for i, (task, points) in enumerate(series.items()):
        runs, current = [], [points[0]]
        for a, b in zip(points, points[1:]):
            if b[0] - a[0] > 1:  # the task pauses (a stage without it): break the line
                runs.append(current)
                current = []
            current.append(b)
        for run in runs + [current]:
            if len(run) > 1:
                draw.line([(x(s), y(v)) for s, v in run], fill=colours[task], width=1)
        draw.text((width - 160 + 50 * i, 12), task, fill=colours[task])
    img.save(path)


# -----------------------------------------------------------------------------
# Masks for inpainting and extrapolation, on the token grid

def token_mask(spec, pipe):
    """--mask as a PNG (white = regenerate) or a pixel box "x0,y0,x1,y1" -> bool (grid, grid),
    True where tokens are regenerated (a token is regenerated if its pixel cell touches the mask)."""
    size, grid = pipe.image_size, pipe.grid
    pixels = np.zeros((size, size), bool)
    # The model can only regenerate whole tokens, so the pixel mask is rounded up to the token grid.
    if os.path.exists(spec):
        pixels = read_image(spec, size).mean(-1) > 127
    else:
        try:
            x0, y0, x1, y1 = (int(v) for v in spec.split(","))
        except ValueError:
            raise ValueError(f"--mask must be a PNG file or a box x0,y0,x1,y1 in pixels, got {spec!r}") from None
        if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
            raise ValueError(f"--mask box {spec} must lie inside the {size}x{size} image with x0 < x1, y0 < y1")
        pixels[y0:y1, x0:x1] = True
    cell = size // grid
    # (H, W) -> (grid, cell, grid, cell): any marked pixel in a token's cell marks the token
    return torch.from_numpy(pixels.reshape(grid, cell, grid, cell).any(axis=(1, 3)))


def extrapolation_canvas(codes, direction, grid, shift):
    """Slide the token grid by `shift` tokens away from `direction`, and mark the uncovered band
    for generation: (N,) codes -> (N,) codes with -1 on the new band. Repeating it extends the
    picture further (the model only ever sees a grid x grid window)."""
    g = codes.view(grid, grid).clone()          # (N,) -> (grid, grid), row-major as the tokenizer's
    new = torch.full_like(g, -1)                # -1: a slot MaskGIT fills, conditioned on the kept part
    if direction == "right":    # keep the right part, moved left; new columns on the right
        new[:, :grid - shift] = g[:, shift:]
    elif direction == "left":
        new[:, shift:] = g[:, :grid - shift]
    elif direction == "down":   # keep the lower part, moved up; new rows at the bottom
        new[:grid - shift, :] = g[shift:, :]
    else:
        new[shift:, :] = g[:grid - shift, :]
    return new.flatten()


def stitch(panorama, frame, direction, grid_px, shift_px):
    """Append the newly generated band of `frame` to the running panorama (uint8 H x W x 3). Only
    the new band is taken: the rest of the window repeats pixels the panorama already has (the
    public code's 'down' branch takes the wrong half)."""
    if direction == "right":
        return np.concatenate([panorama, frame[:, grid_px - shift_px:]], axis=1)
    if direction == "left":
        return np.concatenate([frame[:, :shift_px], panorama], axis=1)
    if direction == "down":
        return np.concatenate([panorama, frame[grid_px - shift_px:]], axis=0)
    return np.concatenate([frame[:shift_px], panorama], axis=0)


# -----------------------------------------------------------------------------
# Tasks

def image_options(args):
    """The MaskGIT options every image task shares: T steps, guidance scale s, re-masking noise."""
    guidance = args.cfg if args.cfg is not None else STORY_GUIDANCE if args.task == "story" else GUIDANCE
    return dict(steps=args.steps, guidance=guidance, temperature=args.remask_temperature)


def run_t2i(pipe, args, generator):
    """Text-to-image: n samples of every prompt in one batch (guidance doubles it internally)."""
    prompts = [p for p in args.prompt for _ in range(args.n)]
    codes, history = generate_images(pipe.model, [pipe.encode_text(p) for p in prompts], generator=generator,
                                     record=args.show_steps, **image_options(args))
    images = pipe.decode_codes(codes)
    path = os.path.join(args.out, "t2i.png")
    labelled_grid(images, [p or "(unconditional)" for p in prompts]).save(path)
    print(f"wrote {path}")
    if args.show_steps:
        steps_strip(pipe, history).save(os.path.join(args.out, "steps.png"))
        print(f"wrote {os.path.join(args.out, 'steps.png')} (the decoding of the first sample)")
    return images


def generate_story(pipe, stories, generator, **options):
    """Mixed-modality generation (section 3.2): B stories, each a list of texts (a scene, then its
    changes) -> B lists of codes (N,), one image per text, each drawn by generate_images after every
    text and image before it: [T2I] [SOT] text 1 [EOT] [SOI] image 1 [EOI] [SOT] text 2 [EOT] [SOI] ...
    The k-th images of all stories that have a k-th text are drawn in one batch."""
    texts = [[pipe.encode_text(t) for t in story] for story in stories]
    codes = [[] for _ in stories]
    for k in range(max(map(len, texts))):
        going = [b for b in range(len(stories)) if len(texts[b]) > k]
        # the story so far as TokenSpace.interleaved segments: text 1, image 1, ..., text k + 1
        so_far = [[seg for j in range(k) for seg in (texts[b][j], codes[b][j])] + [texts[b][k]] for b in going]
        drawn, _ = generate_images(pipe.model, None, generator=generator, stories=so_far, **options)
        for b, c in zip(going, drawn):
            codes[b].append(c)
    return codes


def run_story(pipe, args, generator):
    """A story: --prompt describes the first scene, each --then one change ("then " is added when it
    is missing); story.png shows the images in a row, each text under its image."""
    if not pipe.trained_on_stories:
        print(f"warning: {args.ckpt} was not trained on stories (--story-frac): its images after the first follow no story")
    texts = args.prompt[:1] + [t if t.startswith("then ") else "then " + t for t in args.then]
    images = pipe.decode_codes(torch.stack(generate_story(pipe, [texts], generator, **image_options(args))[0]))
    path = os.path.join(args.out, "story.png")
    story_sheet([images], [texts]).save(path)
    print(f"wrote {path}")
    return images


def run_understanding(pipe, args, generator, question):
    """Captioning (no question) or VQA: [MMU] [SOI] image [EOI] [SOT] question, then the model
    continues the text (NTP) until [EOT]. One batch for all images, left-padded."""
    images = np.stack([read_image(p, pipe.image_size) for p in args.image])
    codes = pipe.encode_images(images)
    prompt = pipe.encode_text(question) if question else []  # captioning: an empty prompt
    # max_text cuts an over-long question as training cut its text (a warning says so)
    prefixes = [pipe.space.mmu(c, prompt, max_text=pipe.model.cfg.max_text, warn=True) for c in codes]
    outputs = generate_text(pipe.model, prefixes, args.max_new_tokens, args.temperature, args.top_k, generator)
    texts = [pipe.text.decode(o).strip() for o in outputs]  # answers start with a space: " red"
    for path, text in zip(args.image, texts):
        print(f"{path}: {text}")
    return texts


def run_inpaint(pipe, args, generator):
    """Inpainting (section 3.5): the tokens under --mask start as [MASK], the others keep their
    codes; the same MaskGIT loop fills the masked ones, guided by --prompt. No extra training."""
    image = read_image(args.image[0], pipe.image_size)
    codes = pipe.encode_images(image[None])[0]                       # (N,)
    regenerate = token_mask(args.mask, pipe).flatten()
    if not regenerate.any():
        raise ValueError(f"--mask {args.mask} selects no image token: nothing to regenerate")
    known = torch.where(regenerate, torch.full_like(codes, -1), codes).repeat(args.n, 1)  # (n, N), -1 = draw
    prompt = pipe.encode_text(args.prompt[0])
    out, _ = generate_images(pipe.model, [prompt] * args.n, known=known, generator=generator, **image_options(args))
    masked_view = pipe.decode_codes(known[:1])  # what the model was given: grey where it draws
    # one strip: the original, what the model was given, then the n samples
    images = np.concatenate([image[None], masked_view, pipe.decode_codes(out)])
    labels = ["original", "to regenerate (grey)"] + [args.prompt[0] or "(unconditional)"] * args.n
    path = os.path.join(args.out, "inpaint.png")
    labelled_grid(images, labels).save(path)
    print(f"wrote {path}")
    return out


def run_extrapolate(pipe, args, generator):
    """Extrapolation: slide the token window, keep what is still inside it, generate the band that
    came into view, and repeat; the panorama grows by one band per step."""
    image = read_image(args.image[0], pipe.image_size)
    codes = pipe.encode_images(image[None])[0]
    grid, cell = pipe.grid, pipe.image_size // pipe.grid
    # half the window by default: the model sees half known, half new, like a typical inpainting mask
    shift = grid // 2 if args.shift is None else args.shift
    if not 1 <= shift < grid:
        raise ValueError(f"--shift must be between 1 and {grid - 1} tokens")
    prompt = pipe.encode_text(args.prompt[0])
    panorama = pipe.decode_codes(codes[None])[0]  # (H, W, 3): the input, grown band by band below
    for _ in range(args.times):  # chainable: each window starts from the last generated one
        known = extrapolation_canvas(codes, args.direction, grid, shift)
        out, _ = generate_images(pipe.model, [prompt], known=known[None], generator=generator, **image_options(args))
        codes = out[0]
        panorama = stitch(panorama, pipe.decode_codes(codes[None])[0], args.direction, pipe.image_size, shift * cell)
    path = os.path.join(args.out, f"extrapolate_{args.direction}.png")
    scale = 4  # 32 px images are too small to look at: NEAREST keeps the pixels sharp
    Image.fromarray(panorama).resize((panorama.shape[1] * scale, panorama.shape[0] * scale), Image.NEAREST).save(path)
    print(f"wrote {path} (extended {args.direction} {args.times} time(s) by {shift} token rows/columns)")
    return panorama


def run_lm(pipe, args, generator):
    """Plain text continuation: [SOT] prompt, left open, continued by the language-modelling head
    that the text-only rows of stage 1 trained."""
    rows = [pipe.space.lm(pipe.encode_text(p), pipe.model.cfg.max_text, warn=True, close=False) for p in args.prompt]
    outputs = generate_text(pipe.model, rows, args.max_new_tokens, args.temperature, args.top_k, generator)
    texts = [p + pipe.text.decode(o) for p, o in zip(args.prompt, outputs)]
    for text in texts:
        print(text)
    return texts


# The defaults are the evaluation's: T = 12 MaskGIT steps, guidance s = 2, MaskGIT's re-masking
# temperature 4.5 annealed to 0, greedy text. (1 + s) cond - s uncond needs a second, prompt-free
# row per sample in the same forward pass, so guidance doubles the batch, not the number of passes.
def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a Show-o run folder (holding showo.pt) or a showo.pt file")
    parser.add_argument("--task", default="t2i", choices=TASKS, help="what to sample")
    parser.add_argument("--prompt", action="append", default=None,
                        help="text prompt (repeatable for t2i and lm); empty = unconditional")
    parser.add_argument("--image", action="append", default=None, help="input image file (repeatable for caption/vqa)")
    parser.add_argument("--question", default=None, help="the question for --task vqa")
    parser.add_argument("--then", action="append", default=None,
                        help="story: a change of the scene, e.g. \"the circle turns green\" (repeatable, in order)")
    parser.add_argument("--mask", default=None, help="inpainting region: a PNG (white = regenerate) or a box x0,y0,x1,y1 in pixels")
    parser.add_argument("--direction", default="right", choices=DIRECTIONS, help="extrapolation direction")
    parser.add_argument("--shift", type=int, default=None, help="extrapolation: new token columns/rows per step (default half the grid)")
    parser.add_argument("--times", type=int, default=1, help="extrapolation: how many times to extend (chained)")
    parser.add_argument("-n", type=int, default=4, help="images per prompt (t2i, inpaint)")
    parser.add_argument("--steps", type=int, default=12, help="MaskGIT decoding steps T")
    parser.add_argument("--cfg", type=float, default=None,
                        help="classifier-free guidance scale s: (1+s) cond - s uncond (default 2; stories 0)")
    parser.add_argument("--remask-temperature", type=float, default=4.5,
                        help="Gumbel noise on the re-masking confidence, annealed linearly to 0 (MaskGIT's 4.5)")
    parser.add_argument("--temperature", type=float, default=0.0, help="text sampling temperature (0 = greedy)")
    parser.add_argument("--top-k", type=int, default=None, help="text sampling: keep the k most likely tokens")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="text: stop after this many tokens")
    parser.add_argument("--show-steps", action="store_true", help="t2i: also write steps.png, the canvas after each step")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same samples")
    parser.add_argument("--out", default="out/samples", help="folder for the PNGs")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    return parser


def check_args(parser, args):
    """User mistakes become usage errors here, before a checkpoint is loaded, never a traceback."""
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.cfg is not None and args.cfg < 0:
        parser.error("--cfg (guidance scale) must be >= 0")
    if args.n < 1 or args.times < 1 or args.max_new_tokens < 1:
        parser.error("-n, --times and --max-new-tokens must be at least 1")
    if args.top_k is not None and args.top_k < 1:
        parser.error("--top-k must be at least 1")
    if args.temperature < 0 or args.remask_temperature < 0:
        parser.error("temperatures must be >= 0")
    needs_image = args.task in ("caption", "vqa", "inpaint", "extrapolate")
    if needs_image and not args.image:
        parser.error(f"--task {args.task} needs --image")
    if args.task == "vqa" and not args.question:
        parser.error("--task vqa needs --question")
    if args.task == "inpaint" and not args.mask:
        parser.error("--task inpaint needs --mask (a PNG or a box x0,y0,x1,y1)")
    if (args.task == "story") != bool(args.then) or (args.task == "story" and len(args.prompt or []) > 1):
        parser.error("--task story needs one --prompt (the first scene) and --then (each change); --then is for stories")
    if args.prompt is None:
        if args.task in ("t2i", "lm", "story"):
            parser.error(f"--task {args.task} needs --prompt (--prompt \"\" samples unconditionally)")
        args.prompt = [""]


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        pipe = Pipeline(args.ckpt, args.device)
        os.makedirs(args.out, exist_ok=True)
        # one CPU generator seeds every draw (codes, Gumbel noise, text): on the CPU it draws them
        # itself, on a GPU it seeds one there (model.device_generator); same seed, same samples
        generator = torch.Generator().manual_seed(args.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # an over-long prompt is cut: say so every time
            if args.task == "t2i":
                return run_t2i(pipe, args, generator)
            if args.task in ("caption", "vqa"):
                return run_understanding(pipe, args, generator, args.question if args.task == "vqa" else None)
            if args.task == "inpaint":
                return run_inpaint(pipe, args, generator)
            if args.task == "extrapolate":
                return run_extrapolate(pipe, args, generator)
            if args.task == "story":
                return run_story(pipe, args, generator)
            return run_lm(pipe, args, generator)
    except (OSError, ValueError) as e:  # missing/incompatible checkpoints, unreadable images, bad masks
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
