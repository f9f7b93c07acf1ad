"""The Ray Data graph of generate-labels: decode (CPU tasks) → one actor pool per enabled
teacher → post-process (CPU tasks) → the driver, which hands each finished item to the
`Committer`. The stages themselves are Ray-free (`pipelines.stages`)."""

from __future__ import annotations

import logging
import pickle
import threading
from contextlib import suppress
from typing import Any

import numpy as np

from distill.config import TeacherConfig
from distill.errors import DistillError
from pipelines.cluster import ClusterInfo, unwrap_error
from pipelines.commit import Committer, check_dtype
from pipelines.plan import RunOptions, RunPlan
from pipelines.progress import ProgressBoard, ProgressDisplay
from pipelines.sizing import (
    actor_cpus,
    actor_memory,
    check_gpus,
    object_store_budget,
    task_cpus,
)
from pipelines.stages import Item, TeacherStage, decode_items, postprocess_items

__all__ = ["DECODE_BATCH", "TeacherOp", "block_size", "execute"]

logger = logging.getLogger(__name__)

DECODE_BATCH = 8  # images per decode / post-process task


# ---------------------------------------------------------------------------------------------
# Ray Data operators (module-level so Ray can pickle them by reference)


# Items cross every stage boundary as one Arrow table per block: `item`, each Item pickled
# (protocol 5) with its numpy buffers (the decoded image, teacher outputs) taken out of band;
# `sizes`, those buffers' lengths; `data`, the buffers back to back. Ray moves the table
# through its object store without pickling it again, and a reader copies each block's `data`
# once (arrays stay writable, as a teacher may expect) instead of unpickling a pickle of every
# array within Ray's own. Plan blocks (`_blocks`) carry `item` alone.


def _load(table: Any) -> list[Item]:
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


def _dump(items: list[Item]) -> Any:
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


def _report(board: Any, stage: str, n: int) -> None:
    if board is not None:
        try:
            board.add.remote(stage, n)
        except Exception:  # progress is best effort; never fail a batch over it
            logger.debug("progress report failed", exc_info=True)


def _decode_op(batch: Any, data: Any, board: Any) -> Any:
    items = decode_items(_load(batch), data)
    _report(board, "decode", len(items))
    return _dump(items)


def _postprocess_op(batch: Any, labels: Any, board: Any) -> Any:
    items = postprocess_items(_load(batch), labels)
    _report(board, "postprocess", len(items))
    return _dump(items)


class TeacherOp:
    """A teacher stage as a Ray Data actor: the model loads once per actor."""

    def __init__(self, role: str, config: TeacherConfig, threads: int, board: Any,
                 dtype: str | None = None, last: bool = False) -> None:
        self.stage = TeacherStage(role, config, threads, last)
        self.board = board
        check_dtype(role, dtype, self.stage.provenance)  # before labelling a single image

    def __call__(self, batch: Any) -> Any:
        items = self.stage(_load(batch))
        _report(self.board, self.stage.role, len(items))
        return _dump(items)


def block_size(plan: RunPlan, roles: list[str]) -> int:
    """Images per block: every stage handles one whole block per call, so a teacher's batches
    are cut from the block in plan order (`teachers.<role>.batch_size` at a time, same input
    size together). Blocks never cross a shard and depend only on the plan and the batch sizes,
    so a resumed run batches each shard exactly as an uninterrupted one (byte-identical labels);
    a changed batch size may move the last bit (README, "Resume")."""
    teachers = plan.config.teachers.roles()
    return max([DECODE_BATCH, *(teachers[r].batch_size for r in roles)])


def _blocks(plan: RunPlan, size: int) -> list[Any]:
    """One Arrow table per block: `size` consecutive items of one shard job."""
    import pyarrow as pa

    out = []
    for job in plan.jobs:
        for i in range(0, len(job.items), size):
            part = [pickle.dumps(it, protocol=5) for it in job.items[i:i + size]]
            out.append(pa.table({"item": pa.array(part, pa.binary())}))
    return out


def _build_dataset(plan: RunPlan, cluster: ClusterInfo, board: Any) -> Any:
    import ray.data

    config = plan.config
    stage_roles = plan.stage_names()[1:-1]
    cpus = actor_cpus(config, stage_roles, cluster)
    tasks = task_cpus(config, stage_roles, cpus)
    # batch_size=None everywhere: a call gets one whole block, never a slice across blocks.
    ds: Any = ray.data.from_arrow(_blocks(plan, block_size(plan, stage_roles)))
    ds = ds.map_batches(_decode_op, batch_size=None, batch_format="pyarrow",
                        fn_kwargs={"data": config.data, "board": board}, num_cpus=tasks)
    check_gpus(config, stage_roles, cluster)
    memory = actor_memory(config, stage_roles, cluster)
    teachers = config.teachers.roles()
    for role in stage_roles:
        t = teachers[role]
        reserve = {"memory": memory[role]} if memory[role] else {}
        ds = ds.map_batches(
            TeacherOp, batch_size=None, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=t.concurrency),
            fn_constructor_kwargs={"role": role, "config": t,
                                   "threads": max(1, int(cpus[role])), "board": board,
                                   "dtype": plan.manifest.dtypes.get(role),
                                   "last": role == stage_roles[-1]},
            num_cpus=cpus[role], num_gpus=t.num_gpus or None, **reserve,
        )
    return ds.map_batches(_postprocess_op, batch_size=None, batch_format="pyarrow",
                          fn_kwargs={"labels": config.labels, "board": board}, num_cpus=tasks)


def _quiet_ray_data_console() -> None:
    """Ray Data prints its plan, a note that its progress bars are off (ours draw instead) and
    advice such as its memory warnings (`Operator '…' uses 688.9MiB …`, every 30 s) on the
    console; without -v only its errors stay there. Its full log still goes to the session's
    logs/ray-data/ (the path the run's summary names)."""
    for handler in logging.getLogger("ray.data").handlers:
        # its file handler is a plain Handler (SessionFileHandler), the console a StreamHandler
        if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)


def execute(plan: RunPlan, options: RunOptions, cluster: ClusterInfo,
            committer: Committer) -> None:
    """Run the graph over the plan's jobs, committing shards as they complete."""
    import ray
    import ray.data
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not options.verbose:
        _quiet_ray_data_console()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = options.verbose
    ctx.execution_options.preserve_order = True  # shards finish in order: bounded driver memory
    ctx.actor_init_max_retries = 0  # a teacher that cannot load fails the run at once, clearly
    roles = plan.stage_names()[1:-1]
    budget = object_store_budget(plan.config, roles, cluster, block_size(plan, roles))
    # bounded memory whatever the number of images (Ray Data caps it at the cluster's share)
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
        object_store_memory=budget)
    here = ray.get_runtime_context().get_node_id()
    board: Any = ray.remote(num_cpus=0)(ProgressBoard).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
    total = plan.images_to_process
    display = ProgressDisplay(plan.stage_names(), total, live=options.live)
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.5):
            try:
                counts = ray.get(board.snapshot.remote(), timeout=5)
            except Exception:
                continue
            display.update(counts, committer.written)

    with display:
        poller = threading.Thread(target=poll, name="progress", daemon=True)
        poller.start()
        try:
            ds = _build_dataset(plan, cluster, board)
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow",
                                         prefetch_batches=2):
                for item in _load(batch):
                    committer.add(item)
        except DistillError:
            raise
        except Exception as exc:
            inner = unwrap_error(exc)
            if inner is not None:
                raise type(inner)(str(inner)) from exc
            raise
        finally:
            stop.set()
            poller.join()
            with suppress(Exception):
                display.update(ray.get(board.snapshot.remote(), timeout=5), committer.written)
            with suppress(Exception):  # the cluster may be gone: keep the original error
                ray.kill(board)
    if committer.got:
        left = {k: f"{len(v)}/{committer.expected[k]}" for k, v in committer.got.items()}
        raise DistillError(f"the pipeline ended with shards still missing images: {left}; "
                           "re-run the same command to finish them")
