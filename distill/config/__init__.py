"""Typed run configuration: dataclasses, named presets, TOML files, `--set` overrides, fingerprint.

The dataclass defaults ARE the paper's settings (Y-MAP-Net §3.5, §3.6; DESIGN.md §3, §6); a preset
is a TOML file of overrides on top of them (`distill/presets/<name>.toml`). Resolution order:
defaults → preset → `--config FILE.toml` (in order) → `--set section.key=value` (in order).
Every numeric field declares its allowed `Range` beside it (`_setting`); `Config.validate` checks
them all (`check_ranges`) before each section's own rules.
"""

from __future__ import annotations

import logging

from distill.config.ranges import MAX_BATCH, Range, check_ranges
from distill.config.sections import (
    TEACHER_BACKENDS,
    AugmentConfig,
    Config,
    DataConfig,
    HeatmapScheduleConfig,
    LabelsConfig,
    LossGainsConfig,
    PredictConfig,
    RayConfig,
    SelfDistillConfig,
    ShardsConfig,
    StudentConfig,
    TeacherConfig,
    TeachersConfig,
    TrainConfig,
)
from distill.config.toml import (
    available_presets,
    config_to_dict,
    default_preset_note,
    dump_toml,
    load_config,
    load_config_dict,
    parse_override,
    preset_of,
)

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
    "SelfDistillConfig",
    "ShardsConfig",
    "StudentConfig",
    "TeacherConfig",
    "TeachersConfig",
    "TrainConfig",
    "available_presets",
    "check_ranges",
    "config_to_dict",
    "default_preset_note",
    "dump_toml",
    "load_config",
    "load_config_dict",
    "parse_override",
    "preset_of",
]

logger = logging.getLogger(__name__)

