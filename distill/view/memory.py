"""What bounds the viewer's memory: its caches, and the few threads that decode rows and draw
pictures.

- `LRU`: least-recently-used, bounded in entries and in bytes, shared by the request threads.
  A value is built once per key even when several threads ask for it at the same time (they
  wait for the first); a build that raises is not cached, so the next request tries again, and
  nothing is left behind for its key — unknown names in URLs cannot grow a cache.
- `Workers`: a small pool for the work that allocates tens of MiB per request (a decoded row's
  label maps, a layer being drawn). Run in the server's 40 request threads, each such thread
  had glibc give it its own malloc arena, and every arena kept its peak after the burst
  (docs/DECISIONS.md); a few threads keep both the concurrent peaks and the arenas few.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import numpy as np
import pyarrow as pa

__all__ = ["LRU", "Workers", "nbytes"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def nbytes(value: Any) -> int:
    """The bytes a cached value holds in its arrays, tables and byte strings (the rest —
    numbers, short strings, lists of small records — is small beside them and not counted)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if isinstance(value, pa.Table):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 0


class _Building:
    """A key being built: the lock its builder holds and how many threads want it."""

    __slots__ = ("lock", "waiting")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting = 0


class LRU(Generic[K, V]):
    """At most `entries` values and `max_bytes` bytes of them (`sizeof` measures a value); the
    least recently used go first. A value larger than `max_bytes` is returned, not kept."""

    def __init__(self, entries: int, max_bytes: int,
                 sizeof: Callable[[Any], int] = nbytes) -> None:
        self.entries = entries
        self.max_bytes = max_bytes
        self._sizeof = sizeof
        self._values: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._building: dict[K, _Building] = {}

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    @property
    def nbytes(self) -> int:
        """Bytes of the values kept now."""
        return self._bytes

    @property
    def building(self) -> int:
        """Keys being built now (0 when no request is in flight)."""
        return len(self._building)

    def _hit(self, key: K) -> tuple[bool, V | None]:
        got = self._values.get(key)
        if got is None:
            return False, None
        self._values.move_to_end(key)
        return True, got[0]

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        with self._lock:
            found, value = self._hit(key)
            if found:
                return value  # type: ignore[return-value]
            slot = self._building.setdefault(key, _Building())
            slot.waiting += 1
        try:
            with slot.lock:
                with self._lock:
                    found, value = self._hit(key)
                if found:
                    return value  # type: ignore[return-value]
                made = make()
                self._keep(key, made)
                return made
        finally:
            with self._lock:
                slot.waiting -= 1
                if slot.waiting == 0:
                    del self._building[key]

    def _keep(self, key: K, value: V) -> None:
        size = self._sizeof(value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._values.pop(key, None)
            self._bytes += size - (old[1] if old else 0)
            self._values[key] = (value, size)
            while len(self._values) > self.entries or self._bytes > self.max_bytes:
                _, (_, dropped) = self._values.popitem(last=False)
                self._bytes -= dropped


class Workers:
    """`threads` threads, started on first use, stopped by `close` (a later use starts them
    again), that run the heavy part of requests."""

    def __init__(self, threads: int, name: str) -> None:
        self.threads = threads
        self._name = name
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., V], *args: Any) -> V:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=self._name)
            pool = self._pool
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
