"""
Tests for the real-data readers: data/cifar10.py, data/coco.py, data/folder.py.

    python -m pytest -q tests/test_datasets.py

Most tests write tiny files in the official layouts to tmp_path, so they run anywhere in a second or
two; the ones on the real data in ../shared/data (next to the repo) skip when it is absent.
"""
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import load
from data.cifar10 import load_cifar10
from data.coco import load_coco
from data.folder import load_folder, read_image

SHARED = Path(__file__).resolve().parents[1] / "../shared/data"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# ---------------------------------------------------------------------------------------------- CIFAR-10

def pixel_value(image_index, channel, row, col):
    """The value our fake CIFAR files hold at each position: every pixel differs from its neighbours."""
    return (7 * image_index + 1024 * channel + 32 * row + col) % 251


def write_cifar(root, batch_names, bytes_keys=True, protocol=2, n=4):
    """A tiny cifar-10-batches-py/ in the official layout, n images per batch; returns its path."""
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)  # real files give bytes keys
    batches_dir = root / "cifar-10-batches-py"
    batches_dir.mkdir(parents=True)
    meta = {key("num_cases_per_batch"): n, key("label_names"): [key(c) for c in CLASS_NAMES], key("num_vis"): 3072}
    (batches_dir / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    for b, name in enumerate(batch_names):
        first = b * n  # image indices continue across batches
        data = np.array([[pixel_value(first + i, j // 1024, j % 1024 // 32, j % 32) for j in range(3072)]
                         for i in range(n)], dtype=np.uint8)  # (n, 3072): R plane, G plane, B plane
        batch = {key("batch_label"): key(name), key("labels"): [(3 * (first + i)) % 10 for i in range(n)],
                 key("data"): data, key("filenames"): [key(f"img_{first + i}.png") for i in range(n)]}
        (batches_dir / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return batches_dir


@pytest.mark.parametrize("bytes_keys, protocol", [(True, 2), (False, 5)])
def test_cifar_pixel_layout_labels_and_captions(tmp_path, bytes_keys, protocol):
    write_cifar(tmp_path, ["test_batch"], bytes_keys, protocol)
    ds = load_cifar10(tmp_path, split="test")
    assert ds.images.shape == (4, 32, 32, 3) and ds.images.dtype == np.uint8
    # the byte at data[i, channel*1024 + row*32 + col] must land at images[i, row, col, channel]
    assert ds.images[1, 5, 7, 2] == pixel_value(1, channel=2, row=5, col=7)
    i, row, col, channel = np.indices(ds.images.shape)
    assert np.array_equal(ds.images, pixel_value(i, channel, row, col))
    assert ds.labels.tolist() == [0, 3, 6, 9] and ds.class_names == CLASS_NAMES
    assert ds.captions[0][0] == "a photo of an airplane" and ds.captions[1][0] == "a photo of a cat"
    assert "a picture of an airplane" in ds.captions[0] and all(len(c) >= 2 for c in ds.captions)


def test_cifar_train_uses_the_batches_present_and_says_so(tmp_path, capsys):
    batches_dir = write_cifar(tmp_path, ["data_batch_1", "data_batch_3", "test_batch"])
    ds = load_cifar10(batches_dir)  # the batches dir itself works as well as its parent
    assert len(ds) == 8 and ds.info["batches"] == ["data_batch_1", "data_batch_3"]
    assert ds.info["missing_batches"] == ["data_batch_2", "data_batch_4", "data_batch_5"]
    assert "data_batch_1, data_batch_3" in capsys.readouterr().out
    assert ds.images[4, 0, 0, 0] == pixel_value(4, 0, 0, 0)  # second batch follows the first
    assert load_cifar10(tmp_path, limit=3).info["batches"] == ["data_batch_1"]  # no need to read more
    assert len(load_cifar10(tmp_path, limit=5)) == 5


def test_cifar_resize_keeps_the_picture(tmp_path):
    write_cifar(tmp_path, ["test_batch"])
    small, full = load_cifar10(tmp_path, split="test", image_size=16), load_cifar10(tmp_path, split="test")
    assert small.images.shape == (4, 16, 16, 3) and small.images.dtype == np.uint8
    # downsampling averages: the mean colour of each image barely moves
    assert np.allclose(small.images.mean(axis=(1, 2)), full.images.mean(axis=(1, 2)), atol=3)


def test_cifar_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path / "nowhere")
    batches_dir = write_cifar(tmp_path / "only_train", ["data_batch_1"])
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_cifar10(batches_dir, split="test")
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_cifar10(write_cifar(tmp_path / "only_test", ["test_batch"]), split="train")
    (batches_dir / "batches.meta").unlink()
    with pytest.raises(FileNotFoundError, match="batches.meta"):
        load_cifar10(batches_dir)


class WouldRunCode:
    """A pickle that calls os.mkdir when loaded: a CIFAR reader must refuse it, not run it."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "a list", "runs code", "wrong shape", "bad label"])
def test_cifar_damaged_batch_gives_an_error_naming_the_file(tmp_path, damage):
    batches_dir = write_cifar(tmp_path, ["test_batch"])
    path, marker = batches_dir / "test_batch", tmp_path / "code_ran"
    zeros = np.zeros((4, 3072), np.uint8)
    path.write_bytes({
        "truncated": path.read_bytes()[:5000],
        "garbage": b"\x89PNG this is not a pickle",
        "a list": pickle.dumps([1, 2, 3]),
        "runs code": pickle.dumps({"data": WouldRunCode(str(marker)), "labels": []}),
        "wrong shape": pickle.dumps({"data": zeros[:, :3000], "labels": [0, 1, 2, 3]}),
        "bad label": pickle.dumps({"data": zeros, "labels": [0, 1, 2, 10]}),
    }[damage])
    with pytest.raises(ValueError, match=r"test_batch.*expected"):
        load_cifar10(tmp_path, split="test")
    assert not marker.exists()


needs_cifar = pytest.mark.skipif(not (SHARED / "cifar-10-batches-py").is_dir(),
                                 reason=f"real CIFAR-10 not found at {SHARED / 'cifar-10-batches-py'}")


@needs_cifar
def test_real_cifar10():
    train = load_cifar10(SHARED)
    assert train.images.shape == (10000, 32, 32, 3) and train.info["batches"] == ["data_batch_1"]
    assert np.bincount(train.labels).tolist() == [1000] * 10 and train.class_names == CLASS_NAMES
    test = load_cifar10(SHARED, split="test")
    assert len(test) == 10000 and np.bincount(test.labels).tolist() == [1000] * 10


# ------------------------------------------------------------------------------- images (shared decoding)

def solid(mode, color, size=(40, 24)):
    return Image.new(mode, size, color)


def stripes(width, height):
    """Red, green, red thirds along the long side: a centre crop is all green, a squash is not."""
    a = np.zeros((height, width, 3), np.uint8)
    a[...] = RED
    if width > height:
        a[:, width // 3: 2 * width // 3] = GREEN
    else:
        a[height // 3: 2 * height // 3] = GREEN
    return Image.fromarray(a)


def palette_transparent():
    img = Image.new("P", (30, 30), 0)
    img.putpalette([0, 0, 0] * 256)  # every colour black...
    img.info["transparency"] = 0  # ...but index 0 is transparent
    return img


@pytest.mark.parametrize("name, make, suffix, expected", [
    ("grayscale", lambda: solid("L", 77), ".png", (77, 77, 77)),
    ("RGBA, transparent black", lambda: solid("RGBA", (0, 0, 0, 0)), ".png", WHITE),
    ("palette, transparent", palette_transparent, ".png", WHITE),
    ("CMYK", lambda: solid("CMYK", (0, 255, 255, 0)), ".jpg", RED),
    ("16-bit grayscale", lambda: Image.fromarray(np.full((24, 40), 0x8000, np.uint16)), ".png", (128, 128, 128)),
    ("wide odd-sized", lambda: stripes(99, 33), ".png", GREEN),
    ("tall odd-sized", lambda: stripes(21, 63), ".png", GREEN),
])
def test_any_image_becomes_an_rgb_square(tmp_path, name, make, suffix, expected):
    path = tmp_path / f"image{suffix}"
    make().save(path)
    out = read_image(path, 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected).max() <= 32, name  # JPEG and edge resampling wiggle


# -------------------------------------------------------------------------------------------------- COCO

def write_coco(root, split, images):
    """images: [(id, file_name, captions)] -> root/annotations/captions_<split>2017.json + image dir."""
    annotations = [{"image_id": image_id, "id": 100 * image_id + k, "caption": caption}
                   for image_id, _, captions in images for k, caption in enumerate(captions)]
    annotations.sort(key=lambda a: a["id"] % 100)  # interleave images, as the real file does
    doc = {"info": {}, "licenses": [], "annotations": annotations,
           "images": [{"id": i, "file_name": f, "height": 0, "width": 0} for i, f, _ in images]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"captions_{split}2017.json").write_text(json.dumps(doc))
    (root / f"{split}2017").mkdir(exist_ok=True)
    return root / f"{split}2017"


def test_coco_groups_captions_and_skips_missing_and_corrupt(tmp_path):
    image_dir = write_coco(tmp_path, "val", [
        (30, "red.png", ["a red square", "red"]),
        (10, "blue.jpg", ["a blue square", "blue", "  a  blue\nthing "]),
        (20, "missing.jpg", ["never downloaded"]),
        (40, "garbage.jpg", ["bytes that are no image"]),
        (50, "truncated.jpg", ["half a file"]),
        (60, "uncaptioned.png", []),
        (70, "grey.jpg", ["a grey photo"]),
        (80, "cmyk.jpg", ["a print scan"]),
    ])
    solid("RGB", RED, (50, 30)).save(image_dir / "red.png")
    solid("L", 77, (40, 24)).save(image_dir / "grey.jpg")  # grayscale, odd size
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(image_dir / "cmyk.jpg")  # CMYK red
    solid("RGB", BLUE, (30, 50)).save(image_dir / "blue.jpg")
    solid("RGB", RED).save(image_dir / "uncaptioned.png")
    (image_dir / "garbage.jpg").write_bytes(b"definitely not a jpeg")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
    (image_dir / "truncated.jpg").write_bytes(buffer.getvalue()[:2000])

    with pytest.warns(UserWarning, match="cannot decode"):  # one warning per bad file, naming it
        ds = load_coco(tmp_path, split="val", image_size=8)
    assert ds.images.shape == (4, 8, 8, 3) and ds.images.dtype == np.uint8
    # sorted by image id, each image with all of its captions, whitespace tidied
    assert ds.captions == [["a blue square", "blue", "a blue thing"], ["a red square", "red"],
                           ["a grey photo"], ["a print scan"]]
    assert np.abs(ds.images[0].astype(int) - BLUE).max() <= 32 and (ds.images[1] == RED).all()
    assert np.abs(ds.images[2].astype(int) - 77).max() <= 3  # grayscale -> equal R, G, B
    assert ds.images[3, ..., 0].min() > 200 and ds.images[3, ..., 1:].max() < 60  # CMYK red -> RGB red
    info = ds.info
    assert (info["images_used"], info["skipped_missing"], info["skipped_corrupt"]) == (4, 1, 2)
    assert [Path(f).name for f in info["corrupt_files"]] == ["garbage.jpg", "truncated.jpg"]
    assert info["skipped_uncaptioned"] == 1
    first = load_coco(tmp_path, split="test", limit=1, image_size=8)  # COCO test has no captions: val
    assert (first.split, first.captions) == ("val", [["a blue square", "blue", "a blue thing"]])


def test_coco_errors_name_the_expected_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions_train2017.json"):
        load_coco(tmp_path, split="train")
    write_coco(tmp_path, "val", [])
    (tmp_path / "annotations" / "captions_val2017.json").write_text('{"images": [{"id": 1}]}')
    with pytest.raises(ValueError, match="captions_val2017.json"):
        load_coco(tmp_path, split="val")


needs_coco = pytest.mark.skipif(not (SHARED / "coco-mini").is_dir(), reason=f"coco-mini not found at {SHARED}")


@needs_coco
def test_real_coco_val_uses_the_159_images_present():
    ds = load_coco(SHARED / "coco-mini", split="val")
    assert ds.images.shape == (159, 32, 32, 3)
    assert (ds.info["images_used"], ds.info["skipped_missing"], ds.info["skipped_corrupt"]) == (159, 4841, 0)
    assert all(len(captions) >= 5 for captions in ds.captions)


# ------------------------------------------------------------------------------------------------ folder

def write_folder(root):
    (root / "birds").mkdir(parents=True)
    solid("RGB", RED).save(root / "cat.png")
    solid("L", 200).save(root / "dog.jpg")
    solid("RGBA", (0, 0, 255, 255)).save(root / "birds" / "bird.png")
    (root / "captions.jsonl").write_text("\n".join([
        '{"file": "cat.png", "caption": "a cat"}',
        '{"file": "dog.jpg", "caption": ["a dog", "a grey dog"]}',
        '',
        '{"file": "gone.png", "caption": "deleted since"}',
        '{"file": "birds/bird.png", "caption": "a bird"}',
        '{"file": "cat.png", "caption": "a red cat"}',
    ]) + "\n")


def test_folder_reads_images_and_captions(tmp_path):
    write_folder(tmp_path)
    ds = load_folder(tmp_path, image_size=16)
    assert ds.images.shape == (3, 16, 16, 3) and ds.split == "all"
    # order of first appearance; a file on two lines gets both captions
    assert ds.captions == [["a cat", "a red cat"], ["a dog", "a grey dog"], ["a bird"]]
    assert (ds.images[0] == RED).all() and (ds.images[2] == BLUE).all()
    assert ds.info["skipped_missing"] == 1


@pytest.mark.parametrize("bad_line", ['{"file": "cat.png", "caption": ', '{"file": "cat.png"}', '["cat.png"]'])
def test_folder_bad_line_is_named_by_number(tmp_path, bad_line):
    write_folder(tmp_path)
    lines = (tmp_path / "captions.jsonl").read_text().splitlines()
    (tmp_path / "captions.jsonl").write_text("\n".join([lines[0], bad_line] + lines[1:]))
    with pytest.raises(ValueError, match="line 2"):
        load_folder(tmp_path)


def test_folder_without_captions_file_explains_the_format(tmp_path):
    solid("RGB", RED).save(tmp_path / "cat.png")
    with pytest.raises(FileNotFoundError, match=r'captions\.jsonl.*"caption"'):
        load_folder(tmp_path)


# ------------------------------------------------------------------------------------ data.load dispatch

def test_load_dispatches_with_size_and_limit(tmp_path):
    write_cifar(tmp_path / "cifar10", ["test_batch"])
    image_dir = write_coco(tmp_path / "coco", "train", [(1, "a.png", ["a"]), (2, "b.png", ["b"])])
    for file in ("a.png", "b.png"):
        solid("RGB", RED).save(image_dir / file)
    write_folder(tmp_path / "folder")
    for name, split in [("cifar10", "test"), ("coco", "train"), ("folder", "all")]:
        ds = load(name, split=split, data_dir=tmp_path / name, image_size=8, limit=1)
        assert (ds.name, ds.split, ds.images.shape) == (name, split, (1, 8, 8, 3))


def test_export_writes_scenes_that_the_coco_and_folder_readers_read_back_exactly(tmp_path):
    """tools/export.py: the larger captioned sets the COCO / folder recipes are measured on."""
    from tools import export
    train, held_out = load("shapes", "train", limit=6), load("shapes", "test", limit=4)
    export.write_coco(train, held_out, tmp_path / "coco")
    export.write_folder(train, tmp_path / "folder")
    for got, want in [(load_coco(tmp_path / "coco", "train"), train), (load_coco(tmp_path / "coco", "test"), held_out),
                      (load_folder(tmp_path / "folder"), train)]:
        assert np.array_equal(got.images, want.images) and got.captions == want.captions  # pixels and all 3 captions
