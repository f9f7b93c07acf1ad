"""Live progress for long runs: images/s and ETA per stage and overall, then a summary table.

Stages report counts to a `ProgressBoard` (a zero-CPU Ray actor on the driver's node in a run;
a plain object in tests); the driver polls it and draws a `rich` live table on a terminal, or a
log line every `interval` seconds when stderr is not one (CI, `nohup`, a file). Rates, ETAs
and durations are counted and written by `distill.progress`, the one owner of progress.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from distill.progress import RateTracker, format_duration, format_rate

__all__ = ["ProgressBoard", "ProgressDisplay", "RateTracker", "announce", "format_duration"]


def announce(text: str, title: str = "generate-labels") -> None:
    """One progress line on stderr for a step that shows no counts yet ("starting Ray")."""
    print(f"[{title}] {text}", file=sys.stderr, flush=True)


class ProgressBoard:
    """Counts per stage. Ray runs it as an actor (`ray.remote(ProgressBoard)`)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, stage: str, n: int) -> None:
        self.counts[stage] = self.counts.get(stage, 0) + n

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


class ProgressDisplay:
    """Draws per-stage and overall progress. Use as a context manager; call `update` often."""

    def __init__(self, stages: list[str], total: int, title: str = "generate-labels",
                 interval: float = 10.0, live: bool | None = None) -> None:
        self.stages = stages
        self.total = total
        self.title = title
        self.interval = interval
        self.trackers = {s: RateTracker(total) for s in [*stages, "written"]}
        self.started = time.monotonic()
        self._last_line = 0.0
        self.live = sys.stderr.isatty() if live is None else live
        self._live: Any = None
        self._phase = ""  # what the run does before images flow ("loading teachers (1/2)")

    def __enter__(self) -> ProgressDisplay:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._table(), console=Console(stderr=True), refresh_per_second=2,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(None, None, None)
            self._live = None

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, text: str) -> None:
        """Say what the run is doing while no image is done yet; a change prints at once."""
        if text == self._phase:
            return
        self._phase = text
        if self._live is not None:
            self._live.update(self._table())
        elif text:
            self._last_line = time.monotonic()
            print(self.line(), file=sys.stderr, flush=True)

    def update(self, counts: dict[str, int], written: int) -> None:
        now = time.monotonic()
        for stage in self.stages:
            self.trackers[stage].update(min(self.total, counts.get(stage, 0)), now)
        self.trackers["written"].update(written, now)
        if self._live is not None:
            self._live.update(self._table())
        elif now - self._last_line >= self.interval:
            self._last_line = now
            print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        """One log line: overall first, then each stage."""
        parts = [self._cell("written")] + [self._cell(s) for s in self.stages]
        elapsed = format_duration(time.monotonic() - self.started)
        phase = f"{self._phase} | " if self._phase else ""
        return f"[{self.title} {elapsed}] {phase}" + " | ".join(parts)

    def _cell(self, name: str) -> str:
        t = self.trackers[name]
        return f"{name} {t.done}/{self.total} {format_rate(t.rate)} eta {format_duration(t.eta)}"

    def _table(self) -> Any:
        from rich.table import Table

        phase = f" — {self._phase}" if self._phase else ""
        table = Table(title=f"{self.title} — {format_duration(time.monotonic() - self.started)}"
                      f"{phase}", title_justify="left")
        for col in ("stage", "images", "done", "images/s", "ETA"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        for name in [*self.stages, "written"]:
            t = self.trackers[name]
            pct = 100.0 * t.done / self.total if self.total else 100.0
            table.add_row(
                "overall (written)" if name == "written" else name,
                f"{t.done}/{self.total}", f"{pct:5.1f}%",
                f"{t.rate:.2f}" if t.rate else "-", format_duration(t.eta),
            )
        return table
