"""Options several commands share (--preset, -c, --set, --out, --checkpoint, …) and what two
of them turn into: image ids (`--image-ids 139,285` or `@ids.txt`), a label run's default
folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from distill.errors import DistillError

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


def parse_ids(text: str | None, option: str = "--image-ids") -> list[int] | None:
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


def default_out(cfg: Any) -> str:
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

VerifyShardsOpt = Annotated[
    bool,
    typer.Option("--verify-shards", help="Hash every committed shard against the sha256 its "
                 "manifest records before trusting it (a resume otherwise checks its size and "
                 "footer and, on a local disk, that it is the file the commit wrote)."),
]


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
EngineOpt = Annotated[
    str, typer.Option(help="What runs the network: auto (a checkpoint: PyTorch; a file distill "
                      "export wrote: its runtime), torch, onnxruntime, torchscript.")]



_PATH_OPTIONS = ("--shards", "--val-shards")


def expanded_glob(argv: list[str]) -> str | None:
    """Why `argv` looks like the shell expanded an unquoted glob given to --shards (one value
    each, so click would only say "Got unexpected extra argument(s)"), or None."""
    for i, arg in enumerate(argv):
        name, _, inline = arg.partition("=")
        if name not in _PATH_OPTIONS:
            continue
        first = inline or (argv[i + 1] if i + 1 < len(argv) else "")
        rest = argv[i + 1 if inline else i + 2:]
        extra = 0
        for token in rest:
            if token.startswith("-") or Path(token).suffix != Path(first).suffix \
                    or not Path(token).is_file():
                break
            extra += 1
        if extra:
            return (f"{name} takes one value but got {extra + 1} paths: the shell expanded a "
                    f"glob; quote it (--shards '{Path(first).parent}/*{Path(first).suffix}') "
                    "or give the folder")
    return None
