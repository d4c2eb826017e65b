"""
Evaluation programs. The last printed line is always one JSON object (easy to parse in scripts).

    python evaluate.py tokenizer --ckpt out/shapes/tokenizer.pt --dataset shapes
    python evaluate.py tokenizer --ckpt out/cifar10/tokenizer.pt --dataset cifar10 --data-dir ../shared/data

`tokenizer` encodes and decodes every image of the evaluation split and reports:
- psnr: mean per-image PSNR (dB) between the uint8 originals and the uint8 reconstructions;
- usage: fraction of the 2^K codes used at least once over the WHOLE split (a batch cannot show
  collapse: 64 images x 64 tokens can never use 8192 codes);
- perplexity: exp of the entropy of the split's code histogram (2^K would be perfectly uniform use);
- shapes only, scorer_agreement: fraction of reconstructions in which the world's scorer
  (data/shapes.py, plain image analysis) finds exactly the ground-truth scene.
"""
import argparse
import json
import math
import sys
import time

import torch

import data
from tokenizer import load_image_tokenizer
from train import autodetect_device, image_grid, psnr, reconstruct


def evaluate_tokenizer(ckpt_path, dataset, data_dir=None, split="test", limit=None, device="auto",
                       grid_path=None):
    device = autodetect_device(device)
    model, ckpt = load_image_tokenizer(ckpt_path, map_location=device)
    model.to(device)
    ds = data.load(dataset, split, data_dir, model.cfg.image_size, limit)
    t0 = time.time()
    codes, recon = reconstruct(model, ds.images, device)
    seconds = time.time() - t0
    counts = torch.bincount(codes.flatten(), minlength=model.codebook_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    result = dict(dataset=dataset, split=ds.split, images=len(ds), tokens_per_image=codes[0].numel(),
                  codebook_size=model.codebook_size, psnr=round(float(psnr(ds.images, recon).mean()), 3),
                  usage=round((counts > 0).sum().item() / model.codebook_size, 4),
                  perplexity=round(math.exp(entropy), 1),
                  images_per_s=round(len(ds) / seconds, 1), trained_steps=ckpt.get("step"))
    if dataset == "shapes":
        from data.shapes import score
        agree = sum(score(img, scene) for img, scene in zip(recon, ds.scenes))
        result["scorer_agreement"] = round(agree / len(ds), 4)
    if grid_path:
        image_grid([ds.images[:16], recon[:16]]).save(grid_path)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tok = sub.add_parser("tokenizer", help="PSNR, codebook usage and perplexity of an image tokenizer")
    tok.add_argument("--ckpt", required=True, help="tokenizer checkpoint (OUT/tokenizer.pt from train.py)")
    tok.add_argument("--dataset", default="shapes", choices=data.DATASETS)
    tok.add_argument("--data-dir", default=None, help="data folder for cifar10/coco/folder")
    tok.add_argument("--split", default="test", help="test (shapes, cifar10) or val (coco)")
    tok.add_argument("--limit", type=int, default=None, help="evaluate at most this many images")
    tok.add_argument("--grid", default=None, help="also write a PNG of originals over reconstructions")
    tok.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    args = parser.parse_args(argv)
    if args.dataset != "shapes" and args.data_dir is None:
        parser.error(f"--data-dir is needed for {args.dataset}")
    try:
        result = evaluate_tokenizer(args.ckpt, args.dataset, args.data_dir, args.split, args.limit,
                                    args.device, args.grid)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    for key, value in result.items():
        print(f"{key:>18}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
