"""The model zoo. Importing this package registers every network family.

Each family lives in its own module and registers its builders with
:func:`medzoo.models.registry.register_model`. Add a new module to ``_FAMILIES`` to register it.
"""

from __future__ import annotations

import importlib

from medzoo.models.registry import (
    ModelCard,
    count_parameters,
    create_model,
    get_card,
    list_models,
    register_model,
)

# One module per family. Add yours here (alphabetical); every listed module must import cleanly.
_FAMILIES = [
    "classifier",
    "deeplab",
    "densenet3d",
    "densevoxelnet",
    "dynunet",
    "highresnet",
    "hyperdensenet",
    "resnet_seg",
    "resnet_vae",
    "segresnet",
    "skipdensenet",
    "unet",
    "vnet",
]

for _module in _FAMILIES:
    importlib.import_module(f"medzoo.models.{_module}")

__all__ = ["ModelCard", "count_parameters", "create_model", "get_card", "list_models", "register_model"]
