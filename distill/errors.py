"""The project's exception tree: every error a user can cause is a `DistillError`."""

__all__ = [
    "ConfigError",
    "DatasetLayoutError",
    "DistillError",
    "ImageDecodeError",
    "LabelError",
    "ShardError",
    "UnsafePathError",
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
