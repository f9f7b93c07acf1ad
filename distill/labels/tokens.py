"""Caption tokens (paper §3.4): stop-word filter, top-K vocabulary, 8 GloVe target vectors."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import ConfigError, LabelError

__all__ = [
    "PAPER_STOP_WORDS",
    "Vocabulary",
    "build_vocabulary",
    "load_stop_words",
    "read_vocabulary",
    "token_targets",
    "tokenize",
    "vocabulary_from_shards",
    "write_vocabulary_file",
]

# Fig. 5 of the paper. `s` is what is left of "'s" once words are split on non-alphanumerics.
PAPER_STOP_WORDS: frozenset[str] = frozenset(
    ["(", ")", ":", "a", "an", "s", "of", "on", "and", "i", "in", "the", "is", "it", "at", "to", "with", "for", "from"]
)

_WORD = re.compile(r"[a-z0-9]+")


def load_stop_words(words: Iterable[str] = (), path: str | Path = "") -> frozenset[str]:
    """The stop-word set: a file (one word per line, `#` comments) if given, else `words` if
    non-empty, else the paper's list."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"labels.stop_words_file {str(p)!r} does not exist")
        lines = (line.split("#", 1)[0].strip().lower() for line in p.read_text().splitlines())
        return frozenset(w for w in lines if w)
    given = frozenset(w.lower() for w in words)
    return given or PAPER_STOP_WORDS


def tokenize(
    caption: str,
    stop_words: frozenset[str] = PAPER_STOP_WORDS,
    known: Mapping[str, object] | frozenset[str] | set[str] | None = None,
) -> list[str]:
    """Lowercase, split into words, drop stop words, keep words `known` has (e.g. GloVe's);
    order is kept. Words are runs of [a-z0-9]: all punctuation, the paper's ( ) : included,
    falls away in the split, and "man's" becomes "man", "s"."""
    words = _WORD.findall(caption.lower())
    return [w for w in words if w not in stop_words and (known is None or w in known)]


@dataclass
class Vocabulary:
    """The top-K caption words with their counts and GloVe vectors scaled to [-1, 1]."""

    words: list[str]
    counts: list[int]
    vectors: np.ndarray  # (K, D) float32, already scaled
    scale: float  # vectors = glove / scale

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def build_vocabulary(
    token_lists: Iterable[list[str]],
    glove: Mapping[str, np.ndarray],
    size: int = 2048,
) -> Vocabulary:
    """The `size` most frequent tokens; ties break alphabetically (count desc, then word asc).

    Vectors are divided by the largest |component| among the chosen words' GloVe vectors, one
    scalar for all: every component lands in [-1, 1] and cosine similarities are unchanged.
    """
    counts: Counter[str] = Counter()
    for tokens in token_lists:
        counts.update(tokens)
    missing = [w for w in counts if w not in glove]
    if missing:
        raise LabelError(
            f"{len(missing)} tokens have no GloVe vector (e.g. {missing[:3]}); tokenize with "
            "known=glove first"
        )
    ranked = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))[:size]
    words = [w for w, _ in ranked]
    if words:
        raw = np.stack([np.asarray(glove[w], np.float32) for w in words])
        scale = float(np.abs(raw).max()) or 1.0
    else:
        raw, scale = np.zeros((0, 0), np.float32), 1.0
    return Vocabulary(words, [c for _, c in ranked], (raw / scale).astype(np.float32), scale)


def vocabulary_from_shards(paths: Iterable[Any], glove_source: str,
                           size: int) -> tuple[Vocabulary, dict[str, str]] | None:
    """What generate-labels writes as `vocab.parquet`, from the `tokens` column of the shards
    `paths`: the `size` most frequent tokens with `glove_source`'s vectors, and the file
    metadata to write with it (the GloVe source, how many captions had tokens). The same shards
    give the same vocabulary. None when no row has tokens (the caption teacher was off)."""
    from distill.labels.glove import load_glove
    from distill.shards import read_shard

    token_lists: list[list[str]] = []
    for path in paths:
        column = read_shard(path, ["tokens"]).column("tokens").to_pylist()
        token_lists.extend(t for t in column if t)
    if not token_lists:
        return None
    glove = load_glove(glove_source, restrict={w for tokens in token_lists for w in tokens})
    vocab = build_vocabulary(token_lists, glove, size)
    return vocab, {"distill.glove": glove_source, "distill.captions": json.dumps(len(token_lists))}


def token_targets(tokens: list[str], vocab: Vocabulary, max_tokens: int = 8) -> np.ndarray:
    """(max_tokens, D) float32: the first `max_tokens` in-vocabulary tokens in caption order,
    then zero vectors."""
    out = np.zeros((max_tokens, vocab.dim), np.float32)
    kept = [vocab.index[t] for t in tokens if t in vocab.index][:max_tokens]
    if kept:
        out[: len(kept)] = vocab.vectors[kept]
    return out


# `vocab.parquet` (DESIGN.md §4): columns rank, word, count, vector (GloVe, scaled); the scale
# and the GloVe file it came from in the file metadata.


def write_vocabulary_file(path: Any, vocab: Vocabulary, dim: int,
                          meta: Mapping[str, str] | None = None) -> None:
    """Write `vocab` as `vocab.parquet` at `path` (a local path or URI), atomically."""
    import pyarrow as pa

    from distill.storage import atomic_write_table

    dim = vocab.dim if len(vocab.words) else dim
    table = pa.table({
        "rank": pa.array(range(len(vocab.words)), pa.int32()),
        "word": pa.array(vocab.words, pa.string()),
        "count": pa.array(vocab.counts, pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(vocab.vectors.reshape(-1), pa.float32()), dim),
    })
    full = {"distill.scale": json.dumps(vocab.scale), **(meta or {})}
    atomic_write_table(path, table.replace_schema_metadata(full))


def read_vocabulary(path: Any) -> Vocabulary:
    """`vocab.parquet` (a local path or URI) back into a `Vocabulary`."""
    import pyarrow.parquet as pq

    from distill.storage import Location

    table = pq.read_table(Location(path).open_input())
    meta = table.schema.metadata or {}
    vectors = np.asarray(table.column("vector").combine_chunks().flatten(), np.float32)
    words = table.column("word").to_pylist()
    dim = table.schema.field("vector").type.list_size
    return Vocabulary(words, table.column("count").to_pylist(),
                      vectors.reshape(len(words), dim), json.loads(meta[b"distill.scale"]))
