"""Contact sheets of one image's labels (`distill show SHARD --row i --out FILE.png`; SHARD may
also be a run folder or a shards folder, local or a URI, rows counted across its shards).

A sheet is a grid of panels, each with a caption bar above it: the image, then the panels the
label layers declare (`LabelLayer.sheet_panels`; the built-in ones: depth, normals, the class
groups with a legend, the text mask, people (joints and PAFs) and the words; a plug-in layer's
map), each drawn by its layer (`LabelLayer.draw_panel`). Every panel is always there: a modality
whose teacher did not run draws a "no <modality> label" panel, so sheets of different rows line
up. With `compare` (the student's prediction of the same image) each dense panel gets a second
row, teachers above and student below, and the bottom row shows both legends and both sets of
words.

Drawn with Pillow and numpy only (`distill.paint`). `sheet_layout` gives every panel's box, so a
caller (or a test) can find a region of the sheet without re-deriving the grid.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from distill.errors import LabelError, ShardError
from distill.layers.form import LabelledImage, from_sample
from distill.layers.registry import PanelSpec, get_layer, layers
from distill.paint import FG, MUTED, Painter, Panel, SheetLayout
from distill.provenance import random_weight_roles, random_weights_warning
from distill.runfolder import resolve_shards
from distill.shards import Sample, decode_row, open_shard, read_metadata
from distill.storage import Location, atomic_write_bytes

__all__ = [
    "COMPARE_PREFIX",
    "contact_sheet",
    "panel_boxes",
    "read_row",
    "row_warning",
    "save_sheet",
    "sheet_for_row",
    "sheet_for_sample",
    "sheet_layout",
]

# With `compare`, the student's panels are the teachers' keys behind COMPARE_PREFIX (its first
# column a `student_first` panel, the raw depth, when it has one).
COMPARE_PREFIX = "compare."
IMAGE = PanelSpec("image", "image", rank=0, compare_rank=0)  # the image itself, no layer's
_WARNING_BG = (170, 20, 30)


# ---------------------------------------------------------------------------------------------
# Layout


def _metrics(panel_width: int) -> tuple[int, int, int, int, int]:
    """(font size, line height, caption height, margin, gap) for a panel width."""
    size = max(10, round(panel_width / 22))
    line = size + max(3, size // 3)
    return size, line, size + 10, max(8, size - 2), max(6, size * 2 // 3)


def _panel_height(width: int, height: int, panel_width: int) -> int:
    """Height of a dense panel: the image scaled to `panel_width`, at most 2× as tall as wide."""
    if width < 1 or height < 1:
        raise LabelError(f"labels have a non-positive size {width}x{height}")
    return max(1, min(round(height * panel_width / width), 2 * panel_width))


def _specs(labels: LabelledImage | None = None) -> list[tuple[PanelSpec, str]]:
    """Every panel the registered layers draw, with its layer's name (the image's: ""); with
    `labels`, less the `when_present` panels whose label they lack."""
    return [(IMAGE, ""), *((spec, layer.name) for layer in layers()
                           for spec in layer.sheet_panels()
                           if not (spec.when_present and labels is not None
                                   and _absent(labels, spec)))]


def _absent(labels: LabelledImage, spec: PanelSpec) -> bool:
    """Whether `labels` lack a `when_present` panel's label: its `field`, or (no field) the
    `layers` entry under its key."""
    return (getattr(labels, spec.field) if spec.field else labels.layers.get(spec.key)) is None


# (key, kind, layer, row, column, grid row, column span)
_Slot = tuple[str, str, str, str, int, int, int]


def _single_slots(ncols: int, labels: LabelledImage) -> tuple[list[_Slot], list[bool]]:
    """One labels' panels in `rank` order, `ncols` to a grid row; whether each grid row holds
    text."""
    specs = sorted(((s, n) for s, n in _specs(labels) if not s.student_first),
                   key=lambda p: p[0].rank)
    slots: list[_Slot] = []
    texty: list[bool] = []
    for i, (spec, name) in enumerate(specs):
        if i % ncols == 0:
            texty.append(False)
        texty[-1] |= not spec.dense
        slots.append((spec.key, spec.key, name, "labels", i % ncols, i // ncols, 1))
    return slots, texty


def _compare_slots(ncols: int, labels: LabelledImage,
                   compare: LabelledImage) -> tuple[list[_Slot], list[bool]]:
    """The teachers' first `ncols` dense panels (`compare_rank` order) above the student's, the
    text panels of both in one row, then the other dense panels (plug-ins'), teachers' beside
    the student's."""
    specs = sorted(_specs(labels), key=lambda p: p[0].compare_rank)
    dense = [(s, n) for s, n in specs if s.dense and not s.student_first]
    first = next(((s, n) for s, n in specs if s.student_first
                  and getattr(compare, s.field) is not None), dense[0])
    slots: list[_Slot] = [(s.key, s.key, n, "labels", c, 0, 1)
                          for c, (s, n) in enumerate(dense[:ncols])]
    slots += [(COMPARE_PREFIX + s.key, s.key, n, "compare", c, 1, 1)
              for c, (s, n) in enumerate([first, *dense[1:ncols]])]
    col = 0
    for spec, name in ((s, n) for s, n in specs if not s.dense):
        slots.append((spec.key, spec.key, name, "labels", col, 2, spec.span))
        slots.append((COMPARE_PREFIX + spec.key, spec.key, name, "compare", col + spec.span, 2,
                      spec.span))
        col += 2 * spec.span
    texty = [False, False, True]
    extra = dense[ncols:]
    for k in range(0, len(extra), ncols // 2):  # rows of plug-in panels
        chunk = extra[k:k + ncols // 2]
        slots += [(s.key, s.key, n, "labels", c, len(texty), 1) for c, (s, n) in enumerate(chunk)]
        slots += [(COMPARE_PREFIX + s.key, s.key, n, "compare", len(chunk) + c, len(texty), 1)
                  for c, (s, n) in enumerate(chunk)]
        texty.append(False)
    return slots, texty


def sheet_layout(labels: LabelledImage, *, compare: LabelledImage | None = None,
                 panel_width: int = 320, banner: bool = False) -> SheetLayout:
    """Where each panel of `contact_sheet(…, labels, compare=compare, panel_width=…)` goes;
    `banner` makes room for a warning line under the title (`contact_sheet(warning=…)`).

    Without `compare`: 4 columns (image, depth, normals, text / people, groups, legend, words /
    plug-in layers). With it: 6 columns, teachers' dense panels, the student's below them (its
    first column is its raw depth, or the image when it has none), then legends and words, then
    plug-in layers.
    """
    if panel_width < 64:
        raise ValueError(f"panel_width must be >= 64 pixels, got {panel_width}")
    font, line, cap, margin, gap = _metrics(panel_width)
    ph = _panel_height(labels.width, labels.height, panel_width)
    text_h = max(ph, 12 * line + 2 * margin)  # legend / words rows: at least 12 lines
    pw = panel_width
    title_h = font + 16
    banner_h = font + 14 if banner else 0
    ncols = 4 if compare is None else 6
    slots, texty = (_single_slots(ncols, labels) if compare is None
                    else _compare_slots(ncols, labels, compare))
    row_heights = [text_h if t else ph for t in texty]
    width = 2 * margin + ncols * pw + (ncols - 1) * gap
    tops = []
    y = margin + title_h + gap + (banner_h + gap if banner else 0)
    for h in row_heights:
        tops.append(y)
        y += cap + h + gap
    height = y - gap + margin
    dense = {s.key: s.dense for s, _ in _specs()}
    panels = []
    for key, kind, layer, row, col, grid_row, span in slots:
        left = margin + col * (pw + gap)
        right = left + span * pw + (span - 1) * gap
        top = tops[grid_row]
        bottom = top + cap + (ph if dense[kind] else row_heights[grid_row])
        panels.append(Panel(key, kind, row, (left, top + cap, right, bottom),
                            (left, top, right, top + cap), layer))
    return SheetLayout(
        size=(width, height), panels=panels, font_size=font,
        title_box=(margin, margin, width - margin, margin + title_h),
        boxes={p.key: p.box for p in panels},
        banner_box=((margin, margin + title_h + gap, width - margin,
                     margin + title_h + gap + banner_h) if banner else None),
    )


def panel_boxes(labels: LabelledImage, *, compare: LabelledImage | None = None,
                panel_width: int = 320) -> dict[str, tuple[int, int, int, int]]:
    """Each panel's content box (left, top, right, bottom) in the sheet, by panel key."""
    return sheet_layout(labels, compare=compare, panel_width=panel_width).boxes


# ---------------------------------------------------------------------------------------------
# Drawing


def contact_sheet(image_rgb: np.ndarray, labels: LabelledImage, *,
                  compare: LabelledImage | None = None, title: str = "",
                  panel_width: int = 320, warning: str = "") -> Image.Image:
    """One image's labels as a contact sheet (see the module docstring and `sheet_layout`).

    `image_rgb` is the (H, W, 3) uint8 image at the labels' resolution; `compare` is a second
    `LabelledImage` of the same image (the student's prediction), drawn below the first. A
    `warning` (such as `distill.provenance.random_weights_warning`) is drawn as a red banner
    under the title.
    """
    image_rgb = np.asarray(image_rgb)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise LabelError(f"the image must be (H, W, 3) uint8, got {image_rgb.dtype} "
                         f"{image_rgb.shape}")
    for other in (labels, compare):
        if other is not None and image_rgb.shape[:2] != (other.height, other.width):
            raise LabelError(
                f"the image is {image_rgb.shape[1]}x{image_rgb.shape[0]} but the {other.source} "
                f"labels are {other.width}x{other.height}; both must be at the original size")
    layout = sheet_layout(labels, compare=compare, panel_width=panel_width,
                          banner=bool(warning))
    painter = Painter(image_rgb, layout)
    _title(painter, labels, compare, title)
    if warning:
        _banner(painter, warning)
    for panel in layout.panels:
        lab = labels if panel.row == "labels" else compare
        assert lab is not None
        if not panel.layer:
            painter.caption(panel, "image", lab.source, prefix=False)
            painter.image(panel)
            continue
        layer = get_layer(panel.layer)
        caption, source, prefix = layer.panel_caption(panel.kind, lab, compare is not None)
        painter.caption(panel, caption, source, prefix=prefix)
        layer.draw_panel(panel.kind, painter, panel, lab)
    return painter.canvas


def _banner(painter: Painter, warning: str) -> None:
    """The warning line under the title: white on red, as wide as the sheet."""
    assert painter.layout.banner_box is not None
    left, top, right, bottom = painter.layout.banner_box
    painter.draw.rectangle(painter.layout.banner_box, fill=_WARNING_BG)
    painter.draw.text((left + 8, (top + bottom) / 2),
                      painter.fit_text(warning, painter.font, right - left - 16),
                      fill=(255, 255, 255), font=painter.font, anchor="lm")


def _title(painter: Painter, labels: LabelledImage, compare: LabelledImage | None,
           title: str) -> None:
    left, top, right, bottom = painter.layout.title_box
    info = f"{labels.width}x{labels.height} · {labels.source}"
    if compare is not None:
        info += f" (top) vs {compare.source} (bottom)"
    cy = (top + bottom) / 2
    painter.draw.text((right, cy), info, fill=MUTED, font=painter.font, anchor="rm")
    room = right - left - int(painter.draw.textlength(info, font=painter.font)) - 24
    if title:
        painter.draw.text((left, cy), painter.fit_text(title, painter.big, room), fill=FG,
                          font=painter.big, anchor="lm")


# ---------------------------------------------------------------------------------------------
# Shard rows


def read_row(shards: str | os.PathLike[str] | Location,
             row: int) -> tuple[str, dict[str, object]]:
    """Row `row` (0-based) of a shard — or of a run / shards folder (its committed shards, in
    run order; `distill.runfolder.resolve_shards`), counting rows across its shards — as
    (where: "SHARD-NAME row i", a dict of Python values), reading one row group. Local paths
    and URIs alike."""
    path, pf, local = _find_row(shards, row)
    first = 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if local < first + n:
            table = pf.read_row_group(g)
            rows: list[dict[str, object]] = table.slice(local - first, 1).to_pylist()
            return f"{path.name} row {local}", rows[0]
        first += n
    raise ShardError(f"shard {path}: row groups hold fewer rows than its footer says")


def _find_row(shards: str | os.PathLike[str] | Location,
              row: int) -> tuple[Location, pq.ParquetFile, int]:
    """The shard that holds row `row` of `shards` (as for `read_row`), its footer and the
    row's index in it."""
    files = resolve_shards(shards)
    if row < 0:
        raise ShardError(f"row {row} is out of range: rows are counted from 0")
    start = 0  # rows in the shards before this one
    for path in files:
        pf = open_shard(path)
        total = pf.metadata.num_rows
        if row < start + total:
            return path, pf, row - start
        start += total
    last = f"0..{start - 1}" if start else "none"
    raise ShardError(f"row {row} is out of range: {shards} has {start} rows (valid rows: {last})")


def row_warning(shards: str | os.PathLike[str] | Location, row: int) -> str:
    """The sheet's warning for row `row` of `shards`: which teachers of its shard had random
    weights (`distill.provenance`), or "" when all were pretrained."""
    path, _, _ = _find_row(shards, row)
    return random_weights_warning(random_weight_roles(read_metadata(path).get("provenance")
                                                      or {}))


def sheet_for_row(shards: str | os.PathLike[str] | Location, row: int, *,
                  compare: LabelledImage | None = None, title: str | None = None,
                  panel_width: int = 320) -> Image.Image:
    """The contact sheet of one row's teacher labels (and optionally a `compare`); `shards` as
    for `read_row`."""
    where, data = read_row(shards, row)
    sample = decode_row(data)
    if title is None:
        title = f"{sample.file_name} · image {sample.image_id} · {where}"
    return sheet_for_sample(sample, compare=compare, title=title, panel_width=panel_width,
                            warning=row_warning(shards, row))


def sheet_for_sample(sample: Sample, *, compare: LabelledImage | None = None, title: str = "",
                     panel_width: int = 320, warning: str = "") -> Image.Image:
    """The contact sheet of a decoded shard row's teacher labels (and optionally a
    `compare`; a `warning` banner as for `contact_sheet`)."""
    labelled = from_sample(sample)
    assert labelled.image is not None
    return contact_sheet(labelled.image, labelled, compare=compare, title=title,
                         panel_width=panel_width, warning=warning)


def save_sheet(sheet: Image.Image, out: str | Path | Location) -> Location:
    """Write a sheet as PNG, atomically (parent folders are created; a URI works too)."""
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=False)
    return atomic_write_bytes(out, buf.getvalue())

