"""A student checkpoint on disk or an object store: writing one atomically, repairing an
interrupted write, finding and loading one (train-student writes and resumes them; predict,
export, evaluate and the viewer load them through `distill.student.predict.load_student`).

A checkpoint is `model.safetensors` and `state.pt` (epoch, step, optimiser, learning-rate
scheduler, torch RNG, best loss, patience count), written every epoch; `state.pt` holds only
tensors and plain values, loaded with `weights_only=True`. Resuming restores all of it, so k epochs + resume + (N−k) epochs give the
same weights as N epochs straight.

A checkpoint appears atomically, on a local disk or an object store:
- The pair is tied by a random checkpoint id, in the safetensors header (`distill.checkpoint`)
  and in `state.pt` (`checkpoint`). A folder is *whole* when both files are there with the same
  id (a pair from an older distill, with no ids, counts as whole). `load_checkpoint` refuses a
  pair that is not whole, so weights are never loaded with another save's state.
- Writing `checkpoints/<which>`: both files are first written (each atomically, `state.pt` last)
  to the staged folder `checkpoints/.<which>.next/`, then published — on a local disk by a folder
  swap (`<which>` → `.<which>.old`, `.next` → `<which>`, the old one removed: a rename is atomic);
  on an object store, which cannot rename folders, by server-side copies of the weights and then
  the state into `<which>/` (each object appears whole), then the staged folder is deleted.
- A crash leaves the previous `<which>` whole, or a whole staged copy, or both. Before anything
  else, the next run (holding the writer lock) publishes a whole staged checkpoint again (roll
  forward: it is the newer one) and drops a partial one (`recover_checkpoints`), so `--resume`
  finds the newest whole checkpoint. Only a reader racing an object-store publication can see a
  mixed pair, and it is told so rather than loading it.
- `best` is published before `last`, with the same bytes: a crash between the two redoes that
  epoch on resume (the same result, deterministically) instead of leaving a `best` that `last`
  does not know about. A run stopped there in its first epoch has only `best`; `--resume` starts
  from it (`resume_point`), which is where `last` would have been.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
from typing import Any

import pyarrow as pa
import torch

from distill.errors import DistillError, StorageError, TrainingDiverged
from distill.runfolder import StudentRun
from distill.storage import Location, atomic_write_bytes, fsync_dir, remove_tree
from distill.student.model import unwrap

__all__ = [
    "CHECKPOINT_ID",
    "checkpoint_bytes",
    "find_checkpoint",
    "load_checkpoint",
    "recover_checkpoints",
    "resume_point",
    "run_folder",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

PathSpec = str | os.PathLike[str] | Location
CHECKPOINT_ID = "distill.checkpoint"  # safetensors header metadata key; "checkpoint" in state.pt


def checkpoint_bytes(model: torch.nn.Module, state: dict[str, Any]) -> tuple[bytes, bytes]:
    """`model.safetensors` and `state.pt` as bytes, tied by a fresh checkpoint id."""
    from safetensors.torch import save

    token = secrets.token_hex(8)
    weights = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    # the last step of an epoch can overflow the weights with a finite loss
    broken = [k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()]
    if broken:
        raise TrainingDiverged(f"{len(broken)} weight tensor(s) are not finite ({broken[0]})")
    buffer = io.BytesIO()
    torch.save({**state, "checkpoint": token}, buffer)
    return save(weights, metadata={CHECKPOINT_ID: token}), buffer.getvalue()


def save_checkpoint(run: StudentRun, which: str, model_bytes: bytes,
                     state_bytes: bytes) -> None:
    """Stage both files, then publish them as `checkpoints/<which>` (module docstring)."""
    staged = run.staged_checkpoint(which)
    remove_tree(staged)
    atomic_write_bytes(run.model_file(staged), model_bytes)
    atomic_write_bytes(run.state_file(staged), state_bytes)  # last: completes the staged pair
    _publish(run, which)


def _publish(run: StudentRun, which: str) -> None:
    staged, final = run.staged_checkpoint(which), run.checkpoint(which)
    if staged.is_local:
        old = run.retired_checkpoint(which)
        shutil.rmtree(old.path, ignore_errors=True)
        if os.path.isdir(final.path):
            os.replace(final.path, old.path)
        os.replace(staged.path, final.path)
        fsync_dir(final.parent.path)
        shutil.rmtree(old.path, ignore_errors=True)
        return
    try:  # weights, then the state that matches them: each object appears whole
        for file in (run.model_file, run.state_file):
            final.fs.copy_file(file(staged).path, file(final).path)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot publish checkpoint {final}: {exc}") from exc
    remove_tree(staged)


def _model_id(model_file: Location) -> str | None:
    """The checkpoint id in a safetensors header (reads only the header)."""
    with model_file.open_input() as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    return (header.get("__metadata__") or {}).get(CHECKPOINT_ID)


def _read_state(state_file: Location) -> dict[str, Any]:
    state = torch.load(io.BytesIO(state_file.read_bytes()), map_location="cpu",
                       weights_only=True)
    if not isinstance(state, dict):
        raise DistillError(f"{state_file} is not a student training state")
    return state


def _is_whole(folder: Location) -> bool:
    model_file, state_file = StudentRun.model_file(folder), StudentRun.state_file(folder)
    try:
        if not (model_file.is_file() and state_file.is_file()):
            return False
        return _model_id(model_file) == _read_state(state_file).get("checkpoint")
    except Exception:  # unreadable, truncated, not a checkpoint: not whole
        return False


def recover_checkpoints(run: StudentRun) -> None:
    """Finish what an interrupted run left (call holding the run's lock): a whole staged
    checkpoint is published again, a partial one dropped, a swapped-out local folder removed."""
    for which in ("best", "last"):
        staged, final = run.staged_checkpoint(which), run.checkpoint(which)
        if staged.is_dir():
            if _is_whole(staged):
                logger.warning("publishing checkpoint %s, whose writing was interrupted", final)
                _publish(run, which)
            else:
                logger.info("dropping the partly written checkpoint %s", staged)
                remove_tree(staged)
        old = run.retired_checkpoint(which)
        if old.is_local and old.is_dir():
            if not final.is_dir() and _is_whole(old):
                os.replace(old.path, final.path)
            remove_tree(old)


def load_checkpoint(folder: PathSpec) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights (safetensors) and training state (weights-only torch.load) of a checkpoint
    folder, local or on an object store; refuses weights and state from different saves."""
    from safetensors.torch import load, load_file

    folder = Location(folder)
    model_file, state_file = StudentRun.model_file(folder), StudentRun.state_file(folder)
    if not model_file.is_file() or not state_file.is_file():
        raise DistillError(f"{folder} is not a student checkpoint (needs {model_file.name} and "
                           f"{state_file.name})")
    try:
        weights = load_file(model_file.path) if model_file.is_local else \
            load(model_file.read_bytes())
        state = _read_state(state_file)
        token = _model_id(model_file)
    except DistillError:
        raise
    except Exception as exc:  # safetensors, torch and pyarrow each raise their own
        raise DistillError(f"cannot read checkpoint {folder}: {exc}") from exc
    if token != state.get("checkpoint"):
        raise DistillError(f"{folder} holds weights and training state from different saves "
                           "(it is being written, or its writing was interrupted); try again, "
                           "or re-run train-student --resume, which repairs it")
    return weights, state


def resume_point(run: StudentRun) -> Location | None:
    """The checkpoint `--resume` continues: `last`, else `best` (published first, with the same
    bytes: a run stopped between the two in its first epoch has only `best`). Call after
    `recover_checkpoints`."""
    for which in ("last", "best"):
        folder = run.checkpoint(which)
        if run.model_file(folder).is_file():
            return folder
    return None


def find_checkpoint(path: str | os.PathLike[str] | Location) -> Location:
    """A checkpoint folder from what a user passes (a local path or a URI): a train-student run
    folder (its best checkpoint, else its last), a checkpoint folder, or its model.safetensors."""
    loc = Location(path)
    if loc.name == StudentRun.model_file(loc.parent).name and loc.is_file():
        loc = loc.parent
    if StudentRun.model_file(loc).is_file():
        return loc
    run = StudentRun(loc)
    for which in ("best", "last"):
        if run.model_file(run.checkpoint(which)).is_file():
            return run.checkpoint(which)
    raise DistillError(f"{loc} holds no student checkpoint: pass a train-student run folder, "
                       "its checkpoints/best (or last) folder, or a model.safetensors file")


def run_folder(checkpoint: str | os.PathLike[str] | Location) -> StudentRun:
    """The train-student run a checkpoint folder belongs to (OUT/checkpoints/<name> → OUT); a
    flat folder holding the model and config.toml is its own run folder."""
    loc = Location(checkpoint)
    return StudentRun.holding(loc) or StudentRun(loc)
