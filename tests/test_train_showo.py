"""End-to-end tests of `train.py showo` at toy sizes: outputs, the token cache, stages, exact resume after
kill -9, refusing unsafe or mismatched checkpoints, NaN handling and condition dropout.
Run: python -m pytest tests/test_train_showo.py"""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import config
import train
from conftest import TINY_SHOWO, TINY_TOKENIZER
from data.tasks import TaskRows, build_batch, image_codes, showo_batch
from model import ShowoConfig, load_showo

ROOT = Path(__file__).resolve().parents[1]


def showo(tokenizer, out, *extra):
    return train.main(["showo"] + TINY_SHOWO + ["--tokenizer", str(tokenizer), "--out", str(out)] + list(extra))


def read_log(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def test_training_writes_checkpoint_log_and_token_cache(tokenizer, tmp_path):
    showo(tokenizer, tmp_path, "--max-steps", "4", "--eval-every", "2")
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert {"t2i", "mmu", "lm", "lr", "loss"} <= set(log[0]) and "eval" in log[1] and "eval" not in log[2]
    model, ckpt = load_showo(tmp_path / "showo.pt")  # weights_only load
    assert ckpt["step"] == 4 and ckpt["train_config"]["stage"] == 1
    assert model.cfg.codebook_size == 32 and model.cfg.image_tokens == 16
    cache = tokenizer.parent / "cache"  # both splits tokenized once, beside the tokenizer
    assert list(cache.glob("codes-shapes-train-64-*.pt")) and list(cache.glob("codes-shapes-test-16-*.pt"))


def test_a_checkpoint_saved_before_an_option_existed_resumes_with_its_default(tokenizer, tmp_path):
    """A run saved before --story-frac existed has no such field; resuming it must not count that
    as a changed option (the option's default is what the run had)."""
    showo(tokenizer, tmp_path, "--max-steps", "2", "--eval-every", "2")
    ckpt = torch.load(tmp_path / "showo.pt", weights_only=False)
    del ckpt["train_config"]["mix"]["story_frac"]
    torch.save(ckpt, tmp_path / "showo.pt")
    showo(tokenizer, tmp_path, "--max-steps", "2", "--eval-every", "2", "--resume")  # finished: nothing to do
    with pytest.raises(SystemExit, match="--story-frac"):  # a real change is still refused
        showo(tokenizer, tmp_path, "--max-steps", "2", "--eval-every", "2", "--resume", "--story-frac", "0.5")


def test_cached_codes_are_reused_without_running_the_image_encoder(tokenizer, tmp_path, monkeypatch):
    showo(tokenizer, tmp_path / "a", "--max-steps", "1", "--eval-every", "1")
    monkeypatch.setattr(train, "load_image_tokenizer",
                        lambda *a, **k: pytest.fail("the encoder ran although the codes were cached"))
    import data
    ds = data.load("shapes", "train", image_size=16, limit=64)
    codes = image_codes(ds, tokenizer, torch.device("cpu"))
    assert codes.shape == (64, 16) and codes.dtype == torch.int64 and 0 <= codes.min() and codes.max() < 32


def test_stages_chain_through_init(tokenizer, tmp_path):
    showo(tokenizer, tmp_path / "s1", "--max-steps", "2", "--eval-every", "2")
    # --lr 0: the stage-3 weights stay what --init loaded, so they must equal stage 1's
    showo(tokenizer, tmp_path / "s3", "--stage", "3", "--init", str(tmp_path / "s1" / "showo.pt"),
          "--max-steps", "2", "--eval-every", "2", "--lr", "0")
    log = read_log(tmp_path / "s3")
    assert "mmu" in log[0] and "lm" not in log[0]  # stage 3: QA + captions + generation, no LM rows
    s1, _ = load_showo(tmp_path / "s1" / "showo.pt")
    s3, ckpt = load_showo(tmp_path / "s3" / "showo.pt")
    assert ckpt["train_config"]["mix"]["vqa_frac"] > 0 and ckpt["step"] == 2
    for (name, a), b in zip(s1.state_dict().items(), s3.state_dict().values()):
        assert torch.equal(a, b), name


def test_initial_weights_do_not_depend_on_the_code_cache(tokenizer, tmp_path):
    import shutil
    cold = tmp_path / "cold_tok"  # the same tokenizer without its cache: the first run encodes images
    cold.mkdir()
    for name in ("tokenizer.pt", "text.tiktoken"):
        shutil.copy(tokenizer.parent / name, cold / name)
    for out, tok in (("a", cold / "tokenizer.pt"), ("b", cold / "tokenizer.pt")):  # cache miss, then hit
        showo(tok, tmp_path / out, "--max-steps", "1", "--eval-every", "1", "--lr", "0")
    a, _ = load_showo(tmp_path / "a" / "showo.pt")
    b, _ = load_showo(tmp_path / "b" / "showo.pt")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_other_images_of_the_same_size_get_their_own_codes(tokenizer):
    import data
    ds = data.load("shapes", "train", image_size=16, limit=64)
    other = data.load("shapes", "train", image_size=16, limit=64, seed=5)  # same name, split and size
    a = image_codes(ds, tokenizer, torch.device("cpu"))
    b = image_codes(other, tokenizer, torch.device("cpu"))
    assert not torch.equal(a, b)


def test_held_out_losses_see_each_item_once(tokenizer, monkeypatch):
    import data
    from model import Showo, ShowoConfig
    from tokenizer import TextTokenizer
    ds = data.load("shapes", "test", image_size=16, limit=40)
    text = TextTokenizer.from_file(tokenizer.parent / "text.tiktoken")
    model_cfg = ShowoConfig(text_vocab_size=text.vocab_size, codebook_size=32, image_tokens=16, n_layer=1,
                            n_embd=32, n_head=2)
    rows = TaskRows(ds, image_codes(ds, tokenizer, torch.device("cpu")), text, model_cfg, stage=1)
    seen, real = [], train.build_batch
    monkeypatch.setattr(train, "build_batch", lambda r, items, *a: seen.extend(items) or real(r, items, *a))
    cfg = config.ShowoTrainConfig(batch_size=16)
    losses = train.held_out_losses(Showo(model_cfg), rows, cfg, torch.device("cpu"), n_rows=40)
    assert sorted(seen) == list(range(40)) and set(losses) == {"t2i", "mmu", "lm"}


def story_rows(tokenizer, flex=False):
    """(TaskRows of 32 shapes images and 20 stories, the 2-layer model's config) over the tiny tokenizers."""
    import data
    from data.stories import make_stories, story_images
    from model import ShowoConfig
    from tokenizer import TextTokenizer
    ds = data.load("shapes", "train", image_size=16, limit=32)
    text = TextTokenizer.from_file(tokenizer.parent / "text.tiktoken")
    model_cfg = ShowoConfig(text_vocab_size=text.vocab_size, codebook_size=32, image_tokens=16, n_layer=2,
                            n_embd=32, n_head=2, flex_attention=flex)
    stories = make_stories("train", 20)
    stories = (stories, image_codes(story_images(stories, "train", 16), tokenizer, torch.device("cpu")))
    return TaskRows(ds, image_codes(ds, tokenizer, torch.device("cpu")), text, model_cfg, 3, stories=stories), model_cfg


@pytest.mark.parametrize("story_frac", [0.0, 0.3])
def test_task_groups_give_the_losses_of_one_padded_batch(tokenizer, story_frac):
    """A batch is built as one padded group per row kind (less padding to compute); padding those
    groups to one common length and running them together gives the same losses. With stories, the
    t2i and mmu terms each come from two groups (batch_losses weighs them by their positions)."""
    import random
    from model import IGNORE, Showo
    from tokenizer import TASKS
    rows, model_cfg = story_rows(tokenizer)
    cfg = config.ShowoTrainConfig(batch_size=32, mix=config.TaskMix(t2i_frac=0.4, caption_frac=0.2, vqa_frac=0.3,
                                                                    lm_frac=0.1, story_frac=story_frac))
    groups = build_batch(rows, list(range(32)), cfg, random.Random(0), torch.Generator().manual_seed(0))
    kinds = ["lm", "mmu", "t2i"] + (["interleaved"] if story_frac else [])
    assert sorted(TASKS[g[2][0]] for g in groups) == sorted(kinds)
    assert all(len(set(g[2].tolist())) == 1 for g in groups) and len({g[0].shape[1] for g in groups}) == len(kinds)
    torch.manual_seed(0)
    model, space = Showo(model_cfg).eval(), model_cfg.space
    grouped = train.batch_losses(model, groups, torch.device("cpu"))  # what a training step computes
    L = max(g[0].shape[1] for g in groups)

    def pad(t, fill, left):  # (b, l) -> (b, L), padded where pad_rows pads that task's rows
        extra = torch.full((t.shape[0], L - t.shape[1]), fill, dtype=t.dtype)
        return torch.cat([extra, t] if left else [t, extra], dim=1)
    ids = torch.cat([pad(g[0], space.pad, TASKS[g[2][0]] == "t2i") for g in groups])
    labels = torch.cat([pad(g[1], IGNORE, TASKS[g[2][0]] == "t2i") for g in groups])
    together = model(ids, labels, torch.cat([g[2] for g in groups]))[1]
    assert set(together) == set(grouped) == {"t2i", "mmu", "lm"}
    for name in together:
        torch.testing.assert_close(together[name], grouped[name], rtol=1e-5, atol=1e-5)


def test_flex_attention_batches_have_one_length_per_kind_of_row(tokenizer):
    """FlexAttention compiles a kernel per sequence length: every single-image row is padded to the
    longest possible one (ShowoConfig.max_len), every story row to the longest story's."""
    import random
    rows, model_cfg = story_rows(tokenizer, flex=True)
    cfg = config.ShowoTrainConfig(model=model_cfg, batch_size=32, mix=config.TaskMix(
        t2i_frac=0.4, caption_frac=0.2, vqa_frac=0.2, lm_frac=0.1, story_frac=0.3))
    assert rows.story_len == max(len(rows.story_row(k).ids) for k in range(20)) > model_cfg.max_len
    for step in range(3):
        groups = build_batch(rows, list(range(32)), cfg, random.Random(step), torch.Generator().manual_seed(step))
        assert [g[0].shape[1] for g in groups] == [model_cfg.max_len, rows.story_len]


def test_checkpoint_from_another_tokenizer_is_refused(tokenizer, tmp_path):
    other = tmp_path / "othertok"
    train.main(TINY_TOKENIZER + ["--out", str(other), "--seed", "1"])  # same sizes, different weights
    showo(tokenizer, tmp_path / "s1", "--max-steps", "1", "--eval-every", "1")
    with pytest.raises(SystemExit, match="different image tokenizer"):
        train.main(["showo"] + TINY_SHOWO + ["--tokenizer", str(other / "tokenizer.pt"), "--out", str(tmp_path / "s2"),
                                             "--stage", "2", "--init", str(tmp_path / "s1" / "showo.pt")])
    small = tmp_path / "smalltok"
    train.main(TINY_TOKENIZER + ["--out", str(small), "--codebook-bits", "4"])
    with pytest.raises(SystemExit, match="image codes"):
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
    torch.save({"kind": "showo", "config": {}, "model": RunsCode()}, path)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_showo(path)
    assert not MARKER.exists()
    with open(path, "wb") as f:  # a bare pickle, not even torch's zip format
        pickle.dump(RunsCode(), f)
    with pytest.raises(ValueError):
        load_showo(path)
    assert not MARKER.exists()


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tokenizer, tmp_path, monkeypatch):
    import distributed
    real = distributed.joint_loss  # what a training step's loss is made with (distributed.whole_batch_loss)
    calls = []

    def nan_at_step_3(losses, weights):
        calls.append(1)
        loss = real(losses, weights)
        return loss * float("nan") if len(calls) == 3 else loss
    monkeypatch.setattr(distributed, "joint_loss", nan_at_step_3)
    with pytest.raises(SystemExit, match="loss became nan at step 2"):
        showo(tokenizer, tmp_path, "--max-steps", "4", "--eval-every", "2")
    assert torch.load(tmp_path / "showo.pt", weights_only=True)["step"] == 2


def test_condition_dropout_rate(tokenizer):
    import data
    from tokenizer import TextTokenizer
    ds = data.load("shapes", "train", image_size=16, limit=64)
    codes = image_codes(ds, tokenizer, torch.device("cpu"))
    text = TextTokenizer.from_file(tokenizer.parent / "text.tiktoken")
    cfg = config.ShowoTrainConfig(batch_size=64, mix=config.TaskMix(t2i_frac=1, caption_frac=0, vqa_frac=0, lm_frac=0,
                                                                   cond_dropout=0.1))
    from model import ShowoConfig
    model_cfg = ShowoConfig(text_vocab_size=text.vocab_size, codebook_size=32, image_tokens=16)
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
    import data
    from model import ShowoConfig
    from tokenizer import TextTokenizer
    ds = data.load("shapes", "train", image_size=16, limit=32)
    text = TextTokenizer.from_file(tokenizer.parent / "text.tiktoken")
    model_cfg = ShowoConfig(text_vocab_size=text.vocab_size, codebook_size=32, image_tokens=16)
    rows = TaskRows(ds, image_codes(ds, tokenizer, torch.device("cpu")), text, model_cfg, stage=3)
    rng, space = random.Random(0), model_cfg.space
    turns = []
    for i in range(len(ds)):
        row = rows.row("vqa", i, rng)
        assert len(row.ids) <= model_cfg.max_len
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


def test_bench_train_reports_the_omni_over_causal_ratio():
    out = subprocess.run([sys.executable, "bench.py", "train", "--quick"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["omni_over_causal"] > 0 and result["tokens_per_s"] > 0 and result["peak_mem_mb"] >= 0
    assert 0 < result["fraction_of_matmul_peak"] < 2


def test_the_shapes_tokenizer_gives_each_image_at_least_16_tokens():
    # the main job's tokenizer is the convolutional LFQ one every dataset uses, at 8x downsampling
    model_cfg = config.make_config(config.TokenizerTrainConfig, config.TOKENIZER_PRESETS["shapes"]).model
    assert model_cfg.image_size == 32 and model_cfg.latent_size ** 2 >= 16 and model_cfg.downsample <= 8


def test_checkpoints_hold_the_papers_model_unless_the_preset_adds_to_it(showo_run):
    # the trainer's defaults build ShowoConfig() (Show-o as published); a dataset preset may turn on
    # our additions, and a checkpoint differs from the paper's model only where the preset or the
    # command line (the tiny test sizes) says so, besides the sizes the tokenizers fix
    paper = ShowoConfig()
    assert config.ShowoTrainConfig().model == paper  # the trainer holds the model's own config
    _, ckpt = load_showo(showo_run / "showo.pt")
    said = set(config.SHOWO_PRESETS["shapes"]) | {"n_layer", "n_head", "n_embd"}
    from_tokenizers = {"text_vocab_size", "codebook_size", "image_tokens"}
    for name, value in ckpt["config"].items():
        if name not in said | from_tokenizers:
            assert value == getattr(paper, name), name


def test_views_are_the_codes_of_the_mirrored_and_moved_images(tokenizer):
    """--mirror and --shift (data/tasks.py, training_views): the cached codes of each view are the
    tokenizer's codes of that copy of the images: flipped left to right, or moved by at most --shift
    pixels in each direction with the uncovered border reflected in from the image."""
    import data
    from types import SimpleNamespace
    from data.tasks import SHIFTED_VIEWS, training_views
    from tokenizer import images_to_tensor, load_image_tokenizer
    ds = data.load("shapes", "train", image_size=16, limit=8)
    views = training_views(ds, SimpleNamespace(mirror=True, shift=2, seed=0))
    assert len(views) == 1 + SHIFTED_VIEWS and np.array_equal(views[0], ds.images[:, :, ::-1])
    padded = np.pad(ds.images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")    # (N, 20, 20, 3)
    mirrored = padded[:, :, ::-1]
    for moved in views[1:]:  # each image is one 16x16 crop of its padded self or of its padded mirror
        assert all(any(np.array_equal(m, p[a:a + 16, b:b + 16]) for p in (padded[i], mirrored[i])
                       for a in range(5) for b in range(5)) for i, m in enumerate(moved))
    assert not all(np.array_equal(moved, ds.images) for moved in views[1:])
    model, _ = load_image_tokenizer(tokenizer)
    with torch.no_grad():
        flipped = model.encode(images_to_tensor(ds.images).flip(3)).flatten(1)  # (B, 3, H, W): W flipped
    cpu = torch.device("cpu")
    assert torch.equal(image_codes(ds, tokenizer, cpu, views[0]), flipped)
    assert not torch.equal(flipped, image_codes(ds, tokenizer, cpu))


def test_augmented_rows_show_each_view_equally_often_and_hide_only_understanding_codes(tokenizer):
    """--mirror / --shift and --hide-codes (data/tasks.py, TaskRows): a row shows its image or one of
    its views, each as often, and only captions and answers see [MASK]s in it, never more than hide_codes of them;
    everything else in the row stays what it was."""
    import random
    import data
    from tokenizer import TextTokenizer
    ds = data.load("shapes", "train", image_size=16, limit=4)
    text = TextTokenizer.from_file(tokenizer.parent / "text.tiktoken")
    model_cfg = ShowoConfig(text_vocab_size=text.vocab_size, codebook_size=32, image_tokens=16)
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
    viewing = TaskRows(ds, codes, text, model_cfg, stage=3, views=[31 - codes, 20 + 0 * codes])  # told apart by value
    first_codes = [viewing.row("caption", 0, random.Random(seed)).ids[2] - space.image_offset for seed in range(300)]
    assert set(first_codes) == {0, 31, 20} and all(70 < first_codes.count(c) < 130 for c in (0, 31, 20))  # 1/3 each
