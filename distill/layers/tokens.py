"""The tokens layer: the caption teacher's caption, its stop-word-filtered GloVe-known words (the
student's caption targets, paper §3.4), and COCO's human captions kept beside them for audits."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distill.labels.tokens import token_targets, tokenize
from distill.layers.registry import Column, LabelLayer

if TYPE_CHECKING:
    from distill.shards import Sample


class TokensLayer(LabelLayer):
    name = "tokens"
    columns = (
        Column(pa.field("teacher_captions", pa.list_(pa.string()))),
        Column(pa.field("coco_captions", pa.list_(pa.string()))),  # annotations, not a teacher's
        # stop-word-filtered, GloVe-known, caption order
        Column(pa.field("tokens", pa.list_(pa.string()))),
    )
    roles = ("caption",)
    rewrites = ("teacher_captions", "tokens")
    loader_columns = ("tokens",)
    moved = "tokens"
    card_columns = ("teacher_captions", "coco_captions", "tokens")

    def encode(self, sample: Sample, compress_level: int,
               wanted: Collection[str]) -> dict[str, Any]:
        return {"teacher_captions": sample.teacher_captions,
                "coco_captions": sample.coco_captions, "tokens": sample.tokens}

    def decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {"teacher_captions": row["teacher_captions"],
                "coco_captions": row["coco_captions"] or [], "tokens": row["tokens"]}

    def fill(self, sample: Sample, outputs: Mapping[str, Any], ctx: Any,
             scratch: dict[str, Any]) -> None:
        result = outputs.get("caption")
        if result is None:
            return
        sample.teacher_captions = [result.caption]
        # Tokens come from the teacher's caption: the student distils the captioner (paper
        # §3.4); COCO's human captions stay in their own column for audits.
        sample.tokens = tokenize(result.caption, ctx.stop_words, ctx.known_words)

    def target(self, sample: Sample, warp: Any) -> np.ndarray | None:
        """The word vectors of the tokens (`token_targets`); zeros for a row without words;
        None (absent) without a vocabulary or when the caption teacher did not run."""
        if warp.vocab is None or sample.tokens is None:
            return None
        if not sample.tokens:
            return np.zeros((warp.max_tokens, warp.vocab.dim), np.float32)
        return token_targets(sample.tokens, warp.vocab, warp.max_tokens)


LAYER = TokensLayer()
