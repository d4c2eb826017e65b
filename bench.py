"""
Benchmarks. The last printed line is one JSON object. Quote medians and ratios from one run: the
machines are shared and noisy, so absolute numbers move between runs more than ratios do.

    python bench.py tokenizer            # default sizes; --quick for a fast smoke run

`tokenizer` measures
1. encode + decode throughput (images/s) of the image tokenizer at the shapes preset size;
2. lookup-free quantization against nearest-neighbour VQ with the same number of codes
   (2^10, 2^14, 2^18) on 1024 tokens. Both turn a batch of latents into code indices and quantized vectors:
   LFQ by taking signs (O(K) per token), VQ by computing the distance to every codebook entry and
   taking the argmin (O(2^K * D) per token, with a (tokens, 2^K) distance matrix in memory).
   VQ uses D = K latent channels, the same latent width as LFQ. Memory is the peak extra resident
   memory of the calls (Linux /proc peak RSS, reset before them; each case in a fresh subprocess) or
   torch's peak allocator statistic (CUDA).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from tokenizer import LFQ, ImageTokenizer, ImageTokenizerConfig
from train import TOKENIZER_PRESETS, TokenizerTrainConfig, autodetect_device


def median_time(fn, repeats, device):
    """Median wall time of fn() in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
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
    q = lfq.quantize(z)
    return lfq.codes_to_indices(q), q


def proc_status_kib(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def quantizer_case(method, bits, tokens, repeats, device):
    """Time and peak memory of one quantizer on `tokens` random latents. Returns a dict."""
    torch.manual_seed(0)
    z = torch.randn(tokens, bits, device=device)
    if method == "vq":
        codebook = torch.randn(2 ** bits, bits, device=device)
        fn = lambda: vq_lookup(z, codebook)  # noqa: E731
    else:
        lfq = LFQ(bits).to(device)
        fn = lambda: lfq_lookup(z, lfq)  # noqa: E731
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        seconds = median_time(fn, repeats, device)
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    else:
        # Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM) to its current RSS,
        # so VmHWM afterwards minus VmRSS now is the peak extra memory of the calls in between.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = proc_status_kib("VmRSS")
        seconds = median_time(fn, repeats, device)
        peak_mb = (proc_status_kib("VmHWM") - base) / 1024
    return dict(method=method, bits=bits, tokens=tokens, ms=seconds * 1e3, peak_mb=max(peak_mb, 0.0))


def run_quantizer_case_isolated(method, bits, tokens, repeats, device):
    """On CPU each case runs in its own fresh process, so one case's freed memory cannot hide another's."""
    if device.type == "cuda":
        return quantizer_case(method, bits, tokens, repeats, device)
    code = (f"import json, torch; from bench import quantizer_case; torch.set_num_threads({torch.get_num_threads()}); "
            f"print(json.dumps(quantizer_case({method!r}, {bits}, {tokens}, {repeats}, torch.device('cpu'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent)
    if out.returncode != 0:  # e.g. VQ's (tokens, 2^bits) distance matrix did not fit in memory
        sys.exit(f"error: the {method} case with 2^{bits} codes and {tokens} tokens failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_tokenizer(args):
    device = autodetect_device(args.device)
    print(f"device: {device}, torch threads: {torch.get_num_threads()}")
    # 1. encode + decode throughput of the image tokenizer of the shapes preset (the main job's).
    preset = TokenizerTrainConfig(**TOKENIZER_PRESETS["shapes"])
    model_cfg = ImageTokenizerConfig(codebook_bits=preset.bits, res_blocks=preset.res_blocks,
                                     channels=tuple(int(c) for c in preset.channels.split(",")))
    model = ImageTokenizer(model_cfg).to(device).eval()
    images = torch.rand(args.batch, 3, 32, 32, device=device) * 2 - 1
    seconds = median_time(lambda: model.decode(model.encode(images)), args.repeats, device)
    throughput = args.batch / seconds
    print(f"encode+decode: {throughput:.0f} images/s (batch {args.batch}, 32x32 -> 8x8 tokens, "
          f"median of {args.repeats})")

    # 2. LFQ vs nearest-neighbour VQ.
    rows = []
    for bits in args.bits:
        for method in ("lfq", "vq"):
            rows.append(run_quantizer_case_isolated(method, bits, args.tokens, args.repeats, device))
            r = rows[-1]
            print(f"{method:>3} 2^{bits:<2} codes, {args.tokens} tokens: {r['ms']:9.3f} ms  "
                  f"peak +{r['peak_mb']:8.1f} MB")
    by = {(r["method"], r["bits"]): r for r in rows}
    ratio = {str(2 ** b): round(by["vq", b]["ms"] / by["lfq", b]["ms"], 1) for b in args.bits}
    mem = {str(2 ** b): dict(lfq_mb=round(by["lfq", b]["peak_mb"], 1), vq_mb=round(by["vq", b]["peak_mb"], 1))
           for b in args.bits}
    print("VQ time / LFQ time: " + ", ".join(f"{k} codes {v}x" for k, v in ratio.items()))
    return dict(device=str(device), encode_decode_images_per_s=round(throughput, 1),
                tokens=args.tokens, vq_over_lfq_time=ratio, peak_memory=mem,
                lfq_ms={str(2 ** b): round(by["lfq", b]["ms"], 4) for b in args.bits},
                vq_ms={str(2 ** b): round(by["vq", b]["ms"], 3) for b in args.bits})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tok = sub.add_parser("tokenizer", help="image tokenizer throughput; LFQ vs nearest-neighbour VQ")
    tok.add_argument("--batch", type=int, default=256, help="images per encode+decode call")
    tok.add_argument("--tokens", type=int, default=1024, help="latent vectors per quantizer call "
                     "(1024 = 16 images of 8x8 tokens; VQ at 2^18 codes then needs a 1 GiB distance matrix)")
    tok.add_argument("--bits", type=int, nargs="+", default=[10, 14, 18], help="codebook sizes 2^bits")
    tok.add_argument("--repeats", type=int, default=7, help="timed calls per case (median reported)")
    tok.add_argument("--quick", action="store_true", help="small sizes, few repeats: a smoke run")
    tok.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.tokens, args.bits, args.repeats = 32, 512, [10, 14], 3
    if min(args.bits) < 1 or max(args.bits) > 24:
        parser.error("--bits must be between 1 and 24 (VQ's distance matrix is tokens x 2^bits floats)")
    print(json.dumps(bench_tokenizer(args)))


if __name__ == "__main__":
    main()
