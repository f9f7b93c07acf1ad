"""Teacher audit (`distill run audit OUT`): a finished generate-labels run measured against COCO's
own ground truth, where COCO has it.

Two checks, one pass over the shards:

* the panoptic teacher's group bits (Persons, Vehicles, Animals) against the union of COCO's
  instance masks of those groups (`annotations/instances_<split>.json`, polygons and RLE, crowd
  regions included; category → group by the run's `GroupTable`);
* the caption teacher's words against the five human captions, with a human caption held out
  against the others as the yardstick.

A run folder needs only its resolved config (for `data.root`, `data.split` and the `labels.*`
token rule) and its shards (the committed ones of a run with a manifest, else every `*.parquet`
of its shards folder; `distill.runfolder` owns both the names and the rule); the quarantine and
vocabulary are not read. The run folder and `data.root` may be local paths or URIs
(`s3://…`); a relative `data.root` is resolved from the working directory, as the labelling run
did.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from distill.coco import resolve_inside
from distill.config import Config, LabelsConfig, load_config
from distill.errors import ConfigError, ShardError, StorageError, UnsafePathError
from distill.labels.glove import load_glove_words
from distill.labels.groups import GROUP_NAMES, GroupTable, decode_group_mask
from distill.labels.tokens import load_stop_words, tokenize
from distill.progress import Progress
from distill.provenance import random_weight_roles, random_weights_warning
from distill.runfolder import LabelRun, resolve_shards
from distill.shards import Sample, decode_row, open_shard, read_metadata
from distill.storage import Location, atomic_write_bytes

__all__ = [
    "AUDIT_GROUPS",
    "audit_run",
    "format_audit",
    "instance_group_masks",
    "score_caption",
    "score_held_out_humans",
    "score_like_held_out",
]

logger = logging.getLogger(__name__)

AUDIT_GROUPS = ("Persons", "Vehicles", "Animals")  # the groups COCO's 80 things fully cover
CAPTION_METRICS = ("precision", "recall_union", "recall_each")
# Only these columns are read; the rest of a row (image bytes, depth, ...) is never decoded.
_COLUMNS = ["image_id", "width", "height", "groups_png", "teacher_captions", "coco_captions"]


# ---------------------------------------------------------------------------------------------
# Masks


def instance_group_masks(coco: Any, image_id: int, table: GroupTable,
                         groups: Iterable[int]) -> dict[int, np.ndarray]:
    """Group index → bool (H, W) union of the image's COCO instance masks (`annToMask`: polygons,
    RLE, crowd included) whose category falls in that group. `coco` is a pycocotools `COCO`;
    instance category ids equal the panoptic thing ids, so `table` maps them."""
    info = coco.imgs[image_id]
    shape = (int(info["height"]), int(info["width"]))
    out = {g: np.zeros(shape, bool) for g in groups}
    with warnings.catch_warnings():
        # pycocotools 2.0.x decodes through an `__array__` without numpy 2's copy keyword
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
        for ann in coco.imgToAnns.get(image_id, []):
            category = table.by_id.get(int(ann["category_id"]))
            if category is not None and category.group in out:
                out[category.group] |= coco.annToMask(ann).astype(bool)
    return out


@dataclass
class _GroupTally:
    """Pixel counts of one group, summed over images."""

    gt_images: int = 0
    pred_images: int = 0
    scored_images: int = 0  # GT or prediction non-empty: the images the mean IoU averages
    intersection: int = 0
    union: int = 0
    gt_pixels: int = 0
    pred_pixels: int = 0
    iou_sum: float = 0.0

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        inter, union = int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))
        gt_n, pred_n = int(np.count_nonzero(gt)), int(np.count_nonzero(pred))
        self.gt_images += gt_n > 0
        self.pred_images += pred_n > 0
        self.intersection += inter
        self.union += union
        self.gt_pixels += gt_n
        self.pred_pixels += pred_n
        if union:
            self.scored_images += 1
            self.iou_sum += inter / union

    def report(self) -> dict[str, Any]:
        return {
            "iou": _ratio(self.intersection, self.union),
            "mean_image_iou": _ratio(self.iou_sum, self.scored_images),
            "precision": _ratio(self.intersection, self.pred_pixels),
            "recall": _ratio(self.intersection, self.gt_pixels),
            "images_with_gt": self.gt_images,
            "images_with_prediction": self.pred_images,
            "images_scored": self.scored_images,
            "gt_pixels": self.gt_pixels,
            "pred_pixels": self.pred_pixels,
            "intersection": self.intersection,
            "union": self.union,
        }


class _MaskAudit:
    """Panoptic group bits vs COCO instance masks, row by row."""

    def __init__(self, root: Location, split: str, table: GroupTable) -> None:
        self.table = table
        self.groups = {GROUP_NAMES.index(name): name for name in AUDIT_GROUPS}
        self.tallies = {name: _GroupTally() for name in AUDIT_GROUPS}
        self.rows = 0
        self.skipped = {"no_panoptic": 0, "not_in_instances": 0, "size_mismatch": 0}
        self.coco, self.path, self.reason = _load_instances(root, split)

    def add(self, sample: Sample) -> None:
        if self.coco is None:
            return
        if sample.groups is None:
            self.skipped["no_panoptic"] += 1
            return
        if sample.image_id not in self.coco.imgs:
            self.skipped["not_in_instances"] += 1
            return
        info = self.coco.imgs[sample.image_id]
        if sample.groups.shape != (int(info["height"]), int(info["width"])):
            logger.warning("image %d: group mask is %s, instances_*.json says %sx%s; skipped",
                           sample.image_id, sample.groups.shape, info["height"], info["width"])
            self.skipped["size_mismatch"] += 1
            return
        bits = decode_group_mask(sample.groups)
        gts = instance_group_masks(self.coco, sample.image_id, self.table, self.groups)
        for index, name in self.groups.items():
            self.tallies[name].add(bits[index], gts[index])
        self.rows += 1

    def report(self) -> dict[str, Any]:
        if self.coco is None:
            return {"available": False, "instances": self.path, "reason": self.reason}
        return {
            "available": True,
            "instances": self.path,
            "rows": self.rows,
            "skipped": dict(self.skipped),
            "groups": {name: t.report() for name, t in self.tallies.items()},
        }


def _load_instances(root: Location, split: str) -> tuple[Any, str, str | None]:
    """(pycocotools COCO or None, the file's path or URI, why it is None). The JSON is read
    through `distill.storage` (so `data.root` may be a URI) and handed to COCO as a dict."""
    ann_dir = root / "annotations"
    try:
        loc = Location(resolve_inside(ann_dir, f"instances_{split}.json"))
        exists = loc.is_file()
    except (UnsafePathError, StorageError) as exc:
        return None, str(ann_dir), str(exc)
    if not exists:
        return None, str(loc), (f"{loc} does not exist: this dataset has no COCO instance "
                                "masks, so the panoptic teacher cannot be audited")
    from pycocotools.coco import COCO

    try:
        doc = json.loads(loc.read_bytes())
        if not isinstance(doc, dict):
            raise TypeError(f"the file holds a JSON {type(doc).__name__}, not an object")
        coco = COCO()
        coco.dataset = doc
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints its progress
            coco.createIndex()
    except (OSError, ValueError, KeyError, TypeError, AssertionError, StorageError) as exc:
        return None, str(loc), f"cannot read {loc}: {exc!r}"
    return coco, str(loc), None


# ---------------------------------------------------------------------------------------------
# Captions


def score_caption(tokens: Collection[str],
                  references: Sequence[Collection[str]]) -> dict[str, float | None]:
    """One caption's word set against reference captions' word sets.

    precision: share of its distinct words that some reference uses (None when it has none);
    recall_union: share of the references' pooled distinct words it uses; recall_each: that
    share per reference, averaged. References without words are left out; with none left,
    every metric is None."""
    words = set(tokens)
    refs = [set(r) for r in references if r]
    if not refs:  # nothing to compare with: every metric is undefined
        return dict.fromkeys(CAPTION_METRICS, None)
    pooled: set[str] = set().union(*refs)
    each = [len(words & r) / len(r) for r in refs]
    return {
        "precision": len(words & pooled) / len(words) if words else None,
        "recall_union": len(words & pooled) / len(pooled),
        "recall_each": sum(each) / len(each),
    }


def score_like_held_out(tokens: Collection[str],
                        references: Sequence[Collection[str]]) -> dict[str, float | None]:
    """`score_caption` against every subset of the references that leaves one out, averaged:
    the teacher judged with as many references as a held-out human has (4 of COCO's 5), so
    the two compare like for like."""
    refs = [r for r in references if r]
    if len(refs) < 2:
        return score_caption(tokens, refs)
    scores = [score_caption(tokens, [*refs[:i], *refs[i + 1:]]) for i in range(len(refs))]
    return {m: _mean([s[m] for s in scores]) for m in CAPTION_METRICS}


def score_held_out_humans(captions: Sequence[Collection[str]]) -> dict[str, float | None]:
    """The yardstick: each human caption with words scored by `score_caption` against the
    others, then averaged per metric over the held-out captions where the metric is defined."""
    scores = [score_caption(c, [*captions[:i], *captions[i + 1:]])
              for i, c in enumerate(captions) if c]
    return {m: _mean([s[m] for s in scores]) for m in CAPTION_METRICS}


@dataclass
class _Means:
    """Running per-metric means that skip undefined (None) values."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CAPTION_METRICS, 0.0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CAPTION_METRICS, 0))

    def add(self, scores: dict[str, float | None]) -> None:
        for metric, value in scores.items():
            if value is not None:
                self.sums[metric] += value
                self.counts[metric] += 1

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {m: _ratio(self.sums[m], self.counts[m]) for m in CAPTION_METRICS}
        out["counts"] = dict(self.counts)
        return out


class _TokenRule:
    """The run's caption-token rule (`pipelines.postprocess`): its stop words, then GloVe-known
    words only. Loaded on first use, so a run without captions never reads GloVe."""

    def __init__(self, labels: LabelsConfig) -> None:
        self.labels = labels
        self.stop_words: frozenset[str] | None = None
        self.known: frozenset[str] | None = None
        self.note: str | None = None

    def __call__(self, caption: str) -> list[str]:
        if self.stop_words is None:
            self._load()
        assert self.stop_words is not None
        return tokenize(caption, self.stop_words, self.known)

    def _load(self) -> None:
        self.stop_words = load_stop_words(self.labels.stop_words, self.labels.stop_words_file)
        try:
            self.known = load_glove_words(self.labels.glove)
        except ConfigError as exc:
            # The audit still means something without the filter; the report says it was off.
            self.note = f"GloVe filter off: {exc}"
            logger.warning("caption audit: %s", self.note)

    def report(self) -> dict[str, Any]:
        loaded = self.stop_words is not None  # False when no row had a teacher caption
        return {
            "stop_words": sorted(self.stop_words) if self.stop_words is not None else None,
            "glove": self.labels.glove,
            "glove_filter": (self.known is not None) if loaded else None,
            "note": self.note,
        }


class _CaptionAudit:
    """Teacher captions vs the human captions, row by row."""

    def __init__(self, labels: LabelsConfig) -> None:
        self.rule = _TokenRule(labels)
        self.teacher, self.humans, self.teacher_fair = _Means(), _Means(), _Means()
        self.counts = {"rows": 0, "rows_compared": 0, "no_teacher": 0, "no_human": 0,
                       "captions": 0, "empty": 0, "no_tokens": 0}

    def add(self, sample: Sample) -> None:
        c = self.counts
        if sample.teacher_captions is None:
            c["no_teacher"] += 1
            return
        c["rows"] += 1
        humans = [set(self.rule(h)) for h in sample.coco_captions]
        if not sample.coco_captions:
            c["no_human"] += 1
        else:
            c["rows_compared"] += 1
            self.humans.add(score_held_out_humans(humans))
        for caption in sample.teacher_captions:
            c["captions"] += 1
            c["empty"] += not caption.strip()
            tokens = self.rule(caption)
            c["no_tokens"] += not tokens
            if sample.coco_captions:
                self.teacher.add(score_caption(tokens, humans))
                self.teacher_fair.add(score_like_held_out(tokens, humans))

    def report(self) -> dict[str, Any]:
        c = self.counts
        return {
            "rows": c["rows"],
            "rows_compared": c["rows_compared"],
            "skipped": {"no_teacher": c["no_teacher"], "no_human": c["no_human"]},
            "teacher_captions": c["captions"],
            "empty": c["empty"],
            "empty_rate": _ratio(c["empty"], c["captions"]),
            "no_tokens": c["no_tokens"],
            "teacher": self.teacher.report(),
            "teacher_like_held_out": self.teacher_fair.report(),
            "human_held_out": self.humans.report(),
            "tokenizer": self.rule.report(),
        }


# ---------------------------------------------------------------------------------------------
# The run


def audit_run(out: str | os.PathLike[str] | Location, *, limit: int | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Audit the run folder `out` (a path or a URI: its resolved config and its shards, in
    run order, the first `limit` rows when given); write the run's audit report atomically and
    return the same dict. `progress` shows a bar on a terminal, else a line on stderr every
    10 s (`distill.progress`)."""
    started = time.monotonic()
    run = LabelRun(out)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    config = _run_config(run)
    if not run.shards.is_dir():
        raise ShardError(f"{run.shards} has no *.parquet shards; audit a folder written by "
                         "`distill run generate-labels`")
    paths = resolve_shards(run.shards)
    total = sum(open_shard(p).metadata.num_rows for p in paths)
    total = total if limit is None else min(total, limit)
    masks = _MaskAudit(Location(config.data.root), config.data.split,
                       GroupTable.load(config.labels.group_overrides))
    captions = _CaptionAudit(config.labels)
    rows = 0
    with Progress("audit", total, "rows", enabled=progress, transient=True) as bar:
        for sample in _iter_rows(paths, limit):
            masks.add(sample)
            captions.add(sample)
            rows += 1
            bar.advance()
    report = {
        "run": str(run.root),
        "split": config.data.split,
        "dataset_root": config.data.root,
        "shards": len(paths),
        "rows": rows,
        "limit": limit,
        **_provenance(paths),
        "masks": masks.report(),
        "captions": captions.report(),
        "elapsed_s": round(time.monotonic() - started, 3),
    }
    atomic_write_bytes(run.audit, json.dumps(report, indent=1).encode())
    logger.info("audited %d rows of %s in %.1f s", rows, run, report["elapsed_s"])
    return report


def _run_config(run: LabelRun) -> Config:
    """The run's resolved config (a local file or an object; `load_config` reads both)."""
    if not run.config.is_file():
        raise ConfigError(f"{run.config} does not exist; audit a run folder written by "
                          "`distill run generate-labels` (it keeps the run's resolved config)")
    return load_config(None, [run.config], [])


def _iter_rows(paths: list[Location], limit: int | None) -> Iterator[Sample]:
    """Samples with only the audited columns decoded, in shard order, at most `limit`."""
    seen = 0
    for path in paths:
        pf = open_shard(path)
        try:
            for batch in pf.iter_batches(batch_size=64, columns=_COLUMNS):
                for row in batch.to_pylist():
                    if limit is not None and seen >= limit:
                        return
                    seen += 1
                    yield decode_row(row)
        except (OSError, pa.ArrowException) as exc:
            raise ShardError(f"shard {path} cannot be read: {exc}") from exc


def _provenance(paths: list[Location]) -> dict[str, Any]:
    """Teacher provenance and label fingerprints from the shard footers (a role whose
    provenance differs between shards, e.g. a teacher re-run on some, lists each version)."""
    roles: dict[str, list[Any]] = {}
    fingerprints: list[str] = []
    for path in paths:
        meta = read_metadata(path)
        if meta.get("fingerprint") and meta["fingerprint"] not in fingerprints:
            fingerprints.append(meta["fingerprint"])
        for role, prov in (meta.get("provenance") or {}).items():
            seen = roles.setdefault(role, [])
            if prov not in seen:
                seen.append(prov)
    provenance = {r: v[0] if len(v) == 1 else v for r, v in sorted(roles.items())}
    return {"fingerprints": fingerprints, "provenance": provenance,
            "random_weights": random_weight_roles(provenance)}


# ---------------------------------------------------------------------------------------------
# Report


def format_audit(report: dict[str, Any]) -> str:
    """The audit as plain text for a terminal (the JSON has every count)."""
    lines = [f"audit of {report['run']} ({report['split']}): {report['rows']} rows, "
             f"{report['shards']} shards, {report['elapsed_s']:.1f} s"]
    warning = random_weights_warning(report.get("random_weights", []))
    if warning:  # scores of random teachers measure nothing but the plumbing
        lines.append(warning)
    masks = report["masks"]
    lines.append("")
    if not masks["available"]:
        lines.append(f"panoptic vs COCO instances: not available ({masks['reason']})")
    else:
        skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in masks["skipped"].items() if v)
        lines.append(f"panoptic vs COCO instances ({masks['instances']}): {masks['rows']} rows"
                     + (f"; skipped: {skipped}" if skipped else ""))
        lines.append(f"  {'group':<9} {'IoU':>6} {'mean IoU':>8} {'prec.':>6} {'recall':>6} "
                     f"{'GT imgs':>7} {'GT pixels':>11} {'pred pixels':>11}")
        for name, g in masks["groups"].items():
            lines.append(f"  {name:<9} {_f(g['iou']):>6} {_f(g['mean_image_iou']):>8} "
                         f"{_f(g['precision']):>6} {_f(g['recall']):>6} {g['images_with_gt']:>7} "
                         f"{g['gt_pixels']:>11} {g['pred_pixels']:>11}")
    cap = report["captions"]
    lines.append("")
    if not cap["rows"]:
        lines.append("captions: no row has teacher captions")
    else:
        lines.append(f"captions vs human captions: {cap['rows_compared']} rows compared, "
                     f"{cap['teacher_captions']} teacher captions, empty-caption rate "
                     f"{_f(cap['empty_rate'])}")
        lines.append(f"  {'':<22} {'precision':>9} {'recall (pooled)':>15} {'recall (each)':>13}")
        for label, key in (("teacher", "teacher"),
                           ("teacher, 4 refs", "teacher_like_held_out"),
                           ("human, held out", "human_held_out")):
            s = cap[key]
            lines.append(f"  {label:<22} {_f(s['precision']):>9} {_f(s['recall_union']):>15} "
                         f"{_f(s['recall_each']):>13}")
        if cap["tokenizer"]["note"]:
            lines.append(f"  note: {cap['tokenizer']['note']}")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
