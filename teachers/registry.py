"""The teacher registry: backend name → class. The module file name is the registry key
(`teachers/depth_anything_v2.py` registers "depth-anything-v2"); modules are imported only when
a backend is created, so listing backends never imports torch."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import Any, TypeVar

from distill.config import TEACHER_BACKENDS, TeacherConfig, TeachersConfig
from distill.errors import ConfigError
from teachers.base import Teacher

__all__ = ["BackendStatus", "available", "backend_status", "create_teacher",
           "get_teacher_class", "register"]

logger = logging.getLogger(__name__)

_REGISTRY: dict[str, type[Teacher[Any]]] = {}
T = TypeVar("T", bound=type[Teacher[Any]])


def available() -> dict[str, tuple[str, ...]]:
    """Role → backend names distill ships."""
    return dict(TEACHER_BACKENDS)


def register(cls: T) -> T:
    """Class decorator: register a backend under `cls.name`. A duplicate name is an error, and
    the name must match the module file name."""
    name = cls.name
    module = cls.__module__.rsplit(".", 1)[-1]
    if module != name.replace("-", "_"):
        raise TypeError(f"teacher {name!r} must live in teachers/{name.replace('-', '_')}.py, "
                        f"not in {cls.__module__}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise TypeError(f"teacher name {name!r} is already registered by {_REGISTRY[name]}")
    if cls.role not in TEACHER_BACKENDS or name not in TEACHER_BACKENDS[cls.role]:
        raise TypeError(f"teacher {name!r} is not listed for role {cls.role!r} in "
                        "distill.config.TEACHER_BACKENDS")
    _REGISTRY[name] = cls
    return cls


def get_teacher_class(name: str) -> type[Teacher[Any]]:
    """The class registered as `name`, importing its module on first use."""
    known = sorted(n for names in TEACHER_BACKENDS.values() for n in names)
    if name not in known:
        raise ConfigError(f"unknown teacher backend {name!r}; available: {', '.join(known)}")
    if name not in _REGISTRY:
        importlib.import_module(f"teachers.{name.replace('-', '_')}")
    return _REGISTRY[name]


def create_teacher(role: str, config: TeacherConfig) -> Teacher[Any]:
    """Build (and load) the teacher `config` describes for `role`."""
    if role not in TEACHER_BACKENDS:
        raise ConfigError(f"unknown teacher role {role!r}; roles: {', '.join(TEACHER_BACKENDS)}")
    config.validate(role)
    cls = get_teacher_class(config.backend)
    if cls.role != role:
        raise ConfigError(f"backend {config.backend!r} is a {cls.role} teacher, not {role}")
    logger.info("loading %s teacher %s (%s %s)", role, config.backend, config.variant,
                config.checkpoint or "random init")
    return cls(config)


@dataclass
class BackendStatus:
    """One backend as `distill teachers list` shows it: whether it can run here (`status`, in
    words; `ready`), the paper's checkpoint when it is the paper's choice for its role, and
    why its package fails to import when installed but broken (`import_error`, with the fix
    when one is known)."""

    role: str
    name: str
    status: str
    ready: bool
    paper_checkpoint: str = ""
    package: str | None = None
    import_error: str | None = None


def backend_status() -> list[BackendStatus]:
    """Every backend distill ships, role by role, as each backend class declares its needs
    (`Teacher.requires`, `requires_import`, `without_package`, `needs_cuda`): importing the
    backend modules loads torch, never the optional packages themselves, except the import
    that proves one works."""
    import torch

    paper = TeachersConfig().roles()
    cuda = torch.cuda.is_available()
    rows = []
    for role, names in TEACHER_BACKENDS.items():
        for name in names:
            cls = get_teacher_class(name)
            package, error = cls.requires, None
            ok = package is None or importlib.util.find_spec(package) is not None
            status = "ready" if ok else (cls.without_package
                                         or f"needs `{package}` (not installed)")
            if ok and cls.requires_import is not None:
                try:  # installed is not enough: detectron2's own import can fail
                    importlib.import_module(cls.requires_import)
                except Exception as exc:  # reported, whatever it is
                    hint = " (pip install 'setuptools<81')" if "pkg_resources" in str(exc) else ""
                    error = f"{type(exc).__name__}: {exc}{hint}"
                    status, ok = f"`{package}` installed, fails to import", False
            if ok and cls.needs_cuda and not cuda:
                status, ok = "needs a CUDA GPU (none here)", False
            mark = paper[role].checkpoint if role in paper and paper[role].backend == name else ""
            rows.append(BackendStatus(role, name, status, ok or status == cls.without_package,
                                      mark, package, error))
    return rows
