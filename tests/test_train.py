"""End-to-end tests of the programs: train.py tokenizer (tiny sizes), --resume, evaluate.py and
bench.py output contracts. Run: python -m pytest tests/test_train.py"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import config
import train
from data import DATASETS
from evaluate import main as evaluate_main
from tokenizer import load_image_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["tokenizer", "--dataset", "shapes", "--limit", "200", "--eval-images", "40", "--image-size", "16",
        "--channels", "8,16", "--codebook-bits", "6", "--batch-size", "20", "--warmup-steps", "2", "--bpe-vocab", "300",
        "--device", "cpu"]


def run_train(out, *extra):
    train.main(TINY + ["--out", str(out)] + list(extra))


def test_tokenizer_training_writes_checkpoint_grid_log_and_bpe(tmp_path):
    run_train(tmp_path, "--max-steps", "4", "--eval-every", "2")
    for name in ("tokenizer.pt", "text.tiktoken", "recon.png", "tokenizer_log.txt"):
        assert (tmp_path / name).exists(), name
    log = [json.loads(line) for line in (tmp_path / "tokenizer_log.txt").read_text().splitlines()]
    assert [row["step"] for row in log] == [2, 4] and all("eval_psnr" in row for row in log)
    model, ckpt = load_image_tokenizer(tmp_path / "tokenizer.pt")
    assert ckpt["step"] == 4 and model.cfg.codebook_bits == 6 and model.cfg.channels == (8, 16)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, monkeypatch):
    # 20 images x 16 tokens = 320 > 256 entropy tokens, so the entropy term's random subset (global
    # RNG) is drawn every step: the resumed run must restore that RNG too.
    subset = ("--entropy-tokens", "256")
    run_train(tmp_path / "straight", "--max-steps", "6", "--eval-every", "3", *subset)

    real_save = train.atomic_save

    def save_then_crash(obj, path):  # the process dies right after writing the step-3 checkpoint
        real_save(obj, path)
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "atomic_save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path / "resumed", "--max-steps", "6", "--eval-every", "3", *subset)
    monkeypatch.setattr(train, "atomic_save", real_save)
    assert torch.load(tmp_path / "resumed" / "tokenizer.pt", weights_only=True)["step"] == 3
    run_train(tmp_path / "resumed", "--max-steps", "6", "--eval-every", "3", "--resume", *subset)

    a = torch.load(tmp_path / "straight" / "tokenizer.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "tokenizer.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for name in a["model"]:  # same data order, optimizer state and RNG -> bit-identical weights on CPU
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_resume_refuses_options_that_change_the_data_order(tmp_path):
    run_train(tmp_path, "--max-steps", "2", "--eval-every", "2")
    with pytest.raises(SystemExit, match="--batch-size"):
        train.main(TINY + ["--out", str(tmp_path), "--max-steps", "4", "--batch-size", "10", "--resume"])


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    run_train(tmp_path, "--max-steps", "2", "--eval-every", "2")
    with pytest.raises(SystemExit, match="--resume"):
        run_train(tmp_path, "--max-steps", "2", "--eval-every", "2")


def test_user_mistakes_give_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["tokenizer", "--dataset", "imagenet"])
    assert "--dataset must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["tokenizer", "--dataset", "cifar10"])  # no --data-dir
    assert "--data-dir is needed" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="error: .*CIFAR"):
        train.main(["tokenizer", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        train.main(TINY + ["--out", str(tmp_path / "o"), "--batch-size", "0"])
    assert "--batch-size must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(TINY + ["--out", str(tmp_path / "o"), "--channels", "8,18"])
    assert "GroupNorm" in capsys.readouterr().err  # the model config's own check, as a usage error


@pytest.mark.parametrize("argv, cuda, folder", [
    ([], False, "out/shapes"), (["--seed", "1"], False, "out/shapes-seed1"),
    (["--no-slot-embedding", "--text-conv", "0"], False, "out/shapes-noslot-textconv0"),
    (["--seed", "2", "--text-conv", "3"], False, "out/shapes-seed2"),
    ([], True, "out/shapes"),  # the shapes world has no GPU recipe: its own on any machine
    (["--dataset", "cifar10", "--data-dir", "d"], False, "out/cifar10"),
    (["--dataset", "cifar10", "--data-dir", "d"], True, "out/cifar10-gpu"),  # CUDA picks the GPU recipe
    (["--dataset", "cifar10", "--data-dir", "d", "--preset", "cpu"], True, "out/cifar10"),
    (["--dataset", "coco", "--data-dir", "d", "--preset", "gpu", "--limit", "9"], False, "out/coco-gpu-limit9")])
def test_the_main_job_gives_each_recipe_its_own_folder(argv, cuda, folder, monkeypatch):
    # so an ablation or another recipe never resumes another's checkpoints (which would refuse its options)
    def stop_after_recording(args, parser):
        raise SystemExit(args.out)
    monkeypatch.setattr(train, "main_tokenizer", stop_after_recording)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    with pytest.raises(SystemExit, match=f"^{folder}$"):
        train.main(argv)


def test_the_shapes_main_job_runs_each_part_with_exactly_these_options(monkeypatch):
    parts = []  # the options each part's parser received, as a user typing them would give them

    def record(args, parser):
        parts.append({k: v for k, v in vars(args).items() if v is not None and not k.startswith("job_")
                      and k != "command"})
        return f"ckpt{len(parts)}/showo.pt"
    monkeypatch.setattr(train, "main_tokenizer", record)
    monkeypatch.setattr(train, "main_showo", record)
    monkeypatch.setattr(train, "evaluate_pipeline", lambda *a: parts.append("evaluated") or {})
    monkeypatch.setattr(train, "print_pipeline_summary", lambda *a: None)
    train.main([])
    assert parts[0] == dict(dataset="shapes", seed=0, out="out/shapes", resume=True)
    stage = dict(dataset="shapes", seed=0, slot_embedding=True, text_conv=3, resume=True, tokenizer="ckpt1/showo.pt")
    assert parts[1] == dict(stage, stage=1, max_steps=1400, out="out/shapes/stage1")
    assert parts[2] == dict(stage, stage=2, max_steps=600, out="out/shapes/stage2", init="ckpt2/showo.pt")
    assert parts[3] == dict(stage, stage=3, max_steps=1400, out="out/shapes/stage3", init="ckpt3/showo.pt")
    assert parts[4:] == ["evaluated"]


def test_main_job_options_before_a_command_are_refused(capsys):
    with pytest.raises(SystemExit):
        train.main(["--seed", "1", "showo"])  # would otherwise train with seed 0
    assert "options before a command belong to the main job" in capsys.readouterr().err


def test_evaluate_prints_metrics_as_its_last_line(tmp_path, capsys):
    run_train(tmp_path, "--max-steps", "2", "--eval-every", "2")
    capsys.readouterr()
    evaluate_main(["tokenizer", "--ckpt", str(tmp_path / "tokenizer.pt"), "--dataset", "shapes", "--limit", "30",
                   "--device", "cpu"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 30 and result["codebook_size"] == 64
    assert 0 < result["usage"] <= 1 and 1 <= result["perplexity"] <= 64 and result["psnr"] > 0
    assert 0 <= result["scorer_agreement"] <= 1


def test_bench_tokenizer_reports_vq_over_lfq_per_code_count():
    out = subprocess.run([sys.executable, "bench.py", "tokenizer", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["vq_over_lfq_time"]) == {"1024", "16384"}
    assert result["encode_decode_images_per_s"] > 0


def test_every_preset_names_real_options():
    # a misspelt preset key would silently leave its option at the default
    for presets, config_cls in ((config.TOKENIZER_PRESETS, config.TokenizerTrainConfig),
                                (config.SHOWO_PRESETS, config.ShowoTrainConfig),
                                (config.SHOWO_STAGES, config.ShowoTrainConfig)):
        for name, preset in presets.items():
            assert set(preset) <= config.option_names(config_cls), (name, set(preset) - config.option_names(config_cls))
    # every dataset has a recipe for each part of its pipeline
    assert set(config.TOKENIZER_PRESETS) == set(config.SHOWO_PRESETS) == set(config.PIPELINE_STAGES) == set(DATASETS)
    for name, recipe in config.GPU_PIPELINES.items():  # and every GPU recipe, stage by stage
        assert set(recipe["tokenizer"]) <= config.option_names(config.TokenizerTrainConfig), name
        assert set(recipe["showo"]) <= config.option_names(config.ShowoTrainConfig), name
        assert sorted(recipe["stages"]) == [1, 2, 3] and sorted(config.PIPELINE_STAGES[name]) == [1, 2, 3]


def test_preset_options_become_the_command_line_that_sets_them():
    parser = argparse.ArgumentParser()
    config.add_config_arguments(parser, config.TokenizerTrainConfig, {}, "data")
    options = dict(channels=(128, 256), max_steps=4000, compile=True, resume=False, lr=1e-3)
    args = parser.parse_args(config.as_flags(options))
    assert {k: getattr(args, k) for k in options} == options


def test_showo_help_groups_the_options_by_what_they_belong_to(capsys):
    with pytest.raises(SystemExit):
        train.main(["showo", "--help"])
    groups = [line[:-1] for line in capsys.readouterr().out.splitlines() if line and line[0] != " " and line.endswith(":")]
    assert groups[1:] == ["model (ShowoConfig, model.py)", groups[2], "mix (TaskMix, config.py)", "data",
                          groups[5], "optimisation", "run"]
    assert groups[2].startswith("Additions") and groups[5].startswith("stage")
