"""
The built-in "shapes" world: small synthetic 32x32 images whose full content is known, with captions,
question/answer pairs, and a scorer (evaluation/shapes_scorer.py) that reads a scene back from pixels.

It is the default training set (text-to-image, captioning, VQA all from one generator) and the
yardstick for text-to-image quality: a GenEval-style benchmark (Ghosh et al. 2023, the benchmark the
Show-o paper reports) where a generated image passes a prompt when the objects detected in it satisfy
the prompt's claims.

    from data.shapes import make_dataset         # or: from data import load; load("shapes")
    ds = make_dataset("train")                   # 20000 images (~2.5 s on 2 CPU cores); "test": 1000

The world
  - A 32x32 canvas split into a 2x2 grid of 16x16 cells; 1-4 objects (uniform), one per cell, so
    objects never overlap and relative positions are never ambiguous.
  - Shapes circle / square / triangle (pointing up); sizes large (11 px box) / small (7 px box);
    6 saturated colours red, green, blue, yellow, purple, cyan; a fixed dark-grey background. Flat
    colours, no antialiasing, so the ground truth is pixel-exact.
  - Each object sits at its cell's centre, so it lines up with the image tokenizer's grid of tokens
    the same way in every cell (2x2 tokens of 8x8 pixels with the shapes preset's 8x downsampling,
    4x4 of 4x4 pixels at 4x): one (shape, colour, size)
    is always the same block of pixels under the same tokens, and what a model must learn is which
    words pick which block, not sub-pixel variants. Centres in one column (row) are equal, in
    different columns (rows) 16 px apart.

Caption grammar (what caption() writes and parse_caption() reads; any case, optional final ".")
    caption  := [prefix] phrase (", " phrase)* [" and " phrase]       a list of claims
              | [prefix] phrase " " relation " " phrase                a spatial relation
    prefix   := "a photo of " | "a picture of " | "an image of "
    phrase   := ("a" | "an") [size] [colour] noun [location]           singular noun
              | ("two" | "three" | "four") [size] [colour] noun+"s" [location]
    noun     := "circle" | "square" | "triangle" | "object"            "object" = any shape
    location := "in the top left" | "in the top right" | "in the bottom left" | "in the bottom right"
              | "at the top" | "at the bottom" | "on the left" | "on the right"
    relation := "to the left of" | "left of" | "to the right of" | "right of" | "above" | "below"
Semantics (satisfies):
  - A phrase matches an object when every attribute it names agrees (shape, colour, size, cell).
  - "a"/"an" = at least one matching object; "two"/"three"/"four" = exactly that many.
  - A list is true when each phrase is true on its own. Generated lists never let two phrases describe
    the same object (they differ in shape, colour or cell), so "a circle and a square" means two.
  - "A left of B" = some object matching A has its centre more than 8 px left of a different object
    matching B (8 px sits between the 0 px of one column and the 16 px of two, leaving room for a
    detector's error); likewise right of / above / below. Relations join two singular phrases.
Categories: GenEval's six (single_object, two_object, counting, colors, position, color_attr) plus
"description": every object of a 1-2 object scene with size, colour, shape and cell, the most
informative caption for text-to-image training (capped at 2 objects to keep captions short).

Question/answer pairs (qa_pairs), per image: one colour, shape, count ("zero".."four") and position
("top left", or a yes/no relation) question and two existence questions, one "yes" and one "no"
(POPE-style balance). Objects are named so that exactly one fits ("the red circle", "the object in
the top left"). Dataset (make_dataset): 3 captions per image from different categories; train, val
and test use separate seeds and disjoint parts of the world (by a hash of the scene): a tenth is held
out, half of it for validation (where settings are chosen), half for test (every reported figure).

Scorer: evaluation/shapes_scorer.py reads a scene back from pixels (detect) and judges a generated image
against a caption or a scene (score).
"""
import itertools
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache
from operator import attrgetter

import numpy as np
from PIL import Image, ImageDraw

from data.dataset import ImageTextData

# -------------------------------------------------------------------------------------------------
# The world

IMAGE_SIZE = 32                     # the world is drawn at 32x32; other sizes are nearest-resized
CELL = 16                           # 2x2 grid of 16x16 cells, one object per cell
BACKGROUND = (30, 30, 30)
COLOURS = {                         # far from each other and from the background (see shapes_scorer)
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (40, 90, 240),
    "yellow": (240, 220, 40), "purple": (170, 60, 220), "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"large": 11, "small": 7}   # side of the bounding box; odd, so the centre is a pixel
ROWS, COLS = ("top", "bottom"), ("left", "right")
RELATIONS = ("left of", "right of", "above", "below")
REL_MARGIN = 8                      # "left of": centre x smaller by more than this (see docstring)
NUMBERS = ("zero", "one", "two", "three", "four")
PREFIXES = ("a photo of", "a picture of", "an image of")
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr",
              "description")
QTYPES = ("color", "shape", "count", "position", "exist")
DEFAULT_N = {"train": 20000, "val": 1000, "test": 1000}
CAPTIONS_PER_IMAGE = 3              # each from a different category
TEST_BUCKETS = 10                   # a scene is held out iff hash(scene) % 10 == 0 (val or test by the next bit)

@dataclass(frozen=True)
class Obj:
    shape: str      # circle | square | triangle ("unknown" only from detect)
    colour: str     # a key of COLOURS
    size: str       # large | small
    row: int        # 0 top, 1 bottom
    col: int        # 0 left, 1 right
    cx: float       # centre in pixels of the 32x32 canvas (ints for drawn scenes)
    cy: float


@dataclass(frozen=True)
class Scene:
    objects: tuple  # tuple[Obj, ...], in row-major cell order for sampled scenes

    def key(self):
        """What score() compares: the multiset of (shape, colour, size, row, col), not exact centres."""
        return tuple(sorted((o.shape, o.colour, o.size, o.row, o.col) for o in self.objects))


def _make_obj(shape, colour, size, row, col):
    """An object at the centre of its cell: (row, col) -> centre (col * 16 + 8, row * 16 + 8)."""
    return Obj(shape, colour, size, row, col, col * CELL + CELL // 2, row * CELL + CELL // 2)


def sample_scene(rng):
    """A random scene: 1-4 objects (uniform) in distinct cells, shape, colour and size uniform. rng is
    a random.Random (much faster per call than numpy for scalar draws)."""
    cells = sorted(rng.sample(range(4), rng.randint(1, 4)))
    return Scene(tuple(_make_obj(rng.choice(SHAPES), rng.choice(tuple(COLOURS)), rng.choice(tuple(SIZES)),
                                 c // 2, c % 2) for c in cells))


@lru_cache(maxsize=None)
def shape_mask(shape, w, h):
    """(h, w) bool mask of an ideal shape filling a w x h box, drawn by Pillow without antialiasing."""
    img = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse([0, 0, w - 1, h - 1], fill=1)
    elif shape == "square":
        draw.rectangle([0, 0, w - 1, h - 1], fill=1)
    elif shape == "triangle":
        draw.polygon([((w - 1) / 2, 0), (0, h - 1), (w - 1, h - 1)], fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    return np.array(img, dtype=bool)


def _resize_nearest(images, size):
    """Nearest-neighbour resize of (..., 32, 32, 3) to (..., size, size, 3) (pixel-centre sampling)."""
    if size == IMAGE_SIZE:
        return images
    # nearest keeps colours flat and edges hard, so the scorer's pixel-exact rules still hold
    idx = (2 * np.arange(size) + 1) * IMAGE_SIZE // (2 * size)   # floor((i + 0.5) * 32 / size)
    return images[..., idx, :, :][..., idx, :]


def render(scene, image_size=IMAGE_SIZE):
    """Draw a scene: (image_size, image_size, 3) uint8 RGB. Drawn at 32x32, then nearest-resized."""
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    canvas = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    canvas[:] = BACKGROUND
    for o in scene.objects:
        s = SIZES[o.size]
        x0, y0 = round(o.cx) - s // 2, round(o.cy) - s // 2
        if not (0 <= x0 and 0 <= y0 and x0 + s <= IMAGE_SIZE and y0 + s <= IMAGE_SIZE):
            raise ValueError(f"{o} does not fit on the {IMAGE_SIZE}x{IMAGE_SIZE} canvas")
        canvas[y0:y0 + s, x0:x0 + s][shape_mask(o.shape, s, s)] = COLOURS[o.colour]
    return _resize_nearest(canvas, image_size)


# -------------------------------------------------------------------------------------------------
# Captions: a Prompt is a list of noun-phrase claims, optionally joined by a relation


@dataclass(frozen=True)
class Phrase:
    shape: str | None = None    # None = "object" (any shape)
    colour: str | None = None
    size: str | None = None
    count: int | None = None    # None = "a" (at least one); 2..4 = exactly that many
    row: int | None = None      # absolute location, None = anywhere
    col: int | None = None

    def matches(self, o):
        return ((self.shape is None or self.shape == o.shape) and (self.colour is None or self.colour == o.colour)
                and (self.size is None or self.size == o.size) and (self.row is None or self.row == o.row)
                and (self.col is None or self.col == o.col))


@dataclass(frozen=True)
class Prompt:
    phrases: tuple              # tuple[Phrase, ...]
    relation: str | None = None  # one of RELATIONS: phrases[0] <relation> phrases[1]

    def __post_init__(self):
        if not self.phrases:
            raise ValueError("a prompt needs at least one phrase")
        if self.relation is not None and (self.relation not in RELATIONS or len(self.phrases) != 2
                                          or any(p.count is not None for p in self.phrases)):
            raise ValueError(f"a relation ({', '.join(RELATIONS)}) joins exactly two singular phrases")


def _location_text(row, col):
    """(row, col), either may be None -> "in the top left", "at the top", "on the left" or ""."""
    if row is not None and col is not None:
        return f"in the {ROWS[row]} {COLS[col]}"
    if row is not None:
        return f"at the {ROWS[row]}"
    return f"on the {COLS[col]}" if col is not None else ""


def _phrase_words(p, plural=False):
    """The phrase without its determiner: 'small red circle in the top left', 'triangles'."""
    noun = (p.shape or "object") + ("s" if plural else "")
    return " ".join(w for w in (p.size, p.colour, noun, _location_text(p.row, p.col)) if w)


def _phrase_text(p):
    """The phrase with its determiner: "a red circle", "an object", "three squares"."""
    words = _phrase_words(p, plural=p.count is not None)
    det = NUMBERS[p.count] if p.count is not None else ("an" if words[0] in "aeiou" else "a")
    return f"{det} {words}"


def prompt_text(prompt, rng=None):
    """English for a Prompt. With an rng, the wording varies (prefix, "to the left of" / "left of")."""
    parts = [_phrase_text(p) for p in prompt.phrases]
    if prompt.relation is not None:
        rel = prompt.relation
        if rel in ("left of", "right of") and (rng is None or rng.random() < 0.5):
            rel = "to the " + rel
        text = f"{parts[0]} {rel} {parts[1]}"
    else:
        text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if rng is not None and rng.random() < 0.5:
        text = f"{rng.choice(PREFIXES)} {text}"
    return text


_LOCATIONS = {_location_text(r, c): (r, c) for r in (0, 1, None) for c in (0, 1, None)}
_RELATION_RE = re.compile(r"^(.+?) (?:to the )?(left of|right of|above|below) (.+)$")


def _parse_phrase(text, caption):
    """One phrase of the grammar -> Phrase; ValueError naming what was expected."""
    def fail(why):
        raise ValueError(f"{caption!r} is outside the shapes caption grammar: {why} in {text!r}")

    det, *words = text.split() or [""]
    if det in ("a", "an"):
        count = None
    elif det in NUMBERS[2:]:
        count = NUMBERS.index(det)
    else:
        fail(f"expected a phrase starting with a, an, two, three or four, got {det!r}")
    size = words.pop(0) if words and words[0] in SIZES else None
    colour = words.pop(0) if words and words[0] in COLOURS else None
    nouns = [n + ("s" if count else "") for n in SHAPES + ("object",)]
    if not words or words[0] not in nouns:
        fail(f"expected [size] [colour] and one of {', '.join(nouns)}")
    location = " ".join(words[1:])
    if location not in _LOCATIONS:
        fail(f"unknown location {location!r}")
    shape = words[0].removesuffix("s") if count else words[0]
    return Phrase(None if shape == "object" else shape, colour, size, count, *_LOCATIONS[location])


def parse_caption(text):
    """Caption text -> Prompt, for any caption of the grammar in the module docstring."""
    if not isinstance(text, str):
        raise TypeError(f"expected a caption string, got {type(text).__name__}")
    s = " ".join(text.lower().strip().removesuffix(".").split())
    for prefix in PREFIXES:
        if s.startswith(prefix + " "):
            s = s[len(prefix) + 1:]
            break
    if m := _RELATION_RE.match(s):
        return Prompt((_parse_phrase(m[1], text), _parse_phrase(m[3], text)), m[2])
    return Prompt(tuple(_parse_phrase(p, text) for p in re.split(r",? and |, ", s)))


def _related(a, b, relation):
    """Is object a <relation> object b? Compares centres with the REL_MARGIN threshold."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    return {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[relation] > REL_MARGIN


def satisfies(scene, prompt):
    """Is the caption (text or Prompt) true of the scene? Rules in the module docstring."""
    if isinstance(prompt, str):
        prompt = parse_caption(prompt)
    objs = scene.objects
    if prompt.relation is not None:
        pa, pb = prompt.phrases
        return any(a is not b and _related(a, b, prompt.relation)
                   for a in objs if pa.matches(a) for b in objs if pb.matches(b))
    counts = [sum(p.matches(o) for o in objs) for p in prompt.phrases]
    return all(n >= 1 if p.count is None else n == p.count for p, n in zip(prompt.phrases, counts))


def _pairs(scene, keep):
    """Ordered pairs of distinct objects (a, b) of the scene with keep(a, b)."""
    return [(a, b) for a, b in itertools.permutations(scene.objects, 2) if keep(a, b)]


def _usable_categories(scene):
    """The caption categories that have a true caption for this scene (counting needs two alike, ...)."""
    n = len(scene.objects)
    usable = {"single_object": True, "colors": True, "description": n <= 2, "counting": n >= 2,
              "position": n >= 2,  # two objects are always in different cells, so some relation holds
              "two_object": bool(_pairs(scene, lambda a, b: a.shape != b.shape)),
              "color_attr": bool(_pairs(scene, lambda a, b: a.shape != b.shape and a.colour != b.colour))}
    return [c for c in CATEGORIES if usable[c]]


def _caption_prompt(scene, category, rng):
    """A Prompt of one category that is true of the scene (the category must be usable)."""
    objs = scene.objects
    o = rng.choice(objs)
    if category == "single_object":
        return Prompt((Phrase(o.shape),))
    if category == "colors":
        return Prompt((Phrase(o.shape, o.colour),))
    if category == "description":
        return Prompt(tuple(Phrase(o.shape, o.colour, o.size, row=o.row, col=o.col) for o in objs))
    if category == "two_object":
        a, b = rng.choice(_pairs(scene, lambda a, b: a.shape != b.shape))
        return Prompt((Phrase(a.shape), Phrase(b.shape)))
    if category == "color_attr":
        a, b = rng.choice(_pairs(scene, lambda a, b: a.shape != b.shape and a.colour != b.colour))
        return Prompt((Phrase(a.shape, a.colour), Phrase(b.shape, b.colour)))
    if category == "counting":   # any kind of object that occurs 2-4 times, with its exact count
        kinds = Counter(p for o in objs for p in (Phrase(o.shape), Phrase(colour=o.colour),
                                                  Phrase(o.shape, o.colour), Phrase()))
        kind = rng.choice([p for p, n in kinds.items() if n >= 2])
        return Prompt((replace(kind, count=kinds[kind]),))
    if category == "position":
        a, b = rng.sample(objs, 2)
        with_colour = rng.random() < 0.5
        return Prompt((Phrase(a.shape, a.colour if with_colour else None),
                       Phrase(b.shape, b.colour if with_colour else None)),
                      rng.choice([r for r in RELATIONS if _related(a, b, r)]))
    raise ValueError(f"unknown category {category!r}; choose one of {', '.join(CATEGORIES)}")


def caption(scene, rng, category=None):
    """A true caption of the scene -> (text, category). An unusable category (e.g. position for a
    one-object scene) is replaced by a random usable one; the returned category says which."""
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; choose one of {', '.join(CATEGORIES)}")
    usable = _usable_categories(scene)
    if category not in usable:
        category = rng.choice(usable)
    return prompt_text(_caption_prompt(scene, category, rng), rng), category


def _random_prompt(category, rng):
    """A prompt of one category drawn uniformly over its parts; at most 4 objects, so satisfiable."""
    (s1, s2), (c1, c2) = rng.sample(SHAPES, 2), rng.sample(tuple(COLOURS), 2)
    if category == "single_object":
        return Prompt((Phrase(s1),))
    if category == "two_object":
        return Prompt((Phrase(s1), Phrase(s2)))
    if category == "counting":
        return Prompt((Phrase(s1, count=rng.randint(2, 4)),))
    if category == "colors":
        return Prompt((Phrase(s1, c1),))
    if category == "color_attr":
        return Prompt((Phrase(s1, c1), Phrase(s2, c2)))
    if category == "position":
        with_colour = rng.random() < 0.5
        return Prompt((Phrase(s1, c1 if with_colour else None), Phrase(s2, c2 if with_colour else None)),
                      rng.choice(RELATIONS))
    if category == "description":
        return Prompt(tuple(Phrase(rng.choice(SHAPES), rng.choice(tuple(COLOURS)), rng.choice(tuple(SIZES)),
                                   row=c // 2, col=c % 2) for c in sorted(rng.sample(range(4), rng.randint(1, 2)))))
    raise ValueError(f"unknown category {category!r}; choose one of {', '.join(CATEGORIES)}")


def prompts_for_category(category, n, split="test"):
    """A fixed list of n prompts of one category, for GenEval-style evaluation: val and test draw from
    their own seeds (the first four categories have only 12-72 prompts, so both ask most of them)."""
    if split not in ("val", "test"):
        raise ValueError(f"GenEval-style prompts are for val or test, not {split!r}")
    rng = random.Random(f"shapes-prompts/{category}/{split}")
    return [prompt_text(_random_prompt(category, rng), rng) for _ in range(n)]


# -------------------------------------------------------------------------------------------------
# Question/answer pairs

# ways to name one object; (row, col) is its cell, e.g. "object in the top left"
_REFERENCES = {attrs: attrgetter(*attrs) for attrs in (("shape",), ("colour",), ("colour", "shape"),
               ("size", "shape"), ("size", "colour", "shape"), ("row", "col"))}
_VALUES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES)}


def _reference(o, scene, rng, avoid):
    """Words naming object o uniquely in the scene ('red circle', 'object in the top left') without
    the attribute `avoid` (the one the question asks about); None if no such words exist."""
    options = [attrs for attrs, get in _REFERENCES.items() if avoid not in attrs and
               sum(get(x) == get(o) for x in scene.objects) == 1]
    return _phrase_words(Phrase(**{a: getattr(o, a) for a in rng.choice(options)})) if options else None


def qa_pairs(scene, rng):
    """Question/answer pairs about the scene -> list of (question, answer, qtype). One colour, shape,
    count and position question and two existence questions, one "yes" and one "no" (POPE-style
    balance; the "no" names something absent from the image). Answers are short lowercase words."""
    objs, qa = scene.objects, []
    o = rng.choice(objs)   # a cell holds one object, so "the object in the top left" always works
    qa.append((f"what color is the {_reference(o, scene, rng, 'colour')}?", o.colour, "color"))
    o = rng.choice(objs)
    qa.append((f"what shape is the {_reference(o, scene, rng, 'shape')}?", o.shape, "shape"))

    # count some kind of object, present or not, so "zero" is a possible answer
    kind = rng.choice((Phrase(rng.choice(SHAPES)), Phrase(colour=rng.choice(_VALUES["colour"])),
                       Phrase(rng.choice(SHAPES), rng.choice(_VALUES["colour"])), Phrase()))
    n = sum(kind.matches(o) for o in objs)
    qa.append((f"how many {_phrase_words(kind, plural=True)} are there?", NUMBERS[n], "count"))

    # position: name objects without their cell ("row" stands for the location)
    named = [(o, ref) for o in objs if (ref := _reference(o, scene, rng, "row")) is not None]
    if len(named) >= 2 and rng.random() < 0.5:   # a relation, true half of the time
        (a, ref_a), (b, ref_b) = rng.sample(named, 2)
        want = rng.random() < 0.5
        rel = rng.choice([r for r in RELATIONS if _related(a, b, r) == want])
        qa.append((f"is the {ref_a} {rel} the {ref_b}?", "yes" if want else "no", "position"))
    elif named:
        o, ref = rng.choice(named)
        qa.append((f"where is the {ref}?", f"{ROWS[o.row]} {COLS[o.col]}", "position"))

    # existence, by some attributes: "yes" describes a present object, "no" an absent combination.
    # Up to 4 objects never use all 6 colours; shapes alone only work when one is missing.
    kinds = [("colour",), ("colour", "shape"), ("size", "colour", "shape")]
    if len({o.shape for o in objs}) < len(SHAPES):
        kinds.append(("shape",))
    attrs, o = rng.choice(kinds), rng.choice(objs)
    present = Phrase(**{a: getattr(o, a) for a in attrs})
    absent = present
    while any(absent.matches(o) for o in objs):
        absent = Phrase(**{a: rng.choice(_VALUES[a]) for a in attrs})
    qa.append((f"is there {_phrase_text(present)}?", "yes", "exist"))
    qa.append((f"is there {_phrase_text(absent)}?", "no", "exist"))
    return qa


# -------------------------------------------------------------------------------------------------
# Dataset


def held_out_part(scene):
    """"train", "val" or "test": split by a hash of the exact scene (with centres), so no held-out image
    ever appears in train though the world is small (a one-object scene is one of only 144). A tenth
    is held out, hash % 10 == 0, split in two by hash % 20: training data never depends on the halves."""
    exact = tuple((o.shape, o.colour, o.size, o.cx, o.cy) for o in scene.objects)
    bucket = zlib.crc32(repr(exact).encode()) % (2 * TEST_BUCKETS)
    return "test" if bucket == 0 else "val" if bucket == TEST_BUCKETS else "train"


def make_dataset(split="train", n=None, image_size=IMAGE_SIZE, seed=0):
    """n scenes (default 20000 train / 1000 val / 1000 test) with images, 3 captions from different
    categories, QA pairs. Each split has its own seed stream and part of the world (held_out_part)."""
    if split not in DEFAULT_N:
        raise ValueError(f"unknown split {split!r} for shapes; choose train, val or test")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    n = DEFAULT_N[split] if n is None else n
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    rng = random.Random(f"shapes/{split}/{seed}")  # a string seed: the same world on every machine
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    scenes, captions, qa, categories = [], [], [], Counter()
    while len(scenes) < n:
        scene = sample_scene(rng)
        if held_out_part(scene) != split:  # rejection keeps the splits disjoint
            continue
        images[len(scenes)] = render(scene)
        usable = _usable_categories(scene)
        texts = []
        for category in rng.sample(usable, min(CAPTIONS_PER_IMAGE, len(usable))):
            texts.append(prompt_text(_caption_prompt(scene, category, rng), rng))
            categories[category] += 1
        scenes.append(scene)
        captions.append(texts)
        qa.append(qa_pairs(scene, rng))
    info = {"images": n, "image_size": image_size, "seed": seed, "captions_per_image": CAPTIONS_PER_IMAGE,
            "held_out": f"1/{TEST_BUCKETS} of all scenes (by hash), half val, half test",
            "objects_per_image": dict(sorted(Counter(len(s.objects) for s in scenes).items())),
            "caption_categories": dict(categories), "qa_types": dict(Counter(t for q in qa for _, _, t in q))}
    return ImageTextData("shapes", split, _resize_nearest(images, image_size), captions, scenes=scenes, qa=qa,
                         info=info)
