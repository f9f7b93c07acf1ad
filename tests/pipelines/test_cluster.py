"""A multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`) completes a run,
including when a worker node is removed mid-run: Ray restarts the lost actors and retries the
lost tasks, and the shards equal a single-node run's. The dataset and the run folder live on
the S3 test server, so the nodes share no path: decode tasks read the images from the store and
the driver commits the shards there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distill.runfolder import resolve_shards
from distill.shards import iter_samples
from pipelines.generate_labels import RunOptions, generate_labels
from tests.conftest import (
    assert_same_sample,
    label_config,
    make_coco7,
    s3_keys,
    shard_rows,
    upload_folder,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _rows(run: str) -> dict[int, object]:
    return {s.image_id: s for shard in resolve_shards(run) for s in iter_samples(shard)}


def test_a_run_on_object_storage_survives_losing_a_worker_node(tmp_path, ray_address,
                                                               s3_bucket):
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

    reference = tmp_path / "reference"
    generate_labels(label_config(data, "shards.shard_size=2"),
                    RunOptions(out=reference, live=False))
    got, want = _rows(out), shard_rows(reference)
    assert sorted(got) == sorted(want)
    for image_id, sample in want.items():
        assert_same_sample(got[image_id], sample)
