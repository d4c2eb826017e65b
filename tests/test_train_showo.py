"""End-to-end tests of `train.py showo` at toy sizes: outputs, stages, exact resume after kill -9,
refusing unsafe or mismatched checkpoints, NaN handling, the rows and batches of data/tasks.py
(condition dropout, question turns, the mirror, hidden codes, stories).
Run: python -m pytest tests/test_train_showo.py"""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import data
import train
from conftest import TINY_SHOWO, TINY_TOKENIZER
from data.tasks import TaskRows, build_batch, showo_batch, task_rows
from model import ShowoConfig, load_showo
from tokenizer import TextTokenizer, load_image_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def showo(tokenizer, out, *extra):
    return train.main(["showo"] + TINY_SHOWO + ["--tokenizer", str(tokenizer), "--out", str(out)] + list(extra))


def read_log(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def tiny_parts(tokenizer, split="train", limit=64):
    """(shapes data at 16 px, the text tokenizer, codes of its images, a model config) over the tiny tokenizers."""
    ds = data.load("shapes", split, image_size=16, limit=limit)
    text = TextTokenizer((tokenizer.parent / "text.tiktoken").read_text())
    codes = load_image_tokenizer(tokenizer)[0].encode_images(ds.images)
    return ds, text, codes, ShowoConfig(text_vocab_size=text.vocab_size, codebook_size=32, image_tokens=16, n_layer=1,
                                        n_embd=32, n_head=2)


def test_training_writes_checkpoint_and_log(tokenizer, tmp_path):
    showo(tokenizer, tmp_path, "--max-steps", "4", "--eval-every", "2")
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert {"t2i", "mmu", "lm", "lr", "loss"} <= set(log[0]) and "eval" in log[1] and "eval" not in log[2]
    assert log[0]["loss"] == pytest.approx(log[0]["t2i"] + log[0]["mmu"] + 0.1 * log[0]["lm"], abs=2e-5)  # equation 4
    model, ckpt = load_showo(tmp_path / "showo.pt")  # weights_only load
    assert ckpt["step"] == 4 and ckpt["train_config"]["stage"] == 1
    assert model.cfg.codebook_size == 32 and model.cfg.image_tokens == 16


def test_stages_chain_through_init_and_find_their_runs_tokenizer(tokenizer, tmp_path):
    run = tmp_path / "run"  # a pipeline's layout: RUN/tokenizer.pt, text.tiktoken beside it, RUN/stageN/showo.pt
    run.mkdir()
    for name in ("tokenizer.pt", "text.tiktoken"):
        shutil.copy(tokenizer.parent / name, run / name)
    # no --tokenizer: stage 1 takes OUT/../tokenizer.pt; stage 3, written elsewhere, the one of its --init's run.
    # --lr 0: the stage-3 weights stay what --init loaded, so they must equal stage 1's
    train.main(["showo"] + TINY_SHOWO + ["--out", str(run / "stage1"), "--max-steps", "2", "--eval-every", "2"])
    train.main(["showo"] + TINY_SHOWO + ["--out", str(tmp_path / "s3"), "--stage", "3", "--init", str(run / "stage1" / "showo.pt"),
                                         "--max-steps", "2", "--eval-every", "2", "--lr", "0"])
    log = read_log(tmp_path / "s3")
    assert "mmu" in log[0] and "lm" not in log[0]  # stage 3: QA + captions + generation, no LM rows
    s1, _ = load_showo(run / "stage1" / "showo.pt")
    s3, ckpt = load_showo(tmp_path / "s3" / "showo.pt")
    assert ckpt["train_config"]["vqa_frac"] > 0 and ckpt["step"] == 2
    for (name, a), b in zip(s1.state_dict().items(), s3.state_dict().values()):
        assert torch.equal(a, b), name


def test_held_out_losses_see_each_item_once(tokenizer, monkeypatch):
    from model import Showo
    ds, text, codes, model_cfg = tiny_parts(tokenizer, "test", limit=40)
    rows = TaskRows(ds, codes, text, model_cfg, stage=1)
    seen, real = [], train.build_batch
    monkeypatch.setattr(train, "build_batch", lambda r, items, *a: seen.extend(items) or real(r, items, *a))
    cfg = train.ShowoTrainConfig(model=model_cfg, batch_size=16, eval_rows=40)
    losses = train.held_out_losses(Showo(model_cfg), rows, cfg, torch.device("cpu"))
    assert sorted(seen) == list(range(40)) and set(losses) == {"t2i", "mmu", "lm"}


def story_rows(tokenizer):
    """(TaskRows of 32 shapes images and 20 stories, the model's config) over the tiny tokenizers."""
    from data.stories import make_stories, story_images
    ds, text, codes, model_cfg = tiny_parts(tokenizer, limit=32)
    stories = make_stories("train", 20)
    stories = (stories, load_image_tokenizer(tokenizer)[0].encode_images(story_images(stories, 16)))
    return TaskRows(ds, codes, text, model_cfg, 3, stories=stories), model_cfg


@pytest.mark.parametrize("story_frac", [0.0, 0.3])
def test_task_groups_give_the_losses_of_one_padded_batch(tokenizer, story_frac):
    """A batch is built as one padded group per row kind (less padding to compute); padding those
    groups to one common length and running them together gives the same losses. With stories, the
    t2i and mmu terms each come from two groups (train.batch_loss sums each term over its groups)."""
    import random
    from model import IGNORE, Showo
    from tokenizer import TASKS
    rows, model_cfg = story_rows(tokenizer)
    cfg = train.ShowoTrainConfig(model=model_cfg, batch_size=32, t2i_frac=0.4, caption_frac=0.2, vqa_frac=0.3,
                                 lm_frac=0.1, story_frac=story_frac)
    groups = build_batch(rows, list(range(32)), cfg, random.Random(0), torch.Generator().manual_seed(0))
    kinds = ["lm", "mmu", "t2i"] + (["interleaved"] if story_frac else [])
    assert sorted(TASKS[g[2][0]] for g in groups) == sorted(kinds)
    assert all(len(set(g[2].tolist())) == 1 for g in groups) and len({g[0].shape[1] for g in groups}) == len(kinds)
    torch.manual_seed(0)
    model, space = Showo(model_cfg).eval(), model_cfg.space
    counts = train.position_counts(groups, space)
    loss, sums = train.batch_loss(model, groups, counts, cfg, torch.device("cpu"))  # what a training step computes
    L = max(g[0].shape[1] for g in groups)

    def pad(t, fill, left):  # (b, l) -> (b, L), padded where pad_rows pads that task's rows
        extra = torch.full((t.shape[0], L - t.shape[1]), fill, dtype=t.dtype)
        return torch.cat([extra, t] if left else [t, extra], dim=1)
    ids = torch.cat([pad(g[0], space.pad, TASKS[g[2][0]] == "t2i") for g in groups])
    labels = torch.cat([pad(g[1], IGNORE, TASKS[g[2][0]] == "t2i") for g in groups])
    together = model(ids, labels, torch.cat([g[2] for g in groups]))[1]
    assert set(together) == set(sums) == {"t2i", "mmu", "lm"}
    for name in together:
        torch.testing.assert_close(together[name], sums[name] / counts[name], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, together["t2i"] + together["mmu"] + 0.1 * together["lm"], rtol=1e-5, atol=1e-5)


def test_checkpoint_from_another_tokenizer_is_refused(tokenizer, tmp_path):
    other = tmp_path / "othertok"
    train.main(TINY_TOKENIZER + ["--out", str(other), "--seed", "1"])  # same sizes, different weights
    showo(tokenizer, tmp_path / "s1", "--max-steps", "1", "--eval-every", "1")
    with pytest.raises(SystemExit, match="other tokenizers"):
        train.main(["showo"] + TINY_SHOWO + ["--tokenizer", str(other / "tokenizer.pt"), "--out", str(tmp_path / "s2"),
                                             "--stage", "2", "--init", str(tmp_path / "s1" / "showo.pt")])
    small = tmp_path / "smalltok"
    train.main(TINY_TOKENIZER + ["--out", str(small), "--codebook-bits", "4"])
    with pytest.raises(SystemExit, match="another model shape"):
        train.main(["showo"] + TINY_SHOWO + ["--tokenizer", str(small / "tokenizer.pt"), "--out", str(tmp_path / "s3"),
                                             "--init", str(tmp_path / "s1" / "showo.pt")])


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = None


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    global MARKER
    MARKER = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"kind": "Show-o", "config": {}, "model": RunsCode()}, path)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_showo(path)
    assert not MARKER.exists()
    with open(path, "wb") as f:  # a bare pickle, not even torch's zip format
        pickle.dump(RunsCode(), f)
    with pytest.raises(ValueError):
        load_showo(path)
    assert not MARKER.exists()


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tokenizer, tmp_path, monkeypatch):
    real, calls = train.batch_loss, []

    def nan_at_step_3(*args):  # the third training step's loss (held-out losses run without gradients)
        loss, sums = real(*args)
        calls.append(torch.is_grad_enabled())
        if calls.count(True) == 3 and calls[-1]:
            return loss * float("nan"), {k: v * float("nan") for k, v in sums.items()}
        return loss, sums
    monkeypatch.setattr(train, "batch_loss", nan_at_step_3)
    with pytest.raises(SystemExit, match="loss became nan at step 2"):
        showo(tokenizer, tmp_path, "--max-steps", "4", "--eval-every", "2")
    assert torch.load(tmp_path / "showo.pt", weights_only=True)["step"] == 2


def test_condition_dropout_rate(tokenizer):
    ds, text, codes, model_cfg = tiny_parts(tokenizer)
    cfg = train.ShowoTrainConfig(batch_size=64, t2i_frac=1, caption_frac=0, vqa_frac=0, lm_frac=0, cond_dropout=0.1)
    space = model_cfg.space
    rows = TaskRows(ds, codes, text, model_cfg, stage=2)
    empty = total = 0
    for step in range(40):
        (ids, _, _), = showo_batch(rows, step, cfg)  # text-to-image rows only: one group
        sot = (ids == space.sot).nonzero()
        empty += (ids[sot[:, 0], sot[:, 1] + 1] == space.eot).sum().item()  # [SOT][EOT]: the empty prompt
        total += len(sot)
    assert total == 2560 and abs(empty / total - 0.1) < 0.02  # 3 standard deviations is 0.018


def test_question_rows_pack_several_turns_and_stay_within_the_longest_row(tokenizer):
    import random
    ds, text, codes, model_cfg = tiny_parts(tokenizer, limit=32)
    rows = TaskRows(ds, codes, text, model_cfg, stage=3)
    rng, space = random.Random(0), model_cfg.space
    turns = []
    for i in range(len(ds)):
        row = rows.row("vqa", i, rng)
        assert len(row.ids) <= model_cfg.max_text + model_cfg.image_tokens + 5  # a t2i row with a full prompt
        starts = [k for k, t in enumerate(row.ids) if t == space.sot]
        turns.append(len(starts))
        for k in starts:  # every turn is one of this image's question/answer pairs, only the answer a target
            end = row.ids.index(space.eot, k)
            asked = [t for t, target in zip(row.ids[k + 1:end], row.text_targets[k + 1:end]) if not target]
            answered = [t for t, target in zip(row.ids[k + 1:end], row.text_targets[k + 1:end]) if target]
            assert (text.decode(asked), text.decode(answered)) in [(q, " " + a) for q, a, _ in ds.qa[i]]
    assert sum(turns) / len(turns) >= 2  # several questions per image, not one


def test_kill_9_between_checkpoints_then_resume_gives_the_same_losses(tokenizer, tmp_path):
    args = [sys.executable, str(ROOT / "train.py"), "showo"] + TINY_SHOWO + [
        "--tokenizer", str(tokenizer), "--max-steps", "60", "--eval-every", "10"]
    subprocess.run(args + ["--out", str(tmp_path / "straight")], check=True, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill when step 15 is logged (checkpoint at 10)
        if log.exists() and len(log.read_text().splitlines()) >= 15:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = torch.load(out / "showo.pt", weights_only=True)["step"]
    assert saved < 60 and len(read_log(out)) > saved  # it died between two checkpoints

    subprocess.run(args + ["--out", str(out), "--resume"], check=True, capture_output=True)
    straight, resumed = read_log(tmp_path / "straight"), read_log(out)
    assert [r["step"] for r in resumed] == list(range(1, 61))
    drop_time = lambda rows: [{k: v for k, v in r.items() if k != "minutes"} for r in rows]
    assert drop_time(resumed) == drop_time(straight)  # every step's losses, lr and held-out losses, exactly


def test_bench_train_counts_a_steps_flops_by_hand_and_reports_the_omni_over_causal_ratio():
    from model import Showo
    from tools.bench import step_flops
    cfg = ShowoConfig(text_vocab_size=20, codebook_size=16, n_layer=1, n_head=2, n_embd=32, image_tokens=4)
    labels = torch.full((2, 10), -100)
    labels[0, 3:6] = 1  # three positions that carry a loss: the only ones the head projects
    blocks = 3 * 32 * 32 + 32 * 32 + 2 * 4 * 32 * 32  # qkv, proj, the MLP's two matrices
    expected = 6 * blocks * 20 + 6 * cfg.space.vocab_size * 32 * 3 + 12 * 1 * 32 * 10 * 2 * 10
    assert step_flops(Showo(cfg), [(torch.zeros(2, 10), labels, None)]) == expected
    out = subprocess.run([sys.executable, "-m", "tools.bench", "train", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["omni_over_causal_by_size"]) == {"main"} and result["size"] == "main"


def test_the_shapes_tokenizer_gives_each_image_at_least_16_tokens():
    # the main job's tokenizer is the convolutional LFQ one every dataset uses, at 8x downsampling
    model_cfg = train.make_config(train.TokenizerTrainConfig, train.TOKENIZER_PRESETS["shapes"]).model
    assert model_cfg.image_size == 32 and model_cfg.latent_size == 4


def test_checkpoints_hold_the_papers_model_unless_the_preset_adds_to_it(showo_run):
    # the trainer's defaults build ShowoConfig() (Show-o as published); a dataset preset may turn on
    # our additions, and a checkpoint differs from the paper's model only where the preset or the
    # command line (the tiny test sizes) says so, besides the sizes the tokenizers fix
    paper = ShowoConfig()
    assert train.ShowoTrainConfig().model == paper  # the trainer holds the model's own config
    _, ckpt = load_showo(showo_run / "showo.pt")
    said = set(train.SHOWO_PRESETS["shapes"]) | {"n_layer", "n_head", "n_embd"}
    for name, value in ckpt["config"].items():
        if name not in said | set(train.FROM_TOKENIZERS):
            assert value == getattr(paper, name), name


def test_the_mirrored_codes_are_the_codes_of_the_mirrored_images(tokenizer):
    """--mirror (data/tasks.py, task_rows): the training rows' second set of codes is the tokenizer's
    codes of the images flipped left to right; held-out rows never show it."""
    from tokenizer import images_to_tensor
    ds, text, codes, model_cfg = tiny_parts(tokenizer, limit=8)
    model = load_image_tokenizer(tokenizer)[0]
    cfg = train.ShowoTrainConfig(model=model_cfg, mirror=True, dataset="cifar10", data_dir="x")  # not for shapes
    rows = task_rows(ds, text, model, cfg, training=True)
    flipped = model.encode(images_to_tensor(ds.images).flip(3)).flatten(1)  # (B, 3, H, W): W flipped
    assert torch.equal(rows.mirrored, flipped) and not torch.equal(flipped, rows.codes)
    assert torch.equal(rows.codes, codes) and task_rows(ds, text, model, cfg, training=False).mirrored is None


def test_augmented_rows_show_the_mirror_half_the_time_and_hide_only_understanding_codes(tokenizer):
    """--mirror and --hide-codes (data/tasks.py, TaskRows): a row shows its image or its mirror, each
    half the time, and only captions and answers see [MASK]s in it, never more than hide_codes of them;
    everything else in the row stays what it was."""
    import random
    ds, text, _, model_cfg = tiny_parts(tokenizer, limit=4)
    space = model_cfg.space
    codes = torch.arange(16).repeat(4, 1)                 # (4 images, 16 codes)
    plain = TaskRows(ds, codes, text, model_cfg, stage=3)
    hiding = TaskRows(ds, codes, text, model_cfg, stage=3, hide_codes=0.5)
    hidden = []
    for seed in range(150):
        task = ("t2i", "caption", "vqa")[seed % 3]
        row, reference = (rows.row(task, seed % 4, random.Random(seed)) for rows in (hiding, plain))
        changed = [k for k, (a, b) in enumerate(zip(row.ids, reference.ids)) if a != b]
        assert len(row.ids) == len(reference.ids) and row.text_targets == reference.text_targets
        assert all(row.ids[k] == space.mask and space.is_image_code(torch.tensor(reference.ids[k])) for k in changed)
        if task == "t2i":
            assert not changed
        else:
            hidden.append(len(changed))
    assert max(hidden) <= 8 and min(hidden) == 0 and sum(hidden) / len(hidden) > 2  # u ~ U(0, 0.5) of 16
    mirroring = TaskRows(ds, codes, text, model_cfg, stage=3, mirrored=31 - codes)  # told apart by value
    first_codes = [mirroring.row("caption", 0, random.Random(seed)).ids[2] - space.image_offset for seed in range(300)]
    assert set(first_codes) == {0, 31} and 120 < first_codes.count(31) < 180  # half each
