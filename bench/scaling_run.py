"""One timed generate-labels run on a local multi-node Ray cluster, in its own process (a
`ray.cluster_utils.Cluster` cannot share a process with another Ray). Used by `make bench`.

usage: python -m bench.scaling_run DATA_ROOT OUT NODES RESULT_JSON
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path


def main(root: str, out: str, nodes: int, result: str) -> None:
    from pipelines.cluster import loopback_only

    loopback_only()
    import ray
    from ray.cluster_utils import Cluster

    from bench.pipeline import bench_config
    from pipelines.generate_labels import RunOptions, generate_labels

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        summary = generate_labels(bench_config(Path(root)), RunOptions(out=Path(out), live=False))
        seconds = time.perf_counter() - t0
    finally:
        ray.shutdown()
        cluster.shutdown()
    Path(result).write_text(json.dumps({"nodes": nodes, "seconds": seconds,
                                        "images": summary.summary["images"]["written"]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
