"""The Python API: what the CLI does, callable from a notebook or a script.

    import distill

    cfg = distill.load_config(preset="demo", overrides={"data.root": "demo-data/coco"})
    result = distill.generate_labels(cfg, out="demo-data/run")    # resumable, as the CLI
    run = distill.open_run("demo-data/run")
    for s in run.samples():                                          # decoded numpy arrays
        s.image, s.depth, s.normals, s.groups, s.text, s.people, s.tokens
    depth = distill.create_teacher("depth-anything-v2", variant="tiny").predict([s.image])
    distill.train_student(cfg, shards="demo-data/run", out="demo-data/student")
    student = distill.load_student("demo-data/student")
    prediction = student.predict(s.image)                            # a `Prediction`

Each function is the library code a CLI command calls, with the same checks and errors
(`DistillError` for a mistake a user can fix), so a notebook run and a CLI run of the same
settings write the same run folder, and either resumes the other. Heavy modules (torch, Ray)
are imported on first call: `import distill` stays fast.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distill import _API_MODULES
from distill.config import TEACHER_BACKENDS, Config, TeacherConfig
from distill.config import load_config as _load_config
from distill.errors import ConfigError, DistillError
from distill.layers.form import LabelledImage  # one image's labels, decoded (`samples()`)
from distill.runfolder import LabelRun, find_label_run, resolve_shards
from distill.storage import Location

if TYPE_CHECKING:
    from distill.manifest import Manifest
    from distill.quarantine import Failure
    from distill.shards import Sample
    from distill.student.predict import ExportedStudent, LoadedStudent, Prediction, Predictor
    from teachers.base import Teacher

__all__ = list(_API_MODULES["distill.api"])  # its names `import distill` exports

PathLike = str | os.PathLike[str] | Location


# ---------------------------------------------------------------------------------------------
# Config


def load_config(preset: str | None = None, *,
                files: Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None = None,
                overrides: Mapping[str, Any] | Sequence[str] | None = None) -> Config:
    """A resolved, validated config: defaults → `preset` → `files` → `overrides`, exactly as
    `--preset`, `-c` and `--set` resolve it.

    `overrides` is a mapping of dotted keys to values (`{"train.epochs": 3}`) or `--set` strings
    (`["train.epochs=3"]`). Without `preset` a file's own `preset = "…"` applies, else "paper".
    `distill config show` prints every setting with its value."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    return _load_config(preset, files, _set_strings(overrides))


def _set_strings(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """Overrides as `--set` strings: a mapping's values spelled as TOML."""
    if isinstance(overrides, Mapping):
        return [f"{key}={_toml_value(value)}" for key, value in overrides.items()]
    return list(overrides or [])


def _toml_value(value: Any) -> str:
    """A Python value as `--set` spells it (its right-hand side is TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"override value {value!r} is not a bool, number, string or list")


# ---------------------------------------------------------------------------------------------
# Labelling


def generate_labels(config: Config, out: PathLike, *, limit: int | None = None,
                    image_ids: Sequence[int] | None = None, new_run: bool = False,
                    retry_failed: bool = False, address: str | None = None,
                    progress: bool = False, verbose: bool = False,
                    verify_shards: bool = False) -> dict[str, Any]:
    """`distill run generate-labels`: label `config.data` into the run folder `out` (a path or
    a URI) and return its summary (as written to OUT/summary.json).

    Safe to call again after any crash or interruption: complete shards are kept, the rest is
    labelled (README, "Resume"). Without `address` a private local Ray is started and stopped;
    inside a notebook that already called `ray.init()`, that Ray is used and left running.
    `progress` shows the live per-stage table on a terminal; `verify_shards` hashes every
    committed shard against its recorded sha256 before trusting it."""
    from pipelines.generate_labels import RunOptions
    from pipelines.generate_labels import generate_labels as _generate

    options = RunOptions(out=out, limit=limit,
                         image_ids=None if image_ids is None else [int(i) for i in image_ids],
                         new_run=new_run, retry_failed=retry_failed, address=address,
                         live=progress, verbose=verbose, verify_shards=verify_shards)
    return _generate(config, options).summary


class LabelRunReader:
    """A generate-labels run folder (or any shards `resolve_shards` accepts), read-only."""

    def __init__(self, path: PathLike) -> None:
        self.path = Location(path)
        self.run: LabelRun | None = find_label_run(self.path)
        self.shards: list[Location] = resolve_shards(self.path)

    def __repr__(self) -> str:
        return f"LabelRunReader({str(self.path)!r}, {len(self.shards)} shard(s))"

    def __len__(self) -> int:
        """Rows in all its shards (from the footers; nothing is decoded)."""
        from distill.shards import open_shard

        return sum(open_shard(p).metadata.num_rows for p in self.shards)

    @property
    def manifest(self) -> Manifest:
        from distill.manifest import read_manifest

        return read_manifest(self._run().manifest)

    @property
    def config(self) -> Config:
        """The resolved config the run was labelled with (its config.toml)."""
        return _load_config(None, [self._run().config], [])

    def quarantine(self) -> list[Failure]:
        """The samples that could not be labelled, each with its stage and reason."""
        from distill.quarantine import read_quarantine

        return read_quarantine(self._run().quarantine)

    def rows(self, columns: Sequence[str] | None = None) -> Iterator[Sample]:
        """Shard rows as stored (`distill.shards.Sample`: PNG maps decoded, depth16, the image
        still encoded), one row group in memory at a time. `columns` reads only those."""
        from distill.shards import iter_samples

        for path in self.shards:
            yield from iter_samples(path, columns)

    def samples(self) -> Iterator[LabelledImage]:
        """Every labelled image, decoded to numpy arrays (`LabelledImage`, the form a student's
        prediction and `distill show` have too): the image, depth, normals, the 11 class
        groups as float32 0/1 planes, text, people, tokens, captions; `.row` the row as
        stored."""
        from distill.layers.form import from_sample

        for sample in self.rows():
            yield from_sample(sample)

    def _run(self) -> LabelRun:
        if self.run is None:
            raise DistillError(f"{self.path} is not in a generate-labels run folder (no "
                               "manifest.json above it)")
        return self.run


def open_run(path: PathLike) -> LabelRunReader:
    """A label run to read: a run folder, its shards/ folder, a glob, a shard; a path or a URI."""
    return LabelRunReader(path)


def create_teacher(name: str, *, variant: str = "tiny", checkpoint: str = "",
                   revision: str = "main", device: str = "cpu", dtype: str = "float32",
                   input_size: int = 0, batch_size: int = 8, **options: Any) -> Teacher[Any]:
    """A teacher, loaded and ready: `.predict([rgb_uint8, ...])` gives one result per image at
    its own size, and `.provenance` says which weights produced it.

    `name` is a backend (`depth-anything-v2`, `mask2former`, `craft`, `visiongpt2`, …) or a role
    (`depth`, `panoptic`, `text`, `caption`: its default backend). `variant="tiny"` builds the
    real model code at a tiny random-initialised size (no download); "pretrained" loads
    `checkpoint` (a hub id, pinned by `revision`, or a local path). `options` are the other
    `teachers.<role>.*` settings, e.g. `decoding="sample", max_new_tokens=20` for a captioner."""
    from teachers.registry import create_teacher as _create

    if name in TEACHER_BACKENDS:
        role, backend = name, TEACHER_BACKENDS[name][0]
        defaults = getattr(Config().teachers, role)
        backend = defaults.backend or backend
    else:
        found = [r for r, names in TEACHER_BACKENDS.items() if name in names]
        if not found:
            known = sorted({*TEACHER_BACKENDS, *(n for v in TEACHER_BACKENDS.values() for n in v)})
            raise ConfigError(f"unknown teacher {name!r}; known: {', '.join(known)}")
        role, backend = found[0], name
    if variant not in ("pretrained", "tiny", "random"):
        raise ConfigError(f"variant {variant!r} must be pretrained, tiny or random")
    config = TeacherConfig(backend=backend, checkpoint=checkpoint, revision=revision,
                           variant=variant, dtype=dtype,  # type: ignore[arg-type]
                           input_size=input_size, device=device, batch_size=batch_size)
    known_options = {f.name for f in dataclasses.fields(TeacherConfig)} - {"backend"}
    unknown = sorted(set(options) - known_options)
    if unknown:
        raise ConfigError(f"unknown teacher option {unknown[0]!r}; known: "
                          f"{', '.join(sorted(known_options))}")
    config = dataclasses.replace(config, **options)
    config.validate(role)
    return _create(role, config)


# ---------------------------------------------------------------------------------------------
# The student


def train_student(config: Config, shards: Any, out: PathLike, *, val_shards: Any = None,
                  resume: bool = False, device: str = "auto", verify_shards: bool = False,
                  progress: bool = False, num_workers: int = 0, gpus_per_worker: float = 0.0,
                  cpus_per_worker: float = 1.0, address: str | None = None,
                  vocab: PathLike | None = None, allow_mixed: bool = False) -> dict[str, Any]:
    """`distill run train-student`: train on label shards (a run folder, its shards/, a glob,
    files; paths or URIs) into the run folder `out`, and return the last epoch's metrics (as in
    OUT/metrics.jsonl). `resume=True` continues OUT's last checkpoint exactly; `num_workers > 0`
    trains data-parallel under Ray Train. Shards of several label runs need `allow_mixed=True`;
    `vocab` is `--vocab` (see `distill.student.sources`)."""
    from distill.student.train import TrainOptions
    from distill.student.train import train_student as _train

    options = TrainOptions(shards=_spec(shards), val_shards=_spec(val_shards), out=out,
                           resume=resume, device=device, progress=progress,
                           verify_shards=verify_shards, vocab=vocab, allow_mixed=allow_mixed)
    if num_workers > 0:
        from pipelines.train_student import train_on_ray

        return train_on_ray(config, options, num_workers, gpus_per_worker, cpus_per_worker,
                            address)
    return _train(config, options)


def _spec(shards: Any) -> Any:
    if shards is None or isinstance(shards, (str, os.PathLike, Location)):
        return shards
    return [os.fspath(s) if isinstance(s, os.PathLike) else s for s in shards]


class Student:
    """A trained student, ready to predict: `predict(image)` for one RGB uint8 (H, W, 3) image
    gives a `Prediction` (`.labels` — depth, normals, text, groups, people at the image's size —
    `.words`, `.people`), `predict([a, b])` a list."""

    def __init__(self, loaded: LoadedStudent | ExportedStudent, device: str) -> None:
        from distill.student.predict import Predictor

        self.loaded = loaded
        self.predictor: Predictor = Predictor(loaded, device)

    @property
    def config(self) -> Config:
        return self.loaded.config

    @property
    def checkpoint(self) -> Location:
        return self.loaded.checkpoint

    def __repr__(self) -> str:
        return f"Student({str(self.checkpoint)!r}, epoch {self.loaded.epoch})"

    def predict(self, image: np.ndarray | Sequence[np.ndarray]) -> Any:
        if isinstance(image, np.ndarray) and image.ndim == 3:
            return self.predictor.predict([image])[0]
        return self.predictor.predict(list(image))

    def predict_file(self, path: PathLike) -> Prediction:
        """One image file, decoded as `distill predict` does (EXIF-oriented, like a viewer)."""
        return self.predictor.predict_encoded([Location(path).read_bytes()],
                                              exif_transpose=True)[0]


def load_student(path: PathLike, device: str = "cpu", *,
                 overrides: Mapping[str, Any] | Sequence[str] | None = None) -> Student:
    """A student from a train-student run folder, a checkpoint folder or its model.safetensors
    (a path or a URI), in eval mode with its config and vocabulary; or a file `distill export`
    wrote (ONNX, TorchScript), run by its runtime with the same decoding. `overrides` change
    `predict.*` settings (token decoding, depth refinement)."""
    from distill.student.predict import load_student as _load

    sets = _set_strings(overrides)
    if isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() in (".onnx", ".pt",
                                                                               ".ts"):
        from distill.student.export import is_exported, load_exported

        if is_exported(path):
            return Student(load_exported(path, "auto", device, overrides=sets), device)
    return Student(_load(path, device, overrides=sets), device)
