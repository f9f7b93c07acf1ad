"""The bundled demo set: scikit-image's real photos written as a small COCO 2017 folder.

Captions were written for this project by looking at each photo; the astronaut's keypoints were
placed by hand on the visible joints (the left arm is hidden by the helmet, the hips are out of
frame, so those joints are unlabelled, v = 0). The photos keep their original encoded bytes.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from distill.coco import Dataset, open_dataset
from distill.errors import DistillError
from distill.images import image_size

__all__ = ["DEMO_PHOTOS", "DEMO_SPLIT", "make_demo_dataset"]

logger = logging.getLogger(__name__)

DEMO_SPLIT = "val2017"

# (skimage file, captions). Image ids are 1..N in this order.
DEMO_PHOTOS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("astronaut.png", (
        "A smiling astronaut in an orange suit poses in front of an american flag.",
        "A woman astronaut with her helmet beside a model of the space shuttle.",
    )),
    ("coffee.png", (
        "A cup of coffee on a saucer with a spoon.",
        "A white coffee cup sitting on a table.",
    )),
    ("chelsea.png", (
        "An orange tabby cat looking at the camera.",
        "A ginger cat lying down on the floor.",
    )),
    ("motorcycle_left.png", (
        "A motorcycle parked indoors next to a wall.",
        "A red motorcycle standing in a room.",
    )),
    ("rocket.jpg", (
        "A rocket launching into the sky with a plume of smoke.",
        "A space rocket lifting off from the launch pad.",
    )),
    ("text.png", (
        "A photograph of printed text on a sign.",
        "Black letters written on a light background.",
    )),
    ("page.png", (
        "A scanned page of printed text from a book.",
        "A page with several lines of small black text.",
    )),
)  # fmt: skip

# Hand-placed COCO keypoints (x, y, v) of the astronaut, in original pixels.
_ASTRONAUT_KEYPOINTS = (
    (224, 128, 2), (248, 102, 2), (202, 101, 2), (274, 118, 1), (178, 115, 1),  # head
    (325, 250, 2), (80, 245, 2),  # left, right shoulder
    (0, 0, 0), (42, 400, 2),  # left elbow hidden by the helmet, right elbow
    (0, 0, 0), (150, 500, 1),  # left wrist hidden, right wrist at the bottom edge
    (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0),  # hips, knees, ankles
)  # fmt: skip
_ASTRONAUT_BBOX = (20.0, 15.0, 340.0, 497.0)


def _skimage_data_dir() -> Path:
    try:
        import skimage
    except ImportError as exc:
        raise DistillError(
            "the demo set is made from scikit-image's bundled photos: pip install scikit-image "
            "(or `make setup`)"
        ) from exc
    return Path(skimage.__file__).parent / "data"


def make_demo_dataset(out: str | Path) -> Dataset:
    """Write the demo set to `out` (COCO layout, split val2017) and read it back."""
    out = Path(out)
    src = _skimage_data_dir()
    image_dir = out / DEMO_SPLIT
    image_dir.mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(exist_ok=True)

    images: list[dict[str, Any]] = []
    captions: list[dict[str, Any]] = []
    for image_id, (name, texts) in enumerate(DEMO_PHOTOS, start=1):
        path = src / name
        if not path.is_file():
            raise DistillError(f"scikit-image is missing its bundled photo {path}")
        file_name = f"{image_id:012d}{path.suffix}"
        shutil.copyfile(path, image_dir / file_name)
        width, height = image_size(path.read_bytes())
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                       "source": f"scikit-image data/{name}"})
        for text in texts:
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})

    keypoints = [v for kp in _ASTRONAUT_KEYPOINTS for v in kp]
    x, y, w, h = _ASTRONAUT_BBOX
    persons = [{
        "id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": list(_ASTRONAUT_BBOX),
        "area": w * h * 0.75, "keypoints": keypoints,
        "num_keypoints": sum(1 for kp in _ASTRONAUT_KEYPOINTS if kp[2] > 0),
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
    }]  # fmt: skip
    info = {"description": "distill demo set: scikit-image photos, hand-written annotations"}
    categories = [{"id": 1, "name": "person", "supercategory": "person"}]
    _write_json(out / "annotations" / f"person_keypoints_{DEMO_SPLIT}.json",
                {"info": info, "images": images, "annotations": persons, "categories": categories})
    _write_json(out / "annotations" / f"captions_{DEMO_SPLIT}.json",
                {"info": info, "images": images, "annotations": captions})
    logger.info("wrote demo set of %d images to %s", len(images), out)
    return open_dataset(out, DEMO_SPLIT)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=1))
