"""
The CIFAR-10 judge: an independent classifier trained here (no downloaded weights), and the Frechet
distance in its feature space. Our own yardsticks in the spirit of FID and the Classification
Accuracy Score: FID needs Inception weights, which an offline machine cannot fetch, so each figure is
printed beside references measured in the same feature space.

    python -m evaluation judge --data-dir ../shared/data      # about 4 minutes once, then cached
"""
import hashlib
import os
import time
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
from model import pick_device
from tokenizer import images_to_tensor, save_checkpoint

JUDGE_EPOCHS = 12  # about 4 minutes on a 2-core CPU for one data_batch (10,000 images)
JUDGE_CACHE = os.path.join("out", "judges")  # one judge per training set, shared by every run


def batched(items, size):
    """Consecutive slices of at most `size` items."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


def conv_bn_relu(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class Judge(nn.Module):
    """A small VGG-style CNN: three stages of two 3x3 convolutions (width w, 2w, 4w), each halving
    the resolution, then a global average pool (the features) and a linear classifier."""

    def __init__(self, n_classes=10, width=32):
        super().__init__()
        w = width
        self.body = nn.Sequential(conv_bn_relu(3, w), conv_bn_relu(w, w), nn.MaxPool2d(2),
                                  conv_bn_relu(w, 2 * w), conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2),
                                  conv_bn_relu(2 * w, 4 * w), conv_bn_relu(4 * w, 4 * w), nn.MaxPool2d(2))
        self.head = nn.Linear(4 * w, n_classes)

    def features(self, x):
        """(B, 3, H, W) in [-1, 1] -> (B, 4w): the penultimate layer, where the Frechet distance is taken."""
        return self.body(x).mean((2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def train_judge(images, labels, n_classes, device, epochs=JUDGE_EPOCHS, seed=0, batch_size=128):
    """A Judge trained on uint8 images (N, H, W, 3) with int labels (N,): SGD with Nesterov momentum
    and a one-cycle learning rate, label smoothing 0.1, random flips and 4-pixel shifts (reflected
    padding): on 10,000 CIFAR-10 images that reaches about 0.72-0.75 test accuracy (README)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the initial weights
    judge = Judge(n_classes).to(device)
    x_all, y_all = images_to_tensor(images), torch.as_tensor(labels).long()  # (N, 3, H, W) in [-1, 1]
    batch_size = min(batch_size, len(x_all))  # a tiny --limit still makes one step per epoch
    steps_per_epoch = len(x_all) // batch_size
    optimizer = torch.optim.SGD(judge.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=epochs * steps_per_epoch, pct_start=0.25)
    judge.train()
    for _ in tqdm(range(epochs), desc="judge", dynamic_ncols=True):
        order = torch.randperm(len(x_all), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            x = x_all[idx]
            flip = torch.rand(len(x), generator=gen) < 0.5                      # per image
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            dy, dx = torch.randint(0, 9, (2,), generator=gen).tolist()          # one shift per batch
            x = F.pad(x, (4, 4, 4, 4), mode="reflect")[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
            loss = F.cross_entropy(judge(x.to(device)), y_all[idx].to(device), label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return judge.eval()


# The judge must never have seen the images it is compared with, nor the images Show-o trained on (a
# sample that reproduces a training image would be judged by a classifier that fitted it): it trains
# on a fixed half of the test split, which Show-o never reads. Figures are measured on the other half:
# its first quarter (val) chooses settings such as the guidance scale, its second (test) is reported.
JUDGE_TRAINED_ON = "the first half of the CIFAR-10 test split, which Show-o never reads"
REFERENCE = {"val": "the third quarter of the CIFAR-10 test split (val), which neither the judge nor Show-o saw",
             "test": "the last quarter of the CIFAR-10 test split (test), which neither the judge nor Show-o saw"}


def subset(ds, s):
    """The images of a labelled dataset that the slice s picks, with their labels and captions."""
    return replace(ds, images=ds.images[s], labels=ds.labels[s], captions=ds.captions[s])


def split_test(test_ds):
    """The full test split -> {"judge": its first half, "val": its third quarter, "test": its last}."""
    n = len(test_ds)
    return dict(judge=subset(test_ds, slice(0, n // 2)), val=subset(test_ds, slice(n // 2, 3 * n // 4)),
                test=subset(test_ds, slice(3 * n // 4, n)))


def load_or_train_judge(ds, cache_dir, device):
    """The judge of a set of labelled images, cached under cache_dir by a digest of its images and
    labels (other images get another judge)."""
    digest = hashlib.sha256(ds.images.tobytes() + ds.labels.tobytes()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"judge-{ds.name}-{len(ds)}-{JUDGE_EPOCHS}-{digest}.pt")
    os.makedirs(cache_dir, exist_ok=True)  # an unwritable folder fails now, not after the training
    judge = Judge(len(ds.class_names))
    if os.path.exists(path):
        try:
            judge.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return judge.to(device).eval()
        except (RuntimeError, ValueError, EOFError) as e:  # damaged, or a judge of another design
            print(f"{path} does not load ({type(e).__name__}); training the judge again")
    judge = train_judge(ds.images, ds.labels, len(ds.class_names), device, epochs=JUDGE_EPOCHS)
    save_checkpoint(judge.state_dict(), path)  # a crash never leaves half a judge to be loaded
    return judge


@torch.no_grad()
def judge_outputs(judge, images, batch_size=500):
    """uint8 images (N, H, W, 3) -> (features (N, 4w) float64, predicted classes (N,))."""
    device = next(judge.parameters()).device
    features, predicted = [], []
    for chunk in batched(images, batch_size):
        f = judge.features(images_to_tensor(chunk).to(device))
        features.append(f.double().cpu())
        predicted.append(judge.head(f).argmax(1).cpu())
    return torch.cat(features), torch.cat(predicted)


def accuracy(predicted, target):
    """The share of predicted classes (N,) equal to the target classes (N,), to 4 digits."""
    return round(float((predicted == target).double().mean()), 4)


def frechet_distance(a, b):
    """Frechet distance between Gaussians fitted to two feature sets (N, D) and (M, D):
    ||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)), FID's formula in another feature space.
    Tr (C_a C_b)^(1/2) = Tr (S C_b S)^(1/2) with S = C_a^(1/2): a symmetric matrix, so two eigh
    calls in float64 give it, with no general matrix square root."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if min(len(a), len(b)) < 2:
        raise ValueError("a Frechet distance needs at least two images in each set (a covariance)")
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)                              # (D, D) each
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T       # C_a^(1/2)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def evaluate_judge(data_dir, device="auto", limit=None, cache_dir=JUDGE_CACHE):
    """`python -m evaluation judge`: the judge of the test split's first half (at most `limit` of it;
    cached in out/judges/: the data folder may be read-only), its accuracy on the last quarter (test),
    and the Frechet floor: training images, which the judge never saw, against that quarter in its
    feature space (what a perfect generator would score)."""
    device = pick_device(device)
    parts = split_test(data.load("cifar10", "test", data_dir))
    judge_ds, reference = subset(parts["judge"], slice(limit)), parts["test"]
    train_ds = data.load("cifar10", "train", data_dir, limit=len(reference))
    t0 = time.time()
    judge = load_or_train_judge(judge_ds, cache_dir, device)
    seconds = time.time() - t0
    reference_features, predicted = judge_outputs(judge, reference.images)
    train_features, _ = judge_outputs(judge, train_ds.images)
    return dict(test_accuracy=accuracy(predicted, torch.as_tensor(reference.labels)),
                frechet_train_vs_test=round(frechet_distance(train_features, reference_features), 3),
                trained_on=JUDGE_TRAINED_ON, train_images=len(judge_ds), reference=REFERENCE["test"],
                test_images=len(reference), epochs=JUDGE_EPOCHS, train_or_load_seconds=round(seconds, 1))


