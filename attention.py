"""
Omni-attention: the one attention mask that lets a single transformer read text causally and see
every image whole (Show-o, arXiv 2408.12528, section 3.2 and figure 4).

    python attention.py            # writes out/attention_masks.png: the mask of every row layout

The rule, built from the token ids alone (so it is the same in training and sampling):
  - every position attends to itself and to every earlier position (causal, as in a language model);
  - a position inside an image span ([SOI] .. [EOI], inclusive) also attends to every later position
    of the SAME span: each image is one bidirectional block, and several images in one sequence each
    get their own block;
  - text after an image therefore sees the whole image (captioning), and text before it is seen by
    every image token (text-to-image);
  - [PAD] columns are hidden from every other row; every row keeps its own diagonal, so no row is
    ever fully masked (a fully masked softmax row is 0/0 = NaN).

The attention op is `F.scaled_dot_product_attention` with that boolean mask. On CUDA an opt-in
FlexAttention path builds a block-sparse mask from the same rule (`omni_block_mask`), skipping the
blocks that are fully masked instead of multiplying them by zero.
"""
import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw


def image_span_index(ids, space):
    """(B, L) ids -> (B, L) int64: k at every position of the k-th image span of its row
    ([SOI] and [EOI] included, k = 1, 2, ...), 0 at positions outside images."""
    soi, eoi = ids == space.soi, ids == space.eoi
    opened = soi.long().cumsum(1)                   # [SOI]s at or before each position
    closed = eoi.long().cumsum(1) - eoi.long()      # [EOI]s strictly before (an [EOI] is inside its span)
    return torch.where(opened > closed, opened, torch.zeros_like(opened))


def omni_attention_mask(ids, space):
    """(B, L) ids -> (B, 1, L, L) bool mask, True where query row q may attend to key column k."""
    B, L = ids.shape
    span = image_span_index(ids, space)                                          # (B, L)
    pos = torch.arange(L, device=ids.device)
    causal = pos[:, None] >= pos[None, :]                                        # (L, L)
    same_image = (span[:, :, None] == span[:, None, :]) & (span[:, :, None] > 0)  # (B, L, L)
    visible_key = (ids != space.pad)[:, None, :]                                 # (B, 1, L)
    mask = (causal | same_image) & visible_key
    mask |= torch.eye(L, dtype=torch.bool, device=ids.device)  # a row always sees itself: never all masked
    return mask[:, None]                                                         # (B, 1, L, L), one mask for all heads


def omni_block_mask(ids, space):
    """The same rule as a FlexAttention BlockMask (CUDA path). `mask_mod` answers one (row, query,
    key) question at a time; create_block_mask evaluates it per 128x128 tile and records which tiles
    are empty, full or partial, so the kernel skips the empty ones (most of the upper triangle)."""
    from torch.nn.attention.flex_attention import create_block_mask
    B, L = ids.shape
    span = image_span_index(ids, space)
    pad = ids == space.pad

    def mask_mod(b, h, q, k):
        same_image = (span[b, q] == span[b, k]) & (span[b, q] > 0)
        return (((q >= k) | same_image) & ~pad[b, k]) | (q == k)

    return create_block_mask(mask_mod, B, None, L, L, device=ids.device)


_compiled_flex = None


def attention(q, k, v, mask):
    """q, k, v: (B, H, L, D); mask: a (B, 1, L, L) bool tensor, a FlexAttention BlockMask, or None
    for plain causal attention.

    With a boolean mask, SDPA cannot use its is_causal fast path: on CUDA it picks the
    memory-efficient kernel (FlashAttention-2 takes no arbitrary mask); on CPU its fused
    flash-style kernel accepts the mask. Both read the full (L, L) mask, so cost still grows
    as L^2 even where whole tiles are masked: that is what the FlexAttention path avoids."""
    if mask is None:  # a plain causal mask via SDPA's is_causal fast path (bench.py's baseline)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if isinstance(mask, torch.Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    global _compiled_flex
    if _compiled_flex is None:  # compiled once per process; eager flex_attention is a slow reference
        from torch.nn.attention.flex_attention import flex_attention
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=mask)


# -----------------------------------------------------------------------------
# Pictures of the mask, for learners

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
    parser.add_argument("--out", default="out/attention_masks.png", help="where to write the PNG")
    args = parser.parse_args()
    from tokenizer import TokenSpace
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
