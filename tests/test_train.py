"""train.py's programs end to end: the tokenizer trainer (tiny sizes), --resume after a crash, clear
errors, the pipeline's recipe per dataset, the presets and --help; the evaluation's and the
benchmark's output contracts. Run: python -m pytest tests/test_train.py"""
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

import train
from data import DATASETS
from evaluation.evaluate import main as evaluate_main
from tokenizer import load_image_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["tokenizer", "--dataset", "shapes", "--limit", "200", "--eval-images", "40", "--image-size", "16",
        "--channels", "8,16", "--codebook-bits", "6", "--batch-size", "20", "--warmup-steps", "2", "--bpe-vocab", "300",
        "--device", "cpu"]


def run_train(out, *extra):
    return train.main(TINY + ["--out", str(out)] + list(extra))


def test_tokenizer_training_writes_checkpoint_grid_log_and_bpe(tmp_path):
    run_train(tmp_path, "--max-steps", "4", "--eval-every", "2")
    for name in ("tokenizer.pt", "text.tiktoken", "recon.png", "tokenizer_log.jsonl"):
        assert (tmp_path / name).exists(), name
    log = [json.loads(line) for line in (tmp_path / "tokenizer_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [2, 4] and all("eval_psnr" in row for row in log)
    model, ckpt = load_image_tokenizer(tmp_path / "tokenizer.pt")
    assert ckpt["step"] == 4 and model.cfg.codebook_bits == 6 and model.cfg.channels == (8, 16)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, monkeypatch):
    # 20 images x 16 tokens = 320 > 256 entropy tokens, so the entropy term's random subset (global
    # RNG) is drawn every step: the resumed run must restore that RNG too.
    subset = ("--entropy-tokens", "256")
    run_train(tmp_path / "straight", "--max-steps", "6", "--eval-every", "3", *subset)
    real_save = train.save_checkpoint

    def save_then_crash(obj, path):  # Ctrl-C right after the step-3 checkpoint is written
        real_save(obj, path)
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "save_checkpoint", save_then_crash)
    with pytest.raises(SystemExit, match="interrupted: the last checkpoint is kept"):
        run_train(tmp_path / "resumed", "--max-steps", "6", "--eval-every", "3", *subset)
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    assert torch.load(tmp_path / "resumed" / "tokenizer.pt", weights_only=True)["step"] == 3
    run_train(tmp_path / "resumed", "--max-steps", "6", "--eval-every", "3", "--resume", *subset)
    a = torch.load(tmp_path / "straight" / "tokenizer.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "tokenizer.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for name in a["model"]:  # same data order, optimizer state and RNG -> bit-identical weights on CPU
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_resume_refuses_options_that_change_the_run_and_never_overwrites(tmp_path):
    run_train(tmp_path, "--max-steps", "2", "--eval-every", "2")
    with pytest.raises(SystemExit, match="--batch-size"):
        run_train(tmp_path, "--max-steps", "2", "--batch-size", "10", "--resume")
    with pytest.raises(SystemExit, match="--resume"):
        run_train(tmp_path, "--max-steps", "2", "--eval-every", "2")


@pytest.mark.parametrize("argv, message", [
    (["tokenizer", "--dataset", "imagenet"], "--dataset must be one of"),
    (["tokenizer", "--dataset", "cifar10"], "--data-dir is needed"),
    (["tokenizer", "--dataset", "shapes", "--data-dir", "x"], "not needed for shapes"),
    (["tokenizer", "--dataset", "cifar10", "--data-dir", "{tmp}", "--out", "{tmp}/o"], "no CIFAR-10 data"),
    (TINY + ["--batch-size", "0"], "--batch-size must be at least 1"),
    (TINY + ["--channels", "8,18"], "GroupNorm"),                         # the model config's own check
    (["showo", "--stage", "4"], "--stage must be 1, 2 or 3"),
    (["showo", "--tokenizer", "{tmp}/none.pt", "--out", "{tmp}/s"], "no checkpoint at"),
    (["showo", "--dataset", "coco", "--data-dir", "x", "--story-frac", "1"], "shapes world only"),
    (["showo", "--mirror"], "--mirror is not for the shapes world"),         # its captions say left and right
    (["--dataset", "cifar10"], "--data-dir is needed"),                    # the pipeline checks before training
    (["--text-conv", "-1"], "text_conv must be >= 0"),
    (["--dataset", "shapes", "--preset", "gpu"], "no GPU preset for shapes"),
    (["--seed", "1", "showo"], "options before a command belong to the pipeline")])
def test_user_mistakes_stop_with_one_clear_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    said = str(stop.value.code) + capsys.readouterr().err  # sys.exit("error: ...") or argparse's usage error
    assert message in said and "Traceback" not in said, said


def test_the_pipeline_runs_each_part_with_its_presets_as_functions(monkeypatch):
    parts = []  # the configs each trainer received

    def record(cfg):
        parts.append(cfg)
        return f"ckpt{len(parts)}"
    monkeypatch.setattr(train, "train_tokenizer", record)
    monkeypatch.setattr(train, "train_showo", record)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    import evaluation.evaluate as evaluate
    monkeypatch.setattr(evaluate, "evaluate_pipeline", lambda *a: parts.append(a) or {})
    monkeypatch.setattr(evaluate, "print_summary", lambda *a: None)
    train.main(["--seed", "1", "--no-slot-embedding"])
    tok, *stages, evaluated = parts
    assert (tok.out, tok.seed, tok.resume, tok.model.codebook_bits, tok.model.channels) == ("out/shapes-seed1", 1, True,
                                                                                            12, (32, 64, 64))
    assert [(c.stage, c.max_steps, c.out, c.init) for c in stages] == [
        (1, 1400, "out/shapes-seed1/stage1", None), (2, 600, "out/shapes-seed1/stage2", "ckpt2"),
        (3, 1400, "out/shapes-seed1/stage3", "ckpt3")]
    for cfg in stages:  # the preset, the stage's mix, the ablation switch, the tokenizer just trained
        assert (cfg.tokenizer, cfg.seed, cfg.model.n_embd, cfg.model.text_conv, cfg.model.slot_embedding) == (
            "ckpt1", 1, 128, 3, False)
        assert (cfg.t2i_frac, cfg.vqa_frac) == (train.STAGES[cfg.stage]["t2i_frac"], train.STAGES[cfg.stage]["vqa_frac"])
    assert evaluated[:4] == ("ckpt1", "ckpt4", ["out/shapes-seed1/stage1/log.jsonl", "out/shapes-seed1/stage2/log.jsonl",
                                                "out/shapes-seed1/stage3/log.jsonl"], "out/shapes-seed1")
    parts.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # on CUDA: the GPU recipe, compiled, in bf16
    train.main(["--dataset", "cifar10", "--data-dir", "d"])
    assert parts[0].model.channels == (128, 256) and parts[0].compile and parts[0].bf16
    assert [(c.max_steps, c.model.n_layer, c.batch_size, c.bf16, c.mirror) for c in parts[1:4]] == [
        (4000, 8, 256, True, True), (600, 8, 256, True, True), (2400, 8, 256, True, True)]


def test_every_preset_names_real_options():
    def names(cls):  # every option a config takes from a flat dict: its fields and its model's
        return {n for f in fields(cls) for n in (names(f.default_factory) if f.name == "model" else {f.name})}
    # a misspelt preset key would silently leave its option at the default
    for presets, cls in ((train.TOKENIZER_PRESETS, train.TokenizerTrainConfig), (train.SHOWO_PRESETS, train.ShowoTrainConfig),
                         (train.STAGES, train.ShowoTrainConfig)):
        for name, preset in presets.items():
            assert set(preset) <= names(cls), (name, set(preset) - names(cls))
    assert set(train.TOKENIZER_PRESETS) == set(train.SHOWO_PRESETS) == set(train.PIPELINE_STEPS) == set(DATASETS)
    for name, recipe in train.GPU_PIPELINES.items():
        assert set(recipe["tokenizer"]) <= names(train.TokenizerTrainConfig), name
        assert set(recipe["showo"]) <= names(train.ShowoTrainConfig), name
        assert sorted(recipe["steps"]) == [1, 2, 3]


def test_help_documents_every_option_with_its_presets(capsys):
    with pytest.raises(SystemExit):
        train.main(["showo", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines: compare without whitespace
    for cls in (train.ShowoTrainConfig, train.ShowoTrainConfig.__dataclass_fields__["model"].default_factory):
        for f in fields(cls):
            if f.name not in ("model",) + train.FROM_TOKENIZERS:
                assert f"--{f.name.replace('_', '-')}" in text and "".join(f.metadata["help"].split()) in text, f.name
    assert "shapes:128" in text and "stage3:0.4" in text  # the width's shapes preset, the stage mixes


def test_evaluate_tokenizer_prints_metrics_as_its_last_line(tmp_path, capsys):
    run_train(tmp_path, "--max-steps", "2", "--eval-every", "2")
    capsys.readouterr()
    returned = evaluate_main(["tokenizer", "--ckpt", str(tmp_path / "tokenizer.pt"), "--dataset", "shapes",
                              "--limit", "30", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == returned and result["images"] == 30 and result["codebook_size"] == 64
    assert 1 <= result["perplexity"] <= 64 * result["usage"] + 1e-6  # never more codes than were used


def test_bench_tokenizer_reports_vq_over_lfq_per_code_count():
    out = subprocess.run([sys.executable, "-m", "tools.bench", "tokenizer", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["vq_over_lfq_time"]) == {"1024", "16384"}
    assert result["peak_memory"]["16384"]["vq_mb"] > result["peak_memory"]["16384"]["lfq_mb"]  # VQ's distance table
