"""The Ray side of generate-labels, in one of two layouts (`sizing.choose_layout`):

    fused   plan blocks → plain threaded Ray actors (a block slot per CPU, `worker_threads`
            slots per actor sharing its models), each slot running decode, every teacher and
            post-processing (`LabelOp`, driven by `_Fused`)
    pools   a Ray Data graph: decode (CPU tasks) → one actor pool per enabled teacher →
            post-process (CPU tasks) (`_build_dataset`, `_Pools`)

then the driver, which hands each finished item to the `Committer`. This module schedules;
how the plan is cut into blocks and how a block travels is `pipelines.blocks`. Both layouts cut
the same blocks and run the same stages on them, so they write the same labels. The stages
themselves are Ray-free (`pipelines.stages`)."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

from distill.config import DataConfig, LabelsConfig, TeacherConfig
from distill.errors import DistillError
from distill.identity import check_dtype
from pipelines.blocks import arrow_blocks, block_items, block_size, dump_block, load_block
from pipelines.cluster import ClusterInfo, first_line, unwrap_error
from pipelines.commit import Committer
from pipelines.plan import RunOptions, RunPlan
from pipelines.progress import ProgressBoard, ProgressDisplay, announce
from pipelines.sizing import (
    actor_cpus,
    actor_memory,
    check_gpus,
    choose_layout,
    fused_workers,
    object_store_budget,
    task_cpus,
)
from pipelines.stages import (
    Item,
    TeacherStage,
    decode_items,
    labels_context,
    postprocess_items,
)

__all__ = ["LabelOp", "TeacherOp", "execute"]

logger = logging.getLogger(__name__)


# Ray Data operators (module-level so Ray can pickle them by reference)


def _report(board: Any, stage: str, n: int) -> None:
    if board is not None:
        try:
            board.add.remote(stage, n)
        except Exception:  # progress is best effort; never fail a batch over it
            logger.debug("progress report failed", exc_info=True)


def _decode_op(batch: Any, data: Any, board: Any) -> Any:
    items = decode_items(load_block(batch), data)
    _report(board, "decode", len(items))
    return dump_block(items)


def _postprocess_op(batch: Any, labels: Any, board: Any) -> Any:
    items = postprocess_items(load_block(batch), labels)
    _report(board, "postprocess", len(items))
    return dump_block(items)


class TeacherOp:
    """A teacher stage as a Ray Data actor: the model loads once per actor."""

    def __init__(self, role: str, config: TeacherConfig, threads: int, board: Any,
                 dtype: str | None = None, last: bool = False) -> None:
        self.stage = TeacherStage(role, config, threads, last)
        self.board = board
        check_dtype(role, dtype, self.stage.provenance)  # before labelling a single image

    def __call__(self, batch: Any) -> Any:
        items = self.stage(load_block(batch))
        _report(self.board, self.stage.role, len(items))
        return dump_block(items)


class LabelOp:
    """The fused layout's worker (a plain Ray actor): decode, every teacher and post-processing
    in one process, so only the plan's items come in and finished rows go out, with nothing in
    between crossing the object store. The models and the label context (GloVe words) load in
    the constructor, before the first block."""

    def __init__(self, roles: list[str], teachers: dict[str, TeacherConfig], threads: int,
                 data: DataConfig, labels: LabelsConfig, dtypes: dict[str, str]) -> None:
        self.stages = [TeacherStage(r, teachers[r], threads, last=r == roles[-1])
                       for r in roles]
        for stage in self.stages:
            check_dtype(stage.role, dtypes.get(stage.role), stage.provenance)
        self.data, self.labels = data, labels
        labels_context(labels)

    def ready(self) -> bool:
        return True

    def label(self, items: list[Item]) -> list[Item]:
        items = decode_items(items, self.data)
        for stage in self.stages:
            items = stage(items)
        return postprocess_items(items, self.labels)


def _build_dataset(plan: RunPlan, cluster: ClusterInfo, board: Any) -> Any:
    import ray.data

    config = plan.config
    stage_roles = plan.stage_names()[1:-1]
    # batch_size=None everywhere: a call gets one whole block, never a slice across blocks.
    ds: Any = ray.data.from_arrow(arrow_blocks(plan, block_size(plan, stage_roles)))
    cpus = actor_cpus(config, stage_roles, cluster)
    tasks = task_cpus(config, stage_roles, cpus)
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


class _Pools:
    """The pools layout on Ray Data: counts come from a `ProgressBoard` actor the stages
    report to."""

    def __init__(self, plan: RunPlan, options: RunOptions, cluster: ClusterInfo) -> None:
        import ray
        import ray.data
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if not options.verbose:
            _quiet_ray_data_console()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = options.verbose
        ctx.execution_options.preserve_order = True  # shards finish in order: bounded memory
        ctx.actor_init_max_retries = 0  # a teacher that cannot load fails the run at once
        roles = plan.stage_names()[1:-1]
        budget = object_store_budget(plan.config, roles, cluster, block_size(plan, roles))
        # bounded memory whatever the number of images (Ray Data caps it at the cluster's share)
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            object_store_memory=budget)
        here = ray.get_runtime_context().get_node_id()
        self.board: Any = ray.remote(num_cpus=0)(ProgressBoard).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        self.plan, self.cluster = plan, cluster

    def counts(self) -> dict[str, int]:
        import ray

        return dict(ray.get(self.board.snapshot.remote(), timeout=5))

    def phase(self, counts: dict[str, int]) -> str:
        roles = self.plan.stage_names()[1:-1]
        ready = sum(1 for r in roles if counts.get(r))
        return "" if ready == len(roles) else \
            f"loading teachers ({ready}/{len(roles)} pools labelling)"

    def items(self) -> Iterator[Item]:
        ds = _build_dataset(self.plan, self.cluster, self.board)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow",
                                     prefetch_batches=2):
            yield from load_block(batch)

    def close(self) -> None:
        import ray

        with suppress(Exception):  # the cluster may be gone: keep the original error
            ray.kill(self.board)


class _Fused:
    """The fused layout on plain Ray actors (`LabelOp`), without Ray Data: no stats, autoscaling
    or location actors, no executor in the driver.

    - Each worker has at most `DEPTH` blocks queued beyond one per slot (its threads), so it
      never waits for the driver; blocks
      go out in plan order, so shards finish about in order and the driver holds at most the
      window's items.
    - The first worker starts alone and the others once it is ready: on a machine with a core
      per worker, workers that import torch and build models side by side are all ready late,
      while one alone labels the first shard early.
    - A worker lost with its node (or killed) is replaced, and its blocks go to the others;
      a block whose worker died `MAX_TRIES` times ends the run, naming its shard. A worker
      whose constructor fails ends the run with its own message."""

    DEPTH = 2
    MAX_TRIES = 3

    def __init__(self, plan: RunPlan, cluster: ClusterInfo) -> None:
        self.plan, self.cluster = plan, cluster
        self.roles = plan.stage_names()[1:-1]
        self.workers = fused_workers(plan.config, self.roles, cluster)
        self.done: dict[str, int] = {}
        self.actors: list[Any] = []
        self.starting: dict[Any, Any] = {}  # ready() ref → actor being built
        self.load: dict[Any, int] = {}  # ready actor → blocks queued on it
        self.gone: set[Any] = set()  # workers lost and replaced

    # Every stage of a block runs in one worker: one progress row for them all.
    ROW = "labelled (fused)"

    def counts(self) -> dict[str, int]:
        return {self.ROW: self.done.get("postprocess", 0)}

    def phase(self, counts: dict[str, int]) -> str:
        if self.done:
            return ""
        ready = len(self.load)
        return f"loading teachers ({ready}/{self.workers.count} worker(s) ready)"

    def _start(self, n: int) -> None:
        import ray

        config, w = self.plan.config, self.workers
        reserve = {"memory": w.memory} if w.memory else {}
        # a threaded actor: its `threads` slots label blocks side by side on one set of models
        worker = ray.remote(LabelOp).options(num_cpus=w.cpus, num_gpus=w.gpus or None,
                                             max_restarts=0, max_concurrency=w.threads,
                                             **reserve)
        for _ in range(n):
            actor: Any = worker.remote(self.roles, config.teachers.roles(),
                                       max(1, int(w.slot_cpus)),
                                  config.data, config.labels, dict(self.plan.manifest.dtypes))
            self.actors.append(actor)
            self.starting[actor.ready.remote()] = actor

    def _lost(self, actor: Any, exc: Exception) -> None:
        """A worker died (`actor`, ready or still starting): a constructor that raised ends
        the run; anything else (its node or process lost) is replaced, once per worker."""
        import ray

        if getattr(exc, "actor_init_failed", False) or unwrap_error(exc) is not None:
            raise exc
        if actor in self.gone:
            return
        logger.warning("a fused worker was lost (%s); starting another", first_line(exc))
        self.gone.add(actor)
        self.load.pop(actor, None)
        with suppress(Exception):
            ray.kill(actor)
        self._start(1)

    def items(self) -> Iterator[Item]:
        import ray
        from ray.exceptions import RayActorError

        logger.info("layout fused: %d worker process(es), %d block slot(s) of %g CPU(s) each",
                    self.workers.count, self.workers.threads, self.workers.slot_cpus)
        todo = deque(enumerate(block_items(self.plan, block_size(self.plan, self.roles))))
        tries: dict[int, int] = {}
        queued: dict[Any, tuple[Any, int, list[Item]]] = {}  # result ref → (actor, block)
        rest = self.workers.count - 1  # workers started once the first one is ready
        self._start(1)
        while todo or queued:
            for ref in ray.wait(list(self.starting), num_returns=len(self.starting),
                                timeout=0)[0] if self.starting else []:
                actor = self.starting.pop(ref)
                try:
                    ray.get(ref)
                except RayActorError as exc:
                    self._lost(actor, exc)
                    continue
                self.load[actor] = 0
                if rest:
                    self._start(rest)
                    rest = 0
            while todo and self.load:
                actor = min(self.load, key=self.load.__getitem__)
                if self.load[actor] >= self.DEPTH - 1 + self.workers.threads:
                    break
                index, block = todo.popleft()
                queued[actor.label.remote(block)] = (actor, index, block)
                self.load[actor] += 1
            waiting = list(queued) or list(self.starting)
            if not waiting:  # cannot happen: a lost worker is always replaced
                raise DistillError("generate-labels has no worker left to label with")
            for ref in ray.wait(waiting, num_returns=1, timeout=0.5)[0]:
                if ref not in queued:
                    continue  # a worker became ready: taken at the top
                actor, index, block = queued.pop(ref)
                if actor in self.load:
                    self.load[actor] -= 1
                try:
                    items = ray.get(ref)
                except RayActorError as exc:
                    tries[index] = tries.get(index, 0) + 1
                    if tries[index] >= self.MAX_TRIES:
                        raise DistillError(
                            f"the workers labelling shard {block[0].shard} died "
                            f"{tries[index]} times ({first_line(exc)}); see Ray's logs") from exc
                    self._lost(actor, exc)
                    todo.appendleft((index, block))
                    continue
                for stage in ["decode", *self.roles, "postprocess"]:
                    self.done[stage] = self.done.get(stage, 0) + len(items)
                yield from items

    def close(self) -> None:
        import ray

        for actor in self.actors:
            with suppress(Exception):
                ray.kill(actor)


def execute(plan: RunPlan, options: RunOptions, cluster: ClusterInfo,
            committer: Committer) -> None:
    """Run the graph over the plan's jobs, committing shards as they complete."""
    roles = plan.stage_names()[1:-1]
    source: _Pools | _Fused = (_Fused(plan, cluster)
                               if choose_layout(plan.config, roles) == "fused"
                               else _Pools(plan, options, cluster))
    total = plan.images_to_process
    fused = isinstance(source, _Fused)
    if fused:
        announce(f"layout fused: every worker runs {' → '.join(plan.stage_names())} on its "
                 "blocks (one progress row)")
    display = ProgressDisplay([_Fused.ROW] if fused else plan.stage_names(), total,
                              live=options.live)
    display.phase = source.phase({})
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.5):
            try:
                counts = source.counts()
            except Exception:
                continue
            display.phase = source.phase(counts)
            display.update(counts, committer.written)

    with display:
        poller = threading.Thread(target=poll, name="progress", daemon=True)
        poller.start()
        try:
            for item in source.items():
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
                display.update(source.counts(), committer.written)
            source.close()
    if committer.got:
        left = {k: f"{len(v)}/{committer.expected[k]}" for k, v in committer.got.items()}
        raise DistillError(f"the pipeline ended with shards still missing images: {left}; "
                           "re-run the same command to finish them")
