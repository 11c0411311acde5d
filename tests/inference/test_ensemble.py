"""Ensembles of saved probabilities: the mean of the members, label maps on the members' grid, the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from medzoo.cli import main
from medzoo.errors import DataError
from medzoo.inference.ensemble import (
    ensemble_folders,
    probabilities_to_labels,
    read_probabilities,
    write_probabilities,
)
from medzoo.io.readers import read_volume
from support.inference import oblique_affine


def _members(tmp_path, n=3, shape=(7, 6, 5), k=3):
    rng = np.random.default_rng(0)
    affine = oblique_affine()
    probs = []
    for m in range(n):
        p = rng.dirichlet(np.ones(k), size=shape).transpose(3, 0, 1, 2).astype(np.float16)
        probs.append(p)
        for case in ("case_1", "case_2"):
            write_probabilities(tmp_path / f"m{m}" / f"{case}_probabilities.npz", p, affine)
    return [tmp_path / f"m{m}" for m in range(n)], probs, affine


def test_ensemble_is_the_mean_of_the_members(tmp_path):
    folders, probs, affine = _members(tmp_path)
    written = ensemble_folders(folders, tmp_path / "out", save_probabilities=True)
    assert [p.name for p in written] == ["case_1.nii.gz", "case_2.nii.gz"]
    mean = np.mean([p.astype(np.float32) for p in probs], axis=0)
    got, got_affine, order = read_probabilities(tmp_path / "out" / "case_1_probabilities.npz")
    assert order is None and np.allclose(got, mean, atol=1e-3) and np.allclose(got_affine, affine)
    labels = read_volume(written[0])
    assert np.allclose(labels.affine, affine, atol=1e-5)
    assert np.array_equal(labels.array[0], np.argmax(mean, axis=0))
    # not simply the first member's answer
    assert not np.array_equal(np.argmax(probs[0], axis=0), np.argmax(mean, axis=0))


def test_region_probabilities_paint_values_in_order():
    probs = np.zeros((3, 4, 1, 1), np.float32)
    probs[0, 1:] = 0.9  # whole tumour
    probs[1, 2:] = 0.9  # tumour core, inside it
    probs[2, 3:] = 0.9  # enhancing, inside the core
    assert probabilities_to_labels(probs, [2, 1, 4])[:, 0, 0].tolist() == [0, 2, 1, 4]
    with pytest.raises(DataError, match="regions_class_order"):
        probabilities_to_labels(probs, [1, 2])


def test_ensemble_cli_and_mismatched_members(tmp_path, capsys):
    folders, _, _ = _members(tmp_path, n=2)
    assert main(["ensemble", "--inputs", *map(str, folders), "--output", str(tmp_path / "cli")]) == 0
    assert "wrote 2 label maps" in capsys.readouterr().out
    (folders[1] / "case_2_probabilities.npz").unlink()
    assert main(["ensemble", "--inputs", *map(str, folders), "--output", str(tmp_path / "bad")]) == 1
    assert "different cases" in capsys.readouterr().err
    write_probabilities(folders[1] / "case_2_probabilities.npz", np.zeros((3, 2, 2, 2)), np.eye(4))
    with pytest.raises(DataError, match="shape"):
        ensemble_folders(folders, tmp_path / "bad2")


# ------------------------------------------------------------------------------ live ensembles in predict
def _cv_parent(tmp_path, target_spacing=(2.0, 1.2, 2.6)):
    """A cross-validation folder with two folds: the same plan, different weights (seeds)."""
    from support.inference import make_run

    parent = tmp_path / "cv"
    for fold in (0, 1):
        make_run(parent / f"fold_{fold}", "unet3d", 1, 3, seed=fold, patch_size=(16, 16, 8),
                 model_kwargs={"features": [4, 8]}, labels={0: "background", 1: "a", 2: "b"},
                 target_spacing=target_spacing)  # fmt: skip
    return parent


def test_two_fold_ensemble_probabilities_are_the_mean_of_the_folds(tmp_path):
    from medzoo.inference.ensemble import EnsemblePredictor
    from medzoo.inference.predictor import Predictor
    from support.inference import blob_image

    parent = _cv_parent(tmp_path)
    image = blob_image(shape=(23, 19, 11))
    folds = [Predictor.from_run(parent / f"fold_{k}", device="cpu", amp="none") for k in (0, 1)]
    singles = [f.predict_case(image, probabilities=True)[1].array.astype(np.float32) for f in folds]
    ensemble = EnsemblePredictor(folds)
    assert ensemble.shared_grid  # one plan: averaged on the preprocessed grid, resampled back once
    labels, probs = ensemble.predict_case(image, probabilities=True)
    mean = (singles[0] + singles[1]) / 2
    assert probs.array.shape == mean.shape and labels.array.shape == (1, *image.spatial_shape)
    assert np.allclose(probs.array.astype(np.float32), mean, atol=2e-3)  # float16 storage
    assert not np.allclose(singles[0], singles[1], atol=1e-2)  # the folds do differ
    assert np.allclose(labels.affine, image.affine)


def test_predict_cli_on_a_cv_folder_applies_its_chosen_postprocessing(tmp_path, monkeypatch, capsys):
    from medzoo.inference.postprocess import ChosenPostprocessing
    from medzoo.io.readers import write_volume
    from support.inference import blob_image

    parent = _cv_parent(tmp_path, target_spacing=None)
    write_volume(blob_image(shape=(23, 19, 11)), tmp_path / "in" / "scan.nii.gz")
    calls = []

    class Spy(ChosenPostprocessing):
        def __call__(self, labels):
            calls.append(labels.shape)
            return super().__call__(labels)

    Spy(foreground=True).save(parent / "postprocessing.json")
    monkeypatch.setattr("medzoo.inference.postprocess.ChosenPostprocessing", Spy)
    args = ["predict", "--model", str(parent), "--input", str(tmp_path / "in"), "--device", "cpu",
            "--backend", "torch", "--no-progress", "--save-probabilities"]
    assert main([*args, "--output", str(tmp_path / "out")]) == 0
    assert calls == [(23, 19, 11)]
    assert main([*args, "--output", str(tmp_path / "raw"), "--no-postprocess"]) == 0
    assert calls == [(23, 19, 11)]  # not applied again
    # two runs given separately: the same ensemble, and the same probabilities
    assert main(["predict", "--model", str(parent / "fold_0"), str(parent / "fold_1"), "--input",
                 str(tmp_path / "in"), "--output", str(tmp_path / "two"), "--device", "cpu", "--backend", "torch",
                 "--no-progress", "--save-probabilities"]) == 0
    a, _, _ = read_probabilities(tmp_path / "raw" / "scan_probabilities.npz")
    b, _, _ = read_probabilities(tmp_path / "two" / "scan_probabilities.npz")
    assert np.array_equal(a, b)
    assert "wrote 1/1" in capsys.readouterr().out


def test_runs_with_different_plans_are_averaged_on_the_scans_grid(tmp_path):
    from medzoo.inference.ensemble import EnsemblePredictor
    from medzoo.inference.predictor import Predictor
    from support.inference import blob_image

    a, b = _cv_parent(tmp_path / "a") / "fold_0", _cv_parent(tmp_path / "b", target_spacing=None) / "fold_1"
    image = blob_image(shape=(23, 19, 11))
    members = [Predictor.from_run(r, device="cpu", amp="none") for r in (a, b)]
    singles = [m.predict_case(image, probabilities=True)[1].array.astype(np.float32) for m in members]
    ensemble = EnsemblePredictor(members)
    assert not ensemble.shared_grid
    labels, probs = ensemble.predict_case(image, probabilities=True)
    mean = (singles[0] + singles[1]) / 2
    assert np.allclose(probs.array.astype(np.float32), mean, atol=1e-3)
    assert np.array_equal(labels.array[0], np.argmax(mean, axis=0))
