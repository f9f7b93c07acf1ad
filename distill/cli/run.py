"""`distill run …`: generate-labels, retry-failed, train-student, evaluate, audit."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from distill.cli.exits import handles_errors, progress_notes
from distill.cli.groups import run_app
from distill.cli.options import (
    AddressOpt,
    CheckpointOpt,
    ConfigOpt,
    DeviceOpt,
    OutOpt,
    PresetOpt,
    SetOpt,
    VerifyShardsOpt,
    VocabOpt,
    default_out,
    parse_ids,
)

logger = logging.getLogger(__name__)


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
    table = Table(title=f"estimate from {est.sample} timed image(s), in this process, "
                  "timed after one warm-up pass on them",
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
    "Exit codes: 0 done, 1 an unexpected failure (a traceback: a bug to report), 2 an error "
    "(one line on stderr), 130 Ctrl-C, 143 SIGTERM. Interrupted, "
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
    verify_shards: VerifyShardsOpt = False,
    root: Annotated[str | None, typer.Option(
        "--root", help="The dataset folder (same as --set data.root=ROOT).")] = None,
    split: Annotated[str | None, typer.Option(
        "--split", help="The split to label, e.g. val2017 (same as --set data.split=SPLIT).")
    ] = None,
) -> None:
    """Label a COCO split with the teachers into Parquet shards (resumable).

    Decode → every enabled teacher → post-processing (16-bit depth, normals, 11-group masks,
    text masks, caption tokens) → shards written atomically. With no GPU teacher (ray.layout
    auto) each worker runs that whole chain on its blocks ("fused"); a teacher with num_gpus
    gets its own Ray actor pool ("pools"). Re-run the same
    command after a crash to finish; enable another teacher and re-run to add only its labels;
    a larger --limit, a wider --image-ids or images new in the split add shards for the new
    images only.

    \b
    Examples:
      distill run generate-labels --preset demo
      distill run generate-labels --preset paper --set data.root=/data/coco \\
          --out /runs/coco-train
      distill run generate-labels --preset paper --root /data/coco \\
          --split val2017 --set labels.glove=/data/glove.6B.300d.txt \\
          --limit 200 --dry-run
      distill run generate-labels -c mycluster.toml --address auto
    """
    from distill.config import load_config
    from pipelines.generate_labels import RunOptions, generate_labels, plan_run

    overrides = list(set_ or [])
    if shard_size is not None:
        overrides.append(f"shards.shard_size={shard_size}")
    overrides += [f"data.{k}={json.dumps(v)}" for k, v in (("root", root), ("split", split)) if v is not None]
    _say_default_preset(preset, config)
    cfg = load_config(preset, config, overrides)
    out = out or default_out(cfg)
    if not dry_run:  # from here on, an interruption says how far the run got
        progress_notes.append(_shards_progress(out))
    options = RunOptions(
        out=out, limit=limit, image_ids=parse_ids(image_ids),
        new_run=new_run, dry_run=dry_run, verify_shards=verify_shards, address=address,
        live=live, verbose=logging.getLogger().level <= logging.INFO,
    )
    if dry_run:
        from pipelines.estimate import estimate
        from pipelines.preflight import check_sources

        check_sources(cfg)
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
    verify_shards: VerifyShardsOpt = False,
) -> None:
    """Re-run only the quarantined samples of a run (after fixing the images, a teacher, or
    giving more memory), or with --ids the images named. Uses the run's own config.toml; --set
    may change runtime settings (batch sizes, devices, workers) but nothing that changes
    labels."""
    from distill.api_labels import run_config
    from pipelines.generate_labels import RunOptions, generate_labels

    cfg = run_config(out, list(set_ or []))
    options = RunOptions(out=out, retry_failed=True, retry_ids=parse_ids(ids, "--ids"),
                         verify_shards=verify_shards, address=address, live=live,
                         verbose=logging.getLogger().level <= logging.INFO)
    progress_notes.append(_shards_progress(out))
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
    ray_workers: Annotated[int, typer.Option(
        "--ray-workers", help="Ray Train workers (DDP). 0 trains in this process. (Not "
        "train.num_workers: DataLoader workers per training process.)")] = 0,
    old_num_workers: Annotated[int | None, typer.Option(
        "--num-workers", hidden=True, help="Renamed --ray-workers.")] = None,
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
          --ray-workers 4 --gpus-per-worker 1
      distill run train-student --preset demo --shards demo-data/run --resume
    """
    from distill.config import load_config
    from distill.runfolder import StudentRun
    from distill.student.epochlines import epoch_line
    from distill.student.train import TrainOptions, train_student

    if old_num_workers is not None:
        typer.secho("note: --num-workers is now --ray-workers (Ray Train workers); "
                    "train.num_workers is the DataLoader's", err=True)
        ray_workers = old_num_workers
    num_workers = ray_workers
    overrides = list(set_ or [])
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    if batch_size is not None:
        overrides.append(f"train.batch_size={batch_size}")
    _say_default_preset(preset, config)
    cfg = load_config(preset, config, overrides)
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        typer.echo(line)

    options = TrainOptions(shards=shards, val_shards=val_shards, vocab=vocab,
                           out=out or str(Path("runs") / cfg.preset / "student"), resume=resume,
                           device=device, verify_shards=verify_shards, allow_mixed=allow_mixed,
                           say=say if num_workers == 0 else None)
    if num_workers > 0:
        from pipelines.train_student import train_on_ray

        metrics = train_on_ray(cfg, options, num_workers, gpus_per_worker, cpus_per_worker,
                               address)
        typer.echo(f"Ray Train finished: epoch {metrics.get('epoch')}, loss "
                   f"{metrics.get('loss')}; checkpoints in {StudentRun(options.out).checkpoint('last').parent}")
        return
    last = train_student(cfg, options)
    if last and not said:  # resumed at or past train.epochs: no epoch ran
        typer.echo(epoch_line(last))
    run = StudentRun(options.out)
    typer.echo(f"checkpoints: {run.checkpoint('last').parent}   metrics: {run.metrics}")


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
    from rich.console import Console

    import distill
    from distill.student.evaluate import format_evaluation

    result = distill.evaluate(checkpoint, shards, out=out, batch_size=batch_size, limit=limit,
                              pose=pose, workers=workers, device=device, vocab=vocab,
                              overrides=list(set_ or []), progress=sys.stderr.isatty())
    seen = result.trained_on
    if seen:  # scores on its own training data say little about the student
        shown = ", ".join(seen[:3]) + (" …" if len(seen) > 3 else "")
        typer.secho(f"warning: the student was trained on {len(seen)} of these {result.shards} "
                    f"shard(s) ({shown}); scores on training data overstate it: evaluate on "
                    "held-out shards (another split's run)", fg=typer.colors.YELLOW, err=True)
    console = Console()
    for renderable in format_evaluation(result.report):
        console.print(renderable)
    typer.echo(f"report: {result.path}")


@run_app.command("audit")
@handles_errors
def run_audit(
    out: Annotated[str, typer.Argument(help="A generate-labels run folder (a path or a URI).")],
    limit: Annotated[int | None, typer.Option(min=0, help="Audit only the first N rows.")
                     ] = None,
    parts_gt: Annotated[str | None, typer.Option(
        "--parts-gt", help="CIHP (Category_ids/, Human_ids/) or MHP v2.0 (parsing_annos/) "
        "ground truth to score the parts teacher against: AP^p_50, AP^p_vol, PCP_50.")] = None,
) -> None:
    """Measure the teachers against COCO ground truth where COCO has it: the panoptic teacher's
    Persons/Vehicles/Animals groups against the instance masks (IoU), the caption teacher's
    tokens against the five human captions. Writes OUT/audit.json and prints a table."""
    import distill
    from distill.audit import format_audit
    from distill.runfolder import LabelRun

    report = distill.audit_run(out, limit=limit, progress=sys.stderr.isatty(), parts_gt=parts_gt)
    typer.echo(format_audit(report))
    typer.echo(f"report: {LabelRun(out).audit}")


def _say_default_preset(preset: str | None, files: list[Path] | None) -> None:
    """The first line of a run without a chosen preset: it runs `paper` (README "Presets")."""
    from distill.config import default_preset_note

    note = default_preset_note(preset, files)
    if note:
        logging.getLogger("distill").warning(note)
