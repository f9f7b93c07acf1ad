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
a big run is slow; the report says how many rows they cover.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distill.errors import ShardError
from distill.labels.groups import GROUP_NAMES
from distill.layers.registry import BUILTIN, layers
from distill.manifest import Manifest, read_manifest, shard_is_complete
from distill.provenance import (
    random_weights_warning,
    shards_random_weight_roles,
    unpinned_warning,
)
from distill.quarantine import read_quarantine, summarise
from distill.runfolder import LabelRun, find_label_run, resolve_shards
from distill.shards import (
    OPTIONAL_COLUMNS,
    SCHEMA,
    footer_column_bytes,
    open_shard,
    read_metadata,
)
from distill.storage import Location

__all__ = ["QA_COLUMNS", "format_inspect", "inspect_path"]

# Columns the QA statistics read.
QA_COLUMNS = ("width", "height", "depth_min", "depth_max", "teacher_captions", "tokens",
              "persons")


def _qa_columns() -> list[str]:
    """`QA_COLUMNS` and the columns every label layer's QA statistic reads."""
    return list(dict.fromkeys((*QA_COLUMNS, *(c for layer in layers()
                                              for c in layer.stat_columns))))


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
    """How a shard's columns differ from distill's SCHEMA (names and types). A column added
    later (`OPTIONAL_COLUMNS`) that an older shard lacks is no difference: it opens and reads."""
    out = []
    for f in SCHEMA:
        if f.name not in schema.names:
            if f.name not in OPTIONAL_COLUMNS:
                out.append(f"missing column {f.name}")
        elif schema.field(f.name).type != f.type:
            out.append(f"{f.name} is {schema.field(f.name).type}, expected {f.type}")
    out += [f"extra column {n}" for n in schema.names if n not in SCHEMA.names]
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
# QA statistics over the rows


def _iter_tables(paths: list[Location], columns: list[str],
                 limit: int | None) -> Iterator[pa.Table]:
    """Row groups of the shards (only `columns`), cut after `limit` rows in all."""
    left = limit
    for path in paths:
        if left is not None and left <= 0:
            return
        pf = open_shard(path)
        for g in range(pf.metadata.num_row_groups):
            if left is not None and left <= 0:
                return
            table = pf.read_row_group(g, columns=columns)
            if left is not None:
                table = table.slice(0, left)
                left -= table.num_rows
            yield table


def _range(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, np.float64)
    return {"min": float(arr.min()), "max": float(arr.max()), "mean": float(arr.mean())}


def _qa(paths: list[Location], sample_rows: int | None) -> dict[str, Any]:
    """Statistics over the first `sample_rows` rows (all when None), in shard order."""
    rows = 0
    caption_rows = empty_captions = empty_tokens = 0
    depth_min: list[float] = []
    depth_max: list[float] = []
    people: list[int] = []
    # Each label layer's QA figures, weighted by the pixels of the rows that have it.
    figures: dict[str, dict[str, float]] = {}  # layer → figure → sum of figure × pixels
    pixels: dict[str, int] = {}  # layer → pixels of its rows
    counted: dict[str, int] = {}  # layer → rows that have it
    stat_layers = [layer for layer in layers() if layer.stat_columns]
    for table in _iter_tables(paths, _qa_columns(), sample_rows):
        rows += table.num_rows
        captions = table.column("teacher_captions").to_pylist()
        tokens = table.column("tokens").to_pylist()
        for caps, toks in zip(captions, tokens, strict=True):
            if caps is None:  # the caption teacher did not run on this row
                continue
            caption_rows += 1
            empty_captions += not any(c and c.strip() for c in caps)
            empty_tokens += not toks
        lo = table.column("depth_min").to_pylist()
        hi = table.column("depth_max").to_pylist()
        depth_min += [v for v in lo if v is not None]
        depth_max += [v for v in hi if v is not None]
        people += pc.fill_null(pc.list_value_length(table.column("persons")), 0).to_pylist()
        sizes = [w * h for w, h in zip(table.column("width").to_pylist(),
                                       table.column("height").to_pylist(), strict=True)]
        for layer in stat_layers:
            columns = {c: table.column(c).to_pylist() for c in layer.stat_columns}
            for k, size in enumerate(sizes):
                stats = layer.statistics({c: v[k] for c, v in columns.items()})
                if stats is None:
                    continue
                counted[layer.name] = counted.get(layer.name, 0) + 1
                pixels[layer.name] = pixels.get(layer.name, 0) + size
                sums = figures.setdefault(layer.name, {})
                for name, value in stats.items():
                    sums[name] = sums.get(name, 0.0) + value * size

    def share(layer: str, name: str) -> float | None:
        total = pixels.get(layer, 0)
        return figures[layer].get(name, 0.0) / total if total else None

    people_arr = np.asarray(people, np.int64)
    return {
        "rows": rows,
        "sampled": sample_rows is not None,
        "captions": {
            "rows_with_caption_teacher": caption_rows,
            "empty_caption_rate": empty_captions / caption_rows if caption_rows else None,
            "empty_token_rate": empty_tokens / caption_rows if caption_rows else None,
            "empty_captions": empty_captions, "empty_tokens": empty_tokens,
        },
        "depth": {
            "rows_with_depth": len(depth_min),
            "fraction_with_depth": len(depth_min) / rows if rows else None,
            "depth_min": _range(depth_min), "depth_max": _range(depth_max),
        },
        "people": {
            "total": int(people_arr.sum()),
            "per_image": float(people_arr.mean()) if rows else None,
            "max": int(people_arr.max()) if rows else None,
            "images_with_people": int((people_arr > 0).sum()),
        },
        "pixels": {
            "rows": rows,
            "rows_with_groups": counted.get("groups", 0),
            "group_shares": {name: share("groups", f"group:{name}") for name in GROUP_NAMES},
            "no_class_group_share": share("groups", "no_class_share"),
            "rows_with_text": counted.get("text", 0),
            "text_share": share("text", "text_share"),
        },
        # every layer's QA figures over the rows that have it (a plug-in layer's included)
        "layers": {layer: {"rows": counted[layer],
                           **{name: share(layer, name) for name in sums}}
                   for layer, sums in figures.items()},
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
    report["qa"] = _qa(good, sample_rows)
    report["qa"]["shards_skipped"] = [f["name"] for f in footers
                                      if "error" in f or f.get("schema_diff")]
    return report


# ---------------------------------------------------------------------------------------------
# Text


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _teacher_line(role: str, prov: dict[str, Any], shards: int, of: int) -> str:
    weights = prov.get("weights_sha256") or {}
    w = ", ".join(f"{k} {v[:12]}" for k, v in sorted(weights.items())) or (
        "none recorded" if prov.get("variant") == "pretrained"
        else f"none: RANDOM init ({prov.get('variant', '?')} variant)")
    commit = prov.get("commit") or ""
    at = {"hub cache": f" (commit {commit[:12]}, not pinned)",
          "unresolved": " (commit unknown, not pinned)", "pinned": " (pinned)",
          "local path": " (local path, no commit)"}.get(prov.get("commit_source") or "", "")
    return (f"  {role:<9} {prov.get('backend', '?')} · {prov.get('variant', '?')} · checkpoint "
            f"{prov.get('checkpoint') or '-'} @ {prov.get('revision') or '-'}{at} · "
            f"{prov.get('dtype', '?')} on {prov.get('device', '?')} · weights {w}"
            + (f"  ({shards}/{of} shards)" if shards != of else ""))


def format_inspect(report: dict[str, Any]) -> str:
    """The report of `inspect_path` as plain text, one section per topic."""
    out: list[str] = []
    add = out.append
    kinds = {"run": "run folder", "shards": "folder of shards", "shard": "one shard"}
    add(f"{report['path']} ({kinds[report['kind']]})")
    warning = random_weights_warning(report["provenance"].get("random_weights", []))
    if warning:
        add(warning)
    rows = report["rows"]
    shards = report["shards"]
    add("")
    progress = report.get("progress")
    if progress:
        add(f"Shards: {progress['planned']} planned, {progress['done']} done, "
            f"{len(progress['pending'])} pending · split {progress['split']} · "
            f"{progress['planned_images']} images planned · teachers "
            f"{', '.join(progress['teachers']) or '-'}")
        for ext in progress.get("extensions", []):
            names = ext["shards"][0] + (f" … {ext['shards'][-1]}" if len(ext["shards"]) > 1
                                        else "")
            add(f"  grew {ext['at']}: +{ext['images']} images in {names}")
        status = {s["name"]: s for s in progress["shards"]}
    else:
        add(f"Shards: {len(shards)}")
        status = {}
    width = max([len(s["name"]) for s in shards] + [len(n) for n in status] + [10])
    for s in shards:
        st = status.get(s["name"])
        if "error" in s:
            add(f"  {s['name']:<{width}}  unreadable: {s['error']}")
            continue
        tag = "" if st is None else st["status"] + (f" ({st['reason']})" if st["reason"] else "")
        if progress and st is None:
            tag = "not in the manifest's plan"
        schema = "" if s["schema_matches"] else "  SCHEMA DIFFERS"
        add(f"  {s['name']:<{width}}  {s['rows']:>7} rows  {_size(s['file_bytes']):>10}  "
            f"{tag}{schema}".rstrip())
    for name, st in status.items():
        if name not in rows["per_shard"] and not any(s["name"] == name for s in shards):
            add(f"  {name:<{width}}  {'-':>7}       {'':>10}  {st['status']} ({st['reason']})")
    other = progress.get("other_files") if progress else None
    if other:
        shown = ", ".join(other[:8]) + (f" … ({len(other)} in all)" if len(other) > 8 else "")
        add(f"  not shards of this run (not committed by its manifest; not read): {shown}")
    add(f"Rows: {rows['total']} in {len(rows['per_shard'])} readable shard(s)")

    schema = report["schema"]
    add("")
    if schema is None:
        add("Schema: no readable shard")
    else:
        verdict = ("matches distill's shard schema" if schema["matches"]
                   else "DIFFERS from distill's shard schema: " + "; ".join(schema["differences"]))
        add(f"Schema (from {schema['from']}): {verdict}")
        if schema["shards_not_matching"]:
            add(f"  shards that differ: {', '.join(schema['shards_not_matching'])}")
        cw = max(len(c) for c in schema["columns"])
        for col, typ in schema["columns"].items():
            add(f"  {col:<{cw}}  {typ}")

    prov = report["provenance"]
    add("")
    fps = ", ".join(prov["label_fingerprints"]) or "none recorded"
    add(f"Teachers (from shard metadata) · label fingerprint {fps}")
    n_shards = len(rows["per_shard"])
    if not prov["teachers"]:
        add("  no teacher provenance recorded")
    for role, entries in prov["teachers"].items():
        for entry in entries:
            add(_teacher_line(role, entry["provenance"], len(entry["shards"]), n_shards))
            warning = unpinned_warning(role, entry["provenance"])
            if warning:
                add(f"    warning: {warning}")
    for versions in prov["library_versions"]:
        add("  libraries: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    if prov["shards_without_provenance"]:
        add(f"  no provenance in: {', '.join(prov['shards_without_provenance'])}")

    q = report.get("quarantine")
    if report["kind"] == "run":
        add("")
        if q is None:
            add("Quarantine: no quarantine file")
        elif not q["rows"]:
            add("Quarantine: empty")
        else:
            add(f"Quarantine: {q['rows']} failure(s) of {q['images']} image(s)")
            add("  by stage: " + ", ".join(f"{k} {v}" for k, v in q["by_stage"].items()))
            add("  by type:  " + ", ".join(f"{k} {v}" for k, v in q["by_type"].items()))
            add("  reasons:")
            for i, (reason, n) in enumerate(q["by_reason"].items()):
                if i == 10:
                    add(f"    … {len(q['by_reason']) - 10} more")
                    break
                add(f"    {n:>5} × {reason if len(reason) < 140 else reason[:139] + '…'}")

    qa = report["qa"]
    add("")
    cover = f"the first {qa['rows']} rows" if qa["sampled"] else f"all {qa['rows']} rows"
    add(f"QA statistics over {cover} (of {rows['total']})"
        + (f"; skipped shards: {', '.join(qa['shards_skipped'])}" if qa["shards_skipped"] else ""))
    c = qa["captions"]
    add(f"  captions: {c['rows_with_caption_teacher']} rows with the caption teacher · empty "
        f"caption {_pct(c['empty_caption_rate'])} · empty tokens {_pct(c['empty_token_rate'])}")
    d = qa["depth"]
    add(f"  depth: {d['rows_with_depth']} rows ({_pct(d['fraction_with_depth'])})")
    for key in ("depth_min", "depth_max"):
        r = d[key]
        if r:
            add(f"    {key}: min {_num(r['min'])} · max {_num(r['max'])} · mean {_num(r['mean'])}")
    p = qa["people"]
    add(f"  people per image: mean {_num(p['per_image'])} · max {p['max']} · "
        f"{p['images_with_people']} images with people · {p['total']} people")
    px = qa["pixels"]
    add(f"  text pixels: {_pct(px['text_share'])} (over {px['rows_with_text']} rows with a text "
        "label)")
    add(f"  class groups, share of pixels (over {px['rows_with_groups']} rows with groups; a "
        "pixel can be in a class group and Text):")
    for name, share in px["group_shares"].items():
        bar = "" if share is None else "█" * round(share * 40)
        add(f"    {name:<11} {_pct(share):>8}  {bar}")
    add(f"    {'(none)':<11} {_pct(px['no_class_group_share']):>8}  pixels in no class group")
    for layer, figures in qa.get("layers", {}).items():
        if layer in BUILTIN:  # reported above
            continue
        shown = ", ".join(f"{name} {_pct(v)}" for name, v in figures.items() if name != "rows")
        add(f"  {layer}: {shown} (over {figures['rows']} rows with it)")

    b = report["bytes"]
    add("")
    add(f"Bytes per sample (compressed column chunks ÷ {rows['total']} rows): "
        f"{_size(b['total'] / rows['total']) if rows['total'] else 'n/a'} in all")
    for col, n in sorted(b["per_sample"].items(), key=lambda kv: -kv[1]):
        add(f"  {col:<17} {_size(n):>10}")
    if report.get("files"):
        missing = [k for k, v in report["files"].items() if not v]
        add("")
        add("Run files: " + ("all present" if not missing else "missing " + ", ".join(missing)))
    return "\n".join(out)
