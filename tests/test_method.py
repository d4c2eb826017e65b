"""What the method promises, checked on small examples with known answers: the MTP masks, guided
MaskGIT's mixture of logits, batched text decoding, which positions can see which under
omni-attention in a whole model, and the gradient of a batch split over processes.
Run: python -m pytest tests/test_method.py"""
import math
from collections import Counter
from types import SimpleNamespace

import torch

from model import Showo, ShowoConfig, generate_images, generate_text, mask_image_tokens, training_labels
from train import batch_loss, position_counts, process_share

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


def mixed_batch(seed=0):
    """Groups as data.tasks.build_batch makes them: text-to-image rows (masked for MTP), understanding
    rows and text-only rows, each group padded to its own longest row, answers of unequal lengths."""
    g = torch.Generator().manual_seed(seed)
    image = lambda: torch.randint(0, 16, (16,), generator=g)  # noqa: E731
    text = lambda n: torch.randint(0, 20, (n,), generator=g).tolist()  # noqa: E731
    groups = []
    for rows in ([SPACE.t2i(text(1 + k), image()) for k in range(5)],
                 [SPACE.mmu(image(), text(2), text(1 + 2 * k)) for k in range(4)], [SPACE.lm(text(3 + k)) for k in range(3)]):
        ids, text_targets, task = SPACE.pad_rows(rows)
        inputs, masked = mask_image_tokens(ids, task, SPACE, g)
        groups.append((inputs, training_labels(ids, text_targets, masked), task))
    return groups


def test_the_shares_of_two_processes_sum_to_the_gradient_of_the_whole_batch():
    """torchrun's training, in one process with the all-reduce replaced by a sum: each process's loss is
    its rows' part of the batch's means (train.batch_loss divides by the WHOLE batch's counts of loss
    positions), so the two shares' gradients add up to the one-process gradient. Dividing by a share's
    own counts, or averaging the shares, would give another gradient: the halves hold unequal numbers
    of masked slots and answer tokens."""
    model = decisive_model(text_conv=2, slot_embedding=True)
    cfg = SimpleNamespace(model=model.cfg, bf16=False, w_t2i=1.0, w_mmu=1.0, w_lm=0.1)
    groups = mixed_batch()
    counts = position_counts(groups, SPACE)

    def gradient(part):
        model.zero_grad()
        batch_loss(model, part, counts, cfg, torch.device("cpu"))[0].backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])
    whole = gradient(groups)
    shares = [process_share(groups, rank, 2) for rank in range(2)]
    rows = [sum(len(group[0]) for group in part) for part in shares]
    assert sum(rows) == 12 and abs(rows[0] - rows[1]) <= 1  # every row once, in halves
    torch.testing.assert_close(gradient(shares[0]) + gradient(shares[1]), whole, atol=1e-6, rtol=1e-4)
    own_counts = [position_counts(part, SPACE) for part in shares]
    assert own_counts[0] != own_counts[1]  # the halves really differ: a wrong scale would show
