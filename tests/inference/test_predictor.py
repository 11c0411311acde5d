"""Predictor: run folder in, label map on the scan's own grid out (resampling, cropping, padding, 2D)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medzoo.errors import DataError, VolumeError
from medzoo.inference import sliding_window
from medzoo.inference.postprocess import PostProcess
from medzoo.inference.predictor import Predictor
from medzoo.io.volume import Volume
from support.inference import THRESHOLD, blob_image, make_run, register_threshold  # noqa: F401

pytestmark = pytest.mark.usefixtures("fp32_on_cpu")  # equal precision on any CPU (see the fixture)


def test_threshold_model_gives_the_thresholded_scan_exactly(tmp_path, monkeypatch):
    register_threshold(monkeypatch)
    run, _ = make_run(tmp_path / "run", THRESHOLD, 1, 2, patch_size=(8, 8, 8), normalization=["none"])
    image = blob_image()
    out = Predictor.from_run(run, device="cpu").predict_volume(image)
    assert out.array.shape == (1, *image.spatial_shape) and out.array.dtype == np.uint8
    np.testing.assert_array_equal(out.affine, image.affine)
    np.testing.assert_array_equal(out.array[0], (image.array[0] > 0).astype(np.uint8))


def test_resampled_and_cropped_plan_maps_back_to_the_input_grid(tmp_path, monkeypatch):
    register_threshold(monkeypatch)
    run, _ = make_run(
        tmp_path / "run", THRESHOLD, 1, 2, patch_size=(8, 8, 8), normalization=["none"],
        target_spacing=(1.0, 1.0, 1.0), crop_to_nonzero=True,
    )  # fmt: skip
    image = blob_image(shape=(24, 20, 12))
    image.array[0] = np.abs(image.array[0])  # a solid block inside a zero frame
    image.array[0, 2:22, 2:18, 2:10] += 0.5
    out = Predictor.from_run(run, checkpoint="last").predict_volume(image)
    assert out.spatial_shape == image.spatial_shape
    np.testing.assert_array_equal(out.affine, image.affine)
    expected = image.array[0] > 0
    assert (out.array[0] == expected).mean() > 0.97  # nearest-neighbour round trip through 1 mm
    assert out.array[0][~np.pad(np.ones((20, 16, 8), bool), 2)].max() == 0  # background outside the crop


def test_unet_with_size_rule_on_odd_sizes_equals_sliding_window(tmp_path):
    run, plan = make_run(
        tmp_path / "run", "unet3d", 2, 3, patch_size=(16, 16, 8), model_kwargs={"features": [4, 8]},
        normalization=["none", "none"], modalities=["t1", "t2"],
    )  # fmt: skip
    image = blob_image(shape=(19, 13, 11), channels=2)
    predictor = Predictor.from_run(run, device="cpu")
    out = predictor.predict_volume(image)
    assert out.spatial_shape == (19, 13, 11)
    np.testing.assert_array_equal(out.affine, image.affine)
    ref = sliding_window(torch.from_numpy(image.array)[None], predictor.model, (16, 16, 8), overlap=0.5)
    np.testing.assert_array_equal(out.array[0], ref[0].argmax(0).numpy())


def test_probabilities_and_tta(tmp_path):
    run, _ = make_run(tmp_path / "run", "unet3d", 1, 3, patch_size=(8, 8, 8), model_kwargs={"features": [4, 8]})
    image = blob_image(shape=(12, 10, 9))
    predictor = Predictor.from_run(run, mirror_axes=(0, 1, 2))
    labels, probs = predictor.predict_case(image, probabilities=True)
    assert probs.array.shape == (3, 12, 10, 9) and probs.array.dtype == np.float16
    np.testing.assert_allclose(probs.array.astype(np.float32).sum(0), 1.0, atol=5e-3)
    np.testing.assert_array_equal(probs.array.argmax(0), labels.array[0])
    np.testing.assert_array_equal(probs.affine, image.affine)


@pytest.mark.parametrize("memory_format", ["auto", "channels_last"])
def test_2d_plan_predicts_slice_by_slice_with_context(tmp_path, monkeypatch, memory_format):
    register_threshold(monkeypatch)
    # 3 input channels = 1 modality x (2 * 1 context + 1) slices; the net thresholds the first channel,
    # i.e. the previous slice (zeros before slice 0, as training). In channels-last only zeros are added.
    run, _ = make_run(
        tmp_path / "run", THRESHOLD, 3, 2, spatial_dims=2, patch_size=(8, 8), normalization=["none"],
        slice_axis=1, context_slices=1,
    )  # fmt: skip
    image = blob_image(shape=(13, 9, 10))
    predictor = Predictor.from_run(run, slices_per_step=4, memory_format=memory_format)
    layouts: list[bool] = []
    predictor.model.conv.register_forward_hook(
        lambda m, a, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last))
    )
    out = predictor.predict_volume(image)
    assert layouts and set(layouts) == {memory_format == "channels_last"}  # the threshold card: contiguous
    assert out.spatial_shape == image.spatial_shape
    np.testing.assert_array_equal(out.affine, image.affine)
    positive = image.array[0] > 0
    previous = np.concatenate([np.zeros_like(positive[:, :1]), positive[:, :-1]], axis=1)
    np.testing.assert_array_equal(out.array[0], previous.astype(np.uint8))


def test_2d_context_at_the_edge_slices_matches_training(tmp_path):
    """Training fills context slices beyond the volume with zeros; prediction must feed the same input."""
    from types import SimpleNamespace

    from medzoo.data.loader import PatchLoader

    run, plan = make_run(
        tmp_path / "run", "unet2d", 2 * 3, 3, spatial_dims=2, patch_size=(16, 12), normalization=["none", "none"],
        modalities=["t1", "t2"], slice_axis=1, context_slices=1, model_kwargs={"features": [4, 8]},
    )  # fmt: skip
    image = blob_image(shape=(16, 5, 12), channels=2)
    image.array[:] += 1.0  # no zero slab anywhere: a zero context slice can only come from the padding
    predictor = Predictor.from_run(run, device="cpu", overlap=0.0, blend="constant", memory_format="contiguous")
    fed: list[torch.Tensor] = []
    net = predictor.model
    predictor.model = lambda x: fed.append(x.clone()) or net(x)
    predictor.predict_volume(image)
    predicted_input = torch.cat(fed)  # (5 slices, 6, 16, 12) in slice order
    # the training path: the patch loader's 2D sample centred on each edge slice (no augmentation)
    for edge in (0, 4):
        case = SimpleNamespace(image=image.array, label=np.zeros(image.spatial_shape, np.uint8),
                               class_locations={}, shape=image.spatial_shape)  # fmt: skip
        loader = PatchLoader([case], (16, 12), 1, spatial_dims=2, slice_axis=1, context_slices=1, augment="none",
                             num_workers=0, sampler=lambda c, patch, rng, force, e=edge: np.array([8, e, 6]))  # fmt: skip
        trained_input, _ = next(loader)
        np.testing.assert_array_equal(predicted_input[edge].numpy(), trained_input[0].numpy())
        with torch.inference_mode():
            np.testing.assert_allclose(net(predicted_input[edge : edge + 1]).numpy(), net(trained_input).numpy(),
                                       rtol=1e-5, atol=1e-6)  # fmt: skip
    assert predicted_input[0, 0].abs().max() == 0 and predicted_input[4, 2].abs().max() == 0  # zeros beyond


def test_wrong_modalities_and_2d_scan_are_clear_errors(tmp_path):
    run, _ = make_run(
        tmp_path / "run", "unet3d", 2, 3, patch_size=(8, 8, 8), model_kwargs={"features": [4, 8]},
        modalities=["t1", "t2"],
    )  # fmt: skip
    predictor = Predictor.from_run(run)
    with pytest.raises(DataError, match=r"1 channel\(s\).*2 modalities \(t1, t2\)"):
        predictor.predict_volume(blob_image(channels=1))
    flat = Volume(np.zeros((2, 16, 16), np.float32), np.eye(4), {"path": "slice.nii.gz"})
    with pytest.raises(VolumeError, match="slice.nii.gz.*2D image.*3D"):
        predictor.predict_volume(flat)


def test_postprocess_runs_on_the_final_map(tmp_path, monkeypatch):
    register_threshold(monkeypatch)
    run, _ = make_run(tmp_path / "run", THRESHOLD, 1, 2, patch_size=(8, 8, 8), normalization=["none"])
    image = blob_image()
    plain = Predictor.from_run(run).predict_volume(image).array[0]
    kept = Predictor.from_run(run, postprocess=PostProcess(keep_largest=True)).predict_volume(image).array[0]
    from scipy import ndimage

    assert ndimage.label(plain)[1] > 1 and ndimage.label(kept)[1] == 1
    assert kept.sum() < plain.sum() and np.all(kept <= plain)
