"""Issue 32: the dry run's estimate times each teacher after a warm-up on the very batch it
times (a first call per batch shape allocates, autotunes and compiles on a GPU)."""

from __future__ import annotations

from typing import ClassVar

import pipelines.estimate as estimate_module
from pipelines.estimate import estimate
from pipelines.plan import RunOptions, plan_run
from tests.conftest import label_config


class _Stage:
    calls: ClassVar[list[int]] = []

    def __init__(self, role: str, config: object) -> None:
        self.role = role

    def __call__(self, items: list) -> list:
        _Stage.calls.append(len(items))
        return items


def test_the_warm_up_runs_the_batch_that_is_timed(synthetic_coco, tmp_path, monkeypatch):
    monkeypatch.setattr(estimate_module, "TeacherStage", _Stage)
    monkeypatch.setattr(estimate_module, "postprocess_items", lambda items, labels: None)
    cfg = label_config(synthetic_coco, *(f"teachers.{r}.enabled=false"
                                         for r in ("panoptic", "text", "caption", "pose")))
    plan = plan_run(cfg, RunOptions(out=tmp_path / "run", dry_run=True))
    est = estimate(plan, sample=3)
    assert est.sample == 3 and "depth" in est.seconds_per_image
    assert _Stage.calls == [3, 3]  # warm-up, then timed: the same batch
