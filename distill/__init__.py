"""distill: distil vision foundation models into the Y-MAP-Net multi-task student.

The Python API (README, "Python API"): every CLI command is a function here, documented where
it lives (`distill.api`, `distill.api_labels`, `distill.api_student`):

    load_config      a resolved config (preset → files → overrides), as --preset/-c/--set
    show_config      `distill config show`: a config as TOML with its fingerprints
    list_presets     `distill config presets`
    check_data       `distill data check`: a dataset summarised, optionally decoded
    make_demo        `distill data make-demo`
    list_teachers    `distill teachers list`: each backend and whether it runs here
    fetch_teachers   `distill teachers fetch`: download and verify a config's teacher weights
    create_teacher   one teacher, loaded: `.predict([image])`
    generate_labels  `distill run generate-labels`: teachers label a split into shards
    retry_failed     `distill run retry-failed`
    open_run         read a label run: `.samples()` gives decoded numpy arrays
    inspect_labels   `distill inspect`: a run's report (schema, provenance, QA statistics)
    audit_run        `distill run audit`: teachers against COCO's ground truth
    show             `distill show`: one row drawn as a contact sheet
    create_viewer    `distill view`: the viewer as an ASGI app
    train_student    `distill run train-student`
    evaluate         `distill run evaluate`: a student scored against its teachers
    load_student     a trained student (or a file `distill export` wrote): `.predict(image)`
    predict          `distill predict`: a student run on image files or a video
    export           `distill export`: a student as one ONNX or TorchScript file
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
    from distill.api_labels import (  # noqa: F401
        audit_run,
        check_data,
        create_viewer,
        fetch_teachers,
        inspect_labels,
        list_presets,
        list_teachers,
        make_demo,
        retry_failed,
        show,
        show_config,
    )
    from distill.api_student import evaluate, export, predict  # noqa: F401

# The API's names (README, "Python API") and the module defining each; resolved on first use.
_API_MODULES = {
    "distill.api": ("LabelRunReader", "LabelledImage", "Student", "create_teacher",
                    "generate_labels", "load_config", "load_student", "open_run",
                    "train_student"),
    "distill.api_labels": ("audit_run", "check_data", "create_viewer", "fetch_teachers",
                           "inspect_labels",
                           "list_presets", "list_teachers", "make_demo", "retry_failed", "show",
                           "show_config"),
    "distill.api_student": ("evaluate", "export", "predict"),
}
_API = tuple(name for names in _API_MODULES.values() for name in names)
_HOME = {name: module for module, names in _API_MODULES.items() for name in names}
__all__ = ["DistillError", "__version__", *_API]

__version__ = "0.1.0"

def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
