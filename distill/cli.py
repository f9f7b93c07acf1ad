"""The `distill` command line: a thin typer layer over the library. Each command loads config,
calls one library function and turns `DistillError` into exit code 2. Heavy imports (torch, Ray)
happen inside commands so that `--help` stays fast.

Exit codes: 0 done; 2 an error (one line on stderr, no traceback; -vv logs the traceback);
130 Ctrl-C and 143 SIGTERM (128 + the signal, as a shell reports it). SIGTERM stops a command
exactly as Ctrl-C does: everything a run committed stays, and it says how far it got."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from inspect import cleandoc
from pathlib import Path
from textwrap import dedent
from typing import Annotated, Any, NoReturn, TypeVar, get_args, get_origin

import typer
import typer.core

from distill import __version__, interrupts
from distill.errors import DistillError

__all__ = ["app", "main"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="distill",
    help="Distil vision foundation models into the Y-MAP-Net multi-task student.\n\n"
    "Teachers label COCO images (Ray stages) into Parquet shards; the student trains on them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
run_app = typer.Typer(
    help="The pipeline's jobs: label generation, student training (resumable, local or on Ray).",
    no_args_is_help=True,
)
config_app = typer.Typer(help="Show and check run configuration.", no_args_is_help=True)
data_app = typer.Typer(help="Check datasets and build the bundled demo set.", no_args_is_help=True)
teachers_app = typer.Typer(help="The teacher backends.", no_args_is_help=True)
app.add_typer(run_app, name="run")
app.add_typer(teachers_app, name="teachers")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

PresetOpt = Annotated[
    str | None,
    typer.Option("--preset", "-p", help="Named preset: 'paper' (the paper's models and settings) "
                 "or 'demo' (tiny offline models). Default: a config file's own, else 'paper'."),
]
ConfigOpt = Annotated[
    list[Path] | None,
    typer.Option("--config", "-c", help="TOML config file(s) applied over the preset, in order.",
                 exists=False, dir_okay=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one setting, e.g. --set train.epochs=10 "
                 "--set teachers.depth.batch_size=16 (`distill config show` lists them all). "
                 "Repeatable."),
]


def _fail(message: str) -> None:
    from distill.storage import redact_credentials

    typer.secho(f"error: {redact_credentials(message)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


# What the running command has done so far, said when it is interrupted (Ctrl-C, SIGTERM).
_progress_note: list[Callable[[], str]] = []
_said_interrupted = False  # whether the running command printed its "interrupted" line


def _interrupted(signum: int) -> NoReturn:
    """One line saying how far the command got, then exit 128 + the signal."""
    global _said_interrupted
    if not _said_interrupted:
        _said_interrupted = True
        note = ""
        with contextlib.suppress(Exception):
            note = "; ".join(f() for f in _progress_note)
        typer.secho("interrupted" + (" (SIGTERM)" if signum == signal.SIGTERM else "")
                    + (f": {note}" if note else ""), fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(code=interrupts.exit_code(signum))


def handles_errors(fn: F) -> F:
    """Turn the project's errors into a one-line message and exit code 2, and an interruption
    (Ctrl-C: 130, SIGTERM: 143; the first signal decides, `distill.interrupts`) into one line
    saying how far the command got."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _said_interrupted
        _progress_note.clear()
        _said_interrupted = False
        try:
            return fn(*args, **kwargs)
        except DistillError as exc:
            signum = interrupts.first_signal()
            if signum is not None:  # what the signal's KeyboardInterrupt became on its way
                logger.debug("stopped by a signal", exc_info=True)
                _interrupted(signum)
            logger.debug("command failed", exc_info=True)
            _fail(str(exc))
        except KeyboardInterrupt as exc:
            logger.debug("interrupted", exc_info=True)
            _interrupted(interrupts.signal_of(exc))

    return wrapper  # type: ignore[return-value]


def _shards_progress(out: str) -> Callable[[], str]:
    """The note of a label run: how many of its planned shards are committed."""

    def note() -> str:
        from distill.manifest import read_manifest
        from distill.runfolder import LabelRun

        try:
            manifest = read_manifest(LabelRun(out).manifest)
        except Exception:
            return "no plan was written yet; re-run the same command to start"
        done = sum(1 for e in manifest.shards if e.sha256)
        return (f"{done} of {len(manifest.shards)} shards committed; re-run the same command "
                "to resume")

    return note


def _version(value: bool) -> None:
    if value:
        typer.echo(f"distill {__version__}")
        raise typer.Exit()


# Libraries that log credentials at DEBUG: botocore every request's headers (the access key id
# in Authorization, X-Amz-Security-Token), s3transfer and boto3 call arguments, urllib3 the
# URLs (a presigned one carries a signature and a token). They stay at INFO, also at -vv.
_SECRETS_AT_DEBUG = ("botocore", "boto3", "s3transfer", "urllib3")


class _LogFormat(logging.Formatter):
    """The console's log lines, with any credentials of a URI in them (a message or a
    traceback that quotes a URI a user gave) replaced by `***`."""

    def format(self, record: logging.LogRecord) -> str:
        from distill.storage import redact_credentials

        return redact_credentials(super().format(record))


@app.callback()
def _root(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")
    ] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormat("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    for name in _SECRETS_AT_DEBUG:
        logging.getLogger(name).setLevel(max(level, logging.INFO))


def _parse_ids(text: str | None, option: str = "--image-ids") -> list[int] | None:
    """`--image-ids 139,285,632` or `--image-ids @ids.txt` (whitespace/comma separated)."""
    if text is None:
        return None
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise DistillError(f"cannot read {option} file {path}: {exc}") from exc
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        return [int(p) for p in parts]
    except ValueError as exc:
        raise DistillError(f"{option} wants integers like 139,285 or @file.txt: {exc}") from exc


def _default_out(cfg: Any) -> str:
    return str(Path("runs") / cfg.preset / cfg.data.split)


OutOpt = Annotated[
    str | None,
    typer.Option("--out", "-o", help="Run folder (shards, manifest, quarantine, vocab, summary): "
                 "a path or a URI (s3://bucket/run). Default: runs/<preset>/<split>. Re-running "
                 "into the same folder resumes."),
]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", help="Join a Ray cluster: 'auto' (this machine is a node; "
                 "RAY_ADDRESS when set), 'host:port' or 'ray://head:10001'; what was joined is "
                 "printed. Default: start a private Ray on this machine (127.0.0.1), never a "
                 "running cluster."),
]


def _report_run(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    summary, plan = result.summary, result.plan
    console = Console(stderr=False)
    table = Table(title=f"generate-labels: {plan.run}", title_justify="left")
    for col in ("stage", "images", "compute s", "images/s per worker"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage, row in summary["stages"].items():
        rate = row["images_per_second"]
        table.add_row(stage, str(row["images"]), f"{row['seconds']:.1f}",
                      f"{rate:.2f}" if rate else "-")
    console.print(table)
    images = summary["images"]
    run = summary["this_invocation"]
    typer.echo(
        f"this run: {run['images_processed']} images in {run['seconds']:.1f} s"
        + (f" ({run['images_per_second']:.2f} images/s)" if run["images_per_second"] else "")
        + f", {run['shards_written']} shard(s) written, {run['shards_skipped']} already complete"
    )
    typer.echo(f"run folder: {images['written']} images in {summary['shards']['complete']}/"
               f"{summary['shards']['planned']} shards, {images['quarantined']} quarantined, "
               f"{summary['bytes']['total'] / 1e6:.1f} MB")
    for reason, n in list(summary["quarantine"].items())[:8]:
        typer.echo(f"  quarantined {reason}: {n}")
    if images["quarantined"]:
        typer.echo(f"  details: {plan.run.quarantine}; after fixing, "
                   f"`distill run retry-failed {plan.run}` re-runs only those")
    typer.echo(f"shards: {plan.run.shards}   summary: {plan.run.summary}")
    if result.ray_logs:
        typer.echo(f"Ray's logs: {result.ray_logs} (-v shows them on the console)")


def _report_dry_run(plan: Any, est: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from distill.progress import format_duration

    m = plan.manifest
    planned = sum(len(e.image_ids) for e in m.shards)
    kinds: dict[str, int] = {}
    for job in plan.jobs:
        kinds[job.kind] = kinds.get(job.kind, 0) + 1
    typer.echo(f"plan for {plan.run} (label fingerprint {m.fingerprint}, split {m.split})")
    typer.echo(f"  images planned: {planned} in {len(m.shards)} shard(s) of up to "
               f"{m.shard_size}; teachers: {', '.join(plan.roles)}")
    typer.echo(f"  complete: {len(plan.skipped)} shard(s); to do: "
               + (", ".join(f"{n} {k}" for k, n in kinds.items()) or "nothing")
               + f" ({plan.images_to_process} images)")
    for note in plan.notes:
        typer.echo(f"  note: {note}")
    if not plan.jobs:
        typer.echo(f"nothing to do: all {len(plan.skipped)} shard(s) of the {planned} planned "
                   "images are committed")
        return
    table = Table(title=f"estimate from {est.sample} timed image(s), in this process",
                  title_justify="left")
    for col in ("stage", "load s", "s/image", "workers", "projected"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage in plan.stage_names():
        per = est.seconds_per_image.get(stage)
        load = est.load_seconds.get(stage)
        table.add_row(
            stage, f"{load:.1f}" if load is not None else "",
            f"{per:.3f}" if per is not None else f"[red]{est.errors.get(stage, '-')[:70]}[/red]",
            str(est.concurrency.get(stage, "tasks")),
            format_duration(est.stage_seconds(stage)) if per is not None else "-",
        )
    Console().print(table)
    if est.bytes_per_image:
        pace = ("the stages follow one another in every worker (layout fused): their "
                "projected times add up" if est.layout == "fused" else
                "the slowest stage sets the pace once every pool is busy")
        typer.echo(f"  output: about {est.total_bytes / 1e6:.1f} MB "
                   f"({sum(est.bytes_per_image.values()) / 1e3:.0f} kB per image); {pace}")
    for stage, why in est.errors.items():
        typer.echo(f"  {stage} could not be timed: {why}")


_RUN_EPILOG = (
    "Exit codes: 0 done, 2 an error (one line on stderr), 130 Ctrl-C, 143 SIGTERM. Interrupted, "
    "a run says how many shards it committed; re-run the same command to resume. Without "
    "--address the run starts a private Ray on 127.0.0.1 and never joins a running cluster "
    "(RAY_ADDRESS included: --address auto joins that one)."
)


@run_app.command("generate-labels", epilog=_RUN_EPILOG)
@handles_errors
def run_generate_labels(
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    shard_size: Annotated[int | None, typer.Option(
        help="Images per shard (default: shards.shard_size, 1000).")] = None,
    limit: Annotated[int | None, typer.Option(
        help="Label only the first N images (by id) of the split. On an existing run: the "
        "run holds N images, a larger N adds the lowest ids it does not hold yet.")] = None,
    image_ids: Annotated[str | None, typer.Option(
        "--image-ids", help="Label only these ids: '139,285,632' or '@ids.txt'. On an "
        "existing run: every id it holds plus the new ones.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan and an estimate (time per teacher, bytes) from a "
        "short timed sample; write nothing.")] = False,
    sample: Annotated[int, typer.Option(
        help="Images to time for --dry-run.")] = 2,
    new_run: Annotated[bool, typer.Option(
        "--new-run", help="Start the run folder over (its shards, manifest and quarantine are "
        "removed) instead of resuming it; needed when the config changed.")] = False,
    address: AddressOpt = None,
    live: Annotated[bool | None, typer.Option(
        "--live/--no-live", help="Live progress table (default: when stderr is a terminal; "
        "otherwise a progress line every 10 s).")] = None,
) -> None:
    """Label a COCO split with the teachers into Parquet shards (resumable).

    Decode → one Ray actor pool per enabled teacher → post-processing (16-bit depth, normals,
    11-group masks, text masks, caption tokens) → shards written atomically. Re-run the same
    command after a crash to finish; enable another teacher and re-run to add only its labels;
    a larger --limit, a wider --image-ids or images new in the split add shards for the new
    images only.

    \b
    Examples:
      distill run generate-labels --preset demo
      distill run generate-labels --preset paper --set data.root=/data/coco \\
          --out /runs/coco-train
      distill run generate-labels --preset paper --limit 200 --dry-run
      distill run generate-labels -c mycluster.toml --address auto
    """
    from distill.config import load_config
    from pipelines.generate_labels import RunOptions, generate_labels, plan_run

    overrides = list(set_ or [])
    if shard_size is not None:
        overrides.append(f"shards.shard_size={shard_size}")
    cfg = load_config(preset, config, overrides)
    out = out or _default_out(cfg)
    if not dry_run:  # from here on, an interruption says how far the run got
        _progress_note.append(_shards_progress(out))
    options = RunOptions(
        out=out, limit=limit, image_ids=_parse_ids(image_ids),
        new_run=new_run, dry_run=dry_run, address=address, live=live,
        verbose=logging.getLogger().level <= logging.INFO,
    )
    if dry_run:
        from pipelines.estimate import estimate

        plan = plan_run(cfg, options)
        _report_dry_run(plan, estimate(plan, sample))
        return
    _report_run(generate_labels(cfg, options))


@run_app.command("retry-failed", epilog=_RUN_EPILOG)
@handles_errors
def run_retry_failed(
    out: Annotated[str, typer.Argument(help="The run folder of a generate-labels run (a path or "
                                     "a URI).")],
    set_: SetOpt = None,
    ids: Annotated[str | None, typer.Option(
        "--ids", help="Relabel these planned images instead of the quarantined ones: "
        "'139,285' or '@ids.txt' (e.g. committed images whose annotations changed).")] = None,
    address: AddressOpt = None,
    live: Annotated[bool | None, typer.Option("--live/--no-live")] = None,
) -> None:
    """Re-run only the quarantined samples of a run (after fixing the images, a teacher, or
    giving more memory), or with --ids the images named. Uses the run's own config.toml; --set
    may change runtime settings (batch sizes, devices, workers) but nothing that changes
    labels."""
    from distill.config import load_config
    from distill.runfolder import LabelRun
    from pipelines.generate_labels import RunOptions, generate_labels

    run = LabelRun(out)
    if not run.is_run() or not run.config.is_file():
        raise DistillError(f"{out} is not a generate-labels run folder (no manifest.json and "
                           "config.toml)")
    cfg = load_config(None, [run.config], list(set_ or []))
    options = RunOptions(out=out, retry_failed=True, retry_ids=_parse_ids(ids, "--ids"),
                         address=address, live=live,
                         verbose=logging.getLogger().level <= logging.INFO)
    _progress_note.append(_shards_progress(out))
    _report_run(generate_labels(cfg, options))


@run_app.command("train-student")
@handles_errors
def run_train_student(
    shards: Annotated[str, typer.Option(
        help="Label shards to train on: a generate-labels run folder, its shards/ folder, a "
        "glob or one shard; paths or URIs. All of one label run (one label fingerprint), "
        "unless --allow-mixed.")],
    val_shards: Annotated[str | None, typer.Option(
        help="Shards to validate on each epoch (early stopping watches their loss); any label "
        "run, e.g. another split's, scored with the training vocabulary.")] = None,
    vocab: Annotated[str | None, typer.Option(
        help="vocab.parquet of the token targets. Default: the label run's; for shards in no "
        "label run folder (or a run without one), or several runs with --allow-mixed, one "
        "rebuilt from the shards' caption tokens with labels.glove and labels.vocab_size.")] = None,
    allow_mixed: Annotated[bool, typer.Option(
        "--allow-mixed", help="Train on shards of several label runs (different label "
        "fingerprints or vocabularies), refused without it; their vocabulary is --vocab, or "
        "one rebuilt from all the shards' caption tokens.")] = False,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: train.epochs).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Samples per step and worker (default: train.batch_size).")] = None,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", help="Run folder: checkpoints/, metrics.jsonl, config.toml; a path or a "
        "URI. Default: runs/<preset>/student.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from OUT/checkpoints/last exactly where it stopped.")] = False,
    verify_shards: Annotated[bool, typer.Option(
        "--verify-shards", help="Before training, check every shard's sha256 against its label "
        "run's manifest; a shard that differs, or that no manifest records, is refused.")] = False,
    num_workers: Annotated[int, typer.Option(
        help="Ray Train workers (DDP). 0 trains in this process.")] = 0,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs per Ray Train worker.")] = 0.0,
    cpus_per_worker: Annotated[float, typer.Option(help="CPUs per Ray Train worker.")] = 1.0,
    device: Annotated[str, typer.Option(
        help="Local training device: auto (CUDA when present), cpu, cuda, cuda:1.")] = "auto",
    address: AddressOpt = None,
) -> None:
    """Train the Y-MAP-Net student on label shards (resumable; local or Ray Train).

    \b
    Examples:
      distill run train-student --preset demo --shards demo-data/run/shards
      distill run train-student -c paper-run.toml --shards /runs/coco-train \\
          --val-shards /runs/coco-val --out /runs/student \\
          --num-workers 4 --gpus-per-worker 1
      distill run train-student --preset demo --shards demo-data/run --resume
    """
    from distill.config import load_config
    from distill.runfolder import StudentRun
    from distill.student.train import TrainOptions, train_student

    overrides = list(set_ or [])
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    if batch_size is not None:
        overrides.append(f"train.batch_size={batch_size}")
    cfg = load_config(preset, config, overrides)
    options = TrainOptions(shards=shards, val_shards=val_shards, vocab=vocab,
                           out=out or str(Path("runs") / cfg.preset / "student"), resume=resume,
                           device=device, verify_shards=verify_shards, allow_mixed=allow_mixed)
    if num_workers > 0:
        from pipelines.train_student import train_on_ray

        metrics = train_on_ray(cfg, options, num_workers, gpus_per_worker, cpus_per_worker,
                               address)
        typer.echo(f"Ray Train finished: epoch {metrics.get('epoch')}, loss "
                   f"{metrics.get('loss')}; checkpoints in {StudentRun(options.out).checkpoint('last').parent}")
        return
    last = train_student(cfg, options)
    if last:
        joints = last["train"].get("hdm@0.1/joints")
        bad = sum(last.get("skipped_rows", {}).values())
        typer.echo(f"epoch {last['epoch']}: loss {last['train'].get('loss', float('nan')):.4f}"
                   + (f", HDM@0.1 joints {joints:.3f}" if joints is not None else "")
                   + (f", {bad} bad row(s) skipped (see the log)" if bad else ""))
    run = StudentRun(options.out)
    typer.echo(f"checkpoints: {run.checkpoint('last').parent}   metrics: {run.metrics}")


@config_app.command("show")
@handles_errors
def config_show(
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Print the resolved config as TOML (readable back with --config) and its fingerprint."""
    from distill.config import dump_toml, load_config

    cfg = load_config(preset, config, set_)
    labels = cfg.fingerprint(("data", "teachers", "labels", "shards"))
    typer.echo(f"# preset: {cfg.preset}")
    typer.echo(f"# fingerprint: {cfg.fingerprint()}  (labels: {labels})")
    typer.echo(dump_toml(cfg))


@config_app.command("presets")
def config_presets() -> None:
    """List the named presets."""
    from distill.config import available_presets

    for name in available_presets():
        typer.echo(name)


@data_app.command("check")
@handles_errors
def data_check(
    root: Annotated[str, typer.Argument(help="A COCO 2017 folder or a plain image folder (a path "
                                        "or a URI).")],
    split: Annotated[str, typer.Option(help="Split name, e.g. train2017 or val2017.")] = "val2017",
    decode: Annotated[bool, typer.Option(
        "--decode", help="Also decode every image, in this process, with the config's "
        "data.max_image_pixels and data.min_image_side, so that the count of usable images is "
        "what generate-labels will label.")] = False,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Read a dataset the way generate-labels will and summarise it: records, people,
    captions, every sample that would be quarantined, with its reason, and the annotation
    entries that are left out (no usable image id, a caption that is not text). With
    --decode, every image is decoded as generate-labels decodes it.

    \b
    Examples:
      distill data check /data/coco --split val2017
      distill data check /data/coco --split val2017 --decode \\
          --set data.max_image_pixels=200000000
    """
    import time
    from collections import Counter

    from distill.coco import open_dataset

    reader_log = logging.getLogger("distill.coco")
    level = reader_log.level
    reader_log.setLevel(logging.ERROR)  # its warning about left-out entries: they are listed below
    try:
        ds = open_dataset(root, split)
    finally:
        reader_log.setLevel(level)
    people = sum(len(r.persons) for r in ds.records)
    with_kp = sum(1 for r in ds.records for p in r.persons if p.num_keypoints > 0)
    captions = sum(len(r.captions) for r in ds.records)
    typer.echo(f"{ds.kind} dataset {ds.root} split {ds.split} (images in {ds.image_dir})")
    typer.echo(f"  images:   {len(ds.records)}")
    typer.echo(f"  persons:  {people} ({with_kp} with keypoints)")
    typer.echo(f"  captions: {captions}")
    typer.echo(f"  problems: {len(ds.problems)}")
    for kind, n in Counter(p.error_type for p in ds.problems).most_common():
        example = next(p for p in ds.problems if p.error_type == kind)
        typer.echo(f"    {kind}: {n}  e.g. image {example.image_id}: {example.message}")
    shown = 20
    if ds.dropped:
        kinds = ", ".join(f"{k} {n}" for k, n in
                          Counter(d.error_type for d in ds.dropped).most_common())
        typer.echo(f"  left out: {len(ds.dropped)} annotation entries ({kinds}); no image is "
                   "quarantined for them")
        for d in ds.dropped[:shown]:
            typer.echo(f"    {d.error_type}: {d.message}")
        if len(ds.dropped) > shown:
            typer.echo(f"    … and {len(ds.dropped) - shown} more")
    if not decode:
        typer.echo("  (images were not decoded: --decode decodes each one, as generate-labels "
                   "will)")
        return

    from distill.config import load_config
    from pipelines.stages import Item, decode_items

    data = load_config(preset, config, list(set_ or [])).data
    failures = []
    tty = sys.stderr.isatty()
    last = time.monotonic()
    with _bar(len(ds.records), "decode", "images", tty) as advance:
        for done, record in enumerate(ds.records, 1):
            item = Item(image_id=record.image_id, shard="", split=ds.split, roles=(),
                        file_name=record.file_name, record=record)
            decode_items([item], data)
            if item.failure is not None:
                failures.append(item.failure)
            advance(1)
            if not tty and (time.monotonic() - last >= 10 or done == len(ds.records)):
                typer.echo(f"decode: {done}/{len(ds.records)} images, {len(failures)} failed",
                           err=True)
                last = time.monotonic()
    good = len(ds.records) - len(failures)
    typer.echo(f"  decoded:  {good} of {len(ds.records)} images (data.max_image_pixels = "
               f"{data.max_image_pixels}, data.min_image_side = {data.min_image_side}); "
               f"{len(failures)} do not")
    for f in failures[:shown * 5]:
        typer.echo(f"    image {f.image_id} {f.file_name}: {f.error_type}: {f.message}")
    if len(failures) > shown * 5:
        typer.echo(f"    … and {len(failures) - shown * 5} more")
    typer.echo(f"  usable:   {good} images (what generate-labels will label)")


@data_app.command("make-demo")
@handles_errors
def data_make_demo(
    out: Annotated[Path, typer.Argument(help="Folder to write the COCO-format demo set into.")] = (
        Path("demo-data/coco")
    ),
) -> None:
    """Build a small COCO-format demo set (val2017) from scikit-image's bundled real photos."""
    from distill.demo import make_demo_dataset

    ds = make_demo_dataset(out)
    typer.echo(f"wrote {len(ds.records)} images with annotations to {out}")


@teachers_app.command("list")
def teachers_list() -> None:
    """List teacher backends per role, whether they can run here, and the paper's choice."""
    import importlib.util

    import torch

    from distill.config import TEACHER_BACKENDS, TeachersConfig

    paper = TeachersConfig().roles()
    cuda = torch.cuda.is_available()
    needs = {"detectron2": "detectron2", "dptext-detr": "adet", "craft": "easyocr_en_models"}
    # what each adapter imports first (detectron2's model zoo needs pkg_resources, for one)
    imports = {"detectron2": "detectron2.model_zoo", "adet": "adet.config"}
    typer.echo(f"{'role':<9} {'backend':<18} {'status':<34} paper default")
    broken: dict[str, str] = {}
    for role, names in TEACHER_BACKENDS.items():
        for name in names:
            module = needs.get(name)
            ok = module is None or importlib.util.find_spec(module) is not None
            status = "ready" if ok else f"needs `{module}` (not installed)"
            if name == "craft" and not ok:
                status = "ready with a weights path (no wheel)"
            elif ok and module in imports:
                try:  # installed is not enough: detectron2's own import can fail
                    importlib.import_module(imports[module])
                except Exception as exc:  # reported, whatever it is
                    broken[module] = f"{type(exc).__name__}: {exc}"
                    status = f"`{module}` installed, fails to import"
            if name == "dptext-detr" and status == "ready" and not cuda:
                status = "needs a CUDA GPU (none here)"  # no CPU deformable attention
            mark = paper[role].checkpoint if paper[role].backend == name else ""
            typer.echo(f"{role:<9} {name:<18} {status:<34} {mark}")
    for module, why in broken.items():
        hint = " (pip install 'setuptools<81')" if "pkg_resources" in why else ""
        typer.echo(f"{module}: {why}{hint}")


# ---------------------------------------------------------------------------------------------
# Seeing and judging results: evaluate, predict, show, inspect, audit

CheckpointOpt = Annotated[
    str,
    typer.Option("--checkpoint", "-k", help="A train-student run folder (its best checkpoint, "
                 "else last), a checkpoint folder, or its model.safetensors (predict: also a "
                 "file distill export wrote)."),
]
DeviceOpt = Annotated[
    str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:1.")]
VocabOpt = Annotated[
    str | None,
    typer.Option(help="vocab.parquet to decode tokens with (default: the student run's own)."),
]


@contextlib.contextmanager
def _bar(total: int, description: str, unit: str, enabled: bool = True) -> Iterator[
        Callable[[int], None]]:
    """A progress bar with done/total, rate and ETA (`distill.progress`); yields `advance(n)`."""
    from distill.progress import Progress

    with Progress(description, total, unit, enabled=enabled) as bar:
        yield bar.advance


def _device(name: str) -> str:
    from distill.student.train import resolve_device

    return str(resolve_device(name))


@run_app.command("evaluate")
@handles_errors
def run_evaluate(
    checkpoint: CheckpointOpt,
    shards: Annotated[str, typer.Option(
        help="Label shards to score on (a generate-labels run folder, its shards/ folder, a "
        "glob or one shard; paths or URIs); usually a held-out split.")],
    out: Annotated[str | None, typer.Option(
        "--out", "-o", help="JSON report (default: evaluation.json in the student run folder).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 16,
    limit: Annotated[int | None, typer.Option(
        min=1, help="Score only the first N rows (in file order when --workers 0).")] = None,
    pose: Annotated[bool, typer.Option(
        "--pose/--no-pose", help="Decode people and score COCO keypoint AP.")] = True,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader workers decoding shards.")
                       ] = 0,
    device: DeviceOpt = "auto",
    vocab: VocabOpt = None,
    set_: SetOpt = None,
) -> None:
    """Score a student against its teachers' labels: the paper's Table 2 (HDM at T = 0.1, 0.3,
    0.5, 0.8 and MSE per modality), cosine similarity per token position, and COCO keypoint AP
    (OKS) of the people decoded from its joints and PAFs.

    \b
    Examples:
      distill run evaluate --checkpoint demo-data/student --shards demo-data/run
      distill run evaluate -k /runs/student/checkpoints/best \\
          --shards /runs/coco-val/shards
    """
    import json

    from rich.console import Console

    from distill.runfolder import find_label_run, resolve_shards
    from distill.shards import open_shard
    from distill.storage import atomic_write_bytes
    from distill.student.evaluate import evaluate, format_evaluation, trained_on
    from distill.student.predict import load_student, run_folder

    dev = _device(device)
    student = load_student(checkpoint, dev, vocab=vocab, overrides=list(set_ or []))
    paths = resolve_shards(shards)  # the one discovery rule: run folder, shards/, glob, files
    labels = find_label_run(shards) or find_label_run(paths[0])
    seen = trained_on(run_folder(student.checkpoint), paths)
    if seen:  # scores on its own training data say little about the student
        shown = ", ".join(seen[:3]) + (" …" if len(seen) > 3 else "")
        typer.secho(f"warning: the student was trained on {len(seen)} of these {len(paths)} "
                    f"shard(s) ({shown}); scores on training data overstate it: evaluate on "
                    "held-out shards (another split's run)", fg=typer.colors.YELLOW, err=True)
    if student.vocab is None and vocab is None:  # as training found it: the labelling run's
        beside = labels.vocab if labels is not None else None
        if beside is not None and beside.is_file():
            student = load_student(checkpoint, dev, vocab=beside, overrides=list(set_ or []))
        else:
            logger.warning("no vocabulary for %s: token cosines are not scored", checkpoint)
    total = sum(open_shard(p).metadata.num_rows for p in paths)
    total = min(total, limit) if limit is not None else total
    with _bar(total, "evaluate", "images", sys.stderr.isatty()) as advance:
        report = evaluate(student.model, student.config, paths, vocab=student.vocab,
                          epoch=student.epoch, device=dev, batch_size=batch_size,
                          workers=workers, limit=limit, pose=pose, progress=advance)
    report = {"checkpoint": str(student.checkpoint), "shards": str(shards),
              "trained_on": seen, **report}
    path = out or run_folder(student.checkpoint).evaluation
    atomic_write_bytes(path, (json.dumps(report, indent=1) + "\n").encode())
    console = Console()
    for renderable in format_evaluation(report):
        console.print(renderable)
    typer.echo(f"report: {path}")


def _image_files(path: Path) -> list[Path]:
    from distill.coco import IMAGE_SUFFIXES

    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DistillError(f"{path} has no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    raise DistillError(f"{path} does not exist")


EngineOpt = Annotated[
    str, typer.Option(help="What runs the network: auto (a checkpoint: PyTorch; a file distill "
                      "export wrote: its runtime), torch, onnxruntime, torchscript.")]


def _load_for_predict(checkpoint: str, engine: str, dev: str, vocab: str | None,
                      set_: list[str] | None) -> Any:
    """A train-student checkpoint (PyTorch) or a file `distill export` wrote (ONNX Runtime,
    TorchScript), as `Predictor` takes it."""
    from distill.student.export import ENGINES, is_exported, load_exported
    from distill.student.predict import load_student

    if engine not in ENGINES:
        raise DistillError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine in ("onnxruntime", "torchscript") or is_exported(checkpoint):
        if not Path(checkpoint).is_file():
            raise DistillError(f"--engine {engine} runs a file distill export wrote; "
                               f"{checkpoint} is not a file (distill export --checkpoint "
                               f"{checkpoint} --format onnx --out student.onnx)")
        return load_exported(checkpoint, engine, dev, vocab=vocab, overrides=list(set_ or []))
    if Path(checkpoint).suffix.lower() in (".onnx", ".pt", ".ts") and Path(checkpoint).is_file():
        raise DistillError(f"{checkpoint} is not a student distill export wrote (no distill "
                           "metadata): refusing to run it")
    return load_student(checkpoint, dev, vocab=vocab, overrides=list(set_ or []))


def _fps_line(steps: dict[str, float]) -> str:
    return ", ".join(f"{k} {1e3 / v:.1f}" if v > 0 else f"{k} –" for k, v in steps.items())


@app.command("predict")
@handles_errors
def predict(
    checkpoint: CheckpointOpt,
    images: Annotated[Path | None, typer.Argument(
        help="An image file or a folder of images (turned as their EXIF orientation says, as "
        "a viewer shows them); or --video instead.")] = None,
    video: Annotated[Path | None, typer.Option(
        "--video", help="A video file (anything FFmpeg reads): writes <name>.annotated.mp4 "
        "(people and words drawn) and <name>.jsonl (one record per frame) into --out.")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder for <image>.png panels and predictions.json (a video: "
        "its annotated copy and JSON lines).")] = Path("predictions"),
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 1,
    refine: Annotated[bool, typer.Option(
        "--refine/--no-refine", help="Refine depth from the predicted normals (paper §3.2).")
    ] = True,
    sheets: Annotated[bool, typer.Option(
        "--sheets/--no-sheets", help="Draw a PNG panel per image (a video: write its annotated "
        "copy).")] = True,
    device: DeviceOpt = "auto",
    engine: EngineOpt = "auto",
    vocab: VocabOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run a trained student on images or a video: depth (refined from its normals), normals,
    text, class groups, people (joints + PAFs decoded) and caption words. Writes a PNG panel per
    image and predictions.json (people, words, timings), and reports frames per second, per
    step too. The checkpoint may be a file distill export wrote (ONNX, TorchScript): the same
    refinement and decoding run around its runtime. An input that cannot be read (an image, or
    a video cut short) is named and the others are still written, with exit code 2.

    \b
    Examples:
      distill predict demo-data/coco/val2017 --checkpoint demo-data/student \\
          --out demo-data/pred
      distill predict photo.jpg -k /runs/student --device cuda \\
          --set predict.refine_iterations=0
      distill predict photos/ --checkpoint student.onnx --out pred
      distill predict --video clip.mp4 --checkpoint student.onnx --out pred
    """
    import json
    import statistics
    import time

    import numpy as np
    from PIL import Image

    from distill.images import decode_image
    from distill.storage import atomic_write_bytes
    from distill.student.predict import Predictor, describe, make_out_folder, panel_paths
    from distill.viz import contact_sheet, one_line, save_sheet

    if (images is None) == (video is None):
        raise DistillError("pass images (a file or a folder) or --video FILE, one of the two")
    dev = _device(device)
    if video is not None:
        _predict_video(video, checkpoint, out, batch_size, refine, sheets, dev, engine, vocab,
                       set_)
        return
    assert images is not None
    files = _image_files(images)
    panels, kept = panel_paths(files, out)
    student = _load_for_predict(checkpoint, engine, dev, vocab, set_)
    # Maps come back at most 1024 px on a side (the panels are 320 px wide; a 12 MP photo at full
    # size would cost GBs); people and words are not affected.
    predictor = Predictor(student, dev, refine=refine, full_maps=sheets, display_max=1024)
    make_out_folder(out)
    size = student.config.student.input_size
    predictor.predict([np.zeros((size, size, 3), np.uint8)])  # warm-up: not timed
    records: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    predict_seconds = 0.0
    started = time.perf_counter()
    with _bar(len(files), "predict", "images", sys.stderr.isatty()) as advance:
        for k in range(0, len(files), batch_size):
            chunk, inputs, datas = [], [], []
            t0 = time.perf_counter()
            for f in files[k:k + batch_size]:
                try:
                    data = f.read_bytes()
                    # as training sees a plain folder's photo: upright, as a viewer shows it
                    inputs.extend(predictor.letterbox_encoded([data], exif_transpose=True))
                    chunk.append(f)
                    datas.append(data)
                except (DistillError, OSError) as exc:
                    failed.append({"image": str(f), "error": f"{type(exc).__name__}: {exc}"})
            results = predictor.predict_letterboxed(inputs)
            predict_seconds += time.perf_counter() - t0
            for f, data, result in zip(chunk, datas, results, strict=True):
                record = describe(result, str(f))
                if sheets:
                    wh = (result.labels.width, result.labels.height)
                    shown = decode_image(data, at_least=wh, exif_transpose=True)
                    if shown.shape[1::-1] != wh:
                        shown = np.asarray(Image.fromarray(shown).resize(
                            wh, Image.Resampling.BILINEAR))
                    sheet = contact_sheet(shown, result.labels, title=f"student: {f.name}")
                    panel = panels[f]
                    record["panel"] = str(panel)
                    save_sheet(sheet, panel)
                records.append(record)
            advance(len(files[k:k + batch_size]))
    wall = time.perf_counter() - started
    forward = sum(r["timings_ms"]["forward"] for r in records) / 1e3
    fps = {
        "model": round(len(records) / forward, 2) if forward else None,
        "predict": round(len(records) / predict_seconds, 2) if predict_seconds else None,
        "end_to_end": round(len(records) / wall, 2) if wall else None,
    }
    steps = {k: statistics.median(r["timings_ms"][k] for r in records)
             for k in (records[0]["timings_ms"] if records else {})}
    doc = {"checkpoint": str(student.checkpoint), "engine": predictor.engine.name,
           "device": dev, "batch_size": batch_size, "refine": refine,
           "frames_per_second": fps, "steps_ms": {k: round(v, 3) for k, v in steps.items()},
           "images": records, "failed": failed}
    atomic_write_bytes(out / "predictions.json", (json.dumps(doc, indent=1) + "\n").encode())
    if records:
        typer.echo(f"{len(records)} image(s) on {dev} ({predictor.engine.name}): "
                   f"{fps['model']} frames/s model only, {fps['predict']} with reading, "
                   f"letterboxing, refinement and decoding, {fps['end_to_end']} end to end "
                   "(reading, drawing and writing included)")
    if steps:
        typer.echo(f"  frames/s per step (medians): {_fps_line(steps)}")
    typer.echo(f"outputs: {out}/  (predictions.json" + (", <image>.png panels)" if sheets else ")"))
    if sheets and kept:
        typer.echo(f"  {len(kept)} panel(s) keep the image's extension ({kept[0]}.png): another "
                   "input has the same name without it, or a file distill did not write is there")
    for item in failed:
        typer.secho(f"{one_line(item['image'])}: {item['error']}",
                    fg=typer.colors.RED, err=True)
    if failed:  # the run is not what was asked for: say so in the exit code too
        raise DistillError(f"{len(failed)} of {len(files)} inputs could not be read (listed "
                           "above; predictions.json names them under \"failed\")")


def _predict_video(video: Path, checkpoint: str, out: Path, batch_size: int, refine: bool,
                   draw: bool, dev: str, engine: str, vocab: str | None,
                   set_: list[str] | None) -> None:
    import json

    from distill.storage import atomic_write_bytes
    from distill.student.predict import Predictor
    from distill.student.video import predict_video, video_frames, video_paths

    if not video.is_file():
        raise DistillError(f"--video {video} does not exist" if not video.exists() else
                           f"--video {video} is not a file")
    video_paths(video, out)  # refuse a foreign file before loading anything
    student = _load_for_predict(checkpoint, engine, dev, vocab, set_)
    predictor = Predictor(student, dev, refine=refine, full_maps=False, display_max=256)
    frames = video_frames(video)
    with _bar(frames or 0, "predict", "frames", sys.stderr.isatty() and frames > 0) as advance:
        summary = predict_video(predictor, video, out, batch_size=batch_size, draw=draw,
                                progress=advance)
    summary = {"checkpoint": str(student.checkpoint), "engine": predictor.engine.name,
               "device": dev, "refine": refine, **summary}
    atomic_write_bytes(out / f"{video.stem}.summary.json",
                       (json.dumps(summary, indent=1) + "\n").encode())
    fps = summary["frames_per_second"]
    typer.echo(f"{summary['frames']} frame(s) of {video} on {dev} ({predictor.engine.name}): "
               f"{fps['model']} frames/s model only, {fps['predict']} with letterboxing, "
               f"refinement and decoding, {fps['end_to_end']} end to end (decoding, drawing "
               "and encoding the video included)")
    typer.echo(f"  frames/s per step (medians): {_fps_line(summary['steps_ms'])}")
    typer.echo(f"outputs: {summary['jsonl']}" + (f", {summary['annotated']}" if draw else "")
               + f", {out / (video.stem + '.summary.json')}")
    if summary["cut_short"]:
        raise DistillError(f"{summary['cut_short']}; the outputs above hold the "
                           f"{summary['frames']} frame(s) before the cut")


@app.command("export")
@handles_errors
def export(
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="The file to write (atomically; a file distill did not export is "
        "never overwritten).")],
    format_: Annotated[str, typer.Option(
        "--format", "-f", help="onnx (ONNX Runtime, TensorRT, any ONNX runtime) or torchscript "
        "(libtorch, C++).")] = "onnx",
    fp16: Annotated[bool, typer.Option(
        "--fp16", help="Compute in float16 (float32 input and outputs); for GPUs. ONNX "
        "Runtime's CPU provider may not run it.")] = False,
    dynamic_batch: Annotated[bool, typer.Option(
        "--dynamic-batch", help="Any batch size (default: batch 1; predict runs a larger batch "
        "as several calls).")] = False,
    vocab: VocabOpt = None,
    set_: SetOpt = None,
) -> None:
    """Export a trained student to one self-contained file: ONNX (opset 18) or TorchScript. The
    file carries the student config, the output channel layout, the input size and
    normalisation, the vocabulary and the checkpoint's fingerprint, so that it runs alone
    (distill predict --checkpoint FILE). Before writing, the export runs on a check input and
    must match PyTorch within 1e-4 (2e-2 with --fp16), max absolute difference.

    \b
    Examples:
      distill export -k demo-data/student --format onnx --out student.onnx
      distill export -k /runs/student --format torchscript \\
          --dynamic-batch --out student.pt
      distill predict photo.jpg -k student.onnx --out pred
    """
    from distill.student.export import export_student

    meta = export_student(checkpoint, format_, out, fp16=fp16, dynamic_batch=dynamic_batch,
                          vocab=vocab, overrides=list(set_ or []))
    tol = meta["tolerance"]
    vocab_doc = meta.get("vocabulary")
    typer.echo(f"wrote {out} ({format_}, {meta['dtype']}, batch "
               f"{meta['batch'] or 'dynamic'}, input {meta['input']['size']}×"
               f"{meta['input']['size']}, {len(vocab_doc['words']) if vocab_doc else 0} "
               f"vocabulary words, {out.stat().st_size / 1e6:.1f} MB); max |difference| from "
               f"PyTorch {tol['measured_max_abs']:.2g} (tolerance {tol['max_abs']:g})")


@app.command("show")
@handles_errors
def show(
    shard: Annotated[str, typer.Argument(help="A label shard (.parquet), or a run folder / shards "
                                       "folder (rows counted across its shards in order).")],
    row: Annotated[int, typer.Option("--row", "-r", help="Row index in the shard(s).")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("show.png"),
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", "-k", help="Also run this student on the image and draw its output "
        "beside the teacher labels.")] = None,
    device: DeviceOpt = "auto",
    width: Annotated[int, typer.Option(min=96, help="Width of one panel in pixels.")] = 320,
    set_: SetOpt = None,
) -> None:
    """Draw one sample as a contact sheet: image, depth, normals, class groups (legend), text
    mask, joints and PAFs over the image, captions and tokens — the picture to look at before
    trusting a run. With --checkpoint, the student's prediction sits below each teacher panel.

    \b
    Examples:
      distill show demo-data/run/shards/val2017-00000.parquet --row 2 --out row2.png
      distill show SHARD --row 0 --checkpoint demo-data/student --out compare.png
    """
    from distill.shards import decode_row
    from distill.viz import read_row, row_warning, save_sheet, sheet_for_sample

    where, data = read_row(shard, row)
    sample = decode_row(data)
    compare = None
    if checkpoint is not None:
        from distill.student.predict import Predictor

        dev = _device(device)
        student = _load_for_predict(checkpoint, "auto", dev, None, set_)  # or an exported file
        compare = Predictor(student, dev).predict_encoded(
            [sample.image], exif_transpose=sample.exif_transpose)[0].labels
    warning = row_warning(shard, row)
    sheet = sheet_for_sample(sample, compare=compare, panel_width=width,
                             title=f"{where} · image {sample.image_id} "
                             f"({sample.file_name})", warning=warning)
    save_sheet(sheet, out)
    typer.echo(f"wrote {out} ({sheet.width}x{sheet.height})")
    if warning:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


@app.command("view")
@handles_errors
def view(
    run: Annotated[str, typer.Argument(help="A generate-labels run folder, a shards folder, a "
                                       "glob or one shard (a path or a URI).")],
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", "-k", help="A trained student: its outputs become layers beside the "
        "teachers', with each sample's HDM and token cosine.")] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = 8765,
    host: Annotated[str, typer.Option(
        help="Address to bind. 127.0.0.1 keeps the viewer on this machine; anything else "
        "lets others on the network read the run.")] = "127.0.0.1",
    device: DeviceOpt = "auto",
) -> None:
    """Browse a run in a web browser: a grid of samples (thumbnails, captions, badges) with
    filters and sorts, a sample page with toggleable label layers, a run page with per-stage
    rates, shard status and the quarantine. Read-only; pages a 118k-row run without loading it.

    \b
    Examples:
      distill view demo-data/run      # then open http://127.0.0.1:8765
      distill view s3://bucket/runs/coco -k demo-data/student --port 9000
      ssh -L 8765:127.0.0.1:8765 gpu-box distill view /runs/coco
    """
    import socket

    import uvicorn

    from distill.view import create_app

    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: serving on {host}: anyone who can reach this machine on port "
                    f"{port} can read the run (no authentication)", fg=typer.colors.YELLOW,
                    err=True)
    app = create_app(run, checkpoint=checkpoint, device=_device(device) if checkpoint else "cpu")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise DistillError(f"cannot serve on {host}:{port}: {exc.strerror or exc} "
                               "(pass another --port)") from None
    rows = app.state.view.total_rows()
    typer.echo(f"distill view: {run} ({rows:,} rows) at http://{host}:{port}/  (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@app.command("inspect")
@handles_errors
def inspect(
    path: Annotated[str, typer.Argument(
        help="A generate-labels run folder, a shards folder or one shard (a path or a URI).")],
    sample_rows: Annotated[int | None, typer.Option(
        min=1, help="Decode only the first N rows for the pixel statistics (default: all).")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the report as JSON.")] = None,
) -> None:
    """Summarise labels: schema, rows, shards done/pending, every teacher's provenance, the
    quarantine, and QA statistics (class-group pixel shares, empty-caption and empty-token
    rates, depth range, bytes per sample per column)."""
    import json

    from distill.inspect import format_inspect, inspect_path
    from distill.storage import atomic_write_bytes

    report = inspect_path(path, sample_rows=sample_rows)
    typer.echo(format_inspect(report))
    if json_out is not None:
        atomic_write_bytes(json_out, (json.dumps(report, indent=1, default=str) + "\n").encode())
        typer.echo(f"report: {json_out}")


@run_app.command("audit")
@handles_errors
def run_audit(
    out: Annotated[str, typer.Argument(help="A generate-labels run folder (a path or a URI).")],
    limit: Annotated[int | None, typer.Option(min=0, help="Audit only the first N rows.")
                     ] = None,
) -> None:
    """Measure the teachers against COCO ground truth where COCO has it: the panoptic teacher's
    Persons/Vehicles/Animals groups against the instance masks (IoU), the caption teacher's
    tokens against the five human captions. Writes OUT/audit.json and prints a table."""
    from distill.audit import audit_run, format_audit
    from distill.runfolder import LabelRun

    report = audit_run(out, limit=limit, progress=sys.stderr.isatty())
    typer.echo(format_audit(report))
    typer.echo(f"report: {LabelRun(out).audit}")


# ---------------------------------------------------------------------------------------------
# Help that reads well at any width


def _reflow(text: str | None) -> str | None:
    """A docstring's paragraphs as single lines, so that the terminal wraps them evenly; a
    paragraph opened by click's `\\b` (examples) keeps its lines as written."""
    if not text:
        return text
    return "\n\n".join(_verbatim(p) if p.startswith("\b") else " ".join(p.split())
                       for p in cleandoc(text).split("\n\n"))


def _verbatim(paragraph: str) -> str:
    """A `\\b` paragraph (a heading, then examples) with its marker dropped — typer's rich help
    keeps line breaks as written — and its lines under the heading flush left, continuations
    indented: typer strips a common indent only where another paragraph follows."""
    head, _, body = paragraph.removeprefix("\b\n").partition("\n")
    return f"{head}\n{dedent(body)}" if body else head


def _metavar(param: Any) -> str:
    """What an option's value is, in the words of a man page (N, PATH, KEY=VALUE)."""
    if isinstance(param, typer.core.TyperArgument):
        return param.name.upper() if param.name else "ARG"
    if param.name == "set_":
        return "KEY=VALUE"
    desc = param.type_descriptor
    kind = desc.annotation
    if desc.is_list or get_origin(kind) is list:
        kind = (get_args(kind) or (str,))[0]
    if kind is int:
        return "N"
    if kind is float:
        return "X"
    if desc.is_path or kind is Path:
        return "PATH"
    return "TEXT"


def tidy_help(command: Any) -> Any:
    """Every command's help as a reader wants it (tests/test_cli.py renders them all at 80
    and 120 columns): reflowed paragraphs, no value placeholder on a flag, and a man-page
    placeholder (N, PATH, KEY=VALUE) for a value."""
    command.help = _reflow(command.help)
    command.epilog = _reflow(command.epilog)
    made = command.get_help_option  # --help itself is made on first use: a flag too

    def help_option(ctx: Any) -> Any:
        option = made(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for param in command.params:
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
        elif param.metavar is None:
            param.metavar = _metavar(param)
        if isinstance(param, typer.core.TyperArgument):  # its name says it: no type column
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)
    return command


def cli() -> Any:
    """The whole command line as one click command, help tidied (`tidy_help`)."""
    return tidy_help(typer.main.get_command(app))


def main() -> None:
    """Console-script entry point. From its first instruction to its last, the first SIGINT or
    SIGTERM decides the exit code (130, 143), whatever became of its KeyboardInterrupt on the
    way (`distill.interrupts`): an interrupted command never exits 0."""
    interrupts.install()
    code: Any = 0
    try:
        try:
            cli()(prog_name="distill")
        finally:
            interrupts.stop_raising()
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:  # the first signal came after the command, before stop_raising
        code = 1
    except BaseException:
        if interrupts.first_signal() is None:
            raise
        logger.debug("stopped by a signal", exc_info=True)
    interrupts.ignore()
    signum = interrupts.first_signal()
    if signum is not None:
        with contextlib.suppress(typer.Exit):
            _interrupted(signum)
        code = interrupts.exit_code(signum)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
