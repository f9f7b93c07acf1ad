"""Teacher audit (`distill run audit OUT`): a finished generate-labels run measured against COCO's
own ground truth, where COCO has it.

Three checks, one pass over the shards:

* the panoptic teacher's group bits (Persons, Vehicles, Animals) against the union of COCO's
  instance masks of those groups (`annotations/instances_<split>.json`, polygons and RLE, crowd
  regions included; category → group by the run's `GroupTable`);
* the caption teacher's words against the five human captions, with a human caption held out
  against the others as the yardstick;
* the pose teacher's people against COCO's keypoints, as OKS AP (`distill.audit_pose`);
* HCQ's person table: the panoptic teacher's person instances as box and mask AP, the pose
  teacher's as OKS AP, with and without persons under 32² (`distill.audit_persons`).

The mask check lives in `distill.audit_masks`; this module scores captions, runs the pass and
writes the report.

A run folder needs only its resolved config (for `data.root`, `data.split` and the `labels.*`
token rule) and its shards (the committed ones of a run with a manifest, else every `*.parquet`
of its shards folder; `distill.runfolder` owns both the names and the rule); the quarantine and
vocabulary are not read. The run folder and `data.root` may be local paths or URIs
(`s3://…`); a relative `data.root` is resolved from the working directory, as the labelling run
did.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from distill.audit_masks import _MaskAudit, _ratio
from distill.audit_parts import PartsAudit
from distill.audit_persons import PersonAudit, format_persons, persons_report
from distill.audit_pose import PoseAudit
from distill.config import Config, LabelsConfig, load_config
from distill.errors import ConfigError, ShardError
from distill.labels.glove import load_glove_words
from distill.labels.groups import GroupTable
from distill.labels.tokens import load_stop_words, tokenize
from distill.layers.registry import get_layer
from distill.progress import Progress
from distill.provenance import random_weight_roles, random_weights_warning
from distill.runfolder import LabelRun, resolve_shards
from distill.shards import Sample, decode_row, open_shard, read_metadata
from distill.storage import Location, atomic_write_bytes

__all__ = [
    "audit_run",
    "format_audit",
    "score_caption",
    "score_held_out_humans",
    "score_like_held_out",
]

logger = logging.getLogger(__name__)

CAPTION_METRICS = ("precision", "recall_union", "recall_each")
# The label layers whose columns the audit reads (the mask check's, the caption check's and the
# pose check's); the rest of a row (image bytes, depth, ...) is never decoded.
_LAYERS = ("groups", "panoptic", "tokens", "persons", "pose", "parts")


def _columns() -> list[str]:
    """The image's id and size, and every column of the audited layers (from the registry)."""
    return ["image_id", "width", "height",
            *(c.name for name in _LAYERS for c in get_layer(name).columns)]


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
              progress: bool = True,
              parts_gt: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Audit the run folder `out` (a path or a URI: its resolved config and its shards, in
    run order, the first `limit` rows when given); write the run's audit report atomically and
    return the same dict. `progress` shows a bar on a terminal, else a line on stderr every
    10 s (`distill.progress`). `parts_gt`: CIHP/MHP-style ground truth the parts teacher is
    scored against (`distill.audit_parts`)."""
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
    pose = PoseAudit()
    people = PersonAudit(masks.coco, masks.reason)
    parts = PartsAudit(parts_gt) if parts_gt is not None else None
    rows = 0
    with Progress("audit", total, "rows", enabled=progress, transient=True) as bar:
        for sample in _iter_rows(paths, limit):
            masks.add(sample)
            captions.add(sample)
            pose.add(sample)
            people.add(sample)
            if parts is not None:
                parts.add(sample)
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
        "pose": pose.report(),
        "persons": persons_report(people, pose),
        **({"parts": parts.report()} if parts is not None else {}),
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
        names = pf.schema_arrow.names  # a shard of a run without the pose teacher lacks its column
        try:
            for batch in pf.iter_batches(batch_size=64,
                                         columns=[c for c in _columns() if c in names]):
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
    pose = report.get("pose")
    if pose is not None:
        lines.append("")
        if not pose["available"]:
            lines.append(f"pose vs COCO keypoints: not available ({pose['reason']})")
        else:
            sources = ", ".join(f"{n} {s}" for s, n in sorted(pose["box_sources"].items()))
            lines.append(f"pose vs COCO keypoints (OKS): {pose['rows']} rows, "
                         f"{int(pose['gt_persons'] or 0)} people, "
                         f"{int(pose['detections'] or 0)} teacher people"
                         + (f" (boxes: {sources})" if sources else ""))
            lines.append(f"  AP {_f(pose['AP'])} · AP50 {_f(pose['AP50'])} · "
                         f"AP75 {_f(pose['AP75'])}")
    if report.get("persons") is not None:
        lines += ["", *format_persons(report["persons"])]
    parts = report.get("parts")
    if parts is not None:
        lines.append("")
        lines.append(f"parts vs {parts['ground_truth']}: {parts['images']} images"
                     + (f", AP^p_50 {_f(parts['AP^p_50'])} · AP^p_vol {_f(parts['AP^p_vol'])} · "
                        f"PCP_50 {_f(parts['PCP_50'])}" if parts["available"]
                        else ": not available (no row with the parts teacher has ground truth)"))
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
