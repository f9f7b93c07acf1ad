"""`distill teachers fetch` (issue 32): download and verify every checkpoint a config's enabled
teachers need, so that runs then work with `HF_HUB_OFFLINE=1`. Hub ids are downloaded with
`huggingface_hub.snapshot_download` at their revision (a dropped connection is resumed with a
Range request inside the same fetch); every LFS file is checked against the sha256 the hub
names it by, and any file `teachers.<role>.sha256` records against that. A file that fails is
refused: removed when this fetch downloaded it, nothing left under its name. Where a source
needs a person (weights behind a form, a model to train), the one manual step is reported.
Where each checkpoint comes from is `teachers.weights.checkpoint_source`'s decision."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from distill.config import TeacherConfig
from distill.errors import TeacherError
from distill.provenance import is_pinned, unpinned_warning
from teachers.weights import checkpoint_source, manual_step

__all__ = ["FetchReport", "Fetched", "fetch_weights"]

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Fetched:
    """One role's checkpoint after a fetch: `status` is "ready" (here, verified where a hash is
    known), "none" (random weights need none) or "manual" (`detail` says the step)."""

    role: str
    checkpoint: str
    status: str
    detail: str
    commit: str | None = None
    verified: list[str] = field(default_factory=list)  # files whose sha256 was checked


@dataclass
class FetchReport:
    """What `fetch_weights` did, role by role; `warnings` name unpinned revisions."""

    rows: list[Fetched]
    cache: str
    warnings: list[str] = field(default_factory=list)

    @property
    def manual(self) -> list[Fetched]:
        return [row for row in self.rows if row.status == "manual"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _refuse(role: str, what: str, actual: str, expected: str, by: str, entry: Path,
            new: bool) -> TeacherError:
    """Remove a file this fetch downloaded that fails its hash (its snapshot entry and blob),
    and say so; one already in the cache is named, not deleted (distill did not write it)."""
    blob = entry.resolve()
    if new:
        entry.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        done = "refused and removed; fetch again, or check the hub or mirror it came from"
    else:
        done = f"it was in the cache before this fetch: delete {blob} and fetch again"
    return TeacherError(f"teachers.{role}: {what} has sha256 {actual}, not {expected} "
                        f"({by}): {done}")


def _verify_snapshot(role: str, config: TeacherConfig, folder: Path, new_blobs: set[Path]
                     ) -> list[str]:
    """Check every file of a downloaded snapshot whose sha256 is known: LFS files are named by
    it in the cache's blobs, and `config.sha256` may record more. Returns the files checked."""
    recorded = dict(config.sha256)
    checked = []
    for entry in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = entry.relative_to(folder).as_posix()
        blob = entry.resolve()
        expected = [(d, f"teachers.{role}.sha256") for d in [recorded.pop(name, None)] if d]
        if _SHA256.fullmatch(blob.name):
            expected.append((blob.name, "the hub's LFS hash"))
        if not expected:
            continue
        actual = _sha256(entry)
        for digest, by in expected:
            if actual != digest:
                raise _refuse(role, f"{config.checkpoint} {name} at {folder.name}", actual,
                              digest, by, entry, blob in new_blobs)
        checked.append(name)
    if recorded:
        raise TeacherError(f"teachers.{role}.sha256 names {', '.join(sorted(recorded))}, which "
                           f"{config.checkpoint} at {folder.name} does not have")
    return checked


def _fetch_hub(role: str, config: TeacherConfig, cache: str, warnings: list[str]) -> Fetched:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.file_download import repo_folder_name

    repo, revision = config.checkpoint, config.revision
    blobs = Path(cache) / repo_folder_name(repo_id=repo, repo_type="model") / "blobs"
    before = set(blobs.glob("*"))
    where = f"teachers.{role}.checkpoint = {repo!r} (revision {revision})"
    try:
        folder = Path(snapshot_download(repo, revision=revision, cache_dir=cache))
    except RevisionNotFoundError as exc:
        raise TeacherError(f"{where}: the hub ({constants.ENDPOINT}) has no such revision"
                           ) from exc
    except RepositoryNotFoundError as exc:
        raise TeacherError(f"{where}: the hub ({constants.ENDPOINT}) has no such repo (or it "
                           "is gated: log in with `hf auth login`)") from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TeacherError(f"{where}: cannot download from {constants.ENDPOINT} ({why})"
                           ) from exc
    checked = _verify_snapshot(role, config, folder, set(blobs.glob("*")) - before)
    commit = folder.name
    if not is_pinned(revision):
        warnings.append(unpinned_warning(role, {"commit_source": "hub cache", "commit": commit,
                                                "checkpoint": repo, "revision": revision}))
    return Fetched(role, repo, "ready", f"hub {repo} at {commit} in {cache}", commit, checked)


def _check_local(role: str, config: TeacherConfig) -> Fetched:
    """A checkpoint file or folder that is here: checked against `config.sha256` (a file by its
    own name, a folder's files by their relative paths)."""
    path = Path(config.checkpoint).expanduser()
    files = {path.name: path} if path.is_file() else \
        {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file()}
    checked = []
    for name, digest in sorted(config.sha256.items()):
        if name not in files:
            raise TeacherError(f"teachers.{role}.sha256 names {name}, which {path} does not have")
        actual = _sha256(files[name])
        if actual != digest:
            raise TeacherError(f"teachers.{role}: {files[name]} has sha256 {actual}, not "
                               f"{digest} (teachers.{role}.sha256): refused; get the file again")
        checked.append(name)
    return Fetched(role, config.checkpoint, "ready", f"local {path}", verified=checked)


def _fetch_zoo(role: str, config: TeacherConfig) -> Fetched:
    """detectron2's model zoo: detectron2 itself downloads into its iopath cache."""
    try:
        from detectron2 import model_zoo
        from detectron2.utils.file_io import PathManager
    except Exception:  # not installed, or its import fails (teachers list says why)
        return Fetched(role, config.checkpoint, "manual", f"teachers.{role}.checkpoint = "
                       f"{config.checkpoint!r}: install detectron2 (README 'Real teachers') "
                       "and fetch again; it downloads its model-zoo weights itself")
    url = config.checkpoint if config.checkpoint.startswith(("http://", "https://")) \
        else model_zoo.get_checkpoint_url(config.checkpoint)
    local = PathManager.get_local_path(url)
    return Fetched(role, config.checkpoint, "ready", f"detectron2 model zoo {local}")


def fetch_weights(teachers: dict[str, TeacherConfig], roles: Sequence[str] | None = None,
                  cache: str | None = None) -> FetchReport:
    """Download and verify the weights of `roles` (default: every enabled teacher) into the
    Hugging Face cache `cache` (default: HF_HUB_CACHE)."""
    from huggingface_hub import constants

    cache = str(Path(cache or constants.HF_HUB_CACHE).expanduser().resolve())
    unknown = [r for r in roles or () if r not in teachers]
    if unknown:
        raise TeacherError(f"unknown teacher role {unknown[0]!r}; roles: {', '.join(teachers)}")
    chosen = list(roles) if roles else [r for r, c in teachers.items() if c.enabled]
    report = FetchReport([], cache)
    for role in chosen:
        config = teachers[role]
        config.validate(role)
        source = checkpoint_source(config)
        if source == "none":
            row = Fetched(role, config.checkpoint, "none", f"{config.variant}: no weights")
        elif source == "package":
            row = Fetched(role, config.checkpoint, "ready", f"installed package {config.checkpoint}")
        elif source == "local":
            row = _check_local(role, config)
        elif source == "hub":
            row = _fetch_hub(role, config, cache, report.warnings)
        elif source == "zoo":
            row = _fetch_zoo(role, config)
        else:
            row = Fetched(role, config.checkpoint, "manual", manual_step(role, config))
        logger.info("teachers.%s: %s (%s)", role, row.status, row.detail)
        report.rows.append(row)
    return report
