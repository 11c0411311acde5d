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
