"""Staggered-alignment self-distillation (`train.self_distill`, distill.student.self_distill): the
2× pass's levels line up with the base pass's, the warm-up is a plain run, nothing reaches the
student's weights, and the step works under DistributedDataParallel."""

from __future__ import annotations

import socket

import pytest
import torch

from distill.config import load_config
from distill.errors import ConfigError
from distill.student import layout
from distill.student.checkpoint import checkpoint_bytes
from distill.student.model import build_student
from distill.student.self_distill import SelfDistill, high_res_pass
from distill.student.targets import present_keys
from distill.student.train import _run_epoch


def _config(*overrides: str):
    return load_config("demo", overrides=["student.input_size=32", *overrides])


def _batches(cfg, n: int = 2, batch: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(7)
    s, t = cfg.student.input_size, cfg.student.num_tokens
    return [{"errors": [], "skipped": [],
             "image": torch.randint(0, 256, (batch, 3, s, s), generator=g, dtype=torch.uint8),
             "target": torch.randint(0, 256, (batch, layout.channels(), s, s), generator=g,
                                     dtype=torch.uint8),
             "tokens": torch.rand((batch, t, cfg.student.token_dim), generator=g) * 2 - 1,
             "present": torch.ones((batch, len(present_keys())), dtype=torch.bool)}
            for _ in range(n)]


def _train(cfg, epochs: int, wrap=lambda m: m):
    torch.manual_seed(cfg.train.seed)
    model = wrap(build_student(cfg.student))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sasd = SelfDistill(cfg.train.self_distill, model, torch.device("cpu"), cfg.train.seed) \
        if cfg.train.self_distill.enabled else None
    metrics: dict[str, float] = {}
    for epoch in range(epochs):
        if sasd is not None:
            sasd.begin_epoch(epoch, 1e-3)
        metrics, _ = _run_epoch(model, _batches(cfg), 2, cfg.train, torch.device("cpu"),
                                optimizer, sasd=sasd)
    return model, sasd, metrics


def test_the_2x_pass_level_above_has_the_base_levels_size():
    cfg = _config("train.self_distill.enabled=true")
    net = build_student(cfg.student)
    sasd = SelfDistill(cfg.train.self_distill, net, torch.device("cpu"), 0)
    x = torch.zeros(1, 3, 32, 32)
    out2, features = high_res_pass(net, sasd.aux, torch.zeros(1, 3, 64, 64))
    assert out2["maps"].shape[-2:] == (64, 64)
    assert len(features) == cfg.student.levels + 1  # the auxiliary level under the bottom
    base = net.encode(x)  # the decoder's level l has the encoder's size and width
    for level in sasd.levels:
        assert features[level + 1].shape[-2:] == base[level].shape[-2:]
        assert sasd.aux.adapt(level, torch.zeros_like(base[level])).shape == \
            features[level + 1].shape


def test_levels_outside_the_decoder_are_one_line():
    cfg = _config("train.self_distill.enabled=true", "train.self_distill.levels=[0, 9]")
    with pytest.raises(ConfigError, match=r"train.self_distill.levels .* allowed: 0\.\.3"):
        SelfDistill(cfg.train.self_distill, build_student(cfg.student), torch.device("cpu"), 0)


def test_the_warm_up_is_a_plain_run_then_the_2x_pass_trains_only_aux_and_student():
    plain, _, _ = _train(_config(), 2)
    warm, sasd, metrics = _train(_config("train.self_distill.enabled=true",
                                         "train.self_distill.warmup_epochs=2"), 2)
    assert "loss/sasd_align" not in metrics
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                 warm.state_dict().values(), strict=True))
    # after the warm-up: the alignment is in the loss, and the checkpoint's weights are the
    # student's alone (the auxiliary level and adapters are training state)
    on, sasd, metrics = _train(_config("train.self_distill.enabled=true"), 1)
    assert metrics["loss/sasd_align"] > 0 and metrics["loss/sasd_2x"] > 0
    assert not any(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                     on.state_dict().values(), strict=True))
    from safetensors.torch import load
    with_sasd = load(checkpoint_bytes(on, {"self_distill": sasd.state_dict()})[0])
    without = load(checkpoint_bytes(plain, {})[0])
    assert {k: v.shape for k, v in with_sasd.items()} == {k: v.shape for k, v in without.items()}


def test_a_step_through_distributed_data_parallel_matches_one_without():
    """The 2× pass reuses the wrapped student's blocks outside DDP's forward: each weight still
    gets one summed gradient (a rank of one, gloo, so that it runs here)."""
    cfg = _config("train.self_distill.enabled=true")
    ref, _, _ = _train(cfg, 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=0, world_size=1)
    try:
        wrapped, _, metrics = _train(cfg, 1, wrap=torch.nn.parallel.DistributedDataParallel)
    finally:
        torch.distributed.destroy_process_group()
    assert metrics["loss/sasd_align"] > 0
    for a, b in zip(ref.state_dict().values(), wrapped.module.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_an_export_of_a_self_distilled_student_is_a_plain_students(labelled_coco7, tmp_path):
    """Pruned inference: the same weights (names and shapes) in the checkpoint and the same
    ONNX graph (operators, inputs and outputs) as a student trained without it."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from safetensors.torch import load_file

    from distill.student.export import export_student
    from distill.student.train import TrainOptions, train_student

    graphs = {}
    weights = {}
    for name, extra in (("plain", ()), ("sasd", ("train.self_distill.enabled=true",))):
        out = tmp_path / name
        train_student(_config("train.epochs=1", "train.num_workers=0", "train.batch_size=4",
                              *extra),
                      TrainOptions(shards=labelled_coco7[1] / "shards", out=out, progress=False))
        metrics = (out / "metrics.jsonl").read_text()
        assert ("loss/sasd_align" in metrics) == bool(extra)
        last = out / "checkpoints" / "last"
        weights[name] = {k: v.shape for k, v in load_file(last / "model.safetensors").items()}
        export_student(last, "onnx", tmp_path / f"{name}.onnx")
        model = onnx.load(tmp_path / f"{name}.onnx")
        # (initialisers are not compared: the exporter's optimiser merges equal-valued ones,
        # such as a LayerNorm weight still all ones, so their set depends on the values)
        graphs[name] = (sorted(n.op_type for n in model.graph.node),
                        [str(v.type) for v in (*model.graph.input, *model.graph.output)])
    assert weights["sasd"] == weights["plain"]
    assert graphs["sasd"] == graphs["plain"]
