"""Checkpoints: atomic save, weights-only load, malicious pickles refused, model rebuilt from a run."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from medzoo.engine.checkpoint import load_checkpoint, load_model_from_run, save_checkpoint
from medzoo.errors import CheckpointError
from medzoo.models.registry import _REGISTRY, ModelCard, register_model
from medzoo.planning.plan import Plan

_TINY = "_engine_test_tiny_conv"


class _TinyConv(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int, width: int = 3) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.body = conv(in_channels, width, 3, padding=1)
        self.head = conv(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


@pytest.fixture(autouse=True)
def _tiny_model_registered():
    """Register the tiny test model for this module only, so the zoo-wide tests never see it."""
    if _TINY not in _REGISTRY:
        register_model(ModelCard(name=_TINY, spatial_dims=(2, 3), paper="test model"))(_TinyConv)
    yield
    _REGISTRY.pop(_TINY, None)


class _Evil:
    """Pickles to a call of os.system that would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_save_load_roundtrip(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "best_metric": 0.5,
             "rng": {"numpy": [1, 2, 3]}, "plan": {"model": "x"}}
    path = save_checkpoint(tmp_path / "c.pt", state)
    assert path.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind
    back = load_checkpoint(path)
    assert back["format_version"] == 1
    assert back["epoch"] == 3
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    # and it loads with plain weights_only torch.load too
    assert torch.load(path, weights_only=True)["best_metric"] == 0.5


def test_malicious_pickle_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil_path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil(str(marker))}, evil_path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil_path)
    assert not marker.exists()


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)


def test_load_model_from_run(tmp_path):
    plan = Plan(model=_TINY, in_channels=2, num_classes=3, spatial_dims=3, model_kwargs={"width": 5},
                patch_size=(8, 8, 8))
    plan.save(tmp_path / "plan.json")
    torch.manual_seed(0)
    net = _TinyConv(2, 3, 3, width=5)
    # saved as a DDP-wrapped state dict: the prefix must be stripped on load
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}
    save_checkpoint(tmp_path / "checkpoint_last.pt", {"model": sd, "plan": plan.to_dict(), "epoch": 1})
    model, plan2 = load_model_from_run(tmp_path, which="best")  # falls back to last
    assert plan2 == plan
    assert not model.training
    for k, v in net.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    x = torch.randn(1, 2, 6, 7, 5)
    assert torch.allclose(model(x), net(x))


def test_load_model_from_run_mismatch(tmp_path):
    plan = Plan(model=_TINY, in_channels=2, num_classes=3, model_kwargs={"width": 5})
    plan.save(tmp_path / "plan.json")
    save_checkpoint(tmp_path / "checkpoint_best.pt", {"model": _TinyConv(1, 3, 3).state_dict()})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model_from_run(tmp_path)
    with pytest.raises(CheckpointError, match="run folder not found"):
        load_model_from_run(tmp_path / "missing")
