"""
CIFAR-10 reader: the official "python version" files -> ImageTextData (32x32 photos, 10 classes).

    from data.cifar10 import load_cifar10
    ds = load_cifar10("../shared/data", split="test")    # a dir holding cifar-10-batches-py/, or that dir

Format (https://www.cs.toronto.edu/~kriz/cifar.html): cifar-10-batches-py/ holds data_batch_1..5
(the training split, 10,000 images each), test_batch (10,000) and batches.meta (label_names). Each
is a Python-2 pickle of a dict whose "data" is a uint8 array (10000, 3072): per row the red 32x32
plane, then green, then blue, each row-major; "labels" is a list of 10,000 ints in 0..9. Read under
Python 3 the keys come back as bytes or str depending on how the file was written; both work.
The training split uses whichever data_batch_* files are present and says which.

CIFAR-10 has no captions, so each image gets a few made from its class name ("a photo of a cat",
"a picture of an airplane", ...): enough text to condition a small model on the class.

Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.
"""
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from data.dataset import ImageTextData
from data.folder import square_rgb
from data.shapes import PREFIXES

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
CAPTION_TEMPLATES = tuple(prefix + " {}" for prefix in PREFIXES)  # the shapes world's prefixes
CIFAR_QUESTION = "what is this?"  # stage 3 asks it of every image; the answer is the class name


class ArrayUnpickler(pickle.Unpickler):
    """Unpickling can run any code a file names; a CIFAR batch only needs numpy's array rebuilders."""
    SAFE = {("numpy", "ndarray"), ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),  # np.int64 labels
            ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
            ("_codecs", "encode")}  # how Python 3 writes bytes at protocol 2

    def find_class(self, module, name):
        if (module, name) not in self.SAFE:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path, expected):
    """One CIFAR pickle -> dict with str keys. Any damage becomes a ValueError naming the file."""
    with open(path, "rb") as f:
        try:
            # encoding="bytes": Python-2 str (keys, names) arrive as bytes, numpy data as raw bytes
            obj = ArrayUnpickler(f, encoding="bytes").load()
        # truncated or garbage bytes, a forbidden class, or numpy rejecting a damaged array header
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: expected a CIFAR-10 pickle with {expected} ({err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a CIFAR-10 pickle with {expected}, got a {type(obj).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in obj.items()}


def read_batch(path, n_classes):
    """One data/test batch -> images (N, 32, 32, 3) uint8 and labels (N,) int64, shapes checked."""
    batch = read_pickle(path, expected="keys data/labels")
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: expected 'data' to be a uint8 array of shape (N, 3072), "
                         f"got {getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: expected 'labels' to be a list of ints ({err})") from err
    if labels.shape != (len(data),) or labels.min(initial=0) < 0 or labels.max(initial=0) >= n_classes:
        raise ValueError(f"{path}: expected {len(data)} labels in 0..{n_classes - 1}, got shape "
                         f"{labels.shape}, range {labels.min(initial=0)}..{labels.max(initial=0)}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 3072) -> (N, C, H, W) -> (N, H, W, C)
    return np.ascontiguousarray(images), labels


def read_class_names(path):
    """batches.meta -> the 10 class names as str."""
    names = read_pickle(path, expected="key label_names").get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise ValueError(f"{path}: expected 'label_names' to be a list of 10 class names, got {names!r}")
    return [name.decode("latin1") if isinstance(name, bytes) else str(name) for name in names]


def class_captions(class_name):
    """'airplane' -> ['a photo of an airplane', 'a picture of an airplane', ...]."""
    article = "an" if class_name[0] in "aeiou" else "a"  # "an airplane", "a bird"
    return [template.format(f"{article} {class_name}") for template in CAPTION_TEMPLATES]


def find_batches_dir(data_dir):
    """Accept the cifar-10-batches-py directory itself or a directory that contains it."""
    if data_dir is None:
        raise ValueError(f"load_cifar10 needs data_dir (the folder holding {BATCHES_DIR}/, the official "
                         "'python version' from https://www.cs.toronto.edu/~kriz/cifar.html)")
    root = Path(data_dir)
    if (root / BATCHES_DIR).is_dir():
        return root / BATCHES_DIR
    if any((root / name).is_file() for name in [*TRAIN_BATCHES, TEST_BATCH, "batches.meta"]):
        return root
    raise FileNotFoundError(f"no CIFAR-10 data in {root}: expected {root / BATCHES_DIR}/ with data_batch_1..5, "
                            "test_batch and batches.meta (the 'python version' of https://www.cs.toronto.edu/~kriz/cifar.html)")


def load_cifar10(data_dir, split="train", limit=None, image_size=32):
    """Load the CIFAR-10 train (every data_batch_* present) or test split, optionally resized."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown CIFAR-10 split {split!r}; choose train or test")
    batches_dir = find_batches_dir(data_dir)
    if not (batches_dir / "batches.meta").is_file():
        raise FileNotFoundError(f"{batches_dir / 'batches.meta'} not found (it holds the class names)")
    class_names = read_class_names(batches_dir / "batches.meta")

    # ../shared/data holds data_batch_1 only: train on what is there and say so, rather than refuse
    wanted = TRAIN_BATCHES if split == "train" else [TEST_BATCH]
    found = [name for name in wanted if (batches_dir / name).is_file()]
    if not found:
        raise FileNotFoundError(f"no {split} batch in {batches_dir}: expected {' or '.join(wanted)}")
    used, images, labels = [], [], []
    for name in found:
        if limit is not None and sum(map(len, labels)) >= limit:  # --limit: read no more files than needed
            break
        batch_images, batch_labels = read_batch(batches_dir / name, len(class_names))
        images.append(batch_images)
        labels.append(batch_labels)
        used.append(name)
    images, labels = np.concatenate(images)[:limit], np.concatenate(labels)[:limit]
    missing = [name for name in wanted if name not in found]
    print(f"cifar10 {split}: {len(images)} images from {', '.join(used)}"
          + (f" ({', '.join(missing)} not found)" if missing else ""))

    if image_size != 32:  # the one resizing path every dataset shares (data/folder.py)
        images = np.stack([square_rgb(Image.fromarray(image), image_size) for image in images])
    # every image of a class shares its class's captions: the text says the class and nothing more
    captions_per_class = [class_captions(name) for name in class_names]
    return ImageTextData(
        name="cifar10", split=split, images=images,
        captions=[list(captions_per_class[label]) for label in labels],
        labels=labels, class_names=class_names,
        info={"source": str(batches_dir), "batches": used, "missing_batches": missing})
