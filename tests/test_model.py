"""The Show-o transformer and its joint loss (model.py): QK-Norm and RoPE, padding invariance, what
MTP and NTP are computed on, the masking schedule, and that a tiny model can learn.
Run: python -m pytest tests/test_model.py"""
import math

import pytest
import torch
import torch.nn.functional as F

from model import (IGNORE, SelfAttention, Showo, ShowoConfig, TextConv, apply_rope, image_slot_index, joint_loss,
                   mask_image_tokens, optimizer_groups, rope_tables, task_losses, training_labels)

CFG = ShowoConfig(text_vocab_size=20, codebook_size=16, n_layer=2, n_head=4, n_embd=32)
SPACE = CFG.space


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return Showo(ShowoConfig(**{**CFG.__dict__, **overrides})).eval()


def test_qk_norm_is_per_head_and_before_rope():
    torch.manual_seed(0)
    attn = SelfAttention(CFG)
    with torch.no_grad():  # non-trivial norm gains, so the test also sees where they are applied
        for norm in (attn.q_norm, attn.k_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 7, CFG.n_embd)
    mask = torch.ones(2, 1, 7, 7, dtype=torch.bool).tril()
    rope = rope_tables(torch.arange(7), CFG.n_embd // CFG.n_head, CFG.rope_base)
    out = attn(x, mask, rope)

    # the order spelled out: projection -> per-head LayerNorm -> RoPE -> attention
    B, L, H, D = 2, 7, CFG.n_head, CFG.n_embd // CFG.n_head
    q, k, v = attn.qkv(x).view(B, L, 3, H, D).unbind(2)
    q = apply_rope(F.layer_norm(q, (D,), attn.q_norm.weight, attn.q_norm.bias).transpose(1, 2), *rope)
    k = apply_rope(F.layer_norm(k, (D,), attn.k_norm.weight, attn.k_norm.bias).transpose(1, 2), *rope)
    scores = (q @ k.transpose(-1, -2) / D ** 0.5).masked_fill(~mask, float("-inf"))
    manual = attn.proj((scores.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2).reshape(B, L, -1))
    torch.testing.assert_close(out, manual, atol=1e-5, rtol=1e-5)
    q_raw = attn.qkv(x).view(B, L, 3, H, D)[:, :, 0].transpose(1, 2)  # (B, H, L, D)
    rope_then_norm = F.layer_norm(apply_rope(q_raw, *rope), (D,), attn.q_norm.weight, attn.q_norm.bias)
    assert not torch.allclose(rope_then_norm, q, atol=1e-3)  # the order matters, so the check above has teeth

    # scaling each head's query by its own factor leaves attention unchanged (per-head normalisation)
    with torch.no_grad():
        scale = torch.tensor([2.0, 3.0, 7.0, 50.0]).repeat_interleave(D)  # (C,) one factor per head
        attn.qkv.weight[:CFG.n_embd] *= scale[:, None]
        attn.qkv.bias[:CFG.n_embd] *= scale
    torch.testing.assert_close(attn(x, mask, rope), out, atol=1e-4, rtol=1e-4)


def test_default_config_is_show_o_as_published():
    # no argument builds the paper's model: 1D RoPE, per-head QK-Norm, none of our additions
    model = Showo(ShowoConfig())
    assert model.slot_embedding is None and model.text_conv is None and model.code_bits is None
    assert not any(name.startswith(("slot_embedding", "text_conv", "code_bits")) for name, _ in model.named_parameters())
    attn = model.blocks[0].attn
    assert attn.q_norm.normalized_shape == attn.k_norm.normalized_shape == (attn.head_dim,)


def rope_score(q, k, q_pos, k_pos):
    """The attention score of query q at position q_pos and key k at k_pos, after RoPE."""
    cq, sq = rope_tables(torch.tensor([q_pos]), q.shape[-1], 10000.0)
    ck, sk = rope_tables(torch.tensor([k_pos]), k.shape[-1], 10000.0)
    return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()


def test_rope_scores_depend_only_on_relative_position():
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    score = lambda m, n: rope_score(q, k, m, n)  # noqa: E731
    torch.testing.assert_close(score(5, 2), score(105, 102))
    torch.testing.assert_close(score(0, 7), score(30, 37))
    assert not torch.allclose(score(5, 2), score(5, 3))


@pytest.mark.parametrize("text_conv", [0, 3])
def test_left_padding_changes_nothing_for_the_real_tokens(text_conv):
    model = tiny_model(text_conv=text_conv)
    if text_conv:  # padding must not leak into the first real tokens' mix either
        torch.nn.init.normal_(model.text_conv.weight)
    row = SPACE.t2i([1, 2, 3], torch.arange(6))
    ids0, _, _ = SPACE.pad_rows([row])
    ids5, _, _ = SPACE.pad_rows([row], length=len(row.ids) + 5)
    with torch.no_grad():
        a, _ = model(ids0)
        b, _ = model(ids5)
    assert torch.isfinite(b).all()                  # padded positions give no NaN either
    torch.testing.assert_close(b[:, 5:], a, atol=1e-5, rtol=1e-4)


def test_text_conv_adds_the_previous_tokens_with_one_weight_per_lag_and_channel():
    torch.manual_seed(0)
    conv = TextConv(n_embd=4, n_prev=2)
    torch.nn.init.normal_(conv.weight)
    e = torch.randn(1, 5, 4)
    mix, tail = conv(e)
    w1, w2 = conv.weight                                          # 1 and 2 tokens back
    torch.testing.assert_close(mix[0, 0], torch.zeros(4))         # nothing before the first token
    torch.testing.assert_close(mix[0, 1], w1 * e[0, 0])
    torch.testing.assert_close(mix[0, 4], w1 * e[0, 3] + w2 * e[0, 2])
    torch.testing.assert_close(tail, e[:, 3:])                    # what the next token will need
    nxt = torch.randn(1, 1, 4)
    torch.testing.assert_close(conv(nxt, tail)[0][0, 0], w1 * e[0, 4] + w2 * e[0, 3])


def test_text_conv_starts_as_the_plain_model_and_leaves_image_tokens_alone():
    plain, conv = tiny_model(), tiny_model(text_conv=3)
    conv.load_state_dict(plain.state_dict(), strict=False)   # the same weights, the mix at zero
    ids, _, _ = SPACE.pad_rows([SPACE.mmu(torch.arange(4), [1, 2], [3, 4])])
    with torch.no_grad():
        torch.testing.assert_close(conv(ids)[0], plain(ids)[0])
        torch.nn.init.normal_(conv.text_conv.weight)
        e = conv.embed(ids)
        seen = []
        conv.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        conv(ids)
    image = conv.space.is_image_code(ids[0])
    assert torch.equal(seen[0][0, image], e[0, image])        # image tokens: their embedding only
    assert not torch.allclose(seen[0][0, ~image], e[0, ~image])  # text and specials: plus the mix


def test_image_slots_count_grid_positions_inside_each_image_only():
    img = torch.arange(4)  # a 2x2 grid
    rows = [SPACE.t2i([1, 2], 4),                                 # a canvas of [MASK]s: still slots 0..3
            SPACE.mmu(img, [3], [4]), SPACE.interleaved([[1], img, [2], img])]
    ids, _, _ = SPACE.pad_rows(rows)
    slot = image_slot_index(ids, SPACE)
    for b, row in enumerate(rows):
        pos = torch.arange(len(row.ids)) + (ids.shape[1] - len(row.ids) if row.task == "t2i" else 0)
        body = [int(p) for p in pos if ids[b, p] == SPACE.mask or SPACE.is_image_code(ids[b, p])]
        assert slot[b, body].tolist() == [0, 1, 2, 3] * (len(body) // 4)       # every image restarts at 0
        assert (slot[b, [p for p in range(ids.shape[1]) if p not in body]] == -1).all()  # text, specials, pad


def test_slot_embedding_reaches_masked_slots_only():
    # known codes (understanding rows, the visible part of a canvas) embed the same in every slot;
    # only a [MASK] learns where it is
    model, plain = tiny_model(image_tokens=4, slot_embedding=True), tiny_model(image_tokens=4)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("slot_embedding")})
    img = torch.tensor([3, 1, 4, 1])
    for row, changed in ((SPACE.mmu(img, [1, 2]), False), (SPACE.t2i([1, 2], img), False),
                         (SPACE.t2i([1, 2], 4), True)):
        ids, _, _ = SPACE.pad_rows([row])
        with torch.no_grad():
            assert torch.allclose(model(ids)[0], plain(ids)[0]) != changed, row.ids


def test_code_bits_add_a_linear_map_of_each_codes_bits_to_image_codes_only():
    # code c (K = 4 bits here) gets W (2 b(c) - 1), b_k(c) = (c >> k) & 1; text, specials and [MASK] get nothing
    model = tiny_model(code_bits=True)
    assert model.code_bits.in_features == 4
    ids, _, _ = SPACE.pad_rows([SPACE.t2i([1, 2], torch.tensor([0, 5, 15, 5])), SPACE.t2i([3], 4)])
    x = model.embed(ids)
    with torch.no_grad():
        extra = model.additions(ids, x, None, 0)
    W = model.code_bits.weight                                      # (C, K)
    for (b, p), i in zip(torch.cartesian_prod(torch.arange(2), torch.arange(ids.shape[1])).tolist(), ids.flatten()):
        code = int(i) - SPACE.image_offset
        if 0 <= code < SPACE.codebook_size:
            bits = torch.tensor([2.0 * ((code >> k) & 1) - 1 for k in range(4)])
            torch.testing.assert_close(extra[b, p], W @ bits)
        else:
            assert not extra[b, p].any(), SPACE.describe([i])


def batch(rows, seed=0):
    ids, text_targets, task = SPACE.pad_rows(rows)
    inputs, masked = mask_image_tokens(ids, task, SPACE, torch.Generator().manual_seed(seed))
    return ids, inputs, masked, training_labels(ids, text_targets, masked), text_targets, task


def test_mask_image_tokens_masks_only_generated_images_and_at_least_one_token():
    img = torch.arange(16)
    rows = [SPACE.t2i([1], img), SPACE.mmu(img, [], [2, 3]), SPACE.lm([4, 5]), SPACE.interleaved([[1], img, [2], img])]
    for seed in range(20):
        ids, inputs, masked, labels, _, task = batch(rows, seed)
        assert (inputs[masked] == SPACE.mask).all() and torch.equal(inputs[~masked], ids[~masked])  # the model sees [MASK]
        assert masked[0].sum() >= 1 and not masked[1].any() and not masked[2].any()
        assert masked[3, :21].sum() >= 1 and masked[3, 21:].sum() >= 1  # each image of a row on its own
        assert SPACE.is_image_code(ids[masked]).all()                      # never [SOI]/[EOI]/text


def test_mask_ratio_follows_the_cosine_schedule():
    img = torch.arange(16)
    rows = [SPACE.t2i([1], img)] * 64
    fractions = torch.cat([batch(rows, seed)[2].sum(1).float() / 16 for seed in range(20)])
    # t ~ U(0,1), ratio cos(pi/2 t): mean 2/pi = 0.64; P(ratio < 1/2) = P(t > 2/3) = 1/3
    assert abs(fractions.mean().item() - 2 / math.pi) < 0.04
    assert abs((fractions < 0.5).float().mean().item() - 1 / 3) < 0.06


def test_mtp_loss_is_taken_only_at_masked_positions_and_is_not_shifted():
    img = torch.arange(16)
    rows = [SPACE.t2i([1, 2], img), SPACE.t2i([3], img.flip(0))]
    ids, inputs, masked, labels, text_targets, task = batch(rows, seed=1)
    assert masked.any() and (SPACE.is_image_code(ids) & ~masked).any()  # both kinds of image slot
    logits = torch.randn(*ids.shape, SPACE.vocab_size)
    loss = task_losses(logits, labels, task, SPACE)["t2i"]
    # the same number, computed by hand: at each masked slot, the code at that slot, over codes only
    manual = F.cross_entropy(logits[masked][:, SPACE.image_offset:SPACE.mask], ids[masked] - SPACE.image_offset)
    torch.testing.assert_close(loss, manual)
    # changing the truth at an unmasked image position changes nothing; at a masked one it does
    b, pos = (SPACE.is_image_code(ids) & ~masked).nonzero()[0].tolist()
    other = ids.clone()
    other[b, pos] = SPACE.image_offset + (ids[b, pos] - SPACE.image_offset + 1) % 16
    assert torch.equal(training_labels(other, text_targets, masked), labels)
    b, pos = masked.nonzero()[0].tolist()
    other = labels.clone()
    other[b, pos] = SPACE.image_offset + (labels[b, pos] - SPACE.image_offset + 1) % 16
    assert not torch.allclose(task_losses(logits, other, task, SPACE)["t2i"], loss)


def test_ntp_loss_is_shifted_and_only_on_answers():
    img = torch.arange(4)
    rows = [SPACE.mmu(img, [5, 6], [7, 8]), SPACE.lm([9, 10, 11])]
    ids, inputs, masked, labels, text_targets, task = batch(rows)
    assert not masked.any()  # no images to generate in these rows
    logits = torch.randn(*ids.shape, SPACE.vocab_size)
    losses = task_losses(logits, labels, task, SPACE)
    assert set(losses) == {"mmu", "lm"}
    # mmu: [MMU][SOI] i i i i [EOI][SOT] 5 6 7 8 [EOT]: targets 7, 8, [EOT], each predicted one position earlier
    pos = [i for i, t in enumerate(rows[0].ids) if t in (7, 8, SPACE.eot)]
    manual = F.cross_entropy(logits[0, [p - 1 for p in pos]], ids[0, pos])
    torch.testing.assert_close(losses["mmu"], manual)
    assert labels[0, :pos[0]].eq(IGNORE).all()     # no loss on the image, the prompt or [SOT]
    assert labels[0, len(rows[0].ids):].eq(IGNORE).all()  # nor on padding
    manual_lm = F.cross_entropy(logits[1, 0:4], ids[1, 1:5])  # [SOT] 9 10 11 [EOT]: predict 9 10 11 [EOT]
    torch.testing.assert_close(losses["lm"], manual_lm)


def test_joint_loss_weights_the_tasks():
    losses = dict(t2i=torch.tensor(2.0), mmu=torch.tensor(3.0), lm=torch.tensor(5.0))
    assert joint_loss(losses, dict(t2i=1, mmu=1, lm=0.1)).item() == pytest.approx(5.5)
    assert joint_loss(dict(t2i=torch.tensor(2.0)), dict(t2i=1, mmu=1, lm=0.1)).item() == 2.0


def test_no_weight_decay_on_norms_biases_and_embeddings():
    model = tiny_model(slot_embedding=True, text_conv=2)  # the additions' tables are embeddings too
    decay, no_decay = optimizer_groups(model, 0.1)
    decayed = {id(p) for p in decay["params"]}
    for name, p in model.named_parameters():
        expect = name.endswith("weight") and "norm" not in name and not name.startswith(("embed", "slot_embedding", "text_conv"))
        assert (id(p) in decayed) == expect, name
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_training_losses_equal_the_losses_of_the_full_logits():
    # In training the model projects only the positions that carry a loss; the losses must be those
    # of projecting every position (the logits it returns without labels) and scoring them.
    model = tiny_model(seed=1).eval()
    img = torch.arange(16)
    rows = [SPACE.t2i([1, 2, 3], img), SPACE.mmu(img.flip(0), [4], [5, 6]), SPACE.lm([7, 8, 9])]
    _, inputs, _, labels, _, task = batch(rows, seed=2)
    logits, _ = model(inputs)
    none, losses = model(inputs, labels, task)
    assert none is None and set(losses) == {"t2i", "mmu", "lm"}
    for name, value in task_losses(logits, labels, task, SPACE).items():
        torch.testing.assert_close(losses[name], value)


def test_a_tiny_model_overfits_a_few_sequences():
    torch.manual_seed(0)
    model = Showo(CFG).train()
    img_a, img_b = torch.randint(0, 16, (16,)), torch.randint(0, 16, (16,))
    rows = [SPACE.t2i([1, 2], img_a), SPACE.t2i([3, 4], img_b), SPACE.mmu(img_a, [], [5, 6, 7]),
            SPACE.mmu(img_b, [], [8, 9]), SPACE.lm([10, 11, 12, 13])]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for step in range(200):
        _, inputs, _, labels, _, task = batch(rows, seed=step)  # new masks every step, as in training
        _, losses = model(inputs, labels, task)
        loss = joint_loss(losses, dict(t2i=1, mmu=1, lm=1))
        history.append({k: v.item() for k, v in losses.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
    first = history[0]
    last = {k: sum(h[k] for h in history[-20:]) / 20 for k in first}  # mean of the last 20 steps
    assert first["t2i"] > 2.5 and last["t2i"] < 0.3, (first, last)  # from about ln 16 to memorised
    assert last["mmu"] < 0.1 and last["lm"] < 0.1, last
