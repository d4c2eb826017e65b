"""
Omni-attention: the one attention mask that lets a single transformer read text causally and see
every image whole (Show-o, arXiv 2408.12528, section 3.2 and figure 4).

The rule, built from the token ids alone (so it is the same in training and sampling):
  - every position attends to itself and to every earlier position (causal, as in a language model);
  - a position inside an image span ([SOI] .. [EOI], inclusive) also attends to every later position
    of the SAME span: each image is one bidirectional block, and several images in one sequence each
    get their own block;
  - text after an image therefore sees the whole image (captioning), and text before it is seen by
    every image token (text-to-image);
  - [PAD] columns are hidden from every other row; every row keeps its own diagonal, so no row is
    ever fully masked (a fully masked softmax row is 0/0 = NaN).

`python -m tools.pictures` draws the mask of every row layout (README, "Omni-attention").
"""
import torch
import torch.nn.functional as F


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


def attention(q, k, v, mask):
    """q, k, v: (B, H, L, D), one dtype; mask: (B, 1, L, L) bool, or None for plain causal attention
    (tools/bench.py's baseline). The one attention op, on every device: PyTorch's fused SDPA with the
    boolean omni mask. It reads the whole (L, L) mask, so masked tiles cost as much as visible ones;
    at this project's lengths (37-109 tokens, within one 128 x 128 tile) there is nothing to skip
    (README, "Differences": why not FlexAttention)."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
