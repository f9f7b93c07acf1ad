"""Fused layout: plain actors (_Fused) vs Ray Data (one map_batches over an actor pool),
interleaved. A: fresh process per run (bench.baseline._measure: wall, first shard, peak PSS).
B: in-process with Ray up once (bench.pipeline._timed_run), as bench_pipeline does."""
import json, os, statistics, sys, time, shutil
from pathlib import Path

from bench.baseline import _measure
from bench.pipeline import replicated_demo, bench_config, _timed_run

work = Path(sys.argv[1]); work.mkdir(parents=True, exist_ok=True)
mode = sys.argv[2]
reps = int(sys.argv[3])
copies = [int(c) for c in sys.argv[4].split(",")]
KINDS = {"actors": None, "raydata": "ray-data"}
res = []
out_json = work / f"results-{mode}.json"

def setkind(k):
    if KINDS[k]: os.environ["DISTILL_FUSED_SCHEDULER"] = KINDS[k]
    else: os.environ.pop("DISTILL_FUSED_SCHEDULER", None)

if mode == "B":
    import ray
    from pipelines.cluster import start_local_ray
    start_local_ray(num_cpus=2, log_to_driver=False)
for c in copies:
    root = replicated_demo(work / f"coco-{c}", c)
    for r in range(reps):
        order = list(KINDS) if r % 2 == 0 else list(KINDS)[::-1]
        for k in order:
            setkind(k)
            load = os.getloadavg()[0]
            out = work / f"out-{k}-{c}-{r}"
            shutil.rmtree(out, ignore_errors=True)
            if mode == "A":
                m = _measure("pipeline", root, out, work, [])
            else:
                sec, _ = _timed_run(bench_config(root), out)
                m = {"seconds": sec}
            m.update(kind=k, images=7 * c, rep=r, load1=load, load1_after=os.getloadavg()[0])
            import hashlib
            m["sha"] = hashlib.sha256(b"".join(hashlib.sha256(p.read_bytes()).digest()
                       for p in sorted((out / "shards").glob("*.parquet")))).hexdigest()[:16]
            shutil.rmtree(out, ignore_errors=True)
            res.append(m); print(json.dumps(m), flush=True)
            out_json.write_text(json.dumps(res, indent=1))
os.environ.pop("DISTILL_FUSED_SCHEDULER", None)
for c in copies:
    a = [m["seconds"] for m in res if m["images"] == 7 * c and m["kind"] == "actors"]
    d = [m["seconds"] for m in res if m["images"] == 7 * c and m["kind"] == "raydata"]
    pairs = [y / x for x, y in zip(a, d)]
    print(f"{7*c} images: actors median {statistics.median(a):.1f} s, raydata median "
          f"{statistics.median(d):.1f} s, ratio of medians {statistics.median(d)/statistics.median(a):.2f}, "
          f"paired ratios {[round(p,2) for p in pairs]}")
