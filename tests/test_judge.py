"""The CIFAR-10 judge and the Frechet distance (evaluation/judge.py): our own yardsticks for generated
images (no Inception weights offline), and the CIFAR-10 evaluation built on them, checked with a
stand-in judge whose answers are known. Run: python -m pytest tests/test_judge.py"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.dataset import ImageTextData
from evaluation import evaluate, judge as judge_module
from evaluation.judge import frechet_distance, judge_outputs, split_test, train_judge
from test_datasets import write_cifar


class OneClassJudge(torch.nn.Module):
    """A stand-in judge with known answers: it calls every image `label`, and its features are the
    image's mean colour."""

    def __init__(self, label):
        super().__init__()
        self.label, self.unused = label, torch.nn.Parameter(torch.zeros(1))  # the parameters give the device

    def features(self, x):
        return x.mean((2, 3))  # (B, 3)

    def head(self, features):
        return F.one_hot(torch.full((len(features),), self.label), 10).float()


def cifar_labels(n, first=0):
    """The labels test_datasets.write_cifar gives a batch of n images whose first image is `first`."""
    return np.array([(3 * (first + i)) % 10 for i in range(n)])


def two_colour_classes(n, seed):
    """n noisy 16x16 images: class 0 reddish, class 1 bluish, the kind of difference a judge must see."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    base = np.where(labels[:, None, None, None] == 0, [200, 60, 60], [60, 60, 200])       # (n, 1, 1, 3)
    images = base + rng.normal(0, 40, (n, 16, 16, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def test_the_judge_learns_to_separate_two_classes_it_has_not_seen():
    images, labels = two_colour_classes(256, seed=0)
    judge = train_judge(images, labels, n_classes=2, device=torch.device("cpu"), epochs=3, batch_size=32)
    held_out, truth = two_colour_classes(64, seed=1)
    features, predicted = judge_outputs(judge, held_out)
    assert features.shape == (64, 128) and features.dtype == torch.float64
    assert (predicted == torch.as_tensor(truth)).double().mean() >= 0.95


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_with_a_shift():
    a = torch.randn(500, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(frechet_distance(a, a)) < 1e-8
    # a mean shift of s in every one of the 8 dimensions adds exactly ||shift||^2 = 8 s^2
    assert frechet_distance(a, a + 0.5) == pytest.approx(8 * 0.25, abs=1e-8)
    shifts = [frechet_distance(a, a + s) for s in (0.1, 0.5, 1.0)]
    assert shifts == sorted(shifts) and shifts[0] > 0
    assert frechet_distance(a, 2 * a) > 1  # a wider spread is a different distribution too
    with pytest.raises(ValueError, match="two images"):
        frechet_distance(a[:1], a)


def test_frechet_distance_matches_the_formula_for_unrelated_covariances():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(400, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    b = torch.randn(300, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64) + 1
    ca, cb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    # Tr (Ca Cb)^(1/2) = the sum of the square roots of Ca Cb's (real, non-negative) eigenvalues
    cross = np.sqrt(np.clip(np.linalg.eigvals(ca @ cb).real, 0, None)).sum()
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(ca) + np.trace(cb) - 2 * cross
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)  # symmetric


def test_the_test_batch_splits_into_the_judges_half_a_validation_and_a_test_quarter():
    ds = ImageTextData("cifar10", "test", np.zeros((8, 2, 2, 3), np.uint8), [[str(i)] for i in range(8)],
                       labels=np.arange(8), class_names=[str(i) for i in range(8)])
    parts = split_test(ds)
    assert {k: v.labels.tolist() for k, v in parts.items()} == {"judge": [0, 1, 2, 3], "val": [4, 5], "test": [6, 7]}
    assert [c for p in parts.values() for c in p.captions] == ds.captions  # captions follow their images


def test_evaluate_judge_trains_once_then_loads_from_its_cache(tmp_path, monkeypatch, capsys):
    write_cifar(tmp_path, ["data_batch_1", "test_batch"], n=16)
    argv = ["judge", "--data-dir", str(tmp_path), "--cache-dir", str(tmp_path / "judges"), "--device", "cpu"]
    monkeypatch.setattr(judge_module, "JUDGE_EPOCHS", 1)
    real_train = judge_module.train_judge
    first = evaluate.main(argv)
    assert first["train_images"] == 8 and first["test_images"] == 4  # the test batch's first half, last quarter
    assert first["trained_on"].startswith("the first half of the CIFAR-10 test split")
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == first
    monkeypatch.setattr(judge_module, "train_judge", lambda *a, **k: pytest.fail("trained again"))
    again = evaluate.main(argv)  # the same data: the cached judge, the same figures
    assert again["test_accuracy"] == first["test_accuracy"]
    assert again["frechet_train_vs_test"] == first["frechet_train_vs_test"]
    trained = []
    monkeypatch.setattr(judge_module, "train_judge", lambda *a, **k: trained.append(len(a[0])) or real_train(*a, **k))
    evaluate.main(argv + ["--limit", "4"])  # other training data: another judge
    assert trained == [4]
    monkeypatch.setattr(judge_module, "load_or_train_judge", lambda *a: OneClassJudge(3))
    known = evaluate.main(argv)  # a judge that calls everything class 3: its accuracy is class 3's share
    assert known["test_accuracy"] == round(float((cifar_labels(4, first=28) == 3).mean()), 4)  # the last quarter


def test_cifar10_evaluation_scores_known_answers_exactly(tmp_path, monkeypatch):
    """With the true class as every answer and a judge that calls every image an airplane, each figure
    has a known value: classification 1, samples 1/10 (equal numbers per class), reconstructions and
    test images the share of airplanes in the test batch's last quarter (the judge trains on its first
    half: images Show-o never reads, never among those it is compared with); --split val compares
    with the third quarter instead, and draws other samples."""
    import train
    from PIL import Image
    data_dir = tmp_path / "data"
    write_cifar(data_dir, ["data_batch_1", "test_batch"], n=80)  # quarters of 20 = the 20 samples
    common = ["--dataset", "cifar10", "--data-dir", str(data_dir), "--batch-size", "16", "--warmup-steps", "1",
              "--max-steps", "2", "--eval-every", "2", "--device", "cpu"]
    tok = train.main(["tokenizer"] + common + ["--image-size", "16", "--channels", "8,16", "--codebook-bits", "5",
                                               "--eval-images", "16", "--bpe-vocab", "300", "--out", str(tmp_path / "run")])
    ckpt = train.main(["showo"] + common + ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--eval-rows", "16",
                                            "--tokenizer", tok, "--out", str(tmp_path / "run" / "stage1")])
    judge_seen = []  # the labels of the images the judge would have trained on
    monkeypatch.setattr(evaluate, "load_or_train_judge", lambda ds, *a: judge_seen.append(ds.labels.tolist())
                        or OneClassJudge(0))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    truth = [names[label] for label in cifar_labels(20, first=80 + 60)]  # the test quarter's classes
    monkeypatch.setattr(evaluate, "answer", lambda pipe, codes, questions, *a, **k: truth[:len(questions)])
    compared, real_distance = [], evaluate.frechet_distance
    monkeypatch.setattr(evaluate, "frechet_distance", lambda a, b: compared.append(len(a)) or real_distance(a, b))
    result = evaluate.evaluate_showo(ckpt, "cifar10", data_dir=str(data_dir), prompts=2, steps=2, batch=16,
                                     out_dir=str(tmp_path / "eval"))
    assert compared == [20, 20, 20]  # samples, reconstructions and training images: as many of each
    assert judge_seen == [cifar_labels(40, first=80).tolist()]  # the test batch's first half, nothing else
    assert result["classification_accuracy"] == 1.0 and result["split"] == "test"
    judge, airplanes = result["judge"], round(float((cifar_labels(20, first=80 + 60) == 0).mean()), 4)
    assert judge["samples_per_class"] == 2 and judge["sample_accuracy"] == 0.1
    assert judge["test_accuracy"] == judge["reconstruction_accuracy"] == airplanes
    # real training images lie far closer to the test images than an untrained model's samples
    assert 0 <= judge["frechet_training_images"] < judge["frechet"]
    grid = Image.open(tmp_path / "eval" / "samples.png")  # 16 px images drawn 4x: 64 px tiles
    assert grid.height >= 10 * 64 and grid.width < 3 * 64 + 20  # ten rows (the classes) of two samples
    val = evaluate.evaluate_showo(ckpt, "cifar10", data_dir=str(data_dir), split="val", prompts=2, steps=2, batch=16)
    assert val["judge"]["test_accuracy"] == round(float((cifar_labels(20, first=80 + 40) == 0).mean()), 4)
    assert val["judge"]["frechet"] != judge["frechet"]  # other samples, compared with other images
