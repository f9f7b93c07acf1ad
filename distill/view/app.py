"""The `distill view` web app (Starlette): a JSON API over `RunView`, pictures from
`distill.view.render`, and a small static front end (distill/view/static).

Read-only but for one file: the per-row statistics the filters and sorts use are kept between
starts (`distill.view.stats`: beside a local run, else in the local cache); nothing else is
written. Every URL names a shard by its name among the run's shards and a row by its number;
neither ever reaches the filesystem unchecked.

    GET /                                  the front end (grid, sample and run pages)
    GET /api/meta                          groups, sort keys, teachers, whether a student is loaded
    GET /api/rows?offset&limit&...         a page of grid cards (filters and sort: `Query`)
    GET /api/sample/{shard}/{row}          one sample: captions, tokens, segments, provenance,
                                           layers (and the student's words and scores)
    GET /api/run                           summary, per-stage images/s, shards, quarantine
    GET /thumb/{shard}/{row}.jpg           a thumbnail (made on request, cached)
    GET /image/{shard}/{row}.jpg           the image at its displayed size
    GET /layer/{source}/{shard}/{row}/{name}.png   a layer: source teacher | student
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from distill.errors import DistillError, RunGone, ViewError
from distill.layers.form import LabelledImage, from_sample
from distill.storage import Location
from distill.view.index import (
    CLASS_GROUP_NAMES,
    TEACHER_COLUMNS,
    Query,
    RunView,
    sort_keys,
)
from distill.view.memory import LRU, Workers
from distill.view.render import (
    display_size,
    image_jpeg,
    layer_names,
    layer_png,
    segment_names,
    thumbnail_jpeg,
)

__all__ = ["StudentSide", "create_app"]

logger = logging.getLogger(__name__)

_CACHE = {"Cache-Control": "private, max-age=3600"}  # a committed row never changes
PAGE_MAX = 200
# Caches, (entries, bytes). A decoded 640x480 row is ~18 MiB (its label maps as float32), a
# layer PNG 40-160 KB, a thumbnail ~10 KB, a student's prediction up to ~55 MiB.
THUMBS = (4096, 64 << 20)
PICTURES = (512, 64 << 20)
DECODED = (8, 96 << 20)
PREDICTIONS = (32, 128 << 20)
# Threads that decode rows and draw pictures (`Workers`): more than the cores gain nothing, and
# each holds a decoded row (~40 MiB at its peak while drawing) and its own malloc arena.
WORKERS = max(1, min(4, os.cpu_count() or 1))


class StudentSide:
    """A trained student run beside the teachers: its prediction of a sample (layers, words,
    people) and that sample's scores, cached per row."""

    def __init__(self, checkpoint: str, device: str = "cpu") -> None:
        from distill.student.predict import Predictor, load_student
        from distill.view.render import DISPLAY_MAX

        self.loaded = load_student(checkpoint, device)
        self.device = device
        self.predictor = Predictor(self.loaded, device, display_max=DISPLAY_MAX)
        self._lock = threading.Lock()  # one forward pass at a time
        self._cache: LRU[tuple[str, int], dict[str, Any]] = LRU(*PREDICTIONS)

    def describe(self) -> dict[str, Any]:
        return {"checkpoint": str(self.loaded.checkpoint), "epoch": self.loaded.epoch,
                "preset_input_size": self.loaded.config.student.input_size}

    def predict(self, key: tuple[str, int], sample: Any) -> dict[str, Any]:
        def make() -> dict[str, Any]:
            from distill.student.evaluate import score_sample

            with self._lock:
                pred = self.predictor.predict_encoded(
                    [sample.image], exif_transpose=sample.exif_transpose)[0]
                scores = score_sample(self.loaded.model, self.loaded.config, sample,
                                      vocab=self.loaded.vocab, epoch=self.loaded.epoch,
                                      device=self.device)
            return {"prediction": pred, "scores": scores}

        return self._cache.get_or_make(key, make)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _int(request: Request, name: str, default: int, lo: int = 0, hi: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be an integer, got {raw!r}") from None
    if value < lo or (hi is not None and value > hi):
        raise HTTPException(400, f"{name} must be in {lo}..{hi if hi is not None else ''}")
    return value


def _float(request: Request, name: str) -> float:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return 0.0
    try:
        return float(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be a number, got {raw!r}") from None


def _query(request: Request) -> Query:
    p = request.query_params
    people_max = p.get("people_max")
    return Query(
        group=p.get("group", ""), min_share=_float(request, "min_share"),
        text_min=_float(request, "text_min"), people_min=_int(request, "people_min", 0),
        people_max=None if people_max in (None, "") else _int(request, "people_max", 0),
        word=p.get("word", ""), missing=p.get("missing", ""),
        quarantined=p.get("quarantined", ""), reason=p.get("reason", ""),
        sort=p.get("sort", ""), descending=p.get("order", "desc") != "asc")


def _key(request: Request) -> tuple[str, int]:
    shard = request.path_params["shard"]
    row = request.path_params["row"]
    return shard, int(row)


def create_app(run: str | Location, *, checkpoint: str | None = None,
               device: str = "cpu") -> Starlette:
    """The app for one run (a run folder, shards folder, glob or shard; a path or a URI)."""
    view = RunView(run)
    student = StudentSide(checkpoint, device) if checkpoint else None
    thumbs: LRU[tuple[str, int], bytes] = LRU(*THUMBS)
    pictures: LRU[tuple[Any, ...], bytes] = LRU(*PICTURES)
    run_cache: dict[str, Any] = {}
    names = segment_names()
    # Everything that decodes a row or draws a picture runs on these (sample_of only there), so
    # no more than WORKERS decoded rows are alive outside the cache.
    work = Workers(WORKERS, "distill-view-work")

    # A sample page asks for its JSON, its image and each layer: the row is read and its maps
    # decoded once for all of them.
    decoded: LRU[tuple[str, int], tuple[Any, LabelledImage]] = LRU(*DECODED)

    def sample_of(key: tuple[str, int]) -> tuple[Any, LabelledImage]:
        def make() -> tuple[Any, LabelledImage]:
            sample = view.sample(*key)
            return sample, from_sample(sample, image=False)

        return decoded.get_or_make(key, make)

    async def index(request: Request) -> Response:
        page = resources.files("distill.view").joinpath("static", "index.html").read_bytes()
        return Response(page, media_type="text/html")

    async def meta(request: Request) -> Response:
        return JSONResponse({
            "path": str(view.path), "is_run": view.run is not None,
            "groups": list(CLASS_GROUP_NAMES), "sort_keys": list(sort_keys()),
            "teachers": list(TEACHER_COLUMNS), "student": student.describe() if student else None,
            "stages": ["read", "decode", *(f"teacher:{t}" for t in TEACHER_COLUMNS),
                       "postprocess"],
        })

    def rows_sync(request: Request) -> dict[str, Any]:
        try:
            q = _query(request)
        except ViewError as exc:
            raise HTTPException(400, str(exc)) from None
        offset = _int(request, "offset", 0)
        limit = _int(request, "limit", 48, 1, PAGE_MAX)
        return view.query(q, offset, limit) | {"offset": offset, "limit": limit}

    async def rows(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(rows_sync, request))

    def sample_sync(key: tuple[str, int]) -> dict[str, Any]:
        sample, labels = sample_of(key)
        shard = view.shard(key[0])
        size = display_size(sample.width, sample.height)
        doc: dict[str, Any] = {
            "key": f"{key[0]}/{key[1]}", "shard": key[0], "row": key[1],
            "image_id": sample.image_id, "file_name": sample.file_name, "split": sample.split,
            "width": sample.width, "height": sample.height, "display": list(size),
            "teacher_captions": sample.teacher_captions, "coco_captions": sample.coco_captions,
            "tokens": sample.tokens, "people": len(sample.persons),
            "segments": [{"category": names.get(s.category_id, str(s.category_id)),
                          "category_id": s.category_id, "isthing": s.isthing,
                          "score": round(s.score, 4), "area": s.area}
                         for s in sample.segments or []],
            "text_regions": len(sample.text_regions or []),
            "layers": layer_names(labels),
            "provenance": shard.provenance, "random_weights": shard.random_roles,
            "quarantine": [{"stage": s, "reason": r}
                           for s, r in view.quarantined().get(sample.image_id, [])],
            "student": None,
        }
        if student is not None:
            got = student.predict(key, sample)
            pred = got["prediction"]
            doc["student"] = {
                "words": [{"word": w.word, "position": w.position,
                           "similarity": round(w.similarity, 4)} for w in pred.words],
                "people": len(pred.people),
                "layers": layer_names(pred.labels),
                "scores": got["scores"],
                "timings_ms": {k: round(v, 2) for k, v in pred.timings.items()},
            }
        return doc

    async def sample_api(request: Request) -> Response:
        return JSONResponse(await work.run(sample_sync, _key(request)))

    def thumb_sync(key: tuple[str, int]) -> bytes:
        def make() -> bytes:
            c = view.cells(*key, ("image", "width", "height", "exif_transpose"))
            return thumbnail_jpeg(c["image"], c["width"], c["height"], bool(c["exif_transpose"]))

        return thumbs.get_or_make(key, make)

    async def thumb(request: Request) -> Response:
        data = await work.run(thumb_sync, _key(request))
        return Response(data, media_type="image/jpeg", headers=_CACHE)

    def image_sync(key: tuple[str, int]) -> bytes:
        def make() -> bytes:
            s, _ = sample_of(key)
            return image_jpeg(s.image, s.width, s.height, s.exif_transpose)

        return pictures.get_or_make(("image", *key), make)

    async def image(request: Request) -> Response:
        data = await work.run(image_sync, _key(request))
        return Response(data, media_type="image/jpeg", headers=_CACHE)

    def layer_sync(source: str, key: tuple[str, int], name: str) -> bytes:
        def make() -> bytes:
            sample, labels = sample_of(key)
            size = display_size(sample.width, sample.height)
            if source == "teacher":
                allowed = layer_names(labels)
            else:
                if student is None:
                    raise ViewError("no student loaded: start `distill view` with --checkpoint")
                labels = student.predict(key, sample)["prediction"].labels
                allowed = layer_names(labels)
            if name not in allowed:
                raise ViewError(f"no {source} layer {name!r} for this sample")
            return layer_png(labels, name, size)

        if source not in ("teacher", "student"):
            raise ViewError(f"unknown layer source {source!r}")
        return pictures.get_or_make(("layer", source, *key, name), make)

    async def layer(request: Request) -> Response:
        p = request.path_params
        data = await work.run(layer_sync, p["source"], _key(request), p["name"])
        return Response(data, media_type="image/png", headers=_CACHE)

    def run_sync() -> dict[str, Any]:
        from distill.inspect import inspect_path
        from distill.quarantine import summarise
        from distill.writelock import writer_active

        now = time.monotonic()
        if run_cache and now - run_cache["at"] < 3.0:
            return dict(run_cache["doc"])
        view.refresh()
        report = inspect_path(view.path, sample_rows=0)
        failures = view.failures()
        summary = None
        running = False
        if view.run is not None:
            if view.run.summary.is_file():
                summary = json.loads(view.run.summary.read_text())
            running = writer_active(view.run.root)
        progress = report.get("progress")
        doc = {
            "path": str(view.path), "is_run": view.run is not None, "running": running,
            "rows": report["rows"]["total"], "shards": report["shards"], "progress": progress,
            "summary": summary, "provenance": report["provenance"], "bytes": report["bytes"],
            "quarantine": {"total": len(failures), "by_stage_type": summarise(failures),
                           "entries": [{"image_id": f.image_id, "file_name": f.file_name,
                                        "shard": f.shard, "stage": f.stage,
                                        "error_type": f.error_type, "message": f.message}
                                       for f in failures[:2000]]},
            "index": view.index_status(),
        }
        run_cache.update(at=now, doc=doc)
        return doc

    async def run_api(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(run_sync))

    async def on_view_error(request: Request, exc: Exception) -> Response:
        return _error(404, str(exc))

    async def on_gone(request: Request, exc: Exception) -> Response:
        return _error(410, str(exc))  # logged once, by RunView.gone

    async def on_distill_error(request: Request, exc: Exception) -> Response:
        gone = await run_in_threadpool(view.gone)  # a shard unreadable because the run went
        if gone is not None:
            return await on_gone(request, gone)
        logger.warning("%s: %s", request.url.path, exc)
        return _error(500, str(exc))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail))

    static = resources.files("distill.view").joinpath("static")
    routes = [
        Route("/", index),
        Route("/api/meta", meta),
        Route("/api/rows", rows),
        Route("/api/run", run_api),
        Route("/api/sample/{shard}/{row:int}", sample_api),
        Route("/thumb/{shard}/{row:int}.jpg", thumb),
        Route("/image/{shard}/{row:int}.jpg", image),
        Route("/layer/{source}/{shard}/{row:int}/{name}.png", layer),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        work.close()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        ViewError: on_view_error, RunGone: on_gone, DistillError: on_distill_error,
        HTTPException: on_http})
    app.state.view = view
    app.state.caches = {"thumbs": thumbs, "pictures": pictures, "decoded": decoded,
                        "row_groups": view.row_groups}
    return app
