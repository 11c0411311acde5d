"""A text table of the registered networks (used by ``medzoo models``)."""

from __future__ import annotations

import torch

from medzoo.models.registry import count_parameters, create_model, get_card, list_models


def _count(name: str, in_channels: int, num_classes: int, dims: int) -> int:
    """Parameters of the default network, built on the meta device (no memory, no initialisation cost)."""
    try:
        with torch.device("meta"):
            model = create_model(name, in_channels=in_channels, num_classes=num_classes, spatial_dims=dims)
    except (NotImplementedError, RuntimeError):  # a builder that computes with tensors at build time
        model = create_model(name, in_channels=in_channels, num_classes=num_classes, spatial_dims=dims)
    return count_parameters(model)


def models_table(pattern: str | None = None, in_channels: int = 1, num_classes: int = 3) -> str:
    """Name, spatial dims, parameters (for the given channels/classes), input-size rule, ONNX, paper."""
    rows = [("name", "dims", "params", "input size", "typical patch", "onnx", "paper")]
    for name in list_models(pattern):
        card = get_card(name)
        dims = card.spatial_dims[-1]
        params = _count(name, in_channels, num_classes, dims)
        rows.append((
            name,
            "/".join(f"{d}D" for d in card.spatial_dims),
            f"{params / 1e6:.2f}M",
            card.size_rule,
            "x".join(str(s) for s in card.typical_patch),
            "yes" if card.exportable else "no",
            card.paper,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
