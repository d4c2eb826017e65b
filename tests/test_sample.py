"""sample.py end to end: every task on a tiny, nearly random checkpoint, clear errors for bad
arguments, and the shapes evaluation's figures on answers and images whose scores are known.
Run: python -m pytest tests/test_sample.py"""
import numpy as np
import pytest
import torch
from PIL import Image

import sample
from evaluation import evaluate


@pytest.fixture(scope="module")
def image(tmp_path_factory, showo_run):
    from data import load
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(load("shapes", "test", limit=1).images[0]).save(path)  # 32 px: read_image resizes to 16
    return path


def run(showo_run, tmp_path, *args):
    return sample.main(["--ckpt", str(showo_run), "--out", str(tmp_path), "--steps", "3", "--device", "cpu"] + list(args))


def test_t2i_writes_a_labelled_grid_and_the_steps_strip(showo_run, tmp_path):
    images = run(showo_run, tmp_path, "--prompt", "a red circle", "--prompt", "", "-n", "2", "--show-steps")
    assert images.shape == (4, 16, 16, 3)
    assert (tmp_path / "t2i.png").exists() and (tmp_path / "steps.png").exists()


def test_same_seed_same_picture(showo_run, tmp_path):
    a = run(showo_run, tmp_path, "--prompt", "a red circle", "--seed", "3")
    b = run(showo_run, tmp_path, "--prompt", "a red circle", "--seed", "3")
    assert np.array_equal(a, b)


def test_caption_vqa_and_lm_print_text(showo_run, tmp_path, image, capsys):
    texts = run(showo_run, tmp_path, "--task", "caption", "--image", str(image), "--image", str(image),
                "--max-new-tokens", "4")
    assert len(texts) == 2 and texts[0] == texts[1]  # greedy: the same image gives the same caption
    run(showo_run, tmp_path, "--task", "vqa", "--image", str(image), "--question", "what color is it?",
        "--max-new-tokens", "3")
    texts = run(showo_run, tmp_path, "--task", "lm", "--prompt", "a red", "--max-new-tokens", "3")
    assert texts[0].startswith("a red")
    assert str(image) in capsys.readouterr().out


def test_inpaint_keeps_the_unmasked_tokens(showo_run, tmp_path, image):
    pipe = sample.Pipeline(str(showo_run), "cpu")
    original = pipe.encode_images(sample.read_image(image, pipe.image_size)[None])[0]
    codes = run(showo_run, tmp_path, "--task", "inpaint", "--image", str(image), "--mask", "0,0,8,8",
                "--prompt", "a red square", "-n", "2")
    keep = ~sample.token_mask("0,0,8,8", pipe).flatten()  # the top-left quarter is regenerated
    assert keep.sum() == 12 and (codes[:, keep] == original[keep]).all()
    assert (tmp_path / "inpaint.png").exists()


def test_extrapolation_chains_and_grows_the_picture(showo_run, tmp_path, image):
    panorama = run(showo_run, tmp_path, "--task", "extrapolate", "--image", str(image), "--direction", "left",
                   "--times", "2")
    assert panorama.shape == (16, 16 + 2 * 8, 3)  # two half-grid steps to the left
    assert (tmp_path / "extrapolate_left.png").exists()


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_extrapolation_keeps_the_original_and_stitches_the_new_band(showo_run, tmp_path, image, direction,
                                                                    monkeypatch):
    def fill_with_7(model, prompts, known, **kw):  # a "generator" that paints every new slot code 7
        return torch.where(known < 0, torch.full_like(known, 7), known), []
    monkeypatch.setattr(sample, "generate_images", fill_with_7)
    pipe = sample.Pipeline(str(showo_run), "cpu")
    codes = pipe.encode_images(sample.read_image(image, pipe.image_size)[None])[0]
    panorama = run(showo_run, tmp_path, "--task", "extrapolate", "--image", str(image), "--direction", direction)
    original = pipe.decode_codes(codes[None])[0]
    frame = pipe.decode_codes(fill_with_7(None, None, sample.extrapolation_canvas(codes, direction, 4, 2)[None])[0])[0]
    # 16 px image, 4x4 tokens of 4 px, shift 2 tokens = 8 px: the original stays whole on its side,
    # the frame's new 8-px band is appended on the other
    expected = {"right": np.concatenate([original, frame[:, 8:]], 1), "left": np.concatenate([frame[:, :8], original], 1),
                "down": np.concatenate([original, frame[8:]], 0), "up": np.concatenate([frame[:8], original], 0)}
    assert np.array_equal(panorama, expected[direction])
    kept = {"right": (slice(None), slice(0, 2)), "left": (slice(None), slice(2, 4)),
            "down": (slice(0, 2), slice(None)), "up": (slice(2, 4), slice(None))}[direction]
    canvas = sample.extrapolation_canvas(codes, direction, 4, 2).view(4, 4)
    moved = {"right": codes.view(4, 4)[:, 2:], "left": codes.view(4, 4)[:, :2],
             "down": codes.view(4, 4)[2:], "up": codes.view(4, 4)[:2]}[direction]
    assert torch.equal(canvas[kept], moved) and (canvas >= 0).sum() == 8  # half kept, half to generate


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps, -n, --times, --max-new-tokens and --top-k must be at least 1"),
    (["--cfg", "-1"], "guidance scale"),
    (["--task", "caption"], "needs --image"),
    (["--task", "vqa", "--image", "x.png"], "needs --question"),
    (["--task", "inpaint", "--image", "x.png"], "needs --mask"),
    (["--task", "story"], "--task story needs one --prompt (the first scene) and --then"),
    (["--task", "story", "--prompt", "b", "--then", "c"], "needs one --prompt"),
    (["--then", "the circle turns green"], "--then is for stories"),
])
def test_bad_arguments_exit_non_zero_with_a_clear_message(showo_run, args, message, capsys):
    with pytest.raises(SystemExit) as stop:  # argparse's usage error: exit status 2, the reason on stderr
        sample.main(["--ckpt", str(showo_run), "--prompt", "a"] + args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing checkpoint", "not a checkpoint", "unreadable image", "bad box"])
def test_bad_inputs_exit_non_zero_with_a_clear_message(showo_run, tmp_path, image, case):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a PNG")
    args = {"missing checkpoint": ["--ckpt", str(tmp_path / "nowhere")],
            "not a checkpoint": ["--ckpt", str(junk)],
            "unreadable image": ["--ckpt", str(showo_run), "--task", "caption", "--image", str(junk)],
            "bad box": ["--ckpt", str(showo_run), "--task", "inpaint", "--image", str(image), "--mask", "9,9,3,3"]}[case]
    with pytest.raises(SystemExit) as stop:  # one line for the user, no traceback
        sample.main(["--prompt", "a", "--out", str(tmp_path)] + args)
    assert str(stop.value.code).startswith("error:") and "\n" not in str(stop.value.code), stop.value.code


def test_a_checkpoint_samples_on_its_own_far_from_its_tokenizer_files(showo_run, tmp_path):
    """showo.pt carries the image tokenizer and the BPE it was trained with: moved anywhere, it samples."""
    import shutil
    shutil.copy(showo_run / "showo.pt", tmp_path / "alone.pt")
    texts = sample.main(["--ckpt", str(tmp_path / "alone.pt"), "--task", "lm", "--prompt", "a", "--max-new-tokens", "2"])
    assert texts[0].startswith("a")


def test_an_over_long_prompt_is_cut_with_a_warning(showo_run, tmp_path):
    with pytest.warns(UserWarning, match="cut"):
        run(showo_run, tmp_path, "--prompt", "a red circle " * 40, "-n", "1")


def test_evaluate_showo_prints_the_geneval_table_as_json_last(showo_run, tmp_path, capsys):
    import json
    returned = evaluate.main(["showo", "--ckpt", str(showo_run), "--prompts", "2", "--limit", "8", "--steps", "2",
                              "--out", str(tmp_path), "--device", "cpu"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == json.loads(json.dumps(returned))  # the figures, as one JSON object on the last line
    assert set(result["geneval"]) == {"single_object", "two_object", "counting", "colors", "position",
                                      "color_attr", "overall"}
    assert (tmp_path / "samples.png").exists()


def test_evaluate_showo_scores_perfect_answers_and_images_as_1_and_wrong_ones_lower(showo_run, monkeypatch):
    """The metrics' plumbing, with the model replaced by an oracle: images rendered from scenes that
    satisfy each prompt, the true answer to each question, the full description of each image; then
    wrong answers, and an answerer that always says "yes", which scores POPE at the share of "yes" truths."""
    import random

    from data import load
    from data.shapes import caption, render
    from test_shapes import scene_for_prompt
    rng = random.Random(0)
    ds = load("shapes", "test", limit=30)
    monkeypatch.setattr(evaluate, "draw", lambda pipe, prompts, cfg, g: np.stack(
        [render(scene_for_prompt(p, rng)) for p in prompts]))
    truths = [a for _, _, a, _ in evaluate.distinct_questions(ds)]
    describable = evaluate.describable_scenes(ds)
    descriptions = [caption(ds.scenes[i], rng, "description")[0] for i in describable]

    def oracle(pipe, codes, questions, batch, max_new_tokens=24):
        return descriptions if all(q == "" for q in questions) else list(truths)
    monkeypatch.setattr(evaluate, "answer", oracle)
    result = evaluate.evaluate_showo(str(showo_run), "shapes", limit=30, prompts=5, device="cpu")
    assert all(v == 1.0 for v in result["geneval"].values()), result["geneval"]
    assert result["vqa"] == result["pope"] == result["caption_exact"] == result["captions"]["bleu4"] == 1.0
    # the oracle draws exactly the objects each prompt asks for, and the scorer reads them all back
    assert result["geneval_objects"] == result["geneval_objects_asked"]
    assert result["geneval_objects_asked"]["single_object"] == 1 and result["geneval_objects_asked"]["two_object"] == 2

    truths.reverse()  # answers to other questions; captions of other images
    descriptions.reverse()
    result = evaluate.evaluate_showo(str(showo_run), "shapes", limit=30, prompts=5, device="cpu")
    assert result["vqa"] < 0.6 and result["caption_exact"] < 0.5

    exist = [a for _, _, a, t in evaluate.distinct_questions(ds) if t == "exist"]
    monkeypatch.setattr(evaluate, "answer", lambda pipe, codes, questions, *a, **k: ["yes"] * len(questions))
    result = evaluate.evaluate_showo(str(showo_run), "shapes", limit=30, prompts=5, device="cpu")
    assert result["pope"] == round(exist.count("yes") / len(exist), 4) and result["pope_yes_ratio"] == 1.0


def test_pope_keeps_each_images_yes_no_pair_together_so_half_the_truths_are_yes():
    from data import load
    ds = load("shapes", "test")  # the 1,000 held-out scenes repeat: de-duplication drops many questions
    asked = evaluate.distinct_questions(ds)
    exist = [(i, a) for i, _, a, t in asked if t == "exist"]
    assert len(exist) < 2 * len(ds) and [a for _, a in exist].count("yes") * 2 == len(exist)
    per_image = {}
    for i, a in exist:
        per_image.setdefault(i, []).append(a)
    assert all(sorted(answers) == ["no", "yes"] for answers in per_image.values())  # kept as pairs
    assert len({(ds.scenes[i].key(), q) for i, q, _, _ in asked}) == len(asked)   # no question asked twice


def test_caption_scene_reads_back_full_descriptions_only():
    import random

    from data import load
    from data.shapes import caption
    from evaluation.evaluate import caption_scene
    rng = random.Random(1)
    ds = load("shapes", "test", limit=50)
    for scene in ds.scenes:
        if len(scene.objects) <= 2:
            assert caption_scene(caption(scene, rng, "description")[0]) == scene.key()
    assert caption_scene("a red circle") is None             # true of many scenes: not a full description
    assert caption_scene("a red circle above a blue square") is None
    assert caption_scene("not the grammar at all") is None


@pytest.fixture(scope="module")
def story_run(tokenizer):
    """A 2-step stage-3 run with story rows in its batches (--story-frac)."""
    import train
    from conftest import TINY_SHOWO
    out = tokenizer.parent / "stories"
    train.main(["showo"] + TINY_SHOWO + ["--tokenizer", str(tokenizer), "--out", str(out), "--max-steps", "2",
                                         "--eval-every", "2", "--stage", "3", "--story-frac", "0.5"])
    return out


def test_story_draws_one_image_per_text_and_writes_the_strip(story_run, showo_run, tmp_path, capsys):
    images = run(story_run, tmp_path, "--task", "story", "--prompt", "a large red circle in the top left",
                 "--then", "a small blue square appears below the red circle", "--then", "the circle turns green")
    assert images.shape == (3, 16, 16, 3) and (tmp_path / "story.png").exists()
    assert "not trained on stories" not in capsys.readouterr().out
    run(showo_run, tmp_path, "--task", "story", "--prompt", "a", "--then", "b")
    assert "not trained on stories" in capsys.readouterr().out  # the tiny stage-1 run had none


def test_each_image_of_a_story_is_drawn_after_every_text_and_image_before_it(showo_run, monkeypatch):
    """generate_story's k-th call passes each story still going as text 1, image 1, ..., text k + 1;
    a story with fewer texts drops out of the batch."""
    calls = []

    def fake_generate_images(model, prompts, stories, **options):
        calls.append(stories)
        return torch.stack([torch.full((16,), 10 * len(calls) + b) for b in range(len(stories))]), []
    monkeypatch.setattr(sample, "generate_images", fake_generate_images)
    pipe = sample.Pipeline(str(showo_run), "cpu")
    codes = sample.generate_story(pipe, [["a", "b", "c"], ["d"], ["e", "f"]], None)
    t = pipe.encode_text
    assert [len(c) for c in calls] == [3, 2, 1] and [len(c) for c in codes] == [3, 1, 2]
    assert calls[0] == [[t("a")], [t("d")], [t("e")]]
    assert calls[1][0][0] == t("a") and torch.equal(calls[1][0][1], codes[0][0]) and calls[1][0][2] == t("b")
    assert calls[1][1][:1] == [t("e")] and torch.equal(calls[1][1][1], codes[2][0]) and calls[1][1][2] == t("f")
    assert len(calls[2][0]) == 5 and torch.equal(calls[2][0][3], codes[0][1]) and calls[2][0][4] == t("c")
    assert codes[0][2][0] == 30 and codes[2][1][0] == 21  # each story gets its own row of every call


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluate_showo_draws_held_out_stories_for_a_checkpoint_trained_on_them(story_run, tmp_path, monkeypatch, split):
    """A scorer that reads back every true scene of the split's stories: each image's scene accuracy and
    "kept" are then 1 (the other split's stories would not score 1)."""
    from data.stories import make_stories
    monkeypatch.setattr(evaluate, "STORIES", {split: 3})  # the default number of stories, made small
    monkeypatch.setattr(evaluate, "evaluate_shapes", lambda *a: {})  # the stories alone
    truth = iter([scene for story in make_stories(split, 3) for scene in story.scenes])
    monkeypatch.setattr(evaluate, "detect", lambda image: next(truth))  # story by story, image by image
    result = evaluate.evaluate_showo(str(story_run), "shapes", split=split, limit=8, prompts=1, steps=2, device="cpu",
                                     out_dir=str(tmp_path))
    stories = result["stories"]
    assert stories["stories"] == 3 and set(stories["scene_accuracy"]) <= {f"image {k}" for k in range(1, 5)}
    assert set(stories["scene_accuracy"].values()) == {1.0} and stories["kept"] == 1.0
    assert (tmp_path / "stories.png").exists()
    assert "stories" not in evaluate.evaluate_showo(str(story_run), "shapes", limit=8, prompts=1, steps=2,
                                                    device="cpu", stories=0)
