"""
Datasets: every source of images and text the project trains on, behind one small container.

    from data import load
    ds = load("shapes", split="train")          # built-in synthetic world, no files needed
    ds = load("cifar10", data_dir="../shared/data", split="test")
    ds = load("coco", data_dir="../shared/data/coco-mini", split="val", limit=100)
    ds = load("folder", data_dir="my_images/")  # images + captions.jsonl

All datasets live in memory (data/dataset.py: ImageTextData) as one uint8 array of images at the training resolution plus captions.
At toy scale (tens of thousands of 32x32 images) that is tens of MB, and it keeps the training loop a
plain tensor index with no DataLoader workers to debug. Sources with per-file decoding (COCO, folder)
do all their decoding, resizing and error handling once, at load time, with a progress bar.
data/tasks.py turns an item into the rows of every task and draws the batch of each training step.
"""
DATASETS = ("shapes", "cifar10", "coco", "folder")


def load(name, split="train", data_dir=None, image_size=32, limit=None, seed=0):
    """Load a dataset by name. `limit` caps the number of images; `seed` only matters for shapes."""
    if name == "shapes":
        from data.shapes import make_dataset
        return make_dataset(split=split, n=limit, image_size=image_size, seed=seed)
    if name == "cifar10":
        from data.cifar10 import load_cifar10
        return load_cifar10(data_dir, split=split, limit=limit, image_size=image_size)
    if name == "coco":
        from data.coco import load_coco
        return load_coco(data_dir, split=split, limit=limit, image_size=image_size)
    if name == "folder":
        from data.folder import load_folder
        return load_folder(data_dir, limit=limit, image_size=image_size)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
