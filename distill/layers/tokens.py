"""The tokens layer: the caption teacher's caption, its stop-word-filtered GloVe-known words (the
student's caption targets, paper §3.4), and COCO's human captions kept beside them for audits."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distill.labels.tokens import token_targets, tokenize
from distill.layers.registry import Column, LabelLayer, PanelSpec

if TYPE_CHECKING:
    import numpy as np

    from distill.layers.form import LabelledImage
    from distill.paint import Painter, Panel
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
    # -- the decoded form and its pictures: the words panel --------------------------------

    def decode_labels(self, sample: Sample) -> dict[str, Any]:
        captions = sample.teacher_captions
        return {"tokens": None if sample.tokens is None else list(sample.tokens),
                "captions": None if captions is None else list(captions),
                "coco_captions": list(sample.coco_captions or [])}

    def predicted(self, channels: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {}  # the student's words are decoded from its token vectors (predict.py)

    def sheet_panels(self) -> tuple[PanelSpec, ...]:
        return (PanelSpec("words", "caption + tokens", rank=7, compare_rank=1, dense=False,
                          span=2),)

    def panel_caption(self, key: str, labelled: LabelledImage,
                      compare: bool) -> tuple[str, str, bool]:
        text = "decoded words" if labelled.source == "student" else "caption + tokens"
        return text, labelled.source, compare

    def draw_panel(self, key: str, painter: Painter, panel: Panel,
                   labelled: LabelledImage) -> None:
        blocks: list[tuple[str, str]] = []
        captions, words = labelled.captions, labelled.tokens or []
        if captions is not None:  # the caption teacher ran (perhaps saying nothing)
            blocks.append(("captions" if len(captions) > 1 else "caption",
                           "\n".join(c if c.strip() else "(empty)" for c in captions)
                           or "(empty)"))
        if words or captions is not None or labelled.source == "student":
            heading = "tokens" if labelled.source == "teachers" else "words"
            blocks.append((f"{heading} ({len(words)})",
                           # a no-break space keeps each separator on its word's line
                           "\u00a0· ".join(words) if words else "(none)"))
        if labelled.coco_captions:  # the annotators', beside the teacher's (not learnt)
            if not blocks:
                blocks.append(("caption", "no caption label"))
            blocks.append((f"COCO captions ({len(labelled.coco_captions)})",
                           "\n".join(labelled.coco_captions)))
        if not blocks:
            painter.missing(panel, "no caption label")
            return
        painter.text_block(panel, blocks)


LAYER = TokensLayer()
