"""Named config presets, shipped as TOML package data (see distill/config/)."""
