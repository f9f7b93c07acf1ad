"""A run's identity: what enters its fingerprint, how two are compared, how a change is
described.

A config's fingerprint is the sha256 (16 hex digits) of the canonical JSON (sorted keys) of its
*fingerprint view*: the config as nested dicts, less what cannot change what a run writes. A
config field says which it is in its metadata (`distill.config` declares them with these
markers): `RUNTIME` fields (workers, devices, batch sizes of inference…) never enter it, so a
run resumed on another machine or cluster keeps its identity; `UNLESS_DEFAULT` fields (settings
added after runs were made) enter it only when set to something other than their default, which
is what every earlier run did. `preset` never enters it (its settings do).

A labelling run is identified by its *label view*: the `LABEL_SECTIONS` of the fingerprint view,
with a disabled teacher reduced to `{"enabled": False}`. Its manifest keeps that view and its
fingerprint; a resume with another config is refused (`FingerprintMismatch`) naming each change
as `labels.text_score_threshold: 0.5 → 0.7`, except when the only change adds teachers to the
run (`teacher_additions`). A teacher's resolved precision is part of the identity too: the first
commit records it, and a resume that resolves it differently is refused (`check_dtype`).

These values are the names of existing runs: they never change for an unchanged config
(tests/test_config.py pins those of the presets).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING, Any

from distill.errors import FingerprintMismatch

if TYPE_CHECKING:
    from distill.config import Config
    from distill.manifest import Manifest

__all__ = [
    "LABEL_SECTIONS",
    "RUNTIME",
    "UNLESS_DEFAULT",
    "check_dtype",
    "check_fingerprint",
    "config_changes",
    "fingerprint",
    "fingerprint_view",
    "hash_view",
    "label_fingerprint",
    "label_view",
    "teacher_additions",
]

# Field metadata (`dataclasses.field(metadata=...)`) of config settings.
RUNTIME = {"fingerprint": False}  # changes how fast a run goes, never what it writes
UNLESS_DEFAULT = {"fingerprint": "unless-default"}  # added after runs were made
# The config sections that decide what a labelling run writes.
LABEL_SECTIONS = ("data", "teachers", "labels", "shards")


def hash_view(view: dict[str, Any]) -> str:
    """The fingerprint of a config view: sha256 of canonical JSON (sorted keys), 16 hex digits."""
    blob = json.dumps(view, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _default(f: dataclasses.Field[Any]) -> Any:
    """A field's default value, from its default factory for a list or a dict."""
    if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _fingerprinted(obj: Any, f: dataclasses.Field[Any]) -> bool:
    rule = f.metadata.get("fingerprint", True)
    if rule == "unless-default":
        return bool(getattr(obj, f.name) != _default(f))
    return bool(rule) and f.name != "preset"


def _view(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: _view(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if _fingerprinted(obj, f)
        }
    return obj


def fingerprint_view(config: Config, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The nested dict the fingerprint hashes (a run manifest keeps it, to say what changed
    when a fingerprint differs); `sections` restricts it to those top-level sections."""
    doc: dict[str, Any] = _view(config)
    if sections is not None:
        doc = {k: v for k, v in doc.items() if k in sections}
    return doc


def fingerprint(config: Config, sections: tuple[str, ...] | None = None) -> str:
    """A stable hash of what determines a run's outputs (module docstring): the same config
    gives the same hash in any process."""
    return hash_view(fingerprint_view(config, sections))


def label_view(config: Config) -> dict[str, Any]:
    """What a labelling run's output depends on: the label sections, with a disabled teacher
    reduced to `{"enabled": False}` (its settings cannot change what is written)."""
    view = fingerprint_view(config, LABEL_SECTIONS)
    for role, teacher in view["teachers"].items():
        if not teacher.get("enabled", True):
            view["teachers"][role] = {"enabled": False}
    return view


def label_fingerprint(view: dict[str, Any]) -> str:
    """Stable hash of a `label_view` (the scheme of `fingerprint`)."""
    return hash_view(view)


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two fingerprint views, as 'key: old → new'."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += config_changes(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} → {new!r}"]


def teacher_additions(old: dict[str, Any], new: dict[str, Any]) -> list[str] | None:
    """The roles `new` enables that `old` did not, when that is the *only* difference between
    the two label views (adding a teacher to a finished run); None when anything else changed."""
    old_t, new_t = old.get("teachers", {}), new.get("teachers", {})
    added = [r for r, t in new_t.items()
             if t.get("enabled", True) and not old_t.get(r, {}).get("enabled", False)]
    rest = {**new, "teachers": {r: (old_t.get(r) if r in added else t) for r, t in new_t.items()}}
    return added if rest == old else None


def check_fingerprint(manifest: Manifest, fingerprint: str, view: dict[str, Any],
                      folder: object) -> None:
    """Refuse to continue a run with a different config, naming what changed."""
    if manifest.fingerprint == fingerprint:
        return
    changes = config_changes(manifest.config, view) or ["(settings not recorded)"]
    raise FingerprintMismatch(
        f"{folder} was made with config {manifest.fingerprint}, this one is {fingerprint}. "
        f"Changed: {'; '.join(changes[:8])}{' …' if len(changes) > 8 else ''}. Re-run with the "
        "run's own config (its resolved config.toml is in the folder), choose another output "
        "folder, or pass --new-run to start this folder over"
    )


def check_dtype(role: str, expected: str | None, provenance: dict[str, Any]) -> None:
    """Precision is part of a run's identity: `dtype = "auto"` resolves to float16 on CUDA and
    float32 on a CPU, so a resume that moves a teacher to another kind of device would mix
    precisions in one run. The first commit records each teacher's resolved dtype in the
    manifest; a teacher that resolves to another one is refused like any label change."""
    actual = provenance.get("dtype")
    if expected is None or actual == expected:
        return
    raise FingerprintMismatch(
        f"teachers.{role} runs in {actual} on {provenance.get('device')}, but this run was "
        f"labelled in {expected}; one run never mixes precisions. Set "
        f"teachers.{role}.dtype={str(expected).removeprefix('torch.')} (or run it on the same "
        "kind of device), choose another --out, or pass --new-run")
