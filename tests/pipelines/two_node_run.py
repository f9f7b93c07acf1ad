"""Run generate-labels on a multi-node Ray cluster on this machine (a head that only drives,
three 2-CPU workers that do all the work) and remove the busiest worker node mid-run (used by
test_cluster.py in its own process: a `ray.cluster_utils.Cluster` cannot share a process with
the test session's Ray). DATA_ROOT and OUT may be URIs (s3://…): then the nodes share no
path at all, only the object store.

usage: python -m tests.pipelines.two_node_run DATA_ROOT OUT RESULT_JSON
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def main(root: str, out: str, result_path: str) -> None:
    from pipelines.cluster import loopback_only

    loopback_only()
    import ray
    from ray.cluster_utils import Cluster

    from distill.config import load_config
    from distill.errors import DistillError
    from distill.storage import Location
    from distill.student.train import TrainOptions
    from pipelines.generate_labels import RunOptions, generate_labels
    from pipelines.train_student import train_on_ray
    from tests.conftest import label_config

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    workers = [cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1") for _ in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    removed: dict[str, object] = {}
    manifest = Location(out) / "manifest.json"

    def busy(node: object) -> float:
        free = ray._private.state.available_resources_per_node()
        return 2.0 - free.get(node.node_id, {}).get("CPU", 2.0)  # type: ignore[attr-defined]

    def committed() -> int:
        try:
            doc = json.loads(manifest.read_bytes())
        except (OSError, ValueError, DistillError):
            return 0
        return sum(1 for s in doc["shards"] if s["sha256"])

    def remove_a_worker_mid_run() -> None:
        # Once teacher actors hold CPUs on a worker, give them a moment to start labelling, then
        # kill the busiest worker node outright (no graceful drain): what a lost machine does.
        while max(busy(w) for w in workers) <= 0:
            time.sleep(0.05)
        time.sleep(2.0)
        victim = max(workers, key=busy)
        removed["busy_cpus"] = busy(victim)
        removed["committed_before"] = committed()
        cluster.remove_node(victim, allow_graceful=False)
        removed["node"] = victim.node_id

    watcher = threading.Thread(target=remove_a_worker_mid_run, daemon=True)
    watcher.start()
    # three fused workers (one per node's worth of work) rather than one per CPU: six torch
    # processes on the test machine's two real cores would only slow the start
    cfg = label_config(root, "shards.shard_size=2", "ray.workers=3")
    result = generate_labels(cfg, RunOptions(out=out, live=False))
    watcher.join(timeout=5)
    deadline = time.monotonic() + 60  # the GCS marks a killed node dead after health checks
    while time.monotonic() < deadline and any(
            n["NodeID"] == removed.get("node") and n["Alive"] for n in ray.nodes()):
        time.sleep(0.5)
    alive = sum(1 for n in ray.nodes() if n["Alive"])
    # Then the student, on the two remaining workers, streaming the shards from where they
    # were committed and checkpointing next to them.
    student = f"{out.rstrip('/')}-student"
    metrics = train_on_ray(load_config("demo", overrides=["train.epochs=1",
                                                           "train.batch_size=2"]),
                           TrainOptions(shards=out, out=student), num_workers=2,
                           cpus_per_worker=1.0)
    Path(result_path).write_text(json.dumps({
        "removed": removed, "alive_nodes_after": alive, "summary": result.summary,
        "student": student, "student_metrics": metrics}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
