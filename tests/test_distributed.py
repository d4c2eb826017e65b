"""Training on several processes (train.py, torchrun): two CPU processes that talk over gloo each take
half of every step's batch, and together they train exactly as one process that takes the whole
batch (tests/test_method.py checks the same sum of gradients in one process)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import TINY_SHOWO, TINY_TOKENIZER
from train import process_share
from model import load_showo
from tokenizer import load_image_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def test_the_shares_of_a_batch_hold_every_row_once_and_differ_by_at_most_one():
    # groups of 3 and 3 rows on 2 processes: numbered across the groups, each process gets 3 rows
    # (numbered per group, rank 0 would get 4 and rank 1 only 2)
    groups = [tuple(torch.arange(3) + 10 * g for _ in range(3)) for g in range(2)]   # (ids, labels, task)
    mine = [process_share(groups, rank, 2) for rank in range(2)]
    assert [sum(len(g[0]) for g in m) for m in mine] == [3, 3]
    assert sorted(t for m in mine for g in m for t in g[0].tolist()) == [0, 1, 2, 10, 11, 12]


def run_one_and_two_processes(args, tmp_path):
    """train.py ARGS as one process (into tmp_path/one), then as two under torchrun (tmp_path/two)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two processes on a 2-core machine: one thread each
    runs = []
    for out, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])):
        runs.append(subprocess.run([sys.executable] + launcher + ["train.py"] + args + ["--out", str(tmp_path / out)],
                                   cwd=ROOT, env=env, capture_output=True, text=True))
        assert runs[-1].returncode == 0, runs[-1].stderr[-3000:]
    return runs


def read_log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_two_processes_train_show_o_as_one_process_with_the_whole_batch(tokenizer, tmp_path):
    """Every step's per-task losses (the batch's, as rank 0 logs them) and the final weights of a
    2-process run equal one process's. Stage 1 mixes all three loss terms, whose positions fall
    unevenly on the two halves of a batch: a mean of the processes' means would differ from step 2."""
    args = ["showo"] + TINY_SHOWO + ["--tokenizer", str(tokenizer), "--max-steps", "6", "--eval-every", "3",
                                     "--lr", "3e-3"]
    one, two = run_one_and_two_processes(args, tmp_path)
    assert "2 processes" in two.stdout
    one_log, two_log = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert [r["step"] for r in two_log] == list(range(1, 7))  # one log, written by rank 0 alone
    for a, b in zip(one_log, two_log):
        for name in ("loss", "t2i", "mmu", "lm"):
            assert abs(a[name] - b[name]) <= 1e-4 * abs(a[name]), (a["step"], name, a[name], b[name])
    one_model, _ = load_showo(tmp_path / "one" / "showo.pt")
    two_model, _ = load_showo(tmp_path / "two" / "showo.pt")
    for (name, p), q in zip(one_model.state_dict().items(), two_model.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-5), name


def test_two_processes_train_the_image_tokenizer_as_one_without_the_batch_entropy(tmp_path):
    """The tokenizer's reconstruction and commitment losses are means over halves of the batch, which
    weighted by their share of it add up exactly; its batch-entropy term is taken per process (as
    MAGVIT-v2 does per device), so it is off here: then the weights equal one process's."""
    args = TINY_TOKENIZER + ["--max-steps", "3", "--eval-every", "3", "--entropy-weight", "0"]  # the last flag counts
    run_one_and_two_processes(args, tmp_path)
    one, _ = load_image_tokenizer(tmp_path / "one" / "tokenizer.pt")
    two, _ = load_image_tokenizer(tmp_path / "two" / "tokenizer.pt")
    for (name, p), q in zip(one.state_dict().items(), two.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-5), name
    assert (tmp_path / "two" / "text.tiktoken").exists()
