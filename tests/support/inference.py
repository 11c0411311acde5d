"""Shared helpers for the inference/export tests: a threshold stand-in network and tiny run folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from medzoo.engine.checkpoint import save_checkpoint
from medzoo.io.volume import Volume, make_affine
from medzoo.models import registry
from medzoo.planning.plan import Plan

THRESHOLD = "_infer_test_threshold"


class ThresholdNet(nn.Module):
    """1x1 conv: class 1 logit = first channel, class 0 logit = 0 (so labels = image > 0)."""

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.conv = conv(in_channels, num_classes, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[1, 0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def register_threshold(monkeypatch) -> None:
    """Register :class:`ThresholdNet` for the duration of one test (the registry is restored after)."""
    card = registry.ModelCard(name=THRESHOLD, spatial_dims=(2, 3), typical_patch=(8, 8, 8))
    monkeypatch.setitem(registry._REGISTRY, THRESHOLD, registry._Entry(ThresholdNet, card))


def oblique_affine(spacing=(1.3, 0.8, 2.6), seed: int = 0) -> np.ndarray:
    """An oblique, anisotropic voxel-to-world affine."""
    rot, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return make_affine(spacing, (12.5, -30.0, 7.25), rotation=rot)


def blob_image(shape=(23, 19, 11), channels: int = 1, seed: int = 0, spacing=(1.3, 0.8, 2.6)) -> Volume:
    """A scan with a zero background frame and signed noise inside (so ``image > 0`` is a speckled map)."""
    rng = np.random.default_rng(seed)
    array = np.zeros((channels, *shape), dtype=np.float32)
    inner = tuple(slice(2, s - 2) for s in shape)
    array[(slice(None), *inner)] = rng.normal(size=(channels, *[s - 4 for s in shape])).astype(np.float32)
    return Volume(array, oblique_affine(spacing, seed))


def make_run(
    run_dir: Path, model: str, in_channels: int, num_classes: int, *, seed: int = 0, **plan_kwargs
) -> tuple[Path, Plan]:
    """A run folder: plan.json + checkpoint_best.pt / checkpoint_last.pt of a freshly built network."""
    import medzoo

    run_dir.mkdir(parents=True, exist_ok=True)
    plan = Plan(model=model, in_channels=in_channels, num_classes=num_classes, **plan_kwargs)
    torch.manual_seed(seed)
    net = medzoo.create_model(
        model, in_channels=in_channels, num_classes=num_classes, spatial_dims=plan.spatial_dims,
        **plan.model_kwargs,
    )  # fmt: skip
    plan.save(run_dir / "plan.json")
    state = {"model": net.state_dict(), "epoch": 1, "step": 1, "best_metric": 0.0, "plan": plan.to_dict()}
    save_checkpoint(run_dir / "checkpoint_best.pt", state)
    save_checkpoint(run_dir / "checkpoint_last.pt", state)
    return run_dir, plan


def pretend_native_bf16(monkeypatch, native: bool) -> None:
    """Make :func:`medzoo.runtime.cpu_has_native_bf16` answer ``native`` (what ``amp="auto"`` reads)."""
    from medzoo import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
