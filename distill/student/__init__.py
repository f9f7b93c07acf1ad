"""The Y-MAP-Net student (DESIGN.md §6): model, data, training."""
