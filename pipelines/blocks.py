"""Blocks, the unit generate-labels moves through Ray (DESIGN.md §5): how the plan is cut into
blocks, and how a block of `Item`s travels between stages. No scheduling here
(`pipelines.graph` decides where blocks run).

Items cross every stage boundary as one Arrow table per block: `item`, each Item pickled
(protocol 5) with its numpy buffers (the decoded image, teacher outputs) taken out of band;
`sizes`, those buffers' lengths; `data`, the buffers back to back. Ray moves the table
through its object store without pickling it again, and a reader copies each block's `data`
once (arrays stay writable, as a teacher may expect) instead of unpickling a pickle of every
array within Ray's own. Plan blocks (`arrow_blocks`) carry `item` alone."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

from pipelines.plan import RunPlan
from pipelines.stages import Item

__all__ = ["DECODE_BATCH", "arrow_blocks", "block_items", "block_size", "dump_block",
           "load_block"]

DECODE_BATCH = 8  # images per decode / post-process task


def block_size(plan: RunPlan, roles: list[str]) -> int:
    """Images per block: every stage handles one whole block per call, so a teacher's batches
    are cut from the block in plan order (`teachers.<role>.batch_size` at a time, same input
    size together). Blocks never cross a shard and depend only on the plan and the batch sizes,
    so a resumed run batches each shard exactly as an uninterrupted one (byte-identical labels);
    a changed batch size may move the last bit (README, "Resume")."""
    teachers = plan.config.teachers.roles()
    return max([DECODE_BATCH, *(teachers[r].batch_size for r in roles)])


def block_items(plan: RunPlan, size: int) -> list[list[Item]]:
    """The plan cut into blocks: `size` consecutive items of one shard job each."""
    return [job.items[i:i + size] for job in plan.jobs for i in range(0, len(job.items), size)]


def arrow_blocks(plan: RunPlan, size: int) -> list[Any]:
    """One Arrow table per block, for Ray Data (`item` alone)."""
    import pyarrow as pa

    return [pa.table({"item": pa.array([pickle.dumps(it, protocol=5) for it in block],
                                       pa.binary())})
            for block in block_items(plan, size)]


def load_block(table: Any) -> list[Item]:
    """The Items of a block table (`dump_block`'s, or a plan block)."""
    heads = table.column("item").to_pylist()
    if "data" not in table.column_names:
        return [pickle.loads(h) for h in heads]
    sizes = table.column("sizes").to_pylist()
    data = table.column("data").combine_chunks()
    offsets = np.frombuffer(data.buffers()[1], np.int64)[data.offset:data.offset + len(data) + 1]
    raw = np.frombuffer(data.buffers()[2], np.uint8)
    blob = raw[offsets[0]:offsets[-1]].copy().data  # one copy per block, writable
    items, at = [], 0
    for head, lengths in zip(heads, sizes, strict=True):
        buffers = []
        for n in lengths:
            buffers.append(blob[at:at + n])
            at += n
        items.append(pickle.loads(head, buffers=buffers))
    return items


def dump_block(items: list[Item]) -> Any:
    """`items` as one Arrow table, their numpy buffers out of band in `data`."""
    import pyarrow as pa

    heads, sizes, raws = [], [], []
    for it in items:
        out_of_band: list[pickle.PickleBuffer] = []
        heads.append(pickle.dumps(it, protocol=5, buffer_callback=out_of_band.append))
        views = [b.raw() for b in out_of_band]
        sizes.append([v.nbytes for v in views])
        raws.append(views)
    row_bytes = [sum(n) for n in sizes]
    offsets = np.zeros(len(items) + 1, np.int64)
    np.cumsum(row_bytes, out=offsets[1:])
    data = np.empty(int(offsets[-1]), np.uint8)
    at = 0
    for views in raws:
        for v in views:
            data[at:at + v.nbytes] = np.frombuffer(v, np.uint8)
            at += v.nbytes
    column = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(items), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return pa.table({"item": pa.array(heads, pa.binary()),
                     "sizes": pa.array(sizes, pa.list_(pa.int64())), "data": column})
