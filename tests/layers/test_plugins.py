"""Plug-in label layers at labelling time (issue 27): `labels.plugins` names modules that the
driver and every Ray worker import before post-processing, so a plug-in's own shard column is
written by `generate-labels`; the setting is part of the run's identity only when set, and an
unknown module is one line, exit 2."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from distill.config import load_config
from distill.errors import ConfigError
from distill.identity import label_fingerprint, label_view
from distill.images import decode_png
from distill.layers import unregister
from tests.layers.sky_layer import sky_mask
from tests.test_cli import distill, one_error_line

PLUGIN = 'labels.plugins=["tests.layers.sky_stored"]'


@pytest.fixture
def unregisters():
    """Leaves the registry as it was: the plug-in is registered where labels are made."""
    yield
    unregister("sky_stored")


def test_a_plugin_enters_the_label_fingerprint_only_when_set(unregisters):
    plain = load_config("demo")
    assert plain.labels.plugins == [] and "plugins" not in label_view(plain)["labels"]
    with_plugin = load_config("demo", overrides=[PLUGIN])
    assert label_view(with_plugin)["labels"]["plugins"] == ["tests.layers.sky_stored"]
    assert label_fingerprint(label_view(with_plugin)) != label_fingerprint(label_view(plain))
    from distill.shards import schema
    from pipelines.postprocess import import_plugins

    import_plugins(with_plugin.labels)
    import_plugins(with_plugin.labels)  # idempotent: the driver and each worker call it
    assert schema().names[-1] == "sky_png"  # its column is in the schema once imported


def test_a_process_labels_each_run_with_that_runs_plugins_only(unregisters):
    """A Ray worker (or a notebook) lives across runs: a plug-in one run used is not encoded by
    the next run that does not name it, and comes back when a later run names it again."""
    from distill.shards import schema
    from pipelines.postprocess import import_plugins

    with_plugin = load_config("demo", overrides=[PLUGIN]).labels
    import_plugins(with_plugin)
    assert "sky_png" in schema().names
    import_plugins(load_config("demo").labels)
    assert "sky_png" not in schema().names
    import_plugins(with_plugin)
    assert "sky_png" in schema().names


def test_a_module_that_cannot_be_imported_or_gives_no_layer_is_one_line(unregisters):
    line = one_error_line(distill("config", "show", "--preset", "demo", "--set",
                                  'labels.plugins=["no_such_module_27"]', check=False))
    assert "labels.plugins" in line and "no_such_module_27" in line
    from pipelines.postprocess import import_plugins

    with pytest.raises(ConfigError, match=r"labels\.plugins: .*'json' registers no label layer"):
        import_plugins(load_config("demo", overrides=['labels.plugins=["json"]']).labels)


@pytest.mark.slow
def test_a_plugin_writes_its_own_column_during_generate_labels(tmp_path, ray_address,
                                                               unregisters):
    from pipelines.generate_labels import RunOptions, generate_labels
    from tests.conftest import label_config, make_coco7

    root = make_coco7(tmp_path / "coco")
    out = tmp_path / "out"
    generate_labels(label_config(root, PLUGIN), RunOptions(out=out, limit=3, live=False))
    # Read back with plain pyarrow: the column is there and was filled on the workers.
    rows = [r for p in sorted((out / "shards").glob("*.parquet"))
            for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 3
    for row in rows:
        assert row["panoptic_png"] is not None and row["sky_png"] is not None, row["image_id"]
        want = sky_mask(decode_png(row["panoptic_png"]))
        assert (decode_png(row["sky_png"]) == want * 255).all()
