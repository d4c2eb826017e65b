"""
What Show-o is taught at each training step (paper section 3.4): the row of every task built from a
dataset item and its image codes, and the step's batch, mixed over the tasks and masked for MTP.

    from data.tasks import task_rows, showo_batch
    rows = task_rows(ds, text_tokenizer, image_tokenizer, cfg, training=True)   # cfg: train.ShowoTrainConfig
    row = rows.row("vqa", i, random.Random(0))      # a tokenizer.Row, laid out by TokenSpace
    groups = showo_batch(rows, step, cfg)           # [(input ids, labels, task)], one per kind of row

The layouts themselves ([T2I] [SOT] text [EOT] [SOI] image [EOI], ...) belong to
tokenizer.TokenSpace; this file only decides which text goes into them, which depends on what the
dataset has: the shapes world has many captions per scene and question/answer pairs, CIFAR-10 a
class name, COCO five free captions per photo.
"""
import hashlib
import random

import torch

from data.cifar10 import CIFAR_QUESTION
from data.coco import COCO_QUESTION
from data.shapes import caption as shapes_caption
from data.stories import STORIES, make_stories, story_images
from model import mask_image_tokens, training_labels
from tokenizer import TASKS

TASK_NAMES = ("t2i", "caption", "vqa", "lm", "story")  # the row kinds a batch mixes (the *_frac options)


def task_rows(ds, text_tokenizer, image_tokenizer, cfg, training):
    """The TaskRows of a run (cfg: train.ShowoTrainConfig) on its training data, with the mirrored
    images when --mirror asks for them, or on held-out data (training=False: the images as they are).
    Every image is encoded once, here: training steps never run the image encoder. With --story-frac,
    the stories of the same split (data/stories.py), their scenes encoded the same way."""
    codes = image_tokenizer.encode_images(ds.images)                                   # (N, h*w)
    mirrored = image_tokenizer.encode_images(ds.images[:, :, ::-1]) if training and cfg.mirror else None  # W flipped
    stories = None
    if cfg.story_frac > 0:
        split = "train" if training else "val"  # the training log's held-out losses: validation data
        stories = make_stories(split, STORIES[split], seed=cfg.seed if training else 0)  # held out: the same everywhere
        stories = (stories, image_tokenizer.encode_images(story_images(stories, ds.images.shape[1])))
    return TaskRows(ds, codes, text_tokenizer, cfg.model, cfg.stage, mirrored, cfg.hide_codes if training else 0.0,
                    stories)


class TaskRows:
    """Turns dataset item i into the row of each task. What each task's text is, per dataset:
                 text-to-image prompt          caption (target)          question -> answer
      shapes     one of the image's captions   a full description        the world's QA pairs
      cifar10    class name (stage 1),         "a photo of a cat"        "what is this?" -> "cat"
                 else "a photo of a cat"
      coco       one of the captions           one of the captions       "describe the image." -> caption
    A story row (shapes only) is not item i's: it is a story drawn at random from `stories`, a list
    of data.stories.Story and the codes (M, N) of all their scenes, story after story.

    Two augmentations for training rows, both off unless asked for (they fight memorising: a small
    model that sees each CIFAR-10 image's 64 codes a few times learns their classes by heart):
      mirrored     the codes of the images mirrored left to right: a row shows them with probability 1/2
      hide_codes   an understanding row hides a share u ~ U(0, hide_codes) of its image's codes
                   behind [MASK], so no single code can be what the answer is learnt from
    """

    def __init__(self, ds, codes, text_tokenizer, model_cfg, stage, mirrored=None, hide_codes=0.0, stories=None):
        self.ds, self.codes, self.tok, self.stage = ds, codes, text_tokenizer, stage
        self.space, self.max_text = model_cfg.space, model_cfg.max_text
        self.mirrored, self.hide_codes = mirrored, hide_codes
        self.stories, self.story_codes = stories or (None, None)
        if self.stories is not None:
            self.story_first = [0]  # story k's first scene is story_codes[story_first[k]]
            for story in self.stories:
                self.story_first.append(self.story_first[-1] + len(story.scenes))

    def story_row(self, k):
        """Story k as one interleaved row: [T2I] [SOT] text [EOT] [SOI] its scene [EOI] per text."""
        segments = []
        for text, scene in zip(self.stories[k].texts, range(self.story_first[k], self.story_first[k + 1])):
            segments += [self.tok.encode(text), self.story_codes[scene]]
        return self.space.interleaved(segments, self.max_text)

    def codes_of(self, i, rng):
        """The image codes row i shows: the mirrored image's with probability 1/2 when there are
        those (a draw from rng only then, so without the mirror every other draw stays as it was)."""
        if self.mirrored is not None and rng.random() < 0.5:
            return self.mirrored[i]
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
        (max_text + 2 ids), so it is never longer than a text-to-image row with a full prompt."""
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
        codes, enc = self.codes_of(i, rng), self.tok.encode
        if task == "t2i":
            return self.space.t2i(enc("" if rng.random() < cond_dropout else self.prompt(i, rng)), codes, self.max_text)
        if task in ("caption", "vqa"):
            row = (self.space.mmu(codes, [], enc(self.caption(i, rng)), self.max_text) if task == "caption"
                   else self.dialogue(i, codes, rng))
            return self.hide_image_codes(row, rng) if self.hide_codes > 0 else row
        if task == "lm":
            return self.space.lm(enc(rng.choice(self.ds.captions[i])), self.max_text)
        if task == "story" and self.stories is not None:
            return self.story_row(rng.randrange(len(self.stories)))
        raise ValueError(f"no {task!r} rows here; tasks: {', '.join(TASK_NAMES)} (story: --story-frac, shapes only)")


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
    return random.Random(name), torch.Generator().manual_seed(int(hashlib.sha256(name.encode()).hexdigest()[:15], 16))


def task_counts(cfg, batch_size):
    """Rows per task in a batch (cfg's *_frac options, normalised to sum to 1; largest remainders get the rest)."""
    fracs = {task: getattr(cfg, f"{task}_frac") for task in TASK_NAMES}
    exact = {k: batch_size * v / sum(fracs.values()) for k, v in fracs.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[:batch_size - sum(counts.values())]:
        counts[k] += 1
    return counts


def build_batch(rows_of, items, cfg, rng, gen):
    """Dataset items -> one batch with its rows split over the tasks by the configured fractions,
    prompts dropped for guidance, and images masked for MTP, as one padded group per kind of row
    (text-to-image, understanding, text only, story). Each group is padded to its own longest row, not
    the batch's: in stage 3 a text-to-image row (about 27 ids) would otherwise be padded to a question
    row's 61, and the CPU computes padding like any token. Story rows' images add to the t2i term,
    their texts after an image to the mmu term (train.batch_loss sums each term over the groups).
    -> [(input ids (b, L), labels (b, L), task (b,))], one per kind of row present."""
    rows = []
    for task, n in task_counts(cfg, len(items)).items():
        rows += [rows_of.row(task, i, rng, cfg.cond_dropout) for i in items[len(rows):len(rows) + n]]
    groups = []
    for kind in TASKS:
        group = [r for r in rows if r.task == kind]
        if group:
            ids, text_targets, task = rows_of.space.pad_rows(group)                # (b, L), (b, L), (b,)
            inputs, masked = mask_image_tokens(ids, task, rows_of.space, gen)      # MTP: hide part of each image
            groups.append((inputs, training_labels(ids, text_targets, masked), task))
    return groups


def showo_batch(rows_of, step, cfg):
    """The batch of training step `step` (its groups, see build_batch): a pure function of (seed,
    stage, step), like batch_indices, so a resumed run sees the same rows, the same condition
    dropout and the same masks, and a later stage does not replay an earlier one's draws."""
    rng, gen = seeded(cfg.seed, "train", cfg.stage, step)
    items = batch_indices(step, len(rows_of.codes), cfg.batch_size, cfg.seed + 1000 * cfg.stage).tolist()
    return build_batch(rows_of, items, cfg, rng, gen)
