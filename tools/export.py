"""
Write a dataset the project reads (shapes scenes, CIFAR-10) as captioned image files, for the COCO and
folder pipelines on more images than coco-mini's 80:

    python -m tools.export --out /tmp/shapes-coco --train 5000 --held-out 500           # COCO 2017 layout
    python train.py --dataset coco --data-dir /tmp/shapes-coco                           # then train on it
    python -m tools.export --layout folder --out /tmp/shapes-folder --train 5000         # images + captions.jsonl

The COCO layout holds a held-out split (val2017: the source's test split, so choose no setting on
it), and the pipeline reports held-out losses and captions; a folder has none. Images are PNGs at
the source's resolution; every caption of an image is kept.
"""
import argparse
import json
import os
import sys

from PIL import Image

import data


def write_images(ds, folder, first_id=0):
    """ds's images as PNGs in folder -> [(image id, file name, captions)], one per image."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for i, (pixels, captions) in enumerate(zip(ds.images, ds.captions)):
        name = f"{first_id + i:012d}.png"  # COCO names its files by id, 12 digits
        Image.fromarray(pixels).save(os.path.join(folder, name))
        written.append((first_id + i, name, captions))
    return written


def write_coco(train_ds, held_out_ds, root):
    """root/{train2017,val2017}/ and root/annotations/captions_{train,val}2017.json, as COCO 2017 has them."""
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for split, ds, first_id in (("train", train_ds, 0), ("val", held_out_ds, len(train_ds))):
        written = write_images(ds, os.path.join(root, f"{split}2017"), first_id)
        pairs = [(i, caption) for i, _, captions in written for caption in captions]
        annotations = [dict(id=n, image_id=i, caption=caption) for n, (i, caption) in enumerate(pairs)]
        with open(os.path.join(root, "annotations", f"captions_{split}2017.json"), "w") as f:
            json.dump(dict(images=[dict(id=i, file_name=name) for i, name, _ in written], annotations=annotations), f)


def write_folder(ds, root):
    """root/*.png and root/captions.jsonl (data/folder.py's format), every caption of an image on its line."""
    written = write_images(ds, root)
    with open(os.path.join(root, "captions.jsonl"), "w") as f:
        f.writelines(json.dumps(dict(file=name, caption=captions)) + "\n" for _, name, captions in written)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="shapes", choices=("shapes", "cifar10"), help="[default shapes]")
    parser.add_argument("--data-dir", help="where CIFAR-10 lives (shapes needs none)")
    parser.add_argument("--layout", default="coco", choices=("coco", "folder"), help="[default coco]")
    parser.add_argument("--train", type=int, default=5000, help="training images [default 5000]")
    parser.add_argument("--held-out", type=int, default=500, help="val2017 images, from the source's test split "
                        "(coco layout only) [default 500]")
    parser.add_argument("--out", required=True, help="folder to write (created)")
    args = parser.parse_args(argv)
    if args.train < 1 or args.held_out < 1:
        parser.error("--train and --held-out must be at least 1")
    try:
        train_ds = data.load(args.source, "train", args.data_dir, limit=args.train)
        if args.layout == "folder":
            write_folder(train_ds, args.out)
        else:
            write_coco(train_ds, data.load(args.source, "test", args.data_dir, limit=args.held_out), args.out)
    except (OSError, ValueError) as e:  # no CIFAR-10 where --data-dir says, an --out that cannot be written
        sys.exit(f"error: {e}")
    print(f"wrote {args.out}: {len(train_ds)} training images ({args.layout} layout)")


if __name__ == "__main__":
    main()
