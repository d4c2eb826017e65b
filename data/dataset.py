"""The one container every reader fills (a module of its own: the readers import it, data.load imports them)."""
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
