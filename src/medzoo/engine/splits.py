"""Train/validation splits: a single 80/20 split or k folds, reproducible from a seed and sorted case ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medzoo.errors import ConfigError, DataError
from medzoo.utils import atomic_write_text


def make_splits(
    case_ids: list[str], folds: int = 1, seed: int = 0, val_fraction: float = 0.2
) -> list[dict[str, list[str]]]:
    """Split case ids into train/validation sets.

    The ids are sorted first, then shuffled with ``seed``, so the result does not depend on the order the
    dataset listed them in.

    Args:
        case_ids: unique case names.
        folds: 1 for a single split with ``val_fraction`` held out, or k >= 2 for k disjoint validation folds.
        seed: shuffling seed.
        val_fraction: held-out fraction when ``folds == 1``.

    Returns:
        One ``{"train": [...], "val": [...]}`` dict per fold (ids sorted inside each list).
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise DataError("case ids are not unique; cannot split")
    if folds < 1:
        raise ConfigError(f"folds must be >= 1, got {folds}")
    if len(ids) < 2:
        raise DataError(f"need at least 2 cases to split into train and validation, found {len(ids)}")
    if folds > len(ids):
        raise ConfigError(f"cannot make {folds} folds from {len(ids)} cases")
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    if folds == 1:
        n_val = min(max(1, int(round(len(ids) * val_fraction))), len(ids) - 1)
        chunks = [shuffled[:n_val]]
    else:
        chunks = [list(c) for c in np.array_split(np.array(shuffled, dtype=object), folds)]
    splits = []
    for val in chunks:
        val_set = set(val)
        splits.append({"train": sorted(i for i in ids if i not in val_set), "val": sorted(val_set)})
    return splits


def save_splits(splits: list[dict[str, list[str]]], path: str | Path, **meta: Any) -> Path:
    """Write ``splits.json`` (``{"folds": [...], **meta}``) atomically."""
    return atomic_write_text(path, json.dumps({"folds": splits, **meta}, indent=2))


def load_splits(path: str | Path) -> list[dict[str, list[str]]]:
    """Read the folds of a ``splits.json``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: splits file not found")
    return json.loads(path.read_text())["folds"]
