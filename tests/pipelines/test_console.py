"""A quiet console: without -v a generate-labels run's stderr holds only distill's lines; Ray's
native core-worker lines, its workers' output and Ray Data's advice stay in Ray's log files,
whose folder the end summary names."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pipelines.console import NATIVE_LINE, _Forwarder

RAY_ON_CONSOLE = re.compile(r"core_worker|Operator '|\((MapWorker|_MapWorker|pid=)|ray\.data|"
                            r"^\[\d{4}-\d\d-\d\d [\d:,]+ [IWEF] \d+ \d+\]", re.M)


def _forward(chunks: list[bytes]) -> bytes:
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    fwd = _Forwarder(src_r, dst_w)
    fwd.start()
    for chunk in chunks:
        os.write(src_w, chunk)
    os.close(src_w)
    fwd.join(timeout=10)
    assert not fwd.is_alive()
    os.close(dst_w)
    out = b""
    while data := os.read(dst_r, 65536):
        out += data
    os.close(src_r)
    os.close(dst_r)
    return out


def test_the_filter_drops_only_rays_native_lines_below_fatal():
    ray_e = (b"[2026-12-02 02:09:55,717 E 18255 18255] core_worker.cc:2465: Actor with class "
             b"name: 'MapWorker(MapBatches(TeacherOp))' has constructor arguments\n")
    ray_w = b"[2026-12-02 02:09:56,001 W 18255 18301] task_manager.cc:12: retry\n"
    ray_f = b"[2026-12-02 02:09:57,000 F 18255 18255] core_worker.cc:1: check failed\n"
    ours = b"[generate-labels 00:11] written 0/7 -/s eta --:--\n"
    # a Ray line split across two writes is still recognised; a partial non-Ray line is shown
    out = _forward([b"error: one line\n", ray_e[:30], ray_e[30:], ours, ray_w, ray_f,
                    b"partial"])
    assert out == b"error: one line\n" + ours + ray_f + b"partial"
    assert NATIVE_LINE.match(ray_e) and not NATIVE_LINE.match(ours)


@pytest.mark.slow
def test_without_v_no_ray_line_reaches_stderr_and_the_summary_names_rays_logs(pools_cli_run):
    # the pools layout: the one whose Ray Data actors Ray warns about
    proc = pools_cli_run
    stdout, stderr = proc.stdout, proc.stderr
    assert proc.returncode == 0, stderr[-3000:]
    assert not RAY_ON_CONSOLE.search(stderr), stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines and all(ln.startswith(("[generate-labels ", "[generate-labels] ",
                                        "Ray: joined the cluster at "))
                         for ln in lines), stderr
    logs = re.search(r"^Ray's logs: (\S+) \(-v shows them on the console\)$", stdout, re.M)
    assert logs, stdout
    # the core worker did say it (Ray Data's actors get their arguments through the object
    # store, and the pools keep restarts on): into the driver's log there, not onto stderr
    driver_logs = list(Path(logs.group(1)).glob(f"python-core-driver-*_{proc.pid}.log"))
    assert driver_logs, f"no driver log of pid {proc.pid} in {logs.group(1)}"
    assert "has constructor arguments in the object store" in driver_logs[0].read_text()



def test_a_handler_that_follows_sys_stderr_by_itself_is_left_alone():
    """logging's last-resort handler reads `sys.stderr` through a property that cannot be set:
    a program that attached it (or one like it) used to fail before Ray started."""
    import logging
    import sys

    from pipelines.console import native_lines_dropped

    follower = logging.getLogger("distill.tests.follower")
    follower.addHandler(logging.lastResort)
    try:
        before = sys.stderr
        with native_lines_dropped():
            assert sys.stderr is not before
        assert sys.stderr is before
    finally:
        follower.removeHandler(logging.lastResort)
