"""
MS-COCO 2017 captions reader: official annotation json + image folder -> ImageTextData.

    from data.coco import load_coco
    ds = load_coco("../shared/data/coco-mini", split="val", image_size=32)

Expected layout (as unpacked from the official annotations_trainval2017.zip and {train,val}2017.zip):

    data_dir/annotations/captions_train2017.json    data_dir/train2017/000000000009.jpg ...
    data_dir/annotations/captions_val2017.json      data_dir/val2017/000000000139.jpg ...

A captions json has "images" (id, file_name, ...) and "annotations" (image_id, caption), about five
captions per image. We group captions by image and take images in order of id, so `limit` always
picks the same ones. Annotations whose image file is not on disk are skipped and counted: a partial
download works (the shared coco-mini has 159 of the 5,000 val images). COCO 2017 test images have no
public captions, so split="test" reads val. Decoding, resizing and centre-cropping happen once, here
(see data/folder.py: `decode_images`).

Lin et al., "Microsoft COCO: Common Objects in Context", 2014; Chen et al., "Microsoft COCO
Captions", 2015.
"""
import json
from pathlib import Path

from data.dataset import ImageTextData
from data.folder import decode_images

SPLITS = {"train": "train", "val": "val", "test": "val"}  # test captions were never released
COCO_QUESTION = "describe the image."  # stage 3 asks it; the answer is one of the image's captions


def read_coco_captions(path):
    """captions_<split>2017.json -> {image id: (file_name, [captions])}, captions whitespace-normalised."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        images = {image["id"]: (image["file_name"], []) for image in data["images"]}
        for annotation in data["annotations"]:
            if annotation["image_id"] in images:
                # some COCO captions end in " \n" or hold double spaces
                images[annotation["image_id"]][1].append(" ".join(annotation["caption"].split()))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: expected a COCO captions json with images[].id/file_name and "
                         f"annotations[].image_id/caption (problem: {err!r})") from err
    return images


def load_coco(data_dir, split="train", limit=None, image_size=32):
    """Load COCO 2017 images with all their captions; split is "train", "val" or "test" (= val)."""
    if split not in SPLITS:
        raise ValueError(f"unknown COCO split {split!r}; choose one of {', '.join(SPLITS)}")
    if data_dir is None:
        raise ValueError("load_coco needs data_dir: the folder holding annotations/ and train2017/, val2017/")
    coco_split, root = SPLITS[split], Path(data_dir)
    annotation_path = root / "annotations" / f"captions_{coco_split}2017.json"
    image_dir = root / f"{coco_split}2017"
    if not annotation_path.is_file():
        raise FileNotFoundError(f"COCO captions not found: expected {annotation_path} "
                                f"(official COCO 2017 layout, with the images in {image_dir}/)")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"COCO image folder not found: expected {image_dir}/ holding the .jpg files")

    images_by_id = read_coco_captions(annotation_path)
    items = [(image_dir / file_name, captions)
             for _, (file_name, captions) in sorted(images_by_id.items()) if captions]
    name = f"coco {coco_split}" + (" (as test)" if split == "test" else "")
    images, captions, info = decode_images(items, image_size, limit, name=name)
    info.update(source=str(root), annotations=str(annotation_path),
                skipped_uncaptioned=len(images_by_id) - len(items))
    return ImageTextData(name="coco", split=coco_split, images=images, captions=captions, info=info)
