"""Tests of tokenizer.py: the LFQ quantizer's invariants, the image tokenizer's training and
checkpoints, the BPE text tokenizer, and the unified token space with its row layouts.
Run: python -m pytest tests/test_tokenizer.py"""
import math

import numpy as np
import pytest
import torch

from tokenizer import (LFQ, ImageTokenizer, ImageTokenizerConfig, TextTokenizer, TokenSpace, bpe_text,
                       image_tokenizer_checkpoint, load_image_tokenizer, psnr, train_bpe)

# ----------------------------------------------------------------------------- LFQ


def test_lfq_codes_are_exactly_plus_minus_one():
    q, indices, _ = LFQ(bits=6)(torch.randn(4, 6, 3, 3))
    assert set(q.unique().tolist()) <= {-1.0, 1.0}
    assert indices.shape == (4, 3, 3) and indices.min() >= 0 and indices.max() < 2 ** 6


@pytest.mark.parametrize("bits", [1, 4, 10])
def test_lfq_index_code_index_round_trips_for_every_code(bits):
    lfq = LFQ(bits)
    every_index = torch.arange(2 ** bits)
    codes = lfq.indices_to_codes(every_index)  # (2^K, K)
    assert torch.equal(lfq.codes_to_indices(codes), every_index)
    assert len(codes.unique(dim=0)) == 2 ** bits  # all distinct corners of the hypercube


def test_lfq_bit_order_channel_zero_is_least_significant():
    lfq = LFQ(bits=4)
    # channel 0 positive only -> index 1; channel 3 positive only -> index 8.
    assert lfq.codes_to_indices(torch.tensor([1.0, -1, -1, -1])).item() == 1
    assert lfq.codes_to_indices(torch.tensor([-1.0, -1, -1, 1])).item() == 8
    assert lfq.indices_to_codes(torch.tensor(5)).tolist() == [1, -1, 1, -1]


def test_lfq_straight_through_gradient_is_identity():
    z = torch.randn(2, 5, 2, 2, requires_grad=True)
    q, _, _ = LFQ(5)(z)
    weights = torch.randn_like(q)
    (q * weights).sum().backward()
    # sign() has zero gradient almost everywhere; the estimator passes the gradient through unchanged.
    assert torch.allclose(z.grad, weights)


def test_entropy_penalty_prefers_uniform_code_use_to_collapse():
    bits = 6
    lfq = LFQ(bits)
    confident = 0.5  # |z| >> tau: per-token distributions are nearly one-hot
    uniform = lfq.indices_to_codes(torch.arange(2 ** bits)) * confident  # every code once
    collapsed = uniform[:1].repeat(2 ** bits, 1)  # every token on one code
    pen_uniform, tok_u, batch_u = lfq.entropy_penalty(uniform)
    pen_collapsed, _, batch_c = lfq.entropy_penalty(collapsed)
    assert pen_uniform < pen_collapsed
    assert tok_u < 1e-3  # confident tokens
    assert math.isclose(batch_u.item(), bits * math.log(2), rel_tol=1e-4)  # log(2^K): the maximum
    assert batch_c.item() < 1e-3


def exact_batch_entropy(lfq, z):
    """H(mean_n p(c | z_n)) with all 2^K code probabilities written out (small K only)."""
    codes = lfq.indices_to_codes(torch.arange(2 ** lfq.bits))  # (2^K, K)
    p = torch.softmax(-torch.cdist(z, codes) ** 2 / lfq.tau, dim=-1)  # the definition, eq. of MAGVIT-v2
    mean = p.mean(0)
    return -(mean * mean.clamp_min(1e-30).log()).sum()


@pytest.mark.parametrize("bits", [1, 6, 7])
def test_the_entropy_terms_equal_their_definitions(bits):
    """The batch term from two half-code tables equals the entropy of the mean of all 2^K code
    probabilities; the per-token term from per-bit sigmoids equals the entropy of each token's own."""
    torch.manual_seed(0)
    lfq, z = LFQ(bits), torch.randn(64, bits) * 0.02  # soft assignments, |z| ~ tau, so every term matters
    _, per_token, batch = lfq.entropy_penalty(z)
    assert torch.allclose(batch, exact_batch_entropy(lfq, z), rtol=1e-4)
    p = torch.softmax(-torch.cdist(z, lfq.indices_to_codes(torch.arange(2 ** bits))) ** 2 / lfq.tau, dim=-1)
    assert torch.allclose(per_token, -(p * p.clamp_min(1e-30).log()).sum(-1).mean(), rtol=1e-3)


def test_psnr_of_images_one_grey_level_off_is_48_13_db():
    images = np.full((2, 4, 4, 3), 100, np.uint8)
    assert np.allclose(psnr(images, images + 1), 10 * np.log10(255 ** 2), atol=1e-9)  # 48.13 dB
    assert round(float(psnr(images, images + 1)[0]), 2) == 48.13 and psnr(images, images)[0] > 100


# ----------------------------------------------------------------------------- image tokenizer

TINY = ImageTokenizerConfig(image_size=16, channels=(8, 16), codebook_bits=6)


def test_image_tokenizer_shapes_and_code_range():
    model = ImageTokenizer(TINY).eval()
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    codes = model.encode(images)
    assert codes.shape == (3, 4, 4) and codes.dtype == torch.int64  # 16 px / 4
    assert 0 <= codes.min() and codes.max() < 2 ** 6
    recon = model.decode(codes)
    assert recon.shape == images.shape and recon.abs().max() <= 1
    # decode(encode(x)) is what forward reconstructs (eval mode, same quantized codes).
    assert torch.allclose(model(images)[0].clamp(-1, 1), recon, atol=1e-5)


def test_encode_and_decode_reject_wrong_inputs_clearly():
    model = ImageTokenizer(TINY).eval()
    with pytest.raises(ValueError, match="images_to_tensor"):
        model.encode(torch.zeros(2, 16, 16, 3, dtype=torch.uint8))  # uint8 NHWC, not float NCHW
    with pytest.raises(ValueError, match="expects float images"):
        model.encode(torch.zeros(2, 3, 32, 32))  # wrong resolution
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.decode(torch.full((1, 4, 4), 64))  # one past the last code (e.g. a forgotten id offset)


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = ImageTokenizer(TINY)
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(images)[2]["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_checkpoint_save_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = ImageTokenizer(TINY).eval()
    path = tmp_path / "tok.pt"
    torch.save(image_tokenizer_checkpoint(model, step=3), path)
    loaded, ckpt = load_image_tokenizer(path)  # loads with weights_only=True
    assert ckpt["step"] == 3 and loaded.cfg == TINY
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(model.encode(images), loaded.encode(images))
    codes = model.encode(images)
    assert torch.equal(model.decode(codes), loaded.decode(codes))


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))
    path = tmp_path / "evil.pt"
    torch.save({"kind": "image_tokenizer", "payload": Evil()}, path)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_image_tokenizer(path)


def test_missing_or_foreign_checkpoint_gives_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train one"):
        load_image_tokenizer(tmp_path / "nope.pt")
    torch.save({"kind": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an image tokenizer"):
        load_image_tokenizer(tmp_path / "other.pt")


# ----------------------------------------------------------------------------- text tokenizer

CAPTIONS = ["a red circle to the left of a blue square", "two green triangles", "a photo of a cat",
            "a small yellow square above a purple circle"] * 20


def test_bpe_learns_frequent_words_as_single_tokens():
    ranks = train_bpe(CAPTIONS, vocab_size=300)
    assert len(ranks) == 300 and all(ranks[bytes([b])] == b for b in range(256))
    tok = TextTokenizer(bpe_text(ranks))
    assert len(tok.encode(" circle")) == 1  # a frequent word (with its space) became one token
    assert len(tok.encode("a red circle")) < len("a red circle".encode())


@pytest.mark.parametrize("text", ["a red circle", "", "naïve café — 東京 🚀\u0301 x_y__z\n\t  ", "\x00\xff 12345 don't",
                                  "".join(map(chr, range(1, 600)))])
def test_bpe_round_trips_any_unicode(tmp_path, text):
    (tmp_path / "text.tiktoken").write_text(bpe_text(train_bpe(CAPTIONS, vocab_size=280)))
    tok = TextTokenizer((tmp_path / "text.tiktoken").read_text())  # tiktoken's rank file, as train.py writes it
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_user_text_never_becomes_a_special_token():
    tok = TextTokenizer(bpe_text(train_bpe(CAPTIONS, vocab_size=270)))
    prompt = "<|t2i|> draw <|endoftext|> a circle <|soi|>"
    ids = tok.encode(prompt)  # no error, and only ordinary text ids
    assert all(i < tok.vocab_size for i in ids) and tok.decode(ids) == prompt
    assert len(ids) > 3


def test_bpe_training_is_deterministic_and_validates_size():
    assert train_bpe(CAPTIONS, 290) == train_bpe(CAPTIONS, 290)
    with pytest.raises(ValueError, match=">= 256"):
        train_bpe(CAPTIONS, 100)


# --- the unified token space and row layouts ---

SPACE_ = TokenSpace(text_vocab_size=20, codebook_size=16)


def test_token_space_layout():
    s = SPACE_
    assert (s.pad, s.sot, s.eot, s.soi, s.eoi, s.t2i_token, s.mmu_token) == tuple(range(20, 27))
    assert s.sot != s.eot                     # unlike the public code, SOT and EOT are distinct ids
    assert s.image_offset == 27 and s.mask == 27 + 16 == s.vocab_size - 1
    assert s.is_image_code(torch.tensor([26, 27, 42, 43])).tolist() == [False, True, True, False]


def test_over_long_text_is_cut_and_eot_re_appended_with_a_warning_for_user_text():
    with pytest.warns(UserWarning, match="cut"):
        row = SPACE_.t2i(list(range(10)), 4, max_text=3, warn=True)
    assert SPACE_.describe(row.ids) == "[T2I] [SOT] t t t [EOT] [SOI] m m m m [EOI]"
    row = SPACE_.mmu(torch.arange(2), [1, 2], [3, 4, 5], max_text=4)   # training data: cut silently
    assert row.ids[-1] == SPACE_.eot and row.ids[-5:-1] == [1, 2, 3, 4]


def test_a_dialogue_learns_every_answer_and_starts_like_a_one_question_row():
    img = torch.arange(2)
    row = SPACE_.dialogue(img, [([1, 2], [3]), ([4], [5, 6])])
    assert SPACE_.describe(row.ids) == "[MMU] [SOI] i i [EOI] [SOT] t t t [EOT] [SOT] t t t [EOT]"
    targeted = [i for i, t in zip(row.ids, row.text_targets) if t]
    assert targeted == [3, SPACE_.eot, 5, 6, SPACE_.eot]   # answers and their [EOT]s; never a question
    one = SPACE_.mmu(img, [1, 2], [3])
    assert row.ids[:len(one.ids)] == one.ids and row.text_targets[:len(one.ids)] == one.text_targets


def test_rows_built_from_user_text_hold_no_special_ids():
    tok = TextTokenizer(bpe_text(train_bpe(["a red circle"], 260)))
    row = SPACE_.t2i(tok.encode("[T2I] <|t2i|> [EOT] [MASK]"), 4)
    text = row.ids[2:row.ids.index(SPACE_.eot)]
    assert all(i < tok.vocab_size for i in text)  # the text stays text ids, below every special id


def test_a_cut_text_does_not_teach_the_model_to_stop_there():
    row = SPACE_.mmu(torch.arange(2), [1, 2], [3, 4, 5], max_text=4)  # the answer's tail is cut
    assert SPACE_.describe(row.ids).endswith("[SOT] t t t t [EOT]")
    assert row.text_targets[-5:] == [False, False, True, True, False]  # 3 and 4 are targets, [EOT] is not
    full = SPACE_.mmu(torch.arange(2), [1, 2], [3], max_text=4)      # fits: its [EOT] is a target
    assert full.text_targets[-2:] == [True, True]
    assert SPACE_.lm([1, 2, 3, 4, 5], max_text=3).text_targets == [False, True, True, True, False]
