"""One code path on every device: the options a GPU run uses (torch.compile, bf16 autocast) run
here on the CPU too, and must change the speed and the rounding, not the results. The tests at the
end need a CUDA device (they are skipped without one; tools/gpu_check.sh runs them on a GPU).
Run: python -m pytest tests/test_devices.py"""
import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import sample
import train
from conftest import TINY_SHOWO, TINY_TOKENIZER
from data import load
from model import Showo, ShowoConfig, generate_images
from test_method import mixed_batch
from tokenizer import images_to_tensor, load_image_tokenizer

CFG = ShowoConfig(text_vocab_size=20, codebook_size=16, n_layer=2, n_head=2, n_embd=32, image_tokens=16)
CPU = torch.device("cpu")


def tiny_model(**options):
    torch.manual_seed(0)
    model = Showo(dataclasses.replace(CFG, **options))
    if model.text_conv is not None:  # it starts at zero, which would hide a difference
        torch.nn.init.normal_(model.text_conv.weight)
    return model


def test_a_compiled_model_gives_the_eager_losses():
    model = tiny_model(text_conv=2, slot_embedding=True).eval()
    compiled = torch.compile(model)
    with torch.no_grad():
        for ids, labels, task in mixed_batch():
            eager = model(ids, labels, task)[1]
            for name, value in compiled(ids, labels, task)[1].items():
                torch.testing.assert_close(value, eager[name], atol=1e-4, rtol=1e-4)


def test_a_bf16_autocast_step_gives_the_fp32_losses_and_keeps_fp32_weights():
    model = tiny_model(text_conv=2, code_bits=True)
    groups = mixed_batch()
    counts = train.position_counts(groups, model.space)
    cfg = lambda bf16: SimpleNamespace(model=model.cfg, bf16=bf16, w_t2i=1.0, w_mmu=1.0, w_lm=0.1)  # noqa: E731
    fp32_loss, fp32_terms = train.batch_loss(model, groups, counts, cfg(False), CPU)
    bf16_loss, bf16_terms = train.batch_loss(model, groups, counts, cfg(True), CPU)
    assert abs(bf16_loss.item() - fp32_loss.item()) < 1e-2 * fp32_loss.item()
    for name in fp32_terms:
        assert abs(bf16_terms[name].item() - fp32_terms[name].item()) < 1e-2 * fp32_terms[name].item(), name
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    bf16_loss.backward()
    optimizer.step()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())


def test_q_k_and_v_reach_attention_in_one_dtype_under_autocast(monkeypatch):
    seen = []
    import model as model_module
    real = model_module.attention
    monkeypatch.setattr(model_module, "attention", lambda q, k, v, mask: seen.append({q.dtype, k.dtype, v.dtype})
                        or real(q, k, v, mask))
    ids, labels, task = mixed_batch()[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tiny_model()(ids, labels, task)
    assert seen and all(dtypes == {torch.bfloat16} for dtypes in seen)


def test_both_trainers_run_compiled_and_in_bf16_and_resume(tokenizer, tmp_path):
    """The flags a GPU preset turns on, through the command line, on the CPU: the tokenizer in bf16,
    Show-o compiled and in bf16; each resumes with its flags."""
    train.main(TINY_TOKENIZER + ["--out", str(tmp_path / "tok"), "--bf16", "--max-steps", "2"])
    assert load_image_tokenizer(tmp_path / "tok" / "tokenizer.pt")[1]["train_config"]["bf16"]
    run = ["showo"] + TINY_SHOWO + ["--tokenizer", str(tokenizer), "--out", str(tmp_path / "s"), "--eval-every", "2",
                                    "--bf16", "--compile"]
    train.main(run + ["--max-steps", "2"])
    train.main(run + ["--max-steps", "2", "--resume"])  # a finished run: nothing left to do
    log = [json.loads(line) for line in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)


# ----------------------------------------------------------------------------- CUDA only

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_maskgit_draws_on_the_gpu_with_one_seed_one_result_and_the_cached_prompt():
    # the draws are made by a CUDA generator seeded from the caller's CPU one (model.device_generator)
    model = tiny_model().cuda().eval()
    prompts = [[1, 2, 3, 4, 5], [6], []]
    run = lambda seed, cached: generate_images(model, prompts, steps=6, guidance=2.0, cache_prompt=cached,  # noqa: E731
                                               generator=torch.Generator().manual_seed(seed))[0]
    assert torch.equal(run(0, True), run(0, True)) and not torch.equal(run(0, True), run(1, True))
    assert (run(0, True) == run(0, False)).float().mean() > 0.9  # kernels round differently: a rare other code


@cuda
def test_a_tokenizer_trained_on_the_gpu_encodes_alike_on_the_cpu(tmp_path):
    train.main(TINY_TOKENIZER + ["--max-steps", "60", "--eval-every", "30", "--out", str(tmp_path), "--device", "cuda",
                                 "--bf16"])
    log = [json.loads(line) for line in (tmp_path / "tokenizer_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [30, 60] and log[1]["eval_psnr"] > log[0]["eval_psnr"]
    model, _ = load_image_tokenizer(tmp_path / "tokenizer.pt")  # onto the CPU
    x = torch.nn.functional.interpolate(images_to_tensor(load("shapes", "test", limit=32).images), size=16, mode="area")
    on_cpu = model.encode(x)  # fp32 on both: codes differ only within rounding of a sign flip
    assert (model.cuda().encode(x.cuda()).cpu() == on_cpu).float().mean() > 0.98


@cuda
def test_show_o_trains_compiled_in_bf16_and_samples_on_cuda(tokenizer, tmp_path):
    run = tmp_path / "run"
    train.main(["showo"] + TINY_SHOWO[:-2] + ["--tokenizer", str(tokenizer), "--out", str(run), "--max-steps", "40",
                                              "--eval-every", "20", "--device", "cuda", "--compile", "--bf16"])
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 40 and np.mean(losses[-5:]) < np.mean(losses[:5])
    images = sample.main(["--ckpt", str(run), "--out", str(tmp_path), "--steps", "3", "--device", "cuda",
                          "--prompt", "a red circle", "-n", "2"])
    assert images.shape == (2, 16, 16, 3)
