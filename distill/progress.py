"""Progress on the console, one owner for every command: a `rich.progress` bar (done/total,
rate, ETA) when stderr is a terminal, a plain line every `interval` seconds when it is not
(CI, `nohup`, a file), and the duration / rate formatting the live tables use too."""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LINE_EVERY_S", "Progress", "RateTracker", "format_duration", "format_rate"]

logger = logging.getLogger(__name__)

LINE_EVERY_S = 10.0  # a plain progress line this often when stderr is not a terminal


def format_duration(seconds: float | None) -> str:
    """`mm:ss`, `h:mm:ss` past an hour, `--:--` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def format_rate(rate: float | None, unit: str = "", digits: int = 2) -> str:
    """`2.00/s` (`2.0 images/s` with a unit), `-/s` while there is no rate yet."""
    per = f" {unit}/s" if unit else "/s"
    return f"{rate:.{digits}f}{per}" if rate else f"-{per}"


@dataclass
class RateTracker:
    """Items/s over a sliding window (recent speed, not the average since start-up, which
    model loading would drag down), and the ETA it implies."""

    total: int
    window_s: float = 30.0
    history: deque[tuple[float, int]] = field(default_factory=deque)

    def update(self, done: int, now: float) -> None:
        self.history.append((now, done))
        while len(self.history) > 2 and now - self.history[0][0] > self.window_s:
            self.history.popleft()

    @property
    def done(self) -> int:
        return self.history[-1][1] if self.history else 0

    @property
    def rate(self) -> float | None:
        if len(self.history) < 2:
            return None
        (t0, d0), (t1, d1) = self.history[0], self.history[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 and d1 > d0 else None

    @property
    def eta(self) -> float | None:
        remaining = max(0, self.total - self.done)
        if remaining == 0:
            return 0.0
        rate = self.rate
        return remaining / rate if rate else None


class Progress:
    """One bar over `total` units. Use as a context manager; `advance(n, **fields)`.

    `fields` names extra values shown after the rate (`loss`), set through `advance`;
    `data=True` counts bytes (sizes and a transfer rate on the bar). Disabled, it does nothing.
    On a terminal the rate is rich's own windowed estimate; the plain line uses a
    `RateTracker` over the same 30 s."""

    def __init__(self, description: str, total: int, unit: str = "items", *,
                 enabled: bool = True, fields: tuple[str, ...] = (), data: bool = False,
                 transient: bool = False, interval: float = LINE_EVERY_S,
                 tty: bool | None = None) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.enabled = enabled and total > 0
        self.fields = dict.fromkeys(fields, "-")
        self.data, self.transient, self.interval = data, transient, interval
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.done = 0
        self.tracker = RateTracker(total)
        self.started = self.last_line = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    @property
    def live(self) -> bool:
        """Whether a rich bar is on the screen (then `note` prints above it)."""
        return self._bar is not None

    def __enter__(self) -> Progress:
        if self.enabled and self.tty:
            self._bar = self._rich()
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, **self.fields)
        self.tracker.update(0, self.started)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def describe(self, description: str) -> None:
        self.description = description
        if self._bar is not None:
            self._bar.update(self._task, description=description)

    def advance(self, n: int = 1, **fields: Any) -> None:
        if not self.enabled:
            return
        self.done += n
        self.fields.update({k: str(v) for k, v in fields.items()})
        if self._bar is not None:
            self._bar.update(self._task, advance=n, **fields)
            return
        now = time.monotonic()
        self.tracker.update(self.done, now)
        if now - self.last_line >= self.interval:
            self.last_line = now
            print(self.line(), file=sys.stderr, flush=True)

    def note(self, text: str) -> bool:
        """Print `text` above the bar; False (nothing printed) when no bar is shown."""
        if self._bar is None:
            return False
        self._bar.console.print(text)
        return True

    def line(self) -> str:
        """The plain line: `audit: 120/400 rows, 2.00 rows/s, eta 02:20, loss 0.41`."""
        t = self.tracker
        done = (f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB" if self.data
                else f"{self.done}/{self.total} {self.unit}")
        rate = (format_rate(t.rate and t.rate / 1e6, "MB", 1) if self.data
                else format_rate(t.rate, self.unit, 1))
        extra = "".join(f", {k} {v}" for k, v in self.fields.items())
        return f"{self.description}: {done}, {rate}, eta {format_duration(t.eta)}{extra}"

    def _rich(self) -> Any:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            ProgressColumn,
            Task,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress
        from rich.text import Text

        unit = self.unit

        class Rate(ProgressColumn):
            def render(self, task: Task) -> Text:
                return Text(format_rate(task.speed, unit, 1))

        columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
        columns += ([DownloadColumn(), TransferSpeedColumn()] if self.data
                    else [MofNCompleteColumn(), Rate()])
        if self.fields:
            columns.append(TextColumn("  ".join(f"{k} {{task.fields[{k}]}}"
                                                for k in self.fields)))
        columns.append(TimeRemainingColumn())
        return RichProgress(*columns, console=Console(stderr=True), transient=self.transient)
