"""Intensity normalisation schemes and clipping (numpy, one channel at a time).

Schemes (names used in ``Plan.normalization``, one per channel):

- ``zscore``: ``(x - mean) / std`` over the whole image.
- ``zscore_nonzero`` (alias ``zscore_foreground``): mean/std over non-zero voxels only, voxels outside the
  non-zero mask set to 0 (nnU-Net's ``use_mask_for_norm``; the mask is the image's non-zero region since
  the label is unknown at prediction time).
- ``ct``: clip to the dataset's foreground 0.5/99.5 percentiles, then z-score with the dataset's
  foreground mean/std (global statistics from the fingerprint, passed as ``Plan.norm_stats``).
- MedicalZoo's five, with the image's own statistics (mean, std, max, min over the whole volume):
  ``max_min`` ``(x - min) / (max - min)``; ``full_volume_mean`` ``(x - mean) / std``; ``brats`` non-zero voxels
  z-scored then rescaled to [10, 110], zeros kept; ``max`` ``(x - min) / (max - min)`` computed on the current
  tensor (identical to ``max_min`` when applied to the raw volume); ``mean`` ``(x - mean) / std`` with
  mean/std over the non-zero voxels, applied to every voxel.
- ``none``: unchanged.

``norm_stats`` keys (per channel): ``mean``, ``std``, ``percentile_00_5``, ``percentile_99_5`` (the
fingerprint's names), and optionally ``clip_lower`` / ``clip_upper`` applied before any scheme.
"""

from __future__ import annotations

import numpy as np

from medzoo.errors import ConfigError

_EPS = 1e-8


def _zs(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return (x - mean) / max(std, _EPS)


def _zscore(x, stats):
    return _zs(x, float(x.mean()), float(x.std()))


def _zscore_nonzero(x, stats):
    mask = x != 0
    if not mask.any():
        return np.zeros_like(x)
    vals = x[mask]
    out = _zs(x, float(vals.mean()), float(vals.std()))
    out[~mask] = 0
    return out


def _stat(stats: dict | None, *names: str) -> float:
    if not stats:
        raise ConfigError(f"normalisation needs dataset statistics {names[0]} (Plan.norm_stats is empty)")
    for n in names:
        if n in stats:
            return float(stats[n])
    raise ConfigError(f"Plan.norm_stats lacks '{names[0]}' (has {sorted(stats)})")


def _ct(x, stats):
    lo = _stat(stats, "percentile_00_5", "lower", "p00_5")
    hi = _stat(stats, "percentile_99_5", "upper", "p99_5")
    return _zs(np.clip(x, lo, hi), _stat(stats, "mean"), _stat(stats, "std"))


def _max_min(x, stats):
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / max(hi - lo, _EPS)


def _full_volume_mean(x, stats):
    return _zs(x, float(x.mean()), float(x.std()))


def _brats(x, stats):
    mask = x != 0
    out = np.zeros_like(x)
    if not mask.any():
        return out
    z = _zs(x[mask], float(x[mask].mean()), float(x[mask].std()))
    out[mask] = 100.0 * (z - z.min()) / max(float(z.max() - z.min()), _EPS) + 10.0
    return out


def _mean_nonzero(x, stats):
    mask = x != 0
    if not mask.any():
        return x.copy()
    return _zs(x, float(x[mask].mean()), float(x[mask].std()))


def _none(x, stats):
    return x.copy()


SCHEMES = {
    "zscore": _zscore,
    "zscore_nonzero": _zscore_nonzero,
    "zscore_foreground": _zscore_nonzero,
    "ct": _ct,
    "max_min": _max_min,
    "full_volume_mean": _full_volume_mean,
    "brats": _brats,
    "max": _max_min,
    "mean": _mean_nonzero,
    "none": _none,
}


def normalize(x: np.ndarray, scheme: str = "zscore", stats: dict | None = None) -> np.ndarray:
    """Normalise one channel ``x (*S)`` with ``scheme`` (see module doc); returns float32.

    Raises:
        ConfigError: unknown scheme or missing statistics.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown normalisation '{scheme}' (known: {', '.join(sorted(SCHEMES))})")
    x = np.asarray(x, dtype=np.float32)
    if stats and ("clip_lower" in stats or "clip_upper" in stats):
        x = clip_intensity(x, stats.get("clip_lower"), stats.get("clip_upper"))
    return SCHEMES[scheme](x, stats).astype(np.float32, copy=False)


def clip_intensity(x: np.ndarray, lower: float | None = None, upper: float | None = None) -> np.ndarray:
    """Clip intensities to ``[lower, upper]`` (either may be None)."""
    return np.clip(x, -np.inf if lower is None else lower, np.inf if upper is None else upper).astype(x.dtype)


def clip_percentiles(x: np.ndarray, lower: float = 0.5, upper: float = 99.5, mask: np.ndarray | None = None) -> np.ndarray:
    """Clip to the image's own ``lower``/``upper`` percentiles (over ``mask`` when given)."""
    vals = x[mask] if mask is not None and mask.any() else x
    lo, hi = np.percentile(vals, [lower, upper])
    return clip_intensity(x, float(lo), float(hi))


class Normalize:
    """Per-channel normalisation step: ``schemes[c]`` with ``stats[c]`` (the last scheme repeats)."""

    def __init__(self, schemes: list[str], stats: list[dict] | None = None) -> None:
        for s in schemes:
            if s not in SCHEMES:
                raise ConfigError(f"unknown normalisation '{s}' (known: {', '.join(sorted(SCHEMES))})")
        self.schemes = list(schemes) or ["zscore"]
        self.stats = list(stats or [])

    def __call__(self, image: np.ndarray, label: np.ndarray | None, meta: dict):
        out = np.empty(image.shape, dtype=np.float32)
        for c in range(image.shape[0]):
            scheme = self.schemes[min(c, len(self.schemes) - 1)]
            stats = self.stats[c] if c < len(self.stats) else None
            out[c] = normalize(image[c], scheme, stats)
        meta["normalization"] = [self.schemes[min(c, len(self.schemes) - 1)] for c in range(image.shape[0])]
        return out, label


class ClipIntensity:
    """Clip every channel to fixed ``[lower, upper]`` bounds."""

    def __init__(self, lower: float | None = None, upper: float | None = None) -> None:
        self.lower, self.upper = lower, upper

    def __call__(self, image: np.ndarray, label: np.ndarray | None, meta: dict):
        return clip_intensity(image, self.lower, self.upper), label
