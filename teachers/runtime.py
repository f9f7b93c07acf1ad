"""What every torch backend needs: device and dtype choice, deterministic tiny initialisation,
weight-file hashing, safe checkpoint loading, and the provenance record."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from distill.config import TeacherConfig
from distill.provenance import file_sha256, is_pinned, library_versions, unpinned_warning
from teachers.base import Provenance, TeacherError

__all__ = [
    "TEST_MAX_SIZE",
    "TEST_MIN_SIZE",
    "TINY_SEED",
    "batches_by_size",
    "hub_kwargs",
    "load_state_dict",
    "load_strict",
    "make_provenance",
    "max_size_for",
    "missing_weights",
    "padded_size",
    "predict_in_chunks",
    "pretrained_source",
    "rename_key",
    "resolve_commit",
    "resolve_device",
    "resolve_dtype",
    "seeded",
    "shortest_edge_size",
    "weight_files",
]

logger = logging.getLogger(__name__)

TINY_SEED = 0  # every tiny / random variant initialises from this seed
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".pkl", ".ckpt")


def resolve_device(config: TeacherConfig) -> torch.device:
    """`auto` → CUDA when available, else CPU."""
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def resolve_dtype(config: TeacherConfig, device: torch.device, half_ok: bool = True) -> torch.dtype:
    """`auto` → float16 on CUDA when the model allows half precision, float32 elsewhere."""
    if config.dtype == "auto":
        return torch.float16 if device.type == "cuda" and half_ok else torch.float32
    return _DTYPES[config.dtype]


@contextlib.contextmanager
def seeded(seed: int = TINY_SEED) -> Iterator[None]:
    """Deterministic random initialisation without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def weight_files(checkpoint: str, revision: str = "main") -> list[Path]:
    """Local weight files behind a checkpoint: a file, a folder, or a hub id already in the
    local Hugging Face cache. Empty when none can be found without a download."""
    path = Path(checkpoint)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(checkpoint, revision=revision, local_files_only=True))
    except Exception:  # not cached, or not a hub id
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file())


def resolve_commit(checkpoint: str, revision: str = "main") -> tuple[str | None, str]:
    """The hub commit behind `checkpoint` at `revision` and how it is known (see
    `Provenance.commit_source`). Offline: a pinned revision is its own answer; otherwise the
    snapshot the local Hugging Face cache holds for it is named by its commit hash. A local
    file or folder has no hash ("local path")."""
    if Path(checkpoint).expanduser().exists():
        return None, "local path"
    if is_pinned(revision):
        return revision, "pinned"
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(checkpoint, revision=revision, local_files_only=True))
    except Exception:  # not cached, or not a hub id
        return None, "unresolved"
    return (folder.name, "hub cache") if is_pinned(folder.name) else (None, "unresolved")


def hub_kwargs(config: TeacherConfig) -> dict[str, Any]:
    """Keyword arguments for `from_pretrained`: a pinned revision, never remote code."""
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if not Path(config.checkpoint).exists():
        kwargs["revision"] = config.revision
    return kwargs


def missing_weights(model: str, checkpoint: str, why: str, example: str, holds: str) -> TeacherError:
    """The error for weights that cannot be loaded: what failed and what to pass instead."""
    return TeacherError(
        f"cannot load {model} weights from checkpoint {checkpoint!r} "
        f"({why.strip().rstrip('.')}). Pass a hub id (e.g. {example}, cached or downloadable, "
        f"with a pinned revision) or a local folder holding {holds}; tests and the demo use "
        "variant='tiny', which needs no weights"
    )


def pretrained_source(config: TeacherConfig, model: str, example: str, holds: str) -> str:
    """Where `from_pretrained` reads `config.checkpoint` from: an existing local folder, or a hub
    id. An empty checkpoint, a single file, or a missing path that can only be local (absolute,
    `.`/`~`, or more than owner/name) raises `missing_weights` before any hub lookup."""
    ckpt = config.checkpoint
    if not ckpt:
        raise missing_weights(model, ckpt, "the checkpoint is empty", example, holds)
    path = Path(ckpt).expanduser()
    if path.is_file():
        raise missing_weights(model, ckpt, "it is a file, not a transformers model folder",
                              example, holds)
    if path.exists():
        return str(path)
    if path.is_absolute() or ckpt.startswith((".", "~")) or len(path.parts) > 2:
        raise missing_weights(model, ckpt, "no such local folder", example, holds)
    return ckpt


# detectron2's test-time resize (config/defaults.py INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST), which
# Mask2Former and Panoptic FPN test with.
TEST_MIN_SIZE = 800
TEST_MAX_SIZE = 1333


def max_size_for(shortest: int) -> int:
    """The longest-edge cap for a shortest edge other than 800: detectron2's 1333 / 800 ratio kept,
    rounded half up in integers (800 → 1333, 64 → 107). Upstream never scales MAX_SIZE_TEST with
    MIN_SIZE_TEST; this is our rule for `input_size` overrides."""
    return (shortest * TEST_MAX_SIZE + TEST_MIN_SIZE // 2) // TEST_MIN_SIZE


def shortest_edge_size(height: int, width: int, shortest: int, max_size: int) -> tuple[int, int]:
    """(height, width) after detectron2's `ResizeShortestEdge`: the shorter edge scaled to
    `shortest`, aspect kept, then scaled down so that the longer edge is at most `max_size`; both
    rounded with `int(x + 0.5)` (detectron2 `ResizeShortestEdge.get_output_shape`), so 480 × 640
    at 800 / 1333 → 800 × 1067."""
    size = float(shortest)
    scale = size / min(height, width)
    new_h, new_w = (size, scale * width) if height < width else (scale * height, size)
    if max(new_h, new_w) > max_size:
        down = max_size / max(new_h, new_w)
        new_h, new_w = new_h * down, new_w * down
    return int(new_h + 0.5), int(new_w + 0.5)


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(height, width) rounded up to multiples of `multiple`."""
    return height + -height % multiple, width + -width % multiple


def batches_by_size(sizes: Sequence[Hashable], batch_size: int) -> list[list[int]]:
    """Indices of inputs with equal network sizes, in chunks of at most `batch_size`, in order of
    first appearance. Running each chunk alone (nothing padded to a neighbour's size) keeps every
    label independent of which images share its batch, so a resumed run reproduces it."""
    groups: dict[Hashable, list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size, []).append(i)
    step = max(1, batch_size)
    return [idx[k:k + step] for idx in groups.values() for k in range(0, len(idx), step)]


R = TypeVar("R")


def predict_in_chunks(
    images: list[Any], batch_size: int, predict_batch: Callable[[list[Any]], list[R]]
) -> list[R]:
    """Run `predict_batch` on consecutive chunks of at most `batch_size` images, in order."""
    step = max(1, batch_size)
    results: list[R] = []
    for start in range(0, len(images), step):
        results.extend(predict_batch(images[start:start + step]))
    return results


def rename_key(key: str, rules: Sequence[tuple[str, str]]) -> str:
    """An upstream checkpoint's parameter name in ours: the first (regex, replacement) rule that
    matches at the start of `key` renames it once; a key no rule matches keeps its name."""
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key, count=1)
    return key


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors: safetensors when it is one, else `torch.load` with
    `weights_only=True` (no pickle code runs). A {"state_dict"/"model": ...} wrapper and a
    DataParallel "module." prefix are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise TeacherError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TeacherError(f"cannot load {path} as a weights-only checkpoint: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise TeacherError(f"{path} does not hold a state dict (got {type(state).__name__})")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_strict(model: torch.nn.Module, mapped: dict[str, torch.Tensor], path: Path,
                what: str) -> None:
    """Load `mapped` (a checkpoint already renamed to `model`'s names) strictly; a mismatch is one
    `TeacherError` line naming a few missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    shapes = [k for k in mapped if k in own and mapped[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        parts = [f"{label}: {few(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if keys]
        raise TeacherError(f"{path} does not map onto {what}: " + "; ".join(parts))
    model.load_state_dict(mapped, strict=True)


def make_provenance(
    role: str,
    backend: str,
    config: TeacherConfig,
    device: torch.device,
    dtype: torch.dtype,
    input_size: Any,
    files: list[Path] | None = None,
    extra: dict[str, Any] | None = None,
    hub: bool = False,
) -> Provenance:
    """The provenance record; weight files are hashed here (once per teacher load). `hub`: the
    backend loads hub checkpoints, so the commit is resolved (`resolve_commit`) and an unpinned
    revision is warned about."""
    hashes = {p.name: file_sha256(p) for p in files or []}
    commit, source = None, ""
    if hub and config.variant == "pretrained" and config.checkpoint:
        commit, source = resolve_commit(config.checkpoint, config.revision)
    prov = Provenance(
        role=role,
        backend=backend,
        variant=config.variant,
        checkpoint=config.checkpoint,
        revision=config.revision,
        weights_sha256=hashes,
        dtype=str(dtype).removeprefix("torch."),
        device=device.type,
        input_size=input_size,
        versions=library_versions(),
        extra=extra or {},
        commit=commit,
        commit_source=source,
    )
    warning = unpinned_warning(role, prov.to_dict())
    if warning:
        logger.warning(warning)
    return prov
