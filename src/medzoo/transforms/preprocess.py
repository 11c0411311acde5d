"""The :class:`Preprocessor`: crop to non-zero, normalise, resample — and the exact way back.

It composes the steps a :class:`~medzoo.planning.plan.Plan` asks for (``crop_to_nonzero``,
``normalization`` + ``norm_stats``, ``target_spacing``) in nnU-Net's order (crop, normalise, resample), and
records in ``meta`` everything :meth:`Preprocessor.restore` needs to map a prediction back onto the original
grid (shape and affine always identical to the input's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medzoo.io.volume import Volume
from medzoo.planning.plan import Plan
from medzoo.transforms.intensity import Normalize
from medzoo.transforms.spatial import CropToNonzero, Resample


@dataclass
class PreprocessedCase:
    """A case after preprocessing.

    Attributes:
        image: float32 (C, *S').
        label: uint8 (*S') or None.
        meta: JSON-able dict: ``original_shape``, ``original_affine``, ``original_spacing``, ``crop_box``,
            ``cropped_shape``, ``resampled_shape``, ``shape``, ``spacing`` and ``affine`` of the
            preprocessed grid, ``normalization``.
    """

    image: np.ndarray
    label: np.ndarray | None
    meta: dict


class Preprocessor:
    """Preprocessing of a plan: crop to non-zero (optional), normalise per channel, resample (optional).

    Args:
        plan: uses ``crop_to_nonzero``, ``normalization``, ``norm_stats``, ``target_spacing``.
        order: spline order for images when resampling (1 linear, 3 cubic).
        order_separate: order along the low-resolution axis of anisotropic images (0 nearest, 1 linear).
    """

    def __init__(self, plan: Plan, order: int = 3, order_separate: int = 0) -> None:
        self.plan = plan
        self.crop = CropToNonzero() if plan.crop_to_nonzero else None
        self.normalize = Normalize(list(plan.normalization or ["zscore"]), list(plan.norm_stats or []))
        self.resample = (
            Resample(plan.target_spacing, order=order, order_separate=order_separate)
            if plan.target_spacing is not None
            else None
        )

    def apply(self, image: Volume, label: Volume | None = None) -> PreprocessedCase:
        """Preprocess one case.

        Args:
            image: (C, *S) any dtype.
            label: (1, *S) integer class map on the same grid, or None.

        Returns:
            The :class:`PreprocessedCase` (image float32 (C, *S'), label uint8 (*S') or None).
        """
        shape = image.spatial_shape
        meta: dict = {
            "original_shape": list(shape),
            "original_affine": image.affine.tolist(),
            "original_spacing": list(image.spacing),
            "affine": image.affine.tolist(),
            "spacing": list(image.spacing),
            "crop_box": [[0, n] for n in shape],
            "cropped_shape": list(shape),
            "resampled_shape": list(shape),
            "target_spacing": None if self.plan.target_spacing is None else list(self.plan.target_spacing),
        }
        img = np.asarray(image.array)
        lab = None
        if label is not None:
            if label.spatial_shape != shape:
                from medzoo.errors import DataError

                raise DataError(f"label shape {label.spatial_shape} differs from image shape {shape}")
            lab = np.asarray(label.array[0]).astype(np.uint8, copy=False)
        if self.crop is not None:
            img, lab = self.crop(img, lab, meta)
        img, lab = self.normalize(img, lab, meta)
        if self.resample is not None:
            if len(self.resample.target_spacing) != len(shape):
                from medzoo.errors import ConfigError

                raise ConfigError(
                    f"target_spacing {self.resample.target_spacing} has {len(self.resample.target_spacing)} "
                    f"entries but the image is {len(shape)}D"
                )
            img, lab = self.resample(img, lab, meta)
        else:
            meta["resampled_shape"] = list(img.shape[1:])
        from medzoo.io.volume import spacing_from_affine

        meta["spacing"] = list(spacing_from_affine(np.asarray(meta["affine"]))[: len(shape)])
        meta["shape"] = list(img.shape[1:])
        img = np.ascontiguousarray(img, dtype=np.float32)
        if lab is not None:
            lab = np.ascontiguousarray(lab, dtype=np.uint8)
        return PreprocessedCase(img, lab, meta)

    def restore(self, array: np.ndarray, meta: dict, is_label: bool = True) -> np.ndarray:
        """Map an array on the preprocessed grid back onto the original grid.

        Args:
            array: (*S') label map (nearest) or (K, *S') probabilities (linear) on the preprocessed grid.
            meta: the ``meta`` of :meth:`apply`.
            is_label: whether ``array`` is a label map.

        Returns:
            (*S) labels (same dtype) or (K, *S) probabilities on the original grid; outside the crop box
            labels are 0 and probabilities are background (1 for class 0, 0 otherwise).
        """
        array = np.asarray(array)
        expected = tuple(meta["shape"])
        got = array.shape if is_label else array.shape[1:]
        if tuple(got) != expected:
            from medzoo.errors import DataError

            raise DataError(f"restore: array spatial shape {tuple(got)} != preprocessed shape {expected}")
        if "resample_from_shape" in meta:
            array = Resample.invert(array, meta, is_label)
        return CropToNonzero.invert(array, meta, is_label, tuple(meta["original_shape"]))

    def restore_labels(self, probabilities: np.ndarray, meta: dict) -> np.ndarray:
        """Labels on the original grid from (K, *S') class probabilities on the preprocessed grid.

        Each class's probability is resampled back linearly, one class at a time (so the memory is a few
        original-grid arrays, not K of them), and the label is the class of the highest one; outside the crop
        box the label is 0. This is what a plan at a coarser spacing predicts with: the labels follow the
        interpolated probabilities on the input's own grid instead of blocks of nearest-neighbour voxels.
        """
        probabilities = np.asarray(probabilities)
        if tuple(probabilities.shape[1:]) != tuple(meta["shape"]):
            from medzoo.errors import DataError

            raise DataError(f"restore: array spatial shape {probabilities.shape[1:]} != preprocessed shape "
                            f"{tuple(meta['shape'])}")
        back = "resample_from_shape" in meta and tuple(meta["resample_from_shape"]) != tuple(meta["shape"])
        shape = tuple(meta["resample_from_shape"]) if back else tuple(probabilities.shape[1:])
        dtype = np.uint8 if probabilities.shape[0] <= 256 else np.int16
        labels = np.zeros(shape, dtype=dtype)
        best = np.full(shape, -np.inf, dtype=np.float32)
        for k in range(probabilities.shape[0]):
            p = probabilities[k : k + 1].astype(np.float32)
            p = Resample.invert(p, meta, is_label=False)[0] if back else p[0]
            better = p > best
            labels[better] = k
            np.maximum(best, p, out=best)
        return CropToNonzero.invert(labels, meta, True, tuple(meta["original_shape"]))
