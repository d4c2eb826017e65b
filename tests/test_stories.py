"""Stories of the shapes world (data/stories.py): every scene of a story follows from its first
caption and the sentences of the changes before it, read here by the world's own grammar."""
import re

import pytest

from data.shapes import _in_test_split, _LOCATIONS, _parse_phrase, parse_caption
from data.stories import CHANGES, MAX_CHANGES, NEIGHBOURS, change_scene, make_stories


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
    test, train = make_stories("test", 50), make_stories("train", 50)
    assert all(_in_test_split(s.scenes[0]) for s in test) and not any(_in_test_split(s.scenes[0]) for s in train)
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
    assert {change_scene(full, random.Random(k))[0].split()[-1] for k in range(40)} >= {"disappears"}
    assert set(CHANGES) == {"appear", "recolour", "disappear"}
