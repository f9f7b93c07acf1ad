"""ShardStream: row groups split across ranks × DataLoader workers see every row once per epoch,
epochs reshuffle, augmentation does not depend on the split, bad shards fail naming the file."""

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from distill.config import TrainConfig
from distill.errors import ShardError
from distill.labels.tokens import Vocabulary
from distill.runfolder import shard_name
from distill.shards import ShardWriter, make_metadata
from distill.student.data import ShardStream
from distill.student.targets import PRESENT_KEYS
from tests.test_shards import make_sample

S = 16
ROWS = (7, 5, 6)  # rows per shard; row groups of 2 → 4 + 3 + 3 = 10 units


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    image_id = 1
    for index, rows in enumerate(ROWS):
        path = folder / shard_name("train2017", index)
        with ShardWriter(path, make_metadata("f", {}), row_group_size=2) as writer:
            for _ in range(rows):
                writer.write(make_sample(image_id, h=12, w=16, full=image_id % 4 != 0))
                image_id += 1
    return folder


def ids_seen(stream: ShardStream, workers: int, batch_size: int | None = None) -> list[int]:
    loader = DataLoader(stream, batch_size=batch_size, num_workers=workers)
    out: list[int] = []
    for item in loader:
        out.extend(torch.atleast_1d(item["image_id"]).tolist())
    return out


def test_ranks_times_workers_see_every_row_once_per_epoch(shard_dir):
    all_ids = list(range(1, sum(ROWS) + 1))
    orders = {}
    for epoch in (0, 1):
        seen: list[int] = []
        per_rank = []
        for rank in (0, 1):
            stream = ShardStream(shard_dir, S, rank=rank, world_size=2, shuffle_buffer=4, seed=3)
            stream.set_epoch(epoch)
            ids = ids_seen(stream, workers=2, batch_size=3)
            per_rank.append(set(ids))
            seen.extend(ids)
        assert Counter(seen) == Counter(all_ids)  # each row exactly once
        assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]
        orders[epoch] = seen
    assert orders[0] != orders[1]  # a new epoch reshuffles
    assert stream.count_rows() == sum(ROWS)


def test_units_are_split_without_overlap(shard_dir):
    stream = ShardStream(shard_dir, S, rank=1, world_size=2, seed=0)
    units = stream.units()
    assert sorted(units) == [(f, g) for f, n in enumerate((4, 3, 3)) for g in range(n)]
    stream.set_epoch(1)
    assert stream.units() != units
    mine = stream.assigned_units(0, 2) + stream.assigned_units(1, 2)
    assert sorted(mine) == sorted(stream.units()[1::2])


def test_evaluation_reads_in_file_order_unaugmented(shard_dir):
    stream = ShardStream(shard_dir, S, train=False, shuffle_buffer=8)
    stream.set_epoch(5)
    items = list(stream)
    assert [int(i["image_id"]) for i in items] == list(range(1, sum(ROWS) + 1))
    again = next(iter(stream))
    assert torch.equal(again["image"], items[0]["image"])
    item = items[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, S, S)
    assert item["target"].dtype == torch.uint8 and item["target"].shape == (44, S, S)
    assert item["present"].dtype == torch.bool and item["present"].shape == (len(PRESENT_KEYS),)
    assert item["image_id"].dtype == torch.int64
    assert item["tokens"].dtype == torch.float32


def test_augmentation_does_not_depend_on_the_split(shard_dir):
    cfg = TrainConfig()
    cfg.augment.pan_zoom = 1.0
    cfg.augment.noise = 1.0
    vocab = Vocabulary(["cat", "mat"], [2, 1], np.eye(2, 5, dtype=np.float32), 1.0)

    def images(rank: int, world: int, workers: int) -> dict[int, torch.Tensor]:
        stream = ShardStream(shard_dir, S, vocab, cfg, rank=rank, world_size=world, seed=9)
        stream.set_epoch(2)
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        return {int(i["image_id"]): i["image"] for i in loader}

    single = images(0, 1, 0)
    split = {**images(0, 2, 2), **images(1, 2, 2)}
    assert single.keys() == split.keys()
    assert all(torch.equal(single[k], split[k]) for k in single)
    stream = ShardStream(shard_dir, S, vocab, cfg, seed=9)
    stream.set_epoch(3)
    other = {int(i["image_id"]): i["image"] for i in stream}
    assert any(not torch.equal(single[k], other[k]) for k in single)  # a new epoch, new draws
    first = next(iter(stream))
    assert first["tokens"].shape == (8, 5) and first["tokens"][0].tolist() == [1, 0, 0, 0, 0]


def test_a_truncated_shard_fails_naming_the_file(shard_dir, tmp_path):
    good = sorted(shard_dir.glob("*.parquet"))[0]
    bad = tmp_path / "train2017-00001-of-00002.parquet"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=re.escape(str(bad))):
        ShardStream([good, bad], S)


def test_a_schema_mismatch_fails_naming_the_file(shard_dir, tmp_path):
    good = sorted(shard_dir.glob("*.parquet"))[0]
    table = pq.read_table(good)
    dropped = tmp_path / "dropped.parquet"
    pq.write_table(table.drop(["depth_png"]), dropped)
    with pytest.raises(ShardError, match=rf"{re.escape(str(dropped))}.*missing \['depth_png'\]"):
        ShardStream([good, dropped], S)
    retyped = tmp_path / "retyped.parquet"
    index = table.schema.get_field_index("width")
    pq.write_table(table.set_column(index, "width", table["width"].cast("int64")), retyped)
    with pytest.raises(ShardError, match=rf"{re.escape(str(retyped))}.*'width'"):
        ShardStream(retyped, S)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ShardError, match=rf"no \*\.parquet shards in {re.escape(str(empty))}"):
        ShardStream(empty, S)
