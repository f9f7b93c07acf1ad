"""Where a run's Ray comes from, and what is left of it afterwards.

- A multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`) completes a run,
  including when a worker node is removed mid-run: Ray restarts the lost actors and retries the
  lost tasks, and the shards equal a single-node run's. The dataset and the run folder live on
  the S3 test server, so the nodes share no path: decode tasks read the images from the store
  and the driver commits the shards there.
- Isolation: without --address a run always starts a private Ray — not the cluster a stale or
  live `ray_current_cluster` names, not a `ray start --head` running here, not RAY_ADDRESS;
  `--address auto` joins and says what it joined.
- Nothing of a run's Ray survives its driver (SIGKILLed): its watchdog kills the rest, and a
  later start kills what a dead session left when the watchdog itself was killed.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from distill.runfolder import resolve_shards
from distill.shards import iter_samples
from tests.conftest import (
    assert_same_sample,
    make_coco7,
    s3_keys,
    shard_rows,
    upload_folder,
)

ROOT = Path(__file__).resolve().parents[2]


def _rows(run: str) -> dict[int, object]:
    return {s.image_id: s for shard in resolve_shards(run) for s in iter_samples(shard)}


@pytest.mark.slow
def test_a_run_on_object_storage_survives_losing_a_worker_node(tmp_path, ray_address,
                                                               s3_bucket, labelled_coco7):
    data = make_coco7(tmp_path / "coco")
    root = upload_folder(data, f"{s3_bucket}/coco")
    out, result_file = f"{s3_bucket}/cluster-run", tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.pipelines.two_node_run", root, out, str(result_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=480,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(result_file.read_text())
    assert result["removed"].get("node"), "no worker node was removed during the run"
    assert result["removed"]["committed_before"] < 4  # removed while shards were in flight
    assert result["removed"]["busy_cpus"] > 0  # it was running teacher actors or tasks
    assert result["alive_nodes_after"] == 3  # the head and the two remaining workers
    assert result["summary"]["images"]["written"] == 7
    assert result["summary"]["shards"] == {"planned": 4, "complete": 4}
    assert result["student_metrics"]["epoch"] == 0  # the student trained from the store
    keys = s3_keys(result["student"])
    assert {"checkpoints/last/model.safetensors", "checkpoints/last/state.pt",
            "metrics.jsonl", "config.toml", "vocab.parquet"} <= set(keys), keys
    assert not [k for k in keys if "/." in f"/{k}"], keys  # no temp objects left

    # The rows equal a single-node run's (the session's labelled_coco7: the same pixels and
    # settings but 3 images a shard, so depth batched 5, 7, 9 and 12 with other neighbours:
    # equal up to depth's last float bits, README "Resume")
    got, want = _rows(out), shard_rows(labelled_coco7[1])
    assert sorted(got) == sorted(want)
    for image_id, sample in want.items():
        assert_same_sample(got[image_id], sample, depth_levels=1)


# ---------------------------------------------------------------------------------------------
# Isolation: a run joins only the cluster it is told to join

# `ray_session` as a run uses it, in a fresh process (the test session has its own Ray): prints
# what it got as JSON (or the error), and with a second argument stays up that many seconds.
SESSION = '''
import json, os, sys, time
t = time.monotonic()
import ray
from distill.config import RayConfig
from distill.errors import DistillError
from pipelines.cluster import ray_session
try:
    with ray_session(RayConfig(num_cpus=1), sys.argv[1] or None) as info:
        jobs = [j["DriverPid"] for j in ray._private.state.jobs()] \\
            if info.address != "local" else []
        print(json.dumps({"address": info.address, "pid": os.getpid(), "jobs": jobs,
                          "gcs": ray.get_runtime_context().gcs_address, "nodes": info.nodes,
                          "seconds": time.monotonic() - t}), flush=True)
        time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
except DistillError as exc:
    print(json.dumps({"error": str(exc), "seconds": time.monotonic() - t}), flush=True)
'''


@pytest.fixture
def ray_tmp():
    """A short folder for Ray's temp files (its socket paths must stay under 108 bytes, which a
    pytest tmp_path does not); whatever still uses it is killed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="dr-", dir="/tmp"))
    yield path
    _kill_all_using(path)
    shutil.rmtree(path, ignore_errors=True)


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh process whose Ray temp folder is `tmp`/ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(tmp), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **extra)
    return env


def _session(tmp: Path, address: str = "", **extra: str) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", SESSION, address], cwd=ROOT, text=True,
                          capture_output=True, env=_env(tmp, **extra), timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _processes_using(path: Path) -> list[str]:
    """Processes whose command line, environment or open files mention `path`."""
    needle, found = str(path).encode(), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = Path(entry.path, "cmdline").read_bytes()
            hit = needle in cmd or needle in Path(entry.path, "environ").read_bytes()
            fds = os.listdir(os.path.join(entry.path, "fd"))
        except OSError:
            continue
        for fd in fds if not hit else []:
            try:
                hit = os.readlink(os.path.join(entry.path, "fd", fd)).startswith(str(path))
            except OSError:
                continue
            if hit:
                break
        if hit:
            shown = cmd.replace(b"\0", b" ").decode(errors="replace")[:80]
            found.append(f"{entry.name} {shown}")
    return found


def _wait_until_none_use(path: Path, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := _processes_using(path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _kill_all_using(path: Path) -> None:
    for line in _processes_using(path):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(line.split()[0]), signal.SIGKILL)


def test_without_an_address_a_run_never_joins_ray_address(monkeypatch, caplog):
    """RAY_ADDRESS exported in the shell is not a cluster the user named for this run: it is
    named in a warning, and only `--address auto` joins it."""
    import ray

    import pipelines.cluster as cluster
    from distill.config import RayConfig

    calls = []
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init joined something"))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: type("Ctx", (), {"gcs_address": "127.0.0.1:1"})())
    monkeypatch.setattr(cluster, "cluster_resources", lambda: (2.0, 0.0, 1))
    monkeypatch.setattr(cluster, "cluster_memory", lambda: 8e9)  # no Ray to ask (run alone)
    monkeypatch.setattr(cluster, "start_local_ray", lambda *a, **k: calls.append("local"))
    monkeypatch.setattr(cluster, "_join", lambda address, common: calls.append(address) or "x",
                        raising=False)
    with caplog.at_level(logging.WARNING, "pipelines.cluster"), \
            cluster.ray_session(RayConfig()) as info:
        assert info.address == "local"
    assert calls == ["local"]
    assert "RAY_ADDRESS=10.1.2.3:6379 is set but not used" in caplog.text
    with cluster.ray_session(RayConfig(), "auto") as info:
        assert info.address == "auto"
    assert calls == ["local", "auto"]


def test_a_local_start_asks_ray_for_a_new_loopback_instance(monkeypatch):
    import ray

    import pipelines.cluster as cluster

    class Stop(Exception):
        pass

    seen: dict = {}

    def init(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(cluster, "_start_watchdog", lambda temp_root: None, raising=False)
    monkeypatch.setattr(cluster, "reap_dead_sessions", lambda temp_root: 0, raising=False)
    with pytest.raises(Stop):
        cluster.start_local_ray(num_cpus=1)
    assert seen["address"] == "local"  # never "whatever ray_current_cluster names"
    assert seen["_node_ip_address"] == "127.0.0.1" and seen["include_dashboard"] is False


@pytest.mark.slow
def test_a_stale_cluster_file_and_ray_address_do_not_slow_or_redirect_a_default_run(ray_tmp):
    """Both name a port that records connections and never answers Ray (joining a dead one
    took 64 s and more): the run starts its own Ray without ever trying that port."""
    import socket

    with socket.socket() as stale:
        stale.bind(("127.0.0.1", 0))
        stale.listen(8)  # a connection attempt would wait in its backlog
        dead = f"127.0.0.1:{stale.getsockname()[1]}"
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(dead)
        got, err = _session(ray_tmp, RAY_ADDRESS=dead)
        stale.setblocking(False)
        with pytest.raises(BlockingIOError):
            stale.accept()  # no connection came: nothing tried to join it
    assert got["address"] == "local" and got["gcs"] != dead, got
    assert f"RAY_ADDRESS={dead} is set but not used" in err
    assert not _wait_until_none_use(ray_tmp, 15)  # a clean exit leaves nothing (nor a watchdog)


@pytest.mark.slow
def test_a_default_run_does_not_join_a_ray_head_running_here_but_address_auto_does(ray_tmp):
    from tests.conftest import _free_port

    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.exists():
        pytest.skip("no `ray` command next to this Python")
    port = _free_port()
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         f"--temp-dir={ray_tmp / 'ray'}", "--include-dashboard=false", "--num-cpus=1",
         "--num-gpus=0", "--disable-usage-stats", "--block"],
        env=_env(ray_tmp), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        file = ray_tmp / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + 120
        while not file.exists() and head.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert file.exists(), head.stderr.read().decode()[-3000:] if head.poll() else "no head"
        address = file.read_text().strip()
        assert address == f"127.0.0.1:{port}"

        # Ray's temp folder names the live head, and RAY_ADDRESS does too: still a private Ray
        mine, err = _session(ray_tmp, RAY_ADDRESS=address)
        assert mine["address"] == "local" and mine["gcs"] != address, mine

        joined, err = _session(ray_tmp, "auto")
        assert joined["address"] == "auto" and joined["gcs"] == address, joined
        assert f"Ray: joined the cluster at {address} (--address auto: {file}): 1 node(s), " \
               "1 CPUs, 0 GPUs" in err
        assert joined["pid"] in joined["jobs"] and mine["pid"] not in joined["jobs"]
    finally:
        head.terminate()
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            head.kill()


# ---------------------------------------------------------------------------------------------
# Nothing of a run's Ray outlives it


def _owner_files(tmp: Path) -> list[str]:
    return glob.glob(str(tmp / "ray" / "session_*" / "distill-owner.json"))


def _wait_for_ray(proc: subprocess.Popen, tmp: Path, seconds: float = 150) -> None:
    """Until the raylet's two agents run (the processes that used to outlive their driver) and
    the driver has marked its session and started its watchdog (the markers, not a pause)."""
    def up() -> bool:
        names = " ".join(_processes_using(tmp))
        return ("ray::DashboardAgent" in names and "ray::RuntimeEnvAgent" in names
                and "_watch()" in names and bool(_owner_files(tmp)))

    deadline = time.monotonic() + seconds
    while not up() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)  # the interval of a poll for the markers above
    assert up(), f"Ray did not come up (exit {proc.poll()})"


@pytest.mark.slow
def test_no_ray_process_outlives_a_killed_cli_run(tmp_path, ray_tmp):
    """SIGKILL a CLI run as soon as its private Ray is up: within 30 s no process refers to
    its Ray folder any more (Ray's agents alone used to linger for a minute)."""
    from tests.conftest import make_coco7

    root = make_coco7(tmp_path / "coco")
    cli = subprocess.Popen(
        [sys.executable, "-m", "distill.cli", "run", "generate-labels", "--preset", "demo",
         "--set", f"data.root={root}", "--set", "teachers.text.input_size=160",
         "--shard-size", "3", "--out", str(tmp_path / "run"), "--no-live"],
        cwd=ROOT, env=_env(ray_tmp), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        _wait_for_ray(cli, ray_tmp)
        assert _processes_using(ray_tmp)
        cli.kill()
        cli.wait(10)
        left = _wait_until_none_use(ray_tmp, 30)
        assert not left, left
    finally:
        cli.kill()


@pytest.mark.slow
def test_the_next_start_removes_what_a_dead_session_left(ray_tmp):
    """Driver and watchdog both SIGKILLed: `reap_dead_sessions` (run by every local start)
    kills what is left of a session whose driver is gone."""
    from pipelines.watchdog import reap_dead_sessions

    driver = subprocess.Popen([sys.executable, "-c", SESSION, "", "300"], cwd=ROOT,
                              env=_env(ray_tmp), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        _wait_for_ray(driver, ray_tmp)
        deadline = time.monotonic() + 60  # the driver marks its session once ray.init returned
        while not _owner_files(ray_tmp) and time.monotonic() < deadline:
            time.sleep(0.2)
        watchdogs = [int(p.split()[0]) for p in _processes_using(ray_tmp / "ray")
                     if "_watch()" in p]
        assert len(watchdogs) == 1
        os.kill(watchdogs[0], signal.SIGKILL)
        driver.kill()
        driver.wait(10)
        left = _processes_using(ray_tmp)
        assert left  # Ray's agents wait a minute for the dead GCS before they exit
        assert reap_dead_sessions(str(ray_tmp / "ray")) >= 1
        assert not _wait_until_none_use(ray_tmp, 15)
        assert not _owner_files(ray_tmp)  # done once: the next start does not look again
    finally:
        driver.kill()
