"""
Sample from a trained Show-o: images from text, captions and answers from images, inpainting,
extrapolation, plain text and stories (Show-o, arXiv 2408.12528, section 3.5).

    python sample.py --ckpt out/shapes/stage3 --prompt "a red circle above a blue square" -n 4 --show-steps
    python sample.py --ckpt out/shapes/stage3 --task caption --image some.png
    python sample.py --ckpt out/shapes/stage3 --task vqa --image some.png --question "what color is the circle?"
    python sample.py --ckpt out/shapes/stage3 --task inpaint --image some.png --mask 16,0,32,16 --prompt "a red square"
    python sample.py --ckpt out/shapes/stage3 --task extrapolate --image some.png --direction right --times 3
    python sample.py --ckpt out/shapes/stage3 --task lm --prompt "a red"
    python sample.py --ckpt out/shapes/stories --task story --prompt "a large red circle in the top left" \
        --then "a small blue square appears below the red circle" --then "the circle turns green"

Follow one prompt: the checkpoint carries the tokenizers it was trained with; the BPE turns the
prompt into ids; TokenSpace.t2i lays out [T2I] [SOT] prompt [EOT] [SOI] [MASK] x N [EOI] (N = 16 image
tokens with the shapes preset); model.generate_images fills the N slots in --steps MaskGIT steps;
the image tokenizer decodes the codes to pixels; a labelled grid goes to --out. Text is printed.
"""
import argparse
import os
import sys
import textwrap
import warnings

import numpy as np
import torch
from PIL import Image, ImageDraw

from data.folder import IMAGE_ERRORS, read_image  # the one decoding path of every image: EXIF, alpha, crop
from model import generate_images, generate_text, load_showo, pick_device
from tokenizer import TextTokenizer, image_tokenizer_from, tensor_to_images

TASKS = ("t2i", "caption", "vqa", "inpaint", "extrapolate", "lm", "story")
GUIDANCE = 2.0  # classifier-free guidance s of every image task but stories (the evaluation's too)
# Stories are drawn without guidance: their texts pin every object down, and guidance, which raises in
# every cell what the text makes likely, adds objects (validation stories after the story runs, two
# seeds: unchanged objects kept 0.84 / 0.85 at s = 0, 0.77 / 0.86 at s = 1; docs/results.md)
STORY_GUIDANCE = 0.0


class Pipeline:
    """A Show-o checkpoint with the image and text tokenizers it carries, ready to turn prompts and
    pixels into ids and back."""

    def __init__(self, ckpt, device="auto"):
        self.device = pick_device(device)
        path = os.path.join(ckpt, "showo.pt") if os.path.isdir(ckpt) else ckpt  # a run folder or a file
        self.model, self.ckpt = load_showo(path)  # on the CPU first: a checkpoint from a GPU opens anywhere
        self.model.to(self.device)
        self.space = self.model.space
        self.image_tokenizer = image_tokenizer_from(self.ckpt["tokenizers"]["image"], path).to(self.device)
        self.text = TextTokenizer(self.ckpt["tokenizers"]["text"])
        self.grid = self.image_tokenizer.cfg.latent_size  # tokens per side (4 with the shapes preset)
        self.image_size = self.image_tokenizer.cfg.image_size
        self.trained_on_stories = bool(self.ckpt["train_config"]["story_frac"])

    def encode_text(self, text):
        return self.text.encode(text)  # BPE ids; the task tokens are added by TokenSpace, never by the BPE

    def encode_images(self, images):
        """uint8 (B, H, W, 3) -> codes (B, N), the grid flattened row-major, as in training."""
        return self.image_tokenizer.encode_images(images)

    def decode_codes(self, codes):
        """codes (B, N), -1 for still-masked slots -> uint8 (B, H, W, 3), masked slots painted grey."""
        codes = torch.as_tensor(codes)
        grid = codes.clamp(min=0).view(-1, self.grid, self.grid).to(self.device)  # (B, N) -> (B, h, w); 0 stands in
        images = tensor_to_images(self.image_tokenizer.decode(grid))
        cell = self.image_size // self.grid  # each token covers a cell x cell patch of pixels (8x8 for shapes)
        images[(codes < 0).view(-1, self.grid, self.grid).numpy().repeat(cell, 1).repeat(cell, 2)] = 128
        return images


# -----------------------------------------------------------------------------
# Pictures

def labelled_grid(images, labels, scale=4, per_row=None, label_width=22):
    """uint8 (N, H, W, 3) images with one caption each -> a PIL grid, captions wrapped under the
    images (NEAREST upscaling keeps the pixels visible)."""
    n, h, w, _ = images.shape
    per_row = per_row or min(n, 8)
    tile_w, tile_h = w * scale, h * scale
    lines = [textwrap.wrap(label, label_width) or [""] for label in labels]
    text_h = 12 * max(len(x) for x in lines) + 4  # Pillow's default bitmap font: about 12 px a line
    sheet = Image.new("RGB", (per_row * (tile_w + 6) + 6, -(-n // per_row) * (tile_h + text_h + 6) + 6), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, text) in enumerate(zip(images, lines)):
        x, y = 6 + (i % per_row) * (tile_w + 6), 6 + (i // per_row) * (tile_h + text_h + 6)
        sheet.paste(Image.fromarray(img).resize((tile_w, tile_h), Image.NEAREST), (x, y))
        for j, line in enumerate(text):
            draw.text((x, y + tile_h + 2 + 12 * j), line, fill="black")
    return sheet


def steps_strip(pipe, history):
    """The canvas after every MaskGIT step of one sample, left to right: grey = still [MASK].
    history: generate_images' record, (B, N) codes per step with -1 at masked slots; row 0 is drawn.
    With the cosine schedule few tokens are fixed at first and many at the end (section 3.5)."""
    frames = pipe.decode_codes(torch.stack([h[0] for h in history]))
    labels = [f"step {i + 1}: {int((h[0] < 0).sum())} masked" for i, h in enumerate(history)]
    return labelled_grid(frames, labels, per_row=len(frames), label_width=16)


def story_sheet(images, texts):
    """Stories as rows: images[b] (k_b, H, W, 3) with the k_b texts of story b under them."""
    width, tiles, labels = max(map(len, texts)), [], []
    for drawn, story in zip(images, texts):
        tiles += list(drawn) + [np.full_like(drawn[0], 255)] * (width - len(drawn))  # a short story ends in white
        labels += list(story) + [""] * (width - len(drawn))
    return labelled_grid(np.stack(tiles), labels, per_row=width)


def save(picture, args, name):
    path = os.path.join(args.out, name)
    picture.save(path)
    print(f"wrote {path}")


# -----------------------------------------------------------------------------
# The tasks: every one is the same network (section 3.5), its image tasks the MaskGIT loop of
# model.generate_images, its text tasks the next-token loop of model.generate_text

def token_mask(spec, pipe):
    """--mask as a PNG (white = regenerate) or a pixel box "x0,y0,x1,y1" -> bool (grid, grid): a token
    is regenerated when any pixel of its cell is marked (the model can only regenerate whole tokens)."""
    size, grid = pipe.image_size, pipe.grid
    pixels = np.zeros((size, size), bool)
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
    return torch.from_numpy(pixels.reshape(grid, cell, grid, cell).any(axis=(1, 3)))  # (H, W) -> (grid, grid)


def extrapolation_canvas(codes, direction, grid, shift):
    """Slide the token grid by `shift` tokens towards `direction` and mark the band that comes into
    view for generation: (N,) codes -> (N,) codes with -1 on the new band. Repeating it extends the
    picture further (the model only ever sees a grid x grid window)."""
    g, new = codes.view(grid, grid), torch.full((grid, grid), -1, dtype=codes.dtype)  # (N,) -> (grid, grid)
    if direction == "right":    # keep the right part, moved left; new columns on the right
        new[:, :grid - shift] = g[:, shift:]
    elif direction == "left":
        new[:, shift:] = g[:, :grid - shift]
    elif direction == "down":   # keep the lower part, moved up; new rows at the bottom
        new[:grid - shift] = g[shift:]
    else:
        new[shift:] = g[:grid - shift]
    return new.flatten()


def stitch(panorama, frame, direction, grid_px, shift_px):
    """Append the new band of `frame` to the panorama (uint8 H x W x 3). Only the new band: the rest of
    the window repeats pixels the panorama has (the public code's 'down' branch takes the wrong half)."""
    if direction == "right":
        return np.concatenate([panorama, frame[:, grid_px - shift_px:]], axis=1)
    if direction == "left":
        return np.concatenate([frame[:, :shift_px], panorama], axis=1)
    if direction == "down":
        return np.concatenate([panorama, frame[grid_px - shift_px:]], axis=0)
    return np.concatenate([frame[:shift_px], panorama], axis=0)


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
    save(labelled_grid(images, [p or "(unconditional)" for p in prompts]), args, "t2i.png")
    if args.show_steps:
        save(steps_strip(pipe, history), args, "steps.png")  # the decoding of the first sample
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
    """A story: --prompt describes the first scene, each --then one change ("then " is added when it is
    missing); story.png shows the images in a row, each text under its image."""
    if not pipe.trained_on_stories:
        print(f"warning: {args.ckpt} was not trained on stories (--story-frac): its later images follow no story")
    texts = args.prompt[:1] + [t if t.startswith("then ") else "then " + t for t in args.then]
    images = pipe.decode_codes(torch.stack(generate_story(pipe, [texts], generator, **image_options(args))[0]))
    save(story_sheet([images], [texts]), args, "story.png")
    return images


def run_understanding(pipe, args, generator, question):
    """Captioning (no question) or VQA: [MMU] [SOI] image [EOI] [SOT] question, then the model continues
    the text (NTP) until [EOT]. One batch for all images, left-padded."""
    codes = pipe.encode_images(np.stack([read_image(p, pipe.image_size) for p in args.image]))
    prompt = pipe.encode_text(question) if question else []  # captioning: an empty prompt
    prefixes = [pipe.space.mmu(c, prompt, max_text=pipe.model.cfg.max_text, warn=True) for c in codes]
    outputs = generate_text(pipe.model, prefixes, args.max_new_tokens, args.temperature, args.top_k, generator)
    texts = [pipe.text.decode(o).strip() for o in outputs]  # answers start with a space: " red"
    for path, text in zip(args.image, texts):
        print(f"{path}: {text}")
    return texts


def run_inpaint(pipe, args, generator):
    """Inpainting (section 3.5): the tokens under --mask start as [MASK], the others keep their codes;
    the same MaskGIT loop fills the masked ones, guided by --prompt. No extra training."""
    image = read_image(args.image[0], pipe.image_size)
    codes, regenerate = pipe.encode_images(image[None])[0], token_mask(args.mask, pipe).flatten()  # (N,), (N,)
    if not regenerate.any():
        raise ValueError(f"--mask {args.mask} selects no image token: nothing to regenerate")
    known = torch.where(regenerate, -1, codes).repeat(args.n, 1)  # (n, N), -1 = draw
    out, _ = generate_images(pipe.model, [pipe.encode_text(args.prompt[0])] * args.n, known=known,
                             generator=generator, **image_options(args))
    # one strip: the original, what the model was given (grey where it draws), then the n samples
    images = np.concatenate([image[None], pipe.decode_codes(known[:1]), pipe.decode_codes(out)])
    labels = ["original", "to regenerate (grey)"] + [args.prompt[0] or "(unconditional)"] * args.n
    save(labelled_grid(images, labels), args, "inpaint.png")
    return out


def run_extrapolate(pipe, args, generator):
    """Extrapolation: slide the token window, keep what is still inside it, generate the band that came
    into view, and repeat; the panorama grows by one band per step."""
    codes = pipe.encode_images(read_image(args.image[0], pipe.image_size)[None])[0]
    shift = pipe.grid // 2 if args.shift is None else args.shift  # half known, half new, like an inpainting mask
    if not 1 <= shift < pipe.grid:
        raise ValueError(f"--shift must be between 1 and {pipe.grid - 1} tokens")
    panorama = pipe.decode_codes(codes[None])[0]  # (H, W, 3): the input, grown band by band below
    for _ in range(args.times):  # chainable: each window starts from the last generated one
        known = extrapolation_canvas(codes, args.direction, pipe.grid, shift)
        codes = generate_images(pipe.model, [pipe.encode_text(args.prompt[0])], known=known[None], generator=generator,
                                **image_options(args))[0][0]
        panorama = stitch(panorama, pipe.decode_codes(codes[None])[0], args.direction, pipe.image_size,
                          shift * pipe.image_size // pipe.grid)
    picture = Image.fromarray(panorama)
    save(picture.resize((picture.width * 4, picture.height * 4), Image.NEAREST), args, f"extrapolate_{args.direction}.png")
    return panorama


def run_lm(pipe, args, generator):
    """Plain text: [SOT] prompt, left open, continued by what the text-only rows of stage 1 trained."""
    rows = [pipe.space.lm(pipe.encode_text(p), pipe.model.cfg.max_text, warn=True, close=False) for p in args.prompt]
    outputs = generate_text(pipe.model, rows, args.max_new_tokens, args.temperature, args.top_k, generator)
    texts = [p + pipe.text.decode(o) for p, o in zip(args.prompt, outputs)]
    print("\n".join(texts))
    return texts


# The defaults are the evaluation's: T = 12 MaskGIT steps, guidance s = 2, MaskGIT's re-masking
# temperature 4.5 annealed to 0, greedy text. (1 + s) cond - s uncond needs a second, prompt-free
# row per sample in the same forward pass, so guidance doubles the batch, not the number of passes.
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--ckpt", required=True, help="a Show-o run folder (holding showo.pt) or a showo.pt file")
    add("--task", default="t2i", choices=TASKS, help="what to sample")
    add("--prompt", action="append", help="text prompt (repeatable for t2i and lm); empty = unconditional")
    add("--image", action="append", help="input image file (repeatable for caption/vqa)")
    add("--question", help="the question for --task vqa")
    add("--then", action="append", help="story: a change of the scene, e.g. \"the circle turns green\" (repeatable)")
    add("--mask", help="inpainting region: a PNG (white = regenerate) or a box x0,y0,x1,y1 in pixels")
    add("--direction", default="right", choices=("left", "right", "up", "down"), help="extrapolation direction")
    add("--shift", type=int, help="extrapolation: new token columns/rows per step (default half the grid)")
    add("--times", type=int, default=1, help="extrapolation: how many times to extend (chained)")
    add("-n", type=int, default=4, help="images per prompt (t2i, inpaint)")
    add("--steps", type=int, default=12, help="MaskGIT decoding steps T")
    add("--cfg", type=float, help="classifier-free guidance scale s: (1+s) cond - s uncond (default 2; stories 0)")
    add("--remask-temperature", type=float, default=4.5, help="Gumbel noise on the re-masking confidence, "
                                                              "annealed linearly to 0 (MaskGIT's 4.5)")
    add("--temperature", type=float, default=0.0, help="text sampling temperature (0 = greedy)")
    add("--top-k", type=int, help="text sampling: keep the k most likely tokens")
    add("--max-new-tokens", type=int, default=32, help="text: stop after this many tokens")
    add("--show-steps", action="store_true", help="t2i: also write steps.png, the canvas after each step")
    add("--seed", type=int, default=0, help="same seed, same samples")
    add("--out", default="out/samples", help="folder for the PNGs")
    add("--device", default="auto", help="auto (cuda -> mps -> cpu) | cpu | cuda | cuda:N | mps")
    args = parser.parse_args(argv)
    # user mistakes become usage errors here, before a checkpoint is loaded, never a traceback
    if args.steps < 1 or min(args.n, args.times, args.max_new_tokens, args.top_k or 1) < 1:
        parser.error("--steps, -n, --times, --max-new-tokens and --top-k must be at least 1")
    if min(args.cfg or 0, args.temperature, args.remask_temperature) < 0:
        parser.error("--cfg (guidance scale) and the temperatures must be >= 0")
    if args.task in ("caption", "vqa", "inpaint", "extrapolate") and not args.image:
        parser.error(f"--task {args.task} needs --image")
    if (args.task == "vqa") != bool(args.question):
        parser.error("--task vqa needs --question, and --question is for --task vqa only")
    if (args.task == "inpaint") != bool(args.mask):
        parser.error("--task inpaint needs --mask (a PNG or a box x0,y0,x1,y1), and --mask is for inpainting only")
    if (args.task == "story") != bool(args.then) or (args.task == "story" and len(args.prompt or []) > 1):
        parser.error("--task story needs one --prompt (the first scene) and --then (each change); --then is for stories")
    if args.prompt is None and args.task in ("t2i", "lm", "story"):
        parser.error(f"--task {args.task} needs --prompt (--prompt \"\" samples unconditionally)")
    args.prompt = args.prompt or [""]
    try:
        pipe = Pipeline(args.ckpt, args.device)
        os.makedirs(args.out, exist_ok=True)
        # one CPU generator seeds every draw: on the CPU it draws them itself, on a GPU it seeds one
        # there (model.device_generator); same seed, same samples
        generator = torch.Generator().manual_seed(args.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # an over-long prompt is cut: say so every time
            run = dict(t2i=run_t2i, inpaint=run_inpaint, extrapolate=run_extrapolate, lm=run_lm, story=run_story)
            if args.task in ("caption", "vqa"):
                return run_understanding(pipe, args, generator, args.question)
            return run[args.task](pipe, args, generator)
    except IMAGE_ERRORS as e:  # missing/foreign checkpoints, unreadable images, bad masks (OSError, ValueError, ...)
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
