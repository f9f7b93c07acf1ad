"""Y-MAP-Net: shapes and ranges, the token chain, the paper's size, init, one training step."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, cast

import pytest
import torch

from distill.config import StudentConfig, load_config
from distill.errors import ConfigError
from distill.student.layout import CHANNELS
from distill.student.model import (
    YMapNet,
    build_student,
    count_parameters,
    token_dropout_rates,
)

PAPER_PARAMETERS = 297_000_000  # paper Table 3


@pytest.fixture(scope="module")
def tiny() -> StudentConfig:
    """The demo student (preset tiny, 4 levels, pixelwise 32, 8 × 50 tokens) at 64 × 64."""
    return dataclasses.replace(load_config("demo").student, input_size=64)


def _model(config: StudentConfig, vocab_size: int = 0, seed: int = 0) -> YMapNet:
    torch.manual_seed(seed)
    return build_student(config, vocab_size)


def _images(config: StudentConfig, batch: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    size = config.input_size
    return torch.rand(batch, 3, size, size, generator=gen) * 2 - 1


def test_tiny_outputs_have_the_layout_shapes_and_tanh_ranges(tiny: StudentConfig) -> None:
    model = _model(tiny).eval()
    x = _images(tiny)
    with torch.no_grad():
        out = model(x)
        alone = model(x[1:])
    assert set(out) == {"maps", "tokens"}
    assert out["maps"].shape == (2, CHANNELS, 64, 64)
    assert out["tokens"].shape == (2, tiny.num_tokens, tiny.token_dim)
    for value in out.values():
        assert torch.isfinite(value).all()
        assert value.abs().max() <= 1.0
        assert value.std() > 1e-3  # not collapsed to a constant
    # The two images are processed independently, and differently.
    torch.testing.assert_close(out["maps"][1:], alone["maps"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["tokens"][1:], alone["tokens"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out["maps"][0], out["maps"][1])


def test_wrong_input_size_is_refused(tiny: StudentConfig) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        _model(tiny)(torch.zeros(1, 3, 32, 32))


def test_conv_blocks_keep_the_first_conv_as_a_residual(tiny: StudentConfig) -> None:
    block: Any = _model(tiny).encoder[1]
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        block.conv2.weight.zero_()  # the second conv adds nothing: only the residual is left
        h = block.act(block.conv1(x))
        torch.testing.assert_close(block(x), block.act(h))
    assert h.abs().max() > 0


def test_each_token_carries_0_3_of_the_previous_one(tiny: StudentConfig) -> None:
    model = _model(tiny).double().eval()
    heads: list[torch.Tensor] = []
    for head in model.tokens:
        head.register_forward_hook(lambda _m, _i, out: heads.append(out))
    x = _images(tiny).double()
    with torch.no_grad():
        tokens = model(x)["tokens"]
    # token_i = tanh(head_i + 0.3 · token_{i-1}), token_0 = tanh(head_0)
    torch.testing.assert_close(torch.atanh(tokens[:, 0]), heads[0])
    for i in range(1, tiny.num_tokens):
        torch.testing.assert_close(torch.atanh(tokens[:, i]), heads[i] + 0.3 * tokens[:, i - 1])


def test_changing_the_first_head_moves_later_tokens_not_the_last_earlier(
        tiny: StudentConfig) -> None:
    model: Any = _model(tiny).double().eval()
    x = _images(tiny).double()
    with torch.no_grad():
        before = model(x)["tokens"]
        model.tokens[0].norm.bias.add_(0.5)  # only token 0's head changes
        first = model(x)["tokens"]
        model.tokens[-1].norm.bias.add_(0.5)  # only the last head changes
        last = model(x)["tokens"]
    moved = (first - before).abs().amax(dim=(0, 2))
    assert (moved > 1e-8).all()  # every later token feels token 0 through the chain
    assert (moved[1:] < 0.5 * moved[:-1]).all()  # ... fading (0.3 per step, times tanh')
    torch.testing.assert_close(last[:, :-1], first[:, :-1])  # no link backwards
    assert not torch.allclose(last[:, -1], first[:, -1])


def test_token_dropout_falls_linearly_from_20_percent_to_zero(tiny: StudentConfig) -> None:
    model: Any = _model(tiny)
    rates = [head.drop.p for head in model.tokens]
    assert rates == pytest.approx([0.2 * (7 - i) / 7 for i in range(8)])
    assert token_dropout_rates(1) == [0.2]


def test_paper_preset_is_297m_parameters_on_the_meta_device() -> None:
    n = count_parameters(StudentConfig())
    assert abs(n - PAPER_PARAMETERS) <= 0.10 * PAPER_PARAMETERS, f"{n:,} parameters"
    meta: Any = build_student(StudentConfig(), device="meta")
    assert all(p.is_meta for p in meta.parameters())
    assert meta.tokens[0].dense.in_features == meta.bridge.fc2.out_features


def test_count_matches_a_real_tiny_model_and_tiny_is_small(tiny: StudentConfig) -> None:
    real = sum(p.numel() for p in _model(tiny).parameters())
    assert count_parameters(tiny) == real
    assert real < 1_000_000
    wider = dataclasses.replace(tiny, pixelwise_width=64)
    # 32 more pixelwise filters: 8 inputs + a bias each, and 32 more inputs to the 44 outputs.
    assert count_parameters(wider) - real == 32 * (8 + 1 + CHANNELS)


def test_multi_hot_logits_only_when_enabled(tiny: StudentConfig) -> None:
    x = _images(tiny)
    with torch.no_grad():
        assert "multi_hot" not in _model(tiny, vocab_size=30).eval()(x)
        on = dataclasses.replace(tiny, multi_hot_tail=True)
        out = _model(on, vocab_size=30).eval()(x)
    assert out["multi_hot"].shape == (2, 30)
    assert out["multi_hot"].abs().max() > 0  # logits, not all zero
    with pytest.raises(ConfigError, match="vocab_size"):
        YMapNet(on)


def test_glorot_uniform_weights_and_zero_biases(tiny: StudentConfig) -> None:
    model: Any = _model(tiny)
    for layer in (model.decoder[2].conv1, model.bridge.fc1):
        weight = layer.weight.detach()
        receptive = weight[0, 0].numel() if weight.ndim == 4 else 1
        fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
        limit = math.sqrt(6 / (fan_in + fan_out))
        assert weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.05)
        assert weight.abs().max().item() <= limit
        assert weight.abs().max().item() > 0.95 * limit  # uniform, reaching its bound
        assert layer.bias is not None and not layer.bias.any()


def test_one_adam_step_reduces_the_loss_and_reaches_every_weight(tiny: StudentConfig) -> None:
    small = dataclasses.replace(tiny, input_size=32)
    model = _model(small).eval()  # dropout off: the two losses compare the same function
    x = _images(small)
    gen = torch.Generator().manual_seed(2)
    maps = torch.rand(2, CHANNELS, 32, 32, generator=gen) * 2 - 1
    tokens = torch.rand(2, tiny.num_tokens, tiny.token_dim, generator=gen) * 2 - 1

    def loss() -> torch.Tensor:
        out = model(x)
        return ((out["maps"] - maps) ** 2).mean() + ((out["tokens"] - tokens) ** 2).mean()

    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = loss()
    start.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not silent
    optimiser.step()
    with torch.no_grad():
        assert loss().item() < start.item() - 1e-4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input_size": 100}, "divisible"),  # 100 is not a multiple of 2**3
        ({"levels": 0}, "levels"),
        ({"token_dim": 0}, "token_dim"),
        ({"preset": cast(Any, "huge")}, "paper, tiny"),
    ],
)
def test_impossible_configs_raise_config_error(
        tiny: StudentConfig, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        count_parameters(dataclasses.replace(tiny, **change))


def test_negative_vocab_size_raises_config_error(tiny: StudentConfig) -> None:
    with pytest.raises(ConfigError, match="vocab_size"):
        YMapNet(tiny, vocab_size=-1)
