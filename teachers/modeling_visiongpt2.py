"""The VisionGPT2 captioner network: ViT-B/16 blocks interleaved with GPT-2 blocks that
cross-attend to the image tokens (shreydan/VisionGPT2, the paper's caption teacher).

Layer i runs ViT block i on the image tokens, then GPT-2 block i on the text tokens: causal
self-attention, cross-attention to the image tokens as block i left them, MLP. Parameter and
buffer names are the original `VisionGPT2Model`'s (timm `vit_base_patch16_224` parts +
nanoGPT-style GPT-2), so a `captioner.pt` state dict it saved loads with `strict=True`:

    cls_token, pos_embed, patch_embed.proj.*, blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,
    mlp.fc1,mlp.fc2}.*, transformer.{wte,wpe,ln_f}.*, transformer.h.{i}.{ln_1,attn.c_attn,
    attn.c_proj,attn.mask,ln_2,cross_attn.{q,k,v,c_proj},ln_3,mlp.c_fc,mlp.c_proj}.*, lm_head.*

As in the original, `ln_2` normalises the input of the cross-attention and `ln_3` that of the
MLP, GELU is the exact (erf) one, ViT LayerNorms use eps 1e-6 and GPT-2 ones 1e-5, the ViT
has no final norm, and `lm_head` is tied to `transformer.wte`. Because the image path never
reads the text, the image tokens of every layer are computed once per batch and reused at every
decoding step together with a key/value cache: the same logits as re-running the original's
full forward per token, at a fraction of the cost.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "KVCache",
    "Sampler",
    "VisionGPT2Config",
    "VisionGPT2Decoder",
    "VisionGPT2Model",
]

logger = logging.getLogger(__name__)

KVCache = list[tuple[Tensor, Tensor]]  # per GPT-2 block: self-attention keys, values (B, H, T, d)


@dataclass(frozen=True)
class VisionGPT2Config:
    """Sizes of a VisionGPT2 network; the defaults are the original's (ViT-B/16 224 + GPT-2
    small, `seq_len = 1024` GPT-2 positions)."""

    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: int = 4
    vocab_size: int = 50257
    seq_len: int = 1024
    init_std: float = 0.02  # random init only; checkpoints overwrite it

    @classmethod
    def tiny(cls, image_size: int = 32, vocab_size: int = 2048) -> VisionGPT2Config:
        """A 2-layer, 32-wide network (patch 8) for CPU tests and the demo. std 1.0: with 0.02
        a random 32-wide decoder ignores its input and repeats one word."""
        return cls(image_size=image_size, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                   mlp_ratio=4, vocab_size=vocab_size, seq_len=64, init_std=1.0)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size "
                             f"{self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads "
                             f"{self.num_heads}")


def _heads(x: Tensor, n_heads: int) -> Tensor:
    """(B, T, C) → (B, H, T, C / H)."""
    b, t, c = x.shape
    return x.view(b, t, n_heads, c // n_heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """(B, H, T, d) → (B, T, H * d)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class VisionGPT2PatchEmbed(nn.Module):
    """timm `PatchEmbed`: a patch-size conv, flattened to (B, N, C)."""

    def __init__(self, cfg: VisionGPT2Config) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)


class VisionGPT2ViTAttention(nn.Module):
    """timm ViT attention: fused qkv (laid out q | k | v, heads inside each), no mask."""

    def __init__(self, cfg: VisionGPT2Config) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (_heads(z, self.num_heads) for z in self.qkv(x).chunk(3, dim=-1))
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class VisionGPT2ViTMlp(nn.Module):
    def __init__(self, cfg: VisionGPT2Config) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.embed_dim * cfg.mlp_ratio)
        self.fc2 = nn.Linear(cfg.embed_dim * cfg.mlp_ratio, cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VisionGPT2ViTBlock(nn.Module):
    """timm ViT block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: VisionGPT2Config) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.attn = VisionGPT2ViTAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = VisionGPT2ViTMlp(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionGPT2SelfAttention(nn.Module):
    """GPT-2 causal self-attention with an optional key/value cache. `mask` is the original's
    (1, 1, seq_len, seq_len) lower-triangular buffer, kept so checkpoints load strictly."""

    mask: Tensor

    def __init__(self, cfg: VisionGPT2Config) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.c_attn = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.c_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.register_buffer("mask", torch.tril(torch.ones(1, 1, cfg.seq_len, cfg.seq_len)))

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None = None,
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = (_heads(z, self.num_heads) for z in self.c_attn(x).chunk(3, dim=-1))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        t, total = q.shape[2], k.shape[2]
        allowed = self.mask[0, 0, total - t:total, :total].bool()  # query i sees keys <= i
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.c_proj(_merge(out)), (k, v)


class VisionGPT2CrossAttention(nn.Module):
    """Text queries attend to the image tokens (separate q, k, v projections, no mask)."""

    def __init__(self, cfg: VisionGPT2Config) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.k = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.v = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.c_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def image_kv(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of the image tokens (B, H, N, d): computed once per batch."""
        return _heads(self.k(image), self.num_heads), _heads(self.v(image), self.num_heads)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
        out = F.scaled_dot_product_attention(_heads(self.q(x), self.num_heads), *kv)
        return self.c_proj(_merge(out))


class VisionGPT2MLP(nn.Module):
    def __init__(self, cfg: VisionGPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.embed_dim, cfg.embed_dim * cfg.mlp_ratio)
        self.c_proj = nn.Linear(cfg.embed_dim * cfg.mlp_ratio, cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class VisionGPT2Block(nn.Module):
    """GPT-2 block with cross-attention: self-attn(ln_1), cross-attn(ln_2), MLP(ln_3)."""

    def __init__(self, cfg: VisionGPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.embed_dim)
        self.attn = VisionGPT2SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.embed_dim)
        self.mlp = VisionGPT2MLP(cfg)
        self.ln_3 = nn.LayerNorm(cfg.embed_dim)
        self.cross_attn = VisionGPT2CrossAttention(cfg)

    def forward(self, x: Tensor, image_kv: tuple[Tensor, Tensor],
                past: tuple[Tensor, Tensor] | None = None,
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        attn, present = self.attn(self.ln_1(x), past)
        x = x + attn
        x = x + self.cross_attn(self.ln_2(x), image_kv)
        return x + self.mlp(self.ln_3(x)), present


class VisionGPT2Decoder(nn.Module):
    """The GPT-2 side (`transformer.*` in the original's state dict): token and position
    embeddings, the cross-attending blocks, the final LayerNorm."""

    def __init__(self, cfg: VisionGPT2Config) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.embed_dim)
        self.h = nn.ModuleList([VisionGPT2Block(cfg) for _ in range(cfg.depth)])
        self.ln_f = nn.LayerNorm(cfg.embed_dim)

    def gpt_blocks(self) -> list[VisionGPT2Block]:
        return [block for block in self.h if isinstance(block, VisionGPT2Block)]


class VisionGPT2Model(nn.Module):
    """The captioner. `forward(pixels, input_ids)` gives (B, T, vocab) logits like the
    original's training forward; `encode` + `decode_step` are the cached path for generation."""

    def __init__(self, cfg: VisionGPT2Config) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        d = cfg.embed_dim
        self.patch_embed = VisionGPT2PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, d))
        self.blocks = nn.ModuleList([VisionGPT2ViTBlock(cfg) for _ in range(cfg.depth)])
        self.transformer = VisionGPT2Decoder(cfg)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.tie_weights()
        self.reset_parameters()

    def tie_weights(self) -> None:
        """`lm_head` shares its weight with the token embedding `transformer.wte`."""
        self.lm_head.weight = self.transformer.wte.weight

    def reset_parameters(self) -> None:
        """Random init: normal(0, init_std) weights and embeddings, zero biases, unit norms."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv2d | nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            if isinstance(module, nn.Linear | nn.Conv2d) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.cls_token, std=std)
        nn.init.normal_(self.pos_embed, std=std)

    def encode(self, pixels: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(B, 3, S, S) normalised pixels → per layer, the cross-attention keys and values of
        the image tokens as ViT block i leaves them."""
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        kvs = []
        for block, gpt in zip(self.blocks, self.transformer.gpt_blocks(), strict=True):
            x = block(x)
            kvs.append(gpt.cross_attn.image_kv(x))
        return kvs

    def decode_step(self, input_ids: Tensor, image_kv: list[tuple[Tensor, Tensor]],
                    past: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """Text tokens (B, T) following the `past` ones → (B, T, vocab) logits, new cache."""
        start = past[0][0].shape[2] if past else 0
        if start + input_ids.shape[1] > self.config.seq_len:
            raise ValueError(f"text longer than the {self.config.seq_len} GPT-2 positions")
        pos = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        x = self.transformer.wte(input_ids) + self.transformer.wpe(pos)
        cache: KVCache = []
        for i, gpt in enumerate(self.transformer.gpt_blocks()):
            x, present = gpt(x, image_kv[i], past[i] if past else None)
            cache.append(present)
        return self.lm_head(self.transformer.ln_f(x)), cache

    def forward(self, pixels: Tensor, input_ids: Tensor) -> Tensor:
        return self.decode_step(input_ids, self.encode(pixels))[0]

    @torch.no_grad()
    def generate(self, pixels: Tensor, bos_id: int, eos_id: int, max_new_tokens: int,
                 min_new_tokens: int = 0, suppress: tuple[int, ...] = (),
                 sampler: Sampler | None = None) -> Tensor:
        """Decoding from `bos_id` for a batch: greedy (the original's `deterministic=True`), or
        with a `Sampler` drawing from softmax(logits / temperature) as the original's default.
        (B, 1 + n) token ids, n <= max_new_tokens; a row that has emitted eos is padded with
        eos, and decoding stops when every row has. `suppress` ids are never chosen, nor is
        eos before `min_new_tokens`."""
        image_kv = self.encode(pixels)
        seq = torch.full((pixels.shape[0], 1), bos_id, dtype=torch.long, device=pixels.device)
        done = torch.zeros(pixels.shape[0], dtype=torch.bool, device=pixels.device)
        past: KVCache | None = None
        step_ids = seq
        for step in range(max_new_tokens):
            logits, past = self.decode_step(step_ids, image_kv, past)
            scores = logits[:, -1].float()
            banned = [*suppress, *([eos_id] if step < min_new_tokens else [])]
            if banned:
                scores[:, banned] = -math.inf
            chosen = scores.argmax(dim=-1) if sampler is None else sampler(scores)
            step_ids = torch.where(done, eos_id, chosen).unsqueeze(1)
            seq = torch.cat([seq, step_ids], dim=1)
            done |= step_ids[:, 0] == eos_id
            if bool(done.all()):
                break
        return seq


class Sampler:
    """Draws one token per row from softmax(scores / temperature), as the original `generate`
    does (`torch.multinomial`), each row from its own seeded generator: a row's tokens do not
    depend on the other rows of its batch."""

    def __init__(self, temperature: float, seeds: list[int]) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.seeds = seeds
        self._generators: list[torch.Generator] = []

    def __call__(self, scores: Tensor) -> Tensor:
        if not self._generators:
            if len(self.seeds) != scores.shape[0]:
                raise ValueError(f"{len(self.seeds)} seeds for {scores.shape[0]} rows")
            self._generators = [torch.Generator(device=scores.device).manual_seed(s)
                                for s in self.seeds]
        probs = torch.softmax(scores / self.temperature, dim=-1)
        return torch.cat([torch.multinomial(p, 1, generator=g)
                          for p, g in zip(probs, self._generators, strict=True)])
