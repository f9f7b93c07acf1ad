"""The drawing kit of the pictures (`distill show` sheets, `distill predict` panels, the viewer's
layers): a sheet's panels and their boxes, the `Painter` that frames them (captions, "no label"
hatching, badges, wrapped text), and the small colour helpers the label layers draw with.

What a panel shows is its label layer's (`LabelLayer.draw_panel`, `LabelLayer.view_layer` in
`distill.layers`); where it goes is `distill.viz`'s. Pillow and numpy only.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "FG",
    "MUTED",
    "PANEL_BG",
    "THRESHOLD",
    "Painter",
    "Panel",
    "SheetLayout",
    "blend",
    "dim",
    "flat",
    "one_line",
    "resize_map",
    "rgba",
    "u8",
]

BACKGROUND = (24, 24, 28)
PANEL_BG = (44, 44, 50)
CAPTION_BG = {"teachers": (38, 58, 92), "student": (96, 58, 28)}
CAPTION_BG_OTHER = (60, 60, 66)
FG = (235, 235, 235)
MUTED = (160, 160, 168)
THRESHOLD = 0.5  # a class-group or text probability above this counts as present

# Characters a line of drawn text cannot hold (Pillow refuses to measure a newline) or that show
# nothing: control characters, line and paragraph separators, lone surrogates (an undecodable
# byte in a file name).
_NOT_DRAWABLE = frozenset({"Cc", "Cs", "Zl", "Zp"})


def one_line(text: str) -> str:
    """`text` as one line that draws (and prints) as what it is: control characters (a newline
    in a COCO file name), line separators and lone surrogates become their escapes (`\\n`,
    `\\x07`, `\\udcff`); every other character stays (a glyph the font lacks draws as a box)."""
    if not any(unicodedata.category(c) in _NOT_DRAWABLE for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(c) in _NOT_DRAWABLE else c for c in text)


@dataclass(frozen=True)
class Panel:
    """One panel: its key, what it draws (a `PanelSpec` key of `layer`; "image" for the image),
    whose labels, its content box and caption box (PIL boxes: left, top, right, bottom)."""

    key: str
    kind: str
    row: str  # "labels" or "compare"
    box: tuple[int, int, int, int]
    caption_box: tuple[int, int, int, int]
    layer: str = ""  # the label layer that draws it ("": the image)


@dataclass(frozen=True)
class SheetLayout:
    """Every panel of a sheet and the sheet's size."""

    size: tuple[int, int]
    panels: list[Panel]
    font_size: int
    title_box: tuple[int, int, int, int]
    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    banner_box: tuple[int, int, int, int] | None = None  # the warning line under the title


# ---------------------------------------------------------------------------------------------
# Colour helpers


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


def dim(rgb: np.ndarray, amount: float = 0.4) -> np.ndarray:
    """A dimmed grey copy of an image (float32), the backdrop of overlays."""
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat((grey * amount + 16.0)[..., None], 3, axis=2)


def blend(base: np.ndarray, color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """base (H, W, 3) float, color (3,) or (H, W, 3), alpha (H, W) in [0, 1]."""
    a = np.clip(alpha, 0.0, 1.0)[..., None]
    return base * (1.0 - a) + np.asarray(color, np.float32) * a


def u8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def rgba(rgb: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """(H, W, 4) uint8 from a float colour picture and an opacity (a map or one value)."""
    h, w = rgb.shape[:2]
    a = np.broadcast_to(np.asarray(alpha, np.float32), (h, w))
    out = np.empty((h, w, 4), np.uint8)
    out[..., :3] = np.clip(np.rint(rgb), 0, 255)
    out[..., 3] = np.clip(np.rint(a * 255.0), 0, 255)
    return out


def flat(color: object, size: tuple[int, int]) -> np.ndarray:
    """One colour as an (h, w, 3) float picture of `size` (width, height)."""
    w, h = size
    return np.broadcast_to(np.asarray(color, np.float32), (h, w, 3))


# ---------------------------------------------------------------------------------------------
# The painter


class Painter:
    """Draws one sheet: holds the canvas, fonts and the image at panel resolution."""

    def __init__(self, image_rgb: np.ndarray, layout: SheetLayout) -> None:
        self.layout = layout
        self.canvas = Image.new("RGB", layout.size, BACKGROUND)
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
        bg = CAPTION_BG.get(source, CAPTION_BG_OTHER)
        self.draw.rectangle(panel.caption_box, fill=bg)
        left, top, right, bottom = panel.caption_box
        label = f"{source} · {text}" if prefix else text
        label = self.fit_text(label, self.font, right - left - 10)
        self.draw.text((left + 6, (top + bottom) / 2), label, fill=FG, font=self.font,
                       anchor="lm")

    def paste(self, panel: Panel, rgb: np.ndarray) -> None:
        """Paste an (h, w, 3) picture into a panel's box, centred."""
        left, top, right, bottom = panel.box
        self.draw.rectangle(panel.box, fill=PANEL_BG)
        h, w = rgb.shape[:2]
        x = left + (right - left - w) // 2
        y = top + (bottom - top - h) // 2
        self.canvas.paste(Image.fromarray(rgb), (x, y))

    def missing(self, panel: Panel, message: str) -> None:
        """The panel of a modality that has no label: hatched grey with a message."""
        left, top, right, bottom = panel.box
        w, h = right - left, bottom - top
        tile = Image.new("RGB", (w, h), PANEL_BG)
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
        self.draw.text((cx, cy), message, fill=MUTED, font=self.big, anchor="mm")

    def badge(self, panel: Panel, text: str) -> None:
        """A small label in the bottom-left corner of a panel."""
        left, _, _, bottom = self.content_box(panel)
        box = self.draw.textbbox((left + 6, bottom - 6), text, font=self.small, anchor="ld")
        self.draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(0, 0, 0))
        self.draw.text((left + 6, bottom - 6), text, fill=FG, font=self.small, anchor="ld")

    def content_box(self, panel: Panel) -> tuple[int, int, int, int]:
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

    def fit_text(self, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
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
                current = self.fit_text(word, font, width)
            lines.append(current)
        return lines

    def text_block(self, panel: Panel, blocks: list[tuple[str, str]]) -> None:
        """Headings and wrapped paragraphs, cut with "…" when the panel is full."""
        left, top, right, bottom = panel.box
        self.draw.rectangle(panel.box, fill=PANEL_BG)
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
                self.draw.text((left + pad, y), text, fill=MUTED, font=self.small)
            elif style == "body":  # no-break spaces only steer the wrapping
                self.draw.text((left + 2 * pad, y), text.replace("\u00a0", " "), fill=FG,
                               font=self.font)
            y += self.line if style != "gap" else self.line // 2

    # -- pictures -------------------------------------------------------------------------

    def image(self, panel: Panel) -> None:
        self.paste(panel, self.image_at(self.content_size(panel)))

    def overlay(self, panel: Panel, prob: np.ndarray, color: tuple[int, int, int],
                badge: str) -> None:
        """A probability map (H, W) in `color` over the dimmed image, with a badge."""
        size = self.content_size(panel)
        at = resize_map(np.clip(prob.astype(np.float32), 0.0, 1.0), size)
        self.paste(panel, u8(blend(dim(self.image_at(size)), np.array(color, np.float32),
                                   at * 0.85)))
        self.badge(panel, badge)
