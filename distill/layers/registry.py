"""The label registry (DESIGN.md §9, STYLE.md 4b): what a label layer is, declared once in its own
module, and the registry that everything else iterates.

A `LabelLayer` says, for one layer (depth, normals, groups, ...):

- its shard columns (`columns`: Arrow fields, PNG or not) and its codec (`encode`: `Sample`
  fields → row values; `decode`: row values → `Sample` fields);
- which teacher roles fill it (`roles`) and how post-processing computes it (`fill`), after the
  layers it reads (`needs`);
- its student output channels (`modalities`: the loss-gain key and channel count of each);
- its fields of the one decoded form of an image's labels (`decode_labels`, `predicted`:
  `distill.layers.form.LabelledImage`), how it is drawn (`sheet_panels`/`draw_panel` on a
  contact sheet, `view_layers`/`view_layer` in the viewer) and its QA statistic
  (`statistics`).

The built-in layers are `distill.layers.<name>` modules, registered on first use in the order of
`BUILTIN` (the order of the shard schema, version 1). A plug-in layer calls `register(layer)`;
its columns, when it has any, go after the built-in ones and are optional (older shards lack
them). Nothing here imports pyarrow at module level beyond the column declarations, nor torch.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from distill.errors import LayerError

if TYPE_CHECKING:
    from distill.layers.form import LabelledImage
    from distill.paint import Painter, Panel
    from distill.shards import Sample

__all__ = [
    "BUILTIN",
    "MOVES",
    "Column",
    "LabelLayer",
    "LayerError",
    "Modality",
    "PanelSpec",
    "builtin_layers",
    "card_columns",
    "fill_order",
    "get_layer",
    "import_plugins",
    "layers",
    "loader_columns",
    "pixel_share",
    "plugin_layers",
    "png_column",
    "register",
    "role_markers",
    "undecoded_columns",
    "unregister",
]

logger = logging.getLogger(__name__)

# The built-in layers, in shard-schema order (schema version 1, then the pose and parts layers'
# columns, which are in a shard only when their teacher ran: `LabelLayer.only_when_run`).
BUILTIN = ("depth", "normals", "panoptic", "groups", "text", "tokens", "persons", "pose", "parts")
# How the letterbox and the augmentation move a layer's label to the student's S×S
# (`LabelLayer.moved`): ids or bits by nearest neighbour, a continuous map bilinearly (blending
# only pixels of the image), keypoints as points (heatmaps drawn after), caption tokens not.
MOVES = ("nearest", "bilinear", "keypoints", "tokens")


@dataclass(frozen=True)
class Column:
    """One shard column of a layer. `encoded`: its values are already-compressed bytes (PNG),
    which the writer stores without zstd or a dictionary."""

    field: pa.Field
    encoded: bool = False

    @property
    def name(self) -> str:
        return str(self.field.name)


def png_column(name: str) -> Column:
    """A column of PNG bytes at the image's original resolution (null: no teacher filled it)."""
    return Column(pa.field(name, pa.binary()), encoded=True)


@dataclass(frozen=True)
class Modality:
    """A group of student output channels learned with one loss gain: `train.loss_gains.<key>`
    for the built-in ones, `gain` for a plug-in's (the config has no field for it)."""

    key: str
    channels: int
    gain: float = 1.0


@dataclass(frozen=True)
class PanelSpec:
    """One contact-sheet panel a layer draws. `rank` orders the panels of a one-labels sheet
    (4 to a row); `compare_rank` those of a sheet that compares two (a dense panel's column,
    a text panel's place in the bottom row, `span` columns wide). A `student_first` panel
    takes the image's place in the student's row when its labels have `field`. A
    `when_present` panel is on a sheet only when the (teachers') labels have `field` (not
    None; without a field: their `layers` entry under `key`): the sheets of runs without its
    teacher keep their layout."""

    key: str
    caption: str
    rank: int
    compare_rank: int
    dense: bool = True  # a picture of the image; False: text (a legend, words)
    span: int = 1
    student_first: bool = False
    field: str = ""
    when_present: bool = False


def pixel_share(plane: np.ndarray) -> float:
    """The share of a map's pixels above 0.5 (a 0/1 label's, or a probability's): the figure
    QA statistics report and pictures print."""
    return float(np.count_nonzero(plane > 0.5)) / plane.size if plane.size else 0.0


class LabelLayer:
    """One label layer. Subclasses set the class attributes and override what applies; the
    defaults describe a layer with no columns, no teacher, no channels, nothing to draw."""

    name: ClassVar[str]
    columns: ClassVar[tuple[Column, ...]] = ()
    roles: ClassVar[tuple[str, ...]] = ()  # teacher roles whose results fill this layer
    needs: ClassVar[tuple[str, ...]] = ()  # layers `fill` reads (they fill first)
    rewrites: ClassVar[tuple[str, ...] | None] = None  # columns `fill` rewrites (None: all)
    modalities: ClassVar[tuple[Modality, ...]] = ()  # student channels, in layout order
    layout_rank: ClassVar[int] = 100  # where its channels go in the student layout
    # Its columns are in a shard only when one of its `roles` ran in the run (the shard schema
    # of a run without that teacher is unchanged: `distill.shards.schema`); optional on read.
    only_when_run: ClassVar[bool] = False
    # Its channels are in the student only when `student.extra_layers` names it (the paper's
    # 44 channels stay the default student): `distill.student.layout.use_extra_layers`.
    opt_in: ClassVar[bool] = False

    # -- shard codec ----------------------------------------------------------------------

    def encode(self, sample: Sample, compress_level: int,
               wanted: Collection[str]) -> dict[str, Any]:
        """This layer's columns of `sample` that are in `wanted`, as row values."""
        return {}

    def decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """`Sample` field values from this layer's columns of `row` (absent columns are None)."""
        return {}

    # -- post-processing ------------------------------------------------------------------

    def fill(self, sample: Sample, outputs: Mapping[str, Any], ctx: Any,
             scratch: dict[str, Any]) -> None:
        """Set this layer's `Sample` fields from the teachers' `outputs` (role → result; a role
        that did not run is absent), in place. `ctx` is the worker's post-processing context;
        `scratch` holds one image's intermediate values that later layers share."""

    # -- the student and the pictures (the built-in layers' targets and pictures are their own
    #    overrides of these hooks and of the drawing hooks below) --------------------------------

    loader_columns: ClassVar[tuple[str, ...]] = ()  # columns `label_map` / `target` read
    color: ClassVar[tuple[int, int, int]] = (255, 255, 255)  # its map's colour in pictures
    caption: ClassVar[str] = ""  # its panel's caption ("" : the layer's name)

    def label_map(self, sample: Sample) -> np.ndarray | None:
        """The layer's label of a decoded row at the original resolution, float32 (C, H, W)
        in [0, 1] with C = its channels, for `LabelledImage.layers`; None: not labelled."""
        return None

    def target(self, sample: Sample, warp: Any) -> np.ndarray | None:
        """The student's uint8 (C, S, S) target channels for this layer (255 = 1.0), moved by
        the letterbox and augmentation through `warp` (`distill.student.targets.Warp`: its
        `nearest` takes an (H, W) map at the original resolution to (S, S)); None: the row has
        no such label (its `present` flag is then False)."""
        return None

    # -- how the student's targets are built, every layer's (distill.student.targets and its
    #    loader iterate these; `target` above is each layer's builder) ---------------------

    # Of `loader_columns`, the PNG columns `target` takes still encoded (`warp.encoded`, decoded
    # straight into the letterbox): the loader leaves them out of the decoded sample.
    undecoded: ClassVar[tuple[str, ...]] = ()
    moved: ClassVar[str] = "nearest"  # how the letterbox and augmentation move it: `MOVES`
    # A picture that augmentation replaced by noise has this label "empty" (its target becomes
    # 0 and stays present: noise has no text, objects or words) or "absent" (noise has no
    # depth: nothing to learn there, its `present` flag becomes False).
    on_noise: ClassVar[str] = "empty"
    card_columns: ClassVar[tuple[str, ...]] = ()  # what a `distill view` grid card shows

    def keypoints(self, sample: Sample) -> np.ndarray | None:
        """A keypoint layer's (`moved = "keypoints"`) float32 (people, joints, 3) keypoints at
        the original resolution: the augmentation keeps them in view and moves them, and its
        `target` draws them from `warp.keypoints[name]` (output pixels). A layer learned as
        caption tokens (`moved = "tokens"`) returns from `target` its float32 (max_tokens, D)
        token targets instead of channels."""
        return None

    # -- QA -------------------------------------------------------------------------------

    stat_columns: ClassVar[tuple[str, ...]] = ()  # the columns `statistics` reads
    statistic_names: ClassVar[tuple[str, ...]] = ()  # its figures the viewer sorts by

    def statistics(self, row: Mapping[str, Any]) -> dict[str, float] | None:
        """One row's QA figures (name → value; shares are fractions of the image's pixels)
        from its encoded `stat_columns`: what `distill inspect` sums and the viewer sorts and
        filters by. None when the row has no such label."""
        return None

    # -- the decoded form and its pictures (distill.layers.form, distill.viz, distill.view) --
    # The defaults are a plug-in's: its `label_map` (teachers) or its output channels
    # (student) go into `LabelledImage.layers[name]`, drawn as one map in its `color`.

    def decode_labels(self, sample: Sample) -> dict[str, Any]:
        """This layer's fields of the decoded form (`LabelledImage`) of a decoded shard row;
        a plug-in's go into `layers` ({"layers": {name: map}})."""
        found = self.label_map(sample)
        return {} if found is None else {"layers": {self.name: found}}

    def predicted(self, channels: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """This layer's fields of the decoded form of a student's prediction, from its output
        channels unletterboxed to the picture's size (`channels`: modality key → float32
        (C, H, W) in [0, 1]; a modality left out of the prediction is absent)."""
        found = [channels[m.key] for m in self.modalities if m.key in channels]
        if not self.modalities or len(found) < len(self.modalities):
            return {}
        return {"layers": {self.name: np.concatenate(found) if len(found) > 1 else found[0]}}

    def sheet_panels(self) -> tuple[PanelSpec, ...]:
        """The contact-sheet panels this layer draws (`draw_panel`)."""
        return (PanelSpec(self.name, self.caption or self.name, rank=100, compare_rank=100),)

    def panel_caption(self, key: str, labelled: LabelledImage,
                      compare: bool) -> tuple[str, str, bool]:
        """Panel `key`'s caption: (text, whose labels, whether the caption names whose); the
        default names them on a sheet that compares two."""
        spec = next(p for p in self.sheet_panels() if p.key == key)
        return spec.caption, labelled.source, compare

    def draw_panel(self, key: str, painter: Painter, panel: Panel,
                   labelled: LabelledImage) -> None:
        """Draw panel `key` of `labelled` into `panel` (a "no … label" panel when it has none)."""
        maps = labelled.layers.get(self.name)
        if maps is None:
            painter.missing(panel, f"no {self.name} label")
            return
        share = pixel_share(maps[0])
        painter.overlay(panel, maps[0], self.color, f"{self.name} {100 * share:.1f} % of pixels")

    def view_layers(self, labelled: LabelledImage) -> list[tuple[int, str]]:
        """The viewer's layers of `labelled` this layer draws (`view_layer`), each with its
        place in the viewer's list (a plug-in's go last)."""
        return [(100, self.name)] if self.name in labelled.layers else []

    def view_layer(self, labelled: LabelledImage, name: str,
                   size: tuple[int, int]) -> np.ndarray:
        """Viewer layer `name` of `labelled` at `size` (width, height): RGBA uint8 (h, w, 4),
        transparent where it says nothing."""
        from distill.paint import flat, resize_map, rgba

        prob = np.clip(resize_map(labelled.layers[name][0].astype(np.float32), size), 0.0, 1.0)
        return rgba(flat(self.color, size), prob * 0.85)

    @property
    def rewritten(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns) if self.rewrites is None else self.rewrites


_registry: dict[str, LabelLayer] = {}
_loaded = False


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in BUILTIN:
        module = importlib.import_module(f"distill.layers.{name}")
        register(module.LAYER, _builtin=True)


def register(layer: LabelLayer, *, _builtin: bool = False) -> LabelLayer:
    """Add a layer to the registry (after the built-in ones). Fails loudly on a name or column
    that is already registered."""
    if not _builtin:
        _load_builtin()
    if layer.name in _registry:
        raise LayerError(f"label layer {layer.name!r} is already registered")
    if layer.moved not in MOVES or layer.on_noise not in ("empty", "absent"):
        raise LayerError(f"label layer {layer.name!r}: moved must be one of {', '.join(MOVES)} "
                         f"and on_noise empty or absent, got {layer.moved!r}, {layer.on_noise!r}")
    owned = {c.name: n for n, lay in _registry.items() for c in lay.columns}
    for column in layer.columns:
        if column.name in owned:
            raise LayerError(f"label layer {layer.name!r}: column {column.name!r} belongs to "
                             f"layer {owned[column.name]!r}")
    _registry[layer.name] = layer
    logger.debug("registered label layer %s", layer.name)
    return layer


def unregister(name: str) -> None:
    """Remove a plug-in layer (tests); the built-in layers stay."""
    if name in BUILTIN:
        raise LayerError(f"label layer {name!r} is built in and cannot be removed")
    _registry.pop(name, None)


def layers() -> tuple[LabelLayer, ...]:
    """Every registered layer: the built-in ones in schema order, then the plug-ins."""
    _load_builtin()
    return tuple(_registry.values())


def builtin_layers() -> tuple[LabelLayer, ...]:
    return tuple(layer for layer in layers() if layer.name in BUILTIN)


def plugin_layers() -> tuple[LabelLayer, ...]:
    """The registered layers that are not built in, in registration order."""
    return tuple(layer for layer in layers() if layer.name not in BUILTIN)


def get_layer(name: str) -> LabelLayer:
    """The registered layer `name`; raises `LayerError` naming the registered ones."""
    _load_builtin()
    try:
        return _registry[name]
    except KeyError:
        raise LayerError(f"no label layer {name!r}; registered: {', '.join(_registry)}") from None


def role_markers() -> dict[str, str]:
    """Teacher role → the small (non-PNG) column that is null exactly where that teacher did
    not run: the first such column the layers it fills rewrite."""
    out: dict[str, str] = {}
    for layer in layers():
        small = [c.name for c in layer.columns if not c.encoded and c.name in layer.rewritten]
        for role in layer.roles:
            if role not in out and small:
                out[role] = small[0]
    return out


def fill_order() -> tuple[LabelLayer, ...]:
    """The layers in an order where each comes after the layers it `needs` (otherwise in
    registration order)."""
    done: dict[str, LabelLayer] = {}
    pending = list(layers())
    while pending:
        for layer in pending:
            missing = [n for n in layer.needs if n not in done]
            unknown = [n for n in missing if n not in _registry]
            if unknown:
                raise LayerError(f"label layer {layer.name!r} needs unknown layers {unknown}")
            if not missing:
                done[layer.name] = layer
                pending.remove(layer)
                break
        else:
            raise LayerError(f"label layers {[p.name for p in pending]} need each other")
    return tuple(done.values())


# ---------------------------------------------------------------------------------------------
# The columns the student's loader and the viewer's grid read, and plug-in modules


def loader_columns() -> tuple[str, ...]:
    """Every registered layer's `loader_columns`, in registry order: what the student's loader
    reads of a row besides the picture."""
    return tuple(dict.fromkeys(c for layer in layers() for c in layer.loader_columns))


def undecoded_columns() -> tuple[str, ...]:
    """The loader's PNG columns that a layer's `target` decodes itself (`undecoded`)."""
    return tuple(dict.fromkeys(c for layer in layers() for c in layer.undecoded))


def card_columns() -> tuple[str, ...]:
    """What a viewer grid card reads besides the row's identity: every layer's `card_columns`
    and the column that says whether each teacher ran (`role_markers`)."""
    return tuple(dict.fromkeys((*(c for layer in layers() for c in layer.card_columns),
                                *role_markers().values())))


# The layers each plug-in module gave when first imported, and the modules in use now.
_plugin_layers: dict[str, tuple[LabelLayer, ...]] = {}
_plugins_in_use: set[str] = set()


def _plugin_module_layers(name: str) -> tuple[LabelLayer, ...]:
    """The layers plug-in module `name` gives: those it registers when imported, or its
    `LAYER`; remembered, so a module Python has already imported can be used again later."""
    if name in _plugin_layers:
        return _plugin_layers[name]
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise LayerError(f"label layer module {name!r} cannot be imported: {exc}") from None
    found = [layer for layer in layers() if type(layer).__module__ == name]
    layer = getattr(module, "LAYER", None)
    if isinstance(layer, LabelLayer) and layer not in found:
        found.append(layer)
    if not found:
        raise LayerError(f"label layer module {name!r} registers no label layer (define "
                         "LAYER, or call distill.layers.register when imported)")
    _plugin_layers[name] = tuple(found)
    return _plugin_layers[name]


def import_plugins(modules: Collection[str]) -> tuple[LabelLayer, ...]:
    """Make the plug-in layer modules in use in this process exactly `modules`
    (`labels.plugins`): import each (a module registers its layers when imported, or defines
    `LAYER` as a built-in module does) and register its layers; the layers of a plug-in module
    an earlier call used and this one does not are removed, so a long-lived process (a Ray
    worker, a notebook) labels each run with that run's layers only. Layers registered by a
    direct `register` call are left alone. Returns the modules' layers; raises `LayerError` for
    a module that cannot be imported or that gives no layer. The driver and every worker call
    it before post-processing."""
    out: list[LabelLayer] = []
    for name in modules:
        for layer in _plugin_module_layers(name):
            if _registry.get(layer.name) is not layer:
                register(layer)
            if layer not in out:
                out.append(layer)
    for name in _plugins_in_use - set(modules):
        for layer in _plugin_layers.get(name, ()):
            if _registry.get(layer.name) is layer and layer not in out:
                unregister(layer.name)
                logger.debug("label layer %s is not in this run's labels.plugins", layer.name)
    _plugins_in_use.clear()
    _plugins_in_use.update(modules)
    return tuple(out)
