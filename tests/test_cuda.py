"""The CUDA path: bf16 autocast training, torch.compile, FlexAttention, the KV cache and sampling on
a GPU. Every test here is skipped where there is no CUDA device (CI has none); on a GPU machine:

    python -m pytest tests/test_cuda.py tests/test_attention.py

The CPU tests check the method in fp32; these check that the GPU-only switches change the speed and
the rounding, not the results: a model compiled or running FlexAttention gives the logits of the
plain one, and training under bf16 autocast still learns and saves checkpoints a CPU can load."""
import dataclasses
import json

import numpy as np
import pytest
import torch

import sample
import train
from conftest import TINY_SHOWO, TINY_TOKENIZER
from data import load
from model import KVCache, Showo, ShowoConfig, generate_images, generate_text
from test_sampling import prefixes  # captions and plain text of three lengths in one batch
from tokenizer import images_to_tensor, load_image_tokenizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA path needs a CUDA device")

CFG = ShowoConfig(text_vocab_size=30, codebook_size=16, n_layer=2, n_head=2, n_embd=64, image_tokens=16)


@pytest.mark.parametrize("text_conv", [0, 3])
def test_compiled_model_gives_the_eager_logits(text_conv):
    torch.manual_seed(0)
    model = Showo(dataclasses.replace(CFG, text_conv=text_conv)).cuda().eval()
    if model.text_conv is not None:  # it starts at zero: give it weights, so it is really compared
        torch.nn.init.normal_(model.text_conv.weight)
    ids, _, _ = model.space.pad_rows(prefixes(model.space))
    ids = ids.cuda()
    with torch.no_grad():
        eager, _ = model(ids)
        compiled, _ = torch.compile(model)(ids)
    torch.testing.assert_close(compiled, eager, atol=1e-3, rtol=1e-3)


def test_flex_attention_prefill_then_kv_cache_gives_the_full_dense_logits():
    # Generation fills the cache with the whole prefix under the omni mask (a BlockMask when
    # flex_attention is on), then feeds one token at a time under a dense mask.
    torch.manual_seed(0)
    model = Showo(CFG).cuda().eval()
    ids, _, _ = model.space.pad_rows(prefixes(model.space), left=True)
    ids, nxt = ids.cuda(), torch.tensor([[8, 9], [10, 11], [12, 13]], device="cuda")
    with torch.no_grad():
        full, _ = model(torch.cat([ids, nxt], 1))  # dense SDPA, no cache
        model.cfg.flex_attention = True
        cache = KVCache()
        model(ids, cache=cache)
        step1, _ = model(nxt[:, :1], cache=cache)
        step2, _ = model(nxt[:, 1:], cache=cache)
    torch.testing.assert_close(step1[:, 0], full[:, -2], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(step2[:, 0], full[:, -1], atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("flex", [False, True])
def test_maskgit_draws_on_the_gpu_with_one_seed_one_result_and_the_cached_prompt(flex):
    # the draws are made by a CUDA generator seeded from the caller's CPU one (model.device_generator):
    # the same seed gives the same images, and the cached prompt gives the recomputing sampler's
    torch.manual_seed(0)
    model = Showo(dataclasses.replace(CFG, flex_attention=flex)).cuda().eval()
    prompts = [[1, 2, 3, 4, 5], [6], []]
    run = lambda seed, cached: generate_images(model, prompts, steps=6, guidance=2.0, cache_prompt=cached,  # noqa: E731
                                               generator=torch.Generator().manual_seed(seed))[0]
    assert torch.equal(run(0, True), run(0, True)) and not torch.equal(run(0, True), run(1, True))
    # bf16-free fp32 logits still round differently per kernel: allow a rare differing code
    assert (run(0, True) == run(0, False)).float().mean() > 0.9


def test_cached_greedy_decoding_equals_recomputation_on_cuda():
    torch.manual_seed(0)
    model = Showo(CFG).cuda().eval()
    rows = prefixes(model.space)
    cached = generate_text(model, rows, max_new_tokens=12, use_cache=True)
    assert cached == generate_text(model, rows, max_new_tokens=12, use_cache=False)


def test_tokenizer_learns_under_bf16_and_its_checkpoint_encodes_alike_on_cpu(tmp_path):
    train.main(TINY_TOKENIZER + ["--max-steps", "60", "--eval-every", "30", "--out", str(tmp_path), "--device", "cuda"])
    log = [json.loads(line) for line in (tmp_path / "tokenizer_log.txt").read_text().splitlines()]
    assert [r["step"] for r in log] == [30, 60] and log[1]["eval_psnr"] > log[0]["eval_psnr"]
    model, _ = load_image_tokenizer(tmp_path / "tokenizer.pt")  # onto the CPU
    x = images_to_tensor(load("shapes", "test", limit=32).images)
    x = torch.nn.functional.interpolate(x, size=model.cfg.image_size, mode="area")
    on_cpu = model.eval().encode(x)
    on_gpu = model.cuda().encode(x.cuda()).cpu()
    # The same fp32 weights: codes differ only where a latent sits within rounding of a sign flip.
    assert (on_cpu == on_gpu).float().mean() > 0.98


def test_showo_trains_compiled_with_flex_attention_and_samples_on_cuda(tokenizer, tmp_path):
    run = tmp_path / "run"
    train.main(["showo"] + TINY_SHOWO + ["--tokenizer", str(tokenizer), "--out", str(run), "--max-steps", "40",
                                         "--eval-every", "20", "--device", "cuda", "--compile", "--flex-attention"])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    image = tmp_path / "scene.png"
    from PIL import Image
    Image.fromarray(load("shapes", "test", limit=1).images[0]).save(image)
    common = ["--ckpt", str(run), "--out", str(tmp_path), "--steps", "3", "--device", "cuda"]
    images = sample.main(common + ["--prompt", "a red circle", "-n", "2", "--cfg", "1.5"])
    assert images.shape == (2, 16, 16, 3)
    texts = sample.main(common + ["--task", "caption", "--image", str(image), "--image", str(image),
                                  "--max-new-tokens", "4"])
    assert len(texts) == 2 and texts[0] == texts[1]
