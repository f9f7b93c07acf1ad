"""A config as TOML: named presets, files and `--set` overrides resolved, every key and type
checked (`load_config`), and the resolved config written back (`dump_toml`)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import reprlib
import sys
import types
from collections.abc import Sequence
from importlib import resources
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

from distill.config.sections import Config
from distill.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "available_presets",
    "config_to_dict",
    "default_preset_note",
    "dump_toml",
    "load_config",
    "load_config_dict",
    "parse_override",
    "preset_of",
]

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


def default_preset_note(preset: str | None,
                        files: Sequence[str | os.PathLike[str]] | None = None) -> str | None:
    """What a command that does work says first when the user chose no preset (no `--preset`,
    and no config file names one): it runs `paper`, whose teachers need their weights
    (README "Presets"). None when a preset was chosen."""
    if preset is not None or any("preset" in _read_toml_file(p) for p in files or []):
        return None
    return ("using the paper preset (no --preset, and no config file names one): the paper's "
            "teachers, which need their weights; --preset demo runs offline with tiny teachers")


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
