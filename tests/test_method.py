"""What the method promises, checked on small examples with known answers: the MTP masks, guided
MaskGIT's mixture of logits, batched text decoding, and which positions can see which under
omni-attention in a whole model. Run: python -m pytest tests/test_method.py"""
import math
from collections import Counter
from types import SimpleNamespace

import torch

from model import Showo, ShowoConfig, generate_images, generate_text, mask_image_tokens

CFG = ShowoConfig(text_vocab_size=20, codebook_size=16, n_layer=2, n_head=2, n_embd=32, image_tokens=16)
SPACE = CFG.space


def masked_count_distribution(n):
    """P(k of n slots masked) when t ~ U(0, 1) and k = max(1, round(n cos(pi/2 t))): k is the value
    whose rounding interval [k - 1/2, k + 1/2) holds n cos(pi/2 t), i.e. t in an arc-cosine interval."""
    t_at = lambda c: 2 / math.pi * math.acos(min(max(c / n, -1.0), 1.0))  # noqa: E731 (the t with n cos = c)
    p = {k: t_at(k - 0.5) - t_at(k + 0.5) for k in range(1, n + 1)}
    p[1] += 1 - t_at(0.5)  # round(...) = 0 is raised to 1: every image has a masked slot
    return p


def test_mask_image_tokens_masks_round_n_cos_slots_per_image_each_slot_equally_often():
    n, rows = 16, 4000
    image = torch.arange(n)
    ids, _, task = SPACE.pad_rows([SPACE.t2i([1, 2], image)] * rows)
    _, masked = mask_image_tokens(ids, task, SPACE, torch.Generator().manual_seed(0))
    counts = Counter(masked.sum(1).tolist())
    for k, p in masked_count_distribution(n).items():  # each count as often as the schedule says
        assert abs(counts[k] / rows - p) < 0.025, (k, counts[k] / rows, p)
    slots = masked[:, -n - 1:-1].float().mean(0)  # (n,) how often each slot of the image was masked
    expected = sum(k * p for k, p in masked_count_distribution(n).items()) / n
    assert (slots - expected).abs().max() < 0.04, (slots, expected)


class TwoPromptModel(torch.nn.Module):
    """A stand-in for Show-o whose image logits say one thing with a prompt and another without:
    conditional rows favour code 1 (logit 8) over code 2 (4); unconditional rows give code 1 the same 8
    and code 2 nothing. Guidance (1 + s) cond - s uncond at s = 2 then favours code 2: 3 x 4 - 0 = 12 > 8."""

    def __init__(self):
        super().__init__()
        self.space, self.cfg = SPACE, SimpleNamespace(image_tokens=4, max_text=8, flex_attention=False)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the sampler asks the parameters for the device

    def forward(self, ids, cache=None):
        has_prompt = (ids < SPACE.text_vocab_size).any(1)                     # (B,) a text id in the row
        logits = torch.full((*ids.shape, SPACE.vocab_size), -30.0)
        logits[..., SPACE.image_offset + 1] = 8.0
        logits[..., SPACE.image_offset + 2] = torch.where(has_prompt, 4.0, 0.0)[:, None]
        return logits, None


def test_guided_maskgit_samples_from_one_plus_s_cond_minus_s_uncond():
    model = TwoPromptModel()
    for guidance, favoured in ((0.0, 1), (2.0, 2)):
        codes, _ = generate_images(model, [[3, 4]] * 50, steps=4, guidance=guidance, cache_prompt=False,
                                   generator=torch.Generator().manual_seed(0))
        assert (codes == favoured).float().mean() > 0.95, (guidance, codes.unique(return_counts=True))


def decisive_model(seed=0, **options):
    """A random tiny Show-o whose logits are far apart (large embeddings and head), so that greedy
    decoding does not hinge on float rounding between a batched and a lone forward pass."""
    torch.manual_seed(seed)
    model = Showo(ShowoConfig(**{**CFG.__dict__, **options})).eval()
    with torch.no_grad():
        model.embed.weight.mul_(50)
        model.head.weight.mul_(50)
    return model


def test_a_left_padded_batch_of_prompts_decodes_as_each_prompt_alone():
    model = decisive_model(text_conv=2)
    image = torch.arange(16).flip(0)
    prefixes = [SPACE.mmu(image, [1, 2, 3, 4, 5]), SPACE.lm([6], close=False), SPACE.mmu(image, [])]
    together = generate_text(model, prefixes, max_new_tokens=6)
    alone = [generate_text(model, [p], max_new_tokens=6)[0] for p in prefixes]
    assert together == alone
    assert len({tuple(t) for t in together}) > 1  # the prompts did lead to different texts


def logits_of(model, row):
    ids, _, _ = SPACE.pad_rows([row])
    with torch.no_grad():
        return model(ids)[0][0]  # (L, V)


def test_a_later_image_token_changes_an_earlier_one_and_later_text_changes_nothing_before_it():
    model = decisive_model()
    image = torch.arange(16)
    changed = image.clone()
    changed[-1] = 3                                              # the image's last code
    t2i, t2i_changed = SPACE.t2i([1, 2], image), SPACE.t2i([1, 2], changed)
    first_code = t2i.ids.index(SPACE.soi) + 1
    a, b = logits_of(model, t2i), logits_of(model, t2i_changed)
    assert not torch.allclose(a[first_code], b[first_code])      # an image is one bidirectional block
    assert torch.allclose(a[:first_code - 1], b[:first_code - 1])  # the prompt before [SOI] sees none of it
    mmu, mmu_changed = SPACE.mmu(image, [1, 2], [3, 4]), SPACE.mmu(image, [1, 2], [3, 9])
    a, b = logits_of(model, mmu), logits_of(model, mmu_changed)
    last = len(mmu.ids) - 2                                      # the changed answer token
    assert torch.allclose(a[:last], b[:last]) and not torch.allclose(a[last], b[last])  # text is causal
