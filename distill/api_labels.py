"""The Python API of the commands around the labels: config, datasets, teachers, label runs
(`distill config`, `data`, `teachers`, `run retry-failed`, `run audit`, `inspect`, `show`,
`view`). Exported lazily by `import distill` (README, "Python API"); each is the function the
CLI command calls, so both give the same results and the same `DistillError`s."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.api import PathLike, _set_strings
from distill.config import Config
from distill.errors import DistillError
from distill.storage import Location

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from distill.coco import Dataset
    from distill.datacheck import DataCheck
    from teachers.fetch import FetchReport
    from teachers.registry import BackendStatus

__all__ = ["Picture", "audit_run", "check_data", "create_viewer", "fetch_teachers",
           "inspect_labels", "list_presets", "list_teachers", "make_demo", "retry_failed", "run_config", "show",
           "show_config"]


# ---------------------------------------------------------------------------------------------
# Config, datasets, teachers


def show_config(config: Config) -> str:
    """`distill config show`: the resolved config as TOML (readable back as a config file),
    under a comment naming its preset and its fingerprints (whole run, labels only)."""
    from distill.config import dump_toml
    from distill.identity import label_fingerprint, label_view
    from distill.labels.tokens import PAPER_STOP_WORDS

    labels = label_fingerprint(label_view(config))  # what a label run's manifest records
    notes = [f"# preset: {config.preset}",
             f"# fingerprint: {config.fingerprint()}  (labels: {labels})"]
    if not config.labels.stop_words and not config.labels.stop_words_file:
        notes.append("# labels.stop_words = [] means the paper's list, in use: "
                     + " ".join(sorted(PAPER_STOP_WORDS)))
    notes.append(f"# labels.max_tokens = {config.labels.max_tokens}: the student learns the "
                 "first max_tokens caption tokens; shards keep them all (up to the caption "
                 "teacher's cap)")
    return "\n".join(notes) + "\n" + dump_toml(config)


def list_presets() -> list[str]:
    """`distill config presets`: the named presets (`load_config(preset=…)`)."""
    from distill.config import available_presets

    return available_presets()


def check_data(root: PathLike, split: str = "val2017", *, decode: bool = False,
               config: Config | None = None,
               progress: Callable[[int, int, int], None] | None = None) -> DataCheck:
    """`distill data check`: read a COCO folder or a plain image folder as generate-labels
    will and return its summary (`DataCheck`: records, people, captions, the samples that
    would be quarantined and why, the annotation entries left out). With `decode`, every image
    is decoded as a label run decodes it, under `config.data` (default: the paper preset's):
    `.failures` and `.usable` say which will be labelled; `progress(done, total, failed)` is
    called after each image."""
    from distill.config import load_config
    from distill.datacheck import DataCheck, read_dataset

    ds = read_dataset(Location(root), split)
    if not decode:
        return DataCheck(ds)
    from pipelines.stages import decode_records

    data = (config or load_config(None, [], [])).data
    return DataCheck(ds, decoded=True, data=data,
                     failures=decode_records(ds.records, ds.split, data, progress))


def make_demo(out: str | os.PathLike[str] = "demo-data/coco") -> Dataset:
    """`distill data make-demo`: write the small COCO-format demo set (val2017, real photos
    from scikit-image) into `out` and return it as read back."""
    from distill.demo import make_demo_dataset

    return make_demo_dataset(Path(out))


def list_teachers() -> list[BackendStatus]:
    """`distill teachers list`: every teacher backend, role by role, with whether it can run
    here (`.status`, `.ready`), why its package fails to import (`.import_error`) and the
    paper's checkpoint where it is the paper's choice (`.paper_checkpoint`)."""
    from teachers.registry import backend_status

    return backend_status()


def fetch_teachers(config: Config, roles: Sequence[str] | None = None, *,
                   cache: str | os.PathLike[str] | None = None) -> FetchReport:
    """`distill teachers fetch`: download and verify the weights `config`'s teachers need
    (`roles`, default every enabled one) into the Hugging Face cache `cache` (default
    HF_HUB_CACHE): hub ids at their revision, each file against its sha256; `.manual` lists
    the checkpoints a person must get, `.warnings` the revisions that are no pinned commit.
    A file that fails its hash raises `DistillError`, nothing left under its name."""
    from teachers.fetch import fetch_weights

    return fetch_weights(config.teachers.roles(), roles, None if cache is None else str(cache))


# ---------------------------------------------------------------------------------------------
# Label runs


def run_config(out: PathLike, overrides: Mapping[str, Any] | Sequence[str] | None = None
               ) -> Config:
    """The config a generate-labels run folder was made with (its config.toml), with
    `overrides` (runtime settings only: anything that changes labels is refused when the run
    goes on)."""
    from distill.config import load_config
    from distill.runfolder import LabelRun

    run = LabelRun(out)
    if not run.is_run() or not run.config.is_file():
        raise DistillError(f"{out} is not a generate-labels run folder (no manifest.json and "
                           "config.toml)")
    return load_config(None, [run.config], _set_strings(overrides))


def retry_failed(out: PathLike, *, ids: Sequence[int] | None = None,
                 overrides: Mapping[str, Any] | Sequence[str] | None = None,
                 address: str | None = None, progress: bool = False,
                 verbose: bool = False, verify_shards: bool = False) -> dict[str, Any]:
    """`distill run retry-failed`: label again only a run's quarantined samples (or, with
    `ids`, those planned images) with the run's own config, and return the run's summary (as
    written to OUT/summary.json)."""
    from pipelines.generate_labels import RunOptions, generate_labels

    options = RunOptions(out=out, retry_failed=True,
                         retry_ids=None if ids is None else [int(i) for i in ids],
                         address=address, live=progress, verbose=verbose,
                         verify_shards=verify_shards)
    return generate_labels(run_config(out, overrides), options).summary


def audit_run(run: PathLike, *, limit: int | None = None, progress: bool = False,
              parts_gt: PathLike | None = None) -> dict[str, Any]:
    """`distill run audit`: the teachers measured against COCO's ground truth (group IoU
    against the instance masks, caption tokens against the human captions); the report is
    also written to RUN/audit.json."""
    from distill.audit import audit_run as _audit

    return _audit(run, limit=limit, progress=progress, parts_gt=parts_gt)


def inspect_labels(path: PathLike, *, sample_rows: int | None = None,
                   json_out: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """`distill inspect`: a run folder's, shards folder's or shard's report — schema, rows,
    shards done and pending, provenance, quarantine, QA statistics — as a dict
    (`distill.inspect_format.format_inspect` prints it); `json_out` also writes it as JSON."""
    from distill.inspect import inspect_path
    from distill.storage import atomic_write_bytes

    if json_out is not None and (os.path.isdir(json_out) or str(json_out).endswith("/")):
        raise DistillError(f"--json {json_out} is a folder; name the file to write, such as "
                           f"{os.path.join(json_out, 'inspect.json')}")
    report = inspect_path(path, sample_rows=sample_rows)
    if json_out is not None:
        atomic_write_bytes(json_out, (json.dumps(report, indent=1, default=str) + "\n").encode())
    return report


@dataclass
class Picture:
    """A PNG `show` wrote: its path, size in pixels and the row's warning ("" when every
    teacher of its shard had pretrained weights)."""

    path: Path
    width: int
    height: int
    warning: str = ""


def show(shard: PathLike, row: int = 0, out: str | os.PathLike[str] = "show.png", *,
         checkpoint: str | None = None, device: str = "auto", width: int = 320,
         overrides: Mapping[str, Any] | Sequence[str] | None = None) -> Picture:
    """`distill show`: draw one row of a shard (or of a run's shards, counted in order) as a
    contact sheet into the PNG `out`: image, depth, normals, groups, text, people, captions and
    tokens; with `checkpoint`, a student's prediction (a run or an exported file) below each
    teacher panel."""
    from distill.shards import decode_row
    from distill.viz import read_row, row_warning, save_sheet, sheet_for_sample

    where, data = read_row(shard, row)
    sample = decode_row(data)
    compare = None
    if checkpoint is not None:
        from distill.student.predict import Predictor
        from distill.student.predict_files import load_for_predict
        from distill.student.train import resolve_device

        dev = str(resolve_device(device))
        student = load_for_predict(checkpoint, "auto", dev, None, _set_strings(overrides))
        compare = Predictor(student, dev).predict_encoded(
            [sample.image], exif_transpose=sample.exif_transpose)[0].labels
    warning = row_warning(shard, row)
    sheet = sheet_for_sample(sample, compare=compare, panel_width=width,
                             title=f"{where} · image {sample.image_id} "
                             f"({sample.file_name})", warning=warning)
    save_sheet(sheet, Path(out))
    return Picture(Path(out), sheet.width, sheet.height, warning)


def create_viewer(run: PathLike, *, checkpoint: str | None = None,
                  device: str = "auto") -> Starlette:
    """`distill view`: the viewer of a run (a run folder, shards folder, glob or shard) as an
    ASGI app to serve (e.g. `uvicorn.run(app)`) or to query with a test client; with
    `checkpoint`, a student's outputs become layers beside the teachers'."""
    from distill.view import create_app

    if checkpoint is not None:
        from distill.student.train import resolve_device

        device = str(resolve_device(device))
    else:
        device = "cpu"
    where = run if isinstance(run, (str, Location)) else os.fspath(run)
    return create_app(where, checkpoint=checkpoint, device=device)
