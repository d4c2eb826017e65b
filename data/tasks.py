"""
What Show-o is taught at each training step (paper section 3.4): which dataset items the step takes,
the row of every task built from an item and its image codes, and the step's batch, mixed over the
tasks and masked for the MTP loss.

    from data.tasks import TaskRows, showo_batch
    rows = TaskRows(ds, codes, text_tokenizer, model_cfg, stage=3)
    row = rows.row("vqa", i, random.Random(0))      # a tokenizer.Row, laid out by TokenSpace
    groups = showo_batch(rows, step, cfg)           # [(input ids, labels, task)], one per kind of row

The layouts themselves ([T2I] [SOT] text [EOT] [SOI] image [EOI], ...) belong to
tokenizer.TokenSpace; this file only decides which text goes into them, which depends on what the
dataset has: the shapes world has many captions per scene and question/answer pairs, CIFAR-10 a
class name, COCO five free captions per photo.
"""
import hashlib
import os
import random

import numpy as np
import torch
from tqdm import tqdm

from data.cifar10 import CIFAR_QUESTION
from data.coco import COCO_QUESTION
from data.shapes import caption as shapes_caption
from data.stories import STORIES, make_stories, story_images
from model import atomic_save, autocast, file_digest, mask_image_tokens, training_labels
from tokenizer import TASKS, images_to_tensor, load_image_tokenizer, read_checkpoint

TASK_NAMES = ("t2i", "caption", "vqa", "lm", "story")  # the row kinds a batch mixes (config.TaskMix's fractions)


def image_codes(ds, tokenizer_path, device, images=None):
    """Tokenize every image of ds once and cache the codes next to the tokenizer, so training steps
    never run the image encoder. The cache file is named by the tokenizer's digest and a digest of
    the images themselves: other data (another folder, another --limit or seed) gets another file.
    images: an augmented view of ds.images (N, H, W, 3) to tokenize instead (training_views).
    -> (N, h*w) int64 codes."""
    images = np.ascontiguousarray(ds.images if images is None else images)
    images_digest = hashlib.sha256(images.tobytes()).hexdigest()[:16]
    key = f"{ds.name}-{ds.split}-{len(ds)}-{images_digest}-{file_digest(tokenizer_path)}"
    cache = os.path.join(os.path.dirname(os.path.abspath(tokenizer_path)), "cache", f"codes-{key}.pt")
    if os.path.exists(cache):
        try:
            codes = read_checkpoint(cache)
            if isinstance(codes, torch.Tensor) and codes.shape[0] == len(ds):
                return codes.long()
        except ValueError:
            pass
        print(f"cache {cache} is damaged; tokenizing again")
    model, _ = load_image_tokenizer(tokenizer_path)
    model.to(device)
    codes = []
    for i in tqdm(range(0, len(ds), 256), desc=f"tokenizing {ds.name} {ds.split}", dynamic_ncols=True):
        x = images_to_tensor(images[i:i + 256]).to(device)
        with torch.no_grad(), autocast(device):
            codes.append(model.encode(x).flatten(1).cpu())  # (b, h, w) -> (b, h*w), row-major
    codes = torch.cat(codes).to(torch.int32)  # half the disk of int64; 2^K <= 2^24 fits
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    atomic_save(codes, cache)
    return codes.long()


SHIFTED_VIEWS = 8  # --shift caches this many moved copies of the training set (one encoder pass each)


def shifted_images(images, shift, seed):
    """Every image moved by its own random (dy, dx) in [-shift, shift]^2, the uncovered border filled
    by reflecting the image (black bars would be one more thing for the generator to learn to draw).
    (N, H, W, 3) -> (N, H, W, 3)."""
    n, h, w, _ = images.shape
    if shift >= min(h, w) // 2:  # the border it reflects must come from inside the image
        raise ValueError(f"--shift {shift} is too large for {h}x{w} images: at most {min(h, w) // 2 - 1} pixels")
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")  # (N, H+2s, W+2s, 3)
    dy, dx = np.random.default_rng(seed).integers(0, 2 * shift + 1, size=(2, n))  # the crop's corner, per image
    rows, cols = dy[:, None] + np.arange(h), dx[:, None] + np.arange(w)            # (N, H), (N, W)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (N, H, W, 3)


def training_views(ds, cfg):
    """The augmented copies of the training images that cfg asks for (config.ShowoTrainConfig):
    --mirror, their left-right mirror; --shift P, SHIFTED_VIEWS copies moved by up to P pixels (and,
    with --mirror as well, each image mirrored in half of them). -> [(N, H, W, 3) uint8]."""
    views = [ds.images[:, :, ::-1]] if cfg.mirror else []                        # (N, H, W, 3), W flipped
    for v in range(SHIFTED_VIEWS if cfg.shift else 0):
        moved = shifted_images(ds.images, cfg.shift, seed=(cfg.seed, v))
        if cfg.mirror:
            flip = np.random.default_rng((cfg.seed, v, 1)).random(len(ds)) < 0.5
            moved[flip] = moved[flip, :, ::-1]
        views.append(moved)
    return views


def task_rows(ds, text_tokenizer, cfg, device, training):
    """The TaskRows of a run (cfg: config.ShowoTrainConfig) on its training data, augmentations
    included, or on its held-out data (training=False: the images as they are). With --story-frac,
    the stories of the same split (data/stories.py), their scenes tokenized and cached like ds."""
    codes = image_codes(ds, cfg.tokenizer, device)
    views = [image_codes(ds, cfg.tokenizer, device, images) for images in training_views(ds, cfg)] if training else []
    stories = None
    if cfg.mix.story_frac > 0:
        split = "train" if training else "test"
        stories = make_stories(split, STORIES[split], seed=cfg.seed if training else 0)  # held out: the same everywhere
        stories = (stories, image_codes(story_images(stories, split, ds.images.shape[1]), cfg.tokenizer, device))
    return TaskRows(ds, codes, text_tokenizer, cfg.model, cfg.stage, views, cfg.hide_codes if training else 0.0, stories)


class TaskRows:
    """Turns dataset item i into the row of each task. What each task's text is, per dataset:
                 text-to-image prompt          caption (target)          question -> answer
      shapes     one of the image's captions   a full description        the world's QA pairs
      cifar10    class name (stage 1),         "a photo of a cat"        "what is this?" -> "cat"
                 else "a photo of a cat"
      coco       one of the captions           one of the captions       "describe the image." -> caption
    A story row (shapes only) is not item i's: it is a story drawn at random from `stories`, a list
    of data.stories.Story and the codes (M, N) of all their scenes, story after story.

    Two augmentations for training rows, both off unless asked for (they fight memorising: a
    small model that sees each CIFAR-10 image's 64 codes a few times learns their classes by heart):
      views        the codes of augmented copies of the images (training_views: mirrored, moved);
                   each row shows the image itself or one of its V views, each with probability 1/(V+1)
      hide_codes   an understanding row hides a share u ~ U(0, hide_codes) of its image's codes
                   behind [MASK], so no single code can be what the answer is learnt from
    """

    def __init__(self, ds, codes, text_tokenizer, model_cfg, stage, views=(), hide_codes=0.0, stories=None):
        self.ds, self.codes, self.tok, self.stage = ds, codes, text_tokenizer, stage
        self.space, self.max_text, self.max_len = model_cfg.space, model_cfg.max_text, model_cfg.max_len
        self.views, self.hide_codes = list(views), hide_codes
        self.stories, self.story_codes = stories or (None, None)
        self.story_len = 0  # the longest story row, the length FlexAttention pads story rows to
        if self.stories is not None:
            self.story_first = np.cumsum([0] + [len(s.scenes) for s in self.stories])  # story k's first scene
            if model_cfg.flex_attention:
                self.story_len = max(len(self.story_row(k).ids) for k in range(len(self.stories)))

    def story_row(self, k):
        """Story k as one interleaved row: [T2I] [SOT] text [EOT] [SOI] its scene [EOI] per text."""
        segments = []
        for text, scene in zip(self.stories[k].texts, range(self.story_first[k], self.story_first[k + 1])):
            segments += [self.tok.encode(text), self.story_codes[scene]]
        return self.space.interleaved(segments, self.max_text)

    def codes_of(self, i, rng):
        """The image codes row i shows: one of its views' or its own. A draw from rng only when there
        are views, so without them every other draw stays as it was; with the mirror alone, the rule
        of the runs before --shift existed (the mirror when the draw is below 1/2)."""
        if self.views:
            k = int(rng.random() * (len(self.views) + 1))  # views[0] .. views[V - 1], or V: the image itself
            if k < len(self.views):
                return self.views[k][i]
        return self.codes[i]

    def hide_image_codes(self, row, rng):
        """hide_codes: [MASK] over a share u ~ U(0, hide_codes) of an understanding row's image codes."""
        first = row.ids.index(self.space.soi) + 1  # the row's one image follows its [SOI]
        n = row.ids.index(self.space.eoi) - first
        for k in rng.sample(range(n), round(rng.random() * self.hide_codes * n)):
            row.ids[first + k] = self.space.mask
        return row

    def prompt(self, i, rng):
        # Stage 1 is class-conditional where there are classes (the paper's ImageNet stage)
        if self.ds.name == "cifar10" and self.stage == 1:
            return self.ds.class_names[self.ds.labels[i]]
        return rng.choice(self.ds.captions[i])

    def caption(self, i, rng):
        if self.ds.scenes is not None:  # the shapes world: the most complete caption its grammar allows
            return shapes_caption(self.ds.scenes[i], rng, "description")[0]
        return rng.choice(self.ds.captions[i])

    def questions_answers(self, i, rng):
        """The (question, answer) pairs to ask about item i, in a random order."""
        if self.ds.qa is not None:
            return [(q, a) for q, a, _ in rng.sample(self.ds.qa[i], len(self.ds.qa[i]))]
        if self.ds.labels is not None:
            return [(CIFAR_QUESTION, self.ds.class_names[self.ds.labels[i]])]
        return [(COCO_QUESTION, rng.choice(self.ds.captions[i]))]

    def dialogue(self, i, codes, rng):
        """A question -> answer row with as many turns as fit in the text of one full span
        (max_text + 2 ids), so it is never longer than a text-to-image row (ShowoConfig.max_len)."""
        turns, used = [], 0
        for question, answer in self.questions_answers(i, rng):
            turn = (self.tok.encode(question), self.tok.encode(" " + answer))
            length = len(turn[0]) + len(turn[1]) + 2  # + [SOT] [EOT]
            if turns and used + length > self.max_text + 2:
                continue  # a shorter pair further on may still fit
            turns.append(turn)
            used += length
        return self.space.dialogue(codes, turns, self.max_text)

    def row(self, task, i, rng, cond_dropout=0.0):
        """The row of one task (one of TASK_NAMES) for item i. With probability cond_dropout a
        text-to-image prompt is replaced by the empty one: the unconditional model that
        classifier-free guidance needs is the same network, trained on those rows."""
        row = self.task_row(task, i, self.codes_of(i, rng), rng, cond_dropout)
        if task in ("caption", "vqa") and self.hide_codes > 0:
            return self.hide_image_codes(row, rng)
        return row

    def task_row(self, task, i, codes, rng, cond_dropout):
        """The row of `task` for item i showing these image codes, before any hiding."""
        enc = self.tok.encode
        if task == "t2i":
            text = "" if rng.random() < cond_dropout else self.prompt(i, rng)
            return self.space.t2i(enc(text), codes, self.max_text)
        if task == "caption":
            return self.space.mmu(codes, [], enc(self.caption(i, rng)), self.max_text)
        if task == "vqa":
            return self.dialogue(i, codes, rng)
        if task == "lm":
            return self.space.lm(enc(rng.choice(self.ds.captions[i])), self.max_text)
        if task == "story":
            if self.stories is None:
                raise ValueError("story rows need stories (TaskRows(stories=...); --story-frac, shapes only)")
            return self.story_row(rng.randrange(len(self.stories)))
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_NAMES)}")


# -----------------------------------------------------------------------------
# The batch of each step: a pure function of (seed, stage, step), so --resume is exact

def batch_indices(step, n, batch_size, seed):
    """The images of training step `step`: epoch e is a random permutation seeded by (seed, e), and
    step s takes its slice. A pure function of the step, so a resumed run sees exactly the data the
    uninterrupted run would have seen."""
    per_epoch = max(1, n // batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[i * batch_size:(i + 1) * batch_size]


def seeded(*parts):
    """(random.Random, torch.Generator) seeded from the parts, e.g. (seed, "train", step): every
    step's randomness is a pure function of its name, whatever ran before it."""
    name = "/".join(map(str, parts))
    number = int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)
    return random.Random(name), torch.Generator().manual_seed(number)


def build_batch(rows_of, items, cfg, rng, gen):
    """Dataset items -> one batch with its rows split over the tasks by the configured fractions,
    prompts dropped for guidance, and images masked for MTP, as one padded group per kind of row:
    text-to-image rows, understanding rows (captions and questions), text-only rows. Each group is
    padded to its own longest row, not the batch's: in stage 3 a text-to-image row (about 27 ids)
    would otherwise be padded to a question row's 61, and the CPU computes padding like any token.
    Story rows (interleaved) have a group of their own; their images add to the t2i term, their
    texts after an image to the mmu term (train.batch_losses merges a term's groups).
    -> [(input ids (b, L), labels (b, L), task (b,))], one per kind of row present."""
    rows = []
    for task, n in cfg.mix.counts(len(items)).items():
        rows += [rows_of.row(task, i, rng, cfg.mix.cond_dropout) for i in items[len(rows):len(rows) + n]]
    space, groups, flex = rows_of.space, [], cfg.model.flex_attention
    # FlexAttention compiles one kernel per sequence length: give it the one longest possible length,
    # and one group of all non-story rows (every group would be that long, so splitting would only
    # add forward passes), and story rows the longest story's length.
    for kinds in [TASKS[:3], TASKS[3:]] if flex else [(kind,) for kind in TASKS]:
        group = [r for r in rows if r.task in kinds]
        if group:
            length = (rows_of.story_len if kinds == ("interleaved",) else rows_of.max_len) if flex else None
            ids, text_targets, task = space.pad_rows(group, length)               # (b, L), (b, L), (b,)
            inputs, masked = mask_image_tokens(ids, task, space, gen)             # MTP: hide part of each image
            groups.append((inputs, training_labels(ids, text_targets, masked, space), task))
    return groups


def showo_batch(rows_of, step, cfg):
    """The batch of training step `step` (its groups, see build_batch): a pure function of (seed,
    stage, step), like batch_indices, so a resumed run sees the same rows, the same condition
    dropout and the same masks, and a later stage does not replay an earlier one's draws."""
    rng, gen = seeded(cfg.seed, "train", cfg.stage, step)
    items = batch_indices(step, len(rows_of.codes), cfg.batch_size, cfg.seed + 1000 * cfg.stage).tolist()
    return build_batch(rows_of, items, cfg, rng, gen)
