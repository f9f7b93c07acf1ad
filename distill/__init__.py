"""distill: distil vision foundation models into the Y-MAP-Net multi-task student.

The Python API (README, "Python API"); each name is documented where it lives, in `distill.api`:

    load_config      a resolved config (preset → files → overrides), as --preset/-c/--set
    generate_labels  `distill run generate-labels`: teachers label a split into shards
    open_run         read a label run: `.samples()` gives decoded numpy arrays
    create_teacher   one teacher, loaded: `.predict([image])`
    train_student    `distill run train-student`
    load_student     a trained student (or a file `distill export` wrote): `.predict(image)`
    DistillError     every error a user can fix (the CLI's exit code 2)

Names are imported on first use, so `import distill` loads neither torch nor Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from distill.errors import DistillError

if TYPE_CHECKING:
    from distill.api import (  # noqa: F401  (re-exported: __all__ below)
        LabelledImage,
        LabelRunReader,
        Student,
        create_teacher,
        generate_labels,
        load_config,
        load_student,
        open_run,
        train_student,
    )

# The API's names (README, "Python API"), defined in distill.api; resolved on first use below.
_API = ("LabelRunReader", "LabelledImage", "Student", "create_teacher", "generate_labels",
        "load_config", "load_student", "open_run", "train_student")
__all__ = ["DistillError", "__version__", *_API]

__version__ = "0.1.0"

def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("distill.api"), name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
