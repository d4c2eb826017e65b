"""
Benchmarks. The last printed line is one JSON object. Quote medians and ratios from one run: the
machines are shared and noisy, so absolute numbers move between runs more than ratios do.

    python -m tools.bench tokenizer      # default sizes; --quick for a fast smoke run
    python -m tools.bench train          # Show-o training steps: omni-attention vs plain causal
    python -m tools.bench sample         # MaskGIT vs autoregressive decoding; KV cache for text

`tokenizer` measures
1. encode + decode throughput (images/s) of the image tokenizer at the shapes preset size;
2. lookup-free quantization against nearest-neighbour VQ with the same number of codes
   (2^10, 2^14, 2^18) on 1024 tokens. Both turn a batch of latents into code indices and quantized vectors:
   LFQ by taking signs (O(K) per token), VQ by computing the distance to every codebook entry and
   taking the argmin (O(2^K * D) per token, with a (tokens, 2^K) distance matrix in memory).
   VQ uses D = K latent channels, the same latent width as LFQ. Memory is the peak extra resident
   memory of the calls (Linux /proc peak RSS, reset before them; each case in a fresh subprocess) or
   torch's peak allocator statistic (CUDA).

`train` measures a full Show-o training step (forward, joint loss, backward, AdamW) on a mixed batch
laid out like the main job's stage 1 (half text-to-image rows, 40% captioning, 10% language
modelling; 16-token texts) for three models: the main job's own (the shapes preset's, 4x4-token
images), and a small and a medium one with 8x8-token images, as CIFAR-10's: ms per step, tokens/s
and peak memory, against the same model and batch with a plain causal mask (SDPA's is_causal path;
the two kinds' steps alternate in one process, so the ratio is the mask's own cost),
and the achieved FLOP/s as a fraction of this machine's measured matmul rate (fp32; bf16 on CUDA,
where training runs under bf16 autocast). FLOPs per step are counted as 6 x (the blocks' matrix
parameters) per token, 6 x (the head's) per position that carries a loss (the only ones it
projects), and 12 x layers x width x length per token for the attention scores and their weighted
sums (forward 1x, backward 2x).

`sample` times generation on the medium model (random weights: speed does not depend on
what was learned): text-to-image with 64 and 256 image tokens by MaskGIT with T = 8 and 16 steps
against an autoregressive baseline that decodes the same tokens one at a time, in raster order,
with a KV cache, on the same model (forward passes and wall-clock ratio; no guidance on either
side); captioning with and without the KV cache (32 new tokens after an 84-token prefix); MaskGIT after a
40-token prompt with the prompt's keys and values computed once (the default) or at every step;
and MaskGIT images/s against batch size.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

import model as model_module
from model import (IGNORE, KVCache, Showo, ShowoConfig, device_generator, generate_images, generate_text,
                   mask_image_tokens, optimizer_groups, pick_device, sample_next, training_labels)
from tokenizer import LFQ, ImageTokenizer
from train import (SHOWO_PRESETS, TOKENIZER_PRESETS, ShowoTrainConfig, TokenizerTrainConfig, batch_loss, make_config,
                   position_counts)


def median_time(fn, repeats, device):
    """Median wall time of fn() in seconds, after one warm-up call (allocator pools, kernel
    choices and lazy initialisation all happen on the first call, not in a timed one)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":  # CUDA runs asynchronously: wait for the work before reading the clock
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def vq_lookup(z, codebook):
    """Nearest-neighbour VQ: (N, D) latents, (C, D) codebook -> indices (N,), quantized (N, D).
    ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; the ||z||^2 term does not change the argmin."""
    distances = (codebook * codebook).sum(1) - 2 * z @ codebook.T  # (N, C)
    indices = distances.argmin(1)
    return indices, codebook[indices]


def lfq_lookup(z, lfq):
    """LFQ: (N, K) latents -> indices (N,), quantized (N, K). No codebook at all."""
    q = torch.where(z > 0, 1.0, -1.0)
    return lfq.codes_to_indices(q), q


def proc_status_kib(key):
    """One field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: the peak since reset)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def timed_call(fn, device):
    """(wall seconds of one fn() call, peak extra memory in MB while it ran)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        # Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM) to its current RSS,
        # so VmHWM afterwards minus VmRSS now is the peak extra memory of the call.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = proc_status_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else proc_status_kib("VmHWM") * 1024
    return seconds, max(peak - base, 0) / 2 ** 20


def time_and_peak_memory(fn, repeats, device):
    """(median seconds of fn() after one warm-up call, the largest peak extra memory in MB of a call)."""
    fn()
    calls = [timed_call(fn, device) for _ in range(repeats)]
    return statistics.median(s for s, _ in calls), max(mb for _, mb in calls)


def quantizer_case(method, bits, tokens, repeats, device):
    """Time and peak memory of one quantizer on `tokens` random latents. Returns a dict."""
    torch.manual_seed(0)
    z = torch.randn(tokens, bits, device=device)
    if method == "vq":  # a codebook of 2^bits vectors of the same width K: what LFQ replaces
        codebook = torch.randn(2 ** bits, bits, device=device)
        fn = lambda: vq_lookup(z, codebook)  # noqa: E731
    else:
        lfq = LFQ(bits).to(device)
        fn = lambda: lfq_lookup(z, lfq)  # noqa: E731
    seconds, peak_mb = time_and_peak_memory(fn, repeats, device)  # VQ's peak: its (tokens, 2^K) distances
    return dict(method=method, bits=bits, tokens=tokens, ms=seconds * 1e3, peak_mb=peak_mb)


def run_isolated(function, args, device):
    """Run one benchmark case, `function(*args, device=device)` of this file. On CPU it runs in a fresh
    process, so one case's freed memory cannot hide another's peak; on CUDA the allocator's own peak
    statistic is reset per case, so it runs here."""
    if device.type == "cuda":
        return globals()[function](*args, device=device)
    code = (f"import json, torch; from tools.bench import {function}; torch.set_num_threads({torch.get_num_threads()}); "
            f"print(json.dumps({function}(*{args!r}, device=torch.device('cpu'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    if out.returncode != 0:  # e.g. VQ's (tokens, 2^bits) distance matrix did not fit in memory
        sys.exit(f"error: benchmark case {function}{args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_tokenizer(args):
    """`bench.py tokenizer`: the module docstring's two measurements -> one JSON-able dict."""
    device = pick_device(args.device)
    print(f"device: {device}, torch threads: {torch.get_num_threads()}")
    # 1. encode + decode throughput of the image tokenizer of the shapes preset (the main job's).
    model_cfg = make_config(TokenizerTrainConfig, TOKENIZER_PRESETS["shapes"]).model
    model = ImageTokenizer(model_cfg).to(device).eval()
    images = torch.rand(args.batch, 3, 32, 32, device=device) * 2 - 1
    seconds = median_time(lambda: model.decode(model.encode(images)), args.repeats, device)
    throughput = args.batch / seconds
    side = model_cfg.latent_size
    print(f"encode+decode: {throughput:.0f} images/s (batch {args.batch}, 32x32 -> {side}x{side} tokens, "
          f"median of {args.repeats})")

    # 2. LFQ vs nearest-neighbour VQ.
    rows = []
    for bits in args.bits:
        for method in ("lfq", "vq"):
            rows.append(run_isolated("quantizer_case", (method, bits, args.tokens, args.repeats), device))
            r = rows[-1]
            print(f"{method:>3} 2^{bits:<2} codes, {args.tokens} tokens: {r['ms']:9.3f} ms  "
                  f"peak +{r['peak_mb']:8.1f} MB")
    # ratios from one run (the machine's noise cancels), keyed by the number of codes
    by = {(r["method"], r["bits"]): r for r in rows}
    ratio = {str(2 ** b): round(by["vq", b]["ms"] / by["lfq", b]["ms"], 1) for b in args.bits}
    mem = {str(2 ** b): dict(lfq_mb=round(by["lfq", b]["peak_mb"], 1), vq_mb=round(by["vq", b]["peak_mb"], 1))
           for b in args.bits}
    print("VQ time / LFQ time: " + ", ".join(f"{k} codes {v}x" for k, v in ratio.items()))
    return dict(device=str(device), encode_decode_images_per_s=round(throughput, 1),
                tokens=args.tokens, vq_over_lfq_time=ratio, peak_memory=mem,
                lfq_ms={str(2 ** b): round(by["lfq", b]["ms"], 4) for b in args.bits},
                vq_ms={str(2 ** b): round(by["vq", b]["ms"], 3) for b in args.bits})


TRAIN_SIZES = {  # name: (model options, rows per batch, image tokens)
    # the main job's own Show-o: the shapes preset's model (its additions included), 4x4-token images
    "main": (dict(asdict(make_config(ShowoTrainConfig, SHOWO_PRESETS["shapes"]).model),
                  codebook_size=2 ** TOKENIZER_PRESETS["shapes"]["codebook_bits"]), 64, 16),
    # CIFAR-10-like rows: 8x8 = 64 image tokens, so image spans dominate the sequence and the
    # omni mask differs from the causal one over most of the attention matrix
    "small": (dict(n_layer=2, n_head=4, n_embd=128), 32, 64),    # 8x8-token images, as CIFAR-10's
    "medium": (dict(n_layer=4, n_head=4, n_embd=256), 64, 64),
}


def bench_model(size, device, image_tokens=None):
    """A randomly initialised Show-o of one of TRAIN_SIZES (text vocabulary as the shapes BPE's)."""
    options, _, tokens = TRAIN_SIZES[size]
    torch.manual_seed(0)
    return Showo(ShowoConfig(**{"text_vocab_size": 512, "codebook_size": 1024, **options,
                                "image_tokens": image_tokens or tokens})).to(device)


def synthetic_batch(space, rows, text_len=16, image_tokens=64, seed=0):
    """A mixed batch with random text ids and codes, laid out like the main job's stage 1 (half
    text-to-image rows, 40% captioning, 10% text only) and, as data.tasks.build_batch does, one padded
    group per task: [(ids, labels, task)]."""
    g = torch.Generator().manual_seed(seed)  # the same batch in every process, so rounds compare
    text = lambda: torch.randint(0, space.text_vocab_size, (text_len,), generator=g).tolist()  # noqa: E731
    image = lambda: torch.randint(0, space.codebook_size, (image_tokens,), generator=g)  # noqa: E731
    n_t2i, n_mmu = rows // 2, (rows * 2) // 5  # 50% text-to-image, 40% captions, the rest text only
    groups = []
    for group in ([space.t2i(text(), image()) for _ in range(n_t2i)], [space.mmu(image(), [], text()) for _ in range(n_mmu)],
                  [space.lm(text()) for _ in range(rows - n_t2i - n_mmu)]):
        ids, text_targets, task = space.pad_rows(group)
        inputs, masked = mask_image_tokens(ids, task, space, g)
        groups.append((inputs, training_labels(ids, text_targets, masked), task))
    return groups


def step_flops(model, groups):
    """Matrix-product FLOPs of one training step: 6 x (parameters of the blocks' matrices) per token,
    6 x (the head's) per position that carries a loss (the only ones it projects), and the attention
    scores and weighted sums, 12 x layers x width x L per token (forward 1x, backward 2x)."""
    cfg = model.cfg
    # 6 = 2 (multiply-add) x 3 (forward, and backward's two products: gradients of input and weight)
    block_params = sum(p.numel() for n, p in model.blocks.named_parameters() if p.ndim == 2)
    flops = 0
    for ids, labels, _ in groups:
        (B, L), targets = ids.shape, int((labels != IGNORE).sum())
        flops += 6 * block_params * B * L + 6 * model.head.weight.numel() * targets + 12 * cfg.n_layer * cfg.n_embd * L * B * L
    return flops


def train_step(size, kind, device):
    """(model, its task groups, one training step: every task group, the joint loss, backward,
    AdamW, as train.py takes it). kind "omni": the omni-attention mask; "causal": the same model
    (the same weights, seed 0) and batch with SDPA's plain causal path instead."""
    _, rows, image_tokens = TRAIN_SIZES[size]
    model = bench_model(size, device).train()
    groups = synthetic_batch(model.space, rows, image_tokens=image_tokens)
    optimizer = torch.optim.AdamW(optimizer_groups(model, 0.05), lr=1e-4, fused=device.type in ("cpu", "cuda"))
    # as train.py's step: the joint loss of equation 4 over every group, bf16 autocast on CUDA (the GPU presets')
    cfg = SimpleNamespace(model=model.cfg, bf16=device.type == "cuda", w_t2i=1.0, w_mmu=1.0, w_lm=0.1)
    counts = position_counts(groups, model.space)

    def step():  # causal: no mask, so attention takes SDPA's is_causal path (attention.py)
        with mock.patch.object(model_module, "omni_attention_mask", lambda ids, space: None) if kind == "causal" \
                else nullcontext():
            loss, _ = batch_loss(model, groups, counts, cfg, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model, groups, step


def train_memory(size, kind, device):
    """Peak extra memory in MB of a model's first two training steps (run alone in a fresh process)."""
    _, _, step = train_step(size, kind, device)
    return max(timed_call(step, device)[1] for _ in range(2))


def train_case(size, repeats, device):
    """Time the omni and the causal step of one size with their steps alternating in one process, so
    a shared machine's drift and a process's warm-up hit both alike; the ratio is the median of the
    ratios of neighbouring steps, the cost of the mask alone. -> {kind: dict of median ms, tokens/s,
    FLOP/s}, and "ratio"."""
    # both kinds hold the same weights (seed 0) and the same batch: only the attention mask differs
    cases = {kind: train_step(size, kind, device) for kind in ("omni", "causal")}
    for _, _, step in cases.values():  # warm-up: allocator pools, kernel choices
        step(), step()
    seconds = {kind: [] for kind in cases}
    for _ in range(repeats):
        for kind, (_, _, step) in cases.items():
            seconds[kind].append(timed_call(step, device)[0])
    # the median of paired ratios: a slow moment of the machine slows a pair's two steps alike
    results = dict(ratio=statistics.median(o / c for o, c in zip(seconds["omni"], seconds["causal"])))
    for kind, (model, groups, _) in cases.items():
        median = statistics.median(seconds[kind])
        tokens = sum(ids.numel() for ids, _, _ in groups)
        results[kind] = dict(size=size, attention=kind, rows=TRAIN_SIZES[size][1],
                             length=max(ids.shape[1] for ids, _, _ in groups), ms=median * 1e3,
                             tokens_per_s=tokens / median, flops_per_s=step_flops(model, groups) / median,
                             params=sum(p.numel() for p in model.parameters()))
    return results


def matmul_peak(device, n=1024, repeats=7):
    """The machine's fp32 (bf16 on CUDA) matmul FLOP/s on square n x n matrices: the roofline we compare to."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the dtype training runs in
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / median_time(lambda: a @ b, repeats, device)


def bench_train(args):
    """`bench.py train`: step time, memory and FLOP/s per size, omni against causal -> one dict."""
    device = pick_device(args.device)
    print(f"device: {device}, torch threads: {torch.get_num_threads()}")
    peak = matmul_peak(device)
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s")
    results, ratio = {}, {}
    for size in args.sizes:
        # a fresh process per round on CPU; the round with the median ratio is reported
        rounds = [run_isolated("train_case", (size, args.repeats), device) for _ in range(args.rounds)]
        rounds.sort(key=lambda r: r["ratio"])
        ratio[size] = round(rounds[len(rounds) // 2]["ratio"], 3)
        for kind in ("omni", "causal"):
            r = results[size, kind] = rounds[len(rounds) // 2][kind]
            r["peak_mb"] = run_isolated("train_memory", (size, kind), device)  # alone: no other kind's pool
            print(f"{size:>6} {kind:>6}: {r['params'] / 1e6:.2f}M params, {r['rows']} rows x {r['length']} tokens: "
                  f"{r['ms']:8.1f} ms/step, {r['tokens_per_s']:8.0f} tokens/s, peak +{r['peak_mb']:.0f} MB, "
                  f"{r['flops_per_s'] / 1e9:.1f} GFLOP/s")
    print("omni / causal step time: " + ", ".join(f"{k} {v}" for k, v in ratio.items()))
    fraction = {size: round(results[size, "omni"]["flops_per_s"] / peak, 3) for size in args.sizes}
    print("fraction of the matmul peak (omni): " + ", ".join(f"{k} {v}" for k, v in fraction.items()))
    # the headline keys are read at the medium size, the largest; every size's figures stay beside them
    main_size = "medium" if "medium" in args.sizes else args.sizes[-1]
    omni = results[main_size, "omni"]
    return dict(device=str(device), omni_over_causal=ratio[main_size], omni_over_causal_by_size=ratio,
                ms_per_step={f"{s}_{k}": round(r["ms"], 2) for (s, k), r in results.items()},
                tokens_per_s=round(omni["tokens_per_s"]), peak_mem_mb=round(omni["peak_mb"], 1),
                matmul_peak_gflops=round(peak / 1e9, 1), achieved_gflops=round(omni["flops_per_s"] / 1e9, 1),
                fraction_of_matmul_peak=fraction[main_size], fraction_of_matmul_peak_by_size=fraction, size=main_size)


@torch.no_grad()
def autoregressive_images(model, prompts, generator):
    """The baseline: the image tokens decoded one at a time in raster order with a KV cache, each
    sampled from the code logits at the last position. N + 1 forward passes for N tokens."""
    space, n = model.space, model.cfg.image_tokens
    rows = [space.t2i(p, 0) for p in prompts]
    for row in rows:  # [T2I] [SOT] prompt [EOT] [SOI]: drop the [EOI] of the empty image span
        row.ids.pop()
        row.text_targets.pop()
    ids, _, _ = space.pad_rows(rows, left=True)
    cache, device = KVCache(), next(model.parameters()).device
    generator = device_generator(generator, device)  # the samplers' seeding rule: draws on the model's device
    # one pass over the prompt fills the cache; then each image token is one single-token pass
    logits, _ = model(ids.to(device), cache=cache)
    codes = []
    for _ in range(n):
        code = sample_next(logits[:, -1, space.image_offset:space.mask], 1.0, None, generator)
        codes.append(code)
        logits, _ = model((code + space.image_offset)[:, None], cache=cache)
    return torch.stack(codes, 1)


def sample_case(image_tokens, repeats, batch, device):
    """Wall time of MaskGIT (T = 8, 16) and of autoregressive decoding for one image size, and of
    MaskGIT (T = 8) after a 40-token prompt with and without the cached prompt."""
    model = bench_model("medium", device, image_tokens).eval()
    prompts = [list(range(16))] * batch  # 16 text ids: a typical prompt's length
    g = torch.Generator().manual_seed(0)
    ar = median_time(lambda: autoregressive_images(model, prompts, g), repeats, device)
    out = dict(image_tokens=image_tokens, batch=batch, ar_s=ar, ar_forward_passes=image_tokens + 1)
    for steps in (8, 16):
        out[f"maskgit_T{steps}_s"] = median_time(lambda: generate_images(model, prompts, steps=steps, generator=g),
                                                 repeats, device)
    long_prompts = [list(range(40))] * batch  # the longest prompt a row holds (max_text)
    for cached in (True, False):
        out[f"prompt40_cached_{cached}_s"] = median_time(
            lambda: generate_images(model, long_prompts, steps=8, generator=g, cache_prompt=cached), repeats, device)
    return out


def bench_sample(args):
    """`bench.py sample`: MaskGIT against autoregressive decoding, the KV cache, images/s -> one dict."""
    device = pick_device(args.device)
    print(f"device: {device}, torch threads: {torch.get_num_threads()}")
    result = dict(device=str(device), maskgit_over_ar_speedup={}, forward_passes={}, prefix_cache_speedup={})
    for n in args.image_tokens:
        r = sample_case(n, args.repeats, args.batch, device)
        for steps in (8, 16):
            speedup = r["ar_s"] / r[f"maskgit_T{steps}_s"]
            result["maskgit_over_ar_speedup"][f"{n}_tokens_T{steps}"] = round(speedup, 2)
            result["forward_passes"][f"{n}_tokens_T{steps}"] = dict(maskgit=steps, autoregressive=n + 1)
            print(f"{n:4d} image tokens, batch {args.batch}: MaskGIT T={steps:2d} {r[f'maskgit_T{steps}_s'] * 1e3:8.1f} ms "
                  f"({steps} passes) vs autoregressive {r['ar_s'] * 1e3:8.1f} ms ({n + 1} passes): {speedup:.1f}x")
        cached, recomputed = r["prompt40_cached_True_s"], r["prompt40_cached_False_s"]
        result["prefix_cache_speedup"][f"{n}_tokens"] = round(recomputed / cached, 2)
        print(f"{n:4d} image tokens after a 40-token prompt, MaskGIT T=8: prompt computed once {cached * 1e3:8.1f} ms "
              f"vs every step {recomputed * 1e3:8.1f} ms: {recomputed / cached:.2f}x")

    model = bench_model("medium", device).eval()
    space = model.space
    # a captioning prefix as in evaluation: [MMU] [SOI] 64 codes [EOI] [SOT] 16-token prompt
    prefixes = [space.mmu(torch.arange(64), list(range(16))) for _ in range(args.batch)]  # 84 tokens
    # stop_at_eot=False: random weights would stop at a random length; both sides decode 32 tokens
    timed = {use: median_time(lambda: generate_text(model, prefixes, 32, use_cache=use, stop_at_eot=False),
                              args.repeats, device) for use in (True, False)}
    result["kv_cache_speedup"] = round(timed[False] / timed[True], 2)
    result["caption_ms"] = dict(cached=round(timed[True] * 1e3, 1), recomputed=round(timed[False] * 1e3, 1),
                                prefix_tokens=len(prefixes[0].ids), new_tokens=32, batch=args.batch)
    print(f"captioning, {len(prefixes[0].ids)}-token prefix + 32 new tokens, batch {args.batch}: KV cache "
          f"{timed[True] * 1e3:.0f} ms vs recomputing {timed[False] * 1e3:.0f} ms: {result['kv_cache_speedup']}x")

    # batching is what makes MaskGIT pay on parallel hardware: images/s as the batch grows
    result["maskgit_images_per_s"] = {}
    for batch in args.batches:
        prompts = [list(range(16))] * batch
        seconds = median_time(lambda: generate_images(model, prompts, steps=12), args.repeats, device)
        result["maskgit_images_per_s"][str(batch)] = round(batch / seconds, 1)
        print(f"MaskGIT T=12, 64 tokens, batch {batch:3d}: {batch / seconds:7.1f} images/s")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tok = sub.add_parser("tokenizer", help="image tokenizer throughput; LFQ vs nearest-neighbour VQ")
    tok.add_argument("--batch", type=int, default=256, help="images per encode+decode call")
    tok.add_argument("--tokens", type=int, default=1024, help="latent vectors per quantizer call "
                     "(1024 = 16 images of 8x8 tokens; VQ at 2^18 codes then needs a 1 GiB distance matrix)")
    tok.add_argument("--bits", type=int, nargs="+", default=[10, 14, 18], help="codebook sizes 2^bits")
    tok.add_argument("--repeats", type=int, default=7, help="timed calls per case (median reported)")
    tok.add_argument("--quick", action="store_true", help="small sizes, few repeats: a smoke run")
    tok.add_argument("--device", default="auto")
    train = sub.add_parser("train", help="Show-o training step: omni-attention vs plain causal, FLOP/s")
    train.add_argument("--sizes", nargs="+", default=["main", "small", "medium"], choices=list(TRAIN_SIZES),
                       help="model sizes to time (main: the main job's own model; the ratio target is read at medium)")
    train.add_argument("--repeats", type=int, default=10, help="timed steps of each kind per round (medians reported)")
    train.add_argument("--rounds", type=int, default=3, help="rounds per size (a fresh process each on CPU); the one with the median omni / causal ratio is kept")
    train.add_argument("--quick", action="store_true", help="the main job's model only, few repeats: a smoke run")
    train.add_argument("--device", default="auto")
    smp = sub.add_parser("sample", help="MaskGIT vs autoregressive image decoding; KV cache for captioning")
    smp.add_argument("--image-tokens", type=int, nargs="+", default=[64, 256], help="image sizes in tokens")
    smp.add_argument("--batch", type=int, default=8, help="prompts / images per call")
    smp.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64], help="batch sizes for throughput")
    smp.add_argument("--repeats", type=int, default=3, help="timed calls per case (median reported)")
    smp.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run")
    smp.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        pick_device(args.device)  # a device this machine lacks: one line, before any work
    except ValueError as e:
        parser.error(str(e))
    # --quick: the smallest case of each benchmark, for tests and a first look; not for quoting
    if args.command == "sample":
        if args.quick:
            args.image_tokens, args.batch, args.batches, args.repeats = [16], 2, [1, 2], 1
        if args.repeats < 1 or args.batch < 1 or min(args.batches) < 1 or min(args.image_tokens) < 1:
            parser.error("--repeats, --batch, --batches and --image-tokens must be at least 1")
        print(json.dumps(bench_sample(args)))
        return
    if args.command == "train":
        if args.quick:
            args.sizes, args.repeats, args.rounds = ["main"], 2, 1
        if args.repeats < 1 or args.rounds < 1:
            parser.error("--repeats and --rounds must be at least 1")
        print(json.dumps(bench_train(args)))
        return
    if args.quick:
        args.batch, args.tokens, args.bits, args.repeats = 32, 512, [10, 14], 3
    if min(args.bits) < 1 or max(args.bits) > 24:
        parser.error("--bits must be between 1 and 24 (VQ's distance matrix is tokens x 2^bits floats)")
    print(json.dumps(bench_tokenizer(args)))


if __name__ == "__main__":
    main()
