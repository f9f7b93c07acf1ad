"""What a run's teacher provenance says about trust: which teachers had random weights (labels
for plumbing tests only) and which hub checkpoints were not pinned to a commit; and what a
provenance records besides the weights: the versions of the packages that shape the labels
(`library_versions`) and the sha256 of local weight files (`file_sha256`, no pyarrow: teachers
import it).

One owner for the wording, so `distill show`, `distill inspect` and `distill run audit` say the
same thing. Reads the provenance dicts that shards carry in their metadata
(`teachers.base.Provenance.to_dict`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from importlib import metadata as importlib_metadata
from typing import IO, Any

from distill import __version__

__all__ = [
    "PLUMBING_ONLY",
    "file_sha256",
    "is_pinned",
    "library_versions",
    "random_weight_roles",
    "random_weights_warning",
    "shards_random_weight_roles",
    "stream_sha256",
    "unpinned_warning",
]

# What labels of random-weight teachers are good for.
PLUMBING_ONLY = "labels for plumbing tests only, not real labels"

_COMMIT = re.compile(r"[0-9a-f]{40}")


def is_pinned(revision: str) -> bool:
    """Whether a hub revision names one commit (40 hex digits) rather than a branch or tag that
    can move (such as the default "main")."""
    return bool(_COMMIT.fullmatch(revision or ""))


def _is_random(prov: Mapping[str, Any]) -> bool:
    # "tiny" and "random" are randomly initialised by definition; a provenance without a
    # variant (an older or foreign shard) counts as random only when it hashed no weights.
    variant = prov.get("variant")
    if variant is not None:
        return variant != "pretrained"
    return not prov.get("weights_sha256")


def random_weight_roles(provenance: Mapping[str, Any]) -> list[str]:
    """The roles, sorted, whose teacher had random weights, from one shard's `provenance`
    metadata (role → provenance dict). A role a run re-labelled may list several provenances
    (`distill.audit`): any random one counts."""
    out = []
    for role, prov in provenance.items():
        provs = prov if isinstance(prov, list) else [prov]
        if any(isinstance(p, Mapping) and _is_random(p) for p in provs):
            out.append(role)
    return sorted(out)


def shards_random_weight_roles(metadatas: Iterable[Mapping[str, Any]]) -> list[str]:
    """The union of `random_weight_roles` over the metadata of several shards."""
    roles: set[str] = set()
    for meta in metadatas:
        roles.update(random_weight_roles(meta.get("provenance") or {}))
    return sorted(roles)


def random_weights_warning(roles: list[str], *, student: bool = False) -> str:
    """The one line that says which teachers had random weights ("" when none did); with
    `student`, of the labels a student learnt from (`distill predict`)."""
    if not roles:
        return ""
    which = roles[0] if len(roles) == 1 else ", ".join(roles[:-1]) + " and " + roles[-1]
    were = "were" if len(roles) > 1 else "was"
    if student:
        return (f"RANDOM WEIGHTS: the student learnt from labels of the {which} "
                f"teacher{'s' if len(roles) > 1 else ''}, which {were} not pretrained; its "
                "predictions are for plumbing tests only")
    return (f"RANDOM WEIGHTS: the {which} teacher{'s' if len(roles) > 1 else ''} "
            f"{were} not pretrained; {PLUMBING_ONLY}")


def unpinned_warning(role: str, prov: Mapping[str, Any]) -> str:
    """The warning for a teacher whose hub checkpoint was not pinned to a commit ("" when it
    was, or when it is no hub checkpoint): the revision can move under the same name, so the
    same config may label with other weights later. Names the commit to pin when known."""
    source = prov.get("commit_source")
    if source not in ("hub cache", "unresolved"):
        return ""
    pin = prov.get("commit") or "<commit hash>"
    return (f"teachers.{role}: checkpoint {prov.get('checkpoint')!r} at revision "
            f"{prov.get('revision')!r} is not pinned to a commit "
            + (f"(it resolved to {prov['commit']}); " if prov.get("commit") else
               "(its commit could not be resolved offline); ")
            + f"pin it with --set teachers.{role}.revision={pin}")


def library_versions() -> dict[str, str]:
    """Versions of the packages that shape a shard's content."""
    out = {"distill": __version__}
    for dist in ("numpy", "pillow", "pyarrow", "torch", "torchvision", "transformers", "ray"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def stream_sha256(fh: IO[bytes]) -> str:
    """Hex sha256 of what a binary file object reads to its end, in 1 MiB chunks."""
    h = hashlib.sha256()
    while chunk := fh.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a local file's bytes (`distill.storage.file_sha256` also reads URIs)."""
    with open(path, "rb") as fh:
        return stream_sha256(fh)
