"""`distill inspect OUT_OR_SHARD`: what a labelling run (or a folder of shards, or one shard)
holds, read mostly from Parquet footers. Local paths and URIs (`s3://…`) alike.

Which files are shards is `distill.runfolder`'s rule: a run folder's shards are those its
manifest records as committed (a user's own files in its shards folder are listed, not read);
any other folder's are its `*.parquet` files.

From footers alone (cheap at any size): the schema and whether it is distill's, rows in total and
per shard, compressed bytes per sample per column, and every teacher's provenance. From the run
folder: shards done and pending (the manifest) and the quarantine summary. From the data: QA
statistics (caption and token emptiness, depth range, people per image, text-pixel and class-group
pixel shares) over all rows or over the first `sample_rows` of them, because decoding the PNGs of
a big run is slow; the report says how many rows they cover (`distill.inspect_qa`).
`distill.inspect_format` writes the report as text.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from distill.errors import ShardError
from distill.inspect_qa import qa_statistics
from distill.manifest import Manifest, read_manifest, shard_is_complete
from distill.provenance import shards_random_weight_roles
from distill.quarantine import read_quarantine, summarise
from distill.runfolder import LabelRun, find_label_run, resolve_shards
from distill.shards import (
    footer_column_bytes,
    open_shard,
    optional_columns,
    read_metadata,
)
from distill.shards import schema as shard_schema
from distill.storage import Location

__all__ = ["inspect_path"]


# ---------------------------------------------------------------------------------------------
# Finding the shards


@dataclass
class _Target:
    """What was asked for: its kind, the shards folder, the shard files to read, and (for a
    run folder) the run and the files in its shards folder that are not committed shards."""

    kind: str  # "run" | "shards" | "shard"
    where: Location
    folder: Location
    files: list[Location]
    run: LabelRun | None = None
    others: list[str] = field(default_factory=list)


def _target(spec: str | os.PathLike[str] | Location) -> _Target:
    loc = Location(spec)
    if loc.is_file():
        return _Target("shard", loc, loc.parent, resolve_shards(loc))
    is_dir = loc.is_dir()
    run = find_label_run(loc) if is_dir else None
    if run is not None and run.root == loc:
        # The manifest says which files are shards; a run with none committed yet is still a
        # run to report on (its plan, its quarantine), so resolve_shards' "none yet" is not
        # raised here. One listing finds which committed shards are really there.
        listed = run.shards.files("*.parquet")
        committed = run.committed_shards()
        present, ours = set(listed), set(committed)
        return _Target("run", loc, run.shards, [s for s in committed if s in present], run,
                       [f.name for f in listed if f not in ours])
    files = resolve_shards(spec)  # a shards folder, a glob; errors name what was looked at
    folder = loc if is_dir else files[0].parent
    return _Target("shards", loc, folder, files)


# ---------------------------------------------------------------------------------------------
# Footers: rows, schema, bytes, provenance


def _schema_diff(schema: pa.Schema) -> list[str]:
    """How a shard's columns differ from distill's schema (names and types). A column added
    later (`optional_columns`) that a shard lacks is no difference: it opens and reads."""
    full, optional = shard_schema(None), optional_columns()
    out = []
    for f in full:
        if f.name not in schema.names:
            if f.name not in optional:
                out.append(f"missing column {f.name}")
        elif schema.field(f.name).type != f.type:
            out.append(f"{f.name} is {schema.field(f.name).type}, expected {f.type}")
    out += [f"extra column {n}" for n in schema.names if n not in full.names]
    return out


def _not_a_shard(footer: dict[str, Any]) -> bool:
    """A Parquet file that lacks a column every distill shard has (another table altogether,
    not a shard of an older or newer schema)."""
    return any(d.startswith("missing column") for d in footer["schema_diff"])


def _no_shards(target: _Target, footers: list[dict[str, Any]]) -> str:
    """One line: what was asked for is Parquet, but no label shard."""
    missing = [d.removeprefix("missing column ") for d in footers[0]["schema_diff"]
               if d.startswith("missing column")]
    lacks = ", ".join(missing[:4]) + (" …" if len(missing) > 4 else "")
    if target.kind == "shard":
        return (f"{target.where} is not a label shard: it is Parquet without distill's shard "
                f"columns ({lacks})")
    names = ", ".join(f["name"] for f in footers[:3]) + (" …" if len(footers) > 3 else "")
    return (f"{target.where} holds no label shards: its Parquet files ({names}) lack distill's "
            f"shard columns ({lacks})")


def _open_footer(loc: Location) -> tuple[pq.ParquetFile | None, str]:
    """The file's footer through `open_shard`; a Parquet file with another schema is opened
    anyway (to report how it differs), an unreadable one gives (None, why)."""
    try:
        return open_shard(loc), ""
    except ShardError as exc:
        why = str(exc)
    try:
        return pq.ParquetFile(loc.open_input()), ""
    except Exception:  # not Parquet at all, or gone: the shard error above says which
        return None, why


def _footer(loc: Location) -> dict[str, Any]:
    """One shard's footer facts; an unreadable file gives {"name", "path", "error"}."""
    pf, why = _open_footer(loc)
    if pf is None:
        return {"name": loc.name, "path": str(loc), "error": why}
    meta = pf.metadata
    schema = pf.schema_arrow
    columns = footer_column_bytes(meta)
    try:
        distill_meta = read_metadata(loc)
    except (ShardError, ValueError) as exc:
        distill_meta = {"error": str(exc)}
    return {
        "name": loc.name, "path": str(loc), "location": loc, "rows": meta.num_rows,
        "row_groups": meta.num_row_groups, "file_bytes": loc.size(),
        "schema": [(f.name, str(f.type)) for f in schema], "schema_diff": _schema_diff(schema),
        "column_bytes": columns, "metadata": distill_meta,
    }


def _provenance(footers: list[dict[str, Any]]) -> dict[str, Any]:
    """Every teacher's provenance over the shards: one entry per distinct provenance, with the
    shards that carry it (a run whose shards disagree shows it)."""
    teachers: dict[str, list[dict[str, Any]]] = {}
    fingerprints: Counter[str] = Counter()
    versions: dict[str, dict[str, Any]] = {}
    schema_versions: Counter[str] = Counter()
    for f in footers:
        meta = f.get("metadata") or {}
        if "fingerprint" in meta:
            fingerprints[str(meta["fingerprint"])] += 1
        if "schema_version" in meta:
            schema_versions[str(meta["schema_version"])] += 1
        if meta.get("versions"):
            versions.setdefault(json.dumps(meta["versions"], sort_keys=True), meta["versions"])
        for role, prov in sorted((meta.get("provenance") or {}).items()):
            entries = teachers.setdefault(role, [])
            for entry in entries:
                if entry["provenance"] == prov:
                    entry["shards"].append(f["name"])
                    break
            else:
                entries.append({"provenance": prov, "shards": [f["name"]]})
    return {
        "label_fingerprints": dict(fingerprints),
        "schema_versions": dict(schema_versions),
        "library_versions": list(versions.values()),
        "teachers": teachers,
        "shards_without_provenance": [f["name"] for f in footers
                                      if not (f.get("metadata") or {}).get("provenance")],
        # teachers with random weights (tiny / random variants): their labels test plumbing only
        "random_weights": shards_random_weight_roles(f.get("metadata") or {} for f in footers),
    }


# ---------------------------------------------------------------------------------------------
# Run folder: manifest and quarantine


def _roles(manifest: Manifest) -> list[str]:
    """The teachers the run enabled (disabled ones are `{"enabled": false}` in the manifest)."""
    teachers = manifest.config.get("teachers", {})
    return [r for r, t in teachers.items() if isinstance(t, dict) and t.get("enabled", True)]


def _progress(manifest: Manifest, run: LabelRun, footers: dict[str, dict[str, Any]],
              others: list[str], verify: bool) -> dict[str, Any]:
    """Planned shards, which are done (committed with every enabled teacher, the file's row
    count equal to the manifest's, and with `verify` its checksum too) and why the rest are
    pending; `others` are the files in the shards folder that are not committed shards."""
    roles = _roles(manifest)
    shards = []
    for entry in manifest.shards:
        footer = footers.get(entry.name)
        missing = [r for r in roles if entry.teachers.get(r) != "done"]
        if entry.sha256 is None or entry.rows is None:
            status, why = "pending", "not committed"
        elif footer is None:
            status, why = "pending", "committed but the file is missing"
        elif "error" in footer:
            status, why = "pending", "the file is unreadable"
        elif footer["rows"] != entry.rows:
            status, why = "pending", f"file has {footer['rows']} rows, manifest says {entry.rows}"
        elif missing:
            status, why = "pending", "teachers to add: " + ", ".join(missing)
        elif verify and not shard_is_complete(run.shard(entry.name), entry, verify=True):
            status, why = "pending", "checksum differs from the manifest"
        else:
            status, why = "done", ""
        shards.append({"name": entry.name, "status": status, "reason": why,
                       "planned_images": len(entry.image_ids), "rows": entry.rows,
                       "teachers_pending": missing})
    return {
        "split": manifest.split, "fingerprint": manifest.fingerprint, "teachers": roles,
        "shard_size": manifest.shard_size, "selection": manifest.selection,
        "extensions": manifest.extensions,
        "planned": len(manifest.shards),
        "done": sum(1 for s in shards if s["status"] == "done"),
        "pending": [s["name"] for s in shards if s["status"] != "done"],
        "planned_images": sum(len(e.image_ids) for e in manifest.shards),
        "checksums_verified": verify,
        "shards": shards,
        "other_files": sorted(others),
    }


def _quarantine(loc: Location) -> dict[str, Any] | None:
    if not loc.is_file():
        return None
    failures = read_quarantine(loc)
    return {
        "rows": len(failures),
        "images": len({f.image_id for f in failures}),
        "by_stage": dict(Counter(f.stage for f in failures).most_common()),
        "by_type": dict(Counter(f.error_type for f in failures).most_common()),
        "by_stage_type": summarise(failures),
        "by_reason": dict(Counter(f"{f.stage}/{f.error_type}: {f.message}"
                                  for f in failures).most_common()),
        "by_shard": dict(Counter(f.shard or "(no shard)" for f in failures).most_common()),
    }


# ---------------------------------------------------------------------------------------------
# The report


def inspect_path(path: str | os.PathLike[str] | Location, *, sample_rows: int | None = None,
                 verify_checksums: bool = False) -> dict[str, Any]:
    """Inspect a run folder, a folder of shards (or a glob) or one shard, local or a URI (see
    the module docstring).

    `sample_rows` limits the QA statistics to the first N rows (in shard order); everything
    else reads footers only. `verify_checksums` also hashes each done shard against the
    manifest (reads every byte)."""
    if sample_rows is not None and sample_rows < 0:
        raise ValueError(f"sample_rows must be >= 0, got {sample_rows}")
    target = _target(path)
    kind = target.kind
    footers = [_footer(p) for p in target.files]
    readable = [f for f in footers if "error" not in f]
    if kind == "shard" and not readable:
        raise ShardError(footers[0]["error"])
    if kind != "run" and readable and all(_not_a_shard(f) for f in readable):
        raise ShardError(_no_shards(target, readable))
    total = sum(f["rows"] for f in readable)
    column_bytes: dict[str, int] = {}
    for f in readable:
        for col, n in f["column_bytes"].items():
            column_bytes[col] = column_bytes.get(col, 0) + n
    first = readable[0] if readable else None
    report: dict[str, Any] = {
        "path": str(target.where),
        "kind": kind,
        "shards_folder": str(target.folder),
        "shards": [{k: f[k] for k in ("name", "rows", "row_groups", "file_bytes")}
                   | {"schema_matches": not f["schema_diff"]} if "error" not in f
                   else {"name": f["name"], "error": f["error"]} for f in footers],
        "rows": {"total": total, "per_shard": {f["name"]: f["rows"] for f in readable}},
        "schema": None if first is None else {
            "from": first["name"],
            "columns": dict(first["schema"]),
            "matches": not first["schema_diff"],
            "differences": first["schema_diff"],
            "shards_not_matching": [f["name"] for f in readable if f["schema_diff"]],
        },
        "bytes": {
            "total": sum(column_bytes.values()),
            "files": sum(f["file_bytes"] for f in readable),
            "per_column": column_bytes,
            "per_sample": {c: n / total for c, n in column_bytes.items()} if total else {},
        },
        "provenance": _provenance(readable),
        "progress": None,
        "quarantine": None,
        "files": None,
    }
    run = target.run
    if run is not None:
        report["files"] = {f.name: f.is_file() for f in
                           (run.config, run.manifest, run.quarantine, run.vocab, run.summary)}
        report["progress"] = _progress(read_manifest(run.manifest), run,
                                       {f["name"]: f for f in footers}, target.others,
                                       verify_checksums)
        report["quarantine"] = _quarantine(run.quarantine)
    good = [f["location"] for f in readable if not f["schema_diff"]]
    report["qa"] = qa_statistics(good, sample_rows)
    report["qa"]["shards_skipped"] = [f["name"] for f in footers
                                      if "error" in f or f.get("schema_diff")]
    return report
