"""The Python API (`import distill`): light to import, the same checks as the CLI, and
`open_run` decoding what the shards hold."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import distill
from distill.labels.depth import DEPTH_LEVELS
from distill.labels.groups import GROUP_NAMES, decode_group_mask
from distill.shards import iter_samples


def test_import_distill_loads_neither_torch_nor_ray():
    code = ("import sys, distill; distill.load_config; "
            "print('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]
    assert set(distill.__all__) <= set(dir(distill))
    with pytest.raises(AttributeError):
        distill.no_such_thing  # noqa: B018


def test_load_config_takes_a_mapping_or_set_strings():
    cfg = distill.load_config(preset="demo", overrides={
        "train.epochs": 2, "data.root": 'my "odd" folder', "teachers.text.enabled": False,
        "train.lr_start": 0.5})
    assert (cfg.train.epochs, cfg.data.root, cfg.teachers.text.enabled) == \
        (2, 'my "odd" folder', False)
    assert cfg.train.lr_start == 0.5
    same = distill.load_config(preset="demo", overrides=["train.epochs=2"])
    assert same.train.epochs == 2
    with pytest.raises(distill.DistillError, match=r"train\.epochs"):
        distill.load_config(preset="demo", overrides={"train.epochs": -1})


def test_open_run_decodes_every_row(labelled_coco7):
    _, out, result = labelled_coco7
    run = distill.open_run(out)
    assert len(run) == result.summary["images"]["written"] == 7
    assert run.manifest.fingerprint == result.plan.manifest.fingerprint
    assert run.config.data.split == "val2017" and run.quarantine() == []
    stored = {s.image_id: s for p in run.shards for s in iter_samples(p)}
    for s in run.samples():
        row = stored[s.image_id]
        assert s.image.shape == (row.height, row.width, 3) and s.image.dtype == np.uint8
        assert np.array_equal(s.depth, row.depth16.astype(np.float32) / DEPTH_LEVELS)
        assert s.normals.shape == (row.height, row.width, 3)
        assert np.allclose(np.linalg.norm(s.normals, axis=-1), 1, atol=0.02)
        assert s.groups.shape == (len(GROUP_NAMES), row.height, row.width)
        assert s.groups.dtype == np.float32 and s.group_names == tuple(GROUP_NAMES)
        assert np.array_equal(s.groups, decode_group_mask(row.groups))  # 0/1 planes
        assert s.text.dtype == np.float32 and np.array_equal(s.text, row.text_mask)
        assert s.people.shape == (len(row.persons), 17, 3)
        assert s.tokens == row.tokens and s.captions == row.teacher_captions
        assert s.width == row.width and s.source == "teachers"
        assert s.row.image_id == row.image_id and s.row.depth16 is not None
    one = distill.open_run(run.shards[0])  # a single shard reads too, and knows its run
    assert len(one) == len(list(one.rows(columns=["image_id"])))
    assert one.manifest.fingerprint == run.manifest.fingerprint


def test_open_run_of_loose_shards_has_no_manifest(labelled_coco7, tmp_path):
    _, out, _ = labelled_coco7
    shard = next((out / "shards").glob("*.parquet"))
    (tmp_path / shard.name).write_bytes(shard.read_bytes())
    run = distill.open_run(tmp_path / shard.name)
    assert len(run) > 0
    with pytest.raises(distill.DistillError, match="not in a generate-labels run folder"):
        run.manifest  # noqa: B018


def test_create_teacher_by_backend_or_role():
    image = np.zeros((30, 40, 3), np.uint8)
    depth = distill.create_teacher("depth-anything-v2", variant="tiny")
    assert depth.predict([image])[0].depth.shape == (30, 40)
    by_role = distill.create_teacher("depth")
    assert type(by_role) is type(depth)
    with pytest.raises(distill.DistillError, match="unknown teacher 'depth-anything'"):
        distill.create_teacher("depth-anything")
    with pytest.raises(distill.DistillError, match="checkpoint is empty"):
        distill.create_teacher("depth", variant="pretrained")


# Each command of the CLI and the function of `import distill` it calls.
COMMAND_FUNCTIONS = {
    ("run", "generate-labels"): "generate_labels", ("run", "retry-failed"): "retry_failed",
    ("run", "train-student"): "train_student", ("run", "evaluate"): "evaluate",
    ("run", "audit"): "audit_run", ("config", "show"): "show_config",
    ("config", "presets"): "list_presets", ("data", "check"): "check_data",
    ("data", "make-demo"): "make_demo", ("teachers", "list"): "list_teachers",
    ("teachers", "fetch"): "fetch_teachers",
    ("predict",): "predict", ("export",): "export", ("show",): "show",
    ("view",): "create_viewer", ("inspect",): "inspect_labels",
}


def _commands(command, path=()):
    subs = getattr(command, "commands", None)
    if not subs:
        yield path
    for name, sub in sorted((subs or {}).items()):
        yield from _commands(sub, (*path, name))


def test_every_command_has_its_api_function():
    """Everything the CLI does is a function of `import distill`, documented as that command's
    function, with a return type."""
    import importlib.util

    from distill.cli import cli

    assert set(_commands(cli())) == set(COMMAND_FUNCTIONS)
    # a name that is also a module of distill would become that module once it is imported
    assert not [n for n in distill.__all__ if importlib.util.find_spec(f"distill.{n}")]
    for path, name in COMMAND_FUNCTIONS.items():
        assert name in distill.__all__, name
        fn = getattr(distill, name)
        assert f"`distill {' '.join(path)}`" in fn.__doc__, name
        assert fn.__annotations__["return"] not in (None, "None"), name  # it returns a result


def test_config_and_teachers_functions():
    cfg = distill.load_config(preset="demo", overrides={"train.epochs": 3})
    text = distill.show_config(cfg)
    assert text.startswith(f"# preset: demo\n# fingerprint: {cfg.fingerprint()}")
    assert distill.load_config(files=[_written(text)]).train.epochs == 3
    assert distill.list_presets() == ["demo", "paper"]
    from distill.config import TEACHER_BACKENDS

    rows = distill.list_teachers()
    assert [(r.role, r.name) for r in rows] == [
        (role, name) for role, names in TEACHER_BACKENDS.items() for name in names]
    paper = {r.name: r.paper_checkpoint for r in rows if r.paper_checkpoint}
    assert paper["depth-anything-v2"] == "depth-anything/Depth-Anything-V2-Large-hf"
    assert next(r for r in rows if r.name == "mask2former").ready


def _written(text: str):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "config.toml"
    path.write_text(text)
    return path


def test_check_data_summarises_and_decodes(tmp_path):
    from tests.conftest import make_coco7

    root = make_coco7(tmp_path / "coco")
    (root / "val2017" / sorted(p.name for p in (root / "val2017").iterdir())[0]).write_bytes(
        b"not a jpeg")
    check = distill.check_data(root, "val2017")
    assert (check.images, check.decoded, check.usable, check.failures) == (7, False, None, [])
    assert check.persons >= check.with_keypoints > 0 and check.captions > 0
    check = distill.check_data(root, "val2017", decode=True,
                               config=distill.load_config(preset="demo"))
    assert check.usable == 6 and [f.stage for f in check.failures] == ["decode"]


def test_inspect_audit_show_and_viewer_on_a_run(labelled_coco7, tmp_path):
    import shutil

    from starlette.testclient import TestClient

    _, out, _ = labelled_coco7
    report = distill.inspect_labels(out, sample_rows=2, json_out=tmp_path / "inspect.json")
    assert report["rows"]["total"] == 7 and (tmp_path / "inspect.json").is_file()
    picture = distill.show(out, row=6, out=tmp_path / "row.png", width=96)
    assert picture.path.is_file() and picture.width > 0 and picture.warning
    with TestClient(distill.create_viewer(out)) as client:
        assert client.get("/").status_code == 200
    run = tmp_path / "run"  # audit writes RUN/audit.json: a copy, the session's run stays
    shutil.copytree(out, run)
    audit = distill.audit_run(run, limit=2)
    assert audit["rows"] == 2 and (run / "audit.json").is_file()
    with pytest.raises(distill.DistillError, match="not a generate-labels run folder"):
        distill.retry_failed(tmp_path)


def test_one_form_of_an_images_labels():
    """A run's decoded rows, a student's predictions and the pictures share one form
    (`distill.layers.form.LabelledImage`, which `distill.LabelledImage` names); the student's
    own `Labels` form is gone (issue 27)."""
    import importlib
    import typing

    from distill.layers.form import LabelledImage
    from distill.student.predict import Prediction
    from distill.viz import contact_sheet

    assert distill.LabelledImage is LabelledImage
    assert typing.get_type_hints(Prediction)["labels"] is LabelledImage
    assert typing.get_type_hints(contact_sheet)["labels"] is LabelledImage
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("distill.student.labels")
