"""What a numeric config setting allows (`Range`), declared beside its field (`_setting`) and
checked for a whole config (`check_ranges`); which fields enter a run's fingerprint."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from distill.errors import ConfigError
from distill.identity import RUNTIME, UNLESS_DEFAULT

__all__ = [
    "AT_LEAST_0",
    "AT_LEAST_1",
    "GAIN",
    "INT64_MAX",
    "MAX_BATCH",
    "MAX_SIDE",
    "POSITIVE",
    "UNIT",
    "Range",
    "check_ranges",
]

# What enters a run's fingerprint (`distill.identity`): a `_runtime` setting (how fast a run goes,
# never what it writes) never does; an `_added` one (added after runs were made) only when it is
# not at its default.
def _runtime(default: Any) -> Any:
    return field(default=default, metadata=RUNTIME)


def _added(default: Any) -> Any:
    return field(default=default, metadata=UNLESS_DEFAULT)


INT64_MAX = 2**63 - 1
# Ceilings on sizes that allocate: far above any sensible run, far below what would take a
# machine down before distill could say so (a batch of 10**12 grew to 23 GB and was killed).
# What one machine holds is checked when training starts (distill.student.sizing).
MAX_BATCH = 2**16
MAX_SIDE = 2**14  # pixels a side of a network input


@dataclass(frozen=True)
class Range:
    """The values a numeric setting allows: `low <= value <= high` (`low < value` when
    `open_low`); always a finite number, and an int within 64 bits (seeds, torch, Arrow)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def allows(self, value: float, integer: bool) -> bool:
        if not (-INT64_MAX - 1 <= value <= INT64_MAX if integer else math.isfinite(value)):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high

    def check(self, name: str, value: float, integer: bool) -> None:
        """Raise a one-line `ConfigError` naming the setting, its value and this range."""
        if not self.allows(value, integer):
            raise ConfigError(f"{name} = {value!r} is out of range; allowed: "
                              f"{self.describe(integer)}")

    def describe(self, integer: bool) -> str:
        """'an integer in 1..2**63-1', 'a finite number > 0', 'a finite number in [0, 1]'."""
        if integer:
            low = "-2**63" if self.low is None else int(self.low) + int(self.open_low)
            high = "2**63-1" if self.high is None or self.high >= INT64_MAX else int(self.high)
            return f"an integer in {low}..{high}"
        if self.low is not None and self.high is not None:
            return f"a finite number in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"a finite number {'>' if self.open_low else '>='} {self.low:g}"
        return "a finite number" + (f" <= {self.high:g}" if self.high is not None else "")


POSITIVE = Range(0, open_low=True)  # a rate, a scale, a CPU share: > 0
AT_LEAST_0 = Range(0)  # a count where 0 means none or "the default"
AT_LEAST_1 = Range(1)  # a count of epochs, steps, items
UNIT = Range(0, 1)  # a probability or a score threshold
GAIN = Range(0, 1e6)  # a loss weight: 0 leaves a modality out; the loss is float32


def _setting(default: Any, allowed: Range, *, runtime: bool = False,
             added: bool = False) -> Any:
    """A numeric field and its allowed range (`check_ranges`); `runtime` / `added` as
    `_runtime` / `_added`."""
    meta: dict[str, Any] = {"allowed": allowed}
    if runtime:
        meta.update(RUNTIME)
    if added:
        meta.update(UNLESS_DEFAULT)
    return field(default=default, metadata=meta)


def check_ranges(section: Any, prefix: str = "") -> None:
    """Every numeric setting of a config (section), sub-sections included, within the range
    declared beside its field; the first that is not raises, naming it and the range."""
    hints = get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{prefix}{f.name}.")
        elif "allowed" in f.metadata:
            f.metadata["allowed"].check(f"{prefix}{f.name}", value, hints[f.name] is int)

