"""The teacher contract: a backend loads once in `__init__` and labels a batch in `predict`.

A teacher knows nothing about Ray or Parquet. It takes a list of RGB uint8 images of any sizes
and returns one result per image at that image's ORIGINAL resolution, plus a `Provenance`
record describing exactly which weights produced them.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib.util
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from distill.config import TeacherConfig
from distill.errors import TeacherError
from distill.labels.groups import Segment
from distill.labels.text import TextRegion

__all__ = [
    "CaptionResult",
    "DepthResult",
    "PanopticResult",
    "PartsPerson",
    "PartsResult",
    "PosePerson",
    "PoseResult",
    "Provenance",
    "Teacher",
    "TeacherError",
    "TextResult",
    "check_images",
    "import_failure",
]

R = TypeVar("R")


def import_failure(exc: ImportError, package: str) -> str:
    """Why an optional framework did not import, in words a user can act on: `package` is not
    installed, or it is installed and its own import failed (on what). detectron2's model zoo
    imports `pkg_resources`, which setuptools 81 removed: that case says what to pin."""
    try:
        found = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a half-imported module without a spec
        found = True
    if not found:
        return f"{package} is not installed"
    why = f"{type(exc).__name__}: {exc}"
    if getattr(exc, "name", None) == "pkg_resources":
        why += (" (setuptools 81 and later no longer ship pkg_resources, which detectron2's "
                "model zoo imports: pip install 'setuptools<81')")
    return f"{package} is installed but failed to import: {why}"


@dataclass
class Provenance:
    """Which model produced a label: enough to reproduce or audit it."""

    role: str
    backend: str
    variant: str  # pretrained | tiny | random
    checkpoint: str  # hub id or local path ("" for tiny)
    revision: str
    weights_sha256: dict[str, str]  # weight file name → sha256 ({} for random init)
    dtype: str
    device: str
    input_size: Any  # backend-specific: an int, or a description of the resize rule
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # The hub commit the weights came from (None when not known or not a hub checkpoint) and how
    # it is known: "pinned" (revision is a commit), "hub cache" (the cached snapshot's folder
    # name), "unresolved", "local path" (a folder or file: no hash), "" (not a hub model).
    commit: str | None = None
    commit_source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DepthResult:
    """Relative inverse depth (larger = nearer), float32 (H, W)."""

    depth: np.ndarray


@dataclass
class PanopticResult:
    """uint8 (H, W) map of COCO-panoptic category ids (255 = void) and its segments."""

    class_map: np.ndarray
    segments: list[Segment]


@dataclass
class TextResult:
    """bool (H, W) text mask and the detected regions (polygons in original pixels)."""

    mask: np.ndarray
    regions: list[TextRegion]


@dataclass
class CaptionResult:
    """One caption string."""

    caption: str


@dataclass
class PosePerson:
    """One person of a pose teacher (issue 28's contract)."""

    box: np.ndarray  # float32 (4,) x0, y0, x1, y1 in original pixels
    keypoints: np.ndarray  # float32 (17, 3) COCO order: x, y in original pixels, score in [0, 1]
    score: float  # person score in [0, 1]
    box_source: str  # "gt" | "panoptic" | "detector" | "image"


@dataclass
class PoseResult:
    """The persons found in one image."""

    persons: list[PosePerson]


@dataclass
class PartsPerson:
    """One person of a parts teacher (issue 29's contract)."""

    box: np.ndarray  # float32 (4,) x0, y0, x1, y1 original pixels
    score: float  # the center locator's score in [0, 1]


@dataclass
class PartsResult:
    """Body parts of every person in one image, at the original resolution."""

    part_map: np.ndarray  # uint8 (H, W) part label ids of the label set (CIHP: 0 = background, 1..19)
    instance_map: np.ndarray  # uint8 (H, W) person instance: 0 = none, k = persons[k - 1]
    persons: list[PartsPerson]  # one per instance id, in id order


class Teacher(abc.ABC, Generic[R]):
    """Base of every backend. Subclasses set `name` (== their module name with '-' for '_',
    the registry key) and `role`, load their model in `__init__`, and implement `predict`."""

    name: ClassVar[str]
    role: ClassVar[str]
    # What `distill teachers list` says of the backend (`teachers.registry.backend_status`):
    requires: ClassVar[str | None] = None  # a package it needs beyond distill's, e.g. "adet"
    requires_import: ClassVar[str | None] = None  # what must import (installed is not enough)
    without_package: ClassVar[str | None] = None  # its status without `requires`, if it runs
    needs_cuda: ClassVar[bool] = False  # no CPU implementation

    def __init__(self, config: TeacherConfig) -> None:
        self.config = config

    @property
    @abc.abstractmethod
    def provenance(self) -> Provenance:
        """The provenance record of the loaded model."""

    @abc.abstractmethod
    def predict(self, images: list[np.ndarray]) -> list[R]:
        """Label a batch: RGB uint8 (H_i, W_i, 3) images of any sizes → one result per image,
        at (H_i, W_i)."""


def check_images(images: list[np.ndarray]) -> None:
    """Raise `TeacherError` unless every image is an RGB uint8 (H, W, 3) array."""
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 \
                or img.shape[2] != 3:
            desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise TeacherError(f"image {i} of the batch must be RGB uint8 (H, W, 3), got {desc}")
