"""Caption teacher: ViT encoder + GPT-2 decoder through transformers' `VisionEncoderDecoderModel`.

The default checkpoint is `nlpconnect/vit-gpt2-image-captioning` (ViT-B/16 224 from
google/vit-base-patch16-224-in21k + GPT-2 small with cross-attention). Preprocessing and decoding
follow its model card: `ViTImageProcessor` (PIL bilinear resize to 224, mean = std = 0.5) and
`generate(pixel_values, max_length=16, num_beams=4)`, i.e. at most 15 new tokens after the
decoder start token `<|endoftext|>` (50256), which is also eos and pad.

Variants: `pretrained` loads the checkpoint (hub id or local folder) with its own image processor
and tokenizer; `tiny` is a 2-layer, 32-wide ViT + GPT-2 under a fixed seed with the project's
word-level tokenizer (`teachers.word_tokenizer`); `random` is the full nlpconnect architecture,
random init, with a GPT-2-sized (50257 ids) word-level vocabulary, so its cost matches the real
model and its random captions are still real words.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    PreTrainedTokenizerBase,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTImageProcessorPil,
)

from distill.config import TeacherConfig
from teachers.base import CaptionResult, Provenance, Teacher, TeacherError, check_images
from teachers.registry import register
from teachers.runtime import (
    hub_kwargs,
    make_provenance,
    missing_weights,
    pretrained_source,
    resolve_device,
    resolve_dtype,
    seeded,
    weight_files,
)
from teachers.word_tokenizer import (
    DEFAULT_VOCAB_SIZE,
    build_word_tokenizer,
    suppressed_ids,
)

__all__ = [
    "DEFAULT_CHECKPOINT",
    "GPT2_VOCAB_SIZE",
    "VitGpt2Teacher",
    "full_config",
    "image_processor",
    "tiny_config",
]

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "nlpconnect/vit-gpt2-image-captioning"
# The model card's `generate(pixel_values, max_length=16, num_beams=4)`.
DEFAULT_NUM_BEAMS = 4
DEFAULT_MAX_NEW_TOKENS = 15
GPT2_VOCAB_SIZE = 50257
FULL_IMAGE_SIZE = 224  # ViT-B/16 at 224, as nlpconnect's encoder
TINY_IMAGE_SIZE = 32
TINY_PATCH_SIZE = 8
_HALF = [0.5, 0.5, 0.5]  # nlpconnect's processor normalises with mean = std = 0.5
# Pixel inputs carry no attention mask, so transformers warns once that pad == eos and once that
# the decoder input (the start token, which is also pad) "may be padded". Each image's decoder
# prompt is one start token, nothing is ever padded: neither warning applies.
_PAD_WARNINGS = {
    "transformers.generation.utils": "The attention mask is not set with a batched input",
    "transformers.modeling_utils": "We strongly recommend passing in an `attention_mask`",
}


class _DropPadWarning(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _silence_pad_warnings() -> None:
    for name, prefix in _PAD_WARNINGS.items():
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropPadWarning) for f in target.filters):
            target.addFilter(_DropPadWarning(prefix))


def _specials(eos_id: int) -> dict[str, Any]:
    return {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id,
            "decoder_start_token_id": eos_id}


def tiny_config(image_size: int = TINY_IMAGE_SIZE, vocab_size: int = DEFAULT_VOCAB_SIZE,
                eos_id: int = 0) -> VisionEncoderDecoderConfig:
    """A 2-layer, 32-wide ViT (patch 8) + GPT-2 with cross-attention for CPU tests and the demo."""
    # With the default std 0.02 a 32-wide random decoder ignores its input and repeats one
    # word; std 1.0 makes the random captions depend on the image.
    encoder = ViTConfig(image_size=image_size, patch_size=TINY_PATCH_SIZE, hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                        initializer_range=1.0)
    decoder = GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                         add_cross_attention=True, initializer_range=1.0, **_specials(eos_id))
    return _join(encoder, decoder, eos_id)


def full_config(image_size: int = FULL_IMAGE_SIZE, vocab_size: int = GPT2_VOCAB_SIZE,
                eos_id: int = GPT2_VOCAB_SIZE - 1) -> VisionEncoderDecoderConfig:
    """The nlpconnect architecture: ViT-B/16 (768 wide, 12 layers, 12 heads) + GPT-2 small
    (768 wide, 12 layers, 1024 positions) with cross-attention."""
    encoder = ViTConfig(image_size=image_size, patch_size=16, qkv_bias=True)
    decoder = GPT2Config(vocab_size=vocab_size, add_cross_attention=True, **_specials(eos_id))
    return _join(encoder, decoder, eos_id)


def _join(encoder: ViTConfig, decoder: GPT2Config, eos_id: int) -> VisionEncoderDecoderConfig:
    decoder.is_decoder = True
    joined = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    assert isinstance(joined, VisionEncoderDecoderConfig)
    for key, value in _specials(eos_id).items():
        setattr(joined, key, value)
    return joined


def image_processor(size: int) -> ViTImageProcessorPil:
    """nlpconnect's preprocessing at `size`: PIL bilinear resize to size x size, /255,
    (x - 0.5) / 0.5."""
    return ViTImageProcessorPil(size={"height": size, "width": size}, resample=2,
                                image_mean=_HALF, image_std=_HALF)


def _encoder_size(model: VisionEncoderDecoderModel) -> int:
    return int(getattr(model.config.encoder, "image_size", FULL_IMAGE_SIZE))


def _load_pretrained(
    config: TeacherConfig,
) -> tuple[VisionEncoderDecoderModel, ViTImageProcessorPil, PreTrainedTokenizerBase]:
    holds = "its config.json, weights, preprocessor_config.json and tokenizer files"
    source = pretrained_source(config, "vit-gpt2 captioner", DEFAULT_CHECKPOINT, holds)
    kwargs = hub_kwargs(config)
    revision = {k: v for k, v in kwargs.items() if k == "revision"}
    try:
        model = VisionEncoderDecoderModel.from_pretrained(source, **kwargs)
        processor = ViTImageProcessorPil.from_pretrained(source, **revision)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:  # not cached / offline / not such a folder
        raise missing_weights("vit-gpt2 captioner", config.checkpoint,
                              f"{type(exc).__name__}: {exc}", DEFAULT_CHECKPOINT, holds) from exc
    return model, processor, tokenizer


def _build(
    config: TeacherConfig,
) -> tuple[VisionEncoderDecoderModel, ViTImageProcessorPil, PreTrainedTokenizerBase]:
    """Model, image processor and tokenizer for `config.variant` (DESIGN §3)."""
    if config.variant == "pretrained":
        model, processor, tokenizer = _load_pretrained(config)
        size = _encoder_size(model)
        if config.input_size not in (0, size):
            raise TeacherError(f"teachers.caption.input_size = {config.input_size} does not "
                               f"match the checkpoint's ViT input {size}; use 0 or {size}")
        return model, processor, tokenizer
    if config.variant not in ("tiny", "random"):
        raise TeacherError(f"unknown variant {config.variant!r}; choose pretrained, tiny or random")
    tiny = config.variant == "tiny"
    size = config.input_size or (TINY_IMAGE_SIZE if tiny else FULL_IMAGE_SIZE)
    patch = TINY_PATCH_SIZE if tiny else 16
    if size % patch:
        raise TeacherError(f"teachers.caption.input_size = {size} must be a multiple of the "
                           f"ViT patch size {patch} for variant {config.variant!r}")
    tokenizer = build_word_tokenizer(DEFAULT_VOCAB_SIZE if tiny else GPT2_VOCAB_SIZE)
    eos = int(tokenizer.eos_token_id)
    arch = tiny_config(size, len(tokenizer), eos) if tiny else full_config(size, len(tokenizer), eos)
    with seeded():
        model = VisionEncoderDecoderModel(arch)
    return model, image_processor(size), tokenizer


@register
class VitGpt2Teacher(Teacher[CaptionResult]):
    """ViT-GPT2 captioner → one caption string per image (beam search, deterministic)."""

    name = "vit-gpt2"
    role = "caption"

    def __init__(self, config: TeacherConfig, *, num_beams: int | None = None,
                 max_new_tokens: int | None = None, min_new_tokens: int = 0) -> None:
        """Defaults come from the config: `decoding` "beam" (4 beams, the model card's) or
        "greedy" (1 beam); `max_new_tokens` 0 → 15, the model card's `max_length=16` minus the
        start token. `min_new_tokens = max_new_tokens` forces captions of exactly that many."""
        super().__init__(config)
        if config.decoding not in ("", "beam", "greedy"):
            raise TeacherError(f"vit-gpt2 decodes 'beam' or 'greedy', not {config.decoding!r}")
        if num_beams is None:
            num_beams = 1 if config.decoding == "greedy" else DEFAULT_NUM_BEAMS
        max_new_tokens = max_new_tokens or config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        if config.batch_size < 1:
            raise TeacherError(f"batch_size must be >= 1, got {config.batch_size}")
        if num_beams < 1 or not 0 <= min_new_tokens <= max_new_tokens or max_new_tokens < 1:
            raise TeacherError(f"need num_beams >= 1 and 0 <= min_new_tokens <= max_new_tokens, "
                               f"max_new_tokens >= 1; got {num_beams}, {min_new_tokens}, "
                               f"{max_new_tokens}")
        _silence_pad_warnings()
        self.device = resolve_device(config)
        self.dtype = resolve_dtype(config, self.device)
        model, self.processor, self.tokenizer = _build(config)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()  # type: ignore[call-arg]
        positions = getattr(self.model.config.decoder, "n_positions", None)
        if positions is not None and max_new_tokens + 1 > positions:
            raise TeacherError(f"max_new_tokens {max_new_tokens} does not fit the decoder's "
                               f"{positions} positions")
        self.generation = self._generation_config(num_beams, max_new_tokens, min_new_tokens)
        self.input_size = _encoder_size(self.model)
        files = weight_files(config.checkpoint, config.revision) \
            if config.variant == "pretrained" else []
        self._provenance = make_provenance(
            self.role, self.name, config, self.device, self.dtype, input_size=self.input_size,
            files=files, extra=self._decoding(), hub=True,
        )
        logger.info("vit-gpt2 %s: %.1fM parameters on %s (%s), input %d, %d beams",
                    config.variant, sum(p.numel() for p in self.model.parameters()) / 1e6,
                    self.device, self._provenance.dtype, self.input_size, num_beams)

    def _generation_config(self, num_beams: int, max_new: int, min_new: int) -> GenerationConfig:
        """The checkpoint's own generation settings, with the model card's beam search and
        this project's length bounds; special ids from the model config, else the tokenizer."""
        gen = copy.deepcopy(self.model.generation_config)
        mc = self.model.config
        eos = mc.eos_token_id if mc.eos_token_id is not None else self.tokenizer.eos_token_id
        start = mc.decoder_start_token_id if mc.decoder_start_token_id is not None else eos
        pad = mc.pad_token_id if mc.pad_token_id is not None else eos
        if eos is None or not 0 <= eos < len(self.tokenizer):
            raise TeacherError(f"the tokenizer ({len(self.tokenizer)} ids) does not know the "
                               f"checkpoint's eos token id {eos}: are its tokenizer files there?")
        gen.update(num_beams=num_beams, do_sample=False, max_new_tokens=max_new,
                   min_new_tokens=min_new, max_length=None, eos_token_id=eos, pad_token_id=pad,
                   decoder_start_token_id=start,
                   suppress_tokens=suppressed_ids(self.tokenizer) or None)
        return gen

    def _decoding(self) -> dict[str, Any]:
        gen = self.generation
        return {"decoding": "beam search" if gen.num_beams > 1 else "greedy",
                "num_beams": gen.num_beams,
                "max_new_tokens": gen.max_new_tokens, "min_new_tokens": gen.min_new_tokens,
                "tokenizer": type(self.tokenizer).__name__, "vocab_size": len(self.tokenizer),
                "preprocess": "PIL bilinear resize, mean = std = 0.5"}

    @property
    def provenance(self) -> Provenance:
        return self._provenance

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray]) -> list[CaptionResult]:
        """RGB uint8 (H_i, W_i, 3) images of any sizes → one caption each, in order; every image
        is resized to the encoder's square input, `batch_size` images per `generate` call."""
        check_images(images)
        out: list[CaptionResult] = []
        step = self.config.batch_size
        for start in range(0, len(images), step):
            chunk = images[start:start + step]
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"]
            ids = self.model.generate(pixels.to(self.device, self.dtype),
                                      generation_config=self.generation)
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            out.extend(CaptionResult(caption=t.strip()) for t in texts)
        return out
