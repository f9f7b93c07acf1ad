"""How a generate-labels run ends when it cannot go on, as a user sees it from the CLI: a full
disk is one `error:` line naming the shard and the cause (exit 2) and leaves no temp file;
SIGTERM stops like Ctrl-C — no C stack dump, one line saying how many shards are committed and
that re-running resumes — with exit code 143 (Ctrl-C: 130). Each run joins the test session's
Ray (`--address`) so that it starts in seconds."""

from __future__ import annotations

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


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distill.cli", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as in a shell


def _interrupt(proc: subprocess.Popen, out: Path, sig: int, after: int) -> tuple[int, str]:
    """Send `sig` to the CLI's process group (what Ctrl-C does) once `after` shards are
    committed (0: once the plan is written); returns (exit code, stderr)."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and committed_shards(out) < max(after, 0) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended first:\n{proc.stderr.read()[-3000:]}"
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _temps(out: Path) -> list[str]:
    return [p.name for p in out.rglob(".*") if ".tmp-" in p.name]


def test_sigterm_stops_like_ctrl_c_and_says_how_far_it_got(tmp_path, ray_address):
    root, out = make_coco7(tmp_path / "coco"), tmp_path / "run"
    code, err = _interrupt(_start(_args(root, out, ray_address)), out, signal.SIGTERM, 1)
    assert code == 128 + signal.SIGTERM, err
    lines = INTERRUPTED.findall(err)
    assert len(lines) == 1, err
    m = INTERRUPTED.search(err)
    assert m and m["term"] and int(m["planned"]) == 4
    assert int(m["done"]) == committed_shards(out) >= 1  # what the manifest says, exactly
    assert "SIGTERM received" not in err and "***" not in err and "Traceback" not in err, err
    assert not _temps(out)


def test_ctrl_c_says_how_far_it_got(tmp_path, ray_address):
    """Right after the plan (the SIGTERM test above covers "after a shard" for both: one
    handler serves the two signals)."""
    after = 0
    root, out = make_coco7(tmp_path / "coco"), tmp_path / "run"
    code, err = _interrupt(_start(_args(root, out, ray_address)), out, signal.SIGINT, after)
    assert code == 128 + signal.SIGINT, err
    m = INTERRUPTED.search(err)
    assert m and not m["term"], err
    assert int(m["done"]) == committed_shards(out) >= after and int(m["planned"]) == 4
    assert "Traceback" not in err and "***" not in err, err
    assert not _temps(out)


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
