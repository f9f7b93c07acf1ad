"""Contact sheets of one image's labels (`distill show SHARD --row i --out FILE.png`; SHARD may
also be a run folder or a shards folder, local or a URI, rows counted across its shards).

A sheet is a grid of panels, each with a caption bar above it: the image, depth, normals, the
class groups (with a legend), the text mask, people (joints and PAFs) and the words. Every panel
is always there: a modality whose teacher did not run draws a "no <modality> label" panel, so
sheets of different rows line up. With `compare` (the student's prediction of the same image)
each dense panel gets a second row, teachers above and student below, and the bottom row shows
both legends and both sets of words.

Drawn with Pillow and numpy only. `sheet_layout` gives every panel's box, so a caller (or a
test) can find a region of the sheet without re-deriving the grid.
"""

from __future__ import annotations

import colorsys
import io
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from distill.errors import LabelError, ShardError
from distill.images import decode_image
from distill.labels.keypoints import LIMBS, NUM_JOINTS, render_heatmaps, render_pafs
from distill.layers.registry import get_layer, plugin_layers
from distill.provenance import random_weight_roles, random_weights_warning
from distill.runfolder import resolve_shards
from distill.shards import Sample, decode_row, open_shard, read_metadata
from distill.storage import Location, atomic_write_bytes
from distill.student.labels import CLASS_GROUPS, Labels, labels_from_sample

__all__ = [
    "COMPARE_PREFIX",
    "GROUND_TRUTH",
    "GROUP_COLORS",
    "PANELS",
    "Panel",
    "SheetLayout",
    "contact_sheet",
    "depth_colormap",
    "draw_skeletons",
    "group_index",
    "group_shares",
    "one_line",
    "panel_boxes",
    "people_maps",
    "read_row",
    "resize_map",
    "row_warning",
    "save_sheet",
    "sheet_for_row",
    "sheet_for_sample",
    "sheet_layout",
]

# Panel names in drawing order; with `compare` the student's panels are these names behind
# COMPARE_PREFIX, plus "compare.depth_raw" (or "compare.image" when it has no raw depth).
PANELS: tuple[str, ...] = (
    "image", "depth", "normals", "groups", "text", "people", "legend", "words",
)  # fmt: skip
COMPARE_PREFIX = "compare."
DENSE_PANELS: tuple[str, ...] = ("image", "depth", "normals", "groups", "text", "people")

# One distinct colour per class group, CLASS_GROUPS order.
GROUP_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),  # Persons: red
    (0, 130, 200),  # Vehicles: blue
    (245, 130, 48),  # Animals: orange
    (255, 225, 25),  # Objects: yellow
    (145, 30, 180),  # Furniture: purple
    (70, 240, 240),  # Appliances: cyan
    (170, 110, 40),  # Materials: brown
    (240, 50, 230),  # Obstacles: magenta
    (0, 128, 128),  # Building: teal
    (60, 180, 75),  # Nature: green
)  # fmt: skip
TEXT_COLOR = (255, 214, 0)
HEAT_COLOR = np.array([255, 96, 0], np.float32)
PAF_COLOR = np.array([0, 200, 255], np.float32)

# Magma-like anchors: far (0) dark, near (1) bright.
_DEPTH_ANCHORS = np.array([
    (0, 0, 4), (59, 15, 112), (140, 41, 129), (222, 73, 104), (254, 159, 109), (252, 253, 191),
], np.float32)  # fmt: skip

_BACKGROUND = (24, 24, 28)
_PANEL_BG = (44, 44, 50)
_CAPTION_BG = {"teachers": (38, 58, 92), "student": (96, 58, 28)}
_CAPTION_BG_OTHER = (60, 60, 66)
_WARNING_BG = (170, 20, 30)
GROUND_TRUTH = "COCO ground truth"  # whose people a shard row holds
_FG = (235, 235, 235)
_MUTED = (160, 160, 168)
_THRESHOLD = 0.5  # a class-group or text probability above this counts as present

# Characters a line of drawn text cannot hold (Pillow refuses to measure a newline) or that show
# nothing: control characters, line and paragraph separators, lone surrogates (an undecodable
# byte in a file name).
_NOT_DRAWABLE = frozenset({"Cc", "Cs", "Zl", "Zp"})

_MISSING = {
    "depth": "no depth label", "normals": "no normals label", "groups": "no groups label",
    "text": "no text label", "people": "no joints label", "legend": "no groups label",
    "words": "no caption label", "depth_raw": "no raw depth label",
}  # fmt: skip


def one_line(text: str) -> str:
    """`text` as one line that draws (and prints) as what it is: control characters (a newline
    in a COCO file name), line separators and lone surrogates become their escapes (`\\n`,
    `\\x07`, `\\udcff`); every other character stays (a glyph the font lacks draws as a box)."""
    if not any(unicodedata.category(c) in _NOT_DRAWABLE for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(c) in _NOT_DRAWABLE else c for c in text)


# ---------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True)
class Panel:
    """One panel: its key, what it draws, whose labels, its content box and caption box
    (PIL boxes: left, top, right, bottom)."""

    key: str
    kind: str  # one of PANELS, or "depth_raw"
    row: str  # "labels" or "compare"
    box: tuple[int, int, int, int]
    caption_box: tuple[int, int, int, int]


@dataclass(frozen=True)
class SheetLayout:
    """Every panel of a sheet and the sheet's size."""

    size: tuple[int, int]
    panels: list[Panel]
    font_size: int
    title_box: tuple[int, int, int, int]
    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    banner_box: tuple[int, int, int, int] | None = None  # the warning line under the title


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


def sheet_layout(labels: Labels, *, compare: Labels | None = None,
                 panel_width: int = 320, banner: bool = False) -> SheetLayout:
    """Where each panel of `contact_sheet(…, labels, compare=compare, panel_width=…)` goes;
    `banner` makes room for a warning line under the title (`contact_sheet(warning=…)`).

    Without `compare`: 4 columns, two rows (image, depth, normals, text / people, groups,
    legend, words). With it: 6 columns, teachers' dense panels, the student's below them (its
    first column is its raw depth, or the image when it has none), then legends and words.
    """
    if panel_width < 64:
        raise ValueError(f"panel_width must be >= 64 pixels, got {panel_width}")
    font, line, cap, margin, gap = _metrics(panel_width)
    ph = _panel_height(labels.width, labels.height, panel_width)
    text_h = max(ph, 12 * line + 2 * margin)  # legend / words rows: at least 12 lines
    pw = panel_width
    title_h = font + 16
    banner_h = font + 14 if banner else 0
    # (key, kind, row, column, grid row, column span)
    slots: list[tuple[str, str, str, int, int, int]]
    if compare is None:
        ncols = 4
        slots = [
            ("image", "image", "labels", 0, 0, 1), ("depth", "depth", "labels", 1, 0, 1),
            ("normals", "normals", "labels", 2, 0, 1), ("text", "text", "labels", 3, 0, 1),
            ("people", "people", "labels", 0, 1, 1), ("groups", "groups", "labels", 1, 1, 1),
            ("legend", "legend", "labels", 2, 1, 1), ("words", "words", "labels", 3, 1, 1),
        ]  # fmt: skip
        row_heights = [ph, max(ph, text_h)]
        extra = _plugin_names()
        if extra:  # a row of plug-in label layers
            slots += [(n, f"layer:{n}", "labels", c, 2, 1) for c, n in enumerate(extra[:ncols])]
            row_heights.append(ph)
    else:
        ncols = 6
        first = "depth_raw" if compare.depth_raw is not None else "image"
        slots = [(name, name, "labels", c, 0, 1) for c, name in enumerate(DENSE_PANELS)]
        slots += [(COMPARE_PREFIX + (first if c == 0 else name), first if c == 0 else name,
                   "compare", c, 1, 1) for c, name in enumerate(DENSE_PANELS)]
        slots += [
            ("legend", "legend", "labels", 0, 2, 1),
            (COMPARE_PREFIX + "legend", "legend", "compare", 1, 2, 1),
            ("words", "words", "labels", 2, 2, 2),
            (COMPARE_PREFIX + "words", "words", "compare", 4, 2, 2),
        ]
        row_heights = [ph, ph, text_h]
        extra = _plugin_names()[: ncols // 2]
        if extra:  # a row of plug-in label layers: the teachers', then the student's
            slots += [(n, f"layer:{n}", "labels", c, 3, 1) for c, n in enumerate(extra)]
            slots += [(COMPARE_PREFIX + n, f"layer:{n}", "compare", len(extra) + c, 3, 1)
                      for c, n in enumerate(extra)]
            row_heights.append(ph)
    width = 2 * margin + ncols * pw + (ncols - 1) * gap
    tops = []
    y = margin + title_h + gap + (banner_h + gap if banner else 0)
    for h in row_heights:
        tops.append(y)
        y += cap + h + gap
    height = y - gap + margin
    panels = []
    for key, kind, row, col, grid_row, span in slots:
        left = margin + col * (pw + gap)
        right = left + span * pw + (span - 1) * gap
        top = tops[grid_row]
        dense = kind not in ("legend", "words")
        bottom = top + cap + (ph if dense else row_heights[grid_row])
        panels.append(Panel(key, kind, row, (left, top + cap, right, bottom),
                            (left, top, right, top + cap)))
    return SheetLayout(
        size=(width, height), panels=panels, font_size=font,
        title_box=(margin, margin, width - margin, margin + title_h),
        boxes={p.key: p.box for p in panels},
        banner_box=((margin, margin + title_h + gap, width - margin,
                     margin + title_h + gap + banner_h) if banner else None),
    )


def _plugin_names() -> list[str]:
    """The registered plug-in label layers, each drawn in a panel of its own."""
    return [layer.name for layer in plugin_layers()]


def panel_boxes(labels: Labels, *, compare: Labels | None = None,
                panel_width: int = 320) -> dict[str, tuple[int, int, int, int]]:
    """Each panel's content box (left, top, right, bottom) in the sheet, by panel key."""
    return sheet_layout(labels, compare=compare, panel_width=panel_width).boxes


# ---------------------------------------------------------------------------------------------
# Colour maps and overlays


def depth_colormap(depth: np.ndarray) -> np.ndarray:
    """(H, W) depth in [0, 1] (near = 1) → (H, W, 3) uint8, dark far and bright near."""
    d = np.nan_to_num(np.clip(depth.astype(np.float32), 0.0, 1.0), nan=0.0)
    pos = d * (len(_DEPTH_ANCHORS) - 1)
    lo = np.minimum(pos.astype(np.int64), len(_DEPTH_ANCHORS) - 2)
    t = (pos - lo)[..., None]
    rgb = _DEPTH_ANCHORS[lo] * (1.0 - t) + _DEPTH_ANCHORS[lo + 1] * t
    return np.rint(rgb).astype(np.uint8)


def resize_map(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a 2-D float map or an (H, W, 3) uint8 image to size = (width, height)."""
    if array.shape[1::-1] == size:
        return array
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if array.ndim == 2:
        img = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))  # mode "F"
        return np.asarray(img.resize(size, method), dtype=np.float32)
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(np.ascontiguousarray(array)).resize(size, method))


def _dim(rgb: np.ndarray, amount: float = 0.4) -> np.ndarray:
    """A dimmed grey copy of an image (float32), the backdrop of overlays."""
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat((grey * amount + 16.0)[..., None], 3, axis=2)


def _blend(base: np.ndarray, color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """base (H, W, 3) float, color (3,) or (H, W, 3), alpha (H, W) in [0, 1]."""
    a = np.clip(alpha, 0.0, 1.0)[..., None]
    return base * (1.0 - a) + np.asarray(color, np.float32) * a


def _u8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def group_index(groups: np.ndarray) -> np.ndarray:
    """(G, H, W) maps → (H, W) int: the first group present at each pixel, -1 for none."""
    present = groups > _THRESHOLD
    first = np.argmax(present, axis=0)
    return np.where(present.any(axis=0), first, -1)


def group_shares(groups: np.ndarray) -> list[float]:
    """Fraction of the image's pixels in each group (a pixel can be in several)."""
    present = groups > _THRESHOLD
    return [float(m.mean()) if m.size else 0.0 for m in present]


def _joint_colors() -> list[tuple[int, int, int]]:
    """One saturated hue per joint, round the colour wheel."""
    out = []
    for j in range(NUM_JOINTS):
        r, g, b = colorsys.hsv_to_rgb(j / NUM_JOINTS, 0.86, 1.0)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


_JOINT_COLORS = _joint_colors()


def people_maps(labels: Labels, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray,
                                                                   float, float]:
    """Joint heat and PAF strength (H, W) at `size` (width, height) and the opacity each is
    drawn with: the student's own maps, or faint renderings of ground-truth people."""
    w, h = size
    if labels.joints is not None or labels.pafs is not None:  # the student's maps
        heat = (resize_map(np.max(labels.joints, axis=0), size)
                if labels.joints is not None else np.zeros((h, w), np.float32))
        paf = (resize_map(np.max(np.abs(labels.pafs), axis=0), size)
               if labels.pafs is not None else np.zeros((h, w), np.float32))
        return heat, paf, 0.8, 0.6
    scale = w / labels.width
    scaled = np.asarray(labels.people, np.float32).reshape(-1, NUM_JOINTS, 3).copy()
    scaled[..., :2] *= scale
    heat = render_heatmaps(scaled, h, w, size=max(23.0 * scale, 5.0)).max(axis=0)
    paf = render_pafs(scaled, h, w, line_width=max(6.0 * scale, 2.0)).max(axis=0)
    return heat, paf, 0.45, 0.3


def draw_skeletons(draw: ImageDraw.ImageDraw, labels: Labels, size: tuple[int, int],
                   offset: tuple[int, int] = (0, 0)) -> int:
    """Draw each person's limbs and joints of `labels`, scaled to `size` (width, height) and
    placed at `offset`; returns the number of people."""
    w = size[0]
    scale = w / labels.width
    people = np.asarray(labels.people, np.float32).reshape(-1, NUM_JOINTS, 3)
    lw = max(2, round(w / 120))
    radius = max(2.5, w / 100)
    for person in people:
        pts = person[:, :2] * scale + offset
        seen = person[:, 2] > 0
        for k, (a, b) in enumerate(LIMBS):
            if seen[a] and seen[b]:
                color = _JOINT_COLORS[(3 * k) % NUM_JOINTS]
                draw.line([tuple(pts[a]), tuple(pts[b])], fill=color, width=lw)
        for j in np.flatnonzero(seen):
            x, y = pts[j]
            draw.ellipse((x - radius, y - radius, x + radius, y + radius),
                         fill=_JOINT_COLORS[j], outline=(0, 0, 0))
    return len(people)


# ---------------------------------------------------------------------------------------------
# Panels


class _Painter:
    """Draws one sheet: holds the canvas, fonts and the image at panel resolution."""

    def __init__(self, image_rgb: np.ndarray, layout: SheetLayout) -> None:
        self.layout = layout
        self.canvas = Image.new("RGB", layout.size, _BACKGROUND)
        self.draw = ImageDraw.Draw(self.canvas)
        size = layout.font_size
        self.font = ImageFont.load_default(size=size)
        self.small = ImageFont.load_default(size=max(9, size - 2))
        self.big = ImageFont.load_default(size=round(size * 1.25))
        self.line = size + max(3, size // 3)
        self.image_rgb = image_rgb
        self._scaled: dict[tuple[int, int], np.ndarray] = {}

    def image_at(self, size: tuple[int, int]) -> np.ndarray:
        if size not in self._scaled:
            self._scaled[size] = resize_map(self.image_rgb, size)
        return self._scaled[size]

    # -- frame ----------------------------------------------------------------------------

    def caption(self, panel: Panel, text: str, source: str, prefix: bool) -> None:
        bg = _CAPTION_BG.get(source, _CAPTION_BG_OTHER)
        self.draw.rectangle(panel.caption_box, fill=bg)
        left, top, right, bottom = panel.caption_box
        label = f"{source} · {text}" if prefix else text
        label = self._fit_text(label, self.font, right - left - 10)
        self.draw.text((left + 6, (top + bottom) / 2), label, fill=_FG, font=self.font,
                       anchor="lm")

    def paste(self, panel: Panel, rgb: np.ndarray) -> None:
        """Paste an (h, w, 3) picture into a panel's box, centred."""
        left, top, right, bottom = panel.box
        self.draw.rectangle(panel.box, fill=_PANEL_BG)
        h, w = rgb.shape[:2]
        x = left + (right - left - w) // 2
        y = top + (bottom - top - h) // 2
        self.canvas.paste(Image.fromarray(rgb), (x, y))

    def missing(self, panel: Panel, message: str) -> None:
        """The panel of a modality that has no label: hatched grey with a message."""
        left, top, right, bottom = panel.box
        w, h = right - left, bottom - top
        tile = Image.new("RGB", (w, h), _PANEL_BG)
        hatch = ImageDraw.Draw(tile)
        step = max(8, w // 16)
        for x in range(-h, w, step):
            hatch.line([(x, h), (x + h, 0)], fill=(56, 56, 62), width=1)
        self.canvas.paste(tile, (left, top))
        box = self.draw.textbbox((0, 0), message, font=self.big)
        tw, th = box[2] - box[0], box[3] - box[1]
        cx, cy = (left + right) / 2, (top + bottom) / 2
        self.draw.rectangle((cx - tw / 2 - 8, cy - th / 2 - 6, cx + tw / 2 + 8, cy + th / 2 + 6),
                            fill=(30, 30, 34))
        self.draw.text((cx, cy), message, fill=_MUTED, font=self.big, anchor="mm")

    def badge(self, panel: Panel, text: str) -> None:
        """A small label in the bottom-left corner of a panel."""
        left, _, _, bottom = self._content_box(panel)
        box = self.draw.textbbox((left + 6, bottom - 6), text, font=self.small, anchor="ld")
        self.draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(0, 0, 0))
        self.draw.text((left + 6, bottom - 6), text, fill=_FG, font=self.small, anchor="ld")

    def _content_box(self, panel: Panel) -> tuple[int, int, int, int]:
        """Where a picture of the panel's size sits (the box minus letterboxing)."""
        w, h = self.content_size(panel)
        left, top, right, bottom = panel.box
        x = left + (right - left - w) // 2
        y = top + (bottom - top - h) // 2
        return x, y, x + w, y + h

    def content_size(self, panel: Panel) -> tuple[int, int]:
        """(w, h) of the image scaled to fit the panel keeping its aspect."""
        left, top, right, bottom = panel.box
        iw, ih = self.image_rgb.shape[1], self.image_rgb.shape[0]
        scale = min((right - left) / iw, (bottom - top) / ih)
        return max(1, round(iw * scale)), max(1, round(ih * scale))

    # -- text -----------------------------------------------------------------------------

    def _fit_text(self, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
                  width: int) -> str:
        text = one_line(text)
        if self.draw.textlength(text, font=font) <= width:
            return text
        while text and self.draw.textlength(text + "…", font=font) > width:
            text = text[:-1]
        return text + "…"

    def wrap(self, text: str, width: int,
             font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> list[str]:
        """Greedy word wrap to a pixel width (over-long words are cut)."""
        lines: list[str] = []
        for paragraph in map(one_line, text.split("\n")):
            current = ""
            for word in (w for w in paragraph.split(" ") if w):
                candidate = f"{current} {word}".strip()
                if self.draw.textlength(candidate, font=font) <= width:
                    current = candidate
                    continue
                if current:
                    lines.append(current)
                current = self._fit_text(word, font, width)
            lines.append(current)
        return lines

    def text_block(self, panel: Panel, blocks: list[tuple[str, str]]) -> None:
        """Headings and wrapped paragraphs, cut with "…" when the panel is full."""
        left, top, right, bottom = panel.box
        self.draw.rectangle(panel.box, fill=_PANEL_BG)
        pad = max(6, self.layout.font_size // 2)
        width = right - left - 2 * pad
        y = top + pad
        lines: list[tuple[str, str]] = []  # (style, text)
        for heading, body in blocks:
            lines.append(("heading", heading))
            lines += [("body", t) for t in self.wrap(body, width - pad, self.font)]
            lines.append(("gap", ""))
        while lines and lines[-1][0] == "gap":
            lines.pop()
        room = max(1, (bottom - top - 2 * pad) // self.line)
        if len(lines) > room:
            lines = [*lines[:room - 1], ("body", "…")]
        for style, text in lines:
            if style == "heading":
                self.draw.text((left + pad, y), text, fill=_MUTED, font=self.small)
            elif style == "body":  # no-break spaces only steer the wrapping
                self.draw.text((left + 2 * pad, y), text.replace("\u00a0", " "), fill=_FG,
                               font=self.font)
            y += self.line if style != "gap" else self.line // 2

    # -- dense panels ---------------------------------------------------------------------

    def image(self, panel: Panel) -> None:
        self.paste(panel, self.image_at(self.content_size(panel)))

    def depth(self, panel: Panel, depth: np.ndarray | None, name: str = "depth") -> None:
        if depth is None:
            self.missing(panel, _MISSING[name])
            return
        size = self.content_size(panel)
        self.paste(panel, depth_colormap(resize_map(depth, size)))
        self.colorbar(panel)

    def colorbar(self, panel: Panel) -> None:
        """A small far → near colour bar in the bottom-left corner of a depth panel."""
        left, _, right, bottom = self._content_box(panel)
        bar_w = max(24, min(120, (right - left) // 3))
        bar_h = max(4, self.layout.font_size // 2)
        ramp = depth_colormap(np.tile(np.linspace(0.0, 1.0, bar_w, dtype=np.float32),
                                      (bar_h, 1)))
        far_w = int(self.draw.textlength("far", font=self.small))
        x, y = left + 6, bottom - 6 - bar_h
        box = (x - 3, y - 3, x + far_w + bar_w + 4 + 6
               + int(self.draw.textlength("near", font=self.small)) + 3, y + bar_h + 3)
        self.draw.rectangle(box, fill=(0, 0, 0))
        self.draw.text((x, y + bar_h / 2), "far", fill=_FG, font=self.small, anchor="lm")
        self.canvas.paste(Image.fromarray(ramp), (x + far_w + 4, y))
        self.draw.text((x + far_w + bar_w + 8, y + bar_h / 2), "near", fill=_FG,
                       font=self.small, anchor="lm")

    def normals(self, panel: Panel, normals: np.ndarray | None) -> None:
        if normals is None:
            self.missing(panel, _MISSING["normals"])
            return
        rgb = _u8((np.clip(normals, -1.0, 1.0) + 1.0) * 127.5)
        self.paste(panel, resize_map(rgb, self.content_size(panel)))

    def groups(self, panel: Panel, groups: np.ndarray | None) -> None:
        if groups is None:
            self.missing(panel, _MISSING["groups"])
            return
        size = self.content_size(panel)
        index = group_index(groups).astype(np.float32)
        index = resize_map(index, size, nearest=True).astype(np.int64)
        palette = np.array([*GROUP_COLORS, (0, 0, 0)], np.float32)
        base = _dim(self.image_at(size))
        rgb = _blend(base, palette[index], (index >= 0) * 0.65)
        self.paste(panel, _u8(rgb))

    def text(self, panel: Panel, text: np.ndarray | None) -> None:
        if text is None:
            self.missing(panel, _MISSING["text"])
            return
        size = self.content_size(panel)
        prob = resize_map(np.clip(text.astype(np.float32), 0.0, 1.0), size)
        rgb = _blend(_dim(self.image_at(size)), np.array(TEXT_COLOR, np.float32), prob * 0.85)
        self.paste(panel, _u8(rgb))
        share = float((text > _THRESHOLD).mean()) if text.size else 0.0
        self.badge(panel, f"text {100 * share:.1f} % of pixels")

    def layer(self, panel: Panel, name: str, maps: np.ndarray | None) -> None:
        """A plug-in label layer's first channel over the dimmed image, in its colour."""
        if maps is None:
            self.missing(panel, f"no {name} label")
            return
        size = self.content_size(panel)
        prob = resize_map(np.clip(maps[0].astype(np.float32), 0.0, 1.0), size)
        color = np.array(get_layer(name).color, np.float32)
        self.paste(panel, _u8(_blend(_dim(self.image_at(size)), color, prob * 0.85)))
        share = float((maps[0] > _THRESHOLD).mean()) if maps[0].size else 0.0
        self.badge(panel, f"{name} {100 * share:.1f} % of pixels")

    def people(self, panel: Panel, labels: Labels) -> None:
        size = self.content_size(panel)
        heat, paf, heat_alpha, paf_alpha = people_maps(labels, size)
        base = self.image_at(size).astype(np.float32) * 0.6
        rgb = _blend(base, PAF_COLOR, np.clip(paf, 0, 1) * paf_alpha)
        rgb = _blend(rgb, HEAT_COLOR, np.clip(heat, 0, 1) * heat_alpha)
        self.paste(panel, _u8(rgb))
        x0, y0, _, _ = self._content_box(panel)
        n = draw_skeletons(self.draw, labels, size, (x0, y0))
        self.badge(panel, f"{n} {'person' if n == 1 else 'people'}")

    # -- text panels ----------------------------------------------------------------------

    def legend(self, panel: Panel, groups: np.ndarray | None) -> None:
        if groups is None:
            self.missing(panel, _MISSING["legend"])
            return
        left, top, right, bottom = panel.box
        self.draw.rectangle(panel.box, fill=_PANEL_BG)
        pad = max(6, self.layout.font_size // 2)
        shares = group_shares(groups)
        present = [(k, s) for k, s in enumerate(shares) if s > 0]
        y = top + pad
        self.draw.text((left + pad, y), "share of pixels", fill=_MUTED, font=self.small)
        y += self.line
        if not present:
            self.draw.text((left + pad, y), "no class-group pixels", fill=_FG, font=self.font)
            return
        sw = self.layout.font_size
        total = sum(shares)
        # Groups are multi-label: a pixel counts in every group it is in, so the shares can
        # add up to more than 100 %; the note says so rather than leave a sum that looks wrong.
        note = (self.wrap(f"sum {100 * total:.0f} %: a pixel can be in several groups",
                          right - left - 2 * pad, self.small) if total > 1.0 + 1e-9 else [])
        for i, (k, share) in enumerate(present):
            if y + self.line * (1 + len(note)) > bottom - pad and i < len(present) - 1:
                self.draw.text((left + pad, y), "…", fill=_FG, font=self.font)
                y += self.line
                break
            self.draw.rectangle((left + pad, y + 1, left + pad + sw, y + 1 + sw),
                                fill=GROUP_COLORS[k], outline=(0, 0, 0))
            self.draw.text((left + 2 * pad + sw, y), CLASS_GROUPS[k], fill=_FG, font=self.font)
            self.draw.text((right - pad, y), f"{100 * share:.1f} %", fill=_FG, font=self.font,
                           anchor="ra")
            y += self.line
        for text in note:
            self.draw.text((left + pad, y), text, fill=_MUTED, font=self.small)
            y += self.line

    def words(self, panel: Panel, labels: Labels) -> None:
        blocks: list[tuple[str, str]] = []
        if labels.captions is not None:  # the caption teacher ran (perhaps saying nothing)
            many = len(labels.captions) > 1
            blocks.append(("captions" if many else "caption",
                           "\n".join(c if c.strip() else "(empty)" for c in labels.captions)
                           or "(empty)"))
        if labels.words or labels.captions is not None or labels.source == "student":
            heading = "tokens" if labels.source == "teachers" else "words"
            blocks.append((f"{heading} ({len(labels.words)})",
                           # a no-break space keeps each separator on its word's line
                           "\u00a0· ".join(labels.words) if labels.words else "(none)"))
        if not blocks:
            self.missing(panel, _MISSING["words"])
            return
        self.text_block(panel, blocks)


_CAPTIONS = {
    "image": "image", "depth": "depth (near = bright)", "depth_raw": "raw depth (unrefined)",
    "normals": "normals", "groups": "class groups", "text": "text mask",
    "people": "people: joints + PAFs", "legend": "class groups", "words": "caption + tokens",
}  # fmt: skip


def contact_sheet(image_rgb: np.ndarray, labels: Labels, *, compare: Labels | None = None,
                  title: str = "", panel_width: int = 320, warning: str = "") -> Image.Image:
    """One image's labels as a contact sheet (see the module docstring and `sheet_layout`).

    `image_rgb` is the (H, W, 3) uint8 image at the labels' resolution; `compare` is a second
    `Labels` of the same image (the student's prediction), drawn below the first. A `warning`
    (such as `distill.provenance.random_weights_warning`) is drawn as a red banner under the
    title.
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
    painter = _Painter(image_rgb, layout)
    _title(painter, labels, compare, title)
    if warning:
        _banner(painter, warning)
    for panel in layout.panels:
        lab = labels if panel.row == "labels" else compare
        assert lab is not None
        kind = panel.kind
        layer_name = kind.split(":", 1)[1] if kind.startswith("layer:") else ""
        caption = (get_layer(layer_name).caption or layer_name) if layer_name \
            else _CAPTIONS[kind]
        source = lab.source
        prefix = compare is not None and panel.kind != "image"
        if panel.kind == "words" and lab.source == "student":
            caption = "decoded words"
        if panel.kind == "people" and lab.source == "teachers":
            # a shard's people are COCO's annotations, not a teacher's output
            caption, source, prefix = "people", GROUND_TRUTH, True
        painter.caption(panel, caption, source, prefix=prefix)
        if layer_name:
            painter.layer(panel, layer_name, lab.layers.get(layer_name))
        elif kind == "image":
            painter.image(panel)
        elif kind == "depth":
            painter.depth(panel, lab.depth)
        elif kind == "depth_raw":
            painter.depth(panel, lab.depth_raw, name="depth_raw")
        elif kind == "normals":
            painter.normals(panel, lab.normals)
        elif kind == "groups":
            painter.groups(panel, lab.groups)
        elif kind == "text":
            painter.text(panel, lab.text)
        elif kind == "people":
            painter.people(panel, lab)
        elif kind == "legend":
            painter.legend(panel, lab.groups)
        elif kind == "words":
            painter.words(panel, lab)
    return painter.canvas


def _banner(painter: _Painter, warning: str) -> None:
    """The warning line under the title: white on red, as wide as the sheet."""
    assert painter.layout.banner_box is not None
    left, top, right, bottom = painter.layout.banner_box
    painter.draw.rectangle(painter.layout.banner_box, fill=_WARNING_BG)
    painter.draw.text((left + 8, (top + bottom) / 2),
                      painter._fit_text(warning, painter.font, right - left - 16),
                      fill=(255, 255, 255), font=painter.font, anchor="lm")


def _title(painter: _Painter, labels: Labels, compare: Labels | None, title: str) -> None:
    left, top, right, bottom = painter.layout.title_box
    info = f"{labels.width}x{labels.height} · {labels.source}"
    if compare is not None:
        info += f" (top) vs {compare.source} (bottom)"
    cy = (top + bottom) / 2
    painter.draw.text((right, cy), info, fill=_MUTED, font=painter.font, anchor="rm")
    room = right - left - int(painter.draw.textlength(info, font=painter.font)) - 24
    if title:
        painter.draw.text((left, cy), painter._fit_text(title, painter.big, room), fill=_FG,
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
                  compare: Labels | None = None, title: str | None = None,
                  panel_width: int = 320) -> Image.Image:
    """The contact sheet of one row's teacher labels (and optionally a `compare`); `shards` as
    for `read_row`."""
    where, data = read_row(shards, row)
    sample = decode_row(data)
    if title is None:
        title = f"{sample.file_name} · image {sample.image_id} · {where}"
    return sheet_for_sample(sample, compare=compare, title=title, panel_width=panel_width,
                            warning=row_warning(shards, row))


def sheet_for_sample(sample: Sample, *, compare: Labels | None = None, title: str = "",
                     panel_width: int = 320, warning: str = "") -> Image.Image:
    """The contact sheet of a decoded shard row's teacher labels (and optionally a
    `compare`; a `warning` banner as for `contact_sheet`)."""
    return contact_sheet(decode_image(sample.image, exif_transpose=sample.exif_transpose),
                         labels_from_sample(sample), compare=compare, title=title,
                         panel_width=panel_width, warning=warning)


def save_sheet(sheet: Image.Image, out: str | Path | Location) -> Location:
    """Write a sheet as PNG, atomically (parent folders are created; a URI works too)."""
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=False)
    return atomic_write_bytes(out, buf.getvalue())

