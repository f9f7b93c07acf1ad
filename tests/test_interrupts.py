"""The first SIGINT or SIGTERM decides how `distill` exits (130, 143), whatever became of its
KeyboardInterrupt on the way: Ray raises a plain one of its own in its place, a library may turn
it into an error, a command may swallow it. Each case runs the real `main` in a subprocess whose
label run is a stand-in that signals its own process (the real runs: tests/pipelines/
test_errors.py)."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import os, signal, sys, time
import pipelines.generate_labels as run
from distill import cli
import distill.cli.run as commands
from distill.errors import DistillError

def stand_in(config, options):
    try:
        os.kill(os.getpid(), signal.{signal})
        time.sleep(60)  # the handler raises in here, if not already before it
    except KeyboardInterrupt as exc:
        {then}
    raise AssertionError("the signal raised nothing")

run.generate_labels = stand_in
commands._report_run = lambda result: None
sys.argv = ["distill", "run", "generate-labels", "--preset", "demo", "--out", sys.argv[1]]
cli.main()
"""

THEN = {
    "ray": "raise KeyboardInterrupt() from None  # what Ray's check_status raises",
    "an error": "raise DistillError('cannot write x: interrupted system call') from exc",
    "swallowed": "return None",
}


@pytest.mark.parametrize(("sig", "then"), [("SIGTERM", "ray"), ("SIGINT", "an error"),
                                           ("SIGTERM", "swallowed")])
def test_the_first_signal_decides_the_exit_code(tmp_path, sig, then):
    program = PROGRAM.format(signal=sig, then=THEN[then])
    proc = subprocess.run([sys.executable, "-c", program, str(tmp_path / "run")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    signum = getattr(signal, sig)
    assert proc.returncode == 128 + signum, proc.stderr
    term = " (SIGTERM)" if signum == signal.SIGTERM else ""
    assert proc.stderr.splitlines() == [
        f"interrupted{term}: no plan was written yet; re-run the same command to start"], \
        proc.stderr
