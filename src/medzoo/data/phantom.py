"""Synthetic brain-like MRI phantoms, for demos and tests.

Each case is an ellipsoidal head: scalp, a dark skull rim, a CSF layer, a gray-matter shell with a wavy
inner boundary and CSF sulci cutting into it, a white-matter core and two CSF ventricles. Two modalities
with different contrast are drawn (T1: white matter bright, CSF dark; T2: CSF bright), blurred slightly
(partial volume), multiplied by a smooth bias field and given Gaussian noise. Shape, size, position and
rotation of the anatomy, tissue intensities, noise and bias vary per case; the grid has anisotropic,
jittered spacing and an oblique, offset affine.

Labels: 0 background (everything outside the brain, including scalp and skull), 1 csf, 2 gray_matter,
3 white_matter.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives byte-identical arrays.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from scipy import ndimage

from medzoo.errors import DataError
from medzoo.io.volume import Volume, make_affine

log = logging.getLogger(__name__)

DEFAULT_SHAPE = (64, 64, 48)
DEFAULT_SPACING = (1.0, 1.2, 2.0)
LABELS = {"0": "background", "1": "csf", "2": "gray_matter", "3": "white_matter"}
MODALITIES = {"0": "T1", "1": "T2"}

# Mean intensity per tissue, (T1, T2): background, scalp, skull, csf, gray matter, white matter.
_TISSUES = ("background", "scalp", "skull", "csf", "gray_matter", "white_matter")
_MEANS = np.array(
    [
        [0.00, 0.00],
        [0.60, 0.40],
        [0.08, 0.06],
        [0.15, 0.95],
        [0.45, 0.65],
        [0.80, 0.42],
    ]
)
_LABEL_OF_TISSUE = np.array([0, 0, 0, 1, 2, 3], dtype=np.uint8)


def _rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    """A random 3x3 rotation: Euler angles uniform in +-max_degrees about each axis."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_degrees, max_degrees, size=3))
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], order: int = 3) -> np.ndarray:
    """A smooth random field (I, J, K) float32 in about [-1, 1]: random low-frequency cosine products.

    Separable, so it costs one small tensor contraction instead of an interpolation over the volume.
    """
    coef = rng.normal(0.0, 1.0, size=(order, order, order))
    coef[0, 0, 0] = 0.0
    coef /= np.sqrt(np.sum(coef * coef))
    bases = [
        np.cos(np.pi * np.arange(order)[:, None] * np.linspace(0.0, 1.0, n)[None, :]).astype(np.float32)
        for n in shape
    ]
    field = np.einsum("abc,ai,bj,ck->ijk", coef.astype(np.float32), *bases, optimize=True)
    return field / max(float(np.abs(field).max()), 1e-6)


def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Tissue index map (I, J, K) uint8 with values indexing :data:`_TISSUES`."""
    centre = rng.uniform(-0.06, 0.06, size=3)
    rot = _rotation(rng, 15.0)
    radii = np.array([0.82, 0.86, 0.84]) * rng.uniform(0.9, 1.05) * rng.uniform(0.95, 1.05, size=3)
    # normalised voxel coordinates in [-1, 1] per axis (the head fills the field of view), centred,
    # rotated into anatomy coordinates p and scaled by the head radii: q = ((u - centre) @ rot) / radii.
    # u_m varies along axis m only, so q is a sum of three broadcast 1D terms (cheap).
    axes = [np.linspace(-1.0, 1.0, n) - centre[m] if n > 1 else -centre[m : m + 1] for m, n in enumerate(shape)]
    views = [axes[m].reshape([-1 if d == m else 1 for d in range(3)]) for m in range(3)]

    def anatomy_axis(k: int, scale: float) -> np.ndarray:
        return sum((views[m] * (rot[m, k] / scale)).astype(np.float32) for m in range(3))

    p = [anatomy_axis(k, 1.0) for k in range(3)]
    q = [p[k] / np.float32(radii[k]) for k in range(3)]
    r = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2])  # 1 at the head surface
    inv_r = 1.0 / np.maximum(r, np.float32(1e-6))

    # random smooth undulation over the head's directions (gyri)
    freqs = rng.normal(0.0, 1.0, size=(6, 3))
    freqs *= rng.uniform(3.0, 5.5, size=(6, 1)) / np.linalg.norm(freqs, axis=1, keepdims=True)
    phases = rng.uniform(0.0, 2 * np.pi, size=6)
    waves = np.zeros(shape, dtype=np.float32)
    for f, ph in zip(freqs.astype(np.float32), phases.astype(np.float32)):
        waves += np.sin((q[0] * f[0] + q[1] * f[1] + q[2] * f[2]) * inv_r + ph)
    waves *= np.float32(np.sqrt(2.0) / len(phases))  # about [-1, 1]

    tissue = np.zeros(shape, dtype=np.uint8)
    brain_r = rng.uniform(0.75, 0.78)
    tissue[r < 1.0] = 1  # scalp
    tissue[r < 0.94] = 2  # skull
    tissue[r < 0.88] = 3  # csf around the brain
    tissue[r < brain_r] = 4  # gray matter
    wm_r = brain_r - rng.uniform(0.17, 0.21) + 0.07 * waves
    tissue[r < wm_r] = 5  # white matter
    # sulci: CSF cutting into the gray matter where the undulation is high
    tissue[(r < brain_r) & (r > wm_r + 0.03) & (waves > 0.5)] = 3
    # two ventricles (ellipsoids left and right of the midline)
    vent_radii = np.array([0.09, 0.24, 0.15]) * rng.uniform(0.85, 1.2)
    for side in (-1.0, 1.0):
        vc = np.array([side * rng.uniform(0.10, 0.14), rng.uniform(-0.05, 0.05), rng.uniform(0.0, 0.08)])
        d2 = sum(((p[k] - np.float32(vc[k])) / np.float32(vent_radii[k])) ** 2 for k in range(3))
        tissue[d2 < 1.0] = 3
    return tissue


def make_phantom_case(
    seed: int,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> tuple[Volume, Volume]:
    """One synthetic brain-like case.

    Args:
        seed: everything random is drawn from ``numpy.random.default_rng(seed)``.
        shape: spatial shape (I, J, K); default :data:`DEFAULT_SHAPE`.
        spacing: base voxel size in mm, jittered by up to 5% per axis; default :data:`DEFAULT_SPACING`.

    Returns:
        ``(image, label)``: image Volume (2, I, J, K) float32 (channel 0 T1, channel 1 T2), label Volume
        (1, I, J, K) uint8 (0 background, 1 csf, 2 gray matter, 3 white matter), on the same oblique grid.
    """
    shape = tuple(int(s) for s in (shape or DEFAULT_SHAPE))
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"phantom shape must be 3 sizes >= 4, got {shape}")
    rng = np.random.default_rng(seed)
    tissue = _anatomy(rng, shape)
    label = _LABEL_OF_TISSUE[tissue]

    means = _MEANS * rng.uniform(0.93, 1.07, size=_MEANS.shape)
    image = np.empty((2, *shape), dtype=np.float32)
    bias = np.exp(np.float32(rng.uniform(0.15, 0.25)) * _smooth_field(rng, shape))
    noise_std = rng.uniform(0.025, 0.035)
    for c in range(2):
        clean = means[:, c].astype(np.float32)[tissue]
        ndimage.gaussian_filter(clean, sigma=0.6, output=image[c], truncate=3.0)  # partial volume
        image[c] *= bias
        image[c] += rng.standard_normal(size=shape, dtype=np.float32) * np.float32(noise_std)
    image *= np.float32(1000.0)  # MRI-like positive units
    np.clip(image, 0.0, None, out=image)

    base = np.asarray(spacing or DEFAULT_SPACING, dtype=np.float64)
    vox = base * rng.uniform(0.95, 1.05, size=3)
    rot = _rotation(rng, 12.0)
    centre_offset = rng.normal(0.0, 8.0, size=3)
    origin = -(rot * vox) @ ((np.asarray(shape) - 1) / 2.0) + centre_offset
    affine = make_affine(tuple(vox), tuple(origin), rot)
    meta = {"seed": int(seed), "source": "medzoo.data.phantom"}
    return (
        Volume(np.ascontiguousarray(image), affine, dict(meta)),
        Volume(label[None].copy(), affine.copy(), dict(meta)),
    )


def _case_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def make_phantom_dataset(
    out_dir: str | Path,
    cases: int = 8,
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    test_cases: int = 0,
    spacing: tuple[float, float, float] | None = None,
) -> Path:
    """Write a synthetic dataset in the Medical Segmentation Decathlon layout.

    ``out_dir/imagesTr/phantom_XXX.nii.gz`` (4D (I, J, K, 2): T1, T2), ``out_dir/labelsTr/phantom_XXX.nii.gz``
    and ``out_dir/dataset.json``. With ``test_cases`` > 0 also ``imagesTs/`` and, for evaluation,
    ``labelsTs/`` (test cases are numbered after the training cases).

    Args:
        out_dir: target folder (created; existing phantom files are overwritten).
        cases: number of training cases.
        seed: dataset seed; case ``i`` uses a seed derived from ``(seed, i)``.
        shape: spatial shape per case (default :data:`DEFAULT_SHAPE`).
        test_cases: number of extra test cases.
        spacing: base spacing in mm (default :data:`DEFAULT_SPACING`).

    Returns:
        ``out_dir``.

    Raises:
        DataError: ``out_dir`` exists and is not a folder, or counts are negative.
    """
    from medzoo.io.readers import write_volume
    from medzoo.utils import atomic_write_text

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another --out")
    if cases < 1 or test_cases < 0:
        raise DataError(f"phantom dataset needs cases >= 1 and test_cases >= 0, got {cases}, {test_cases}")
    for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if test_cases else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)

    training, test = [], []
    for index in range(cases + test_cases):
        name = f"phantom_{index:03d}.nii.gz"
        image, label = make_phantom_case(_case_seed(seed, index), shape=shape, spacing=spacing)
        split = ("imagesTr", "labelsTr") if index < cases else ("imagesTs", "labelsTs")
        write_volume(image, out / split[0] / name)
        write_volume(label, out / split[1] / name)
        if index < cases:
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")
        log.debug("wrote phantom case %s", name)

    dataset = {
        "name": "Phantom",
        "description": "Synthetic brain-like MRI phantoms (medzoo.data.phantom)",
        "reference": "medzoo",
        "licence": "CC0",
        "release": "1.0",
        "tensorImageSize": "4D",
        "modality": dict(MODALITIES),
        "labels": dict(LABELS),
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
        "seed": int(seed),
    }
    atomic_write_text(out / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    log.info("wrote %d training and %d test phantom cases to %s", len(training), len(test), out)
    return out
