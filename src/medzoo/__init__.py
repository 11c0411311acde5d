"""medzoo: 3D (and 2D) medical image segmentation with PyTorch.

The public API, importable from the top level (loaded lazily so ``import medzoo`` stays fast):

- I/O: :func:`read_volume`, :func:`write_volume`, :class:`Volume`
- models: :func:`create_model`, :func:`list_models`, :func:`get_card`
- data: :func:`make_phantom_dataset`, :func:`load_dataset`
- training: :func:`train`, :class:`TrainConfig`
- prediction: :class:`Predictor`, :func:`predict`
- evaluation: :func:`evaluate`
- sharing: :func:`pack_model`, :func:`unpack_model`, :func:`open_model` (``.medzoo`` files), :func:`run_info`
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Volume": "medzoo.io.volume",
    "read_volume": "medzoo.io.readers",
    "write_volume": "medzoo.io.readers",
    "create_model": "medzoo.models.registry",
    "list_models": "medzoo.models.registry",
    "get_card": "medzoo.models.registry",
    "make_phantom_dataset": "medzoo.data.phantom",
    "load_dataset": "medzoo.data.layouts",
    "Plan": "medzoo.planning.plan",
    "train": "medzoo.engine.trainer",
    "TrainConfig": "medzoo.engine.config",
    "Predictor": "medzoo.inference.predictor",
    "predict": "medzoo.inference.predictor",
    "evaluate": "medzoo.evaluation",
    "pack_model": "medzoo.packaging",
    "unpack_model": "medzoo.packaging",
    "open_model": "medzoo.packaging",
    "run_info": "medzoo.info",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medzoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
