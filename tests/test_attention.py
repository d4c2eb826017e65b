"""Omni-attention (attention.py): the mask of every row layout against hand-written matrices, the row
rules on random layouts, padding, and the attention op against a manual softmax.
Run: python -m pytest tests/test_attention.py"""
import random

import torch

from attention import attention, image_span_index, omni_attention_mask
from tokenizer import TokenSpace
from tools.pictures import render_mask

SPACE = TokenSpace(text_vocab_size=10, codebook_size=4)
IMG2 = torch.tensor([1, 2])  # a 2-token image
IMG3 = torch.tensor([0, 1, 3])


def matrix(text):
    """Rows of 0/1 characters -> (L, L) bool tensor."""
    return torch.tensor([[c == "1" for c in line.split()[0]] for line in text.strip().splitlines()])


def mask_of(row, length=None):
    ids, _, _ = SPACE.pad_rows([row], length)
    return omni_attention_mask(ids, SPACE)[0, 0]


def test_text_to_image_row_is_causal_text_then_one_bidirectional_image():
    row = SPACE.t2i([1, 2], IMG2)
    assert SPACE.describe(row.ids) == "[T2I] [SOT] t t [EOT] [SOI] i i [EOI]"
    expected = matrix("""
        100000000  [T2I]
        110000000  [SOT]
        111000000  t
        111100000  t
        111110000  [EOT]
        111111111  [SOI]  the image span sees all of itself (4 columns) and everything before
        111111111  i
        111111111  i
        111111111  [EOI]
    """)
    assert torch.equal(mask_of(row), expected)


def test_understanding_row_text_after_the_image_sees_all_of_it():
    row = SPACE.mmu(IMG2, [], [3, 4])
    assert SPACE.describe(row.ids) == "[MMU] [SOI] i i [EOI] [SOT] t t [EOT]"
    expected = matrix("""
        100000000  [MMU]
        111110000  [SOI]
        111110000  i
        111110000  i
        111110000  [EOI]
        111111000  [SOT]  causal from here on, the whole image included
        111111100  t
        111111110  t
        111111111  [EOT]
    """)
    assert torch.equal(mask_of(row), expected)


def test_language_modelling_row_is_plain_causal():
    row = SPACE.lm([1, 2, 3])
    expected = matrix("""
        10000
        11000
        11100
        11110
        11111
    """)
    assert torch.equal(mask_of(row), expected)


def test_interleaved_row_gives_each_image_its_own_block():
    row = SPACE.interleaved([[1], IMG2, [2], IMG3])
    assert SPACE.describe(row.ids) == "[T2I] [SOT] t [EOT] [SOI] i i [EOI] [SOT] t [EOT] [SOI] i i i [EOI]"
    expected = matrix("""
        1000000000000000  [T2I]
        1100000000000000  [SOT]
        1110000000000000  t
        1111000000000000  [EOT]
        1111111100000000  [SOI]  first image: one block over columns 4-7
        1111111100000000  i
        1111111100000000  i
        1111111100000000  [EOI]
        1111111110000000  [SOT]  the text between sees the first image, not the second
        1111111111000000  t
        1111111111100000  [EOT]
        1111111111111111  [SOI]  second image: its own block over columns 11-15
        1111111111111111  i
        1111111111111111  i
        1111111111111111  i
        1111111111111111  [EOI]
    """)
    assert torch.equal(mask_of(row), expected)


def test_padding_is_hidden_and_padded_rows_see_only_themselves():
    row = SPACE.t2i([1], IMG2)  # 8 tokens, left-padded to 10
    m = mask_of(row, length=10)
    assert SPACE.describe(SPACE.pad_rows([row], 10)[0][0]).startswith("[PAD] [PAD] [T2I]")
    assert not m[2:, :2].any()                      # no real token sees a pad
    assert torch.equal(m[:2, :], torch.eye(10, dtype=torch.bool)[:2])  # a pad row sees only itself
    assert torch.equal(m[2:, 2:], mask_of(row))     # the real tokens' mask is unchanged by padding
    lm = mask_of(SPACE.lm([1, 2]), length=7)        # right padding
    assert not lm[:4, 4:].any()
    assert m.diagonal().all() and lm.diagonal().all()  # every row keeps its diagonal: never fully masked


def reference_mask(ids):
    """The rules, one (query, key) pair at a time with a walk over the row: an independent
    re-statement of omni_attention_mask for random layouts."""
    L = len(ids)
    span, current, k = [0] * L, 0, 0
    for i, t in enumerate(ids):
        if t == SPACE.soi:
            k += 1
            current = k
        span[i] = current
        if t == SPACE.eoi:
            current = 0
    mask = torch.zeros(L, L, dtype=torch.bool)
    for q in range(L):
        for c in range(L):
            if q == c:
                mask[q, c] = True
            elif ids[c] == SPACE.pad:
                mask[q, c] = False
            else:
                mask[q, c] = c < q or (span[q] > 0 and span[q] == span[c])
    return mask


def random_row(rng):
    text = lambda: [rng.randrange(SPACE.text_vocab_size) for _ in range(rng.randint(0, 4))]
    image = lambda: torch.tensor([rng.randrange(4) for _ in range(rng.randint(1, 5))])
    kind = rng.choice(["t2i", "mmu", "lm", "interleaved"])
    if kind == "t2i":
        return SPACE.t2i(text(), image() if rng.random() < 0.5 else rng.randint(1, 5))
    if kind == "mmu":
        return SPACE.mmu(image(), text(), text())
    if kind == "lm":
        return SPACE.lm(text())
    return SPACE.interleaved([text() if i % 2 == 0 else image() for i in range(rng.randint(1, 6))])


def test_random_layouts_follow_the_rules_pair_by_pair():
    rng = random.Random(0)
    for _ in range(20):
        rows = [random_row(rng) for _ in range(4)]
        ids, _, _ = SPACE.pad_rows(rows)
        mask = omni_attention_mask(ids, SPACE)
        for b in range(len(rows)):
            assert torch.equal(mask[b, 0], reference_mask(ids[b].tolist())), SPACE.describe(ids[b])


def test_image_span_index_numbers_images_and_includes_their_markers():
    row = SPACE.interleaved([[1], IMG2, [2], IMG3])
    ids = torch.tensor([row.ids])
    assert image_span_index(ids, SPACE)[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 2, 2, 2, 2, 2]


def manual_attention(q, k, v, mask):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5        # (B, H, L, L)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_sdpa_with_the_omni_mask_equals_a_manual_masked_softmax():
    rng = random.Random(1)
    ids, _, _ = SPACE.pad_rows([random_row(rng) for _ in range(3)])
    mask = omni_attention_mask(ids, SPACE)
    q, k, v = torch.randn(3, ids.shape[0], 2, ids.shape[1], 8).unbind(0)  # (B, H, L, D) each
    out = attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, manual_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)


def causal_mask(ids, space):
    """The plain language-model mask with the same padding rule (what omni-attention adds to)."""
    B, L = ids.shape
    pos = torch.arange(L, device=ids.device)
    mask = (pos[:, None] >= pos[None, :]) & (ids != space.pad)[:, None, :]
    mask |= torch.eye(L, dtype=torch.bool, device=ids.device)
    return mask[:, None]


def test_omni_mask_differs_from_causal_exactly_inside_images():
    ids, _, _ = SPACE.pad_rows([SPACE.t2i([1], IMG3), SPACE.mmu(IMG2, [1], [2])])
    extra = omni_attention_mask(ids, SPACE) & ~causal_mask(ids, SPACE)  # what omni adds to causal
    span = image_span_index(ids, SPACE)
    for b, qi, ki in extra[:, 0].nonzero().tolist():
        assert span[b, qi] > 0 and span[b, qi] == span[b, ki] and ki > qi  # only later tokens of the same image
    assert not (causal_mask(ids, SPACE) & ~omni_attention_mask(ids, SPACE)).any()


def test_render_mask_draws_one_cell_per_token_pair():
    row = SPACE.t2i([1, 2], IMG2)
    img = render_mask(torch.tensor(row.ids), SPACE, cell=10)
    assert img.size == (10 + 9 * 10 + 1, 10 + 9 * 10 + 1)
    # the cell (query [SOI], key [EOI]) is dark: an image token sees a later token of its image
    x, y = 10 + 8 * 10 + 5, 10 + 5 * 10 + 5
    assert img.getpixel((x, y))[0] < 100
    assert img.getpixel((10 + 5 * 10 + 5, 10 + 2 * 10 + 5))[0] > 200  # text does not see the future image
