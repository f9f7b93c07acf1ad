"""`distill inspect`'s report (`distill.inspect.inspect_path`) as plain text."""

from __future__ import annotations

from typing import Any

from distill.layers.registry import BUILTIN
from distill.provenance import random_weights_warning, unpinned_warning

__all__ = ["format_inspect"]

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
    t = p.get("teacher")
    if t and t["rows"]:
        by = " · ".join(f"{n} {source}" for source, n in t["by_box_source"].items())
        add(f"  pose teacher's people: {t['total']} on {t['rows']} rows (boxes: {by or 'none'})")
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
