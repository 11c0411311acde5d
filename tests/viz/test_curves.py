"""Training curves from a metrics CSV (missing columns and empty cells tolerated)."""

from __future__ import annotations

import numpy as np
import pytest

from medzoo.errors import DataError
from medzoo.viz.curves import plot_training_curves, read_metrics_csv


def test_plot_full_csv(tmp_path):
    csv = tmp_path / "metrics.csv"
    lines = ["epoch,train_loss,val_loss,lr,val_dice_mean,val_dice_csf,val_dice_gm"]
    for e in range(6):
        val = f"{1.0 / (e + 2):.3f},{0.1 * e:.2f}" if e % 2 else ","  # validation every second epoch
        lines.append(f"{e},{1.0 / (e + 1):.3f},{val.split(',')[0]},{0.01 * 0.9**e:.5f},"
                     f"{val.split(',')[1]},{0.1 * e if e % 2 else ''},{0.05 * e if e % 2 else ''}")
    csv.write_text("\n".join(lines) + "\n")
    cols = read_metrics_csv(csv)
    assert np.isnan(cols["val_loss"][0]) and cols["val_loss"][1] == pytest.approx(1 / 3, abs=1e-3)
    out = plot_training_curves(csv, tmp_path / "curves.png")
    import matplotlib.image as mpimg

    img = mpimg.imread(out)
    assert img.shape[1] > 2.5 * img.shape[0]  # three panels (loss, dice, lr)


def test_plot_minimal_csv_and_errors(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("epoch,train_loss\n0,1.0\n1,0.5\n")
    out = plot_training_curves(csv, tmp_path / "c.png")
    import matplotlib.image as mpimg

    img = mpimg.imread(out)
    assert img.shape[1] < 1.8 * img.shape[0]  # just the loss panel
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n0,1\n")
    with pytest.raises(DataError, match="epoch"):
        plot_training_curves(bad, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
