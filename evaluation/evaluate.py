"""
The evaluations behind every figure (not on the training path: train.py imports this file only
inside the pipeline's last step). The last printed line is always one JSON object.

    python -m evaluation tokenizer --ckpt out/shapes/tokenizer.pt --dataset shapes
    python -m evaluation tokenizer --ckpt out/cifar10/tokenizer.pt --dataset cifar10 --data-dir ../shared/data
    python -m evaluation showo --ckpt out/shapes/stage3 --dataset shapes
    python -m evaluation showo --ckpt out/shapes/stage3 --split val --cfg 1   # choosing a setting
    python -m evaluation judge --data-dir ../shared/data          # the CIFAR-10 judge (about 2 min once)

`tokenizer` encodes and decodes every image of the evaluation split and reports:
- psnr: mean per-image PSNR (dB) between the uint8 originals and the uint8 reconstructions;
- usage: fraction of the 2^K codes used at least once over the WHOLE split (a batch cannot show
  collapse: 64 images x 64 tokens can never use 8192 codes);
- perplexity: exp of the entropy of the split's code histogram (2^K would be perfectly uniform use);
- shapes only, scorer_agreement: fraction of reconstructions in which the world's scorer
  (evaluation/shapes_scorer.py, plain image analysis) finds exactly the ground-truth scene.

`showo` evaluates a Show-o checkpoint (with the tokenizers it was trained with):
- shapes: a GenEval-style table. For each of GenEval's six categories (single object, two objects,
  counting, colours, position, colour attribution) a fixed, seeded list of prompts from the world's
  grammar (data.shapes.prompts_for_category) is drawn by MaskGIT and each image is judged by the
  world's scorer; overall = the mean of the six. VQA accuracy (exact answer) per question type on
  held-out images, each distinct (scene, question) asked once (vqa = the mean over colour, shape,
  count and position questions), POPE-style yes/no existence accuracy (balanced, with the share of
  "yes" answers), and caption exact-match: the greedy caption of a held-out image, parsed by the
  world's grammar, must name exactly its objects with shape, colour, size and cell (one image per
  distinct scene of 1-2 objects, the scenes the grammar's full descriptions cover). Trained on
  stories (--story-frac): held-out stories drawn image by image, each image's scene accuracy and
  the objects a change left alone kept (stories.png).
- cifar10: classification by asking "what is this?" of every image of the split's quarter of the
  test batch (the question stage 3 trains on; accuracy of the answer against the class name), and
  --prompts class-conditional samples per class judged by the judge (evaluation/judge.py; judge.*: its
  accuracy on them, the Frechet distance of their features to that quarter's, and both figures for
  the tokenizer's reconstructions of the quarter and for training images); samples.png: a row per class.
- coco / folder: captions of held-out images (BLEU-4, CIDEr-D) and images for held-out captions (a grid).

Validation and test (--split): a setting chosen by measuring (a guidance scale, the MaskGIT steps) is
chosen on val; every reported figure is test. They are disjoint:
the shapes world holds out a tenth of its scenes, half val, half test (data.shapes.held_out_part),
and so its stories; its GenEval-style prompts come from a seed of each split; CIFAR-10 compares with a
quarter of the test batch each (evaluation/judge.py); and val samples are drawn from other seeds
(seed + VAL_SEED). COCO and folders have no validation split: no setting is chosen on them.

`judge` (evaluation/judge.py) trains an independent CIFAR-10 classifier on the first half of the test
split (images Show-o never reads; cached by a digest of its data) and reports its accuracy on the
last quarter (test) and the Frechet distance of training images, which it never saw, to that quarter
in its feature space: the floor any generator's samples are measured against (our own yardstick, as
FID's Inception weights cannot be downloaded offline).
"""
import argparse
import json
import random
import math
import os
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

import data
from data.cifar10 import CIFAR_QUESTION, class_captions
from data.shapes import PREFIXES, caption, parse_caption, prompt_text, prompts_for_category
from evaluation.captions import bleu4, cider_d, tokenize
from data.stories import STORIES, make_stories
from evaluation.judge import (JUDGE_CACHE, JUDGE_TRAINED_ON, REFERENCE, accuracy, batched, evaluate_judge,
                              frechet_distance, judge_outputs, load_or_train_judge, split_test, subset)
from evaluation.shapes_scorer import detect, score
from model import generate_images, generate_text, pick_device
from sample import GUIDANCE, STORY_GUIDANCE, Pipeline, generate_story, labelled_grid, steps_strip, story_sheet
from tokenizer import load_image_tokenizer, psnr, tensor_to_images


# -----------------------------------------------------------------------------
# The image tokenizer: PSNR, codebook use, and whether the scorer still reads its reconstructions

@torch.no_grad()
def reconstruct(model, images, batch_size=256):
    """uint8 (N, H, W, 3) -> (codes (N, h*w), reconstructions uint8 (N, H, W, 3)), in fp32 like training."""
    codes, side = model.encode_images(images, batch_size), model.cfg.latent_size
    device = next(model.parameters()).device
    recon = [tensor_to_images(model.decode(c.view(-1, side, side).to(device))) for c in codes.split(batch_size)]
    return codes, np.concatenate(recon)


def evaluate_tokenizer(ckpt_path, dataset=None, data_dir=None, split="test", limit=None, device="auto",
                       grid_path=None):
    """The image tokenizer on a whole held-out split (dataset: the one it was trained on unless given)
    -> dict of the metrics in the module docstring."""
    model, ckpt = load_image_tokenizer(ckpt_path)
    model.to(pick_device(device))
    dataset, data_dir = trained_on(ckpt, dataset, data_dir)
    ds = data.load(dataset, split, data_dir, model.cfg.image_size, limit)
    t0 = time.time()
    codes, recon = reconstruct(model, ds.images)
    seconds = time.time() - t0
    # the split's code histogram: usage = codes seen at least once, perplexity = exp(entropy), the
    # number of equally used codes that would give the same entropy (2^K at perfectly uniform use)
    counts = torch.bincount(codes.flatten(), minlength=model.codebook_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    result = dict(dataset=dataset, split=ds.split, images=len(ds), tokens_per_image=codes[0].numel(),
                  codebook_size=model.codebook_size, psnr=round(float(psnr(ds.images, recon).mean()), 3),
                  usage=round((counts > 0).sum().item() / model.codebook_size, 4),
                  perplexity=round(math.exp(entropy), 1),
                  images_per_s=round(len(ds) / seconds, 1), trained_steps=ckpt.get("step"))
    if dataset == "shapes":
        # PSNR cannot say whether a blue square came back cyan; the scorer can: a reconstruction
        # agrees when it detects exactly the original's objects (shape, colour, size, cell)
        agree = sum(score(img, scene) for img, scene in zip(recon, ds.scenes))
        result["scorer_agreement"] = round(agree / len(ds), 4)
    if grid_path:
        labelled_grid(np.concatenate([ds.images[:8], recon[:8]]), ["original"] * 8 + ["reconstruction"] * 8).save(grid_path)
    return result


# -----------------------------------------------------------------------------
# Show-o

# GenEval's six categories (Ghosh et al. 2023; Show-o's table 2 reports them), in its order; the
# shapes world's grammar writes prompts of each (data.shapes.prompts_for_category)
GENEVAL_CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def draw(pipe, prompts, cfg, generator):
    """Text prompts -> uint8 images (N, H, W, 3), in batches."""
    images = []
    # disable=None: a bar on a terminal, silent in logs and under pytest
    for chunk in tqdm(list(batched(prompts, cfg["batch"])), desc="drawing", unit="batch", disable=None):
        # one generator for the whole evaluation: the same seed draws the same images every run
        codes, _ = generate_images(pipe.model, [pipe.encode_text(p) for p in chunk], steps=cfg["steps"],
                                   guidance=cfg["guidance"], generator=generator)
        images.append(pipe.decode_codes(codes))
    return np.concatenate(images)


def answer(pipe, codes, questions, batch, max_new_tokens=24):
    """Greedy answers (or captions, for empty questions) to one question per image -> strings."""
    answers = []
    for idx in tqdm(list(batched(list(range(len(questions))), batch)), desc="answering", unit="batch", disable=None):
        # [MMU] [SOI] image [EOI] [SOT] question, left open: the model writes the answer and [EOT]
        rows = [pipe.space.mmu(codes[i], pipe.encode_text(questions[i]) if questions[i] else [],
                               max_text=pipe.model.cfg.max_text) for i in idx]
        answers += [pipe.text.decode(o).strip() for o in generate_text(pipe.model, rows, max_new_tokens)]
    return answers


def caption_scene(text):
    """A caption of the shapes grammar -> the key of the scene it fully describes, or None when it
    does not pin every object down (shape, colour, size and cell) or does not parse."""
    try:
        prompt = parse_caption(text)
    except ValueError:
        return None
    if prompt.relation is not None or any(None in (p.shape, p.colour, p.size, p.row, p.col) or p.count is not None
                                          for p in prompt.phrases):
        return None
    return tuple(sorted((p.shape, p.colour, p.size, p.row, p.col) for p in prompt.phrases))


# The shapes world is small (a twentieth of its 144 one-object scenes is each split's), so images repeat:
# each distinct (scene, question) is asked once, and each distinct scene is captioned once.
def distinct_questions(ds):
    """-> [(image index, question, answer, question type)], one per distinct (scene, question). An
    image's two existence questions (one true "yes", one "no": POPE's) are kept or dropped as a pair,
    so POPE stays balanced: dropping repeats one by one left 47% "yes" (a model always answering "no"
    would have scored 0.53)."""
    asked, kept = set(), []
    for i, (scene, qa) in enumerate(zip(ds.scenes, ds.qa)):
        pope = [(q, a, t) for q, a, t in qa if t == "exist"]
        for group in [[x] for x in qa if x[2] != "exist"] + ([pope] if pope else []):
            if not any((scene.key(), q) in asked for q, _, _ in group):
                asked |= {(scene.key(), q) for q, _, _ in group}
                kept += [(i, q, a, t) for q, a, t in group]
    return kept


def describable_scenes(ds):
    """-> indices of one image per distinct scene of 1-2 objects (what full descriptions cover)."""
    return list({s.key(): i for i, s in enumerate(ds.scenes) if len(s.objects) <= 2}.values())


def evaluate_shapes(pipe, ds, cfg, generator, out_dir):
    """The shapes world: generation (GenEval-style, the prompts of ds's split), then understanding (VQA,
    POPE, captions) of ds's images."""
    result, examples = {"geneval": {}, "geneval_objects": {}, "geneval_objects_asked": {}}, []
    for category in GENEVAL_CATEGORIES:
        # every checkpoint is judged on the same prompts of a split, whatever the sampling seed
        prompts = prompts_for_category(category, cfg["prompts"], ds.split)
        images = draw(pipe, prompts, cfg, generator)
        passed = [score(img, p) for img, p in zip(images, prompts)]
        result["geneval"][category] = round(sum(passed) / len(passed), 4)
        # GenEval's rule passes "a circle" when at least one is drawn: how many objects did the samples
        # hold, against how many their prompts ask for (a phrase asks for its count, or one)?
        result["geneval_objects"][category] = round(float(np.mean([len(detect(img).objects) for img in images])), 3)
        result["geneval_objects_asked"][category] = round(float(np.mean(
            [sum(ph.count or 1 for ph in parse_caption(p).phrases) for p in prompts])), 3)
        examples += [(img, ("ok: " if ok else "no: ") + p) for img, p, ok in list(zip(images, prompts, passed))[:4]]
        print(f"geneval {category:>14}: {result['geneval'][category]:.3f} ({len(prompts)} prompts; objects drawn "
              f"{result['geneval_objects'][category]:.2f}, asked for {result['geneval_objects_asked'][category]:.2f})")
    # GenEval's overall score is the plain mean of its categories
    result["geneval"]["overall"] = round(sum(result["geneval"].values()) / len(GENEVAL_CATEGORIES), 4)
    print(f"geneval {'overall':>14}: {result['geneval']['overall']:.3f}")
    if out_dir:
        labelled_grid(np.stack([e[0] for e in examples]), [e[1] for e in examples], per_row=8).save(
            os.path.join(out_dir, "samples.png"))

    # Understanding: held-out images through the image tokenizer, one question each, greedy answers
    # of at most 6 tokens (the longest answer, "top left", is 2-3), judged by exact match
    codes = pipe.encode_images(ds.images)
    pairs = distinct_questions(ds)
    answers = answer(pipe, codes[[i for i, _, _, _ in pairs]], [q for _, q, _, _ in pairs], cfg["batch"], 6)
    by_type = {}
    for (_, _, truth, qtype), got in zip(pairs, answers):
        by_type.setdefault(qtype, []).append(got == truth)
    result["vqa_by_type"] = {t: round(sum(v) / len(v), 4) for t, v in sorted(by_type.items())}
    # existence questions are POPE's (balanced yes / no); the other four types make the VQA score
    vqa_types = [t for t in by_type if t != "exist"]
    result["vqa"] = round(sum(result["vqa_by_type"][t] for t in vqa_types) / len(vqa_types), 4)
    exist = [(truth, got) for (_, _, truth, qtype), got in zip(pairs, answers) if qtype == "exist"]
    result["pope"] = round(sum(t == g for t, g in exist) / len(exist), 4)
    # a model that always answers "yes" scores the truth's share of "yes" on POPE: both shares, measured
    result["pope_yes_ratio"] = round(sum(g == "yes" for _, g in exist) / len(exist), 4)
    result["pope_truth_yes"] = round(sum(t == "yes" for t, _ in exist) / len(exist), 4)
    print(f"vqa {result['vqa']:.3f} by type {result['vqa_by_type']}; pope {result['pope']:.3f} "
          f"(answered yes {result['pope_yes_ratio']:.2f}, truth yes {result['pope_truth_yes']:.2f})")

    # Captions: the caption rows train full descriptions, so a caption passes only when it parses and
    # names exactly the image's objects with every attribute; the grammar's descriptions cover 1-2 objects
    describable = describable_scenes(ds)
    captions = answer(pipe, codes[describable], [""] * len(describable), cfg["batch"], max_new_tokens=pipe.model.cfg.max_text)
    hits = [caption_scene(c) == ds.scenes[i].key() for i, c in zip(describable, captions)]
    result["caption_exact"] = round(sum(hits) / len(hits), 4) if hits else None
    result["caption_images"] = len(hits)
    # the field's scores too, against the four wordings of each scene's full description (what caption rows teach)
    wordings = [prompt_text(parse_caption(caption(ds.scenes[i], random.Random(0), "description")[0])) for i in describable]
    result["captions"] = caption_scores(captions, [[w] + [f"{p} {w}" for p in PREFIXES] for w in wordings])
    for i, c in list(zip(describable, captions))[:3]:
        print(f"caption: {c!r}  (the scene: {caption(ds.scenes[i], random.Random(0), 'description')[0]!r})")
    print(f"caption exact-match {result['caption_exact']} on {len(hits)} distinct scenes of 1-2 objects; BLEU-4 "
          f"{result['captions']['bleu4']:.4f}, CIDEr-D {result['captions']['cider']:.4f}")
    return result


def evaluate_classes(pipe, ds, cfg, generator, out_dir, parts, split, train_ds):
    """CIFAR-10: classification by asking the trained question on every held-out image (ds), then
    cfg["prompts"] class-conditional samples per class judged by the independent classifier (the
    judge, trained on parts["judge"], the first half of the test batch): its accuracy on them and the
    Frechet distance of their features to parts[split]'s (the reference, which the judge never saw),
    beside the same two figures for the tokenizer's reconstructions of the reference images (what a
    perfect Show-o on this tokenizer would reach) and for Show-o's training images (the floor)."""
    reference = parts[split]
    if len(ds.class_names) * cfg["prompts"] > len(reference):  # the Frechet distances compare equal numbers
        raise ValueError(f"{len(ds.class_names) * cfg['prompts']} samples outnumber the {len(reference)} "
                         "reference images: use fewer --prompts")
    reference_codes = pipe.encode_images(reference.images)  # (N, h*w), once: ds is the reference's first images
    codes = reference_codes[:len(ds)]
    # the question stage 3 trained on; an answer counts only when it is exactly the class name
    answers = answer(pipe, codes, [CIFAR_QUESTION] * len(ds), cfg["batch"], max_new_tokens=8)
    truth = [ds.class_names[label] for label in ds.labels]
    result = {"classification_accuracy": round(sum(a == t for a, t in zip(answers, truth)) / len(ds), 4)}
    print(f"classification by asking {CIFAR_QUESTION!r}: {result['classification_accuracy']:.3f} on {len(ds)} images")
    # the prompts the checkpoint was trained on: class names in stage 1, "a photo of an airplane" later
    stage, n = pipe.ckpt["train_config"]["stage"], cfg["prompts"]
    prompts = [name if stage == 1 else class_captions(name)[0] for name in ds.class_names for _ in range(n)]
    images = draw(pipe, prompts, cfg, generator)                              # class-major: n of class 0, ...
    wanted = torch.arange(len(ds.class_names)).repeat_interleave(n)
    if out_dir:  # a row per class, its first 10 samples
        shown = [c * n + i for c in range(len(ds.class_names)) for i in range(min(n, 10))]
        labelled_grid(images[shown], [prompts[i] for i in shown], per_row=min(n, 10)).save(
            os.path.join(out_dir, "samples.png"))
    judge = load_or_train_judge(parts["judge"], JUDGE_CACHE, pipe.device)
    labels = torch.as_tensor(reference.labels)
    test_features, test_predicted = judge_outputs(judge, reference.images)
    sample_features, sample_predicted = judge_outputs(judge, images)
    recon = np.concatenate([pipe.decode_codes(c) for c in batched(reference_codes, cfg["batch"])])
    recon_features, recon_predicted = judge_outputs(judge, recon)                # (N, H, W, 3) -> features
    # every set compared to the test images holds as many images as the samples: the estimate's
    # bias depends on that number, so only equal sizes compare
    m = len(images)
    train_features, _ = judge_outputs(judge, train_ds.images[:m])
    distance = lambda features: round(frechet_distance(features[:m], test_features), 4)         # noqa: E731
    result["judge"] = dict(trained_on=JUDGE_TRAINED_ON, reference=REFERENCE[split], test_accuracy=accuracy(test_predicted, labels),
                           sample_accuracy=accuracy(sample_predicted, wanted), samples_per_class=n,
                           reconstruction_accuracy=accuracy(recon_predicted, labels),
                           frechet=distance(sample_features), frechet_reconstructions=distance(recon_features),
                           frechet_training_images=distance(train_features))
    return result


def untouched(before, after):
    """The objects a change left as they were: in both scenes, same shape, colour, size and cell."""
    return set(before.key()) & set(after.key())


def story_scores(stories, found):
    """How well drawn stories follow their texts. found: per story, the scenes the world's scorer
    reads from its drawn images (shapes_scorer.detect), one per text. -> ({k: the share of k-th
    images that are exactly their scene}, kept, seen): of the `seen` objects that a change left alone
    and that the image before it shows, the share `kept` that the image after it shows unchanged."""
    hits, kept, seen = {}, 0, 0
    for story, drawn in zip(stories, found):
        for k, (truth, got) in enumerate(zip(story.scenes, drawn), 1):
            hits.setdefault(k, []).append(got.key() == truth.key())
        for before, after, drawn_before, drawn_after in zip(story.scenes, story.scenes[1:], drawn, drawn[1:]):
            for obj in untouched(before, after) & set(drawn_before.key()):
                seen += 1
                kept += obj in drawn_after.key()
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}, kept / max(seen, 1), seen


def evaluate_stories(pipe, n, split, cfg, generator, out_dir):
    """Mixed-modality generation on n held-out stories of a split (data/stories.py): each image drawn
    (at guidance cfg["story_guidance"]) after the true texts and the images drawn before it
    (sample.generate_story), read back by the world's scorer (story_scores); stories.png shows six."""
    stories = make_stories(split, n)
    codes = [c for chunk in batched(stories, cfg["batch"]) for c in generate_story(
        pipe, [s.texts for s in chunk], generator, steps=cfg["steps"], guidance=cfg["story_guidance"])]
    images = [pipe.decode_codes(torch.stack(c)) for c in codes]                      # per story (k, H, W, 3)
    accuracy_at, kept, seen = story_scores(stories, [[detect(img) for img in drawn] for drawn in images])
    if out_dir:
        story_sheet(images[:6], [s.texts for s in stories[:6]]).save(os.path.join(out_dir, "stories.png"))
    print(f"stories: scene accuracy by image {accuracy_at}; unchanged objects kept {kept:.3f} (of {seen})")
    return dict(scene_accuracy={f"image {k}": round(v, 4) for k, v in accuracy_at.items()}, kept=round(kept, 4),
                kept_of=seen, stories=n, guidance=cfg["story_guidance"])


def caption_scores(captions, references):
    """Greedy captions (N strings) against each image's references (N lists) -> BLEU-4 and CIDEr-D as
    the COCO caption evaluation computes them (evaluation/captions.py), on tokenized text."""
    hypotheses, refs = [tokenize(c) for c in captions], [[tokenize(r) for r in rs] for rs in references]
    return dict(bleu4=round(bleu4(hypotheses, refs), 4), cider=round(cider_d(hypotheses, refs)[0], 4), images=len(captions),
                distinct=round(len(set(captions)) / len(captions), 4))  # 1 / N: the same caption for every image


def evaluate_captions(pipe, ds, cfg, generator, out_dir, most=1000):
    """COCO / a folder: captions of (at most `most`) held-out images scored against all their references
    (BLEU-4, CIDEr-D), 16 of them printed; images drawn for 16 held-out captions, beside the real ones."""
    n = min(len(ds), most)
    codes = pipe.encode_images(ds.images[:n])
    captions = answer(pipe, codes, [""] * n, cfg["batch"], max_new_tokens=pipe.model.cfg.max_text)
    scores = caption_scores(captions, ds.captions[:n])
    for truth, got in list(zip(ds.captions, captions))[:16]:
        print(f"caption: {got!r}  (one truth: {truth[0]!r})")
    print(f"captions of {n} held-out images: BLEU-4 {scores['bleu4']:.4f}, CIDEr-D {scores['cider']:.4f}, "
          f"{scores['distinct']:.3f} of them distinct")
    prompts = [caps[0] for caps in ds.captions[:16]]  # the same images' captions: real and drawn side by side
    images = draw(pipe, prompts, cfg, generator)
    if out_dir:
        labelled_grid(np.concatenate([ds.images[:len(prompts)], images]), ["(real) " + p for p in prompts] + prompts,
                      per_row=8).save(os.path.join(out_dir, "samples.png"))
    return {"captions": dict(scores, examples=[dict(generated=g, truth=t[0]) for g, t in zip(captions[:16], ds.captions)])}


def trained_on(ckpt, dataset, data_dir):
    """The dataset (and its folder) to evaluate on: the one given, else the one the checkpoint trained on."""
    if dataset is None:
        dataset, data_dir = ckpt["train_config"]["dataset"], data_dir or ckpt["train_config"]["data_dir"]
    if dataset != "shapes" and data_dir is None:
        raise ValueError(f"--data-dir is needed for {dataset}")
    return dataset, data_dir


# Validation samples are drawn from seed + VAL_SEED: never the test samples (CIFAR-10 prompts both with
# the same ten captions)
VAL_SEED = 1_000_000


def evaluate_showo(ckpt, dataset=None, data_dir=None, split="test", limit=None, device="auto", prompts=100,
                   steps=12, guidance=GUIDANCE, batch=64, seed=0, out_dir=None, stories=None,
                   story_guidance=STORY_GUIDANCE):
    """A Show-o checkpoint with the tokenizers it was trained with, on held-out data (split: val or test)
    of its dataset (or `dataset`) -> dict of metrics (module docstring); samples.png in out_dir. The main
    job calls it after stage 3. stories: held-out stories to draw (shapes; default: STORIES[split] if it
    trained on them)."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be val (choosing settings) or test (reported figures), not {split!r}")
    pipe = Pipeline(ckpt, device)
    pipe.model.eval()
    dataset, data_dir = trained_on(pipe.ckpt, dataset, data_dir)
    if dataset in ("coco", "folder") and split == "val":
        raise ValueError(f"{dataset} has no validation split (no setting is chosen on it): evaluate on test")
    # CIFAR-10's split is a quarter of its test batch (evaluation/judge.py); COCO's test reads val2017
    ds = data.load(dataset, "test" if dataset == "cifar10" else split, data_dir, pipe.image_size,
                   None if dataset == "cifar10" else limit)
    generator = torch.Generator().manual_seed(seed + (VAL_SEED if split == "val" else 0))
    cfg = dict(prompts=prompts, steps=steps, guidance=guidance, batch=batch, story_guidance=story_guidance)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    if dataset == "shapes":
        result = evaluate_shapes(pipe, ds, cfg, generator, out_dir)
        if stories or (stories is None and pipe.trained_on_stories):
            result["stories"] = evaluate_stories(pipe, stories or STORIES[split], split, cfg, generator, out_dir)
    elif dataset == "cifar10":
        parts = split_test(ds)  # the judge's half, val's quarter, test's quarter
        ds = subset(parts[split], slice(limit))
        train_ds = data.load(dataset, "train", data_dir, pipe.image_size)
        result = evaluate_classes(pipe, ds, cfg, generator, out_dir, parts, split, train_ds)
    else:
        result = evaluate_captions(pipe, ds, cfg, generator, out_dir)
    result.update(dataset=dataset, split=split, images=len(ds), steps=steps, guidance=guidance,
                  trained_steps=pipe.ckpt["step"], stage=pipe.ckpt["train_config"]["stage"],
                  seconds=round(time.time() - t0, 1))
    return result


# -----------------------------------------------------------------------------
# A whole pipeline's run (`python train.py [--dataset D]` calls this after stage 3)

# The prompt whose MaskGIT decoding steps.png shows; COCO and folders take their first evaluated caption
STRIP_PROMPTS = {"shapes": "a red circle above a blue square", "cifar10": class_captions("horse")[0]}
SAMPLES_PER_PROMPT = {"shapes": 100, "cifar10": 50}  # GenEval-style prompts per category / samples per class
EVALUATION_VERSION = 2  # raised when the evaluation measures something new: an older metrics.json is measured again


def plot_losses(log_paths, path, width=640, height=320):
    """Per-task training losses of consecutive runs (the stages), one line per task, as a PNG drawn
    with Pillow (no plotting library needed). Vertical lines mark where a stage begins."""
    # one x axis for the whole job: stage k's steps continue where stage k - 1 ended
    series, offsets, offset = {}, [], 0
    for log_path in log_paths:
        records = [json.loads(line) for line in open(log_path)]
        offsets.append(offset)
        for r in records:
            for task in ("t2i", "mmu", "lm"):
                if task in r:
                    series.setdefault(task, []).append((offset + r["step"], r[task]))
        offset += records[-1]["step"] if records else 0
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    # data -> pixels: a 40 px margin on the left for the scale, 30 px below for the stage names
    top = max(v for points in series.values() for _, v in points)
    x = lambda step: 40 + (width - 50) * step / max(offset, 1)            # noqa: E731
    y = lambda value: height - 30 - (height - 50) * value / max(top, 1e-9)  # noqa: E731
    draw.line([(40, 10), (40, height - 30), (width - 10, height - 30)], fill="black")
    for frac in (0, 0.5, 1):
        draw.text((2, y(top * frac) - 6), f"{top * frac:.1f}", fill="black")
    for stage, start in enumerate(offsets, 1):
        draw.line([(x(start), 10), (x(start), height - 30)], fill=(200, 200, 200))
        draw.text((x(start) + 3, height - 26), f"stage {stage}", fill="gray")
    # the colours of attention.py's pictures: orange for image (MTP) losses, blue and grey for text (NTP)
    colours = {"t2i": (244, 160, 0), "mmu": (66, 133, 244), "lm": (120, 120, 120)}
    for i, (task, points) in enumerate(series.items()):
        runs, current = [], [points[0]]
        for a, b in zip(points, points[1:]):
            if b[0] - a[0] > 1:  # the task pauses (a stage without it): break the line
                runs.append(current)
                current = []
            current.append(b)
        for run in runs + [current]:
            if len(run) > 1:
                draw.line([(x(s), y(v)) for s, v in run], fill=colours[task], width=1)
        draw.text((width - 160 + 50 * i, 12), task, fill=colours[task])
    img.save(path)


def evaluate_pipeline(tokenizer_ckpt, showo_ckpt, logs, run_dir, dataset, data_dir, seed, minutes, t0, steps):
    """The tokenizer and the final Show-o checkpoint on the held-out split (a folder: its own images),
    then the pictures: samples.png (by evaluate_showo), steps.png (one decoding, step by step) and
    losses.png (every stage's losses); all figures, with the steps each part took and the call's
    wall-clock minutes (minutes: the training parts', t0: when the call began), go to
    run_dir/metrics.json. Skipped, and that file read back, when it was measured on the same
    checkpoints, data, samples and EVALUATION_VERSION (delete it to measure again)."""
    measured_on = dict(tokenizer=os.path.getmtime(tokenizer_ckpt), showo=os.path.getmtime(showo_ckpt), dataset=dataset,
                       data_dir=data_dir and os.path.abspath(data_dir), seed=seed,
                       samples=SAMPLES_PER_PROMPT.get(dataset, 100), version=EVALUATION_VERSION)
    metrics_path = os.path.join(run_dir, "metrics.json")
    try:
        with open(metrics_path) as f:
            measured = json.load(f)
        if isinstance(measured, dict) and measured.get("measured_on") == measured_on:
            print(f"evaluation: done ({metrics_path} measured these checkpoints)")
            return measured
    except (OSError, ValueError):  # none yet, or unreadable: measure again
        pass
    t_eval = time.time()
    metrics = {"tokenizer": evaluate_tokenizer(tokenizer_ckpt, dataset, data_dir)}
    metrics["showo"] = evaluate_showo(showo_ckpt, dataset, data_dir, prompts=measured_on["samples"], seed=seed,
                                      out_dir=run_dir)
    prompt = STRIP_PROMPTS.get(dataset) or metrics["showo"]["captions"]["examples"][0]["truth"]
    pipe = Pipeline(showo_ckpt)
    _, history = generate_images(pipe.model, [pipe.encode_text(prompt)], steps=12, guidance=GUIDANCE,
                                 generator=torch.Generator().manual_seed(seed), record=True)
    steps_strip(pipe, history).save(os.path.join(run_dir, "steps.png"))
    plot_losses(logs, os.path.join(run_dir, "losses.png"))
    # wall-clock minutes of this call: a part skipped because it was finished costs (nearly) nothing
    metrics["minutes"] = dict(**minutes, evaluation=round((time.time() - t_eval) / 60, 2),
                              training=round(sum(minutes.values()), 2), total=round((time.time() - t0) / 60, 2))
    metrics["steps"], metrics["measured_on"] = steps, measured_on
    with open(f"{metrics_path}.tmp", "w") as f:  # then a rename: never a half-written metrics.json
        json.dump(metrics, f, indent=1)
    os.replace(f"{metrics_path}.tmp", metrics_path)
    return metrics


def print_summary(metrics, run_dir):
    """A pipeline's figures in a few lines (metrics.json holds them all)."""
    tok, showo = metrics["tokenizer"], metrics["showo"]
    where = f"the {tok['split']} split"
    if tok["split"] == "all":  # load_splits says the same while training
        where = "the folder's own images (it has no held-out split)"
    print(f"\ntokenizer on {where}: PSNR {tok['psnr']:.2f} dB, {100 * tok['usage']:.1f}% of "
          f"{tok['codebook_size']} codes used"
          + (f", scorer agreement {100 * tok['scorer_agreement']:.1f}%" if "scorer_agreement" in tok else ""))
    if "geneval" in showo:
        print("GenEval-style (shapes): " + ", ".join(f"{k} {v:.2f}" for k, v in showo["geneval"].items()))
        print("objects drawn (asked for): " + ", ".join(f"{k} {v:.2f} ({showo['geneval_objects_asked'][k]:.2f})"
                                                        for k, v in showo["geneval_objects"].items()))
        print(f"VQA {showo['vqa']:.3f}, POPE {showo['pope']:.3f}, caption exact-match {showo['caption_exact']:.3f} "
              f"(POPE answers yes {showo['pope_yes_ratio']:.2f}, truth yes {showo['pope_truth_yes']:.2f})")
    if "judge" in showo:
        j = showo["judge"]
        print(f"classification by asking {showo['classification_accuracy']:.3f}; judge (test accuracy "
              f"{j['test_accuracy']:.3f}): samples {j['sample_accuracy']:.3f} of their class, reconstructions "
              f"{j['reconstruction_accuracy']:.3f}; Frechet: samples {j['frechet']:.4f}, reconstructions "
              f"{j['frechet_reconstructions']:.4f}, training images {j['frechet_training_images']:.4f}")
    if "captions" in showo:
        print(f"captions: BLEU-4 {showo['captions']['bleu4']:.4f}, CIDEr-D {showo['captions']['cider']:.4f} "
              f"({showo['captions']['images']} held-out images, {showo['captions']['distinct']:.3f} of the captions distinct)")
    for c in showo.get("captions", {}).get("examples", [])[:3]:  # a few for a person to read
        print(f"caption: {c['generated']!r} (one truth: {c['truth']!r})")
    print("steps: " + ", ".join(f"{part} {n}" for part, n in metrics["steps"].items()))
    print("minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["minutes"].items()))
    print(f"-> {run_dir}/: samples.png, steps.png, losses.png, metrics.json")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    # each command's defaults are the main job's: 100 prompts per category, T = 12, guidance 2
    tok = sub.add_parser("tokenizer", help="PSNR, codebook usage and perplexity of an image tokenizer")
    tok.add_argument("--ckpt", required=True, help="tokenizer checkpoint (OUT/tokenizer.pt from train.py)")
    tok.add_argument("--dataset", choices=data.DATASETS, help="default: the one it was trained on")
    tok.add_argument("--data-dir", default=None, help="data folder for cifar10/coco/folder")
    tok.add_argument("--split", default="test", help="shapes: train, val or test; CIFAR-10: train or test; COCO: "
                     "train or val (test reads val); a folder: all its images [default test]")
    tok.add_argument("--limit", type=int, default=None, help="evaluate at most this many images")
    tok.add_argument("--grid", default=None, help="also write a PNG of originals over reconstructions")
    tok.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    jd = sub.add_parser("judge", help="train (or load) the CIFAR-10 judge; its test accuracy and Frechet floor")
    jd.add_argument("--data-dir", required=True, help="the folder holding cifar-10-batches-py/")
    jd.add_argument("--limit", type=int, default=None, help="train on at most this many images of its half")
    jd.add_argument("--cache-dir", default=JUDGE_CACHE, help="where trained judges are kept")
    jd.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    sh = sub.add_parser("showo", help="GenEval-style table, VQA, POPE and captioning of a Show-o checkpoint")
    sh.add_argument("--ckpt", required=True, help="a Show-o run folder (holding showo.pt) or a showo.pt file")
    sh.add_argument("--dataset", choices=data.DATASETS, help="default: the one it was trained on")
    sh.add_argument("--data-dir", default=None, help="data folder for cifar10/coco/folder")
    sh.add_argument("--split", default="test", choices=("val", "test"),
                    help="val: where settings are chosen; test: every reported figure [default test]")
    sh.add_argument("--limit", type=int, default=None, help="held-out images for VQA/POPE/captioning/classification")
    sh.add_argument("--prompts", type=int, default=100,
                    help="shapes: prompts per GenEval category; cifar10: samples per class")
    sh.add_argument("--steps", type=int, default=12, help="MaskGIT steps")
    sh.add_argument("--cfg", type=float, default=GUIDANCE, help="classifier-free guidance scale")
    sh.add_argument("--story-cfg", type=float, default=STORY_GUIDANCE, help="the guidance scale of stories")
    sh.add_argument("--batch", type=int, default=64, help="rows per forward pass")
    sh.add_argument("--seed", type=int, default=0, help="sampling seed")
    sh.add_argument("--stories", type=int, help=f"shapes: held-out stories to draw (default {STORIES['test']} if it trained on them)")
    sh.add_argument("--out", default=None, help="folder for samples.png")
    sh.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    args = parser.parse_args(argv)
    # user mistakes become usage errors before anything is loaded; failures to load become one line
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    try:
        if args.command == "judge":
            result = evaluate_judge(args.data_dir, args.device, args.limit, args.cache_dir)
        elif args.command == "tokenizer":
            result = evaluate_tokenizer(args.ckpt, args.dataset, args.data_dir, args.split, args.limit,
                                        args.device, args.grid)
        else:
            if min(args.prompts, args.steps, args.batch) < 1 or min(args.cfg, args.story_cfg, args.stories or 0) < 0:
                parser.error("--prompts, --steps and --batch must be at least 1, --cfg, --story-cfg and --stories >= 0")
            result = evaluate_showo(args.ckpt, args.dataset, args.data_dir, args.split, args.limit, args.device,
                                    args.prompts, args.steps, args.cfg, args.batch, args.seed, args.out, args.stories,
                                    args.story_cfg)
    except (OSError, ValueError) as e:  # a missing or foreign checkpoint, unreadable data
        sys.exit(f"error: {e}")
    for key, value in result.items():  # for a person
        print(f"{key:>18}: {value}")
    print(json.dumps(result))  # for a script: always the last line
    return result


if __name__ == "__main__":
    main()
