"""Running a trained student on images: load a checkpoint, letterbox, forward, then the paper's
inference extras (DESIGN.md §6): iterative depth refinement from the predicted normals (§3.2),
token decoding to words (§3.4) and people from joints + PAFs (`distill.student.pose`).

Outputs come back as a `distill.layers.form.LabelledImage` at the image's original resolution,
the same form as a shard row's teacher labels, so `distill show` can put them side by side.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distill.config import Config, PredictConfig, load_config
from distill.errors import DistillError
from distill.labels.letterbox import Letterbox
from distill.labels.tokens import Vocabulary
from distill.layers.form import LabelledImage, from_channels
from distill.storage import Location
from distill.student import layout
from distill.student.checkpoint import find_checkpoint, load_checkpoint, run_folder
from distill.student.engines import Engine, TorchEngine
from distill.student.model import YMapNet, build_student
from distill.student.pose import DecodedPerson, decode_letterboxed
from distill.student.refine import refine_depth
from distill.student.targets import student_image

__all__ = [
    "ExportedStudent",
    "LoadedStudent",
    "Prediction",
    "Predictor",
    "Word",
    "check_out_folder",
    "decode_tokens",
    "find_checkpoint",
    "load_student",
    "make_out_folder",
    "panel_paths",
    "refine_depth",
    "run_folder",
]

logger = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedStudent:
    model: YMapNet
    config: Config
    vocab: Vocabulary | None
    checkpoint: Location  # the checkpoint folder
    epoch: int  # the epoch the checkpoint ended (drives the heatmap sizes it was trained on)


@dataclass
class ExportedStudent:
    """A student `distill export` wrote (ONNX or TorchScript), loaded with everything it carries
    (`distill.student.export.load_exported`): the engine that runs it, the config and
    vocabulary it was exported with, and its metadata."""

    engine: Engine
    config: Config
    vocab: Vocabulary | None
    checkpoint: Location  # the exported file
    epoch: int
    metadata: dict[str, Any] = field(default_factory=dict)


def load_student(path: str | os.PathLike[str] | Location, device: str | torch.device = "cpu", *,
                 vocab: str | os.PathLike[str] | Location | None = None,
                 overrides: list[str] | None = None) -> LoadedStudent:
    """The student of a train-student run, in eval mode, with its config and vocabulary; the
    run may be local or on an object store.

    The config is the run's `config.toml` (with `overrides`, e.g. predict.* settings); the
    vocabulary is `vocab` or the run's `vocab.parquet` (copied there by train-student).
    """
    from distill.labels.tokens import read_vocabulary

    checkpoint = find_checkpoint(path)
    run = run_folder(checkpoint)
    if not run.config.is_file():
        raise DistillError(f"{checkpoint} has no {run.config.name} in its run folder {run}; "
                           "the student's shape is read from it")
    config = load_config(None, [run.config], list(overrides or []))
    vocab_file = Location(vocab) if vocab is not None else run.vocab
    if vocab is not None and not vocab_file.is_file():
        raise DistillError(f"vocabulary {vocab_file} does not exist")
    words = read_vocabulary(vocab_file) if vocab_file.is_file() else None
    weights, state = load_checkpoint(checkpoint)
    vocab_size = len(words.words) if words is not None else 0
    model = build_student(config.student, vocab_size, device)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise DistillError(f"{checkpoint} does not fit the student described by {run.config}: "
                           f"{str(exc).splitlines()[0]}") from exc
    model.eval()
    return LoadedStudent(model, config, words, checkpoint, int(state.get("epoch", 0)))


# ---------------------------------------------------------------------------------------------
# Token decoding (paper §3.4)


@dataclass
class Word:
    position: int  # 0-based token position
    word: str
    similarity: float  # cosine with the output vector


def decode_tokens(tokens: np.ndarray, vocab: Vocabulary, *, min_norm: float = 0.3,
                  min_similarity: float = 0.5) -> list[Word]:
    """The student's (T, D) token vectors → words, the paper's three steps: a vector whose norm
    is below `min_norm` × the median vocabulary norm is "no word"; otherwise the vocabulary word
    of highest cosine similarity; dropped when that similarity is below `min_similarity`."""
    if not vocab.words:
        return []
    tokens = np.asarray(tokens, np.float32)
    if tokens.ndim != 2 or tokens.shape[1] != vocab.dim:
        raise DistillError(f"tokens of shape {tokens.shape} do not match the {vocab.dim}-d "
                           "vocabulary")
    vocab_norms = np.linalg.norm(vocab.vectors, axis=1)
    norms = np.linalg.norm(tokens, axis=1)
    cos = (tokens @ vocab.vectors.T) / (norms[:, None] * vocab_norms[None, :] + 1e-12)
    floor = min_norm * float(np.median(vocab_norms))
    out: list[Word] = []
    for i in range(len(tokens)):
        if norms[i] < floor:
            continue
        best = int(np.argmax(cos[i]))
        if cos[i, best] >= min_similarity:
            out.append(Word(i, vocab.words[best], float(cos[i, best])))
    return out


# ---------------------------------------------------------------------------------------------
# The predictor


@dataclass
class Prediction:
    labels: LabelledImage  # at the original resolution (at most `Predictor.display_max` on a side)
    words: list[Word]
    people: list[DecodedPerson]  # keypoints in original pixels
    size: tuple[int, int]  # (width, height) of the image: the frame `people` are in
    timings: dict[str, float] = field(default_factory=dict)  # ms per image for each step
    maps: np.ndarray | None = None  # (44, S, S) in [0, 1], the letterboxed output (refined)


def _unletterbox(maps: torch.Tensor, lb: Letterbox, size: tuple[int, int]) -> torch.Tensor:
    """(C, S, S) → (C, h, w): the image area cut out and resized to `size` (h, w)."""
    crop = maps[:, lb.pad_y:lb.pad_y + lb.new_h, lb.pad_x:lb.pad_x + lb.new_w]
    return F.interpolate(crop[None], size=size, mode="bilinear", align_corners=False)[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Predictor:
    """Batches of RGB images → `Prediction`s. Settings come from `config.predict`.

    The forward pass is the student's engine (`distill.student.engines`): its PyTorch module
    for a checkpoint, the exported file's runtime for an `ExportedStudent`; everything around
    it (letterbox, refinement, decoding) is this one class's, whatever the engine."""

    def __init__(self, student: LoadedStudent | ExportedStudent,
                 device: str | torch.device = "cpu", *, refine: bool = True,
                 full_maps: bool = True, display_max: int | None = None) -> None:
        self.student = student
        self.device = torch.device(device)
        self.engine: Engine
        if isinstance(student, ExportedStudent):
            self.engine = student.engine
        else:
            self.engine = TorchEngine(student.model.to(self.device).eval(), self.device)
        self.size = student.config.student.input_size
        self.settings: PredictConfig = student.config.predict
        self.refine = refine
        self.full_maps = full_maps  # also return the joint and PAF maps
        # the labels' maps at most this many pixels on the long side (None: the original size);
        # people in `Prediction.people` are always in original pixels.
        self.display_max = display_max
        self.gradient_scale = student.config.labels.normals_gradient_scale

    def letterbox(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, Letterbox]]:
        """Decoded RGB images → (letterboxed S×S uint8 image, its letterbox) each."""
        boxes = [Letterbox.fit(img.shape[1], img.shape[0], self.size) for img in images]
        return [(lb.image(img), lb) for lb, img in zip(boxes, images, strict=True)]

    def letterbox_encoded(self, data: list[bytes], *, exif_transpose: bool = False) -> list[
            tuple[np.ndarray, Letterbox]]:
        """Encoded images → inputs exactly as training builds them (`student_image`);
        `exif_transpose` as a shard row's (True: as a viewer shows them, a plain folder's)."""
        return [student_image(d, self.size, exif_transpose=exif_transpose) for d in data]

    @torch.no_grad()
    def forward(self, inputs: list[tuple[np.ndarray, Letterbox]]) -> tuple[
            dict[str, torch.Tensor], list[Letterbox], float]:
        """Run the model on letterboxed inputs; (outputs with maps in [0, 1], letterboxes,
        ms)."""
        boxes = [lb for _, lb in inputs]
        batch = np.stack([img for img, _ in inputs])
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        _sync(self.device)
        started = time.perf_counter()
        out = self.engine(x)
        _sync(self.device)
        ms = (time.perf_counter() - started) * 1e3
        return {k: (v + 1) / 2 if k == "maps" else v for k, v in out.items()}, boxes, ms

    @torch.no_grad()
    def refine_batch(self, maps: torch.Tensor, boxes: list[Letterbox]) -> torch.Tensor:
        """The depth channel of (B, 44, S, S) unit maps, refined from the normals channels, the
        whole batch at once on the maps' device."""
        s = self.settings
        scale = torch.tensor([lb.scale for lb in boxes], device=maps.device).view(-1, 1, 1, 1)
        normals = maps[:, layout.NORMALS] * 2 - 1
        # Labels measure slopes per ORIGINAL pixel; one output pixel spans 1/scale of them.
        return refine_depth(maps[:, layout.DEPTH], normals, iterations=s.refine_iterations,
                            alpha=s.refine_alpha, far=s.refine_far,
                            gradient_scale=self.gradient_scale * scale)

    def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        """RGB uint8 (H, W, 3) images → one `Prediction` each."""
        return self.predict_letterboxed(self.letterbox(images))

    def predict_encoded(self, data: list[bytes], *,
                        exif_transpose: bool = False) -> list[Prediction]:
        """Encoded image files → one `Prediction` each, the student seeing them exactly as in
        training (a JPEG decoded at its DCT scale, then letterboxed; with its EXIF orientation
        applied when `exif_transpose`, as a shard row's flag says)."""
        return self.predict_letterboxed(self.letterbox_encoded(data,
                                                               exif_transpose=exif_transpose))

    def predict_letterboxed(self, inputs: list[tuple[np.ndarray, Letterbox]]) -> list[Prediction]:
        """Letterboxed inputs (`letterbox`, `letterbox_encoded`) → one `Prediction` each."""
        if not inputs:
            return []
        outputs, boxes, forward_ms = self.forward(inputs)
        maps = outputs["maps"]
        raw_depth = maps[:, layout.DEPTH].clone()
        started = time.perf_counter()
        if self.refine:
            maps[:, layout.DEPTH] = self.refine_batch(maps, boxes)
        _sync(self.device)
        refine_ms = (time.perf_counter() - started) * 1e3
        tokens = outputs["tokens"].cpu().numpy()
        maps_np = maps.cpu().numpy()
        results = []
        for i, lb in enumerate(boxes):
            t0 = time.perf_counter()
            words = decode_tokens(tokens[i], self.student.vocab,
                                  min_norm=self.settings.token_min_norm,
                                  min_similarity=self.settings.token_min_similarity) \
                if self.student.vocab is not None else []
            t1 = time.perf_counter()
            people = decode_letterboxed(maps_np[i, layout.JOINTS], maps_np[i, layout.PAFS], lb,
                                        peak_threshold=self.settings.peak_threshold,
                                        paf_threshold=self.settings.paf_threshold)
            for person in people:
                present = person.keypoints[:, 2] > 0
                person.keypoints[present, :2] = lb.inverse_points(person.keypoints[present, :2])
            t2 = time.perf_counter()
            labels = self._labels(maps[i], raw_depth[i], lb, people, words)
            t3 = time.perf_counter()
            timings = {"forward": forward_ms / len(inputs),
                       # (no refine step timed when refinement is off)
                       **({"refine": refine_ms / len(inputs)} if self.refine else {}),
                       "tokens": (t1 - t0) * 1e3, "pose": (t2 - t1) * 1e3,
                       "unletterbox": (t3 - t2) * 1e3}
            results.append(Prediction(labels, words, people, (lb.src_w, lb.src_h), timings,
                                      maps_np[i]))
        return results

    def display_size(self, lb: Letterbox) -> tuple[int, int]:
        """(width, height) of the labels' maps for an image of the letterbox's source size."""
        w, h = lb.src_w, lb.src_h
        if self.display_max is None or max(w, h) <= self.display_max:
            return w, h
        f = self.display_max / max(w, h)
        return max(1, round(w * f)), max(1, round(h * f))

    def _labels(self, maps: torch.Tensor, raw_depth: torch.Tensor, lb: Letterbox,
                people: list[DecodedPerson], words: list[Word]) -> LabelledImage:
        w, h = self.display_size(lb)
        first = 0 if self.full_maps else layout.DEPTH.start
        arr = _unletterbox(torch.cat([maps[first:], raw_depth]), lb, (h, w)).cpu().numpy()
        channels = {key: arr[s.start - first:s.stop - first]
                    for key, s in layout.modalities().items() if s.start >= first}
        kp = (np.stack([p.keypoints for p in people]).astype(np.float32) if people
              else np.zeros((0, 17, 3), np.float32))
        if (w, h) != (lb.src_w, lb.src_h):  # people into the display frame
            kp[..., 0] *= w / lb.src_w
            kp[..., 1] *= h / lb.src_h
        return from_channels(channels, w, h, people=kp, tokens=[word.word for word in words],
                             depth_raw=arr[-1])


def describe(prediction: Prediction, name: str) -> dict[str, Any]:
    """The JSON record of one prediction: the image's own size (the frame its people's
    keypoints are in, whatever size the maps were drawn at), people, words and timings."""
    return {
        "image": name,
        "width": prediction.size[0],
        "height": prediction.size[1],
        "people": [{"keypoints": [round(float(v), 2) for v in p.keypoints.reshape(-1)],
                    "score": round(float(p.score), 4)} for p in prediction.people],
        "words": [{"position": w.position, "word": w.word, "similarity": round(w.similarity, 4)}
                  for w in prediction.words],
        "timings_ms": {k: round(v, 3) for k, v in prediction.timings.items()},
    }


def check_out_folder(out: Path) -> None:
    """`distill predict --out` is a folder, new or already there; a file at `out`, or a file in
    its way (a parent that is not a folder), is refused before anything runs."""
    if out.exists() and not out.is_dir():
        raise DistillError(f"--out {out} is a file, not a folder; pass a folder for the "
                           "predictions")
    blocking = next((up for up in out.parents if up.exists() and not up.is_dir()), None)
    if blocking is not None:
        raise DistillError(f"--out {out}: {blocking} is a file, not a folder")


def make_out_folder(out: Path) -> None:
    """Create the `--out` folder (`check_out_folder`'s rules; why it cannot be made in one
    line)."""
    check_out_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DistillError(f"cannot make --out {out}: {exc.strerror or exc}") from exc


def panel_paths(files: list[Path], out: Path) -> tuple[dict[Path, Path], list[str]]:
    """Where `distill predict` draws each image's panel: `out/<stem>.png` (`a.jpg` →
    `a.png`), except for images whose panel would clash — two inputs with one stem (`a.jpg`
    and `a.png`), or a file already there that distill did not write (an input, when `out` is
    the images folder; panels an earlier run recorded in `out/predictions.json` are distill's)
    — which keep their whole name (`a.jpg.png`, `a.png.png`). Returns the paths and the names
    that kept theirs; raises `DistillError` if even that clashes, or `out` is not a folder."""
    check_out_folder(out)
    ours = _earlier_panels(out)

    def foreign(panel: Path) -> bool:
        return panel.exists() and panel.resolve() not in ours

    stems = Counter(f.stem for f in files)
    paths: dict[Path, Path] = {}
    kept: list[str] = []
    for f in files:
        panel = out / f"{f.stem}.png"
        if stems[f.stem] > 1 or foreign(panel):
            panel = out / f"{f.name}.png"
            kept.append(f.name)
        paths[f] = panel
    taken = Counter(p.resolve() for p in paths.values())
    for f, panel in paths.items():
        if taken[panel.resolve()] > 1 or foreign(panel):
            raise DistillError(f"the panel of {f} would be {panel}, which is a file distill did "
                               "not write or another image's panel; pass --out a folder of its "
                               "own")
    return paths, kept


def _earlier_panels(out: Path) -> set[Path]:
    """The panels an earlier `distill predict` into `out` recorded (its predictions.json)."""
    try:
        doc = json.loads((out / "predictions.json").read_text())
        return {Path(r["panel"]).resolve() for r in doc.get("images", []) if r.get("panel")}
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return set()
