"""How a generate-labels run ends when it cannot go on, as a user sees it from the CLI: a full
disk is one `error:` line naming the shard and the cause (exit 2) and leaves no temp file;
SIGTERM stops like Ctrl-C — no C stack dump, one line saying how many shards are committed and
that re-running resumes — with exit code 143 (Ctrl-C: 130), the first signal's, whatever comes
after it. Each run joins the test session's Ray (`--address`) so that it starts in seconds; the
tests signal the CLI at a marker it writes (a committed shard, a line, a file it opens), never
after a delay."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import committed_shards, make_coco7
from tests.test_cli import in_private_mounts, private_mounts_work

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
INTERRUPTED = re.compile(r"^interrupted(?P<term> \(SIGTERM\))?: (?P<done>\d+) of (?P<planned>\d+) "
                         r"shards committed; re-run the same command to resume$", re.M)


def _args(root: Path, out: Path, address: str) -> list[str]:
    return ["run", "generate-labels", "--preset", "demo", "--set", f"data.root={root}",
            "--set", "teachers.text.input_size=160", "--set", "teachers.depth.batch_size=2",
            "--shard-size", "2", "--out", str(out), "--no-live", "--address", address]


def _start(args: list[str], sigint_ignored: bool = False) -> subprocess.Popen:
    """The CLI in its own process group, as in a shell. `sigint_ignored`: started the way a
    non-interactive shell starts a background job (and some CI runners start everything),
    with SIGINT ignored — which Python then ignores too unless distill handles it itself."""
    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen([sys.executable, "-m", "distill.cli", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=ignore_sigint if sigint_ignored else None)


def _wait_for_shards(proc: subprocess.Popen, out: Path, n: int) -> None:
    deadline = time.monotonic() + 300
    while proc.poll() is None and committed_shards(out) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended first:\n{proc.stderr.read()[-3000:]}"


def _temps(out: Path) -> list[str]:
    return [p.name for p in out.rglob(".*") if ".tmp-" in p.name]


def test_sigterm_stops_like_ctrl_c_and_more_sigterms_change_nothing(tmp_path, ray_address):
    """One SIGTERM once a shard is committed; two more once the run has said it stopped (Ray
    has shut down by then, and had set SIGTERM back to killing the driver: exit -15)."""
    root, out = make_coco7(tmp_path / "coco"), tmp_path / "run"
    proc = _start(_args(root, out, ray_address))
    _wait_for_shards(proc, out, 1)
    os.killpg(proc.pid, signal.SIGTERM)
    said = []
    for line in proc.stderr:  # wait for the marker: the run's "interrupted" line
        said.append(line)
        if line.startswith("interrupted"):
            break
    os.killpg(proc.pid, signal.SIGTERM)  # the process has not been waited for: never another's
    os.killpg(proc.pid, signal.SIGTERM)
    err = "".join(said) + proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = INTERRUPTED.findall(err)
    assert len(lines) == 1, err
    m = INTERRUPTED.search(err)
    assert m and m["term"] and int(m["planned"]) == 4
    assert int(m["done"]) == committed_shards(out) >= 1  # what the manifest says, exactly
    for noise in ("SIGTERM received", "***", "Traceback", "Exception ignored"):
        assert noise not in err, err
    assert not _temps(out)


def test_ctrl_c_before_the_plan_exists_exits_130_even_if_sigint_was_ignored(tmp_path):
    """The CLI waits on `--image-ids @FIFO` (before its lock and plan) until this test opens
    the FIFO's other end: a SIGINT then is certain to come before the plan. The CLI starts with
    SIGINT ignored, as a CI runner started the one that went on and exited 0."""
    root, out, ids = make_coco7(tmp_path / "coco"), tmp_path / "run", tmp_path / "ids"
    os.mkfifo(ids)
    proc = _start([*_args(root, out, "127.0.0.1:1"), "--image-ids", f"@{ids}"],
                  sigint_ignored=True)
    deadline = time.monotonic() + 120
    while True:  # the marker: the CLI has opened the FIFO to read the ids
        try:
            fd = os.open(ids, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:  # ENXIO: no reader yet
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the CLI never read --image-ids"
            time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(BrokenPipeError):  # a CLI that went on gets one id, and ends
            os.write(fd, b"7\n")
    finally:
        os.close(fd)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert err.splitlines()[-1] == ("interrupted: no plan was written yet; re-run the same "
                                    "command to start"), err
    assert "Traceback" not in err and "Aborted" not in err, err
    assert not out.exists()


def test_a_disk_that_fills_up_mid_shard_is_one_error_line_and_leaves_no_temp(tmp_path,
                                                                            ray_address):
    """The run folder on a 48 kB tmpfs (in a mount namespace of the CLI's own): the config,
    manifest and quarantine fit, the first shard (about 50 kB) does not."""
    if not private_mounts_work():
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN); "
                    "tests/test_storage.py simulates the full disk in-process")
    root, disk = make_coco7(tmp_path / "coco"), tmp_path / "disk"
    disk.mkdir()
    out = disk / "run"
    proc = in_private_mounts([f"-t tmpfs -o size=48k tmpfs {disk}"],
                             _args(root, out, ray_address),
                             after=f"echo LEFT; ls -A {out} {out}/shards")
    err = proc.stderr
    assert proc.returncode == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert re.fullmatch(rf"error: cannot write {re.escape(str(out))}/shards/val2017-0000\d"
                        r"\.parquet: No space left on device", errors[0]), errors[0]
    left = proc.stdout.split("LEFT", 1)[1]
    # no temp and no partial shard; and a first run that committed no shard leaves nothing
    # (its plan, config and quarantine are removed too: re-running plans it again)
    assert ".tmp-" not in left and ".parquet" not in left, left
    assert "manifest.json" not in left and "config.toml" not in left, left
