"""A plan at a coarser spacing predicts there and maps probabilities, not labels, back to each input's grid."""

from __future__ import annotations

import numpy as np
import pytest

from medzoo.inference.predictor import Predictor
from medzoo.io.volume import Volume
from medzoo.transforms.preprocess import Preprocessor
from support.inference import THRESHOLD, make_run, oblique_affine, register_threshold

pytestmark = pytest.mark.usefixtures("fp32_on_cpu")


def _sphere_scan(shape, spacing, seed) -> tuple[Volume, np.ndarray]:
    """A scan whose value is (radius - distance to the centre) in mm: positive inside a sphere; the truth."""
    affine = oblique_affine(spacing, seed)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = (np.array(shape) - 1) / 2 @ affine[:3, :3].T + affine[:3, 3]
    value = 11.0 - np.linalg.norm(xyz - centre, axis=-1)
    return Volume(value[None].astype(np.float32), affine), value > 0


@pytest.mark.parametrize("shape, spacing, seed", [((40, 36, 14), (0.9, 0.8, 3.1), 0), ((23, 41, 30), (1.7, 0.6, 1.1), 3)])
def test_coarse_plan_predicts_on_the_inputs_grid_from_probabilities(tmp_path, monkeypatch, shape, spacing, seed):
    register_threshold(monkeypatch)
    run, plan = make_run(tmp_path / "run", THRESHOLD, 1, 2, patch_size=(8, 8, 8), normalization=["none"],
                         target_spacing=(2.5, 2.5, 4.0))
    image, truth = _sphere_scan(shape, spacing, seed)
    predictor = Predictor.from_run(run, device="cpu")
    labels, probs = predictor.predict_case(image, probabilities=True)
    assert labels.spatial_shape == image.spatial_shape and probs.spatial_shape == image.spatial_shape
    np.testing.assert_array_equal(labels.affine, image.affine)
    np.testing.assert_array_equal(probs.affine, image.affine)
    # the labels are the argmax of the probabilities on the input's grid (float16 rounding aside)
    assert (probs.array.astype(np.float32).argmax(0) == labels.array[0]).mean() > 0.999
    # and closer to the truth than the coarse argmax mapped back with nearest neighbour
    pre = Preprocessor(plan).apply(image)
    coarse = (pre.image[0] > 0).astype(np.uint8)
    nearest = Preprocessor(plan).restore(coarse, pre.meta, is_label=True)
    assert (labels.array[0] == truth).mean() >= (nearest == truth).mean()
    assert (labels.array[0] == truth).mean() > 0.97
