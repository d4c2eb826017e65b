"""
Pictures only the README uses: the omni-attention mask of every row layout (docs/attention_masks.png).

    python -m tools.pictures          # dark = may attend; rows are queries, columns keys
"""
import argparse
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from attention import omni_attention_mask
from tokenizer import TokenSpace

TOKEN_COLOURS = {"text": (66, 133, 244), "special": (120, 120, 120), "image": (244, 160, 0),
                 "mask": (250, 210, 120), "pad": (230, 230, 230)}


def token_kinds(ids, space):
    """One row of ids -> the kind of each token, for colouring."""
    kinds = []
    for i in map(int, ids):
        if i == space.pad:
            kinds.append("pad")
        elif i < space.text_vocab_size:
            kinds.append("text")
        elif i == space.mask:
            kinds.append("mask")
        elif i >= space.image_offset:
            kinds.append("image")
        else:
            kinds.append("special")
    return kinds


def render_mask(ids, space, cell=10, title=None):
    """One row of ids (L,) -> a PIL picture of its omni-attention mask: dark = may attend, light =
    hidden; the strips along the top and left say what each token is (blue text, grey special,
    orange image, pale orange [MASK], light grey padding). Rows are queries, columns keys."""
    ids = torch.as_tensor(ids)
    mask = omni_attention_mask(ids[None], space)[0, 0].numpy()  # (L, L)
    L, strip, head = len(ids), cell, 16 if title else 0
    img = Image.new("RGB", (strip + L * cell + 1, head + strip + L * cell + 1), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((2, 2), title, fill="black")
    top = head + strip
    for i, kind in enumerate(token_kinds(ids, space)):
        colour = TOKEN_COLOURS[kind]
        draw.rectangle([strip + i * cell, head, strip + (i + 1) * cell - 1, head + strip - 2], fill=colour)
        draw.rectangle([0, top + i * cell, strip - 2, top + (i + 1) * cell - 1], fill=colour)
    cells = np.where(mask[:, :, None], np.array([40, 40, 40], np.uint8), np.array([245, 245, 245], np.uint8))
    cells = np.repeat(np.repeat(cells, cell, 0), cell, 1)                       # (L*cell, L*cell, 3)
    cells[::cell, :] = cells[:, ::cell] = 200                                   # grid lines
    img.paste(Image.fromarray(cells), (strip, top))
    return img


def example_rows(space):
    """A tiny instance of every layout (2x2-token images, 2-3 text tokens), for pictures and tests."""
    img = torch.arange(4).reshape(2, 2)
    return {"text-to-image": space.t2i([1, 2, 3], img),
            "text-to-image, masked (sampling)": space.t2i([1, 2, 3], 4),
            "understanding (caption / VQA)": space.mmu(img, [1], [2, 3]),
            "language modelling": space.lm([1, 2, 3]),
            "interleaved": space.interleaved([[1, 2], img, [3], img])}


def main():
    parser = argparse.ArgumentParser(description="Draw the omni-attention mask of every Show-o row layout.")
    parser.add_argument("--out", default="docs/attention_masks.png", help="where to write the PNG")
    args = parser.parse_args()
    space = TokenSpace(text_vocab_size=16, codebook_size=16)
    rows = example_rows(space)
    length = max(len(r.ids) for r in rows.values())
    pictures = []
    for name, row in rows.items():
        ids, _, _ = space.pad_rows([row], length)
        pictures.append(render_mask(ids[0], space, title=name))
    gap = 12
    sheet = Image.new("RGB", (sum(p.width for p in pictures) + gap * (len(pictures) + 1),
                              max(p.height for p in pictures) + 2 * gap), "white")
    x = gap
    for p in pictures:
        sheet.paste(p, (x, gap))
        x += p.width + gap
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")
    for name, row in rows.items():
        print(f"{name:34s} {space.describe(row.ids)}")


if __name__ == "__main__":
    main()
