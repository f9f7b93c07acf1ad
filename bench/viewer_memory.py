"""Resident memory of `distill view` under load: the real CLI serving a run (uvicorn on
127.0.0.1) in a child process, clients in threads of this one (httpx), RSS read from /proc.

- `clients`: N clients at once, each opening R random sample pages as the front end does (the
  sample's JSON, its image, its thumbnail, each teacher layer); three waves, RSS after each and
  its peak (sampled every 0.2 s).
- `unknown`: five rounds of 5,000 requests naming shards the run does not have (all 404).

usage: python -m bench.viewer_memory RUN [clients N R | unknown]
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time
from typing import Any

LAYERS = ("depth", "normals", "groups", "text", "people", "panoptic")


def rss_mib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (its peak) of `pid` in MiB, and its thread count."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        lines = fh.readlines()
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) // 1024
        elif key == "Threads":
            out[key] = int(value)
    return out


def serve(run: str) -> tuple[subprocess.Popen[str], str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "distill.cli", "view", run, "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    while True:  # until it answers (or has died)
        try:
            httpx.get(base + "/api/meta", timeout=5)
            return proc, base
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise SystemExit(proc.stderr.read() if proc.stderr else "the viewer died") from None
            time.sleep(0.1)


def clients(pid: int, base: str, n: int, rounds: int) -> list[dict[str, Any]]:
    import httpx

    rows = httpx.get(base + "/api/rows", params={"limit": 200}).json()["rows"]
    keys = [(r["shard"], r["row"]) for r in rows]
    failed: list[tuple[str, int]] = []

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        with httpx.Client(base_url=base, timeout=600) as c:
            for _ in range(rounds):
                shard, row = rnd.choice(keys)
                for url in (f"/api/sample/{shard}/{row}", f"/image/{shard}/{row}.jpg",
                            f"/thumb/{shard}/{row}.jpg",
                            *(f"/layer/teacher/{shard}/{row}/{name}.png" for name in LAYERS)):
                    res = c.get(url)
                    if res.status_code != 200:
                        failed.append((url, res.status_code))

    peak, waves, done = [0], [], threading.Event()

    def sample_rss() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], rss_mib(pid)["VmRSS"])

    sampler = threading.Thread(target=sample_rss)
    sampler.start()
    for wave in range(3):
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(wave * n + i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        waves.append({"wave": wave, "rows": len(keys), "clients": n, "seconds":
                      round(time.perf_counter() - t0, 1), **rss_mib(pid),
                      "sampled_peak": peak[0], "failed": len(failed)})
    done.set()
    sampler.join()
    return waves


def unknown(pid: int, base: str) -> list[dict[str, Any]]:
    import httpx

    out = []
    with httpx.Client(base_url=base) as c:
        for k in range(5):
            for i in range(1000):
                name = f"nope-{k}-{i}.parquet"
                for url in (f"/thumb/{name}/0.jpg", f"/api/sample/{name}/0",
                            f"/image/{name}/0.jpg", f"/layer/teacher/{name}/0/depth.png",
                            f"/layer/teacher/{name}/1/text.png"):
                    assert c.get(url).status_code == 404
            out.append({"requests": 5000 * (k + 1), **rss_mib(pid)})
    return out


def main(run: str, load: str = "clients", n: int = 200, rounds: int = 3) -> None:
    proc, base = serve(run)
    try:
        print(json.dumps({"start": rss_mib(proc.pid)}), flush=True)
        lines = clients(proc.pid, base, n, rounds) if load == "clients" else unknown(proc.pid,
                                                                                      base)
        for line in lines:
            print(json.dumps(line), flush=True)
    finally:
        proc.terminate()
        proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    print(json.dumps({"tracebacks": err.count("Traceback")}))


if __name__ == "__main__":
    main(sys.argv[1], *(sys.argv[2:3]), *(int(a) for a in sys.argv[3:5]))
