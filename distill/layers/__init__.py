"""Label layers as plug-ins (DESIGN.md §9): one module per layer, and the registry
(`distill.layers.registry`) that shards, post-processing, the student, the pictures, the viewer
and inspect iterate. Adding a layer is one module that calls `register` (docs/DECISIONS.md,
"Adding a label layer")."""

from distill.layers.registry import (
    Column,
    LabelLayer,
    LayerError,
    Modality,
    get_layer,
    layers,
    register,
    unregister,
)

__all__ = ["Column", "LabelLayer", "LayerError", "Modality", "get_layer", "layers", "register",
           "unregister"]
