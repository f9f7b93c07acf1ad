"""Progress reporting: durations, windowed rates and ETAs, and one log line per update when
stderr is not a terminal."""

from __future__ import annotations

import pytest

from pipelines import progress
from pipelines.progress import ProgressBoard, ProgressDisplay, RateTracker, format_duration


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "--:--"), (float("nan"), "--:--"), (float("inf"), "--:--"),
    (0, "00:00"), (59.6, "01:00"), (75, "01:15"), (3599, "59:59"), (3600, "1:00:00"),
    (3725, "1:02:05"), (36000 + 61, "10:01:01"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_rate_and_eta_from_two_updates():
    t = RateTracker(total=30)
    assert t.rate is None and t.done == 0
    t.update(0, 100.0)
    assert t.rate is None  # one point is no rate
    t.update(10, 105.0)
    assert t.done == 10
    assert t.rate == pytest.approx(2.0)
    assert t.eta == pytest.approx(10.0)
    t.update(30, 110.0)
    assert t.eta == 0.0  # finished


def test_no_progress_has_no_rate_and_no_eta():
    t = RateTracker(total=30)
    t.update(0, 0.0)
    t.update(0, 5.0)
    assert t.rate is None and t.eta is None
    assert format_duration(t.eta) == "--:--"


def test_rate_is_over_the_window_not_since_start():
    t = RateTracker(total=1000, window_s=30.0)
    t.update(0, 0.0)
    t.update(100, 10.0)  # a fast start...
    t.update(130, 40.0)
    t.update(140, 45.0)  # ...then 2 images/s lately
    assert [when for when, _ in t.history] == [40.0, 45.0]
    assert t.rate == pytest.approx(2.0)  # not 140 / 45
    assert t.eta == pytest.approx(860 / 2.0)


def test_board_counts_per_stage():
    board = ProgressBoard()
    board.add("decode", 3)
    board.add("decode", 2)
    board.add("teacher:depth", 1)
    snap = board.snapshot()
    assert snap == {"decode": 5, "teacher:depth": 1}
    board.add("decode", 1)
    assert snap["decode"] == 5  # a snapshot is a copy


def test_display_writes_one_line_per_update_naming_every_stage(capsys):
    stages = ["decode", "teacher:depth", "postprocess"]
    with ProgressDisplay(stages, total=10, title="gl", live=False, interval=0) as display:
        display.update({"decode": 4, "teacher:depth": 2}, written=1)
        display.update({"decode": 12, "teacher:depth": 5, "postprocess": 3}, written=3)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[gl ")
    for part in ("written 1/10", "decode 4/10", "teacher:depth 2/10", "postprocess 0/10"):
        assert part in lines[0], (part, lines[0])
    for part in ("written 3/10", "decode 10/10", "teacher:depth 5/10", "postprocess 3/10"):
        assert part in lines[1], (part, lines[1])  # a stage's count is capped at the total


def test_display_lines_show_rate_and_eta_and_respect_the_interval(capsys, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    display = ProgressDisplay(["decode"], total=30, live=False, interval=10.0)
    display.update({"decode": 0}, written=0)  # prints: nothing printed yet
    clock[0] = 1005.0
    display.update({"decode": 10}, written=0)  # 5 s later: within the interval, silent
    clock[0] = 1010.0
    display.update({"decode": 20}, written=5)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0] == "[generate-labels 00:00] written 0/30 -/s eta --:-- | " \
                       "decode 0/30 -/s eta --:--"
    assert lines[1] == "[generate-labels 00:10] written 5/30 0.50/s eta 00:50 | " \
                       "decode 20/30 2.00/s eta 00:05"


def test_display_says_what_the_run_does_before_images_flow(capsys):
    """Issue 32: the first minute of a run is not a silent `0/20 -/s eta --:--`."""
    display = ProgressDisplay(["decode"], total=20, live=False, interval=60.0)
    display.phase = "loading teachers (0/1 worker(s) ready)"
    display.phase = "loading teachers (0/1 worker(s) ready)"  # unchanged: not said again
    display.phase = "loading teachers (1/1 worker(s) ready)"
    display.phase = ""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert "loading teachers (0/1 worker(s) ready) | written 0/20" in lines[0]
    assert "loading teachers (1/1 worker(s) ready)" in lines[1]
    assert "loading" not in display.line()
