"""The teacher registry: backend name → class. The module file name is the registry key
(`teachers/depth_anything_v2.py` registers "depth-anything-v2"); modules are imported only when
a backend is created, so listing backends never imports torch."""

from __future__ import annotations

import importlib
import logging
from typing import Any, TypeVar

from distill.config import TEACHER_BACKENDS, TeacherConfig
from distill.errors import ConfigError
from teachers.base import Teacher

__all__ = ["available", "create_teacher", "get_teacher_class", "register"]

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
