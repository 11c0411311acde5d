"""Inference: sliding-window prediction, the run-folder predictor, post-processing and export backends.

``sliding_window`` (and its memory-bounded sibling ``sliding_window_argmax``) are imported eagerly; the
predictor (which pulls in I/O and preprocessing) is loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from medzoo.inference.sliding_window import (
    importance_map,
    sliding_window,
    sliding_window_argmax,
    window_starts,
)

_LAZY = {
    "Predictor": "medzoo.inference.predictor",
    "predict": "medzoo.inference.predictor",
    "PredictionReport": "medzoo.inference.predictor",
}

__all__ = ["importance_map", "sliding_window", "sliding_window_argmax", "window_starts", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medzoo.inference' has no attribute {name!r}")
