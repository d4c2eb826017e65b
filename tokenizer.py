"""
Tokenizers: everything that turns text and pixels into integer ids.

1. The text tokenizer: a small byte-level BPE vocabulary, trained on the dataset's captions by our
   own short trainer (train.py, `train_bpe`), saved in tiktoken's rank-file format and loaded here
   as a `tiktoken.Encoding`. Nothing is downloaded.
2. The image tokenizer: a convolutional autoencoder with lookup-free quantization (LFQ), as in
   MAGVIT-v2 (arXiv 2310.05737, section 3.1). Each latent position holds K channels, each quantized
   to its sign, so a position is one of 2^K codes and the "codebook" is implicit: no embedding
   table, no nearest-neighbour search. One design for every dataset, the shapes world included.
3. The unified token space (`TokenSpace`): text ids, special tokens, image codes and [MASK] in one
   vocabulary, and the row layouts of every task (paper section 3.1).

Show-o (arXiv 2408.12528) uses a pretrained MAGVIT-v2 tokenizer with K = 13 (8192 codes) at 16x
downsampling; it never released tokenizer training code, so this file trains one from scratch at
toy scale (32x32 images -> 4x4 tokens for the shapes world at 8x downsampling, 8x8 for photos at 4x).

Follow one image: `ImageTokenizer.encode(images)` runs the `Encoder` (pixels -> K-channel latent),
RMS-normalises it, `LFQ.quantize` takes signs and `LFQ.codes_to_indices` packs them into an integer
code per position; `decode(codes)` unpacks the bits back into +-1 vectors and runs the `Decoder`.
"""
import base64
import numbers
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Text: byte-level BPE ranks in tiktoken's format

# Pre-tokenization splits text into chunks that BPE never merges across: an optional space plus a
# run of letters, digits or other symbols, or whitespace (GPT-2's idea). The pattern must work both
# in Python's `re` (training) and in tiktoken's Rust regex (encoding), and must match EVERY
# character: tiktoken only encodes what the pattern matches, so a gap would silently drop text.
# Letters are "word characters that are not digits or underscore"; the symbol class adds "_".
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""


def load_bpe(path):
    ranks = {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{path}:{line_no}: expected 'base64-token rank', got {line!r}") from e
    return ranks


class TextTokenizer:
    """Text <-> ids on top of a tiktoken Encoding.

    The Encoding is built WITHOUT special tokens: the task tokens ([SOT], [T2I], ...) live in the
    unified token space after the text ids, so no user string (not even "<|t2i|>") can produce one.
    """

    def __init__(self, encoding):
        self.encoding = encoding
        self.vocab_size = encoding.n_vocab

    @classmethod
    def from_ranks(cls, ranks):
        return cls(tiktoken.Encoding(name="showo-bpe", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                                     special_tokens={}))

    @classmethod
    def from_file(cls, path):
        return cls.from_ranks(load_bpe(path))

    def encode(self, text):
        # encode_ordinary never emits special tokens: special-looking text stays text.
        return self.encoding.encode_ordinary(text)

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
      factorises over bits: p(bit_i = +1 | z) = sigmoid(4 z_i / tau). The per-token term is therefore
      exact and cheap. The batch term needs the full 2^K distribution; we split the K bits into groups
      of at most `entropy_group_bits` and sum the groups' entropies (memory O(2^group) for the mean,
      not O(2^K)). The sum of marginal entropies upper-bounds the joint one and equals it when the
      groups are independent under the batch mean (e.g. one group, or one token). Inside a group the
      mean is exact and cheap: each token's distribution over the group's codes is the outer product
      of its distributions over the low and high half of the bits, so the batch mean is one matrix
      product of two (tokens, 2^(group/2)) tables; no (tokens, 2^group) table is ever built.
      Groups must be large (small ones can each look uniform while most codes go unused); with
      the default of 16 bits every preset's codebook is one exact group.
    """

    def __init__(self, bits, tau=0.01, entropy_group_bits=16, entropy_tokens=1024):
        super().__init__()
        self.bits, self.tau = bits, tau
        self.group_bits = min(entropy_group_bits, bits)
        self.entropy_tokens = entropy_tokens
        self.register_buffer("powers", 2 ** torch.arange(bits), persistent=False)  # (K,)

    def indices_to_codes(self, indices):
        """(...) int64 -> (..., K) float in {-1, +1}."""
        bits = (indices.unsqueeze(-1) // self.powers) % 2  # (..., K) in {0, 1}
        return bits.float() * 2 - 1

    def codes_to_indices(self, codes):
        """(..., K) with the sign of each channel -> (...) int64."""
        return ((codes > 0).long() * self.powers).sum(-1)

    def quantize(self, z):
        """(..., K) latent -> (..., K) codes in {-1, +1}. Exactly zero goes to -1 (any fixed rule works)."""
        return torch.where(z > 0, 1.0, -1.0).to(z.dtype)

    def entropy_penalty(self, z):
        """z: (N, K) latents. Returns (penalty, per_token_entropy, batch_entropy), in nats, fp32."""
        z = z.float()
        logits = 4 * z / self.tau  # (N, K): p(bit = +1 | z) = sigmoid(logits)
        p_one = torch.sigmoid(logits)
        # Per-token entropy = sum over bits of the binary entropy (exact, thanks to the factorisation).
        log_p1, log_p0 = F.logsigmoid(logits), F.logsigmoid(-logits)
        per_token = -(p_one * log_p1 + (1 - p_one) * log_p0).sum(-1).mean()
        # Batch-mean distribution, one group of bits at a time, estimated on a random subset of at
        # most `entropy_tokens` tokens.
        if len(z) > self.entropy_tokens:
            keep = torch.randperm(len(z), device=z.device)[:self.entropy_tokens]
            log_p1, log_p0 = log_p1[keep], log_p0[keep]
        batch = z.new_zeros(())
        for start in range(0, self.bits, self.group_bits):
            lp1, lp0 = log_p1[:, start:start + self.group_bits], log_p0[:, start:start + self.group_bits]
            # The group's code = (high half, low half). Under one token the bits are independent, so
            # p_n(code) = p_n(low) * p_n(high), and the batch mean over n is a matrix product:
            #   mean_p[high, low] = 1/N sum_n p_n(high) p_n(low)  =  P_high^T P_low / N.
            # That is the exact 2^g joint at the cost of two (N, 2^(g/2)) tables, not one (N, 2^g).
            low = lp1.shape[1] // 2
            p_low = self.half_code_probs(lp1[:, :low], lp0[:, :low])  # (N, 2^low)
            p_high = self.half_code_probs(lp1[:, low:], lp0[:, low:])  # (N, 2^(g - low))
            mean_p = (p_high.T @ p_low / len(lp1)).flatten()  # (2^g,), index = high * 2^low + low
            batch = batch - (mean_p * torch.log(mean_p.clamp_min(1e-12))).sum()
        return per_token - batch, per_token, batch

    def half_code_probs(self, log_p1, log_p0):
        """(N, b) per-bit log-probabilities -> (N, 2^b) probabilities of each b-bit code, codes
        enumerated with bit 0 least significant (the index order)."""
        b = log_p1.shape[1]
        codes = self.indices_to_codes(torch.arange(2 ** b, device=log_p1.device))[:, :b]  # (2^b, b) in {-1, +1}
        table = (codes.T + 1) / 2  # (b, 2^b) bit values in {0, 1}
        return (log_p1 @ table + log_p0 @ (1 - table)).exp()

    def forward(self, z):
        """z: (B, K, h, w). Returns q (B, K, h, w) with straight-through gradients, indices (B, h, w),
        and a dict of auxiliary losses."""
        z = z.permute(0, 2, 3, 1)  # (B, h, w, K): the K bits of a position side by side
        q = self.quantize(z)
        # Straight-through estimator: forward value q, backward gradient of the identity to z.
        q_st = z + (q - z).detach()
        with torch.autocast(device_type=z.device.type, enabled=False):  # entropies in fp32: bf16 NaNs
            commitment = F.mse_loss(z.float(), q.detach().float())
            penalty, per_token, batch = self.entropy_penalty(z.reshape(-1, self.bits))
        indices = self.codes_to_indices(q)  # (B, h, w)
        aux = dict(commitment=commitment, entropy=penalty, token_entropy=per_token.detach(),
                   batch_entropy=batch.detach())
        return q_st.permute(0, 3, 1, 2), indices, aux


# -----------------------------------------------------------------------------
# Images: the convolutional encoder and decoder (MAGVIT-v2 style: no attention)

@dataclass
class ImageTokenizerConfig:
    """The image tokenizer: what `train.py tokenizer` builds from its "model" options and saves in
    every checkpoint."""
    image_size: int = 32           # input resolution (square); images are resized and centre-cropped to it
    channels: tuple = (64, 128)    # width at each resolution from H/2 down; 2^len(channels) downsampling
    res_blocks: int = 1            # residual blocks per resolution
    codebook_bits: int = 12        # K: 2^K codes, K latent channels per position
    entropy_group_bits: int = 16   # bits per group in the batch-entropy term (memory 2^group)
    entropy_tokens: int = 1024     # tokens sampled per step for the batch-entropy term
    tau: float = 0.01              # temperature of p(c|z) in the entropy penalty
    commitment_weight: float = 0.25  # weight of ||z - sg(q)||^2 (MAGVIT-v2's 0.25)
    entropy_weight: float = 0.02   # MAGVIT-v2 uses 0.1; about 0.02 reconstructs better at toy scale

    def __post_init__(self):
        self.channels = tuple(self.channels)  # (32, 64, 64) whether given as a tuple or a list
        if not 1 <= self.codebook_bits <= 24:  # 2^24 codes already need 16M-row tables in the sampler
            raise ValueError(f"codebook_bits must be in 1..24, got {self.codebook_bits}")
        if self.res_blocks < 1 or not self.channels:
            raise ValueError("a tokenizer needs at least one level of channels and one residual block per level")
        for width in self.channels:
            if width < 4 or width % group_count(width):
                raise ValueError(f"channel width {width} does not split into GroupNorm groups: use "
                                 "multiples of 32, or 8/16/24 for tiny models")
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} is not divisible by the downsampling {self.downsample}")

    @property
    def downsample(self):
        return 2 ** len(self.channels)  # space-to-depth, then one strided conv per further level

    @property
    def latent_size(self):
        return self.image_size // self.downsample


def group_count(channels):
    return min(32, channels // 4)  # GroupNorm groups of >= 4 channels, at most 32 groups


def group_norm(channels):
    return nn.GroupNorm(group_count(channels), channels)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a skip. With `cond_channels`, the norms become
    adaptive GroupNorm: scale and shift predicted per position from the quantized latent (MAGVIT-v2's
    decoder), so every decoder layer sees the codes directly, not only through the first conv."""

    def __init__(self, in_ch, out_ch, cond_channels=0):
        super().__init__()
        self.norm1, self.norm2 = group_norm(in_ch), group_norm(out_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.film1 = self.film2 = None
        if cond_channels:
            # 1x1 convs from the codes to (scale, shift); zero-init = plain GroupNorm at the start.
            self.film1 = nn.Conv2d(cond_channels, 2 * in_ch, 1)
            self.film2 = nn.Conv2d(cond_channels, 2 * out_ch, 1)
            for film in (self.film1, self.film2):
                nn.init.zeros_(film.weight)
                nn.init.zeros_(film.bias)

    def adaptive(self, norm, film, x, cond):
        h = norm(x)
        if film is not None:
            cond = F.interpolate(cond, size=x.shape[-2:], mode="nearest")  # codes at this resolution
            scale, shift = film(cond).chunk(2, dim=1)  # each (B, C, H, W)
            h = h * (1 + scale) + shift
        return h

    def forward(self, x, cond=None):
        h = self.conv1(F.silu(self.adaptive(self.norm1, self.film1, x, cond)))
        h = self.conv2(F.silu(self.adaptive(self.norm2, self.film2, h, cond)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """(B, 3, H, W) pixels in [-1, 1] -> (B, K, H/d, W/d) latent, d = 2^len(channels).

    The first 2x downsampling is space-to-depth: each 2x2 pixel block becomes one position with
    12 channels (ESPCN's trick run backwards), so no convolution ever runs at full resolution: it
    halves a 32 px training step, and on a CPU the steps saved were worth more than those layers."""

    def __init__(self, cfg):
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(3 * 4, ch[0], 3, padding=1)
        self.levels = nn.ModuleList()
        for i, width in enumerate(ch):
            in_ch = ch[max(i - 1, 0)]
            blocks = [ResBlock(in_ch if j == 0 else width, width) for j in range(cfg.res_blocks)]
            level = nn.Module()
            level.blocks = nn.ModuleList(blocks)
            # Strided 4x4 convolution halves the resolution (no pooling, no attention).
            level.down = nn.Conv2d(width, width, 4, stride=2, padding=1) if i < len(ch) - 1 else None
            self.levels.append(level)
        self.norm_out = group_norm(ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], cfg.codebook_bits, 1)

    def forward(self, x):
        h = self.conv_in(F.pixel_unshuffle(x, 2))  # (B, 3, H, W) -> (B, 12, H/2, W/2) -> (B, C, H/2, W/2)
        for level in self.levels:
            for block in level.blocks:
                h = block(h)
            if level.down is not None:
                h = level.down(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, K, h, w) codes in {-1, +1} -> (B, 3, h*d, w*d) pixels. Upsampling is depth-to-space:
    a conv makes 4x the channels, PixelShuffle rearranges them into a 2x larger image
    (no checkerboard artefacts of transposed convs, no blur of interpolation). The last step
    mirrors the encoder's first: the output conv makes 2x2 pixels' worth of RGB per position."""

    def __init__(self, cfg):
        super().__init__()
        ch = cfg.channels[::-1]  # decoder walks from coarse to fine
        K = cfg.codebook_bits
        self.conv_in = nn.Conv2d(K, ch[0], 3, padding=1)
        self.levels = nn.ModuleList()
        for i, width in enumerate(ch):
            level = nn.Module()
            level.blocks = nn.ModuleList([ResBlock(width, width, cond_channels=K) for _ in range(cfg.res_blocks)])
            # The conv makes 4x the NEXT level's width, so PixelShuffle lands on that width directly.
            level.up = (nn.Sequential(nn.Conv2d(width, 4 * ch[i + 1], 3, padding=1), nn.PixelShuffle(2))
                        if i < len(ch) - 1 else None)
            self.levels.append(level)
        self.norm_out = group_norm(ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], 3 * 4, 3, padding=1)

    def forward(self, q):
        h = self.conv_in(q)
        for level in self.levels:
            for block in level.blocks:
                h = block(h, cond=q)
            if level.up is not None:
                h = level.up(h)  # (B, 4C, h, w) -> (B, C, 2h, 2w)
        return F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(h))), 2)  # (B, 12, H/2, W/2) -> (B, 3, H, W)


class ImageTokenizer(nn.Module):
    """The LFQ autoencoder. Public API: encode(images) -> codes (B, h, w) int64 in [0, 2^K),
    decode(codes) -> images (B, 3, H, W) in [-1, 1]; forward(images) for training."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = LFQ(cfg.codebook_bits, cfg.tau, cfg.entropy_group_bits, cfg.entropy_tokens)
        self.decoder = Decoder(cfg)

    @property
    def codebook_size(self):
        return 2 ** self.cfg.codebook_bits

    def latent(self, images):
        z = self.encoder(images)  # (B, K, h, w)
        # Each position's K-vector to unit RMS right before quantization: signs are unchanged, but
        # the scale is pinned near +-1, where the commitment loss and the entropy temperature (tau =
        # 0.01) are calibrated. RMS, not LayerNorm: subtracting the mean would bias codes towards
        # equal numbers of +1 and -1 bits and leave the extreme codes unused.
        return z * torch.rsqrt(z.float().pow(2).mean(1, keepdim=True) + 1e-6).to(z.dtype)

    def forward(self, images):
        """images (B, 3, H, W) in [-1, 1] -> reconstruction, indices (B, h, w), loss dict."""
        q, indices, aux = self.quantizer(self.latent(images))
        recon = self.decoder(q)
        c = self.cfg
        mse = F.mse_loss(recon.float(), images.float())  # pixels in [-1, 1]; PSNR = 10 log10(4 / mse)
        loss = mse + c.commitment_weight * aux["commitment"] + c.entropy_weight * aux["entropy"]
        return recon, indices, dict(loss=loss, mse=mse.detach(), **aux)

    @torch.no_grad()
    def encode(self, images):
        """(B, 3, H, W) in [-1, 1] -> codes (B, h, w) int64."""
        size = self.cfg.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size) or not images.is_floating_point():
            raise ValueError(f"encode expects float images (B, 3, {size}, {size}) in [-1, 1], got "
                             f"{images.dtype} {tuple(images.shape)} (images_to_tensor converts uint8 arrays)")
        z = self.latent(images).permute(0, 2, 3, 1)  # (B, h, w, K)
        return self.quantizer.codes_to_indices(z)

    @torch.no_grad()
    def decode(self, codes):
        """codes (B, h, w) int64 -> images (B, 3, H, W), clamped to [-1, 1]."""
        if codes.ndim != 3 or codes.is_floating_point() or codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"decode expects integer codes (B, h, w) in [0, {self.codebook_size}), got "
                             f"{codes.dtype} {tuple(codes.shape)} in [{codes.min().item()}, {codes.max().item()}]")
        q = self.quantizer.indices_to_codes(codes).permute(0, 3, 1, 2)  # (B, K, h, w)
        return self.decoder(q.to(next(self.parameters()).dtype)).clamp(-1, 1)


def images_to_tensor(images):
    """uint8 (B, H, W, 3) numpy/tensor -> float (B, 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(images)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1


def tensor_to_images(x):
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) numpy."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def image_tokenizer_checkpoint(model, **extra):
    """The checkpoint as one plain dict of tensors and built-in types (config as a dict, not a
    dataclass), so it loads with torch.load(weights_only=True), which never runs code."""
    return dict(kind="image_tokenizer", config=asdict(model.cfg), model=model.state_dict(), **extra)


def read_checkpoint(path, map_location="cpu", missing_hint=""):
    """torch.load(weights_only=True): tensors and plain containers only, so a checkpoint can never
    run code when loaded. Any failure of a foreign or damaged file becomes one clear ValueError
    (unpickling junk can fail almost anywhere: IndexError, UnpicklingError, RuntimeError, ...)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}{missing_hint}") from None
    except Exception as e:  # noqa: BLE001 (re-raised as a ValueError that names the file)
        raise ValueError(f"{path} is not a readable checkpoint (damaged, foreign, or holding code, which is "
                         f"never run): {type(e).__name__}: {e}") from e


def load_image_tokenizer(path, map_location="cpu"):
    ckpt = read_checkpoint(path, map_location, "; train one with `python train.py tokenizer`")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "image_tokenizer":
        raise ValueError(f"{path} is not an image tokenizer checkpoint (kind={ckpt.get('kind') if isinstance(ckpt, dict) else type(ckpt).__name__})")
    try:
        config = dict(ckpt["config"])
        # older checkpoints name two loss weights since removed; only their neutral values (plain MSE) fit
        if (config.pop("mse_weight", 1.0), config.pop("l1_weight", 0.0)) != (1.0, 0.0):
            raise ValueError("it was trained with an L1 or reweighted reconstruction loss")
        model = ImageTokenizer(ImageTokenizerConfig(**config))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:  # unknown config keys, mismatched weights
        raise ValueError(f"{path} does not match this version's image tokenizer: {e}") from e
    return model.eval(), ckpt


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

    The special tokens live outside the text tokenizer (which has none), so no user string can ever
    produce one. Show-o's public code gives [SOT] and [EOT] one shared id; here they differ, so an
    [EOT] target means "the text ends here" and nothing else.

    The builders below lay out the rows of every task (reference section 2):
        t2i          [T2I] [SOT] text [EOT] [SOI] image [EOI]        (left-padded)
        t2i, uncond  [T2I] [SOT] [EOT] [SOI] image [EOI]             (the empty prompt, for guidance)
        mmu          [MMU] [SOI] image [EOI] [SOT] prompt answer [EOT] (right-padded)
        dialogue     [MMU] [SOI] image [EOI] [SOT] q1 a1 [EOT] [SOT] q2 a2 [EOT] ... (right-padded)
        lm           [SOT] text [EOT]                                  (right-padded)
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

    # --- ids <-> codes ---
    def is_image_code(self, ids):
        """Tensor of ids -> bool tensor: True at image codes (not [MASK])."""
        return (ids >= self.image_offset) & (ids < self.mask)

    def image_ids(self, codes):
        """Image codes in [0, C) (any shape) -> their ids in the unified space."""
        codes = torch.as_tensor(codes)
        if codes.is_floating_point() or (codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size)):
            raise ValueError(f"image codes must be integers in [0, {self.codebook_size})")
        return codes.long() + self.image_offset

    def codes_of(self, ids):
        """Image-code ids -> codes in [0, C)."""
        return ids - self.image_offset

    def describe(self, ids):
        """ids -> a short readable string ("[T2I] [SOT] t t [EOT] [SOI] i i m [EOI]"): t = text,
        i = image code, m = [MASK]. Used by tests, error messages and the mask pictures."""
        names = {self.pad + i: name for i, name in enumerate(SPECIAL_TOKENS)}
        out = []
        for i in map(int, ids):
            out.append(names.get(i, "t" if i < self.text_vocab_size else "m" if i == self.mask else "i"))
        return " ".join(out)

    # --- builders ---
    def text_span(self, text_ids, max_text=None, warn=False, close=True):
        """[SOT] text [EOT]. Text longer than max_text ids is cut and [EOT] re-appended (with a
        warning when warn=True, i.e. when a user typed it). close=False leaves the span open for
        the model to continue (captioning, answering, language modelling at sampling time)."""
        text_ids = list(text_ids)
        if max_text is not None and len(text_ids) > max_text:
            if warn:
                warnings.warn(f"text of {len(text_ids)} tokens cut to the model's limit of {max_text}")
            text_ids = text_ids[:max_text]
        return [self.sot, *text_ids] + ([self.eot] if close else [])

    def image_span(self, codes):
        """[SOI] image [EOI]. codes: an int array (h, w) or (N,) of image codes, or an int N for N
        [MASK] slots (the canvas text-to-image sampling starts from)."""
        if isinstance(codes, numbers.Integral):
            body = [self.mask] * int(codes)
        else:
            body = self.image_ids(codes).flatten().tolist()
        return [self.soi, *body, self.eoi]

    def t2i(self, text_ids, codes, max_text=None, warn=False):
        """Text-to-image: [T2I] [SOT] text [EOT] [SOI] image [EOI]. Empty text = unconditional."""
        ids = [self.t2i_token] + self.text_span(text_ids, max_text, warn) + self.image_span(codes)
        return Row(ids, [False] * len(ids), "t2i")

    def mmu(self, codes, prompt_ids, answer_ids=None, max_text=None, warn=False):
        """Understanding: [MMU] [SOI] image [EOI] [SOT] prompt answer [EOT]. The answer (a caption
        when the prompt is empty, or the answer to a question) and its [EOT] are the NTP targets;
        the prompt is not. answer_ids=None leaves the text open after the prompt, for decoding."""
        if answer_ids is None:
            head = [self.mmu_token] + self.image_span(codes)
            text = self.text_span(prompt_ids, max_text, warn, close=False)
            return Row(head + text, [False] * (len(head) + len(text)), "mmu")
        return self.dialogue(codes, [(prompt_ids, answer_ids)], max_text, warn)

    def dialogue(self, codes, turns, max_text=None, warn=False):
        """Several questions about one image: [MMU] [SOI] image [EOI], then [SOT] prompt answer [EOT]
        for each (prompt_ids, answer_ids) turn. Answers and their [EOT]s are targets, prompts are
        not; text is causal, so each turn also sees the turns before it. The first turn is laid out
        like a one-question mmu row (what evaluation asks); each later one adds an answer for a few
        text tokens instead of another image span, as multi-turn chat data is packed."""
        ids = [self.mmu_token] + self.image_span(codes)
        targets = [False] * len(ids)
        for prompt_ids, answer_ids in turns:
            full = list(prompt_ids) + list(answer_ids)
            text = self.text_span(full, max_text, warn)  # a cut falls on the answer's tail first
            n_prompt = 1 + len(prompt_ids)               # [SOT] and the prompt are given, not predicted
            turn_targets = [i >= n_prompt for i in range(len(text))]
            turn_targets[-1] = turn_targets[-1] and not self.is_cut(full, max_text)
            ids, targets = ids + text, targets + turn_targets
        return Row(ids, targets, "mmu")

    def lm(self, text_ids, max_text=None, warn=False, close=True):
        """Language modelling: [SOT] text [EOT]; every text id and the [EOT] are targets."""
        text = self.text_span(text_ids, max_text, warn, close)
        targets = [False] + [True] * (len(text) - 1)
        targets[-1] = targets[-1] and not (close and self.is_cut(text_ids, max_text))
        return Row(text, targets, "lm")

    @staticmethod
    def is_cut(text_ids, max_text):
        """Was this text cut? Then its re-appended [EOT] is no target: the text did not end there,
        and a model taught that it did would learn to stop mid-sentence."""
        return max_text is not None and len(text_ids) > max_text

    def interleaved(self, segments, max_text=None, warn=False):
        """Mixed modality: [T2I] then, for each segment in order, [SOT] text [EOT] for a list of text
        ids or [SOI] image [EOI] for an array of codes. Text that follows an image is a target (the
        model continues the story); the opening text is the prompt. Every image gets its own
        bidirectional block in the omni-attention mask."""
        ids, targets, seen_image = [self.t2i_token], [False], False
        for seg in segments:
            if isinstance(seg, (list, tuple)):
                span = self.text_span(seg, max_text, warn)
                ids += span
                targets += [False] + [seen_image] * (len(span) - 2) + [seen_image and not self.is_cut(seg, max_text)]
            else:
                span = self.image_span(seg)
                ids += span
                targets += [False] * len(span)
                seen_image = True
        return Row(ids, targets, "interleaved")

    def pad_rows(self, rows, length=None, left=None):
        """Rows -> one batch, every row padded to one length (text-to-image rows on the left, the
        others on the right, unless left=True/False says so for all: decoding pads every prefix on
        the left so they all continue at the same position), so rows of different tasks share a
        tensor. Returns ids (B, L) int64, text_targets (B, L) bool, task (B,) int64 (into TASKS)."""
        length = max(len(r.ids) for r in rows) if length is None else length
        ids = np.full((len(rows), length), self.pad, dtype=np.int64)  # filled in numpy: one copy to torch
        targets = np.zeros((len(rows), length), dtype=bool)
        for b, row in enumerate(rows):
            n = len(row.ids)
            if n > length:
                raise ValueError(f"row {b} has {n} tokens, more than the batch length {length}")
            on_left = row.task == "t2i" if left is None else left
            cols = slice(length - n, length) if on_left else slice(0, n)
            ids[b, cols] = row.ids
            targets[b, cols] = row.text_targets
        task = torch.tensor([TASKS.index(r.task) for r in rows])
        return torch.from_numpy(ids), torch.from_numpy(targets), task

