"""One registry for every network: build by name, list, and describe with a card.

Register a builder with :func:`register_model`. A builder takes ``in_channels``, ``num_classes``,
``spatial_dims`` and keyword arguments and returns an ``nn.Module``. Each entry carries a
:class:`ModelCard` with the input-size rule, a typical patch size and the paper.

Example:
    >>> import medzoo
    >>> net = medzoo.create_model("unet3d", in_channels=2, num_classes=4, spatial_dims=3)
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from medzoo.errors import InputSizeError, ModelError


@dataclass(frozen=True)
class ModelCard:
    """What a user needs to know to use a network.

    Attributes:
        name: registry name (snake_case).
        spatial_dims: the dims the network supports, e.g. (3,) or (2, 3).
        paper: short reference, e.g. "Çiçek et al., MICCAI 2016".
        size_divisor: every spatial input size must be a multiple of this (1 = any size).
        min_size: smallest spatial size per axis the network accepts.
        typical_patch: a sensible training patch (per axis).
        task: "segmentation" or "classification".
        tiny_kwargs: keyword arguments that make a small, fast variant (used by the zoo-wide tests).
        exportable: whether ONNX export is expected to work; ``export_note`` says why not.
        channels_last: the network trains faster on the CPU with weights and inputs in the channels-last
            memory layout (measured; ``medzoo train --memory-format auto`` then uses it).
    """

    name: str
    spatial_dims: tuple[int, ...] = (3,)
    paper: str = ""
    size_divisor: int = 1
    min_size: int = 1
    typical_patch: tuple[int, ...] = (64, 64, 64)
    task: str = "segmentation"
    tiny_kwargs: dict[str, Any] = field(default_factory=dict)
    exportable: bool = True
    export_note: str = ""
    channels_last: bool = False

    @property
    def size_rule(self) -> str:
        """Human-readable input-size rule."""
        if self.size_divisor <= 1 and self.min_size <= 1:
            return "any size"
        parts = []
        if self.size_divisor > 1:
            parts.append(f"multiple of {self.size_divisor}")
        if self.min_size > 1:
            parts.append(f">= {self.min_size}")
        return ", ".join(parts)

    def valid_size(self, size: int) -> int:
        """The smallest valid size >= ``size`` along one axis."""
        size = max(size, self.min_size)
        return int(math.ceil(size / self.size_divisor) * self.size_divisor)

    def check_input(self, spatial_shape: tuple[int, ...]) -> None:
        """Raise :class:`InputSizeError` naming the nearest valid size if ``spatial_shape`` is not valid."""
        valid = tuple(self.valid_size(s) for s in spatial_shape)
        if valid != tuple(spatial_shape):
            raise InputSizeError(
                f"model '{self.name}' cannot take spatial size {tuple(spatial_shape)} "
                f"(rule: {self.size_rule}); nearest valid size is {valid}"
            )


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    card: ModelCard


_REGISTRY: dict[str, _Entry] = {}


def register_model(card: ModelCard) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder`` under ``card.name``.

    The builder must accept ``in_channels``, ``num_classes`` and ``spatial_dims`` as keyword arguments.
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if card.name in _REGISTRY:
            raise ModelError(f"model name '{card.name}' is registered twice")
        _REGISTRY[card.name] = _Entry(builder, card)
        return builder

    return decorate


def _ensure_loaded() -> None:
    # Importing the package registers every family (each module decorates its builders).
    import medzoo.models  # noqa: F401


def create_model(
    name: str, *, in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs: Any
) -> nn.Module:
    """Build a registered network.

    Args:
        name: registry name, see :func:`list_models`.
        in_channels: number of input channels (modalities), >= 1.
        num_classes: number of output classes including background (>= 2 for segmentation).
        spatial_dims: 2 or 3; must be one the model supports.
        **kwargs: model-specific arguments (see the model's docstring).

    Returns:
        The network. A segmentation network maps (B, in_channels, *S) to (B, num_classes, *S) in eval mode.
    """
    _ensure_loaded()
    if name not in _REGISTRY:
        close = [n for n in _REGISTRY if name.lower().replace("-", "_") in n]
        hint = f"; did you mean {', '.join(close[:5])}?" if close else "; see `medzoo models`"
        raise ModelError(f"unknown model '{name}'{hint}")
    entry = _REGISTRY[name]
    if spatial_dims not in entry.card.spatial_dims:
        raise ModelError(
            f"model '{name}' supports spatial_dims {entry.card.spatial_dims}, not {spatial_dims}"
        )
    if in_channels < 1:
        raise ModelError(f"in_channels must be >= 1, got {in_channels}")
    if num_classes < 2 and entry.card.task == "segmentation":
        raise ModelError(f"num_classes must be >= 2 (background included), got {num_classes}")
    model = entry.builder(in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims, **kwargs)
    model.card = entry.card  # type: ignore[assignment]
    return model


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted, optionally filtered by a glob ``pattern`` (e.g. ``"*unet*"``)."""
    _ensure_loaded()
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def get_card(name: str) -> ModelCard:
    """The :class:`ModelCard` of a registered model."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ModelError(f"unknown model '{name}'; see `medzoo models`")
    return _REGISTRY[name].card


def prefers_channels_last(name: str) -> bool:
    """Whether model ``name``'s card says it runs faster in the channels-last layout on the CPU (False for a
    name outside the registry: no card, no claim); what :func:`medzoo.runtime.preferred_memory_format` asks."""
    try:
        return get_card(name).channels_last
    except ModelError:
        return False


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
