#!/usr/bin/env bash
# Everything only a GPU can check, in one script (under 10 minutes on one H100 or H200):
#   bash tools/gpu_check.sh            # from a clone, on a machine with CUDA; figures land in out/gpu_check/
# 1. the test suite, whose CUDA tests (tests/test_devices.py) run only where there is a GPU;
# 2. the main job on the GPU (the shapes world: its CPU recipe, batches as on the CPU);
# 3. the benchmarks: training steps (omni vs causal attention, bf16) and sampling, on CUDA.
# A failing step is reported and the next one still runs: a GPU's time is too scarce to stop early.
set -uo pipefail
cd "$(dirname "$0")/.."
device=$(python -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')")
[ -n "$device" ] || { echo "error: no CUDA device here: this script checks what only a GPU can" >&2; exit 1; }
out=out/gpu_check
mkdir -p "$out"
echo "$device" | tee "$out/device.txt"
start=$(date +%s)
python -m pytest -q 2>&1 | tail -5 | tee "$out/tests.txt" || echo "FAILED: the tests" | tee -a "$out/tests.txt"
echo "tests: $(( $(date +%s) - start )) s" | tee -a "$out/tests.txt"
start=$(date +%s)
python train.py --out "$out/main_job" 2>&1 | tail -12 | tee "$out/main_job.txt" || echo "FAILED: the main job"
echo "main job: $(( $(date +%s) - start )) s" | tee -a "$out/main_job.txt"
python -m tools.bench train --rounds 1 | tail -1 | tee "$out/bench_train.json" || echo "FAILED: bench train"
python -m tools.bench sample | tail -1 | tee "$out/bench_sample.json" || echo "FAILED: bench sample"
echo "figures in $out/"
