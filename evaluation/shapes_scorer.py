"""
The shapes world's scorer: reads a scene back from an image by plain image analysis (no learned
model), so that a generated image can be judged against its prompt (the GenEval-style table of
evaluate.py) and a tokenizer's reconstruction against its original.

    from evaluation.shapes_scorer import detect, score
    detect(image)                       # -> Scene
    score(image, "two red circles")     # -> bool

detect(image), step by step:
  1. Resize to 32x32 (box filter) if needed.
  2. Label pixels. Blur mixes an object's colour with the background, so an edge pixel lies on the
     line from the background colour to the object colour; its "cover" of colour c is how far along
     that line it sits (0 = background, 1 = c). A pixel is labelled c when its cover is >= MIN_COVER
     (0.5: the outline of a blurred shape stays where it was drawn) and it lies within MAX_OFF_LINE of
     the line (the nearest line wins); every other pixel is background or rejected.
  3. 8-connected components per colour; components under MIN_PIXELS pixels are noise.
  4. Shape, size and centre by template matching on the soft mask (the cover of the component's
     colour on the component and a 2-px ring around it). Blur moves colour around but keeps its total
     amount (mass) and its centre of mass, so each ideal shape is drawn with the object's mass at its
     centre of mass, sharp and 3x3-box-blurred, and the best soft IoU (sum of min / sum of max) wins;
     below MIN_SHAPE_IOU the object is "unknown" (it only matches the noun "object"). The matched
     side gives the size (>= SIZE_SPLIT px is large), the matched box's centre the centre and cell.
     Matching at the centre of mass is what keeps the apex of a small blurred triangle, so the
     scorer reads box-blurred, JPEG-50 and blurred + noisy + JPEG-75 images (~22.5 dB) correctly
     (tests/test_shapes.py): degraded far more than any tokenizer's reconstructions.
score(image, caption) = the detected scene is a valid scene of the world (every object a known
shape, one object per cell) and satisfies the caption; score(image, scene) = the detected objects
equal the scene's as a multiset of (shape, colour, size, cell). The validity rule keeps a generator
from passing "a circle" with a canvas of coloured noise that happens to hold a round blob.
"""
from functools import lru_cache

import numpy as np
from PIL import Image

from data.shapes import BACKGROUND, CELL, COLOURS, IMAGE_SIZE, SHAPES, Obj, Scene, satisfies, shape_mask

# detection thresholds (RGB units 0-255, pixels), checked on degraded images in tests/test_shapes.py
MIN_COVER = 0.5                     # a pixel is colour c if at least half way from background to c
MAX_OFF_LINE = 80                   # ... and this close to that line (JPEG's chroma errors need over 40)
MIN_PIXELS = 8                      # smaller components are noise (a blurred small triangle has ~18)
SIZE_SPLIT = 9                      # matched side >= 9 px is "large" (drawn: 7 vs 11)
MIN_SHAPE_IOU = 0.5                 # below: "unknown" (real shapes in JPEG-50 images score >= 0.63)

_PALETTE = np.array(list(COLOURS.values()), np.float32)            # (K, 3)
_TO_COLOUR = _PALETTE - np.array(BACKGROUND, np.float32)           # (K, 3) background -> colour k
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _as_image32(image):
    """PIL image or (H, W, 3) uint8 array -> (32, 32, 3) uint8 array (box-filter resize if needed)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} array of shape {image.shape}")
    if image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        image = np.asarray(Image.fromarray(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX))
    return image


def _classify_pixels(image):
    """(32, 32, 3) uint8 -> labels (32, 32) int: palette index per pixel, -1 for background or rejected;
    and cover (32, 32, K) float: how far each pixel is along the line from the background to colour k."""
    v = image.astype(np.float32) - np.array(BACKGROUND, np.float32)           # (H, W, 3)
    cover = v @ _TO_COLOUR.T / (_TO_COLOUR ** 2).sum(1)                        # (H, W, K)
    off_line = np.linalg.norm(v[:, :, None, :] - cover[..., None] * _TO_COLOUR, axis=-1)  # (H, W, K)
    off_line[cover < MIN_COVER] = np.inf
    labels = np.where(off_line.min(-1) <= MAX_OFF_LINE, off_line.argmin(-1), -1)
    return labels, cover


def _shifted(a, fill):
    """The 8 neighbours of every pixel: a list of arrays shaped like a, padded with fill at the border."""
    h, w = a.shape
    p = np.pad(a, 1, constant_values=fill)
    return [p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in _NEIGHBOURS]


def _components(labels):
    """8-connected components of equal labels >= 0, by propagating the smallest pixel index through
    each component until nothing changes -> list of (label, bool mask)."""
    h, w = labels.shape
    ids = np.where(labels >= 0, np.arange(h * w).reshape(h, w), h * w)
    same = [n == labels for n in _shifted(labels, -1)]
    while True:
        new = ids
        for is_same, neighbour_ids in zip(same, _shifted(ids, h * w)):
            new = np.where(is_same, np.minimum(new, neighbour_ids), new)
        if (new == ids).all():
            break
        ids = new
    return [(int(labels.flat[u]), ids == u) for u in np.unique(ids[labels >= 0])]


@lru_cache(maxsize=None)
def _template(shape, side):
    """An ideal shape to match against -> ((sharp, blurred), area, cy, cx): the mask padded by 2 px, the
    same after a 3x3 box blur (a tokenizer's typical softening), its area and centre of mass (padded frame)."""
    sharp = np.pad(shape_mask(shape, side, side).astype(np.float32), 2)
    blurred = (sharp + sum(_shifted(sharp, 0))) / 9
    ys, xs = np.nonzero(sharp)
    return (sharp, blurred), len(ys), ys.mean(), xs.mean()


def _fit_shape(soft):
    """Match a soft object mask (32, 32) against every ideal shape with the same mass, placed at the same
    centre of mass (blur moves colour around but keeps both), sharp or blurred -> the best
    (soft IoU, shape, side, cy, cx), (cy, cx) being the centre of the matched shape's box."""
    mass = soft.sum()
    ys, xs = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    my, mx = (soft * ys).sum() / mass, (soft * xs).sum() / mass
    pad = CELL + 2                  # templates may hang off the image edge; padding keeps slices in range
    padded = np.pad(soft, pad)
    best = (-1.0,)
    for shape in SHAPES:
        side = min(range(3, CELL), key=lambda s: abs(_template(shape, s)[1] - mass))
        templates, _, ty, tx = _template(shape, side)
        for top in {int(np.floor(my - ty)), int(np.ceil(my - ty))}:      # the 4 pixel placements
            for left in {int(np.floor(mx - tx)), int(np.ceil(mx - tx))}:  # nearest the centre of mass
                window = padded[pad + top:pad + top + side + 4, pad + left:pad + left + side + 4]
                for t in templates:
                    iou = np.minimum(window, t).sum() / (mass - window.sum() + np.maximum(window, t).sum())
                    if iou > best[0]:
                        best = (iou, shape, side, top + 2 + (side - 1) / 2, left + 2 + (side - 1) / 2)
    return best


def detect(image):
    """Read the scene back from an image (any size; resized to 32x32). Rules in the module docstring."""
    labels, cover = _classify_pixels(_as_image32(image))
    objects = []
    for k, pixels in _components(labels):
        if pixels.sum() < MIN_PIXELS:
            continue
        # the soft mask: cover of colour k on the component and a 2-px ring around it (the blurred edge;
        # objects in the world are >= 3 px apart, so the ring never reaches a neighbour)
        ring = pixels
        for _ in range(2):
            ring = ring | np.any(_shifted(ring, False), axis=0)
        iou, shape, side, cy, cx = _fit_shape(np.where(ring, np.clip(cover[..., k], 0, 1), 0))
        objects.append(Obj(shape if iou >= MIN_SHAPE_IOU else "unknown", tuple(COLOURS)[k],
                           "large" if side >= SIZE_SPLIT else "small",
                           int(cy >= IMAGE_SIZE / 2), int(cx >= IMAGE_SIZE / 2), float(cx), float(cy)))
    return Scene(tuple(sorted(objects, key=lambda o: (o.row, o.col, o.cx, o.cy))))


def is_valid_scene(scene):
    """Could the world have drawn it? Every object a known shape, at most one object per cell."""
    cells = [(o.row, o.col) for o in scene.objects]
    return all(o.shape != "unknown" for o in scene.objects) and len(set(cells)) == len(cells)


def score(image, target):
    """Does the image pass? target: a caption (text or Prompt) -> the detected scene is valid and
    satisfies it; a Scene -> the detected scene has exactly its objects (shape, colour, size, cell)."""
    found = detect(image)
    if isinstance(target, Scene):
        return found.key() == target.key()
    return is_valid_scene(found) and satisfies(found, target)


