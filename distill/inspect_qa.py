"""`distill inspect`'s QA statistics over a run's rows (`distill.inspect`): caption and token
emptiness, depth range, people per image, and every label layer's own QA figures (the text-pixel
and class-group pixel shares among them), over all rows or the first `sample_rows`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distill.labels.groups import GROUP_NAMES
from distill.layers.registry import get_layer, layers
from distill.shards import open_shard
from distill.storage import Location

__all__ = ["qa_statistics"]

# The layers whose small (not PNG) columns the built-in figures read: the depth range, the caption
# teacher's captions and tokens, COCO's people, the pose teacher's people.
_QA_LAYERS = ("depth", "tokens", "persons", "pose")


def _qa_columns() -> list[str]:
    """The image's size, the small columns of `_QA_LAYERS`, and the columns every label layer's
    QA statistic reads (`stat_columns`), all from the label registry."""
    small = (c.name for name in _QA_LAYERS for c in get_layer(name).columns if not c.encoded)
    return list(dict.fromkeys(("width", "height", *small,
                               *(c for layer in layers() for c in layer.stat_columns))))


def _iter_tables(paths: list[Location], columns: list[str],
                 limit: int | None) -> Iterator[pa.Table]:
    """Row groups of the shards (only `columns`), cut after `limit` rows in all."""
    left = limit
    for path in paths:
        if left is not None and left <= 0:
            return
        pf = open_shard(path)
        names = pf.schema_arrow.names
        have = [c for c in columns if c in names]  # a column added later reads as null
        for g in range(pf.metadata.num_row_groups):
            if left is not None and left <= 0:
                return
            table = pf.read_row_group(g, columns=have)
            for c in columns:
                if c not in names:
                    table = table.append_column(c, pa.nulls(table.num_rows))
            if left is not None:
                table = table.slice(0, left)
                left -= table.num_rows
            yield table


def _range(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, np.float64)
    return {"min": float(arr.min()), "max": float(arr.max()), "mean": float(arr.mean())}


def qa_statistics(paths: list[Location], sample_rows: int | None) -> dict[str, Any]:
    """Statistics over the first `sample_rows` rows (all when None), in shard order."""
    rows = 0
    caption_rows = empty_captions = empty_tokens = 0
    depth_min: list[float] = []
    depth_max: list[float] = []
    people: list[int] = []
    teacher_rows = 0
    teacher_people: Counter[str] = Counter()  # the pose teacher's people by box source
    # Each label layer's QA figures, weighted by the pixels of the rows that have it.
    figures: dict[str, dict[str, float]] = {}  # layer → figure → sum of figure × pixels
    pixels: dict[str, int] = {}  # layer → pixels of its rows
    counted: dict[str, int] = {}  # layer → rows that have it
    stat_layers = [layer for layer in layers() if layer.stat_columns]
    for table in _iter_tables(paths, _qa_columns(), sample_rows):
        rows += table.num_rows
        captions = table.column("teacher_captions").to_pylist()
        tokens = table.column("tokens").to_pylist()
        for caps, toks in zip(captions, tokens, strict=True):
            if caps is None:  # the caption teacher did not run on this row
                continue
            caption_rows += 1
            empty_captions += not any(c and c.strip() for c in caps)
            empty_tokens += not toks
        lo = table.column("depth_min").to_pylist()
        hi = table.column("depth_max").to_pylist()
        depth_min += [v for v in lo if v is not None]
        depth_max += [v for v in hi if v is not None]
        people += pc.fill_null(pc.list_value_length(table.column("persons")), 0).to_pylist()
        for seen in table.column("teacher_persons").to_pylist():
            if seen is not None:
                teacher_rows += 1
                teacher_people.update(p["box_source"] for p in seen)
        sizes = [w * h for w, h in zip(table.column("width").to_pylist(),
                                       table.column("height").to_pylist(), strict=True)]
        for layer in stat_layers:
            columns = {c: table.column(c).to_pylist() for c in layer.stat_columns}
            for k, size in enumerate(sizes):
                stats = layer.statistics({c: v[k] for c, v in columns.items()})
                if stats is None:
                    continue
                counted[layer.name] = counted.get(layer.name, 0) + 1
                pixels[layer.name] = pixels.get(layer.name, 0) + size
                sums = figures.setdefault(layer.name, {})
                for name, value in stats.items():
                    sums[name] = sums.get(name, 0.0) + value * size

    def share(layer: str, name: str) -> float | None:
        total = pixels.get(layer, 0)
        return figures[layer].get(name, 0.0) / total if total else None

    people_arr = np.asarray(people, np.int64)
    return {
        "rows": rows,
        "sampled": sample_rows is not None,
        "captions": {
            "rows_with_caption_teacher": caption_rows,
            "empty_caption_rate": empty_captions / caption_rows if caption_rows else None,
            "empty_token_rate": empty_tokens / caption_rows if caption_rows else None,
            "empty_captions": empty_captions, "empty_tokens": empty_tokens,
        },
        "depth": {
            "rows_with_depth": len(depth_min),
            "fraction_with_depth": len(depth_min) / rows if rows else None,
            "depth_min": _range(depth_min), "depth_max": _range(depth_max),
        },
        "people": {
            "total": int(people_arr.sum()),
            "per_image": float(people_arr.mean()) if rows else None,
            "max": int(people_arr.max()) if rows else None,
            "images_with_people": int((people_arr > 0).sum()),
            # The pose teacher's people, by where their boxes came from (ground truth, the
            # panoptic teacher, the backend's detector, the whole image).
            "teacher": {"rows": teacher_rows, "total": sum(teacher_people.values()),
                        "by_box_source": dict(sorted(teacher_people.items()))},
        },
        "pixels": {
            "rows": rows,
            "rows_with_groups": counted.get("groups", 0),
            "group_shares": {name: share("groups", f"group:{name}") for name in GROUP_NAMES},
            "no_class_group_share": share("groups", "no_class_share"),
            "rows_with_text": counted.get("text", 0),
            "text_share": share("text", "text_share"),
        },
        # every layer's QA figures over the rows that have it (a plug-in layer's included)
        "layers": {layer: {"rows": counted[layer],
                           **{name: share(layer, name) for name in sums}}
                   for layer, sums in figures.items()},
    }
