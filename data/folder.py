"""
Your own images: a plain folder of image files plus a captions.jsonl file -> ImageTextData.

    from data.folder import load_folder
    ds = load_folder("my_images/", image_size=32)       # or: data.load("folder", data_dir="my_images/")

captions.jsonl holds one JSON object per line, naming a file (relative to the folder) and its
caption, or a list of captions; a file listed on several lines gets all of their captions:

    {"file": "cat1.png", "caption": "a cat asleep on a sofa"}
    {"file": "photos/dog.jpg", "caption": ["a dog", "a brown dog on grass"]}

Blank lines are ignored. Images are kept in the order of their first line. A listed file that does
not exist is skipped and counted; a file Pillow cannot decode is skipped with a warning.

This file also owns the one image-decoding path that COCO (and CIFAR resizing) share:
any image file -> RGB uint8 (size, size, 3), see `square_rgb` and `decode_images`.
"""
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from data.dataset import ImageTextData

# What Pillow raises for a file it cannot decode: UnidentifiedImageError and "image file is
# truncated" are OSErrors, some broken PNG/JPEG chunks raise SyntaxError, damaged tiles raise
# ValueError, and an absurdly large image (a decompression bomb) raises DecompressionBombError.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def square_rgb(img, size):
    """Any Pillow image -> (size, size, 3) uint8 RGB: shorter side resized to `size`, centre-cropped."""
    if img.mode.startswith("I"):
        # 16-bit greyscale (e.g. medical/scientific PNGs): keep the high byte; convert() would clip
        # every value above 255 to white
        img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))
    if img.has_transparency_data:
        # RGBA, LA, or a palette with a transparent colour: composite on white, otherwise the
        # (arbitrary, often black) colour hidden under transparent pixels would show up
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    img = img.convert("RGB")  # greyscale, CMYK (Pillow's plain conversion, no colour profile), palette
    # centre crop to a square, then one bicubic resample (antialiased when shrinking); the same
    # result as "resize the shorter side to `size`, then centre-crop", without an extra resample
    img = ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
    return np.array(img, dtype=np.uint8)  # (size, size, 3), a writable copy


def read_image(path, size):
    """Decode one image file -> (size, size, 3) uint8. Raises one of IMAGE_ERRORS if unreadable."""
    with Image.open(path) as img:
        # phone photos store "rotate me" in EXIF instead of rotating the pixels
        return square_rgb(ImageOps.exif_transpose(img), size)


def decode_images(items, size, limit=None, name="images"):
    """
    Decode every (path, captions) item once, in order, skipping missing and unreadable files.
    Stops after `limit` usable images. Prints one line saying what was used and skipped and returns
    (images (N, size, size, 3) uint8, N caption lists, info dict with the same counts).
    """
    present = [(path, captions) for path, captions in items if path.is_file()]
    n_missing = len(items) - len(present)
    images, captions, corrupt = [], [], []
    # disable=None: the bar shows on a terminal and stays silent in logs and under pytest
    for path, image_captions in tqdm(present, desc=name, unit="img", disable=None):
        if limit is not None and len(images) >= limit:
            break
        try:
            images.append(read_image(path, size))
        except IMAGE_ERRORS as err:
            warnings.warn(f"skipping {path}: cannot decode image ({err})")
            corrupt.append(str(path))
            continue
        captions.append(image_captions)
    info = {"images_used": len(images), "skipped_missing": n_missing,
            "skipped_corrupt": len(corrupt), "corrupt_files": corrupt}
    print(f"{name}: {len(images)} images used, {n_missing} skipped (file missing), "
          f"{len(corrupt)} skipped (cannot decode)")
    if not images:
        example = f", e.g. {items[0][0]}" if items else ""
        raise ValueError(f"{name}: no usable images among the {len(items)} listed{example}")
    return np.stack(images), captions, info


def read_captions_jsonl(path):
    """captions.jsonl -> {file name: [captions]} in order of first appearance (format: module docstring)."""
    expected = 'expected {"file": "cat1.png", "caption": "a cat"} (caption may be a list of strings)'
    captions = {}
    # utf-8-sig: tolerate the byte-order mark some Windows editors put at the start of the file
    with open(path, encoding="utf-8-sig") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {line_number}: not valid JSON ({err.msg}); {expected}") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path} line {line_number}: {expected}")
            file, caption = record.get("file"), record.get("caption")
            caption_list = [caption] if isinstance(caption, str) else caption
            if (not isinstance(file, str) or not isinstance(caption_list, list) or not caption_list
                    or not all(isinstance(c, str) for c in caption_list)):
                raise ValueError(f"{path} line {line_number}: {expected}")
            captions.setdefault(file, []).extend(caption_list)
    return captions


def load_folder(data_dir, limit=None, image_size=32):
    """Load a folder of images described by data_dir/captions.jsonl (format: module docstring)."""
    if data_dir is None:
        raise ValueError("load_folder needs data_dir: a folder of images with a captions.jsonl")
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    captions_path = root / "captions.jsonl"
    if not captions_path.is_file():
        raise FileNotFoundError(
            f"{captions_path} not found: a folder dataset needs a captions.jsonl file with one JSON "
            'object per line, e.g. {"file": "cat1.png", "caption": "a cat"} '
            "(caption may also be a list of strings; file is relative to the folder)")
    items = [(root / file, captions) for file, captions in read_captions_jsonl(captions_path).items()]
    images, captions, info = decode_images(items, image_size, limit, name=f"folder {root.name}")
    info["source"] = str(root)
    return ImageTextData(name="folder", split="all", images=images, captions=captions, info=info)
