"""The one owner of progress (`distill.progress`): a plain line every interval when stderr is
not a terminal, with done/total, the windowed rate and the ETA; a rich bar on a terminal with
the same figures; nothing when disabled."""

from __future__ import annotations

import pytest

from distill import progress
from distill.progress import Progress, format_rate


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    return now


def test_format_rate():
    assert format_rate(None) == "-/s"
    assert format_rate(0.0, "images") == "- images/s"
    assert format_rate(2.0) == "2.00/s"
    assert format_rate(12.345, "rows", 1) == "12.3 rows/s"


def test_plain_lines_every_interval_with_rate_and_eta(capsys, clock):
    with Progress("audit", 100, "rows", tty=False, interval=10.0, fields=("loss",)) as bar:
        clock[0] += 5
        bar.advance(10)  # within the interval: silent
        clock[0] += 5
        bar.advance(10, loss="0.5000")
        clock[0] += 4
        bar.advance(20)  # silent again
        clock[0] += 6
        bar.advance(20)
    assert not bar.live
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == [
        "audit: 20/100 rows, 2.0 rows/s, eta 00:40, loss 0.5000",
        "audit: 60/100 rows, 3.0 rows/s, eta 00:13, loss 0.5000",
    ]


def test_byte_progress_line_in_megabytes(capsys, clock):
    with Progress("verify-shards", 50_000_000, "bytes", data=True, tty=False,
                  interval=1.0) as bar:
        clock[0] += 2
        bar.advance(10_000_000)
    assert capsys.readouterr().err == "verify-shards: 10.0/50.0 MB, 5.0 MB/s, eta 00:08\n"


def test_disabled_or_empty_shows_nothing(capsys, clock):
    for bar in (Progress("x", 10, enabled=False, tty=True, interval=0),
                Progress("x", 0, tty=False, interval=0)):
        with bar:
            clock[0] += 1
            bar.advance(5)
        assert not bar.live and not bar.note("hello")
    assert capsys.readouterr().err == ""


def test_on_a_terminal_a_rich_bar_counts_and_notes_above_it(capsys):
    with Progress("predict", 4, "images", tty=True, fields=("loss",)) as bar:
        assert bar.live
        bar.advance(3, loss="0.25")
        task = bar._bar.tasks[0]
        assert (task.completed, task.total, task.fields["loss"]) == (3, 4, "0.25")
        assert bar.note("epoch 1: loss 0.25")
        bar.describe("predict b.jpg")
        assert bar._bar.tasks[0].description == "predict b.jpg"
    assert not bar.live
    assert "epoch 1: loss 0.25" in capsys.readouterr().err
