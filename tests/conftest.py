"""pytest fixtures shared by the end-to-end tests: a tiny trained tokenizer pair and a tiny Show-o run
on the shapes world (16 px images -> 4x4 tokens of 5 bits), built once per session."""
import pytest

import train

# Tiny sizes: every end-to-end test trains in about a second; what they check is the plumbing
# (files, resume, errors), never quality.
TINY_TOKENIZER = ["tokenizer", "--dataset", "shapes", "--limit", "64", "--eval-images", "16", "--image-size", "16",
                  "--channels", "8,16", "--codebook-bits", "5", "--batch-size", "16", "--warmup-steps", "1",
                  "--bpe-vocab", "300", "--max-steps", "2", "--eval-every", "2", "--device", "cpu"]
TINY_SHOWO = ["--dataset", "shapes", "--limit", "64", "--n-layer", "1", "--n-head", "2",
              "--n-embd", "32", "--batch-size", "16", "--eval-rows", "16", "--warmup-steps", "2", "--device", "cpu"]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """OUT/tokenizer.pt of a 2-step image tokenizer, with its BPE (text.tiktoken) beside it."""
    out = tmp_path_factory.mktemp("tok")
    train.main(TINY_TOKENIZER + ["--out", str(out)])
    return out / "tokenizer.pt"


@pytest.fixture(scope="session")
def showo_run(tokenizer):
    """A 2-step (so: nearly random) Show-o run folder, OUT/../stage1/showo.pt beside the tokenizer."""
    out = tokenizer.parent / "stage1"
    train.main(["showo"] + TINY_SHOWO + ["--tokenizer", str(tokenizer), "--out", str(out), "--max-steps", "2",
                                         "--eval-every", "2"])
    return out
