"""The one-command pipelines (`python train.py --dataset D`): the tokenizers, the three stages and the
evaluation, end to end on a tiny fake CIFAR-10 and on 16 images of the shared coco-mini, with a few
steps per part.
Run: python -m pytest tests/test_pipeline.py"""
import json

import pytest
from PIL import Image

import data
import train
from evaluation import evaluate, judge
from tools import export
from test_datasets import SHARED, needs_coco, write_cifar

# what a tiny run changes in the CIFAR-10 presets: 16 px images, a 1-layer model, 2 steps per part
TINY_TOKENIZER = dict(image_size=16, channels=(8, 16), codebook_bits=5, batch_size=16, warmup_steps=1, max_steps=2,
                      eval_every=2, eval_images=16, bpe_vocab=300, device="cpu")
TINY_SHOWO = dict(n_layer=1, n_head=2, n_embd=32, batch_size=16, warmup_steps=1, eval_every=2, eval_rows=16,
                  device="cpu")
# every figure the README's CIFAR-10 table names
README_KEYS = {"tokenizer": ["psnr", "usage", "codebook_size"],
               "showo": ["classification_accuracy"],
               "judge": ["test_accuracy", "sample_accuracy", "samples_per_class", "reconstruction_accuracy",
                         "frechet", "frechet_reconstructions", "frechet_training_images"],
               "minutes": ["tokenizer", "stages", "evaluation", "total"]}


@pytest.fixture
def tiny_recipes(monkeypatch, tmp_path):
    """The real pipeline code with tiny presets (the same dicts the job reads), and the judge cached here."""
    for dataset in ("cifar10", "coco", "folder"):
        monkeypatch.setitem(train.TOKENIZER_PRESETS, dataset, dict(train.TOKENIZER_PRESETS[dataset], **TINY_TOKENIZER))
        monkeypatch.setitem(train.SHOWO_PRESETS, dataset, dict(train.SHOWO_PRESETS[dataset], **TINY_SHOWO))
        monkeypatch.setitem(train.PIPELINE_STEPS, dataset, {1: 2, 2: 1, 3: 2})
    # --preset gpu's code path with the tiny sizes above (its real sizes are checked in test_train.py)
    monkeypatch.setitem(train.GPU_PIPELINES, "coco", dict(tokenizer=dict(bf16=True), showo=dict(bf16=True),
                                                          steps={1: 2, 2: 1, 3: 2}))
    monkeypatch.setitem(evaluate.SAMPLES_PER_PROMPT, "cifar10", 2)
    monkeypatch.setattr(judge, "JUDGE_EPOCHS", 1)
    monkeypatch.setattr(evaluate, "JUDGE_CACHE", str(tmp_path / "judges"))


def test_cifar10_pipeline_writes_every_figure_and_picture_then_skips_what_is_done(tiny_recipes, tmp_path, monkeypatch):
    write_cifar(tmp_path / "data", ["data_batch_1", "test_batch"], n=80)  # a quarter of 20 = the 20 samples
    argv = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--preset", "cpu", "--out", str(tmp_path / "run")]
    metrics = train.main(argv)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk == metrics
    for part, keys in README_KEYS.items():
        figures = metrics["showo"]["judge"] if part == "judge" else metrics[part]
        assert all(isinstance(figures[key], (int, float)) for key in keys), (part, figures)
    assert metrics["tokenizer"]["images"] == 80  # the whole test split
    assert metrics["showo"]["images"] == 20 and metrics["showo"]["stage"] == 3  # the last quarter: test
    for picture in ("samples.png", "steps.png", "losses.png"):
        assert Image.open(tmp_path / "run" / picture).width > 0
    # a second call trains nothing and, with the same checkpoints, evaluates nothing
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*.pt")}
    real_evaluate = evaluate.evaluate_showo
    monkeypatch.setattr(evaluate, "evaluate_showo", lambda *a, **k: pytest.fail("evaluated again"))
    assert train.main(argv) == metrics
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*.pt")} == written
    # a damaged metrics.json, or one an older evaluation wrote, is measured again, with the same figures
    monkeypatch.setattr(evaluate, "evaluate_showo", real_evaluate)
    assert metrics["measured_on"]["version"] == evaluate.EVALUATION_VERSION
    older = dict(metrics, tokenizer=dict(metrics["tokenizer"], psnr=-1.0),  # a figure that must not come back
                 measured_on=dict(metrics["measured_on"], version=evaluate.EVALUATION_VERSION - 1))
    for stale in ("{", json.dumps(older)):
        (tmp_path / "run" / "metrics.json").write_text(stale)
        again = train.main(argv)
        assert again["measured_on"] == metrics["measured_on"] and again["showo"]["judge"] == metrics["showo"]["judge"]
        assert (again["tokenizer"]["psnr"], again["tokenizer"]["usage"]) == (metrics["tokenizer"]["psnr"], metrics["tokenizer"]["usage"])
        assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == again


@needs_coco
def test_coco_pipeline_captions_held_out_images_and_draws_held_out_captions(tiny_recipes, tmp_path):
    # the GPU recipe's code path on the CPU (here in bf16, not compiled), on 16 real images
    metrics = train.main(["--dataset", "coco", "--data-dir", str(SHARED / "coco-mini"), "--preset", "gpu",
                          "--limit", "16", "--out", str(tmp_path / "run")])
    assert (metrics["tokenizer"]["split"], metrics["tokenizer"]["images"]) == ("val", 159)
    captions = metrics["showo"]["captions"]  # every held-out image captioned and scored, 16 shown
    assert captions["images"] == 159 and len(captions["examples"]) == 16
    assert all(set(c) == {"generated", "truth"} for c in captions["examples"])
    assert set(captions) >= {"bleu4", "cider"}
    for picture in ("samples.png", "steps.png", "losses.png"):
        assert Image.open(tmp_path / "run" / picture).width > 0


def test_folder_pipeline_sizes_its_steps_from_its_data_and_has_no_held_out_split(tiny_recipes, tmp_path, capsys,
                                                                                  monkeypatch):
    export.write_folder(data.load("shapes", limit=48), tmp_path)  # 48 scenes, 3 captions each
    argv = ["--dataset", "folder", "--data-dir", str(tmp_path), "--preset", "cpu"]
    # coco-mini's steps (tiny here: tokenizer 2, stages 2 + 1 + 2 of 16 rows) grow x f = PASSES n / rows in all;
    # with 5 passes: 24 images -> f = 5 * 24 / 80 = 1.5; 48 images -> 3, past the CPU cap (2.4)
    monkeypatch.setattr(train, "PASSES", 5)
    for limit, steps in ((24, [3, 3, 2, 3]), (48, [5, 5, 2, 5])):
        metrics = train.main(argv + ["--limit", str(limit), "--out", str(tmp_path / f"run{limit}")])
        assert list(metrics["steps"].values()) == steps and list(metrics["steps"]) == ["tokenizer", "stage1", "stage2", "stage3"]
        logged = [json.loads(line) for line in (tmp_path / f"run{limit}" / "stage3" / "log.jsonl").read_text().splitlines()]
        tokenizer_logged = (tmp_path / f"run{limit}" / "tokenizer_log.jsonl").read_text().splitlines()
        assert (json.loads(tokenizer_logged[-1])["step"], logged[-1]["step"]) == (steps[0], steps[-1])  # as it says
    assert metrics["tokenizer"]["split"] == "all" and metrics["tokenizer"]["images"] == 48
    assert metrics["showo"]["captions"]["images"] == 48 and set(metrics["showo"]["captions"]) >= {"bleu4", "cider", "distinct"}
    out = capsys.readouterr().out
    assert "48 training images: 2.40 x coco-mini's steps" in out
    assert "tokenizer on the folder's own images (it has no held-out split)" in out
    with pytest.raises(ValueError, match="no validation split"):  # nothing may be chosen on a folder's figures
        evaluate.evaluate_showo(str(tmp_path / "run48" / "stage3"), split="val")
