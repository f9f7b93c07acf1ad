"""The generate-labels stages called directly (no Ray): OOM-resilient prediction, decode and
post-process failures that cost only their own image, the teacher stage, and the run helpers
that size actor pools, check GPUs, unwrap errors and compare label views."""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.coco import ImageRecord, Problem
from distill.config import DataConfig, TeacherConfig, load_config
from distill.errors import ConfigError, DistillError, RunLocked
from distill.identity import label_fingerprint, label_view, teacher_additions
from distill.quarantine import Failure
from distill.shards import decode_row
from pipelines.cluster import ClusterInfo
from pipelines.cluster import unwrap_error as _unwrap
from pipelines.sizing import actor_cpus as _actor_cpus
from pipelines.sizing import actor_memory as _actor_memory
from pipelines.sizing import check_gpus as _check_gpus
from pipelines.sizing import task_cpus as _task_cpus
from pipelines.stages import (
    Item,
    TeacherStage,
    decode_items,
    is_out_of_memory,
    postprocess_items,
    predict_resilient,
)
from teachers.base import DepthResult, TeacherError

# ---------------------------------------------------------------------------------------------
# predict_resilient


def _config(batch_size: int = 8) -> TeacherConfig:
    return TeacherConfig(backend="depth-anything-v2", variant="tiny", batch_size=batch_size)


def _images(*values: int) -> list[np.ndarray]:
    """Tiny images, each filled with one value, so a fake teacher can tell them apart."""
    return [np.full((4, 4, 3), v, np.uint8) for v in values]


def _oom_teacher(config: TeacherConfig, calls: list[int], fits: int = 2):
    """A teacher that chunks by `config.batch_size` (read per call, like the real ones) and runs
    out of memory on any chunk larger than `fits`. Its result is the image's fill value."""

    def predict(images: list[np.ndarray]) -> list[int]:
        calls.append(len(images))
        out = []
        for start in range(0, len(images), config.batch_size):
            chunk = images[start:start + config.batch_size]
            if len(chunk) > fits:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            out += [int(img[0, 0, 0]) for img in chunk]
        return out

    return predict


def test_out_of_memory_halves_the_batch_size_until_it_fits_and_the_size_sticks():
    config, calls, halves = _config(8), [], []
    predict = _oom_teacher(config, calls)
    out = predict_resilient(predict, config, _images(0, 1, 2, 3, 4), halves.append)
    assert out == [0, 1, 2, 3, 4]  # complete and in order
    assert config.batch_size == 2  # 8 → 4 → 2
    assert halves == [4, 2]
    assert calls == [5, 5, 5]  # the whole list retried at each size, not image by image
    out = predict_resilient(predict, config, _images(5, 6, 7, 8, 9, 10), halves.append)
    assert out == [5, 6, 7, 8, 9, 10]
    assert config.batch_size == 2 and halves == [4, 2]  # no new halving: 2 stuck
    assert calls == [5, 5, 5, 6]  # first try succeeded


def test_a_bad_image_is_retried_alone_and_costs_only_itself():
    config, halves, calls = _config(8), [], []

    def predict(images):
        calls.append(len(images))
        if any(img[0, 0, 0] == 7 for img in images):
            raise ValueError("cannot label an image of sevens")
        return [int(img[0, 0, 0]) for img in images]

    out = predict_resilient(predict, config, _images(1, 7, 3), halves.append)
    assert out[0] == 1 and out[2] == 3
    assert isinstance(out[1], ValueError) and "sevens" in str(out[1])
    assert calls == [3, 1, 1, 1]  # the batch, then each image alone
    assert config.batch_size == 8 and halves == []  # not an OOM: the batch size is kept


def test_out_of_memory_at_batch_size_one_fails_only_that_image():
    config, halves = _config(1), []

    def predict(images):
        if any(img[0, 0, 0] == 7 for img in images):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [int(img[0, 0, 0]) for img in images]

    out = predict_resilient(predict, config, _images(2, 7, 4), halves.append)
    assert out[0] == 2 and out[2] == 4
    assert isinstance(out[1], torch.cuda.OutOfMemoryError)
    assert config.batch_size == 1 and halves == []
    # A single image that does not fit comes back as its exception, without looping.
    single = predict_resilient(predict, _config(4), _images(7))
    assert len(single) == 1 and isinstance(single[0], torch.cuda.OutOfMemoryError)


def test_a_wrong_number_of_results_is_a_failure():
    config = _config(8)

    def drops_the_last(images):
        return [int(img[0, 0, 0]) for img in images][:-1]

    out = predict_resilient(drops_the_last, config, _images(1, 2, 3))
    assert len(out) == 3 and all(isinstance(r, BaseException) for r in out)
    single = predict_resilient(drops_the_last, config, _images(1))
    assert len(single) == 1 and isinstance(single[0], RuntimeError)
    assert "0 results for 1 images" in str(single[0])


def test_too_many_results_fail_in_the_image_by_image_retry_too():
    def one_extra(images):
        return [int(img[0, 0, 0]) for img in images] + [-1]

    single = predict_resilient(one_extra, _config(8), _images(1))
    assert isinstance(single[0], RuntimeError)  # holds: the single-image path checks the count
    out = predict_resilient(one_extra, _config(8), _images(1, 2, 3))
    assert all(isinstance(r, BaseException) for r in out), out  # fails: [1, 2, 3] accepted


def test_is_out_of_memory_recognises_cuda_and_wrapped_oom_only():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory (allocating 3 GiB)"))
    assert is_out_of_memory(RuntimeError("MPS backend Out Of Memory"))
    assert not is_out_of_memory(RuntimeError("shape '[2, 3]' is invalid for input of size 5"))
    assert not is_out_of_memory(ValueError("bad image"))
    assert not is_out_of_memory(KeyError("out of memory"))  # not a RuntimeError


# ---------------------------------------------------------------------------------------------
# decode


def _jpeg(path: Path, width: int, height: int, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return path


def _item(image_id: int, path: Path, width: int | None, height: int | None,
          **kw: object) -> Item:
    record = ImageRecord(image_id=image_id, file_name=path.name, path=path, width=width,
                         height=height)
    return Item(image_id=image_id, shard="s", split="val2017", roles=("depth",), record=record,
                file_name=path.name, **kw)  # type: ignore[arg-type]


def test_decode_quarantines_each_bad_image_with_a_reason_and_keeps_the_good_one(tmp_path):
    good_path = _jpeg(tmp_path / "good.jpg", 40, 30)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "trunc.jpg").write_bytes(good_path.read_bytes()[:200])
    _jpeg(tmp_path / "other.jpg", 40, 30, seed=1)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "tiny.png")
    problem = Problem(6, "read", "UnsafePathError", "file name ../x.jpg escapes the dataset")
    items = [
        _item(1, tmp_path / "empty.jpg", 40, 30),
        _item(2, tmp_path / "trunc.jpg", 40, 30),
        _item(3, good_path, 40, 30),
        _item(4, tmp_path / "missing.jpg", 40, 30),
        _item(5, tmp_path / "other.jpg", 50, 30),  # annotations disagree with the pixels
        _item(6, tmp_path / "x.jpg", 40, 30, problem=problem),
        _item(7, tmp_path / "tiny.png", 4, 4),
    ]
    out = decode_items(items, DataConfig())
    assert out is items
    by_id = {it.image_id: it for it in out}

    good = by_id[3]
    assert good.ok and good.image == good_path.read_bytes()
    assert good.array is not None and good.array.shape == (30, 40, 3)
    assert good.array.dtype == np.uint8
    np.testing.assert_allclose(good.array, np.asarray(Image.open(good_path).convert("RGB")),
                               atol=0)
    assert good.seconds["decode"] >= 0.0

    expected = {
        1: ("decode", "ImageDecodeError", "empty"),
        2: ("decode", "ImageDecodeError", "cannot decode"),
        4: ("decode", "FileNotFoundError", "missing.jpg"),
        5: ("decode", "SizeMismatch", "40x30 but its annotations say 50x30"),
        6: ("read", "UnsafePathError", "escapes the dataset"),
        7: ("decode", "ImageDecodeError", "min_image_side"),
    }
    for image_id, (stage, error_type, words) in expected.items():
        item = by_id[image_id]
        f = item.failure
        assert f is not None, image_id
        assert (f.stage, f.error_type) == (stage, error_type), (image_id, f)
        assert words in f.message, (image_id, f.message)
        assert (f.image_id, f.shard, f.file_name) == (image_id, "s", item.file_name)
        assert item.array is None and "decode" not in item.seconds


def test_decode_leaves_an_already_failed_item_alone(tmp_path):
    item = _item(1, _jpeg(tmp_path / "a.jpg", 16, 16), 16, 16)
    item.fail("read", "Earlier", "failed before decode")
    decode_items([item], DataConfig())
    assert item.failure is not None and item.failure.error_type == "Earlier"
    assert item.image is None and item.array is None


# ---------------------------------------------------------------------------------------------
# post-process


def _png_item(image_id: int, tmp_path: Path, h: int = 24, w: int = 32) -> Item:
    pixels = np.random.default_rng(image_id).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    item = _item(image_id, tmp_path / f"{image_id}.png", w, h)
    item.image, item.array = buf.getvalue(), pixels
    return item


def test_postprocess_failure_costs_only_its_own_image(tmp_path):
    labels = load_config("demo").labels
    h, w = 24, 32
    rng = np.random.default_rng(0)
    good = _png_item(1, tmp_path, h, w)
    good.outputs = {"depth": DepthResult(rng.random((h, w)).astype(np.float32))}
    bad = _png_item(2, tmp_path, h, w)
    bad.outputs = {"depth": DepthResult(rng.random((h + 5, w)).astype(np.float32))}
    failed = _png_item(3, tmp_path, h, w)
    failed.outputs = {"depth": DepthResult(rng.random((h, w)).astype(np.float32))}
    failed.failure = Failure(3, "3.png", "s", "teacher:depth", "ValueError", "earlier")

    postprocess_items([bad, good, failed], labels)

    assert bad.failure is not None and bad.failure.stage == "postprocess"
    assert bad.failure.message and bad.encoded is None
    assert good.ok and good.encoded is not None
    row = good.encoded
    assert (row["image_id"], row["width"], row["height"]) == (1, w, h)
    assert row["image"] == good.image and row["depth_png"] is not None
    sample = decode_row(row)
    assert sample.depth16 is not None and sample.depth16.shape == (h, w)
    assert good.array is None and good.outputs == {}  # nothing more travels
    assert "postprocess" in good.seconds
    assert failed.encoded is None and failed.failure.stage == "teacher:depth"


# ---------------------------------------------------------------------------------------------
# TeacherStage


def _tiny_depth(batch_size: int = 2) -> TeacherConfig:
    return TeacherConfig(backend="depth-anything-v2", variant="tiny", input_size=56,
                         batch_size=batch_size)


def _array_item(image_id: int, fill: int | None = None,
                roles: tuple[str, ...] = ("depth",)) -> Item:
    rng = np.random.default_rng(image_id)
    array = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8) if fill is None else \
        np.full((20, 30, 3), fill, np.uint8)
    return Item(image_id=image_id, shard="s", split="val2017", roles=roles,
                file_name=f"{image_id}.jpg", image=b"jpeg", array=array)


def test_teacher_stage_labels_only_live_items_that_need_its_role():
    stage = TeacherStage("depth", _tiny_depth())
    todo = _array_item(1)
    failed = _array_item(2)
    earlier = Failure(2, "2.jpg", "s", "decode", "ImageDecodeError", "corrupt")
    failed.failure = earlier
    other_role = _array_item(3, roles=("caption",))

    out = stage([todo, failed, other_role])

    assert out == [todo, failed, other_role]
    assert isinstance(todo.outputs["depth"], DepthResult)
    assert todo.outputs["depth"].depth.shape == (20, 30)  # at the image's own resolution
    assert todo.seconds["depth"] > 0
    assert todo.provenance["depth"]["role"] == "depth"
    assert todo.provenance["depth"]["backend"] == "depth-anything-v2"
    assert todo.ok and todo.halvings == {}
    assert failed.failure is earlier
    assert failed.outputs == {} and failed.seconds == {} and failed.provenance == {}
    assert other_role.ok
    assert other_role.outputs == {} and other_role.seconds == {} and other_role.provenance == {}


def test_teacher_stage_records_halvings_and_fails_only_the_bad_image():
    config = _tiny_depth(batch_size=2)
    stage = TeacherStage("depth", config)
    calls: list[int] = []

    def predict(images):
        calls.append(len(images))
        out = []
        for start in range(0, len(images), stage.config.batch_size):
            chunk = images[start:start + stage.config.batch_size]
            if len(chunk) > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            if (chunk[0] == 7).all():
                raise ValueError("an image of sevens")
            out.append(DepthResult(np.ones(chunk[0].shape[:2], np.float32)))
        return out

    stage.teacher.predict = predict  # type: ignore[method-assign]
    items = [_array_item(1), _array_item(2, fill=7), _array_item(3)]
    stage(items)

    assert stage.config.batch_size == 1 and stage.halvings == 1
    assert config.batch_size == 2  # the stage halves its own copy, not the caller's config
    good = [items[0], items[2]]
    assert all(it.ok and isinstance(it.outputs["depth"], DepthResult) for it in good)
    assert all(it.halvings == {"depth": 1} for it in good)
    bad = items[1].failure
    assert bad is not None and (bad.stage, bad.error_type) == ("teacher:depth", "ValueError")
    assert "sevens" in bad.message and items[1].outputs == {}


def test_the_last_teacher_stage_drops_the_image_and_postprocess_needs_only_its_size(tmp_path):
    stage = TeacherStage("depth", _tiny_depth(), last=True)
    item = _png_item(1, tmp_path)
    item.size = (32, 24)
    other = _png_item(2, tmp_path)  # not this teacher's: leaves without its image too
    other.roles, other.size = ("caption",), (32, 24)
    stage([item, other])
    assert item.array is None and other.array is None
    assert item.ok and isinstance(item.outputs["depth"], DepthResult)
    postprocess_items([item], load_config("demo").labels)
    assert item.ok and item.encoded is not None
    assert (item.encoded["width"], item.encoded["height"]) == (32, 24)
    kept = _array_item(3)
    TeacherStage("depth", _tiny_depth())([kept])
    assert kept.array is not None  # not the last: the image travels on


def test_items_cross_a_stage_boundary_whole_with_their_arrays_out_of_band():
    import pyarrow as pa

    from pipelines.blocks import dump_block as _dump
    from pipelines.blocks import load_block as _load

    rng = np.random.default_rng(0)
    live = _array_item(1)
    live.size = (30, 20)
    live.outputs = {"depth": DepthResult(rng.random((20, 30)).astype(np.float32))}
    live.seconds, live.provenance = {"decode": 0.5}, {"depth": {"backend": "x"}}
    failed = _array_item(2)
    failed.fail("decode", "ImageDecodeError", "corrupt")
    strided = _array_item(3)
    strided.array = np.asfortranarray(strided.array)
    items = [live, failed, strided]
    table = _dump(items)
    assert isinstance(table, pa.Table)
    assert table.column("item").nbytes < 4096  # the pixels travel in `data`, not pickled
    # what Ray's object store hands the next stage: a table over the same buffers, sliced
    back = _load(pa.concat_tables([_dump([]), table]))
    assert [vars(a).keys() for a in back] == [vars(a).keys() for a in items]
    for a, b in zip(items, back, strict=True):
        assert (a.image_id, a.roles, a.image, a.size, a.seconds, a.provenance, a.failure) == (
            b.image_id, b.roles, b.image, b.size, b.seconds, b.provenance, b.failure)
        if a.array is None:
            assert b.array is None
        else:
            assert b.array.dtype == a.array.dtype and np.array_equal(a.array, b.array)
            assert b.array.flags.writeable  # a teacher may work in place
    assert np.array_equal(back[0].outputs["depth"].depth, live.outputs["depth"].depth)
    plan_block = pa.table({"item": pa.array([pickle.dumps(failed)], pa.binary())})
    assert _load(plan_block)[0].failure == failed.failure  # the plan's blocks: `item` alone


# ---------------------------------------------------------------------------------------------
# generate_labels helpers: actor CPUs, GPU check, error unwrapping


ROLES = ["depth", "panoptic", "text", "caption"]


def _pool_cpus(config, cpus: dict[str, float]) -> float:
    teachers = config.teachers.roles()
    return sum(cpus[r] * teachers[r].concurrency for r in cpus)


def test_actor_cpus_scale_down_to_half_a_small_cluster_and_stay_on_a_big_one():
    config = load_config("demo")  # four teachers, 1 CPU x 1 actor each
    small = _actor_cpus(config, ROLES, ClusterInfo("local", 2, 0, 1))
    assert small == {r: 0.25 for r in ROLES}
    assert _pool_cpus(config, small) <= 1.0  # one of the 2 CPUs stays for decode/post-process
    big = _actor_cpus(config, ROLES, ClusterInfo("local", 16, 0, 1))
    assert big == {r: 1.0 for r in ROLES}
    # Pools larger than half of a mid-size cluster scale together, keeping their ratio.
    wide = load_config("demo", overrides=["teachers.depth.num_cpus=4",
                                          "teachers.panoptic.concurrency=4"])
    mid = _actor_cpus(wide, ["depth", "panoptic"], ClusterInfo("local", 8, 0, 1))
    assert mid["depth"] == pytest.approx(4 * mid["panoptic"], abs=1e-3)
    assert _pool_cpus(wide, mid) == pytest.approx(4.0, abs=1e-3)


def test_tasks_fit_in_what_scaled_actors_leave_free_on_one_cpu_nodes():
    """Two 1-CPU nodes with 0.25-CPU actors can each keep 0.5 free: a 1-CPU decode task would
    never be placed (the 2-node bench run hung like that). Tasks take the smallest share."""
    config = load_config("demo")
    one_node = _actor_cpus(config, ROLES, ClusterInfo("local", 1, 0, 1))
    assert _pool_cpus(config, one_node) <= 0.5
    assert _task_cpus(config, ROLES, one_node) == min(one_node.values()) < 1.0
    big = _actor_cpus(config, ROLES, ClusterInfo("local", 16, 0, 1))
    assert _task_cpus(config, ROLES, big) == 1.0


def test_actor_cpus_never_exceed_the_room_they_were_scaled_to():
    config = load_config("demo", overrides=[
        "teachers.depth.concurrency=2", "teachers.panoptic.concurrency=2",
        "teachers.text.concurrency=2"])
    roles = ["depth", "panoptic", "text"]
    cpus = _actor_cpus(config, roles, ClusterInfo("local", 2, 0, 1))
    assert _pool_cpus(config, cpus) <= 1.0, cpus


def test_actor_memory_reserves_what_the_config_says_and_must_fit(caplog):
    gib = 2**30
    roles = ["depth", "text"]
    plain = load_config("demo")
    assert _actor_memory(plain, roles, ClusterInfo("local", 2, 0, 1, memory=4 * gib)) == {
        "depth": 0, "text": 0}  # by default nothing is reserved (Ray's default)
    config = load_config("demo", overrides=["teachers.depth.memory_gb=1.5",
                                            "teachers.depth.concurrency=2"])
    fits = ClusterInfo("local", 2, 0, 1, memory=3 * gib)
    assert _actor_memory(config, roles, fits) == {"depth": int(1.5 * gib), "text": 0}
    for address in ("local", "existing"):
        with pytest.raises(ConfigError, match=r"reserve 3.0 GiB .* is 2.9 GiB"):
            _actor_memory(config, roles, ClusterInfo(address, 2, 0, 1, memory=2.9 * gib))
    with caplog.at_level(logging.WARNING, logger="pipelines.sizing"):
        _actor_memory(config, roles, ClusterInfo("ray://head:10001", 8, 0, 2, memory=gib))
    assert any("reserve 3.0 GiB" in r.getMessage() and "autoscaler" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(ConfigError, match=r"memory_gb = -1\.0 is out of range; allowed: a "
                                          "finite number >= 0"):
        load_config("demo", overrides=["teachers.depth.memory_gb=-1"])


def test_too_few_gpus_is_a_config_error_locally_and_a_warning_remotely(caplog):
    config = load_config("demo", overrides=["teachers.depth.num_gpus=1"])
    roles = ["depth", "caption"]
    for address in ("local", "existing"):
        with pytest.raises(ConfigError, match=r"need 1 GPUs .* has 0"):
            _check_gpus(config, roles, ClusterInfo(address, 2, 0, 1))
    _check_gpus(config, roles, ClusterInfo("local", 2, 1, 1))  # enough: no error
    _check_gpus(config, ["caption"], ClusterInfo("local", 2, 0, 1))  # depth not running
    with caplog.at_level(logging.WARNING, logger="pipelines.generate_labels"):
        _check_gpus(config, roles, ClusterInfo("ray://head:10001", 8, 0, 2))
    assert any("need 1 GPUs" in r.getMessage() and "autoscaler" in r.getMessage()
               for r in caplog.records)


def test_unwrap_finds_our_error_in_a_cause_chain_or_in_traceback_text():
    ours = TeacherError("cannot load checkpoints/x.pth")
    outer = RuntimeError("task failed")
    outer.__cause__ = ValueError("middle")
    outer.__cause__.__context__ = ours
    assert _unwrap(outer) is ours

    class RayLikeError(Exception):  # Ray's task errors keep the original in `.cause`
        def __init__(self, cause: BaseException) -> None:
            super().__init__("ray.exceptions.RayTaskError: boom")
            self.cause = cause

    assert _unwrap(RayLikeError(ours)) is ours

    text = ("ray.exceptions.ActorDiedError: The actor died because of an error raised in its "
            "creation task, distill.errors.TeacherError: cannot load X")
    found = _unwrap(RuntimeError(text))
    assert isinstance(found, DistillError) and str(found) == "cannot load X"
    lines = ("Traceback (most recent call last):\n"
             "distill.errors.ConfigError: first\n"
             "  during handling ...\n"
             "distill.errors.TeacherError: the last one wins\n")
    found = _unwrap(RuntimeError(lines))
    assert found is not None and str(found) == "the last one wins"
    assert isinstance(found, TeacherError)
    # every DistillError is recognised, whatever its name ends with
    found = _unwrap(RuntimeError(f"creation task, {RunLocked.__module__}.RunLocked: held"))
    assert isinstance(found, RunLocked) and str(found) == "held"
    assert _unwrap(RuntimeError("ray.exceptions.ActorDiedError: out of memory")) is None


# ---------------------------------------------------------------------------------------------
# manifest: label views and added teachers


def test_a_disabled_teachers_settings_do_not_change_the_label_fingerprint():
    off = load_config("demo", overrides=["teachers.caption.enabled=false"])
    off_other = load_config("demo", overrides=["teachers.caption.enabled=false",
                                               "teachers.caption.checkpoint=some/other",
                                               "teachers.caption.input_size=64"])
    assert label_view(off)["teachers"]["caption"] == {"enabled": False}
    assert label_view(off)["teachers"]["depth"]["input_size"] == 56  # enabled: kept in full
    assert label_fingerprint(label_view(off)) == label_fingerprint(label_view(off_other))
    on_other = load_config("demo", overrides=["teachers.caption.input_size=64"])
    assert label_fingerprint(label_view(load_config("demo"))) != \
        label_fingerprint(label_view(on_other))


def test_teacher_additions_only_when_enabling_is_the_sole_change():
    old = label_view(load_config("demo", overrides=["teachers.caption.enabled=false"]))
    assert teacher_additions(old, label_view(load_config("demo"))) == ["caption"]
    assert teacher_additions(old, old) == []
    for extra in ("labels.vocab_size=100", "teachers.depth.input_size=112"):
        new = label_view(load_config("demo", overrides=[extra]))
        assert teacher_additions(old, new) is None, extra
    both_off = label_view(load_config("demo", overrides=["teachers.caption.enabled=false",
                                                         "teachers.text.enabled=false"]))
    assert teacher_additions(both_off, label_view(load_config("demo"))) == ["text", "caption"]
    # Disabling a teacher is not an addition.
    assert teacher_additions(label_view(load_config("demo")), old) is None
