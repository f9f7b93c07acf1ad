"""Hub checkpoints and their commit: a revision that is not a commit is warned about and the
commit the weights came from is recorded (from the local Hugging Face cache, offline); a pinned
revision is its own commit; a local path records no hash. No network: a fake cache layout."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from distill.config import TeacherConfig
from distill.provenance import is_pinned, unpinned_warning
from teachers.runtime import make_provenance, resolve_commit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """A Hugging Face cache holding org/model at `main` = COMMIT, as a download leaves it."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo = cache / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_is_pinned_means_a_full_commit_hash():
    assert is_pinned(COMMIT)
    assert not is_pinned("main") and not is_pinned("v1.0") and not is_pinned(COMMIT[:12])
    assert not is_pinned(COMMIT.upper()) and not is_pinned("")


def test_the_commit_comes_from_the_cache_a_pin_or_nowhere(hub_cache, tmp_path):
    assert resolve_commit("org/model", "main") == (COMMIT, "hub cache")
    assert resolve_commit("org/model", COMMIT) == (COMMIT, "pinned")
    assert resolve_commit("org/not-cached", "main") == (None, "unresolved")
    folder = tmp_path / "my-checkpoint"
    folder.mkdir()
    assert resolve_commit(str(folder), "main") == (None, "local path")


def _provenance(config: TeacherConfig, hub: bool = True):
    return make_provenance("depth", "depth-anything-v2", config, torch.device("cpu"),
                           torch.float32, input_size=518, hub=hub)


def test_an_unpinned_hub_checkpoint_is_warned_about_and_its_commit_recorded(hub_cache, caplog):
    with caplog.at_level(logging.WARNING, logger="teachers.runtime"):
        prov = _provenance(TeacherConfig(backend="depth-anything-v2", checkpoint="org/model"))
    assert (prov.commit, prov.commit_source) == (COMMIT, "hub cache")
    (record,) = [r for r in caplog.records if "not pinned" in r.getMessage()]
    message = record.getMessage()
    assert "teachers.depth: checkpoint 'org/model' at revision 'main' is not pinned" in message
    assert f"--set teachers.depth.revision={COMMIT}" in message
    assert unpinned_warning("depth", prov.to_dict()) == message


def test_a_pinned_or_local_checkpoint_is_not_warned_about(hub_cache, tmp_path, caplog):
    folder = tmp_path / "local"
    folder.mkdir()
    with caplog.at_level(logging.WARNING, logger="teachers.runtime"):
        pinned = _provenance(TeacherConfig(backend="depth-anything-v2", checkpoint="org/model",
                                           revision=COMMIT))
        local = _provenance(TeacherConfig(backend="depth-anything-v2", checkpoint=str(folder)))
        tiny = _provenance(TeacherConfig(backend="depth-anything-v2", variant="tiny"))
        package = _provenance(TeacherConfig(backend="craft", checkpoint="a-package"), hub=False)
    assert (pinned.commit, pinned.commit_source) == (COMMIT, "pinned")
    assert (local.commit, local.commit_source) == (None, "local path")
    assert (tiny.commit, tiny.commit_source) == (None, "")
    assert (package.commit, package.commit_source) == (None, "")
    assert not [r for r in caplog.records if "not pinned" in r.getMessage()]
