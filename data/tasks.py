"""
What Show-o is taught from each dataset: the rows of every task (paper section 3.4), built from one
item of a dataset and its image codes.

    from data.tasks import TaskRows
    rows = TaskRows(ds, codes, text_tokenizer, model_cfg, stage=3)
    row = rows.row("vqa", i, random.Random(0))      # a tokenizer.Row, laid out by TokenSpace

The layouts themselves ([T2I] [SOT] text [EOT] [SOI] image [EOI], ...) belong to
tokenizer.TokenSpace; this file only decides which text goes into them, which depends on what the
dataset has: the shapes world has many captions per scene and question/answer pairs, CIFAR-10 a
class name, COCO five free captions per photo.
"""
from data.cifar10 import CIFAR_QUESTION
from data.coco import COCO_QUESTION
from data.shapes import caption as shapes_caption

TASK_NAMES = ("t2i", "caption", "vqa", "lm")  # the row kinds a batch mixes (train.TaskMix's fractions)


class TaskRows:
    """Turns dataset item i into the row of each task. What each task's text is, per dataset:
                 text-to-image prompt          caption (target)          question -> answer
      shapes     one of the image's captions   a full description        the world's QA pairs
      cifar10    class name (stage 1),         "a photo of a cat"        "what is this?" -> "cat"
                 else "a photo of a cat"
      coco       one of the captions           one of the captions       "describe the image." -> caption
    """

    def __init__(self, ds, codes, text_tokenizer, model_cfg, stage):
        self.ds, self.codes, self.tok, self.stage = ds, codes, text_tokenizer, stage
        self.space, self.max_text, self.max_len = model_cfg.space, model_cfg.max_text, model_cfg.max_len

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

    def dialogue(self, i, rng):
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
        return self.space.dialogue(self.codes[i], turns, self.max_text)

    def row(self, task, i, rng, cond_dropout=0.0):
        """The row of one task (one of TASK_NAMES) for item i. With probability cond_dropout a
        text-to-image prompt is replaced by the empty one: the unconditional model that
        classifier-free guidance needs is the same network, trained on those rows."""
        enc, codes = self.tok.encode, self.codes[i]
        if task == "t2i":
            text = "" if rng.random() < cond_dropout else self.prompt(i, rng)
            return self.space.t2i(enc(text), codes, self.max_text)
        if task == "caption":
            return self.space.mmu(codes, [], enc(self.caption(i, rng)), self.max_text)
        if task == "vqa":
            return self.dialogue(i, rng)
        if task == "lm":
            return self.space.lm(enc(rng.choice(self.ds.captions[i])), self.max_text)
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_NAMES)}")
