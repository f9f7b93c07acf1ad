"""`distill run evaluate`: the student against its teachers' labels — the paper's Table 2 (HDM at
T = 0.1, 0.3, 0.5, 0.8 and MSE per modality, cosine similarity per token position), plus COCO
keypoint AP of the people decoded from its joints and PAFs against the shards' COCO ground truth,
and HCQ's person-centric scores (`distill.student.persons_eval`: OKS AP with and without persons
under 32², Persons IoU against COCO's person masks, AP against input resolution).

Targets are built exactly as training builds them (no augmentation), with the heatmap sizes of
the epoch the checkpoint ended, and scored with the same `distill.student.metrics.measure`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from distill.config import Config
from distill.errors import DistillError
from distill.labels.tokens import Vocabulary
from distill.runfolder import StudentRun, resolve_shards
from distill.shards import Sample, decode_row, read_shard, shard_identity
from distill.storage import Location
from distill.student import layout
from distill.student.data import ShardSpec, ShardStream
from distill.student.metrics import (
    HDM_THRESHOLDS,
    Meter,
    measure,
    part_group_report,
    to_unit,
)
from distill.student.persons_eval import RESOLUTIONS, PersonEval, PersonMasks, format_persons
from distill.student.pose_ap import keypoint_ap

__all__ = ["PAPER_TABLE2", "evaluate", "format_evaluation", "score_sample", "trained_on"]

logger = logging.getLogger(__name__)

# Paper Table 2 (student vs teachers, HDM@0.1) and the token cosines of §4 (DESIGN.md §7).
PAPER_TABLE2: dict[str, Any] = {
    "hdm@0.1": {"joints": 0.95, "pafs": 0.96, "depth": 0.27, "normals": 0.53, "text": 0.94,
                "segmentation": 0.91},
    "token_cosine": [0.59, 0.62, 0.64, 0.64, 0.53, 0.27, 0.08, 0.01],
}

Model = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def trained_on(run: StudentRun, paths: list[Location]) -> list[str]:
    """Which of `paths` the student run trained on (its `run.json`): the same path, or a copy
    (same file name and label fingerprint)."""
    known = run.training_shards()
    same_path = {s.get("path") for s in known}
    same_data = {(s.get("name"), s.get("fingerprint")) for s in known if s.get("fingerprint")}
    out = []
    for path in paths:
        if str(path) in same_path:
            out.append(path.name)
            continue
        ident = shard_identity(path)
        if (ident["name"], ident["fingerprint"]) in same_data:
            out.append(path.name)
    return out


def _ground_truth(paths: list[Location]) -> dict[int, Sample]:
    """Each row's size and COCO people (only those columns are read), by image id."""
    columns = ["image_id", "width", "height", "persons"]
    return {int(s.image_id): s for path in paths
            for s in map(decode_row, read_shard(path, columns=columns).to_pylist())}


def _batches(loader: DataLoader[Any], limit: int | None) -> Iterator[dict[str, torch.Tensor]]:
    seen = 0
    for batch in loader:
        if limit is not None and seen >= limit:
            return
        if limit is not None and seen + len(batch["image_id"]) > limit:
            keep = limit - seen
            batch = {k: v[:keep] for k, v in batch.items()}
        seen += len(batch["image_id"])
        yield batch


@torch.no_grad()
def evaluate(
    model: Model,
    config: Config,
    shards: ShardSpec,
    *,
    vocab: Vocabulary | None,
    epoch: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    workers: int = 0,
    limit: int | None = None,
    pose: bool = True,
    person_masks: PersonMasks | None = None,
    resolutions: Sequence[int] = RESOLUTIONS,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score `model` on every row of `shards` (or the first `limit`). Returns the report dict.

    `shards` is anything `distill.runfolder.resolve_shards` takes: a label run folder, its
    shards folder, a glob, shard files; local paths or URIs.

    `model` maps (B, 3, S, S) images in [-1, 1] to {"maps": (B, 44, S, S) in [-1, 1],
    "tokens": (B, T, D)} — a `YMapNet` or anything shaped like one. `epoch` picks the heatmap
    sizes of the targets (those the checkpoint was trained on at that epoch). With `pose`, the
    person-centric scores too: `person_masks` (COCO's instances) for the Persons IoU,
    `resolutions` for AP against input resolution.
    """
    device = torch.device(device)
    student = config.student
    token_dim = vocab.dim if vocab is not None else student.token_dim
    paths = resolve_shards(shards)
    stream = ShardStream(paths, student.input_size, vocab, config.train, train=False,
                         max_tokens=student.num_tokens, token_dim=token_dim)
    stream.set_epoch(epoch)
    truth = _ground_truth(paths) if pose else {}
    loader: DataLoader[Any] = DataLoader(stream, batch_size=batch_size, num_workers=workers)
    meter = Meter()
    results: list[dict[str, Any]] = []
    people = PersonEval(config, person_masks, resolutions)
    rows = 0
    seen: list[int] = []
    started = time.monotonic()
    model_seconds = 0.0
    for batch in _batches(loader, limit):
        image = to_unit(batch["image"].to(device))
        t0 = time.perf_counter()
        outputs = model(image)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        model_seconds += time.perf_counter() - t0
        outputs = {k: v.float() for k, v in outputs.items()}
        measure(meter, outputs, batch["target"].to(device), batch["tokens"].to(device),
                batch["present"].to(device))
        if pose:
            ids = batch["image_id"].tolist()
            seen.extend(ids)
            results.extend(people.add(model, image, outputs["maps"], ids, truth))
        rows += len(batch["image_id"])
        if progress is not None:
            progress(len(batch["image_id"]))
    if rows == 0:
        raise DistillError(f"{shards}: no rows to evaluate")
    metrics = meter.means()
    report: dict[str, Any] = {
        "rows": rows,
        "epoch": epoch,
        "heatmaps": dict(zip(("joint_size", "paf_width"), _schedule(config, epoch), strict=True)),
        "table2": {
            name: {**{f"hdm@{t}": metrics.get(f"hdm@{t}/{name}") for t in HDM_THRESHOLDS},
                   "mse": metrics.get(f"mse/{name}")}
            for name in layout.modalities()
        },
        "mse_scale": "maps in [-1, 1], as the training loss sees them (4x the [0, 1] MSE)",
        "token_cosine_over": "token positions that have a word in the target",
        "token_cosine": [metrics.get(f"token_cosine/{i + 1}") for i in range(student.num_tokens)],
        "paper": PAPER_TABLE2,
        "seconds": round(time.monotonic() - started, 3),
        "model_images_per_second": round(rows / model_seconds, 2) if model_seconds else None,
    }
    if pose:
        report["pose"] = keypoint_ap([truth[i] for i in seen], results)
        report["persons"] = people.report([truth[i] for i in seen])
    groups = part_group_report(metrics)  # a student with the opt-in part channels
    if groups is not None:
        report["parts"] = groups
    return report


@torch.no_grad()
def score_sample(model: Model, config: Config, sample: Sample, *, vocab: Vocabulary | None,
                 epoch: int = 0, device: str | torch.device = "cpu") -> dict[str, Any]:
    """One shard row's scores, as `evaluate` scores a whole run: HDM@0.1 and MSE per modality
    (None where the row has no label) and the token cosine per position with a word."""
    from distill.student.targets import build_example

    student = config.student
    token_dim = vocab.dim if vocab is not None else student.token_dim
    example = build_example(sample, student.input_size, vocab, student.num_tokens,
                            _schedule(config, epoch), None, None, token_dim=token_dim)
    device = torch.device(device)
    outputs = model(to_unit(torch.from_numpy(example.image)[None].to(device)))
    meter = Meter()
    measure(meter, {k: v.float() for k, v in outputs.items()},
            torch.from_numpy(example.target)[None].to(device),
            torch.from_numpy(example.tokens)[None].to(device),
            torch.from_numpy(example.present_vector())[None].to(device))
    metrics = meter.means()
    cosines = [metrics.get(f"token_cosine/{i + 1}") for i in range(student.num_tokens)]
    have = [c for c in cosines if c is not None]
    return {
        "hdm@0.1": {name: metrics.get(f"hdm@0.1/{name}") for name in layout.modalities()},
        "mse": {name: metrics.get(f"mse/{name}") for name in layout.modalities()},
        "token_cosine": cosines,
        "token_cosine_mean": sum(have) / len(have) if have else None,
    }


def _schedule(config: Config, epoch: int) -> tuple[float, float]:
    from distill.student.targets import heatmap_schedule

    return heatmap_schedule(epoch, config.train.heatmaps)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_evaluation(report: dict[str, Any]) -> list[Any]:
    """Rich renderables: Table 2 (with the paper's HDM@0.1 beside), token cosines, pose AP."""
    from rich.table import Table

    table = Table(title=f"student vs teachers on {report['rows']} images (paper Table 2)",
                  title_justify="left")
    table.add_column("modality")
    for t in HDM_THRESHOLDS:
        table.add_column(f"HDM@{t}", justify="right")
    table.add_column("MSE", justify="right")
    table.add_column("paper HDM@0.1", justify="right")
    for name, row in report["table2"].items():
        table.add_row(name, *[_fmt(row[f"hdm@{t}"]) for t in HDM_THRESHOLDS],
                      _fmt(row["mse"], 4), _fmt(report["paper"]["hdm@0.1"].get(name), 2))
    tokens = Table(title="token cosine similarity per position", title_justify="left")
    tokens.add_column("")
    cos = report["token_cosine"]
    for i in range(len(cos)):
        tokens.add_column(str(i + 1), justify="right")
    tokens.add_row("student", *[_fmt(c, 2) for c in cos])
    paper = report["paper"]["token_cosine"]
    tokens.add_row("paper", *[_fmt(paper[i], 2) if i < len(paper) else "-"
                              for i in range(len(cos))])
    out: list[Any] = [table, tokens]
    if "pose" in report:
        p = report["pose"]
        pose = Table(title="people from joints + PAFs vs COCO ground truth (OKS)",
                     title_justify="left")
        for col in ("AP", "AP50", "AP75", "AR", "ground-truth people", "detections"):
            pose.add_column(col, justify="right")
        pose.add_row(_fmt(p.get("AP")), _fmt(p.get("AP50")), _fmt(p.get("AP75")),
                     _fmt(p.get("AR")), str(int(p.get("gt_persons", 0))),
                     str(int(p.get("detections", 0))))
        out.append(pose)
    if "persons" in report:
        out.append("\n".join(format_persons(report["persons"])))
    return out
