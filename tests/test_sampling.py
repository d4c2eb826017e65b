"""The samplers of model.py: MaskGIT text-to-image (schedule, guidance, inpainting, determinism) and
text decoding with a KV cache. Run: python -m pytest tests/test_sampling.py"""

import dataclasses

import pytest
import torch

from model import (KVCache, Showo, ShowoConfig, classifier_free_guidance, generate_images, generate_text,
                   masking_schedule)

CFG = ShowoConfig(text_vocab_size=30, codebook_size=16, n_layer=2, n_head=2, n_embd=32, image_tokens=16)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Showo(CFG).eval()


@pytest.fixture(scope="module", params=["paper", "slot-embedding", "text-conv", "code-bits"])
def any_model(request):
    """The paper's model and each of our additions: the slot embedding, the text convolution, whose
    cache also carries the last tokens' embeddings, and the code bits."""
    torch.manual_seed(0)
    model = Showo(dataclasses.replace(CFG, slot_embedding=request.param == "slot-embedding",
                                      text_conv=2 if request.param == "text-conv" else 0,
                                      code_bits=request.param == "code-bits")).eval()
    if model.text_conv is not None:  # it starts at zero, which would hide a wrong cache
        torch.nn.init.normal_(model.text_conv.weight)
    return model


def test_schedule_is_cosine_and_ends_at_zero():
    assert [masking_schedule(s, 4, 16) for s in range(4)] == [14, 11, 6, 0]  # floor(16 cos(pi/2 (s+1)/4))
    assert masking_schedule(11, 12, 64) == 0


def test_masked_count_after_each_step_follows_the_schedule_and_nothing_is_left(model):
    g = torch.Generator().manual_seed(0)
    codes, history = generate_images(model, [[1, 2], [3]], steps=5, generator=g, record=True)
    masked = [h.lt(0).sum(1).tolist() for h in history]
    expected = [max(1, masking_schedule(s, 5, 16)) for s in range(4)] + [0]
    assert masked == [[m, m] for m in expected]
    assert codes.shape == (2, 16) and codes.min() >= 0 and codes.max() < 16  # codes, never [MASK]
    assert torch.equal(history[-1], codes)  # the answer is the last step's samples
    for before, after in zip(history, history[1:]):  # a token once kept is never changed
        kept = before >= 0
        assert torch.equal(after[kept], before[kept])


def test_every_step_unmasks_at_least_one_token_even_with_many_steps(model):
    g = torch.Generator().manual_seed(0)
    _, history = generate_images(model, [[1]], steps=30, generator=g, record=True)  # more steps than tokens
    counts = [int(h.lt(0).sum()) for h in history]
    assert counts[-1] == 0 and all(b < a for a, b in zip([16] + counts, counts) if a > 0)


@pytest.mark.parametrize("tokens", [16, 64])
def test_every_step_of_the_default_schedule_fixes_a_new_token(tokens):
    # sample.py's and evaluate.py's default: T = 12 steps. No step repeats the canvas before it, so a
    # picture of the decoding (steps.png) shows 12 distinct frames
    torch.manual_seed(0)
    model = Showo(dataclasses.replace(CFG, image_tokens=tokens)).eval()
    _, history = generate_images(model, [[1, 2], [3]], steps=12, guidance=2.0,
                                 generator=torch.Generator().manual_seed(0), record=True)
    masked = [tokens] + [int(h[0].lt(0).sum()) for h in history]
    assert len(history) == 12 and masked[-1] == 0
    assert all(after < before for before, after in zip(masked, masked[1:]))


def test_the_sampler_stops_when_nothing_is_masked(model, monkeypatch):
    # more steps than slots to draw: after the last masked slot is fixed, no more forward passes
    passes = []
    real_forward = model.forward
    monkeypatch.setattr(model, "forward", lambda ids, *a, **k: (passes.append(1), real_forward(ids, *a, **k))[1])
    known = torch.arange(16).repeat(2, 1)
    known[0, :3], known[1, :5] = -1, -1                          # 3 and 5 slots to inpaint
    codes, history = generate_images(model, [[1], [2]], steps=12, known=known,
                                     generator=torch.Generator().manual_seed(0), record=True)
    steps_with_masked = sum(int((before < 0).any()) for before in [known] + history[:-1])
    assert len(passes) - 1 == len(history) == steps_with_masked == 5   # the prompt once, then a pass per step
    assert (codes >= 0).all() and torch.equal(codes[:, 5:], known[:, 5:])
    passes.clear()
    generate_images(model, [[1]], steps=12, known=torch.arange(16)[None])  # nothing to draw at all
    assert passes == []


def test_same_seed_same_images_other_seed_other_images(model):
    run = lambda seed: generate_images(model, [[1, 2]] * 3, steps=4, guidance=1.5,  # noqa: E731
                                       generator=torch.Generator().manual_seed(seed))[0]
    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_inpainting_never_changes_known_tokens(model):
    known = torch.full((3, 16), -1)
    known[:, :6] = torch.arange(6)          # the top rows given, the rest generated
    known[1, 10] = 15
    g = torch.Generator().manual_seed(0)
    codes, history = generate_images(model, [[1], [2], []], steps=4, known=known, generator=g, record=True)
    given = known >= 0
    assert torch.equal(codes[given], known[given])
    for h in history:
        assert torch.equal(h[given], known[given])
    # the schedule runs over the tokens to generate: 10 in rows 0 and 2, 9 in row 1
    assert history[0].lt(0).sum(1).tolist() == [masking_schedule(0, 4, 10), masking_schedule(0, 4, 9),
                                                 masking_schedule(0, 4, 10)]


def test_guidance_scale_zero_is_the_conditional_logits():
    cond, uncond = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    assert torch.equal(classifier_free_guidance(torch.cat([cond, uncond]), 0.0), cond)
    torch.testing.assert_close(classifier_free_guidance(torch.cat([cond, uncond]), 2.0), 3 * cond - 2 * uncond)


def test_guided_batch_rows_equal_separate_forwards(model):
    # cond and uncond rows share one padded forward; padding must not change either
    space = model.space
    cond = space.pad_rows([space.t2i([1, 2, 3], 16)])[0]
    uncond = space.pad_rows([space.t2i([], 16)])[0]
    both = space.pad_rows([space.t2i([1, 2, 3], 16), space.t2i([], 16)])[0]
    with torch.no_grad():
        joint, _ = model(both)
        a, _ = model(cond)
        b, _ = model(uncond)
    torch.testing.assert_close(joint[0, -17:-1], a[0, -17:-1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(joint[1, -17:-1], b[0, -17:-1], atol=1e-5, rtol=1e-4)


def test_guidance_runs_each_prompt_and_its_unconditional_twin_in_one_forward(model, monkeypatch):
    import model as model_module
    space, seen, mixed = model.space, [], []
    real_forward, real_mix = model.forward, model_module.classifier_free_guidance
    monkeypatch.setattr(model, "forward", lambda ids, *a, **k: (seen.append(ids.clone()), real_forward(ids, *a, **k))[1])
    monkeypatch.setattr(model_module, "classifier_free_guidance",
                        lambda logits, scale: (mixed.append((logits.shape[0], scale)), real_mix(logits, scale))[1])
    known = torch.full((2, 16), -1)
    known[:, :4] = torch.arange(4)
    generate_images(model, [[1, 2], [3]], steps=3, guidance=2.0, known=known, generator=torch.Generator().manual_seed(0))
    # the 2 prompts and their 2 twins once (the cached prompt), then one forward per step over all 4
    assert len(seen) == 4 and mixed == [(4, 2.0)] * 3
    for b in (2, 3):  # the twins: the empty prompt, as in training's condition dropout
        assert space.describe(seen[0][b]).endswith("[T2I] [SOT] [EOT]")
    for ids in seen[1:]:  # each step runs [SOI] canvas [EOI] only
        assert ids.shape == (4, 18) and (ids[:, 0] == space.soi).all() and (ids[:, -1] == space.eoi).all()
        assert torch.equal(ids[2:, 1:-1], ids[:2, 1:-1])               # twins see the same canvas
        assert torch.equal(ids[:, 1:5], (torch.arange(4) + space.image_offset).expand(4, 4))  # known codes


@pytest.mark.parametrize("tokens", [16, 64])
@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_the_cached_prompt_draws_the_same_images_as_recomputing_the_row(any_model, tokens, guidance):
    # prompts of different lengths (left-padded) and an empty one in one batch, every step recorded
    torch.manual_seed(0)
    model = any_model if tokens == 16 else Showo(dataclasses.replace(any_model.cfg, image_tokens=tokens)).eval()
    if model.text_conv is not None:
        torch.nn.init.normal_(model.text_conv.weight)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8], [], [9, 10, 11]]
    cached, recomputed = (generate_images(model, prompts, steps=8, guidance=guidance, record=True, cache_prompt=c,
                                          generator=torch.Generator().manual_seed(0)) for c in (True, False))
    assert torch.equal(cached[0], recomputed[0]) and len(cached[1]) == len(recomputed[1]) == 8
    assert all(torch.equal(a, b) for a, b in zip(cached[1], recomputed[1]))


def test_bad_steps_and_guidance_are_refused(model):
    with pytest.raises(ValueError, match="steps"):
        generate_images(model, [[1]], steps=0)
    with pytest.raises(ValueError, match="guidance"):
        generate_images(model, [[1]], guidance=-1)


def prefixes(space):
    image = torch.arange(16)
    return [space.mmu(image, [1, 2, 3, 4, 5]), space.mmu(image.flip(0), []), space.lm([6, 7], close=False)]


def test_cached_decoding_equals_recomputation(any_model):
    model = any_model
    rows = prefixes(model.space)  # different lengths and layouts in one batch
    cached = generate_text(model, rows, max_new_tokens=12, use_cache=True)
    full = generate_text(model, rows, max_new_tokens=12, use_cache=False)
    assert cached == full and all(len(o) > 0 for o in cached)


def test_cached_logits_equal_full_logits(any_model):
    model, space = any_model, any_model.space
    rows = prefixes(space)
    ids, _, _ = space.pad_rows(rows, left=True)
    nxt = torch.tensor([[8, 9], [10, 11], [12, 13]])
    with torch.no_grad():
        full, _ = model(torch.cat([ids, nxt], 1))
        cache = KVCache()
        model(ids, cache=cache)
        step1, _ = model(nxt[:, :1], cache=cache)
        step2, _ = model(nxt[:, 1:], cache=cache)
    torch.testing.assert_close(step1[:, 0], full[:, -2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(step2[:, 0], full[:, -1], atol=1e-5, rtol=1e-4)


def test_decoding_stops_at_eot_and_only_emits_text(model):
    space = model.space
    outputs = generate_text(model, prefixes(space), max_new_tokens=5)
    assert all(all(t < space.text_vocab_size for t in o) for o in outputs)  # never codes or specials

    def eot_wins(module, inputs, logits):  # a model whose every prediction is [EOT]
        logits = logits.clone()
        logits[..., space.eot] += 1e4
        return logits
    handle = model.head.register_forward_hook(eot_wins)
    try:
        assert generate_text(model, prefixes(space), max_new_tokens=5) == [[], [], []]
    finally:
        handle.remove()


@pytest.mark.parametrize("use_cache", [True, False])
def test_each_row_stops_at_its_own_eot(model, use_cache):
    space, calls = model.space, [0]

    def script(module, inputs, logits):  # row 0 ends at once, row 1 after two tokens, row 2 never
        logits = logits.clone()
        logits[:, -1, space.eot] = -1e4
        if calls[0] == 0:
            logits[0, -1, space.eot] = 1e4
        if calls[0] == 2:
            logits[1, -1, space.eot] = 1e4
        calls[0] += 1
        return logits
    handle = model.head.register_forward_hook(script)
    try:
        outputs = generate_text(model, prefixes(space), max_new_tokens=5, use_cache=use_cache)
    finally:
        handle.remove()
    assert [len(o) for o in outputs] == [0, 2, 5]


def test_top_k_1_sampling_is_greedy(model):
    rows = prefixes(model.space)
    g = torch.Generator().manual_seed(0)
    assert generate_text(model, rows, 6, temperature=1.0, top_k=1, generator=g) == generate_text(model, rows, 6)


def test_bench_sample_reports_speedups():
    import json
    import subprocess
    import sys
    from pathlib import Path
    out = subprocess.run([sys.executable, "-m", "tools.bench", "sample", "--quick"], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["maskgit_over_ar_speedup"]) == {"16_tokens_T8", "16_tokens_T16"}
    assert result["kv_cache_speedup"] > 0 and result["forward_passes"]["16_tokens_T8"]["autoregressive"] == 17
    assert set(result["prefix_cache_speedup"]) == {"16_tokens"} and result["prefix_cache_speedup"]["16_tokens"] > 0


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_a_story_so_far_draws_the_same_images_cached_as_recomputed(any_model, guidance):
    """generate_images(stories=...): the image after a story's texts and images (different lengths,
    left-padded together, one with two images before it) is the same with the story computed once
    (the frozen prompt cache) as with the whole row at every step."""
    space, n = any_model.space, any_model.cfg.image_tokens
    image = torch.arange(n) % space.codebook_size
    stories = [[[1, 2, 3], image, [4, 5]], [[6], image.flip(0), [7, 8, 9], image, [10]], [[11, 12]]]
    cached, recomputed = (generate_images(any_model, None, steps=6, guidance=guidance, stories=stories, record=True,
                                          cache_prompt=c, generator=torch.Generator().manual_seed(0))
                          for c in (True, False))
    assert cached[0].shape == (3, n) and torch.equal(cached[0], recomputed[0])
    assert all(torch.equal(a, b) for a, b in zip(cached[1], recomputed[1]))


def test_a_story_of_one_text_draws_the_image_of_that_text_to_image_prompt(model):
    """A story of one text is laid out exactly as the text-to-image row of that prompt, so the same
    seed draws the same image: a story's first image is text-to-image."""
    story = generate_images(model, None, steps=4, stories=[[[1, 2, 3]]], generator=torch.Generator().manual_seed(1))
    alone = generate_images(model, [[1, 2, 3]], steps=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(story[0], alone[0])
