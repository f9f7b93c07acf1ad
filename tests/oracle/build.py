"""The frozen shard oracle (issue 27: "shards do not change"): frozen teacher outputs for five
small images (`teacher_outputs.npz`), run through post-processing and the shard writer as the
pipeline does, give `oracle.parquet` byte for byte. `tests/test_shard_oracle.py` checks it.

Run `python -m tests.oracle.build` to write the npz from its seeded recipe and the shard from
today's code; do so only when a shard layout change is intended (and the schema version moves).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HERE = Path(__file__).parent
OUTPUTS = HERE / "teacher_outputs.npz"
SHARD = HERE / "oracle.parquet"
KNOWN_WORDS = frozenset({"dog", "frisbee", "grass", "catches", "cat", "mat", "bus", "street"})
# (image id, width, height, the roles that ran)
IMAGES = ((7, 40, 30, ("depth", "panoptic", "text", "caption")),
          (3, 33, 45, ("depth", "caption")),
          (12, 24, 24, ("panoptic", "text")),
          (5, 48, 20, ("depth", "panoptic", "text", "caption")),
          (9, 16, 16, ()))
CAPTIONS = ("A dog catches a frisbee on the grass", "a cat on a mat", "", "a bus in the street",
            "")
ADDED = ("panoptic", "text")  # image 3 gets these later, as a teacher added to a finished run


def make_outputs() -> dict[str, np.ndarray]:
    """The frozen teacher outputs (seeded), as flat npz arrays."""
    rng = np.random.default_rng(27)
    out: dict[str, np.ndarray] = {}
    for image_id, w, h, _ in IMAGES:
        p = f"i{image_id}_"
        buf = io.BytesIO()
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        rgb = np.stack([x * 5, y * 5, rng.integers(0, 256, (h, w))], -1)
        Image.fromarray(rgb.astype(np.uint8)).save(buf, "JPEG", quality=50)
        out[p + "image"] = np.frombuffer(buf.getvalue(), np.uint8)
        out[p + "depth"] = (0.1 * x + 0.05 * y * y / h + 3 + 0.3 * np.sin(0.7 * x)
                            * np.cos(0.5 * y)).astype(np.float32)
        cmap = np.full((h, w), 255, np.uint8)
        cmap[:, : w // 2] = 18  # dog
        cmap[h // 2 :, w // 2 :] = 193  # grass-merged
        cmap[: h // 4, w // 2 :] = 187  # sky-other-merged
        out[p + "class_map"] = cmap
        out[p + "segments"] = np.array([[18, 0.9, 1, w // 2 * h], [193, 0.75, 0, 100],
                                        [187, 0.5, 0, 10]], np.float64)
        pts = [np.array([[w * 0.6, 2], [w * 0.9, 2], [w * 0.9, 8], [w * 0.6, 8]], np.float32),
               np.array([[0, 0], [3, 0], [3, 3]], np.float32)]
        out[p + "region_points"] = np.concatenate(pts).reshape(-1)
        out[p + "region_lengths"] = np.array([len(q) for q in pts], np.int64)
        out[p + "region_scores"] = np.array([0.9, 0.2 if image_id != 5 else 0.7], np.float32)
    return out


def teacher_results(frozen: Any, image_id: int, roles: tuple[str, ...]) -> dict[str, Any]:
    """One image's frozen outputs as the teachers' result objects, for `roles`."""
    from distill.labels.text import rasterize_polygons
    from distill.shards import Segment, TextRegion
    from teachers.base import CaptionResult, DepthResult, PanopticResult, TextResult

    p = f"i{image_id}_"
    h, w = frozen[p + "depth"].shape
    results: dict[str, Any] = {}
    if "depth" in roles:
        results["depth"] = DepthResult(frozen[p + "depth"])
    if "panoptic" in roles:
        segs = [Segment(int(c), float(s), bool(t), int(a)) for c, s, t, a in frozen[p + "segments"]]
        results["panoptic"] = PanopticResult(frozen[p + "class_map"], segs)
    if "text" in roles:
        flat, lengths = frozen[p + "region_points"].reshape(-1, 2), frozen[p + "region_lengths"]
        polys = np.split(flat, np.cumsum(lengths)[:-1])
        regions = [TextRegion(q, float(s)) for q, s in zip(polys, frozen[p + "region_scores"],
                                                            strict=True)]
        results["text"] = TextResult(rasterize_polygons(polys, h, w), regions)
    if "caption" in roles:
        results["caption"] = CaptionResult(CAPTIONS[[i[0] for i in IMAGES].index(image_id)])
    return results


def write_shard(path: Path, frozen: Any) -> None:
    """Post-process the frozen outputs and write them as the pipeline does: a full row per image
    (`build_sample` + `encode_sample`), and for image 3 the added teachers' columns re-encoded
    over its stored row (`apply_outputs` + `changed_columns`)."""
    from distill.coco import ImageRecord, Person
    from distill.labels.groups import GroupTable
    from distill.labels.tokens import PAPER_STOP_WORDS
    from distill.shards import ShardWriter, decode_row, encode_sample
    from pipelines.postprocess import LabelContext, apply_outputs, build_sample, changed_columns

    ctx = LabelContext(GroupTable.load(), PAPER_STOP_WORDS, KNOWN_WORDS, 255.0, 0.5)
    with ShardWriter(path, {"distill.schema_version": '"1"'}, row_group_size=2) as writer:
        for image_id, w, h, roles in IMAGES:
            kp = np.zeros((17, 3), np.float32)
            kp[0] = (w / 3, h / 4, 2)
            kp[5] = (w / 2, h / 2, 1)
            persons = [Person(kp, (1.0, 2.0, w / 2, h / 2), 12.5, False, 2)] if image_id % 2 \
                else []
            record = ImageRecord(image_id, f"{image_id:012d}.jpg", "", w, h,
                                 persons, [f"Image {image_id}.", "A photo."],
                                 exif_transpose=image_id == 12)
            image = frozen[f"i{image_id}_image"].tobytes()
            sample = build_sample(record, "val2017", image, (w, h),
                                  teacher_results(frozen, image_id, roles), ctx)
            row = encode_sample(sample, 1)
            if image_id == 3:  # a teacher added later: only its columns are re-encoded
                added = teacher_results(frozen, image_id, ADDED)
                sample = apply_outputs(decode_row(row), added, ctx)
                row = {**row, **encode_sample(sample, 1, changed_columns(added))}
            writer.write_row(row)


if __name__ == "__main__":
    np.savez_compressed(OUTPUTS, **make_outputs())
    write_shard(SHARD, np.load(OUTPUTS))

