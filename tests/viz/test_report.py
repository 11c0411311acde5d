"""The HTML report renders in headless Chromium (slow; skipped when chromium is not installed)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from scipy import ndimage

from medzoo.evaluation import evaluate
from medzoo.io.readers import write_volume
from medzoo.io.volume import Volume, make_affine


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    affine = make_affine((0.9, 1.2, 2.5), origin=(3.0, -4.0, 1.0),
                         rotation=np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]))
    shape = (32, 30, 16)
    for i in range(4):
        rng = np.random.default_rng(i)
        field = ndimage.gaussian_filter(rng.standard_normal((3, *shape)), sigma=(0, 3, 3, 2))
        field[0] += 0.1
        ref = field.argmax(0).astype(np.uint8)
        pred = np.where(rng.random(shape) < 0.95 - 0.15 * i, ref, 0).astype(np.uint8)
        pred = ndimage.median_filter(pred, size=3)
        image = ndimage.gaussian_filter(ref.astype(np.float32) * 40 + 20, 1.2) + rng.normal(0, 3, shape)
        write_volume(Volume(ref[None], affine), tmp_path / "ref" / f"case_{i}.nii.gz")
        write_volume(Volume(pred[None], affine), tmp_path / "pred" / f"case_{i}.nii.gz")
        write_volume(Volume(image[None].astype(np.float32), affine), tmp_path / "img" / f"case_{i}.nii.gz")
    report = tmp_path / "report"
    res = evaluate(tmp_path / "pred", tmp_path / "ref", labels={1: "organ", 2: "lesion"},
                   metrics=["dice", "hd95", "assd", "nsd"], report_dir=report, images_dir=tmp_path / "img")
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,2400",
         res.report_path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 10_000
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (2400, 1280)
    # the page is not blank: many distinct colours (tables, box plots, overlays) were drawn
    rgb = (pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    assert len(np.unique(rgb[::7], axis=0)) > 200
