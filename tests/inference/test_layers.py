"""Prediction's layers on their own: file discovery, the read/compute/write pipeline with any predict_case, and
predict()'s options object."""

from __future__ import annotations

import numpy as np

from medzoo.inference.inputs import collect_cases, read_case
from medzoo.inference.pipeline import run_pipeline
from medzoo.inference.predictor import PredictOptions, predict
from medzoo.io.readers import read_volume, write_volume
from medzoo.io.volume import Volume
from support.inference import THRESHOLD, blob_image, make_run, register_threshold


def test_the_pipeline_runs_any_predict_case_and_lists_failures(tmp_path):
    good = blob_image(shape=(9, 8, 7), seed=1)
    write_volume(good, tmp_path / "in" / "good.nii.gz")
    write_volume(blob_image(shape=(9, 8, 7), seed=2), tmp_path / "in" / "bad.nii.gz")
    (tmp_path / "in" / "broken.nii.gz").write_bytes(b"not a volume")
    cases = collect_cases(tmp_path / "in")
    assert [c.name for c in cases] == ["bad", "broken", "good"]
    assert read_case(cases[2]).array.dtype == np.float32  # read by the data layer's case reader

    def predict_case(image: Volume, probabilities: bool):
        if image.array.shape != good.array.shape or not np.allclose(image.array, good.array):
            raise ValueError("not the good scan")
        labels = Volume((image.array[:1] > 0).astype(np.uint8), image.affine, {})
        probs = Volume(np.ones((2, *image.spatial_shape), np.float16) / 2, image.affine, {})
        return labels, probs if probabilities else None

    report = run_pipeline(predict_case, cases, tmp_path / "out", save_probabilities=True)
    assert [p.name for p in report.written] == ["good.nii.gz"] and len(report.probabilities) == 1
    assert [name for name, _ in report.failed] == ["bad", "broken"] and "not the good scan" in report.failed[0][1]
    np.testing.assert_array_equal(read_volume(tmp_path / "out" / "good.nii.gz").array[0], good.array[0] > 0)


def test_predict_takes_its_options_as_one_object(tmp_path, monkeypatch):
    register_threshold(monkeypatch)
    run, _ = make_run(tmp_path / "run", THRESHOLD, 1, 2, patch_size=(8, 8, 8), normalization=["none"])
    image = blob_image(shape=(12, 10, 9))
    write_volume(image, tmp_path / "scan.nii.gz")
    options = PredictOptions(device="cpu", backend="torch", progress=False, save_probabilities=True, tta=True)
    by_object = predict(run, tmp_path / "scan.nii.gz", tmp_path / "a", options=options)
    by_keywords = predict(run, tmp_path / "scan.nii.gz", tmp_path / "b", device="cpu", backend="torch",
                          progress=False, save_probabilities=True, tta=True)  # fmt: skip
    assert by_object.ok and by_keywords.ok and len(by_object.probabilities) == 1
    assert options.mirror_axes_for(make_run(tmp_path / "r2", THRESHOLD, 1, 2)[1]) == (0, 1, 2)
    np.testing.assert_array_equal(read_volume(tmp_path / "a" / "scan.nii.gz").array,
                                  read_volume(tmp_path / "b" / "scan.nii.gz").array)  # fmt: skip
