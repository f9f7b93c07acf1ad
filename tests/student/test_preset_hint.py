"""train-student on shards labelled with another preset: the token_dim mismatch names the
preset the shards were made with (from the label run's config.toml), not only
`--set student.token_dim`, which would keep the paper's 297M-parameter student."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distill.config import dump_toml, load_config, preset_of
from distill.errors import ConfigError
from distill.identity import label_fingerprint, label_view
from distill.labels.tokens import build_vocabulary, write_vocabulary_file
from distill.manifest import Manifest, make_plan, write_manifest
from distill.shards import ShardWriter, make_metadata
from distill.storage import file_sha256
from distill.student.train import TrainOptions, train_student
from tests.test_viz import make_labelled_sample


def _label_run(out: Path, preset: str, dim: int) -> Path:
    """A label run folder as generate-labels leaves it: plan, resolved config, a committed shard
    and a `dim`-d vocabulary."""
    config = load_config(preset)
    view = label_view(config)
    plan = make_plan([1, 2], "val2017", 2)
    manifest = Manifest("val2017", label_fingerprint(view), view, 2, plan)
    with ShardWriter(out / "shards" / plan[0].name, make_metadata("f" * 16, {})) as writer:
        for i in (1, 2):
            writer.write(make_labelled_sample(i))
    plan[0].sha256 = file_sha256(out / "shards" / plan[0].name)  # committed
    write_manifest(out / "manifest.json", manifest)
    (out / "config.toml").write_text(dump_toml(config))
    rng = np.random.default_rng(0)
    glove = {w: rng.normal(size=dim).astype(np.float32) for w in ("person", "car", "standing")}
    write_vocabulary_file(out / "vocab.parquet", build_vocabulary([list(glove)], glove), dim)
    return out


def test_a_demo_runs_shards_under_the_paper_preset_suggest_the_demo_preset(tmp_path):
    run = _label_run(tmp_path / "labels", "demo", 50)
    assert preset_of(run / "config.toml") == "demo"
    out = tmp_path / "student"
    with pytest.raises(ConfigError) as err:
        train_student(load_config("paper"), TrainOptions(shards=run, out=out, device="cpu"))
    message = str(err.value)
    assert "student.token_dim = 300 but" in message and "50-d vocabulary" in message
    assert "labelled with preset 'demo'" in message and "pass --preset demo" in message
    assert not out.exists()  # refused before anything was written


def test_without_a_preset_that_fits_the_hint_is_the_setting(tmp_path):
    """A label run made with the paper preset but a 50-d vocabulary: its preset would not fit
    either, so only the setting is suggested."""
    run = _label_run(tmp_path / "labels", "paper", 50)
    with pytest.raises(ConfigError) as err:
        train_student(load_config("paper"), TrainOptions(shards=run / "shards",
                                                         out=tmp_path / "student", device="cpu"))
    assert str(err.value).endswith("set --set student.token_dim=50")
    assert "preset" not in str(err.value).split("; ")[-1]
