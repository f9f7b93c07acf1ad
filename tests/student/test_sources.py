"""Where a student's shards and vocabulary come from (`distill.student.sources`): shards of two
label runs in one --shards are refused naming each fingerprint unless --allow-mixed, which
trains on a vocabulary rebuilt from all their tokens; shards copied into a plain folder train
with their tokens, on the vocabulary rebuilt from them; --val-shards may be another label run."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from distill.cli import app
from distill.config import load_config
from distill.errors import MixedLabelRuns
from distill.labels.tokens import Vocabulary, read_vocabulary, write_vocabulary_file
from distill.shards import read_metadata
from distill.student.sources import training_vocabulary
from distill.student.train import TrainOptions, train_student

TINY = ["student.input_size=64", "train.num_workers=0", "train.batch_size=4", "train.epochs=1"]
SHARDS = [f"val2017-0000{i}.parquet" for i in range(3)]  # 3, 3, 1 rows
OTHER = "0123456789abcdef"  # the label fingerprint of a faked second label run


def _config(*overrides: str):
    return load_config("demo", overrides=[*TINY, *overrides])


def _cli(*args: str):
    sets = [arg for o in TINY for arg in ("--set", o)]
    return CliRunner().invoke(app, ["run", "train-student", "--preset", "demo", "--device", "cpu",
                                    *sets, *args])


def _error_lines(output: str) -> list[str]:
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if line.startswith("error:")]


def _copy(src: Path, dst: Path, fingerprint: str | None = None) -> Path:
    """A copy of a shard; with `fingerprint`, as a shard of another label run (its footer's
    label fingerprint rewritten, the rows unchanged)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if fingerprint is None:
        shutil.copy(src, dst)
        return dst
    table = pq.read_table(src)
    meta = {**table.schema.metadata, b"distill.fingerprint": json.dumps(fingerprint).encode()}
    pq.write_table(table.replace_schema_metadata(meta), dst)
    return dst


def _same_vocabulary(a: Vocabulary, b: Vocabulary) -> bool:
    return a.words == b.words and a.counts == b.counts and (a.vectors == b.vectors).all()


def test_shards_of_two_label_runs_are_refused_naming_each_fingerprint(labelled_coco7, tmp_path):
    run = labelled_coco7[1]
    mine = read_metadata(run / "shards" / SHARDS[0])["fingerprint"]
    folder = tmp_path / "copied"
    for name in SHARDS[:2]:
        _copy(run / "shards" / name, folder / name)
    _copy(run / "shards" / SHARDS[2], folder / SHARDS[2], fingerprint=OTHER)
    out = tmp_path / "student"
    res = _cli("--shards", str(folder), "--out", str(out))
    assert res.exit_code == 2, res.output
    assert _error_lines(res.output) == [
        f"error: --shards mixes 2 label runs with different label fingerprints: {mine} (2 "
        f"shards, e.g. {folder / SHARDS[0]}); {OTHER} (1 shard, e.g. {folder / SHARDS[2]}). "
        "Their labels were made with other settings or data, and each run has its own "
        "vocabulary; train on one label run's shards, or pass --allow-mixed to train on all of "
        "them with a vocabulary rebuilt from all their caption tokens"]
    assert not out.exists()  # refused before anything was written

    # Two label run folders of one fingerprint whose vocabularies differ: refused too, unless
    # --vocab picks one.
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(run, a)
    shutil.copytree(run, b)
    vocab = read_vocabulary(b / "vocab.parquet")
    write_vocabulary_file(b / "vocab.parquet", Vocabulary(
        vocab.words[:2], vocab.counts[:2], vocab.vectors[:2], vocab.scale), vocab.dim)
    both = TrainOptions(shards=[a, b], out=out)
    with pytest.raises(MixedLabelRuns, match=r"2 label runs with different vocabularies: .*/a/"
                       r"vocab\.parquet \(3 shards, .*/b/vocab\.parquet \(3 shards.*--vocab"):
        training_vocabulary(_config(), both)
    both.vocab = a / "vocab.parquet"
    assert _same_vocabulary(training_vocabulary(_config(), both).vocab, read_vocabulary(
        run / "vocab.parquet"))


def test_allow_mixed_trains_on_a_vocabulary_rebuilt_from_all_the_shards(labelled_coco7,
                                                                       tmp_path, caplog):
    run = labelled_coco7[1]
    folder = tmp_path / "copied"
    _copy(run / "shards" / SHARDS[0], folder / SHARDS[0])
    for name in SHARDS[1:]:
        _copy(run / "shards" / name, folder / name, fingerprint=OTHER)
    out = tmp_path / "student"
    with caplog.at_level(logging.INFO, logger="distill.student"):
        last = train_student(_config(), TrainOptions(shards=folder, out=out, progress=False,
                                                     allow_mixed=True))
    assert "several label runs (--allow-mixed)" in caplog.text
    # The union of both runs' tokens: here all the tokens of the one real run, whose vocabulary
    # it is again, word for word.
    assert _same_vocabulary(read_vocabulary(out / "vocab.parquet"),
                            read_vocabulary(run / "vocab.parquet"))
    assert last["train"]["loss/tokens"] > 0  # the student learns the tokens


def test_shards_in_a_plain_folder_train_with_their_tokens(labelled_coco7, tmp_path, caplog):
    """Copied out of their label run, shards come without vocab.parquet: the vocabulary is
    rebuilt from their tokens (a whole run's shards give its own back), with a warning. The
    validation shards are another label run: allowed, scored with the training vocabulary."""
    run = labelled_coco7[1]
    folder = tmp_path / "copied"
    for name in SHARDS:
        _copy(run / "shards" / name, folder / name)
    val = _copy(run / "shards" / SHARDS[2], tmp_path / "val" / SHARDS[2], fingerprint=OTHER)
    out = tmp_path / "student"
    with caplog.at_level(logging.WARNING, logger="distill.student"):
        last = train_student(_config(), TrainOptions(shards=folder, val_shards=val, out=out,
                                                     progress=False))
    [warning] = [r.getMessage() for r in caplog.records if "vocab" in r.getMessage()]
    assert warning.startswith(f"--shards: no vocab.parquet comes with the shards in {folder} "
                              "(no label run folder beside them has one); training with the vocabulary "
                              "rebuilt from the caption tokens of 3 shard(s)"), warning
    assert (out / "vocab.parquet").read_bytes() == (run / "vocab.parquet").read_bytes()
    assert last["train"]["loss/tokens"] > 0 and last["val"]["loss/tokens"] > 0

    # Without the GloVe vectors to rebuild it: one line saying what is missing and the way out.
    res = _cli("--shards", str(folder), "--out", str(tmp_path / "other"),
               "--set", f"labels.glove={tmp_path / 'glove.6B.50d.txt'}")
    assert res.exit_code == 2, res.output
    [line] = _error_lines(res.output)
    assert line.startswith(f"error: --shards: no vocab.parquet comes with the shards in {folder} "
                           "(no label run folder beside them has one), so train-student rebuilds the "
                           "vocabulary from their caption tokens with labels.glove, and GloVe "
                           "file"), line
    assert line.endswith("; or pass --vocab with the label run's vocab.parquet"), line
    assert not (tmp_path / "other").exists()
    res = _cli("--shards", str(folder), "--out", str(tmp_path / "other"),
               "--set", f"labels.glove={tmp_path / 'glove.6B.50d.txt'}",
               "--vocab", str(run / "vocab.parquet"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "other" / "vocab.parquet").read_bytes() == \
        (run / "vocab.parquet").read_bytes()
