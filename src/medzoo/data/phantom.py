"""Synthetic brain-like MRI phantoms, for demos and tests.

Each case is an ellipsoidal head: scalp, a dark skull rim, a CSF layer, a gray-matter shell with a wavy
inner boundary and CSF sulci cutting into it, a white-matter core and two CSF ventricles. Two modalities
with different contrast are drawn (T1: white matter bright, CSF dark; T2: CSF bright), blurred slightly
(partial volume), multiplied by a smooth bias field and given Gaussian noise. Shape, size, position and
rotation of the anatomy, tissue intensities, noise and bias vary per case; the grid has anisotropic,
jittered spacing and an oblique, offset affine.

Labels: 0 background (everything outside the brain, including scalp and skull), 1 csf, 2 gray_matter,
3 white_matter.

Other kinds (``make_phantom_dataset(kind=...)``, ``medzoo phantom --kind``), each with spacings that
differ from case to case (and so shapes, over a fixed field of view):

- ``ct``: an abdominal CT in Hounsfield units: air at -1000 around the body, a patient table under it,
  subcutaneous fat, muscle, spine, the lung bases, and three organs of very different sizes (1 liver,
  2 kidneys, 3 spleen); about 0.8 x 0.8 x 3 mm.
- ``multi-organ``: the same body with seven labelled structures from the liver down to an adrenal gland a
  few millimetres across (1 liver, 2 spleen, 3 kidney_left, 4 kidney_right, 5 aorta, 6 gallbladder,
  7 adrenal), slice spacing from 1.5 to 5 mm.
- ``thick-mri``: the brain phantom on few, thick slices (5-10 mm apart, about 1 mm in plane).

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


# Body phantom (CT): structures as ellipsoids (or a tube along the slices) in coordinates normalised to the
# field of view, u in [-1, 1] per axis (i: left-right, j: anterior-posterior, k: feet-head): centre, radii, HU.
_BODY_CENTRE, _BODY_RADII = (0.0, -0.08), (0.86, 0.62)
_TABLE = (0.62, 0.72)  # j range of the patient table (under the body), HU below
_TABLE_HU, _FAT_HU, _MUSCLE_HU, _BONE_HU, _LUNG_HU, _AIR_HU = 180.0, -100.0, 45.0, 650.0, -850.0, -1000.0
_ORGANS = {  # name: (centre (i, j, k), radii, HU, tube along k)
    "liver": ((-0.34, -0.12, 0.30), (0.34, 0.36, 0.45), 60.0, False),
    "spleen": ((0.46, 0.05, 0.35), (0.13, 0.17, 0.22), 48.0, False),
    "kidney_left": ((0.30, 0.28, -0.15), (0.09, 0.12, 0.24), 32.0, False),
    "kidney_right": ((-0.30, 0.28, -0.22), (0.09, 0.12, 0.24), 32.0, False),
    "aorta": ((0.06, 0.22, 0.0), (0.05, 0.05, 1.0), 170.0, True),
    "gallbladder": ((-0.20, -0.28, 0.02), (0.06, 0.07, 0.10), 8.0, False),
    "adrenal": ((0.22, 0.18, 0.45), (0.03, 0.025, 0.06), 28.0, False),
}
_BODY_KINDS = {
    "ct": {"labels": {"liver": 1, "kidney_left": 2, "kidney_right": 2, "spleen": 3},
           "names": ["background", "liver", "kidney", "spleen"], "shape": (160, 160, 48), "spacing": (0.8, 0.8, 3.0),
           "slice_choices": (2.5, 3.0, 3.0, 3.75)},
    "multi-organ": {"labels": {"liver": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4, "aorta": 5,
                               "gallbladder": 6, "adrenal": 7},
                    "names": ["background", "liver", "spleen", "kidney_left", "kidney_right", "aorta", "gallbladder",
                              "adrenal"], "shape": (160, 160, 64), "spacing": (0.8, 0.8, 2.5),
                    "slice_choices": (1.5, 2.0, 2.5, 3.0, 5.0)},
}
KINDS = ("brain", "ct", "thick-mri", "multi-organ")


def _ellipsoid(views: list[np.ndarray], centre, radii, tube: bool = False) -> np.ndarray:
    """Boolean mask of an axis-aligned ellipsoid (or an elliptic tube along k) on broadcast 1D axes."""
    axes = (0, 1) if tube else (0, 1, 2)
    d2 = sum(((views[a] - np.float32(centre[a])) / np.float32(radii[a])) ** 2 for a in axes)
    return d2 < 1.0


def make_body_case(seed: int, kind: str = "ct", shape: tuple[int, int, int] | None = None,
                   spacing: tuple[float, float, float] | None = None) -> tuple[Volume, Volume]:
    """One synthetic abdominal CT (``kind`` "ct" or "multi-organ"; see the module doc).

    Args:
        seed: everything random is drawn from ``numpy.random.default_rng(seed)``.
        kind: "ct" (3 organ labels) or "multi-organ" (7 structures of very different sizes).
        shape: spatial shape (I, J, K) (axial slices along K); default the kind's.
        spacing: voxel size in mm (jittered by up to 3 % in plane); default the kind's.

    Returns:
        ``(image, label)``: image Volume (1, I, J, K) float32 in Hounsfield units, label Volume (1, I, J, K)
        uint8, on the same grid (axis-aligned, as CT scanners write, with an offset origin).
    """
    if kind not in _BODY_KINDS:
        raise ValueError(f"body phantom kind must be one of {sorted(_BODY_KINDS)}, got '{kind}'")
    spec = _BODY_KINDS[kind]
    shape = tuple(int(s) for s in (shape or spec["shape"]))
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"phantom shape must be 3 sizes >= 4, got {shape}")
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    views = [axes[m].reshape([-1 if d == m else 1 for d in range(3)]) for m in range(3)]
    hu = np.full(shape, _AIR_HU, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    table = (views[1] > _TABLE[0]) & (views[1] < _TABLE[1]) & (np.abs(views[0]) < 0.95)
    hu[np.broadcast_to(table, shape)] = _TABLE_HU
    scale = rng.uniform(0.92, 1.05, size=2)
    body_c, body_r = np.array(_BODY_CENTRE), np.array(_BODY_RADII) * scale
    body = np.broadcast_to(_ellipsoid(views, (*body_c, 0.0), (*body_r, 1.0), tube=True), shape)
    inner = np.broadcast_to(_ellipsoid(views, (*body_c, 0.0), (*(body_r - 0.06), 1.0), tube=True), shape)
    hu[body] = _FAT_HU
    hu[inner] = _MUSCLE_HU + rng.normal(0.0, 4.0)
    for side in (-1.0, 1.0):  # lung bases at the head end
        lung = _ellipsoid(views, (side * 0.42, -0.05, 1.05), (0.3, 0.4, 0.45))
        hu[np.broadcast_to(lung, shape) & inner] = _LUNG_HU
    spine = np.broadcast_to(_ellipsoid(views, (0.0, 0.42, 0.0), (0.1, 0.1, 1.0), tube=True), shape)
    hu[spine] = _BONE_HU
    for name, value in spec["labels"].items():
        centre, radii, organ_hu, tube = _ORGANS[name]
        centre = np.asarray(centre) + rng.uniform(-0.03, 0.03, size=3) * (np.asarray(radii) > 0.04)
        radii = np.asarray(radii) * rng.uniform(0.85, 1.15, size=3)
        mask = np.broadcast_to(_ellipsoid(views, centre, radii, tube), shape) & inner
        hu[mask] = organ_hu + rng.normal(0.0, 5.0)
        label[mask] = value
    ndimage.gaussian_filter(hu, sigma=0.7, output=hu, truncate=3.0)  # partial volume
    hu += rng.standard_normal(size=shape, dtype=np.float32) * np.float32(rng.uniform(10.0, 18.0))
    np.clip(hu, -1024.0, 3071.0, out=hu)
    vox = np.asarray(spacing or spec["spacing"], dtype=np.float64) * np.r_[rng.uniform(0.97, 1.03, size=2), 1.0]
    origin = -vox * (np.asarray(shape) - 1) / 2.0 + rng.normal(0.0, 10.0, size=3)
    affine = make_affine(tuple(vox), tuple(origin))
    meta = {"seed": int(seed), "source": f"medzoo.data.phantom ({kind})"}
    return Volume(hu[None], affine, dict(meta)), Volume(label[None], affine.copy(), dict(meta))


def _kind_case(kind: str, seed: int, shape: tuple[int, int, int] | None, spacing: tuple[float, float, float] | None
               ) -> tuple[Volume, Volume]:
    """One case of ``kind``; for the non-brain kinds the spacing is drawn per case and the shape follows from
    the field of view of ``shape`` at ``spacing``, at most ``shape`` (so cases differ in spacing and shape)."""
    if kind == "brain":
        return make_phantom_case(seed, shape=shape, spacing=spacing)
    rng = np.random.default_rng([seed, 1])
    if kind == "thick-mri":
        base_shape = np.asarray(shape or (128, 128, 20), float)
        base = np.asarray(spacing or (0.9, 0.9, 7.0), float)
        case_spacing = np.array([base[0], base[1], rng.uniform(5.0, 10.0)])
    else:
        spec = _BODY_KINDS[kind]
        base_shape = np.asarray(shape or spec["shape"], float)
        base = np.asarray(spacing or spec["spacing"], float)
        case_spacing = np.array([*(base[:2] * rng.uniform(0.85, 1.1)), rng.choice(spec["slice_choices"])])
    # the field of view of `shape` at `spacing`, never more voxels than `shape` (a finer case sees less)
    case_shape = tuple(int(max(8, min(round(n), m))) for n, m in zip(base_shape * base / case_spacing, base_shape))
    if kind == "thick-mri":
        return make_phantom_case(seed, shape=case_shape, spacing=tuple(case_spacing))
    return make_body_case(seed, kind, shape=case_shape, spacing=tuple(case_spacing))


def _case_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def make_phantom_dataset(
    out_dir: str | Path,
    cases: int = 8,
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    test_cases: int = 0,
    spacing: tuple[float, float, float] | None = None,
    kind: str = "brain",
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
        spacing: base spacing in mm (default :data:`DEFAULT_SPACING`, or the kind's).
        kind: "brain" (the default), "ct", "multi-organ" or "thick-mri" (see the module doc); for the last
            three ``shape`` and ``spacing`` set the field of view, and each case draws its own spacing.

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
    if kind not in KINDS:
        raise DataError(f"unknown phantom kind '{kind}' (known: {', '.join(KINDS)})")
    if cases < 1 or test_cases < 0:
        raise DataError(f"phantom dataset needs cases >= 1 and test_cases >= 0, got {cases}, {test_cases}")
    for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if test_cases else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)

    training, test = [], []
    for index in range(cases + test_cases):
        name = f"phantom_{index:03d}.nii.gz"
        image, label = _kind_case(kind, _case_seed(seed, index), shape, spacing)
        split = ("imagesTr", "labelsTr") if index < cases else ("imagesTs", "labelsTs")
        write_volume(image, out / split[0] / name)
        write_volume(label, out / split[1] / name)
        if index < cases:
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")
        log.debug("wrote phantom case %s", name)

    body = _BODY_KINDS.get(kind)
    labels = {str(i): n for i, n in enumerate(body["names"])} if body else dict(LABELS)
    modality = {"0": "CT"} if body else dict(MODALITIES)
    dataset = {
        "name": "Phantom" if kind == "brain" else f"Phantom {kind}",
        "description": "Synthetic brain-like MRI phantoms (medzoo.data.phantom)" if kind == "brain"
        else f"Synthetic {kind} phantoms (medzoo.data.phantom)",
        "reference": "medzoo",
        "licence": "CC0",
        "release": "1.0",
        "tensorImageSize": "4D",
        "modality": modality,
        "labels": labels,
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
        "seed": int(seed),
    }
    atomic_write_text(out / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    log.info("wrote %d training and %d test phantom cases to %s", len(training), len(test), out)
    return out
