"""Caption teacher: VisionGPT2 (the paper's captioner), written in this project and loading a
user's `captioner.pt` state dict (network: `teachers.modeling_visiongpt2`).

Preprocessing and decoding follow the original `Trainer.generate_caption`: albumentations
`Resize(224, 224)` (cv2 bilinear, no antialiasing, uint8 result) and `Normalize(0.5, 0.5)`,
then decoding from `<|endoftext|>` until it is emitted again: greedy (`deterministic=True`) by
default, or sampling as the original's default (`teachers.caption.decoding = "sample"`).
Here the resize is `teachers.resize` (OpenCV's uint8 INTER_LINEAR, bit for bit when shrinking),
and decoding is batched with a cache (identical tokens, far less work).

Variants:
- `pretrained`: `config.checkpoint` is a `captioner.pt` (read with `torch.load(weights_only=
  True)`) or `.safetensors` file, or a folder holding one; the sizes are read from the tensors
  and the load is strict. A 50257-id checkpoint decodes with GPT-2's tokenizer, taken from
  tokenizer files next to the checkpoint or from the Hugging Face cache ("gpt2"); any other
  vocabulary size is this project's word tokenizer of that size (`teachers.word_tokenizer`).
- `tiny`: `VisionGPT2Config.tiny()` with the 2048-id word tokenizer, fixed seed.
- `random`: full size, random init, with a GPT-2-sized (50257 ids) word tokenizer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from distill.config import TeacherConfig
from teachers.base import CaptionResult, Provenance, Teacher, TeacherError, check_images
from teachers.modeling_visiongpt2 import Sampler, VisionGPT2Config, VisionGPT2Model
from teachers.registry import register
from teachers.resize import resize_bilinear_uint8
from teachers.runtime import (
    load_state_dict,
    make_provenance,
    resolve_device,
    resolve_dtype,
    seeded,
    weight_files,
)
from teachers.word_tokenizer import DEFAULT_VOCAB_SIZE, build_word_tokenizer, suppressed_ids

__all__ = [
    "GPT2_VOCAB_SIZE",
    "VisionGPT2Teacher",
    "config_from_state_dict",
    "image_seed",
    "load_checkpoint",
    "preprocess",
]

logger = logging.getLogger(__name__)

GPT2_VOCAB_SIZE = 50257
DEFAULT_MAX_NEW_TOKENS = 32
_TIED = ("transformer.wte.weight", "lm_head.weight")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
_GPT2_HELP = (
    "put GPT-2's tokenizer files next to the checkpoint (on a machine with internet: python -c "
    "\"from transformers import GPT2TokenizerFast; "
    "GPT2TokenizerFast.from_pretrained('gpt2').save_pretrained('<checkpoint folder>')\") or have "
    "'gpt2' in the local Hugging Face cache (HF_HOME)"
)


def image_seed(image: np.ndarray) -> int:
    """A sampling seed that depends only on the image's pixels (and shape), so a sampled caption
    is the same on a resume, in any batch."""
    pixels = np.ascontiguousarray(image)
    digest = hashlib.blake2b(repr(pixels.shape).encode(), digest_size=8)
    digest.update(pixels.tobytes())
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


def preprocess(images: list[np.ndarray], size: int, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    """RGB uint8 images of any sizes → (B, 3, size, size) in [-1, 1]: the original's
    `A.Resize(size, size)` (cv2 INTER_LINEAR on uint8, reproduced by `teachers.resize`) and
    `A.Normalize(mean=0.5, std=0.5)`."""
    batch = [resize_bilinear_uint8(torch.from_numpy(np.ascontiguousarray(image)).to(device)
                                   .permute(2, 0, 1), (size, size)) for image in images]
    return ((torch.stack(batch).float() / 255.0 - 0.5) / 0.5).to(dtype)


def config_from_state_dict(state: dict[str, torch.Tensor]) -> VisionGPT2Config:
    """The network sizes a VisionGPT2 state dict was saved with. Head counts are not in the
    weights: the full and tiny presets' are used for their widths, else 64-wide heads (as
    ViT-B and GPT-2)."""
    need = ("patch_embed.proj.weight", "pos_embed", "transformer.wpe.weight",
            "blocks.0.mlp.fc1.weight")
    missing = [k for k in need if k not in state]
    wte = state.get(_TIED[0], state.get(_TIED[1]))
    if missing or wte is None:
        raise TeacherError(f"not a VisionGPT2 state dict: missing {(missing or list(_TIED))[0]!r} "
                           f"(it has {len(state)} tensors, e.g. {list(state)[:3]})")
    vocab, dim = wte.shape
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    side = math.isqrt(int(state["pos_embed"].shape[1]) - 1)
    depth = sum(1 for k in state if k.startswith("transformer.h.") and k.endswith(".ln_1.weight"))
    heads = {c.embed_dim: c.num_heads for c in (VisionGPT2Config.tiny(), VisionGPT2Config())}
    return VisionGPT2Config(
        image_size=side * patch, patch_size=patch, embed_dim=int(dim), depth=depth,
        num_heads=heads.get(int(dim), max(1, int(dim) // 64)),
        mlp_ratio=int(state["blocks.0.mlp.fc1.weight"].shape[0]) // int(dim),
        vocab_size=int(vocab), seq_len=int(state["transformer.wpe.weight"].shape[0]),
    )


def _checkpoint_file(config: TeacherConfig) -> Path:
    files = weight_files(config.checkpoint, config.revision) if config.checkpoint else []
    if not files:
        raise TeacherError(
            f"VisionGPT2 checkpoint {config.checkpoint!r} not found: give teachers.caption."
            "checkpoint as the path of a captioner.pt (the state dict the VisionGPT2 trainer "
            "saves) or .safetensors file, or a folder holding one; tests and the demo use "
            "variant='tiny', which needs no weights")
    if len(files) > 1:
        raise TeacherError(f"VisionGPT2 checkpoint {config.checkpoint!r} holds several weight "
                           f"files ({', '.join(p.name for p in files)}); name one of them")
    return files[0]


def load_checkpoint(path: Path) -> VisionGPT2Model:
    """A VisionGPT2 network with the weights of `path`, sized from its tensors, loaded
    strictly. Tied weights saved once (safetensors keeps one of wte / lm_head) and the
    constant causal-mask buffers may be absent."""
    state = dict(load_state_dict(path))
    cfg = config_from_state_dict(state)
    for a, b in (_TIED, _TIED[::-1]):
        if a not in state and b in state:
            state[a] = state[b]
    with torch.device("meta"):
        model = VisionGPT2Model(cfg)
    model = model.to_empty(device="cpu")  # allocates wte and lm_head apart: tie them again
    model.tie_weights()
    for name, buffer in model.named_buffers():  # the constant causal masks
        buffer.copy_(torch.tril(torch.ones_like(buffer)))
        state.setdefault(name, buffer)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise TeacherError(f"{path} does not fit a VisionGPT2 network of sizes {cfg}: {exc}") \
            from exc
    return model


def _gpt2_tokenizer(checkpoint: Path) -> PreTrainedTokenizerBase:
    from transformers import GPT2TokenizerFast  # type: ignore[attr-defined]  # v5: an alias

    folder = checkpoint.parent
    sources = [str(folder)] if any((folder / f).is_file() for f in _TOKENIZER_FILES) else []
    for source in [*sources, "gpt2"]:
        try:
            tokenizer = GPT2TokenizerFast.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as exc:
            logger.debug("no GPT-2 tokenizer at %s: %s", source, exc)
            continue
        # transformers 5 builds an empty tokenizer when no file is found: check it is GPT-2's.
        if len(tokenizer) == GPT2_VOCAB_SIZE and tokenizer.eos_token_id == GPT2_VOCAB_SIZE - 1:
            return tokenizer
        logger.warning("tokenizer at %s has %d ids and eos %s, not GPT-2's 50257 and 50256; "
                       "ignored", source, len(tokenizer), tokenizer.eos_token_id)
    raise TeacherError(f"{checkpoint} is a GPT-2-vocabulary VisionGPT2 and needs GPT-2's "
                       f"tokenizer, which cannot be downloaded here: {_GPT2_HELP}")


def _build(config: TeacherConfig) -> tuple[VisionGPT2Model, PreTrainedTokenizerBase, list[Path]]:
    """Network, tokenizer and weight files for `config.variant` (DESIGN §3)."""
    if config.variant == "pretrained":
        path = _checkpoint_file(config)
        model = load_checkpoint(path)
        vocab = model.config.vocab_size
        tokenizer = _gpt2_tokenizer(path) if vocab == GPT2_VOCAB_SIZE \
            else build_word_tokenizer(vocab)
        return model, tokenizer, [path]
    if config.variant not in ("tiny", "random"):
        raise TeacherError(f"unknown variant {config.variant!r}; choose pretrained, tiny or random")
    tiny = config.variant == "tiny"
    tokenizer = build_word_tokenizer(DEFAULT_VOCAB_SIZE if tiny else GPT2_VOCAB_SIZE)
    cfg = VisionGPT2Config.tiny(vocab_size=len(tokenizer)) if tiny \
        else VisionGPT2Config(vocab_size=len(tokenizer))
    if config.input_size:
        cfg = dataclasses.replace(cfg, image_size=config.input_size)
    try:
        cfg.validate()
    except ValueError as exc:
        raise TeacherError(f"teachers.caption.input_size = {config.input_size}: {exc}") from exc
    with seeded():
        model = VisionGPT2Model(cfg)
    return model, tokenizer, []


@register
class VisionGPT2Teacher(Teacher[CaptionResult]):
    """VisionGPT2 captioner → one caption string per image (greedy by default; deterministic
    either way)."""

    name = "visiongpt2"
    role = "caption"

    def __init__(self, config: TeacherConfig, *, max_new_tokens: int | None = None,
                 min_new_tokens: int = 0) -> None:
        """`max_new_tokens` caps a caption: `config.max_new_tokens`, 0 → 32 (the original's
        default is 50; COCO captions almost never pass 32 GPT-2 tokens). `min_new_tokens =
        max_new_tokens` forces exactly that many. `config.decoding`: "greedy" (default) or
        "sample" at `config.temperature`, as the original `generate` without
        `deterministic=True`, seeded per image (`image_seed`)."""
        super().__init__(config)
        max_new_tokens = max_new_tokens or config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        self.decoding = config.decoding or "greedy"
        if self.decoding not in ("greedy", "sample"):
            raise TeacherError(f"visiongpt2 decodes 'greedy' or 'sample', not {self.decoding!r}")
        if config.batch_size < 1:
            raise TeacherError(f"batch_size must be >= 1, got {config.batch_size}")
        if not 0 <= min_new_tokens <= max_new_tokens or max_new_tokens < 1:
            raise TeacherError(f"need 0 <= min_new_tokens <= max_new_tokens and max_new_tokens "
                               f">= 1, got {min_new_tokens}, {max_new_tokens}")
        self.device = resolve_device(config)
        self.dtype = resolve_dtype(config, self.device)
        model, self.tokenizer, files = _build(config)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        cfg = self.model.config
        if config.variant == "pretrained" and config.input_size not in (0, cfg.image_size):
            raise TeacherError(f"teachers.caption.input_size = {config.input_size} does not "
                               f"match the checkpoint's ViT input {cfg.image_size}; use 0 or "
                               f"{cfg.image_size}")
        if max_new_tokens + 1 > cfg.seq_len:
            raise TeacherError(f"max_new_tokens {max_new_tokens} does not fit the model's "
                               f"{cfg.seq_len} text positions")
        self.max_new_tokens, self.min_new_tokens = max_new_tokens, min_new_tokens
        self.input_size = cfg.image_size
        self._provenance = make_provenance(
            self.role, self.name, config, self.device, self.dtype, input_size=cfg.image_size,
            files=files, extra=self._decoding(), hub=True,
        )
        logger.info("visiongpt2 %s: %.1fM parameters on %s (%s), input %d",
                    config.variant, sum(p.numel() for p in self.model.parameters()) / 1e6,
                    self.device, self._provenance.dtype, cfg.image_size)

    def _decoding(self) -> dict[str, Any]:
        sampling = {"temperature": self.config.temperature,
                    "seed": "per image: blake2b-64 of its RGB pixels"} \
            if self.decoding == "sample" else {}
        return {"decoding": self.decoding, **sampling, "max_new_tokens": self.max_new_tokens,
                "min_new_tokens": self.min_new_tokens, "tokenizer": type(self.tokenizer).__name__,
                "vocab_size": len(self.tokenizer),
                "preprocess": "cv2 INTER_LINEAR uint8 resize, mean = std = 0.5",
                "network": dataclasses.asdict(self.model.config)}

    @property
    def provenance(self) -> Provenance:
        return self._provenance

    @torch.inference_mode()
    def token_ids(self, images: list[np.ndarray]) -> list[list[int]]:
        """Each image's generated token ids, without the start token, up to (not including)
        the first eos; `batch_size` images are decoded together."""
        check_images(images)
        bos, eos = int(self.tokenizer.bos_token_id), int(self.tokenizer.eos_token_id)
        out: list[list[int]] = []
        for start in range(0, len(images), self.config.batch_size):
            chunk = images[start:start + self.config.batch_size]
            pixels = preprocess(chunk, self.input_size, self.device, self.dtype)
            sampler = None if self.decoding == "greedy" else Sampler(
                self.config.temperature, [image_seed(img) for img in chunk])
            seq = self.model.generate(pixels, bos, eos, self.max_new_tokens, self.min_new_tokens,
                                      tuple(suppressed_ids(self.tokenizer)), sampler)
            for row in seq[:, 1:].tolist():
                out.append(row[:row.index(eos)] if eos in row else row)
        return out

    def predict(self, images: list[np.ndarray]) -> list[CaptionResult]:
        """RGB uint8 (H_i, W_i, 3) images of any sizes → one caption each, in order."""
        ids = self.token_ids(images)
        if not ids:  # batch_decode([]) would decode one empty sequence
            return []
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [CaptionResult(caption=text.strip()) for text in texts]
