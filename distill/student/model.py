"""Y-MAP-Net, the multi-task student CNN (DESIGN.md §6; paper §3, Fig. 2–3, Table 1 row 15).

Data flow (paper §3, Fig. 2): RGB (B, 3, S, S) in [-1, 1] → encoder → bridge → two branches:

* encoder: one residual block per level (3×3 conv → LeakyReLU → 3×3 conv, + the first conv's
  output, LeakyReLU), 2×2 average pooling between levels, so level i works at S / 2**i;
* bridge: the smallest feature map is flattened and goes through three dense layers
  (flat → bottleneck → bottleneck → flat) and is reshaped back (paper §3, "Bridge segment");
* pictorial decoder: per level, from the bottom up, nearest ×2 upsampling (none at the bottom),
  concatenation with the same-size encoder block (the U-NET skip) and a residual block; then the
  wide 1×1 "pixelwise" conv (`student.pixelwise_width` filters, LeakyReLU) and a 1×1 conv to the
  44 channels of `distill.student.layout`, tanh;
* caption branch, from the bridge's bottleneck code: `num_tokens` heads, each dense → tanh →
  LayerNorm → dropout (20 % on the first token falling linearly to 0 % on the last), then
  token_i = tanh(head_i + 0.3 · token_{i-1}) — the 0.3-scaled residual from each token to the next
  (paper §3, "Token/caption output branch"; §3.4) — so every token lies in [-1, 1];
* optional multi-hot tail (`student.multi_hot_tail`): two dense layers over the vocabulary, fed
  with the tokens as Fig. 2 draws it ("converted to multi-hot labels with the addition of 2 dense
  layers", §3.4); it returns logits (no sigmoid: the loss or the caller applies it).

LeakyReLU everywhere else (§3); conv and dense weights Glorot-uniform, biases zero (§3.6). The
paper rescales RGB to [0, 1] in its first layer; DESIGN.md §6 feeds [-1, 1] and we keep that.

Widths. The paper gives the depth (7 levels), the input (256), the pixelwise width (1.5K), the
tokens (8 × 300 GloVe) and the total (297M, Table 3; 298M in Table 1 row 15), not the filters
per level; §4.1 says size was controlled "by altering the number of filters in the enc/dec
branches". We use the usual U-NET doubling, filters(level) = min(base · 2**level, cap), with
base 64 and cap 1024 for `paper` (64, 128, 256, 512, 1024, 1024, 1024): 56.6M weights in the
encoder, 97.5M in the decoder (its blocks also read the skips), 0.16M in the pixelwise head. The
bridge then flattens 4 × 4 × 1024 = 16384 features; we chose its bottleneck, 3680, to land on the
paper's total: the bridge holds 134.2M, the 8 token heads 8.8M, for 297,227,640 parameters
(`count_parameters(StudentConfig())`, +0.08 % on 297M; the multi-hot tail over 2048 words adds
4.6M). A dense bridge holding near half of the weights fits Table 1: adding the caption branch
(row 14 → 15) grows the model by 85M at the same enc/dec depth. `tiny` (CPU tests, the demo)
uses base 8, cap 32 and a 32-wide bottleneck: the demo student (levels 4, pixelwise 32, tokens
8 × 50) has 253,620 parameters at input 64 and 652,980 at 128 (the bridge grows with the input).
The table is `PRESET_WIDTHS`, keyed by `student.preset`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from distill.config import StudentConfig
from distill.errors import ConfigError
from distill.student import layout

__all__ = [
    "LEAKY_SLOPE",
    "PRESET_WIDTHS",
    "TOKEN_RESIDUAL",
    "PresetWidths",
    "YMapNet",
    "build_student",
    "count_parameters",
    "token_dropout_rates",
    "unwrap",
]

logger = logging.getLogger(__name__)

# The paper gives no slope; 0.3 is the default of Keras 3's LeakyReLU, which it trained with
# (§3.6, Keras 3.1.1).
LEAKY_SLOPE = 0.3
TOKEN_RESIDUAL = 0.3  # token_{i+1} gets 0.3 · token_i (§3, "scaled to 30 %")
TOKEN_DROPOUT_MAX = 0.2  # on the first token, falling linearly to 0 on the last (§3)


@dataclass(frozen=True)
class PresetWidths:
    """How wide a preset's layers are."""

    base: int  # encoder/decoder filters at level 0 (full resolution)
    cap: int  # the most filters at any level
    bottleneck: int  # width of the bridge's dense layers (and the token heads' input)
    tail_hidden: int  # hidden width of the optional multi-hot tail

    def filters(self, level: int) -> int:
        """Filters of the encoder and decoder blocks at `level` (0 = full resolution)."""
        return min(self.base * 2**level, self.cap)


PRESET_WIDTHS: dict[str, PresetWidths] = {
    "paper": PresetWidths(base=64, cap=1024, bottleneck=3680, tail_hidden=1024),
    "tiny": PresetWidths(base=8, cap=32, bottleneck=32, tail_hidden=32),
}


def token_dropout_rates(num_tokens: int) -> list[float]:
    """Dropout per token: 20 % on the first, linearly down to 0 % on the last."""
    if num_tokens == 1:
        return [TOKEN_DROPOUT_MAX]
    return [TOKEN_DROPOUT_MAX * (1 - i / (num_tokens - 1)) for i in range(num_tokens)]


class _ResidualBlock(nn.Module):
    """3×3 conv → LeakyReLU → 3×3 conv, plus the first conv's output, → LeakyReLU (Fig. 3)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv1(x))
        return self.act(self.conv2(h) + h)


class _Bridge(nn.Module):
    """Three dense layers over the flattened smallest map; returns the map and the code."""

    def __init__(self, channels: int, side: int, bottleneck: int) -> None:
        super().__init__()
        self.shape = (channels, side, side)
        flat = channels * side * side
        self.fc1 = nn.Linear(flat, bottleneck)
        self.fc2 = nn.Linear(bottleneck, bottleneck)
        self.fc3 = nn.Linear(bottleneck, flat)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.act(self.fc2(self.act(self.fc1(x.flatten(1)))))
        out = self.act(self.fc3(code)).view(x.shape[0], *self.shape)
        return out, code


class _TokenHead(nn.Module):
    """One caption token before the residual chain: dense → tanh → LayerNorm → dropout."""

    def __init__(self, in_features: int, token_dim: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, token_dim)
        self.norm = nn.LayerNorm(token_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(torch.tanh(self.dense(code))))


class YMapNet(nn.Module):
    """The student. `forward` takes (B, 3, S, S) RGB in [-1, 1] and returns

    * "maps": (B, 44, S, S) in [-1, 1] (channels as in `distill.student.layout`),
    * "tokens": (B, num_tokens, token_dim) in [-1, 1] (GloVe space, normalised),
    * "multi_hot": (B, vocab_size) logits, only when `config.multi_hot_tail`.
    """

    def __init__(self, config: StudentConfig, vocab_size: int = 0) -> None:
        super().__init__()
        _check_config(config, vocab_size)
        widths = PRESET_WIDTHS[config.preset]
        self.config = config
        levels = config.levels
        self.input_size = config.input_size
        self.encoder = nn.ModuleList(
            _ResidualBlock(3 if i == 0 else widths.filters(i - 1), widths.filters(i))
            for i in range(levels)
        )
        bottom = widths.filters(levels - 1)
        self.bridge = _Bridge(bottom, config.input_size // 2 ** (levels - 1), widths.bottleneck)
        # decoder[i] works at level i; its input is the level below (or the bridge) + the skip.
        self.decoder = nn.ModuleList(
            _ResidualBlock(widths.filters(min(i + 1, levels - 1)) + widths.filters(i),
                           widths.filters(i))
            for i in range(levels)
        )
        self.pool = nn.AvgPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        layout.use_extra_layers(config.extra_layers)  # its opt-in channels, for this process
        self.head = nn.Sequential(
            nn.Conv2d(widths.filters(0), config.pixelwise_width, 1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(config.pixelwise_width, layout.channels(), 1),
            nn.Tanh(),
        )
        self.tokens = nn.ModuleList(
            _TokenHead(widths.bottleneck, config.token_dim, rate)
            for rate in token_dropout_rates(config.num_tokens)
        )
        self.multi_hot: nn.Sequential | None = None
        if config.multi_hot_tail:
            self.multi_hot = nn.Sequential(
                nn.Linear(config.num_tokens * config.token_dim, widths.tail_hidden),
                nn.LeakyReLU(LEAKY_SLOPE),
                nn.Linear(widths.tail_hidden, vocab_size),
            )
        self.apply(_glorot)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = self.input_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, size, size):
            raise ValueError(f"YMapNet expects (B, 3, {size}, {size}) RGB, got {tuple(x.shape)}")
        skips = self.encode(x)
        h, code = self.bridge(skips[-1])
        return self.outputs(self.decode(h, skips), code)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's output at every level (the U-NET skips), full resolution first."""
        skips: list[torch.Tensor] = []
        h = x
        for i, block in enumerate(self.encoder):
            h = block(self.pool(h) if i else h)
            skips.append(h)
        return skips

    def decode(self, h: torch.Tensor, skips: list[torch.Tensor],
               from_below: bool = False) -> torch.Tensor:
        """The pictorial decoder from the bottom level up; `from_below`: `h` comes from a level
        under the bottom one (half its size), as in self-distillation's 2× pass."""
        for i in reversed(range(len(self.decoder))):
            if from_below or i < len(self.decoder) - 1:
                h = self.up(h)
            h = self.decoder[i](torch.cat([h, skips[i]], dim=1))
        return h

    def outputs(self, h: torch.Tensor, code: torch.Tensor) -> dict[str, torch.Tensor]:
        """The maps from the decoder's last features `h`, the tokens from the bridge's code."""
        tokens: list[torch.Tensor] = []
        for head in self.tokens:
            t = head(code)
            if tokens:
                t = t + TOKEN_RESIDUAL * tokens[-1]
            tokens.append(torch.tanh(t))
        out = {"maps": self.head(h), "tokens": torch.stack(tokens, dim=1)}
        if self.multi_hot is not None:
            out["multi_hot"] = self.multi_hot(out["tokens"].flatten(1))
        return out


def _check_config(config: StudentConfig, vocab_size: int) -> None:
    if config.preset not in PRESET_WIDTHS:
        raise ConfigError(
            f"student.preset = {config.preset!r} has no widths; "
            f"allowed: {', '.join(PRESET_WIDTHS)}"
        )
    config.validate()  # positive sizes; input_size divisible by 2**(levels-1)
    if vocab_size < 0:
        raise ConfigError(f"vocab_size must be >= 0, got {vocab_size}")
    if config.multi_hot_tail and vocab_size == 0:
        raise ConfigError(
            "student.multi_hot_tail = true needs the vocabulary size; pass vocab_size > 0 "
            "(labels.vocab_size) or set student.multi_hot_tail = false"
        )


def _glorot(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_student(
    config: StudentConfig, vocab_size: int = 0, device: str | torch.device = "cpu"
) -> YMapNet:
    """A freshly initialised student, built directly on `device` (no CPU copy first)."""
    with torch.device(device):
        model = YMapNet(config, vocab_size)
    logger.info("Y-MAP-Net (%s preset): %d levels, input %d, %s parameters on %s",
                config.preset, config.levels, config.input_size,
                f"{sum(p.numel() for p in model.parameters()):,}", device)
    return model


def count_parameters(config: StudentConfig, vocab_size: int = 0) -> int:
    """Parameters of the student `config` describes, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = YMapNet(config, vocab_size)
    return sum(p.numel() for p in model.parameters())


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The student inside a data-parallel wrapper (`DistributedDataParallel.module`), or itself."""
    return getattr(model, "module", model)
