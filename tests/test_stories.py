"""Stories of the shapes world (data/stories.py): every scene of a story follows from its first
caption and the sentences of the changes before it, read here by the world's own grammar."""
import re

import pytest

from data.shapes import _LOCATIONS, _parse_phrase, held_out_part, parse_caption
from data.stories import MAX_CHANGES, NEIGHBOURS, change_scene, make_stories


def the_one(words, scene):
    """The one object of the scene that 'the WORDS' names (it must name exactly one)."""
    phrase = _parse_phrase("a " + words, words)
    named = [o for o in scene.objects if phrase.matches(o)]
    assert len(named) == 1, f"'the {words}' names {len(named)} objects of {scene}"
    return named[0]


def read_change(text, before):
    """The scene a change's sentence makes of `before`, as a set of (shape, colour, size, row, col)."""
    objects = {(o.shape, o.colour, o.size, o.row, o.col) for o in before.objects}
    if m := re.fullmatch(r"then the (.+) disappears", text):
        o = the_one(m[1], before)
        return objects - {(o.shape, o.colour, o.size, o.row, o.col)}
    if m := re.fullmatch(r"then the (.+) turns (\w+)", text):
        o = the_one(m[1], before)
        return objects - {(o.shape, o.colour, o.size, o.row, o.col)} | {(o.shape, m[2], o.size, o.row, o.col)}
    m = re.fullmatch(r"then an? (\w+) (\w+) (\w+) appears (.+)", text)
    size, colour, shape, where = m.groups()
    if where in _LOCATIONS:
        cell = _LOCATIONS[where]
    else:
        relation, words = re.fullmatch(r"(below|above|right of|left of) the (.+)", where).groups()
        o, (dr, dc) = the_one(words, before), NEIGHBOURS[relation]
        cell = (o.row + dr, o.col + dc)
    assert cell not in {(r, c) for *_, r, c in objects}, f"{text!r}: the cell is taken"
    return objects | {(shape, colour, size, *cell)}


def test_every_scene_of_a_story_follows_from_its_words():
    kinds = set()
    for story in make_stories("train", 300):
        assert len(story.texts) == len(story.scenes) and 2 <= len(story.scenes) <= 1 + MAX_CHANGES
        first = parse_caption(story.texts[0])  # the description caption: every object pinned down
        assert {(p.shape, p.colour, p.size, p.row, p.col) for p in first.phrases} == set(story.scenes[0].key())
        for text, before, after in zip(story.texts[1:], story.scenes, story.scenes[1:]):
            assert read_change(text, before) == set(after.key()), text
            assert 1 <= len(after.objects) <= 4 and len({(o.row, o.col) for o in after.objects}) == len(after.objects)
            kinds.add(next(verb for verb in ("appears", "turns", "disappears") if verb in text.split()))
    assert kinds == {"appears", "turns", "disappears"}  # every kind of change occurs


def test_held_out_stories_start_from_held_out_scenes_and_every_split_is_reproducible():
    val, test, train = make_stories("val", 50), make_stories("test", 50), make_stories("train", 50)
    assert all(held_out_part(s.scenes[0]) == "test" for s in test)
    assert all(held_out_part(s.scenes[0]) == "val" for s in val)  # validation stories never start as test's
    assert all(held_out_part(scene) in ("val", "train") for s in val for scene in s.scenes)  # nor enter them
    assert all(held_out_part(scene) in ("test", "train") for s in test for scene in s.scenes)
    assert all(held_out_part(scene) == "train" for s in train for scene in s.scenes)  # no held-out image is trained on
    assert make_stories("test", 50) == test and make_stories("test", 50, seed=1) != test


def test_a_change_the_scene_cannot_take_is_refused():
    """A scene holds 1-4 objects, one per cell: nothing appears in a full scene, and the last
    object never disappears."""
    import random
    from data.shapes import Scene, _make_obj
    full = Scene(tuple(_make_obj("circle", "red", "small", c // 2, c % 2) for c in range(4)))
    with pytest.raises(ValueError, match="cannot take the change 'appear'"):
        change_scene(full, random.Random(0), "appear")
    with pytest.raises(ValueError, match="cannot take the change 'disappear'"):
        change_scene(Scene(full.objects[:1]), random.Random(0), "disappear")
    sentences = [change_scene(full, random.Random(k))[0] for k in range(40)]  # random kinds of change
    assert not any(" appears " in t for t in sentences)                       # a full scene takes no new one
    assert any(t.endswith(" disappears") for t in sentences) and any(" turns " in t for t in sentences)


def test_story_scores_need_both_the_change_and_the_untouched_objects():
    """Drawing every true scene scores 1 on both; drawing the first scene again and again keeps
    every untouched object but misses every change; drawing nothing after the first image keeps none."""
    from data.shapes import Scene
    from evaluation.evaluate import story_scores, untouched
    stories = make_stories("test", 40)
    untouched_total = sum(len(untouched(a, b)) for s in stories for a, b in zip(s.scenes, s.scenes[1:]))
    accuracy, kept, seen = story_scores(stories, [s.scenes for s in stories])
    assert set(accuracy.values()) == {1.0} and kept == 1.0 and seen == untouched_total > 0
    accuracy, kept, _ = story_scores(stories, [[s.scenes[0]] * len(s.scenes) for s in stories])
    assert accuracy[1] == 1.0 and accuracy[2] == 0.0 and kept == 1.0  # every change alters the scene
    accuracy, kept, _ = story_scores(stories, [[s.scenes[0]] + [Scene(())] * (len(s.scenes) - 1) for s in stories])
    assert kept == 0.0


def test_a_story_row_shows_each_scene_right_after_the_text_that_leads_to_it(tokenizer):
    """[T2I] [SOT] text 1 [EOT] [SOI] scene 1 [EOI] [SOT] text 2 [EOT] [SOI] scene 2 [EOI] ...: the
    codes of image k are those of the story's k-th scene, and its texts after an image are targets."""
    import random

    import data
    from data.shapes import render
    from data.stories import story_images
    from data.tasks import TaskRows
    from model import ShowoConfig
    from tokenizer import TextTokenizer, load_image_tokenizer
    text = TextTokenizer((tokenizer.parent / "text.tiktoken").read_text())
    cfg = ShowoConfig(text_vocab_size=text.vocab_size, codebook_size=32, image_tokens=16)
    stories = make_stories("train", 5)
    images = story_images(stories, 16)
    codes = load_image_tokenizer(tokenizer)[0].encode_images(images)
    ds = data.load("shapes", "train", image_size=16, limit=4)
    rows = TaskRows(ds, codes[:4], text, cfg, stage=3, stories=(stories, codes))
    scenes = [scene for s in stories for scene in s.scenes]  # every scene drawn, story after story
    assert len(images) == len(codes) == len(scenes) and (images[-1] == render(scenes[-1], 16)).all()
    space, first = cfg.space, 0
    for k, story in enumerate(stories):
        row = rows.story_row(k)
        expected = [space.t2i_token]
        for j, t in enumerate(story.texts):
            expected += space.text_span(text.encode(t), cfg.max_text) + space.image_span(codes[first + j])
        assert row.ids == expected and row.task == "interleaved"
        first += len(story.scenes)
        targets = [i for i, is_target in enumerate(row.text_targets) if is_target]
        assert targets and min(targets) > row.ids.index(space.eoi)  # only text after the first image is a target
    assert rows.row("story", 0, random.Random(0)).task == "interleaved"
    with pytest.raises(ValueError, match="no 'story' rows here"):
        TaskRows(ds, codes[:4], text, cfg, stage=3).row("story", 0, random.Random(0))


def test_stories_are_refused_outside_the_shapes_world():
    from train import ShowoTrainConfig
    with pytest.raises(ValueError, match="shapes world only"):
        ShowoTrainConfig(dataset="cifar10", data_dir="x", story_frac=0.5)
