"""
Stories in the shapes world, for mixed-modality generation (text and images interleaved in one
sequence, Show-o section 3.2): a scene in words, then one to three changes, each in words, with the
image of every scene along the way. As one row of the unified token space:

    [T2I] [SOT] a large red circle in the top left [EOT] [SOI] image 1 [EOI]
          [SOT] then a small blue square appears below the red circle [EOT] [SOI] image 2 [EOI] ...

    from data.stories import make_stories
    stories = make_stories("train", 1000)      # [Story]: texts[k] leads to scenes[k]

A story starts from a scene of one or two objects in its "description" caption (every object's
size, colour, shape and cell), so its first image is fixed by its first text. Each change is one of
    appear     "then a small blue square appears below the red circle": a new object, fully
               described, in an empty cell beside a named object ("below X" is the cell right below
               X here, not anywhere lower), or "... appears in the bottom right";
    recolour   "then the red circle turns green";
    disappear  "then the triangle disappears" (never the last object: a scene holds 1-4).
Objects are named as the question/answer pairs name them (data.shapes._reference): by words that
fit exactly one object of the scene before the change. So every scene of a story follows from its
first caption and the changes before it, and an image generated for it can be judged against the
true scene; objects a change does not touch must stay as they were. Validation and test stories
start from the world's val or test scenes (data.shapes.held_out_part) and never enter the other's;
every scene of a training story is a training scene, so no held-out image (objects sit at their
cells' centres, so a scene is one image) is ever trained on.
"""
import random
from dataclasses import dataclass, replace

import numpy as np

from data.shapes import (COLOURS, IMAGE_SIZE, SHAPES, SIZES, Phrase, Scene, _location_text, held_out_part,
                         _make_obj, _phrase_text, _reference, _resize_nearest, caption, render)

CHANGES = ("appear", "recolour", "disappear")
MAX_CHANGES = 3
STORIES = {"train": 10000, "val": 200, "test": 200}  # what training and evaluate.py stories draw from
NEIGHBOURS = {"below": (1, 0), "above": (-1, 0), "right of": (0, 1), "left of": (0, -1)}  # (d row, d col)


@dataclass(frozen=True)
class Story:
    texts: tuple   # the first scene's description, then one sentence per change
    scenes: tuple  # data.shapes.Scene after each text


def possible_changes(scene):
    """The kinds of change a scene allows: a new object needs an empty cell, a removal a second object."""
    return [kind for kind, ok in zip(CHANGES, (len(scene.objects) < 4, True, len(scene.objects) > 1)) if ok]


def in_cell_order(objects):
    """A scene with its objects in row-major cell order, as sampled scenes have them."""
    return Scene(tuple(sorted(objects, key=lambda o: (o.row, o.col))))


def change_scene(scene, rng, kind=None):
    """One change of the scene -> (its sentence, the changed scene). kind: one of possible_changes
    (default: a random one)."""
    kind = kind or rng.choice(possible_changes(scene))
    if kind not in possible_changes(scene):
        raise ValueError(f"a scene of {len(scene.objects)} objects cannot take the change {kind!r}")
    objects = list(scene.objects)
    if kind == "appear":
        taken = {(o.row, o.col) for o in objects}
        beside = [(o, relation, (o.row + dr, o.col + dc)) for o in objects for relation, (dr, dc) in NEIGHBOURS.items()
                  if (o.row + dr, o.col + dc) in {(r, c) for r in (0, 1) for c in (0, 1)} - taken]
        new = Phrase(rng.choice(SHAPES), rng.choice(tuple(COLOURS)), rng.choice(tuple(SIZES)))
        if beside and rng.random() < 0.5:  # where, said by a neighbour: "below the red circle"
            o, relation, cell = rng.choice(beside)
            where = f"{relation} the {_reference(o, scene, rng, None)}"
        else:                              # or by the cell itself: "in the bottom right"
            cell = rng.choice(sorted({(r, c) for r in (0, 1) for c in (0, 1)} - taken))
            where = _location_text(*cell)
        objects.append(_make_obj(new.shape, new.colour, new.size, *cell))
        return f"then {_phrase_text(new)} appears {where}", in_cell_order(objects)
    o = rng.choice(objects)
    name = _reference(o, scene, rng, None)  # a cell holds one object, so some words always fit
    if kind == "recolour":
        colour = rng.choice([c for c in COLOURS if c != o.colour])
        return f"then the {name} turns {colour}", in_cell_order([replace(o, colour=colour) if x is o else x
                                                                 for x in objects])
    return f"then the {name} disappears", in_cell_order([x for x in objects if x is not o])


def make_story(rng, split="train", changes=None):
    """One story from a random scene of 1-2 objects of the split's part of the world and `changes`
    changes (default: 1 to MAX_CHANGES). A training story's changes are drawn again while they would
    lead into the held-out part."""
    changes = rng.randint(1, MAX_CHANGES) if changes is None else changes
    while True:
        cells = sorted(rng.sample(range(4), rng.randint(1, 2)))
        scene = Scene(tuple(_make_obj(rng.choice(SHAPES), rng.choice(tuple(COLOURS)), rng.choice(tuple(SIZES)),
                                      c // 2, c % 2) for c in cells))
        if held_out_part(scene) != split:  # rejection keeps the splits' first scenes disjoint
            continue
        texts, scenes = [caption(scene, rng, "description")[0]], [scene]
        for _ in range(changes * 50):  # a handful of draws each, nearly always
            text, after = change_scene(scenes[-1], rng)
            if held_out_part(after) in (split, "train"):  # never into another split's part
                texts.append(text)
                scenes.append(after)
            if len(scenes) == changes + 1:
                return Story(tuple(texts), tuple(scenes))


def make_stories(split="train", n=1000, seed=0):
    """n stories of one split (train, val or test: by its first scene), the same on every machine."""
    if split not in STORIES:
        raise ValueError(f"unknown split {split!r} for stories; choose train, val or test")
    rng = random.Random(f"shapes-stories/{split}/{seed}")  # a string seed: the same stories everywhere
    return [make_story(rng, split) for _ in range(n)]


def story_images(stories, image_size=IMAGE_SIZE):
    """Every scene of the stories drawn, story after story -> (M, H, W, 3) uint8: story k's scenes
    are rows sum(len(s.scenes) for s in stories[:k]) onwards (data/tasks.py encodes them once)."""
    return _resize_nearest(np.stack([render(scene) for story in stories for scene in story.scenes]), image_size)
