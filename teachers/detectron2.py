"""Panoptic teacher "detectron2": Panoptic FPN R101 3x from detectron2's model zoo, the paper's
panoptic teacher (DESIGN.md §3). Used when the `detectron2` package is installed; distill never
depends on it (it has no wheels on PyPI), and `mask2former` is the installable alternative.

Detectron2's `panoptic_seg` output uses contiguous category ids (DESIGN.md §3; detectron2
`data/datasets/builtin_meta.py`, `_get_coco_panoptic_separated_meta`, and
`modeling/meta_arch/panoptic_fpn.py`, `combine_semantic_and_instance_outputs`):
- things: `thing_dataset_id_to_contiguous_id`, 0..79 = the 80 thing ids in id order;
- stuff: `stuff_dataset_id_to_contiguous_id`, 1..53 = the 53 stuff ids in id order; 0 is the
  semantic head's merged "things" class, which the combine step never emits as a segment;
- segment id 0 in the map = no segment (void).
`convert_panoptic_output` maps them back to COCO-panoptic ids by id and needs no detectron2.

Weights are read without running pickle code: the model zoo's `.pkl` files through an unpickler
that only admits numpy arrays, `.pth`/`.safetensors` through `runtime.load_state_dict`.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from distill.config import TeacherConfig
from distill.labels.groups import VOID, GroupTable, Segment
from teachers import runtime
from teachers.base import (
    PanopticResult,
    Provenance,
    Teacher,
    TeacherError,
    check_images,
    import_failure,
)
from teachers.registry import register

__all__ = [
    "INSTALL_HINT",
    "ZOO_CONFIG",
    "Detectron2Teacher",
    "convert_panoptic_output",
    "load_pickled_weights",
]

logger = logging.getLogger(__name__)

ZOO_CONFIG = "COCO-PanopticSegmentation/panoptic_fpn_R_101_3x.yaml"
INSTALL_HINT = (
    "Install it after torch, building from source (a C++ compiler; see its INSTALL.md): "
    "`pip install 'setuptools<81' fvcore iopath omegaconf` then `pip install "
    "--no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'`; or use the "
    "installable backend "
    "'mask2former': --set teachers.panoptic.backend=mask2former "
    "--set teachers.panoptic.checkpoint=facebook/mask2former-swin-large-coco-panoptic"
)
STUFF_SCORE = 1.0  # Panoptic FPN's semantic head gives stuff segments no score
TINY_INPUT_SIZE = 64
_REMOTE_PREFIXES = ("http://", "https://", "detectron2://")
# What a weights pickle may reference: containers and numpy arrays, nothing that runs code.
_PICKLE_ALLOWED = frozenset({
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
})


def convert_panoptic_output(
    seg_map: np.ndarray,
    segments_info: Sequence[dict[str, Any]],
    thing_ids: Sequence[int],
    stuff_ids: Sequence[int],
) -> PanopticResult:
    """Detectron2's `panoptic_seg` (int (H, W) segment ids, 0 = void; segments_info dicts with
    "id", "isthing", "category_id" and "score" for things) → class map of COCO-panoptic ids
    (255 = void) and segments whose areas are pixel counts in `seg_map`. Thing category i is
    `thing_ids[i]`, stuff category i (1-based) is `stuff_ids[i - 1]`."""
    seg_map = np.asarray(seg_map)
    if seg_map.ndim != 2 or (seg_map.size and int(seg_map.min()) < 0):
        raise TeacherError(f"panoptic_seg must be an (H, W) map of segment ids >= 0, "
                           f"got shape {seg_map.shape}")
    top = max([int(seg_map.max()) if seg_map.size else 0,
               *(int(s["id"]) for s in segments_info)])
    lut = np.full(top + 1, VOID, np.uint8)
    found: list[tuple[int, int, bool, float]] = []  # segment id, category id, isthing, score
    for info in segments_info:
        contiguous, isthing = int(info["category_id"]), bool(info["isthing"])
        if isthing and 0 <= contiguous < len(thing_ids):
            category, score = thing_ids[contiguous], float(info.get("score", STUFF_SCORE))
        elif not isthing and 1 <= contiguous <= len(stuff_ids):
            category, score = stuff_ids[contiguous - 1], STUFF_SCORE
        else:
            kind, valid = ("thing", "0..79") if isthing else ("stuff", "1..53")
            raise TeacherError(
                f"detectron2 returned {kind} category {contiguous}, outside COCO panoptic's "
                f"contiguous {kind} ids {valid}; is the model trained on COCO panoptic?"
            )
        lut[int(info["id"])] = category
        found.append((int(info["id"]), category, isthing, score))
    areas = np.bincount(seg_map.ravel(), minlength=len(lut))
    segments = [Segment(cat, score, isthing, int(areas[sid]))
                for sid, cat, isthing, score in found if sid > 0 and areas[sid] > 0]
    return PanopticResult(class_map=lut[seg_map], segments=segments)


class _WeightsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(
                f"{module}.{name} is not allowed in a weights file (only numpy arrays are)"
            )
        return super().find_class(module, name)


def load_pickled_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A detectron2 model-zoo `.pkl` ({"model": {name: ndarray}, "__author__": ...}, or a bare
    {name: ndarray}) as tensors, without running any code the pickle names."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = _WeightsUnpickler(fh, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise TeacherError(f"cannot read {path} as a weights-only pickle: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict) or not all(
        isinstance(v, np.ndarray | np.generic) for v in data.values()
    ):
        raise TeacherError(f"{path} is not a detectron2 weights file of named arrays")
    return {str(k): torch.from_numpy(np.array(v)) for k, v in data.items()}


def _import_detectron2() -> SimpleNamespace:
    """The detectron2 pieces the backend uses, or a `TeacherError` saying how to get them."""
    try:
        import detectron2
        import detectron2.data.transforms as transforms
        from detectron2 import model_zoo
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model
        from detectron2.utils.file_io import PathManager
    except ImportError as exc:
        raise TeacherError(
            f"teachers.panoptic.backend = 'detectron2' needs the detectron2 package: "
            f"{import_failure(exc, 'detectron2')}. {INSTALL_HINT}"
        ) from exc
    return SimpleNamespace(
        version=getattr(detectron2, "__version__", "unknown"), transforms=transforms,
        model_zoo=model_zoo, get_cfg=get_cfg, build_model=build_model, path_manager=PathManager,
    )


def _shrink_to_tiny(cfg: Any) -> None:
    """Panoptic FPN on a ResNet-18 with narrow heads: same code path, CPU-sized."""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64  # detectron2 requires 64 for R18/R34
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50


def _build_cfg(d2: SimpleNamespace, config: TeacherConfig, device: torch.device) -> Any:
    zoo_config = config.checkpoint if config.checkpoint.endswith(".yaml") else ZOO_CONFIG
    cfg = d2.get_cfg()
    try:
        cfg.merge_from_file(d2.model_zoo.get_config_file(zoo_config))
    except RuntimeError as exc:
        raise TeacherError(f"{zoo_config!r} is not a detectron2 model-zoo config: {exc}; "
                           f"the paper's teacher is {ZOO_CONFIG!r}") from exc
    if config.variant == "tiny":
        _shrink_to_tiny(cfg)
    shortest = config.input_size or (TINY_INPUT_SIZE if config.variant == "tiny" else 0)
    if shortest > 0:
        cfg.INPUT.MIN_SIZE_TEST = shortest
        cfg.INPUT.MAX_SIZE_TEST = runtime.max_size_for(shortest)
    cfg.MODEL.WEIGHTS = ""  # loaded by `_load_weights`, never by detectron2's pickle loader
    cfg.MODEL.DEVICE = str(device)
    cfg.freeze()
    return cfg


def _weights_path(d2: SimpleNamespace, config: TeacherConfig) -> Path:
    """The local weights file: the model zoo's for a zoo config name (downloaded once into
    detectron2's cache), a URL's, or a local .pkl/.pth/.safetensors path."""
    checkpoint = config.checkpoint
    if checkpoint.endswith(".yaml") or checkpoint.startswith(_REMOTE_PREFIXES):
        try:
            url = (d2.model_zoo.get_checkpoint_url(checkpoint)
                   if checkpoint.endswith(".yaml") else checkpoint)
            return Path(d2.path_manager.get_local_path(url))
        except Exception as exc:  # no zoo weights for this config, or no network
            raise TeacherError(f"cannot fetch detectron2 weights for {checkpoint!r}: {exc}; "
                               "give a local .pkl/.pth path instead") from exc
    path = Path(checkpoint)
    if not path.is_file():
        raise TeacherError(f"detectron2 checkpoint {checkpoint!r} is neither a model-zoo config "
                           "name, a URL, nor an existing weights file")
    return path


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load `path` into `model`, ignoring what detectron2's own checkpointer ignores."""
    state = load_pickled_weights(path) if path.suffix == ".pkl" else runtime.load_state_dict(path)
    try:
        incompatible = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: another architecture
        raise TeacherError(f"{path} does not fit Panoptic FPN: {exc}") from exc
    missing = [k for k in incompatible.missing_keys if k not in ("pixel_mean", "pixel_std")]
    if missing:
        raise TeacherError(f"{path} lacks {len(missing)} of the model's weights, e.g. {missing[:3]}")
    unexpected = [k for k in incompatible.unexpected_keys if "cell_anchors" not in k]
    if unexpected:
        logger.warning("%s: %d unused weights, e.g. %s", path, len(unexpected), unexpected[:3])


@register
class Detectron2Teacher(Teacher[PanopticResult]):
    """Detectron2 Panoptic FPN → COCO-panoptic class map + segments per image."""

    name = "detectron2"
    role = "panoptic"
    requires = "detectron2"
    requires_import = "detectron2.model_zoo"  # its model zoo needs pkg_resources

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config)
        d2 = _import_detectron2()  # first: a missing package is the likeliest failure
        self.device = runtime.resolve_device(config)
        self.dtype = runtime.resolve_dtype(config, self.device, half_ok=False)
        self.cfg = _build_cfg(d2, config, self.device)
        with runtime.seeded():
            self.model = d2.build_model(self.cfg)
        files: list[Path] = []
        if config.variant == "pretrained":
            files = [_weights_path(d2, config)]
            _load_weights(self.model, files[0])
        self.model.eval()
        self.resize = d2.transforms.ResizeShortestEdge(
            [self.cfg.INPUT.MIN_SIZE_TEST] * 2, self.cfg.INPUT.MAX_SIZE_TEST
        )
        table = GroupTable.load()
        self.thing_ids, self.stuff_ids = table.thing_ids(), table.stuff_ids()
        combine = self.cfg.MODEL.PANOPTIC_FPN.COMBINE
        self._provenance = runtime.make_provenance(
            self.role, self.name, config, self.device, self.dtype,
            input_size={"shortest_edge": self.cfg.INPUT.MIN_SIZE_TEST,
                        "longest_edge": self.cfg.INPUT.MAX_SIZE_TEST},
            files=files,
            extra={
                "detectron2": d2.version,
                "zoo_config": config.checkpoint if config.checkpoint.endswith(".yaml")
                else ZOO_CONFIG,
                "combine": {"overlap_thresh": combine.OVERLAP_THRESH,
                            "stuff_area_limit": combine.STUFF_AREA_LIMIT,
                            "instances_confidence_thresh": combine.INSTANCES_CONFIDENCE_THRESH},
            },
        )

    @property
    def provenance(self) -> Provenance:
        return self._provenance

    def _model_input(self, image: np.ndarray) -> dict[str, Any]:
        """RGB uint8 → detectron2's input dict: resized CHW float32 in cfg.INPUT.FORMAT, plus the
        original size the outputs come back at (what `DefaultPredictor` does)."""
        if self.cfg.INPUT.FORMAT == "BGR":
            image = np.ascontiguousarray(image[:, :, ::-1])
        resized = self.resize.get_transform(image).apply_image(image)
        chw = np.ascontiguousarray(resized.transpose(2, 0, 1))
        return {"image": torch.as_tensor(chw, dtype=torch.float32),
                "height": image.shape[0], "width": image.shape[1]}

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        if self.dtype == torch.float32:
            yield
        else:  # weights stay float32; half precision only where autocast allows it
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield

    def predict(self, images: list[np.ndarray]) -> list[PanopticResult]:
        """RGB uint8 (H_i, W_i, 3) images → one `PanopticResult` per image at (H_i, W_i)."""
        check_images(images)
        return runtime.predict_in_chunks(images, self.config.batch_size, self._predict_batch)

    def _predict_batch(self, images: list[np.ndarray]) -> list[PanopticResult]:
        """Detectron2 pads a batch to its largest image; running each group of images that pad
        to the same size on its own keeps every label independent of its batch (a resumed run
        batches differently)."""
        inputs = [self._model_input(img) for img in images]
        multiple = int(getattr(self.model.backbone, "size_divisibility", 0)) or 1
        padded = [runtime.padded_size(int(item["image"].shape[-2]), int(item["image"].shape[-1]),
                                      multiple) for item in inputs]
        results: dict[int, PanopticResult] = {}
        for index in runtime.batches_by_size(padded, len(inputs)):
            with torch.inference_mode(), self._precision():
                outputs = self.model([inputs[i] for i in index])
            for i, out in zip(index, outputs, strict=True):
                seg_map, segments_info = out["panoptic_seg"]
                results[i] = convert_panoptic_output(
                    seg_map.cpu().numpy(), segments_info, self.thing_ids, self.stuff_ids
                )
        return [results[i] for i in range(len(images))]
