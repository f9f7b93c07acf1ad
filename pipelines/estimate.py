"""`generate-labels --dry-run`: the plan, and what it will cost, from a short timed sample.

The sample runs the real stages in this process (no Ray): decode, every teacher the run needs
(loaded once, warmed up on the sample, then timed on it again), post-processing and PNG encoding. Per-image
times and encoded row sizes are then scaled to the images the run will process.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Any

from distill.errors import DistillError
from pipelines.cluster import ClusterInfo
from pipelines.plan import RunPlan
from pipelines.sizing import choose_layout, fused_workers
from pipelines.stages import Item, TeacherStage, decode_items, postprocess_items

__all__ = ["Estimate", "estimate"]


@dataclass
class Estimate:
    sample: int  # images timed
    images: int  # images the run will process
    seconds_per_image: dict[str, float] = field(default_factory=dict)  # stage → s/image
    load_seconds: dict[str, float] = field(default_factory=dict)  # teacher → model load time
    concurrency: dict[str, int] = field(default_factory=dict)  # stage → actors running it
    layout: str = "pools"  # fused: every stage runs in each of the `concurrency` workers
    errors: dict[str, str] = field(default_factory=dict)  # stage → why it could not be timed
    bytes_per_image: dict[str, float] = field(default_factory=dict)  # column → bytes

    def stage_seconds(self, stage: str) -> float | None:
        """Projected wall time of a stage over the whole run (its pool working in parallel;
        fused, the stages follow one another in every worker, so these add up)."""
        per = self.seconds_per_image.get(stage)
        if per is None:
            return None
        return per * self.images / max(1, self.concurrency.get(stage, 1))

    @property
    def total_bytes(self) -> float:
        return sum(self.bytes_per_image.values()) * self.images


def _sample_items(plan: RunPlan, n: int) -> list[Item]:
    picked: list[Item] = []
    for job in plan.jobs:
        for item in job.items:
            if item.problem is None:
                picked.append(copy.deepcopy(item))
            if len(picked) >= n:
                return picked
    return picked


def _local_cluster(plan: RunPlan) -> ClusterInfo:
    """The cluster a run without --address would start (a dry run starts no Ray)."""
    return ClusterInfo("local", float(plan.config.ray.num_cpus or os.cpu_count() or 1), 0.0, 1)


def estimate(plan: RunPlan, sample: int = 2) -> Estimate:
    """Time the run's stages on `sample` of its images and project them over the run (the
    fused layout's workers counted for a local run on this machine)."""
    est = Estimate(sample=0, images=plan.images_to_process)
    if not plan.jobs:  # a complete run: no stage runs, nothing to time or size
        return est
    roles = plan.stage_names()[1:-1]
    if choose_layout(plan.config, roles) == "fused":
        est.layout = "fused"
        workers = fused_workers(plan.config, roles, _local_cluster(plan)).slots
        est.concurrency = dict.fromkeys(plan.stage_names(), workers)
    items = _sample_items(plan, sample)
    if not items:
        return est
    config = plan.config
    start = time.perf_counter()
    items = decode_items(items, config.data)
    live = [it for it in items if it.ok]
    est.sample = len(live)
    if not live:
        est.errors["decode"] = "; ".join(f"{it.image_id}: {it.failure.message}"
                                         for it in items if it.failure)
        return est
    est.seconds_per_image["decode"] = (time.perf_counter() - start) / len(items)
    teachers = config.teachers.roles()
    for role in roles:
        if est.layout == "pools":
            est.concurrency[role] = teachers[role].concurrency
        try:
            t0 = time.perf_counter()
            stage = TeacherStage(role, teachers[role])
            est.load_seconds[role] = time.perf_counter() - t0
            # warm-up on the batch that is timed next: first calls (and a GPU's first call
            # per batch shape) allocate, autotune and compile; the dry run reports time after
            stage([copy.copy(it) for it in live])
            t0 = time.perf_counter()
            stage(live)
            est.seconds_per_image[role] = (time.perf_counter() - t0) / len(live)
        except DistillError as exc:
            est.errors[role] = str(exc)
        except Exception as exc:
            est.errors[role] = f"{type(exc).__name__}: {exc}"
    live = [it for it in live if it.ok]
    if not live:
        return est
    t0 = time.perf_counter()
    postprocess_items(live, config.labels)
    est.seconds_per_image["postprocess"] = (time.perf_counter() - t0) / len(live)
    rows = [it.encoded for it in live if it.encoded is not None]
    for row in rows:
        for key, value in row.items():
            est.bytes_per_image[key] = est.bytes_per_image.get(key, 0.0) + _size(value) / len(rows)
    return est


def _size(value: Any) -> int:
    """Rough stored size of one encoded value (bytes columns dominate)."""
    if isinstance(value, bytes | str):
        return len(value)
    if isinstance(value, list | tuple):
        return sum(_size(v) for v in value)
    if isinstance(value, dict):
        return sum(_size(v) for v in value.values())
    return 8 if value is not None else 0
