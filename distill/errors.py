"""The project's exception tree: every error a user can cause is a `DistillError`, declared
here (the modules that raise them import them from here; `teachers.base` re-exports
`TeacherError`, part of the teacher contract)."""

__all__ = [
    "ConfigError",
    "DatasetLayoutError",
    "DistillError",
    "FingerprintMismatch",
    "ImageDecodeError",
    "LabelError",
    "LayerError",
    "MixedLabelRuns",
    "RunGone",
    "RunLocked",
    "ShardError",
    "StorageError",
    "TeacherError",
    "TrainingDiverged",
    "UnsafePathError",
    "ViewError",
]


class DistillError(Exception):
    """Base of every error distill raises on purpose. The CLI turns these into exit code 2."""


class ConfigError(DistillError):
    """A config file, preset or `--set` override is wrong (unknown key, bad value, bad type)."""


class DatasetLayoutError(DistillError):
    """A dataset folder does not have the layout distill reads (a file or folder is missing)."""


class UnsafePathError(DistillError):
    """A file name from an annotation resolves outside the dataset root."""


class ImageDecodeError(DistillError):
    """An image cannot be decoded into RGB pixels (corrupt, empty, too small, too large)."""


class LabelError(DistillError):
    """Label math got input it cannot turn into a target (wrong shape, non-finite values)."""


class ShardError(DistillError):
    """A shard file is missing, unreadable, or does not match the schema distill writes."""


class StorageError(DistillError):
    """A file or folder cannot be read or written (names the location and the cause)."""


class RunLocked(DistillError):
    """Another distill process is writing to the same run folder."""


class FingerprintMismatch(DistillError):
    """The config differs from the one the run folder was made with."""


class TeacherError(DistillError):
    """A teacher cannot be built or run (missing package, missing weights, bad input)."""


class MixedLabelRuns(DistillError):
    """`--shards` come from several label runs and `--allow-mixed` was not given."""


class TrainingDiverged(DistillError):
    """The loss or the weights stopped being finite (a learning rate too high for the data):
    the run stops in one line, and nothing is written for that epoch."""


class ViewError(DistillError):
    """A request names something the run does not have (unknown shard, row out of range)."""


class RunGone(DistillError):
    """The run (its folder, its shards folder or its one shard) no longer exists: deleted or
    moved while the viewer serves it."""


class LayerError(DistillError):
    """A label layer is unknown, registered twice, or declares a column another layer owns
    (`distill.layers.registry`)."""
