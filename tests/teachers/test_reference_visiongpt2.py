"""VisionGPT2 reference slices: the tiny preset's seeded weights on skimage's chelsea give the
step-0 logits and greedy token ids recorded in reference/visiongpt2.json. The original
shreydan/VisionGPT2 `model.py`, with the same weights loaded strictly, gives the same numbers
(issue 15.7; the JSON's `about` says how close)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from teachers.modeling_visiongpt2 import VisionGPT2Config, VisionGPT2Model
from teachers.runtime import seeded
from teachers.visiongpt2 import preprocess
from teachers.word_tokenizer import DEFAULT_VOCAB_SIZE

REFERENCE = json.loads((Path(__file__).parent / "reference" / "visiongpt2.json").read_text())


@pytest.fixture(scope="module")
def tiny_and_pixels() -> tuple[VisionGPT2Model, torch.Tensor]:
    """The tiny variant's network (what `variant="tiny"` builds) and chelsea, preprocessed."""
    skdata = pytest.importorskip("skimage.data")
    with seeded():
        model = VisionGPT2Model(VisionGPT2Config.tiny(vocab_size=DEFAULT_VOCAB_SIZE)).eval()
    pixels = preprocess([skdata.chelsea()], model.config.image_size, torch.device("cpu"),
                        torch.float32)
    return model, pixels


def _greedy(model: VisionGPT2Model, pixels: torch.Tensor, steps: int) -> list[int]:
    """The original's `generate(deterministic=True)`: a full forward per token, argmax, stop
    after eos."""
    ids = torch.full((1, 1), REFERENCE["bos_id"], dtype=torch.long)
    for _ in range(steps):
        nxt = model(pixels, ids)[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
        if int(nxt) == REFERENCE["eos_id"]:
            break
    return ids[0, 1:].tolist()


@torch.no_grad()
def test_visiongpt2_step0_logits(tiny_and_pixels):
    model, pixels = tiny_and_pixels
    logits = model(pixels, torch.full((1, 1), REFERENCE["bos_id"], dtype=torch.long))[0, -1]
    atol = REFERENCE["tolerance"]["logits_atol"]
    np.testing.assert_allclose(logits[:8].numpy(), REFERENCE["step0_logits_first8"], atol=atol)
    top = logits.topk(5)
    assert top.indices.tolist() == REFERENCE["step0_top5_ids"]
    np.testing.assert_allclose(top.values.numpy(), REFERENCE["step0_top5_logits"], atol=atol)


@torch.no_grad()
def test_visiongpt2_greedy_ids(tiny_and_pixels):
    """Full re-run per token and the cached `generate` give the recorded ids."""
    model, pixels = tiny_and_pixels
    ref = REFERENCE["greedy_ids"]
    assert _greedy(model, pixels, len(ref)) == ref
    bos, eos = REFERENCE["bos_id"], REFERENCE["eos_id"]
    assert model.generate(pixels, bos, eos, len(ref))[0, 1:].tolist() == ref
