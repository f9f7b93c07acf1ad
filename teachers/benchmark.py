"""A teacher's throughput on one batch: the entry `make bench` calls for every teacher."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from teachers.base import Teacher

__all__ = ["images_per_second"]


def images_per_second(
    teacher: Teacher[Any], images: list[np.ndarray], repeat: int = 3,
    boxes: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Median images/s of `teacher.predict(images)` over `repeat` timed calls after a warm-up
    call (which also triggers lazy CUDA initialisation and autotuning). A pose teacher may be
    given `boxes` (float32 (N, 4) xyxy per image): then persons/s is reported too."""
    kwargs = {} if boxes is None else {"boxes": boxes}
    teacher.predict(images, **kwargs)
    sync = _cuda_sync()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        teacher.predict(images, **kwargs)
        sync()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    persons = {} if boxes is None else {"persons_per_second": sum(len(b) for b in boxes) / median}
    return persons | {
        "backend": teacher.name,
        "variant": teacher.config.variant,
        "device": teacher.provenance.device,
        "dtype": teacher.provenance.dtype,
        "batch": len(images),
        "sizes": sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images}),
        "seconds_per_batch": median,
        "images_per_second": len(images) / median if median > 0 else float("inf"),
        "repeat": repeat,
    }


def _cuda_sync() -> Any:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.synchronize
    except ImportError:
        pass
    return lambda: None
