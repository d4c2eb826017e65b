"""
The one container every dataset fills: images as one uint8 array at the training resolution, and
the text that goes with them. Its own module so that the readers (shapes.py, cifar10.py, ...) and
the package's `load` import it without importing each other.
"""
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageTextData:
    name: str                          # "shapes", "cifar10", "coco", "folder"
    split: str                         # "train" / "test" / "val" / "all"
    images: np.ndarray                 # (N, H, W, 3) uint8, RGB
    captions: list                     # N lists of strings (one or more captions per image)
    labels: np.ndarray | None = None   # (N,) int64 class ids (cifar10), else None
    class_names: list | None = None    # label id -> name (cifar10)
    scenes: list | None = None         # N ground-truth scenes (shapes world only)
    qa: list | None = None             # N lists of (question, answer, question_type) (shapes only)
    info: dict = field(default_factory=dict)  # what was read / skipped, for the user to see

    def __len__(self):
        return len(self.images)
