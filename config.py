"""
Every option of the training programs, in one place: one dataclass per config, a preset per
dataset, the paper's three stages as batch mixes, the main job's recipe per dataset, the command
line generated from them, and the device a run uses.

    python train.py showo --help         # the options, grouped: model, additions, batch mix, data, stage, ...
    from config import ShowoTrainConfig, make_config, SHOWO_PRESETS
    cfg = make_config(ShowoTrainConfig, SHOWO_PRESETS["shapes"])     # the shapes preset's run
    cfg.model                                                        # its model.ShowoConfig

One config story: a trainer's config holds the model's own config (tokenizer.ImageTokenizerConfig,
model.ShowoConfig) and, for Show-o, the batch mix (TaskMix), so what the trainer builds and saves
is exactly the model's dataclass, never a copy of its fields. Each option is documented once, by
the comment after its field, and `--help` shows the same words; a comment line of its own inside a
dataclass ("# optimisation") opens a group of --help. Every config checks its own values.
"""
import argparse
import inspect
import re
import sys
from dataclasses import dataclass, field, fields, is_dataclass

import torch

import data
from data.tasks import TASK_NAMES
from model import ShowoConfig
from tokenizer import ImageTokenizerConfig

# -----------------------------------------------------------------------------
# The image tokenizer's training run (`train.py tokenizer`)


@dataclass
class TokenizerTrainConfig:
    """`train.py tokenizer`. The image tokenizer it trains is `model`, its own config."""
    model: ImageTokenizerConfig = field(default_factory=ImageTokenizerConfig)
    # data
    dataset: str = "shapes"       # shapes | cifar10 | coco | folder
    data_dir: str = None          # where cifar10/coco/folder data lives (shapes needs none)
    limit: int = None             # use at most this many training images
    eval_images: int = 500        # held-out images used by the periodic evaluation
    bpe_vocab: int = 512          # text tokenizer size (stops early if the captions run out of pairs)
    # optimisation
    max_steps: int = 1500         # optimizer steps in all (a resumed run continues to this)
    batch_size: int = 64          # images per step
    lr: float = 2e-3              # peak AdamW learning rate
    warmup_steps: int = 100       # linear warm-up, then cosine decay to lr * min_lr_frac
    min_lr_frac: float = 0.05     # final learning rate as a fraction of --lr
    grad_clip: float = 1.0        # clip the gradient's global norm to this
    # run
    out: str = "out/shapes"       # run folder: tokenizer.pt, text.tiktoken, recon.png, log
    eval_every: int = 250         # evaluate + grid + checkpoint every this many steps
    seed: int = 0                 # data order, model init and the shapes world all follow it
    device: str = "auto"          # auto (cuda -> mps -> cpu) | cpu | cuda | mps
    compile: bool = False         # torch.compile the model (CUDA only; ignored elsewhere)
    resume: bool = False          # continue from OUT/tokenizer.pt

    def __post_init__(self):
        check_run_options(self, ("max_steps", "batch_size", "eval_every", "eval_images"))


# Presets per dataset, for the README's quality targets; any option of --help may appear here.
TOKENIZER_PRESETS = {
    # shapes: 8x downsampling, 4x4 tokens per image (a grid cell of the scene is 2x2 tokens). The
    # narrow network reaches 100% scorer agreement for every seed tried; K = 12 bits, because at
    # K = 10 small objects of similar colour or shape shared codes for longer (docs/findings.md).
    "shapes": dict(codebook_bits=12, channels=(32, 64, 64), max_steps=1200, eval_every=300, entropy_weight=0.025,
                   out="out/shapes"),
    # CIFAR-10: 4x downsampling (8x8 tokens), K = 12 bits, chosen for the whole pipeline: each code is
    # a row of Show-o's embedding and output tables (K = 15: 2.2x Show-o's step time for 0.45 dB more
    # after 1,200 steps, docs/findings.md). A stronger entropy penalty, over every token of the batch.
    "cifar10": dict(codebook_bits=12, entropy_tokens=4096, max_steps=3000, eval_every=750, entropy_weight=0.03,
                    out="out/cifar10", bpe_vocab=320),
    # Photos like CIFAR-10's; these two presets are smoke-tested only, not tuned, and sized for the
    # shared coco-mini's 80 training images (a larger subset wants more --max-steps).
    "coco": dict(codebook_bits=12, max_steps=1000, entropy_weight=0.05, out="out/coco", bpe_vocab=2048),
    "folder": dict(codebook_bits=12, max_steps=1000, entropy_weight=0.05, out="out/folder"),
}
# Options that fix the data order and the schedule: a resumed run must use the same ones.
RESUME_MUST_MATCH = ("dataset", "data_dir", "limit", "batch_size", "seed", "lr", "warmup_steps", "min_lr_frac")


def check_run_options(cfg, at_least_one):
    """What both trainers' configs must hold: a known dataset with its data folder, positive counts."""
    if cfg.dataset not in data.DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(data.DATASETS)}")
    if cfg.dataset != "shapes" and cfg.data_dir is None:
        raise ValueError(f"--data-dir is needed for {cfg.dataset} (e.g. ../shared/data)")
    for name in at_least_one + ("limit",):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")


# -----------------------------------------------------------------------------
# Show-o's training run (`train.py showo`): the batch mix, the run, the three stages


@dataclass
class TaskMix:
    """What one batch holds (section 3.4): its share of rows per task, and the joint loss's weights."""
    t2i_frac: float = 0.5         # text-to-image rows (MTP loss); the fractions are normalised to sum to 1
    caption_frac: float = 0.4     # captioning rows (understanding, NTP loss)
    vqa_frac: float = 0.0         # question -> answer rows (understanding, NTP loss)
    lm_frac: float = 0.1          # text-only language-modelling rows (NTP loss)
    story_frac: float = 0.0       # shapes only: stories, text and images interleaved (data/stories.py; MTP + NTP)
    cond_dropout: float = 0.1     # probability that a text-to-image prompt is replaced by the empty one (for guidance)
    w_t2i: float = 1.0            # weight of the MTP loss in L = w_t2i L_MTP + w_mmu L_MMU + w_lm L_LM (equation 4)
    w_mmu: float = 1.0            # weight of the understanding rows' NTP loss
    w_lm: float = 0.1             # weight of the text-only rows' NTP loss (Show-o's configs: 1, 1, 0.1)

    def __post_init__(self):
        fracs = (self.t2i_frac, self.caption_frac, self.vqa_frac, self.lm_frac, self.story_frac)
        if min(fracs) < 0 or sum(fracs) <= 0:
            raise ValueError("the task fractions must be >= 0 and not all 0")
        if not 0 <= self.cond_dropout <= 1:
            raise ValueError("--cond-dropout must be in [0, 1]")

    def counts(self, batch_size):
        """Rows per task in a batch of batch_size, from the fractions (largest remainder rounding)."""
        fracs = dict(zip(TASK_NAMES, (self.t2i_frac, self.caption_frac, self.vqa_frac, self.lm_frac, self.story_frac)))
        exact = {k: batch_size * v / sum(fracs.values()) for k, v in fracs.items()}
        counts = {k: int(v) for k, v in exact.items()}
        for k in sorted(exact, key=lambda k: counts[k] - exact[k])[:batch_size - sum(counts.values())]:
            counts[k] += 1
        return counts


@dataclass
class ShowoTrainConfig:
    """`train.py showo`. The transformer it trains is `model` (model.ShowoConfig), its batches `mix`."""
    model: ShowoConfig = field(default_factory=ShowoConfig)
    mix: TaskMix = field(default_factory=TaskMix)
    # data
    dataset: str = "shapes"       # shapes | cifar10 | coco | folder
    data_dir: str = None          # where cifar10/coco/folder data lives (shapes needs none)
    tokenizer: str = None         # image tokenizer checkpoint, text.tiktoken beside it (None: the one in OUT/..)
    limit: int = None             # use at most this many training images
    mirror: bool = False          # training rows also show the image mirrored left to right (its own codes)
    shift: int = 0                # ... and moved by up to this many pixels each way (data/tasks.py, training_views)
    hide_codes: float = 0.0       # understanding rows hide a share u ~ U(0, this) of their image codes behind [MASK]
    eval_rows: int = 256          # held-out rows for the periodic evaluation
    # stage (section 3.4): each stage sets the defaults of the mix options
    stage: int = 1                # 1: class/label-conditional generation + captioning + LM; 2: captions; 3: QA
    init: str = None              # start from this Show-o checkpoint's weights (the previous stage's)
    # optimisation
    max_steps: int = 1000         # optimizer steps in all (a resumed run continues to this)
    batch_size: int = 64          # rows per step
    lr: float = 1e-3              # peak AdamW learning rate
    weight_decay: float = 0.05    # on linear-layer matrices only (not norms, biases, embeddings)
    warmup_steps: int = 50        # linear warm-up, then cosine decay to lr * min_lr_frac
    min_lr_frac: float = 0.1      # final learning rate as a fraction of --lr
    grad_clip: float = 1.0        # clip the gradient's global norm to this
    # run
    out: str = None               # run folder for showo.pt and log.jsonl (None: out/DATASET/stageN)
    eval_every: int = 100         # held-out losses + checkpoint every this many steps
    seed: int = 0                 # data order, masking and model init all follow it
    device: str = "auto"          # auto (cuda -> mps -> cpu) | cpu | cuda | mps
    compile: bool = False         # torch.compile the model (CUDA only; ignored elsewhere)
    resume: bool = False          # continue from OUT/showo.pt

    def __post_init__(self):
        check_run_options(self, ("max_steps", "batch_size", "eval_every", "eval_rows"))
        if not 0 <= self.hide_codes <= 1:
            raise ValueError(f"--hide-codes must be in [0, 1], not {self.hide_codes}")
        if self.shift < 0:
            raise ValueError(f"--shift must be >= 0 pixels, not {self.shift}")
        if self.stage not in SHOWO_STAGES:
            raise ValueError(f"--stage must be 1, 2 or 3, not {self.stage}")
        if self.mix.story_frac > 0 and self.dataset != "shapes":
            raise ValueError("--story-frac: stories exist in the shapes world only")


# The paper's three stages (section 3.4) as batch mixes. Stage 1 conditions generation on class
# names where the data has classes (CIFAR-10); the shapes world and COCO have none, so their stage 1
# uses captions, like stage 2. Stage 3 adds question -> answer rows and keeps the other tasks in the
# mix so nothing learned earlier is forgotten.
SHOWO_STAGES = {
    1: dict(t2i_frac=0.5, caption_frac=0.4, vqa_frac=0.0, lm_frac=0.1),
    2: dict(t2i_frac=0.5, caption_frac=0.5, vqa_frac=0.0, lm_frac=0.0),
    3: dict(t2i_frac=0.4, caption_frac=0.2, vqa_frac=0.4, lm_frac=0.0),
}
# shapes: at a CPU budget of minutes a narrow model that takes more steps learns more than a wide
# one, and 8 heads of 16 dimensions learn more than 4 of 32 at the same cost (docs/findings.md). The
# two additions (model.py, "Additions") are on here; the README shows the main job without each.
SHOWO_PRESETS = {"shapes": dict(max_steps=1000, n_embd=128, n_head=8, lr=5e-3, slot_embedding=True, text_conv=3),
                 # CIFAR-10 (10,000 training images): mirrored and partly hidden images, and codes that say their
                 # bits, against a small model learning its images' classes by heart (docs/findings.md; --shift
                 # is measured there too, and off: on one seed it helped neither the losses nor the answers)
                 "cifar10": dict(max_steps=2000, mirror=True, hide_codes=0.5, code_bits=True),
                 "coco": dict(max_steps=1000), "folder": dict(max_steps=1000)}
SHOWO_RESUME_MUST_MATCH = ("dataset", "data_dir", "limit", "mirror", "shift", "hide_codes", "stage", "batch_size", "seed",
                           "lr", "weight_decay", "warmup_steps", "min_lr_frac", "max_steps", "grad_clip")
SHOWO_RESUME_MUST_MATCH += tuple(f.name for f in fields(TaskMix))
FROM_TOKENIZERS = ("text_vocab_size", "codebook_size", "image_tokens")  # ShowoConfig fields the tokenizers fix


# -----------------------------------------------------------------------------
# The one-command pipelines (`python train.py [--dataset D]`): the tokenizers, Show-o's three stages
# with these steps, then the evaluation. Every part runs with its dataset's presets above.
PIPELINE_STAGES = {
    "shapes": {1: 1400, 2: 600, 3: 1400},    # the main job (README: its minutes and figures)
    "cifar10": {1: 1200, 2: 200, 3: 800},    # within an hour on a 2-core CPU (README, "CIFAR-10")
    "coco": {1: 200, 2: 100, 3: 200},        # a smoke run: 80 training images in the shared coco-mini
    "folder": {1: 200, 2: 100, 3: 200},
}
# --preset gpu (chosen by itself on CUDA): one GPU trains a larger model for longer. Options on top of
# the presets above, then the stages' steps; the shapes world keeps its CPU recipe (already tuned).
GPU_PIPELINES = {
    "cifar10": dict(tokenizer=dict(channels=(128, 256), batch_size=256, max_steps=4000, eval_every=1000, compile=True),
                    showo=dict(n_layer=8, n_embd=512, n_head=8, batch_size=256, compile=True),
                    stages={1: 4000, 2: 600, 3: 2400}),
    # batches of 64, as on the CPU: coco-mini has 80 training images
    "coco": dict(tokenizer=dict(channels=(128, 256), compile=True),
                 showo=dict(n_layer=8, n_embd=512, n_head=8, compile=True), stages={1: 1000, 2: 500, 3: 1000}),
}
GPU_PIPELINES["folder"] = GPU_PIPELINES["coco"]


def pipeline_recipe(args):
    """The main job's options -> (run folder, tokenizer flags, flags of every stage, steps per stage).
    The dataset's presets decide everything else; a changed part gets its own run folder (a suffix per
    change), so it never resumes from, or collides with, another recipe's checkpoints."""
    dataset, preset = args.job_dataset, SHOWO_PRESETS[args.job_dataset]
    asked = args.job_preset or ("gpu" if torch.cuda.is_available() else "cpu")
    gpu = asked == "gpu" and dataset in GPU_PIPELINES
    if args.job_preset == "gpu" and not gpu:
        sys.exit(f"error: there is no GPU preset for {dataset}; its CPU recipe runs as fast on a GPU")
    if gpu and not torch.cuda.is_available():
        print("warning: --preset gpu without CUDA: the GPU recipe's larger model runs on this machine's CPU")
    recipe = GPU_PIPELINES[dataset] if gpu else dict(tokenizer={}, showo={}, stages=PIPELINE_STAGES[dataset])
    # the dataset's additions: its preset's, else the model's own defaults (off)
    preset_slot = preset.get("slot_embedding", ShowoConfig.slot_embedding)
    preset_conv = preset.get("text_conv", ShowoConfig.text_conv)
    slot = preset_slot if args.job_slot_embedding is None else args.job_slot_embedding
    conv = preset_conv if args.job_text_conv is None else args.job_text_conv
    try:  # the model's own check, before the tokenizer's minutes of training rather than after
        ShowoConfig(text_conv=conv)
    except ValueError as e:
        sys.exit(f"error: {e}")
    suffix = "-gpu" if gpu else ""
    suffix += (f"-seed{args.job_seed}" if args.job_seed else "") + (f"-limit{args.job_limit}" if args.job_limit else "")
    if slot != preset_slot:
        suffix += "-slot" if slot else "-noslot"
    if conv != preset_conv:
        suffix += f"-textconv{conv}"
    data_flags = ["--dataset", dataset] + (["--data-dir", args.job_data_dir] if args.job_data_dir else [])
    data_flags += ["--seed", str(args.job_seed)] + (["--limit", str(args.job_limit)] if args.job_limit else [])
    showo_flags = data_flags + as_flags(dict(recipe["showo"], slot_embedding=slot, text_conv=conv))
    return (args.job_out or f"out/{dataset}{suffix}", data_flags + as_flags(recipe["tokenizer"]), showo_flags,
            recipe["stages"])


# -----------------------------------------------------------------------------
# The command line: one --flag per config field, grouped as the dataclasses group them


def documented_fields(config_cls, title):
    """{field: (group, help)} from the dataclass's source, so every option is documented once, where
    it is defined: the `# comment` after a field is its help, and a comment on a line of its own
    ("# optimisation") opens the group of the fields below it (the first group is `title`)."""
    names, group, found = {f.name for f in fields(config_cls)}, title, {}
    for line in inspect.getsource(config_cls).splitlines():
        if heading := re.match(r"^\s+# (.+)$", line):
            group = heading[1]
        elif (m := re.match(r"^\s+(\w+): [^=]+=[^#\n]*(?:#\s*(.+))?$", line)) and m[1] in names:
            found[m[1]] = (group, m[2] or "")
    return found


def int_tuple(text):
    """A command-line list of widths, "32,64,64" -> (32, 64, 64)."""
    return tuple(int(c) for c in text.split(","))


def add_config_arguments(parser, config_cls, presets, title, skip=()):
    """One --flag per field of config_cls and of its nested configs, each in its --help group;
    defaults stay None so that a preset (shown in the help: per dataset, or per stage) can fill them."""
    for nested_cls, nested_title in nested_configs(config_cls):
        add_config_arguments(parser, nested_cls, presets, nested_title, skip)
    groups, documented = {}, documented_fields(config_cls, title)
    shown = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else v  # noqa: E731 (as typed)
    for f in fields(config_cls):
        if f.name in skip or is_dataclass(f.default_factory):
            continue
        group, comment = documented.get(f.name, (title, ""))
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        preset_note = ", ".join(f"{k}: {shown(v[f.name])}" for k, v in presets.items() if f.name in v)
        text = f"{comment} [default {shown(f.default)}" + (f"; presets: {preset_note}]" if preset_note else "]")
        text = text.replace("%", "%%")  # argparse %-formats help strings
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:  # --flag / --no-flag; when neither is given a dataset preset or the default decides
            groups[group].add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            groups[group].add_argument(flag, type=int_tuple if f.type is tuple else f.type, default=None, help=text)


def nested_configs(config_cls):
    """[(dataclass, --help title)] of a config's nested configs: the model's own, the batch mix."""
    return [(f.default_factory, f"{f.name} ({f.default_factory.__name__}, {f.default_factory.__module__}.py)")
            for f in fields(config_cls) if is_dataclass(f.default_factory)]


def option_names(config_cls):
    """Every option a config takes from a flat dict: its own fields and its nested configs'."""
    names = set()
    for f in fields(config_cls):
        names |= option_names(f.default_factory) if is_dataclass(f.default_factory) else {f.name}
    return names


def make_config(config_cls, values):
    """config_cls from one flat dict of option values: each nested config takes its own fields
    (keys that are no option, e.g. argparse's own, are left alone; presets are checked by a test)."""
    parts = {f.name: make_config(f.default_factory, values) for f in fields(config_cls) if is_dataclass(f.default_factory)}
    own = {f.name: values[f.name] for f in fields(config_cls) if f.name in values and f.name not in parts}
    return config_cls(**own, **parts)


def config_from_args(args, parser, config_cls, preset):
    """The defaults, then the dataset's preset, then what the user typed; a bad value is a usage error."""
    values = {**preset, **{k: v for k, v in vars(args).items() if v is not None}}
    try:
        return make_config(config_cls, values)
    except ValueError as e:
        parser.error(str(e))


def as_flags(options):
    """The inverse of the parsing above, for the main job's presets: {"max_steps": 4000,
    "channels": (128, 256), "compile": True} -> ["--max-steps", "4000", "--channels", "128,256", "--compile"]."""
    flags = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif value is not None:  # None: the option's own default, so no flag
            flags += [flag, ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)]
    return flags


# -----------------------------------------------------------------------------
# The device a run uses (`--device`; sample.py and evaluate.py take the same option)


def autodetect_device(requested="auto"):
    """cuda -> mps -> cpu, unless the user asked for one."""
    if requested != "auto":
        try:
            device = torch.device(requested)
        except RuntimeError:
            sys.exit(f"error: --device {requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
        if device.type == "cuda" and not torch.cuda.is_available():
            sys.exit(f"error: --device {requested} asked for, but CUDA is not available here")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            sys.exit(f"error: --device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            sys.exit("error: --device mps asked for, but MPS is not available here")
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
