"""
The Show-o transformer (arXiv 2408.12528): one decoder-only transformer over one vocabulary of text
ids, special tokens and image codes, trained with two objectives at once (section 3.3):

  - NTP, next-token prediction, on text: the usual shifted cross-entropy of a language model, for
    captions and answers (understanding rows) and plain text (language-modelling rows);
  - MTP, mask-token prediction, on images: a random share of an image's tokens is replaced by [MASK]
    and the model predicts the code AT each masked position (not shifted), seeing the rest of the
    image and the prompt through omni-attention (attention.py). This is MaskGIT's discrete diffusion.

Follow one training row: tokenizer.TokenSpace lays it out ([T2I] [SOT] text [EOT] [SOI] image [EOI]),
`mask_image_tokens` hides part of the image, `Showo.forward` embeds the ids, runs the blocks under
the omni-attention mask of those ids, and `task_losses` scores the masked image positions and the
text targets; `joint_loss` weights them (section 3.3, equation 4). Sampling (section 3.5):
`generate_images` (MaskGIT, with guidance; inpainting, extrapolation and stories are all "a prefix,
then a canvas") and `generate_text` (greedy or sampled decoding with a KV cache).

Architecture (section 3.1): pre-norm blocks of multi-head attention and an MLP, RoPE positions, and
QK-Norm (a LayerNorm over each head's query and key, after the projections and before RoPE), the
one change Show-o makes to its LLM, which keeps attention logits bounded when image and text tokens
of very different statistics share one softmax. `ShowoConfig()` is that model. Our additions for a
toy model trained from scratch, each one option and off by default, live in the "Additions" section:
a learned grid-slot embedding for [MASK] tokens (slot_embedding), a short causal convolution over
text embeddings (text_conv), and a learned map of each image code's K bits (code_bits).
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import attention, image_span_index, omni_attention_mask
from tokenizer import TASKS, TokenSpace, option, read_checkpoint

IGNORE = -100  # label of positions without a loss (F.cross_entropy's ignore_index)


@dataclass
class ShowoConfig:
    """Show-o as published by default; the three options at the end are our additions (off = the paper's)."""
    text_vocab_size: int = option(512, "ids of the BPE text tokenizer (set from the tokenizers by train.py)")
    codebook_size: int = option(1024, "2^K image codes of the LFQ tokenizer (set from the tokenizers)")
    image_tokens: int = option(64, "tokens per image, h * w of its grid (set from the tokenizers)")
    n_layer: int = option(4, "transformer blocks")
    n_head: int = option(4, "attention heads, each with its own QK-Norm'd queries and keys")
    n_embd: int = option(256, "width of the residual stream")
    mlp_ratio: int = option(4, "MLP hidden width = mlp_ratio * n_embd")
    rope_base: float = option(10000.0, "RoPE's base: channel pair i turns at rope_base^(-2i/head_dim)")
    max_text: int = option(40, "text ids per [SOT]..[EOT] span; longer text is cut")
    slot_embedding: bool = option(False, "addition: [MASK] slots add a learned embedding of their grid place")
    text_conv: int = option(0, "addition: text tokens add a learned mix of the previous N tokens' embeddings")
    code_bits: bool = option(False, "addition: image codes add a learned projection of their K bits (+-1)")

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "mlp_ratio", "max_text", "image_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd {self.n_embd} must split into {self.n_head} heads of even size (for RoPE)")
        if self.text_conv < 0:
            raise ValueError(f"text_conv must be >= 0 (0: no text convolution), got {self.text_conv}")

    @property
    def space(self):
        return TokenSpace(self.text_vocab_size, self.codebook_size)


# -----------------------------------------------------------------------------
# Positions: rotary embeddings (RoFormer, arXiv 2104.09864), 1D as in Show-o's LLM

def rope_tables(positions, head_dim, base):
    """Token positions (L,) -> cos, sin of shape (L, head_dim/2): channel pair i of a head turns by
    angle position * base^(-2i/head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)  # (D/2,)
    angles = positions[:, None].float() * inv_freq                                                # (L, D/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate each (x1, x2) pair of x (B, H, L, D) by its position's angle. The dot product of a
    rotated query and key then depends only on their distance, so left padding shifts nothing."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, L, D/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


# -----------------------------------------------------------------------------
# The transformer

class SelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        # QK-Norm: one LayerNorm over the head dimension, shared by the heads, applied per head.
        self.q_norm = nn.LayerNorm(self.head_dim)
        self.k_norm = nn.LayerNorm(self.head_dim)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, mask, rope, cache=None):
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, self.head_dim).unbind(2)  # each (B, L, H, D)
        # QK-Norm, after the projection and before RoPE. Under bf16 autocast a LayerNorm computes in
        # fp32 while v stays bf16: q and k go back to v's dtype, so attention sees one dtype.
        q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:  # decoding: attend to the keys/values of every earlier token too
            k, v = cache.extend(self, k, v)            # (B, H, L_past + L, D)
        y = attention(q, k, v, mask)                   # (B, H, L, D)
        return self.proj(y.transpose(1, 2).reshape(B, L, C))


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.n_embd)
        # exact GELU: Phi-1.5 uses the tanh approximation, which is no cheaper and on a CPU slower
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd))

    def forward(self, x, mask, rope, cache=None):
        x = x + self.attn(self.norm1(x), mask, rope, cache)
        return x + self.mlp(self.norm2(x))


class KVCache:
    """The keys and values every layer has computed so far, so text decoding runs each new token
    through the model once instead of re-running the whole sequence per token (the public Show-o
    code recomputes everything). `visible` (B, L_past) marks which cached positions are real tokens
    (padding stays hidden from every later token). A frozen cache is read and never extended: MaskGIT
    runs every step's canvas after the one cached prompt (generate_images)."""

    def __init__(self):
        self.kv, self.visible, self.frozen = {}, None, False
        self.tail = None  # TextConv: the embeddings of the last few tokens, for the next token's mix

    @property
    def length(self):
        return 0 if self.visible is None else self.visible.shape[1]

    def extend(self, layer, k, v):
        if layer in self.kv:
            past_k, past_v = self.kv[layer]
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        if not self.frozen:
            self.kv[layer] = (k, v)
        return k, v


class Showo(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg, self.space = cfg, cfg.space
        self.embed = nn.Embedding(self.space.vocab_size, cfg.n_embd)  # text, specials, codes, [MASK]
        # our additions (section below), None when off: then this is Show-o's model as published
        self.slot_embedding = nn.Embedding(cfg.image_tokens, cfg.n_embd) if cfg.slot_embedding else None
        self.text_conv = TextConv(cfg.n_embd, cfg.text_conv) if cfg.text_conv else None
        self.code_bits = nn.Linear(cfg.codebook_size.bit_length() - 1, cfg.n_embd, bias=False) if cfg.code_bits else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, self.space.vocab_size, bias=False)  # one head for every token
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:  # GPT-2: scale the residual outputs so depth does not grow the stream
            for layer in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def forward(self, ids, labels=None, task=None, cache=None):
        """Always (logits, losses), nanoGPT's (logits, loss) with one loss per term of equation 4:
          - ids (B, L) alone (sampling, decoding): (logits (B, L, V) over the whole vocabulary, None);
          - with labels (B, L) and task (B,) (training): (None, {"t2i" | "mmu" | "lm": scalar}), the
            terms task_losses finds rows for. No logits come back: training projects only the
            positions that carry a loss.

        With a KVCache, ids continue the sequence the cache holds: an empty cache is filled with the
        whole prefix (under its omni-attention mask); later calls pass new tokens, which see every
        earlier real token and each other by the omni rule (text causally, an image span wholly):
        exactly the full row's mask, as long as nothing cached attends to them, which holds for text
        that follows everything cached and for an image after its prompt."""
        B, L = ids.shape
        past = 0 if cache is None else cache.length
        mask = omni_attention_mask(ids, self.space)                                   # (B, 1, L, L)
        if past:
            mask = torch.cat([cache.visible[:, None, None, :].expand(B, 1, L, past), mask], dim=-1)  # (B, 1, L, past + L)
        if cache is not None and not cache.frozen:
            visible = ids != self.space.pad
            cache.visible = visible if past == 0 else torch.cat([cache.visible, visible], dim=1)
        positions = torch.arange(past, past + L, device=ids.device)                   # (L,) one table for all rows
        rope = rope_tables(positions, self.cfg.n_embd // self.cfg.n_head, self.cfg.rope_base)  # (L, D/2) each
        x = self.embed(ids)  # (B, L, C)
        if self.slot_embedding is not None or self.text_conv is not None or self.code_bits is not None:
            x = x + self.additions(ids, x, cache, past)
        for block in self.blocks:
            x = block(x, mask, rope, cache)
        x = self.norm(x)  # (B, L, C)
        if labels is None:
            return self.head(x), None  # (B, L, V)
        return None, task_losses(x, labels, task, self.space, self.head)

    def additions(self, ids, x, cache, past):
        """What our additions add to the embeddings x (B, L, C) of ids (B, L) (section below)."""
        slot = image_slot_index(ids, self.space)                                       # (B, L), -1 off images
        extra = torch.zeros_like(x)
        if self.slot_embedding is not None:  # [MASK] slots only: a known code says what it is already
            extra = extra + self.slot_embedding(slot.clamp(min=0)) * (ids == self.space.mask)[..., None]
        if self.text_conv is not None:  # text only (every token outside an image span); [PAD] adds nothing
            mix, tail = self.text_conv(x * (ids != self.space.pad)[..., None], None if past == 0 else cache.tail)
            extra = extra + mix * (slot < 0)[..., None]
            if cache is not None and not cache.frozen:
                cache.tail = tail
        if self.code_bits is not None:  # code c's bits b_k = (c >> k) & 1, as +-1: LFQ's code vector
            code = (ids - self.space.image_offset).clamp(0, self.space.codebook_size - 1)  # (B, L)
            bits = (code[..., None] >> torch.arange(self.code_bits.in_features, device=ids.device)) & 1  # (B, L, K)
            extra = extra + self.code_bits(bits.to(x.dtype) * 2 - 1) * self.space.is_image_code(ids)[..., None]
        return extra


# -----------------------------------------------------------------------------
# Additions for a small model trained from scratch: not in the paper, each one option of ShowoConfig,
# off by default. Show-o starts from a pretrained LLM (Phi-1.5); these give a model that starts from
# nothing, and trains for minutes, two things that LLM brings along (README, "Differences from the paper").

def image_slot_index(ids, space):
    """(B, L) ids -> (B, L) int64: i at the i-th token (0-based, row-major on the tokenizer's grid)
    of every image span, whether it holds a code or [MASK]; -1 elsewhere ([SOI]/[EOI] included)."""
    pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)                # (B, L)
    last_soi = torch.where(ids == space.soi, pos, torch.full_like(pos, -1)).cummax(1).values
    inside = (image_span_index(ids, space) > 0) & (ids != space.soi) & (ids != space.eoi)
    return torch.where(inside, pos - last_soi - 1, torch.full_like(pos, -1))


# slot_embedding: a canvas of [MASK]s is N copies of one id, and RoPE only tells them how far apart
# they are along the flattened row, so a masked slot cannot tell which row and column of the grid it
# fills ("the top left") without first finding [SOI]. A learned embedding per grid slot, added to
# [MASK] tokens only (Showo.additions), hands it that. Known codes carry their own content; added to
# them too, it stops a small model from learning yes/no existence questions (docs/findings.md).
# code_bits: to the model an image code is an arbitrary id whose embedding is learned only from the
# rows it occurs in, a few hundred for most of CIFAR-10's 4,096 codes. LFQ made every code from K signs,
# and codes that share most signs decode alike; a learned map of the signs, added to each image code,
# hands the model that likeness from the first step (docs/findings.md: held-out MTP loss 6.99 -> 6.67).


class TextConv(nn.Module):
    """text_conv: a short causal convolution over the embeddings: token t gets sum_j w_j * e_{t-j},
    j = 1..N, one learned weight per channel and lag (zero at the start: the model begins as the plain one).

    Why: to answer "what color is the circle?" the answer is predicted at "?", whose embedding says
    nothing about circles. Attention must first copy "circle" into "?" (a head that looks at the
    previous token) before another head can use it to find the circle's image tokens. Show-o
    inherits such heads from its pretrained LLM; a small model trained from scratch for minutes
    never formed them and answered with a random object's colour (docs/findings.md). With this mix
    "?" holds "circle" from the first layer, as in H3's shift SSM (arXiv 2212.14052) and Canon layers
    (arXiv 2512.17351), which make associative recall easy."""

    def __init__(self, n_embd, n_prev):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_prev, n_embd))  # (N, C): row j weighs the (j+1)-th token back

    def forward(self, e, tail=None):
        """e (B, L, C) embeddings ([PAD] zeroed); tail (B, N, C) the N embeddings before them (decoding
        with a KV cache), else zeros -> (mix (B, L, C), the new tail (B, N, C))."""
        N, (B, L, C) = self.weight.shape[0], e.shape
        full = torch.cat([e.new_zeros(B, N, C) if tail is None else tail, e], dim=1)  # (B, N + L, C)
        mix = sum(self.weight[j] * full[:, N - 1 - j:N - 1 - j + L] for j in range(N))  # e_{t-1-j}
        return mix, full[:, L:]


# -----------------------------------------------------------------------------
# The joint objective (section 3.3)

def mask_image_tokens(ids, task, space, generator=None):
    """MTP corruption of a padded batch. In every image of a text-to-image or interleaved row: draw
    t ~ U(0, 1) and mask round(N cos(pi/2 t)) of its N tokens (at least one), chosen uniformly: the
    first ones of a random permutation. The cosine schedule masks 64% of an image on average and
    trains every ratio the sampler will meet, from a blank canvas (t -> 0) to one token left (t -> 1).
    Understanding rows keep their images: there the image is the input, not the target.
    ids (B, L), task (B,) on the CPU -> (input ids with [MASK] at the chosen positions, bool (B, L) of them)."""
    masked = torch.zeros_like(ids, dtype=torch.bool)
    span = image_span_index(ids, space)                               # (B, L) k for the k-th image of the row
    for b in range(len(ids)):
        if TASKS[task[b]] not in ("t2i", "interleaved"):
            continue
        for k in range(1, int(span[b].max()) + 1):
            slots = ((span[b] == k) & space.is_image_code(ids[b])).nonzero()[:, 0]  # (N,) its codes, not [SOI]/[EOI]
            t = torch.rand((), generator=generator)
            n = max(1, round(len(slots) * math.cos(math.pi / 2 * float(t))))
            masked[b, slots[torch.randperm(len(slots), generator=generator)[:n]]] = True
    return torch.where(masked, torch.full_like(ids, space.mask), ids), masked


def training_labels(ids, text_targets, masked):
    """Labels (B, L): the true id where a loss is taken (masked image slots, text targets), IGNORE
    elsewhere: never on padding, prompts, [SOI]/[EOI] or the visible image tokens."""
    return torch.where(text_targets | masked, ids, torch.full_like(ids, IGNORE))


def loss_positions(labels, task, space):
    """Where each term of equation 4 takes its loss: labels (B, L), task (B,) -> {"t2i": the labelled
    image slots (B, L), "mmu" / "lm": (B, L-1) positions whose next label is a text target, by row task}."""
    nxt = labels[:, 1:]                                          # (B, L-1) target for position i is at i+1
    is_text = (nxt != IGNORE) & ~space.is_image_code(nxt)
    understanding = (task == TASKS.index("mmu")) | (task == TASKS.index("interleaved"))  # (B,)
    return dict(t2i=space.is_image_code(labels), mmu=is_text & understanding[:, None],
                lm=is_text & (task == TASKS.index("lm"))[:, None])


def task_losses(hidden, labels, task, space, head=lambda h: h):
    """Per-task mean cross-entropies from the final states hidden (B, L, C) and labels (B, L)
    (IGNORE = no loss), at loss_positions. head maps states to logits over the vocabulary (the
    model's output layer); it is applied only at the positions that carry a loss, about a quarter of
    a training batch, which skips three quarters of the largest matrix product and its softmax (about
    a fifth of a step's time on the CPU). With the default head (identity) hidden may be logits (B, L, V).

    t2i: MTP. At each labelled image position the prediction is of the code AT that position (no
         shift: the [MASK] is at the answer's own place). The logits are cut to the 2^K image codes
         before the softmax: the answer is always a code, exactly as in the sampler.
    mmu, lm: NTP. The logits at position i predict the label at i + 1 (shifted), over the whole
         vocabulary; rows of understanding tasks (and interleaved rows' text) count as mmu.
    -> {term: scalar tensor} for the terms the batch has rows for."""
    losses, where = {}, loss_positions(labels, task, space)
    if where["t2i"].any():
        image_logits = head(hidden[where["t2i"]])[:, space.image_offset:space.mask]  # (n, 2^K)
        losses["t2i"] = F.cross_entropy(image_logits.float(), labels[where["t2i"]] - space.image_offset)
    for name in ("mmu", "lm"):
        if where[name].any():
            losses[name] = F.cross_entropy(head(hidden[:, :-1][where[name]]).float(), labels[:, 1:][where[name]])
    return losses


def joint_loss(losses, weights):
    """L = w_t2i * L_MTP + w_mmu * L_MMU + w_lm * L_LM (Show-o's configs: 1, 1, 0.1), over the terms present."""
    return sum(weights[name] * value for name, value in losses.items())


def optimizer_groups(model, weight_decay):
    """AdamW groups: decay the matrices of linear layers only. Norm gains, biases and the embedding
    table get none: decaying a LayerNorm gain pulls it toward 0 (not its neutral 1) and decaying
    embeddings shrinks rare tokens' rows just for being rare (one of the public code's quirks)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            (decay if isinstance(module, nn.Linear) and name == "weight" else no_decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


# -----------------------------------------------------------------------------
# Sampling (section 3.5; MaskGIT, arXiv 2202.04200)

def masking_schedule(step, steps, n_tokens):
    """Tokens still masked after step `step` (0-based) of `steps`: floor(N cos(pi/2 (step+1)/T)),
    the cosine schedule that training's mask ratios were drawn from (0 after the last step)."""
    return math.floor(n_tokens * math.cos(math.pi / 2 * (step + 1) / steps))


def classifier_free_guidance(logits, scale):
    """logits (2B, ...): B conditional rows, then their B unconditional twins -> (B, ...):
    (1 + s) cond - s uncond (Show-o, MUSE). s = 0 is the conditional model alone."""
    cond, uncond = logits.chunk(2)
    return cond if scale == 0 else (1 + scale) * cond - scale * uncond


def device_generator(generator, device):
    """The samplers' one seeding rule: every draw is made on the model's device, by `generator` itself
    when it lives there, else by a generator on that device seeded with one draw from it. A seed gives
    the same samples on every run on one kind of device; a GPU and the CPU give different ones."""
    if generator is None or generator.device == device:
        return generator
    return torch.Generator(device=device).manual_seed(int(torch.randint(2 ** 62, (1,), generator=generator)))


@torch.no_grad()
def generate_images(model, prompts, steps=12, guidance=0.0, temperature=4.5, known=None, generator=None,
                    record=False, cache_prompt=True, stories=None):
    """Text-to-image by iterative parallel decoding (MaskGIT), with Show-o's layout.

    prompts: B lists of text ids (an empty list is the unconditional prompt).
    stories: instead of prompts, B stories so far, as TokenSpace.interleaved segments (text id lists
             and code arrays) that end with the text of the image to draw (sample.generate_story).
    known:   optional (B, N) int64 image codes to keep (>= 0) and slots to generate (-1): inpainting
             and extrapolation use the same loop; known codes never change.
    Each step: run the model on [T2I] [SOT] prompt [EOT] [SOI] canvas [EOI] (or the story, then
    [SOI] canvas [EOI]; its unconditional twin is the empty prompt's); keep the logits of the
    image slots, restricted to the 2^K codes; with guidance s, mix (1 + s) cond - s uncond (both in one
    batched forward); sample a code at every slot (known slots keep theirs); confidence = log p of the
    sampled code, +inf at known slots; keep masked the n lowest of confidence + temperature_t x Gumbel
    noise, n from masking_schedule clamped to [1, unknown - 1] before the last step, the temperature
    annealed linearly to 0: temperature_t = temperature x (1 - (step + 1) / steps)
    (Show-o's code multiplies it again every step, so its annealing compounds; this one does not).
    The clamp makes every step fix at least one token of every row still being drawn, and the loop
    stops as soon as no slot is masked: with more steps than tokens, no forward pass is wasted.
    cache_prompt: under omni-attention the prompt never attends to the image, so its keys and values are
    the same at every step; they are computed once (a frozen KVCache) and each step runs only [SOI]
    canvas [EOI]: the images of recomputing the whole row (False), at less cost.
    -> codes (B, N) and, with record=True, the canvas after every step, [(B, N)] with -1 if masked."""
    space, n, device = model.space, model.cfg.image_tokens, next(model.parameters()).device
    if steps < 1 or guidance < 0:
        raise ValueError(f"steps must be >= 1 and guidance >= 0, got {steps} and {guidance}")
    rows = ([space.interleaved([*s, n], model.cfg.max_text, warn=True) for s in stories] if stories is not None
            else [space.t2i(p, n, model.cfg.max_text, warn=True) for p in prompts])
    B = len(rows)
    rows += [space.t2i([], n)] * B if guidance > 0 else []  # the unconditional twins, after the conditional rows
    ids = space.pad_rows(rows, left=True)[0].to(device)      # left-padded: the image slots end every row
    known = torch.full((B, n), -1, dtype=torch.long) if known is None else torch.as_tensor(known).long().clone()
    if known.shape != (B, n) or (known.numel() and (known.min() < -1 or known.max() >= space.codebook_size)):
        raise ValueError(f"known codes must be ({B}, {n}), each -1 (generate) or in [0, {space.codebook_size})")
    known, generator = known.to(device), device_generator(generator, device)
    to_generate = (known < 0).sum(1)     # (B,) the N of the schedule, per row
    start, cache = (ids.shape[1] - n - 2, KVCache()) if cache_prompt else (0, None)  # ids[:, start] = [SOI]
    if cache_prompt and (known < 0).any():
        model(ids[:, :start], cache=cache)  # the prompt, once: [T2I] [SOT] prompt [EOT], left-padded
        cache.frozen = True
    span = ids[:, start:]                # what each step runs (a view: writing the canvas writes ids)
    slots = slice(span.shape[1] - 1 - n, span.shape[1] - 1)  # its image slots, before the final [EOI]
    history = []
    for step in range(steps):
        if not (known < 0).any():        # every slot is fixed: nothing left to draw
            break
        canvas = torch.where(known >= 0, known + space.image_offset, torch.full_like(known, space.mask))  # (B, n)
        span[:, slots] = canvas.repeat(len(rows) // B, 1)
        logits, _ = model(span, cache=cache)
        logits = logits[:, slots, space.image_offset:space.mask].float()  # (B or 2B, n, C) codes only
        if guidance > 0:
            logits = classifier_free_guidance(logits, guidance)
        log_probs = logits.log_softmax(-1)
        sampled = torch.multinomial(log_probs.exp().view(B * n, -1), 1, generator=generator).view(B, n)
        sampled = torch.where(known >= 0, known, sampled)
        confidence = log_probs.gather(-1, sampled[..., None])[..., 0]
        confidence = torch.where(known >= 0, torch.full_like(confidence, math.inf), confidence)
        unknown = (known < 0).sum(1)                                                      # (B,)
        if step == steps - 1:
            keep_masked = torch.zeros_like(unknown)
        else:
            target = torch.tensor([masking_schedule(step, steps, int(t)) for t in to_generate], device=device)
            keep_masked = torch.minimum(target.clamp(min=1), (unknown - 1).clamp(min=0))
        u = torch.rand(confidence.shape, generator=generator, device=device).clamp(1e-20, 1 - 1e-7)
        score = confidence + temperature * (1 - (step + 1) / steps) * -torch.log(-torch.log(u))  # + Gumbel noise
        rank = score.argsort(dim=1).argsort(dim=1)                                        # 0 = least confident
        known = torch.where(rank < keep_masked[:, None], torch.full_like(sampled, -1), sampled)
        if record:
            history.append(known.cpu().clone())
    return known.cpu(), history


def sample_next(logits, temperature=0.0, top_k=None, generator=None):
    """logits (B, V) -> ids (B,): greedy at temperature 0, else softmax(logits / temperature) over
    the top_k most likely ids (all ids when top_k is None)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]  # generator: on logits' device


@torch.no_grad()
def generate_text(model, prefixes, max_new_tokens=32, temperature=0.0, top_k=None, generator=None, use_cache=True,
                  stop_at_eot=True):
    """Continue each prefix (a Row ending where text goes on: `space.mmu(codes, prompt)` for captions
    and answers, `space.lm(prompt, close=False)` for plain text) until [EOT] or max_new_tokens.
    Prefixes of different lengths share a batch by left padding (hidden by the mask; RoPE only sees
    relative positions). Only text ids and [EOT] can be produced. With use_cache, each new token goes
    through the model once (KVCache); without, the whole sequence is recomputed per token: the same
    tokens, greedy, at several times the cost. stop_at_eot=False never produces [EOT] (benchmarks).
    -> B lists of new ids (without the [EOT])."""
    space, device = model.space, next(model.parameters()).device
    ids = space.pad_rows(prefixes, left=True)[0].to(device)
    generator, B = device_generator(generator, device), len(prefixes)
    allowed = torch.zeros(space.vocab_size, dtype=torch.bool, device=device)
    allowed[:space.text_vocab_size] = True
    allowed[space.eot] = stop_at_eot
    cache = KVCache() if use_cache else None
    logits, _ = model(ids, cache=cache)
    out, done = [[] for _ in range(B)], torch.zeros(B, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        nxt = sample_next(logits[:, -1].masked_fill(~allowed, -math.inf), temperature, top_k, generator)
        nxt = torch.where(done, torch.full_like(nxt, space.pad), nxt)  # finished rows only pad
        for b in (~done & (nxt != space.eot)).nonzero().flatten().tolist():
            out[b].append(int(nxt[b]))
        done |= nxt == space.eot
        if done.all():
            break
        if use_cache:
            logits, _ = model(nxt[:, None], cache=cache)
        else:
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            logits, _ = model(ids)
    return out


# -----------------------------------------------------------------------------
# Devices and checkpoints (train.py, sample.py and the evaluation all use these)

def pick_device(requested="auto"):
    """cuda -> mps -> cpu, unless the user asked for one (--device); a device this machine lacks is an error."""
    if requested == "auto":
        mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"--device {requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps asked for, but MPS is not available here")
    return device


def autocast(device, bf16):
    """bf16 autocast where asked for (`--bf16`; the GPU presets turn it on), on any device: matrix
    products in bf16, norms, softmaxes and the losses in fp32. Off: plain fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def showo_checkpoint(model, **extra):
    """One plain dict (config as a dict), loadable with torch.load(weights_only=True). train.py adds
    the tokenizers it was trained with, so a checkpoint samples on its own (sample.Pipeline)."""
    return dict(kind="Show-o", config=asdict(model.cfg), model=model.state_dict(), **extra)


def load_showo(path):
    """-> (model in eval mode on the CPU, checkpoint dict). Clear errors for a missing, foreign or damaged file."""
    ckpt = read_checkpoint(path, "Show-o", "; train one with `python train.py showo`", ("tokenizers", "train_config", "step"))
    try:
        model = Showo(ShowoConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise ValueError(f"{path} does not match this version's Show-o model: {e}") from e
    return model.eval(), ckpt
