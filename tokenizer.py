"""
Tokenizers: everything that turns text and pixels into integer ids (Show-o, arXiv 2408.12528, section 3.1).

1. The text tokenizer: a small byte-level BPE vocabulary, trained on the dataset's captions by
   `train_bpe` below, saved in tiktoken's rank-file format and encoded by a `tiktoken.Encoding`.
   Nothing is downloaded.
2. The image tokenizer: a convolutional autoencoder with lookup-free quantization (LFQ), as in
   MAGVIT-v2 (arXiv 2310.05737, section 3.1). Each latent position holds K channels, each quantized
   to its sign, so a position is one of 2^K codes and the "codebook" is implicit: no embedding
   table, no nearest-neighbour search.
3. The unified token space (`TokenSpace`): text ids, special tokens, image codes and [MASK] in one
   vocabulary, and the row layouts of every task.

Show-o uses a pretrained MAGVIT-v2 tokenizer (K = 13, 16x downsampling) and never released its
training code, so this file trains one from scratch at toy scale (32x32 images -> 4x4 tokens for the
shapes world at 8x downsampling, 8x8 for photos at 4x).

Follow one image: `ImageTokenizer.encode(images)` runs the `Encoder` (pixels -> K-channel latent),
RMS-normalises it, takes signs and packs them into an integer code per position (`LFQ`);
`decode(codes)` unpacks the bits back into +-1 vectors and runs the `Decoder`.
"""
import base64
import numbers
import os
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F


def option(default, help):
    """A config field with its --help text (train.py builds the command line from these)."""
    return field(default=default, metadata={"help": help})


# -----------------------------------------------------------------------------
# Text: byte-level BPE, trained here, in tiktoken's rank-file format

# Pre-tokenization splits text into chunks that BPE never merges across: an optional space plus a
# run of letters, digits or other symbols, or whitespace (GPT-2's idea). The pattern must work both
# in Python's `re` (training) and in tiktoken's Rust regex (encoding), and must match EVERY
# character: tiktoken only encodes what the pattern matches, so a gap would silently drop text.
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""


def train_bpe(texts, vocab_size):
    """Learn byte-level BPE merges from strings -> ranks {token bytes: rank}, tiktoken's format.
    Ranks 0..255 are the single bytes (so any string, in any script, can be encoded); each merge adds
    the byte string of the most frequent adjacent pair. tiktoken encodes by repeatedly merging the
    adjacent pair whose concatenation has the lowest rank, which replays these merges in order."""
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be >= 256 (the single bytes), got {vocab_size}")
    chunk_counts = Counter(chunk for text in texts for chunk in re.findall(SPLIT_PATTERN, text))
    words = [[bytes([b]) for b in chunk.encode("utf-8")] for chunk in chunk_counts]  # each chunk as its bytes
    counts = list(chunk_counts.values())
    ranks = {bytes([b]): b for b in range(256)}
    while len(ranks) < vocab_size:
        pair_counts = Counter()
        for word, count in zip(words, counts):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += count
        if not pair_counts:
            break  # every chunk is a single token already: the corpus is exhausted
        best = min(pair_counts, key=lambda p: (-pair_counts[p], p))  # ties: the smallest bytes, deterministic
        merged = best[0] + best[1]
        ranks.setdefault(merged, len(ranks))  # two different pairs can spell the same bytes: one rank
        for word in words:  # replace every occurrence of the pair, left to right
            i = 0
            while i < len(word) - 1:
                if word[i] == best[0] and word[i + 1] == best[1]:
                    word[i:i + 2] = [merged]
                i += 1
    return ranks


def bpe_text(ranks):
    """Ranks -> tiktoken's rank file: one line per token, `base64(token bytes) rank`."""
    return "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(ranks.items(), key=lambda kv: kv[1]))


class TextTokenizer:
    """Text <-> ids with a tiktoken Encoding built WITHOUT special tokens: the task tokens ([SOT],
    [T2I], ...) live in the unified token space after the text ids, so no user string (not even
    "<|t2i|>") can produce one."""

    def __init__(self, text):
        """text: the rank file's contents (bpe_text), as saved in text.tiktoken and in every checkpoint."""
        self.text, ranks = text, {}
        for line_no, line in enumerate(text.splitlines(), 1):
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError as e:
                raise ValueError(f"BPE line {line_no}: expected 'base64-token rank', got {line!r}") from e
        self.encoding = tiktoken.Encoding(name="showo-bpe", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                                          special_tokens={})
        self.vocab_size = self.encoding.n_vocab

    def encode(self, text):
        return self.encoding.encode_ordinary(text)  # never a special token: special-looking text stays text

    def decode(self, ids):
        return self.encoding.decode(ids)


# -----------------------------------------------------------------------------
# Images: lookup-free quantization (MAGVIT-v2, section 3.1)

class LFQ(nn.Module):
    """Lookup-free quantizer: each of K latent channels becomes its sign, q in {-1, +1}^K.

    Bit order: channel i is bit i of the code index, channel 0 the LEAST significant (MAGVIT-v2,
    Open-MAGVIT2; Show-o's code uses the opposite order): index = sum_i [q_i > 0] * 2^i.

    Training losses (returned by `forward`):
    - commitment  ||z - sg(q)||^2 pulls latents towards the corners they quantize to;
    - entropy penalty  E[H(p(c|z))] - H(E[p(c|z)])  with p(c|z) = softmax_c(-||z - c||^2 / tau):
      low per-token entropy = confident assignments, high entropy of the batch-mean distribution =
      the whole codebook gets used (no collapse). Since ||z - c||^2 = ||z||^2 + K - 2 z.c, the softmax
      factorises over bits: p(bit_i = +1 | z) = sigmoid(4 z_i / tau), so the per-token term is exact
      and cheap. The batch term needs the mean of the full 2^K distribution; it is exact too, without a
      (tokens, 2^K) table: a token's distribution over codes is the outer product of its distributions
      over the low and the high half of the bits, so the batch mean is one matrix product of two
      (tokens, 2^(K/2)) tables.
    """

    def __init__(self, bits, tau=0.01, entropy_tokens=1024):
        super().__init__()
        self.bits, self.tau, self.entropy_tokens = bits, tau, entropy_tokens
        self.register_buffer("powers", 2 ** torch.arange(bits), persistent=False)  # (K,)

    def indices_to_codes(self, indices):
        """(...) int64 -> (..., K) float in {-1, +1}."""
        return ((indices.unsqueeze(-1) // self.powers) % 2).float() * 2 - 1

    def codes_to_indices(self, codes):
        """(..., K) with the sign of each channel -> (...) int64. Exactly zero counts as -1."""
        return ((codes > 0).long() * self.powers).sum(-1)

    def entropy_penalty(self, z):
        """z: (N, K) latents -> (penalty, per-token entropy, batch entropy), in nats, fp32."""
        logits = 4 * z.float() / self.tau                   # (N, K): p(bit = +1 | z) = sigmoid(logits)
        log_p1, log_p0 = F.logsigmoid(logits), F.logsigmoid(-logits)
        per_token = -(log_p1.exp() * log_p1 + log_p0.exp() * log_p0).sum(-1).mean()  # sum of binary entropies
        if len(z) > self.entropy_tokens:  # the batch mean, estimated on a random subset of the tokens
            keep = torch.randperm(len(z))[:self.entropy_tokens].to(z.device)  # CPU RNG: resumed exactly anywhere
            log_p1, log_p0 = log_p1[keep], log_p0[keep]
        # code = (high half, low half). Under one token the bits are independent, so
        # p_n(code) = p_n(low) p_n(high), and the batch mean over n is a matrix product:
        #   mean_p[high, low] = 1/N sum_n p_n(high) p_n(low) = P_high^T P_low / N
        low = self.bits // 2
        p_low = self.half_code_probs(log_p1[:, :low], log_p0[:, :low])     # (N, 2^low)
        p_high = self.half_code_probs(log_p1[:, low:], log_p0[:, low:])    # (N, 2^(K - low))
        mean_p = (p_high.T @ p_low / len(p_low)).flatten()                 # (2^K,) index = high * 2^low + low
        batch = -(mean_p * mean_p.clamp_min(1e-12).log()).sum()
        return per_token - batch, per_token, batch

    def half_code_probs(self, log_p1, log_p0):
        """(N, b) per-bit log-probabilities -> (N, 2^b) probabilities of each b-bit code (bit 0 least significant)."""
        bits = (self.indices_to_codes(torch.arange(2 ** log_p1.shape[1], device=log_p1.device))[:, :log_p1.shape[1]].T
                + 1) / 2                                                  # (b, 2^b) bit values in {0, 1}
        return (log_p1 @ bits + log_p0 @ (1 - bits)).exp()

    def forward(self, z):
        """z (B, K, h, w) -> q (B, K, h, w) with straight-through gradients, indices (B, h, w), aux losses."""
        z = z.permute(0, 2, 3, 1)                           # (B, h, w, K): the K bits of a position side by side
        q = torch.where(z > 0, 1.0, -1.0).to(z.dtype)
        q_st = z + (q - z).detach()                         # straight-through: value q, gradient of the identity
        with torch.autocast(device_type=z.device.type, enabled=False):  # entropies in fp32: bf16 NaNs
            commitment = F.mse_loss(z.float(), q.detach().float())
            penalty, per_token, batch = self.entropy_penalty(z.reshape(-1, self.bits))
        aux = dict(commitment=commitment, entropy=penalty, token_entropy=per_token.detach(),
                   batch_entropy=batch.detach())
        return q_st.permute(0, 3, 1, 2), self.codes_to_indices(q), aux


# -----------------------------------------------------------------------------
# Images: the convolutional encoder and decoder (MAGVIT-v2 style: no attention)

@dataclass
class ImageTokenizerConfig:
    image_size: int = option(32, "input resolution (square); images are resized and centre-cropped to it")
    channels: tuple = option((64, 128), "width per level from H/2 down; 2^len(channels) downsampling")
    res_blocks: int = option(1, "residual blocks per level")
    codebook_bits: int = option(12, "K: 2^K codes, K latent channels per position")
    entropy_tokens: int = option(1024, "tokens sampled per step for the batch-entropy term")
    tau: float = option(0.01, "temperature of p(c|z) in the entropy penalty")
    commitment_weight: float = option(0.25, "weight of ||z - sg(q)||^2 (MAGVIT-v2's 0.25)")
    entropy_weight: float = option(0.02, "entropy penalty weight (MAGVIT-v2: 0.1; ~0.02 reconstructs better at toy scale)")

    def __post_init__(self):
        self.channels = tuple(self.channels)  # a tuple whether given as a tuple or a list
        if not 1 <= self.codebook_bits <= 20:  # 2^20 codes already make the sampler's tables huge
            raise ValueError(f"codebook_bits must be in 1..20, got {self.codebook_bits}")
        if self.res_blocks < 1 or not self.channels or any(w < 4 or w % group_count(w) for w in self.channels):
            raise ValueError(f"channels {self.channels} must split into GroupNorm groups (multiples of 32, or "
                             "8/16/24 for tiny models), with at least one level and one residual block")
        if self.image_size % 2 ** len(self.channels):
            raise ValueError(f"image_size {self.image_size} is not divisible by the downsampling {2 ** len(self.channels)}")

    @property
    def latent_size(self):
        return self.image_size // 2 ** len(self.channels)  # space-to-depth, then one strided conv per level


def group_count(channels):
    return min(32, channels // 4)  # GroupNorm groups of >= 4 channels, at most 32 groups


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a skip. With `cond_channels`, the norms become
    adaptive GroupNorm: scale and shift predicted per position from the quantized latent (MAGVIT-v2's
    decoder), so every decoder layer sees the codes directly, not only through the first conv."""

    def __init__(self, in_ch, out_ch, cond_channels=0):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(group_count(in_ch), in_ch), nn.GroupNorm(group_count(out_ch), out_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.film1 = self.film2 = None
        if cond_channels:  # 1x1 convs from the codes to (scale, shift); zero-init = plain GroupNorm at the start
            self.film1, self.film2 = nn.Conv2d(cond_channels, 2 * in_ch, 1), nn.Conv2d(cond_channels, 2 * out_ch, 1)
            for film in (self.film1, self.film2):
                nn.init.zeros_(film.weight)
                nn.init.zeros_(film.bias)

    def adaptive(self, norm, film, x, cond):
        h = norm(x)
        if film is None:
            return h
        scale, shift = film(F.interpolate(cond, size=x.shape[-2:], mode="nearest")).chunk(2, dim=1)  # (B, C, H, W) each
        return h * (1 + scale) + shift

    def forward(self, x, cond=None):
        h = self.conv1(F.silu(self.adaptive(self.norm1, self.film1, x, cond)))
        h = self.conv2(F.silu(self.adaptive(self.norm2, self.film2, h, cond)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """(B, 3, H, W) pixels in [-1, 1] -> (B, K, H/d, W/d) latent, d = 2^len(channels).
    The first 2x downsampling is space-to-depth: each 2x2 pixel block becomes one position with 12
    channels, so no convolution ever runs at full resolution (half the cost of a 32 px step on a CPU).
    Each further level ends in a strided 4x4 convolution (no pooling, no attention)."""

    def __init__(self, cfg):
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(3 * 4, ch[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for i, width in enumerate(ch):
            self.blocks.extend(ResBlock(ch[max(i - 1, 0)] if j == 0 else width, width) for j in range(cfg.res_blocks))
            if i < len(ch) - 1:
                self.blocks.append(nn.Conv2d(width, width, 4, stride=2, padding=1))
        self.norm_out = nn.GroupNorm(group_count(ch[-1]), ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], cfg.codebook_bits, 1)

    def forward(self, x):
        h = self.conv_in(F.pixel_unshuffle(x, 2))  # (B, 3, H, W) -> (B, 12, H/2, W/2) -> (B, C, H/2, W/2)
        for block in self.blocks:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, K, h, w) codes in {-1, +1} -> (B, 3, h*d, w*d) pixels. Upsampling is depth-to-space: a conv
    makes 4x the next level's channels and PixelShuffle rearranges them into a 2x larger image (no
    checkerboard artefacts of transposed convs, no blur of interpolation). The last step mirrors the
    encoder's first: the output conv makes 2x2 pixels' worth of RGB per position."""

    def __init__(self, cfg):
        super().__init__()
        ch, K = cfg.channels[::-1], cfg.codebook_bits  # from coarse to fine
        self.conv_in = nn.Conv2d(K, ch[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for i, width in enumerate(ch):
            self.blocks.extend(ResBlock(width, width, cond_channels=K) for _ in range(cfg.res_blocks))
            if i < len(ch) - 1:
                self.blocks.append(nn.Sequential(nn.Conv2d(width, 4 * ch[i + 1], 3, padding=1), nn.PixelShuffle(2)))
        self.norm_out = nn.GroupNorm(group_count(ch[-1]), ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], 3 * 4, 3, padding=1)

    def forward(self, q):
        h = self.conv_in(q)
        for block in self.blocks:
            h = block(h, cond=q) if isinstance(block, ResBlock) else block(h)  # (B, 4C, h, w) -> (B, C, 2h, 2w)
        return F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(h))), 2)  # (B, 12, H/2, W/2) -> (B, 3, H, W)


class ImageTokenizer(nn.Module):
    """The LFQ autoencoder: encode(images) -> codes (B, h, w) in [0, 2^K), decode(codes) -> images in
    [-1, 1], encode_images(uint8) for whole datasets; forward(images) for training."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg, self.codebook_size = cfg, 2 ** cfg.codebook_bits
        self.encoder = Encoder(cfg)
        self.quantizer = LFQ(cfg.codebook_bits, cfg.tau, cfg.entropy_tokens)
        self.decoder = Decoder(cfg)

    def latent(self, images):
        z = self.encoder(images)  # (B, K, h, w)
        # Each position's K-vector to unit RMS right before quantization: signs are unchanged, but the
        # scale is pinned near +-1, where the commitment loss and tau are calibrated. RMS, not LayerNorm:
        # subtracting the mean would bias codes towards equal numbers of +1 and -1 bits.
        return z * torch.rsqrt(z.float().pow(2).mean(1, keepdim=True) + 1e-6).to(z.dtype)

    def forward(self, images):
        """images (B, 3, H, W) in [-1, 1] -> reconstruction, indices (B, h, w), loss dict."""
        q, indices, aux = self.quantizer(self.latent(images))
        recon = self.decoder(q)
        mse = F.mse_loss(recon.float(), images.float())  # pixels in [-1, 1]: PSNR = 10 log10(4 / mse)
        loss = mse + self.cfg.commitment_weight * aux["commitment"] + self.cfg.entropy_weight * aux["entropy"]
        return recon, indices, dict(loss=loss, mse=mse.detach(), **aux)

    @torch.no_grad()
    def encode(self, images):
        """(B, 3, H, W) in [-1, 1] -> codes (B, h, w) int64."""
        size = self.cfg.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size) or not images.is_floating_point():
            raise ValueError(f"encode expects float images (B, 3, {size}, {size}) in [-1, 1], got "
                             f"{images.dtype} {tuple(images.shape)} (images_to_tensor converts uint8 arrays)")
        return self.quantizer.codes_to_indices(self.latent(images).permute(0, 2, 3, 1))  # (B, h, w, K) -> (B, h, w)

    @torch.no_grad()
    def decode(self, codes):
        """codes (B, h, w) int64 -> images (B, 3, H, W), clamped to [-1, 1]."""
        if codes.ndim != 3 or codes.is_floating_point() or codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"decode expects integer codes (B, h, w) in [0, {self.codebook_size}), got "
                             f"{codes.dtype} {tuple(codes.shape)} in [{codes.min().item()}, {codes.max().item()}]")
        q = self.quantizer.indices_to_codes(codes).permute(0, 3, 1, 2)  # (B, h, w, K) -> (B, K, h, w)
        return self.decoder(q.to(next(self.parameters()).dtype)).clamp(-1, 1)

    def encode_images(self, images, batch_size=256):
        """uint8 (N, H, W, 3) -> codes (N, h*w) int64 on the CPU, the grid flattened row-major: how every
        image reaches Show-o, in training, evaluation and sampling alike (fp32, in batches)."""
        device = next(self.parameters()).device
        return torch.cat([self.encode(images_to_tensor(images[i:i + batch_size]).to(device)).flatten(1).cpu()
                          for i in range(0, len(images), batch_size)])


def images_to_tensor(images):
    """uint8 (B, H, W, 3) numpy/tensor -> float (B, 3, H, W) in [-1, 1]."""
    return torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def tensor_to_images(x):
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) numpy."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def psnr(originals, reconstructions):
    """Per-image PSNR in dB of uint8 images (B, H, W, 3), the images a user actually sees."""
    err = (originals.astype(np.float64) - reconstructions.astype(np.float64)) ** 2
    return 10 * np.log10(255.0 ** 2 / np.maximum(err.reshape(len(err), -1).mean(1), 1e-10))  # (B,)


# -----------------------------------------------------------------------------
# Checkpoints: one plain dict of tensors and built-in types, written atomically, read without code

def save_checkpoint(obj, path):
    """torch.save to a temporary file in the same folder, then rename: readers only ever see a
    complete old file or a complete new one, even after kill -9 mid-write."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_checkpoint(path, kind, hint="", needs=()):
    """torch.load(weights_only=True): tensors and plain containers only, so a checkpoint never runs
    code when loaded. Any failure of a foreign, damaged or older file becomes one clear error."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}{hint}") from None
    except Exception as e:  # noqa: BLE001 (unpickling junk fails almost anywhere; re-raised naming the file)
        raise ValueError(f"{path} is not a readable checkpoint (damaged, foreign, or holding code, which is "
                         f"never run; {type(e).__name__})") from e
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        name = kind.replace("_", " ")
        raise ValueError(f"{path} is not {'an' if name[0] in 'aeiou' else 'a'} {name} checkpoint")
    if missing := [key for key in ("config", "model") + tuple(needs) if key not in ckpt]:
        raise ValueError(f"{path} lacks {', '.join(missing)}: an older version of this project wrote it; train it again")
    return ckpt


def image_tokenizer_from(ckpt, source):
    """An image tokenizer's checkpoint dict (its own file's, or the copy inside a Show-o checkpoint)
    -> the model in eval mode."""
    try:
        model = ImageTokenizer(ImageTokenizerConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:  # unknown config keys, mismatched weights
        raise ValueError(f"{source} does not match this version's image tokenizer: {e}") from e
    return model.eval()


def load_image_tokenizer(path):
    """-> (model in eval mode, checkpoint dict)."""
    ckpt = read_checkpoint(path, "image_tokenizer", "; train one with `python train.py tokenizer`")
    return image_tokenizer_from(ckpt, path), ckpt


def image_tokenizer_checkpoint(model, **extra):
    return dict(kind="image_tokenizer", config=asdict(model.cfg), model=model.state_dict(), **extra)


# -----------------------------------------------------------------------------
# The unified token space and Show-o's sequence layouts (paper section 3.1)

SPECIAL_TOKENS = ("[PAD]", "[SOT]", "[EOT]", "[SOI]", "[EOI]", "[T2I]", "[MMU]")
TASKS = ("t2i", "mmu", "lm", "interleaved")  # row kinds; the joint loss groups its terms by these


@dataclass
class Row:
    """One sequence before padding: its ids, which of them are text-prediction targets (the answer
    or caption of an understanding row, the text of an LM row), and what kind of row it is."""
    ids: list
    text_targets: list  # bools, one per id
    task: str           # one of TASKS


class TokenSpace:
    """One vocabulary for everything the transformer reads and writes:

        [0, T)          text ids of the BPE (T = text_vocab_size)
        T .. T+6        [PAD] [SOT] [EOT] [SOI] [EOI] [T2I] [MMU]
        [O, O+C)        image codes: code k is id O + k  (O = image_offset = T + 7, C = 2^K)
        O + C           [MASK], the last id (vocab_size = O + C + 1)

    The special tokens live outside the text tokenizer, so no user string can produce one. Show-o's
    public code gives [SOT] and [EOT] one id; here they differ, so an [EOT] target means "the text
    ends here" and nothing else. The builders below lay out the rows of every task:
        t2i          [T2I] [SOT] text [EOT] [SOI] image [EOI]        (left-padded; empty text = unconditional)
        mmu          [MMU] [SOI] image [EOI] [SOT] prompt answer [EOT] (right-padded, as are the others)
        dialogue     [MMU] [SOI] image [EOI] [SOT] q1 a1 [EOT] [SOT] q2 a2 [EOT] ...
        lm           [SOT] text [EOT]
        interleaved  [T2I] [SOT] text [EOT] [SOI] image [EOI] [SOT] text [EOT] [SOI] image [EOI] ...
    Text-to-image rows are padded on the left so their image slots end every row at the same place;
    with RoPE only relative positions matter, so the padding does not shift what the model sees.
    """

    def __init__(self, text_vocab_size, codebook_size):
        t = self.text_vocab_size = int(text_vocab_size)
        self.pad, self.sot, self.eot, self.soi, self.eoi, self.t2i_token, self.mmu_token = range(t, t + 7)
        self.image_offset = t + len(SPECIAL_TOKENS)
        self.codebook_size = int(codebook_size)
        self.mask = self.image_offset + self.codebook_size
        self.vocab_size = self.mask + 1

    def is_image_code(self, ids):
        """Tensor of ids -> bool tensor: True at image codes (not [MASK])."""
        return (ids >= self.image_offset) & (ids < self.mask)

    def describe(self, ids):
        """ids -> "[T2I] [SOT] t t [EOT] [SOI] i i m [EOI]" (t = text, i = image code, m = [MASK])."""
        names = {self.pad + i: name for i, name in enumerate(SPECIAL_TOKENS)}
        return " ".join(names.get(i, "t" if i < self.text_vocab_size else "m" if i == self.mask else "i")
                        for i in map(int, ids))

    def text_span(self, text_ids, max_text=None, warn=False, close=True):
        """[SOT] text [EOT]. Text longer than max_text ids is cut (with a warning when warn=True, i.e.
        when a user typed it). close=False leaves the span open for the model to continue."""
        text_ids = list(text_ids)
        if max_text is not None and len(text_ids) > max_text:
            if warn:
                warnings.warn(f"text of {len(text_ids)} tokens cut to the model's limit of {max_text}")
            text_ids = text_ids[:max_text]
        return [self.sot, *text_ids] + ([self.eot] if close else [])

    def image_span(self, codes):
        """[SOI] image [EOI]. codes: image codes (h, w) or (N,), or an int N for N [MASK] slots."""
        if isinstance(codes, numbers.Integral):
            return [self.soi] + [self.mask] * int(codes) + [self.eoi]
        codes = torch.as_tensor(codes)
        if codes.is_floating_point() or (codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size)):
            raise ValueError(f"image codes must be integers in [0, {self.codebook_size})")
        return [self.soi] + (codes.long().flatten() + self.image_offset).tolist() + [self.eoi]

    def t2i(self, text_ids, codes, max_text=None, warn=False):
        """Text-to-image: [T2I] [SOT] text [EOT] [SOI] image [EOI]. Empty text = unconditional."""
        ids = [self.t2i_token] + self.text_span(text_ids, max_text, warn) + self.image_span(codes)
        return Row(ids, [False] * len(ids), "t2i")

    def mmu(self, codes, prompt_ids, answer_ids=None, max_text=None, warn=False):
        """Understanding: [MMU] [SOI] image [EOI] [SOT] prompt answer [EOT]; the answer (a caption when
        the prompt is empty) and its [EOT] are the NTP targets. answer_ids=None leaves the text open
        after the prompt, for decoding."""
        if answer_ids is not None:
            return self.dialogue(codes, [(prompt_ids, answer_ids)], max_text, warn)
        ids = [self.mmu_token] + self.image_span(codes) + self.text_span(prompt_ids, max_text, warn, close=False)
        return Row(ids, [False] * len(ids), "mmu")

    def dialogue(self, codes, turns, max_text=None, warn=False):
        """Several questions about one image: [MMU] [SOI] image [EOI], then [SOT] prompt answer [EOT]
        per (prompt_ids, answer_ids) turn. Answers and their [EOT]s are targets, prompts are not; text
        is causal, so each turn sees the turns before it, as multi-turn chat data is packed."""
        ids = [self.mmu_token] + self.image_span(codes)
        targets = [False] * len(ids)
        for prompt_ids, answer_ids in turns:
            full = list(prompt_ids) + list(answer_ids)
            text = self.text_span(full, max_text, warn)  # a cut falls on the answer's tail first
            turn = [i > len(prompt_ids) for i in range(len(text))]  # [SOT] and the prompt are given
            turn[-1] = not self.is_cut(full, max_text)
            ids, targets = ids + text, targets + turn
        return Row(ids, targets, "mmu")

    def lm(self, text_ids, max_text=None, warn=False, close=True):
        """Language modelling: [SOT] text [EOT]; every text id and the [EOT] are targets."""
        text = self.text_span(text_ids, max_text, warn, close)
        targets = [False] + [True] * (len(text) - 1)
        targets[-1] = targets[-1] and not (close and self.is_cut(text_ids, max_text))
        return Row(text, targets, "lm")

    @staticmethod
    def is_cut(text_ids, max_text):
        """Was this text cut? Then its [EOT] is no target: a model taught that the text ended there
        would learn to stop mid-sentence."""
        return max_text is not None and len(text_ids) > max_text

    def interleaved(self, segments, max_text=None, warn=False):
        """Mixed modality: [T2I], then per segment [SOT] text [EOT] (a list of text ids) or [SOI] image
        [EOI] (codes). Text after an image is a target (the model continues the story); the opening
        text is the prompt. Every image gets its own bidirectional block in the omni-attention mask."""
        ids, targets, seen_image = [self.t2i_token], [False], False
        for seg in segments:
            if isinstance(seg, (list, tuple)):
                span = self.text_span(seg, max_text, warn)
                targets += [False] + [seen_image] * (len(span) - 2) + [seen_image and not self.is_cut(seg, max_text)]
            else:
                span, seen_image = self.image_span(seg), True
                targets += [False] * len(span)
            ids += span
        return Row(ids, targets, "interleaved")

    def pad_rows(self, rows, length=None, left=None):
        """Rows -> one batch padded to one length (text-to-image rows on the left, the others on the
        right, unless left=True/False says so for all: decoding pads every prefix on the left so they
        all continue at the same position). -> ids (B, L) int64, text_targets (B, L) bool, task (B,)."""
        length = max(len(r.ids) for r in rows) if length is None else length
        ids = np.full((len(rows), length), self.pad, dtype=np.int64)  # filled in numpy: one copy to torch
        targets = np.zeros((len(rows), length), dtype=bool)
        for b, row in enumerate(rows):
            n = len(row.ids)
            if n > length:
                raise ValueError(f"row {b} has {n} tokens, more than the batch length {length}")
            cols = slice(length - n, length) if (row.task == "t2i" if left is None else left) else slice(0, n)
            ids[b, cols], targets[b, cols] = row.ids, row.text_targets
        return torch.from_numpy(ids), torch.from_numpy(targets), torch.tensor([TASKS.index(r.task) for r in rows])
