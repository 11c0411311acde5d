"""Data augmentation in torch: batched, on CPU or GPU, reproducible from a ``torch.Generator``.

Every transform takes ``(image (B, C, *S), label (B, *S) or None, generator)`` and returns the pair with the
same shapes (the spatial one returns a smaller, centre-cropped patch). Parameters are drawn per sample from
the CPU ``generator`` (so the result is the same on CPU and GPU) and the same draw is applied to every image
channel and to the label (labels with nearest-neighbour interpolation).

The spatial transform composes rotation, scaling and elastic deformation into ONE ``grid_sample``. It
samples from a larger region than the patch so borders stay filled: :meth:`SpatialAugment.sample` draws the
parameters and says how large a region the loader must crop; :meth:`SpatialAugment.warp` produces the
centred patch from that region. Called directly on a batch (``__call__``) it warps the centre of the input.
In 3D the resampling is ``grid_sample``; on the CPU, where PyTorch's 3D sampler is a scalar loop, the runtime
policy hands it to an equal, faster resampler (:func:`medzoo.runtime.resampler_3d`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medzoo import runtime
from medzoo.errors import ConfigError

Pair = tuple[torch.Tensor, torch.Tensor | None]


def _uniform(generator: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def _coin(generator: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p


def _per_sample(values: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(B,) or (B, C) values shaped to broadcast over ``ref`` (B, C, *S)."""
    v = values.to(device=ref.device, dtype=ref.dtype)
    return v.reshape(v.shape + (1,) * (ref.ndim - v.ndim))


# ------------------------------------------------------------------------------------------- spatial


def rotation_matrix(angles: list[float]) -> torch.Tensor:
    """Rotation in voxel space: 2D from one angle, 3D from three (about axes I, J, K), radians -> (nd, nd)."""
    if len(angles) == 1:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    m = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    for axis, a in enumerate(angles):  # m = R_axis @ m, in plain floats (tiny matrices: no tensor overhead)
        c, s = math.cos(a), math.sin(a)
        i, j = [x for x in range(3) if x != axis]
        mi, mj = m[i], m[j]
        m[i] = [c * u - s * v for u, v in zip(mi, mj)]
        m[j] = [s * u + c * v for u, v in zip(mi, mj)]
    return torch.tensor(m, dtype=torch.float64)


@dataclass
class SpatialParams:
    """One sample's spatial draw.

    Attributes:
        matrix: (nd, nd) float64: output voxel offset (from the patch centre) -> input voxel offset.
        displacement: (nd, *P) elastic displacement in input voxels, or None.
        region: the size of the input region (centred on the patch centre) the warp reads.
        flips: spatial axes flipped (folded into the warp, or applied to the crop when there is no warp).
    """

    matrix: torch.Tensor | None
    displacement: torch.Tensor | None
    region: tuple[int, ...]
    flips: tuple[int, ...] = ()

    @property
    def is_identity(self) -> bool:
        return self.matrix is None and self.displacement is None


class SpatialAugment:
    """Random rotation + scaling + elastic deformation, applied in one ``grid_sample``.

    Args:
        patch_size: output patch size (nd entries).
        p_rotation: probability of a rotation per sample.
        rotation_deg: maximum absolute angle (degrees), per axis in 3D.
        p_scale: probability of a scaling per sample.
        scale: range of the zoom factor (> 1 zooms in: structures look larger).
        p_elastic: probability of an elastic deformation per sample.
        elastic_magnitude: range of the displacement standard deviation (voxels).
        elastic_grid: control-point spacing of the smooth displacement field (voxels).
        image_mode: ``bilinear`` (trilinear in 3D) or ``nearest`` for images; labels always ``nearest``.
        p_flip: probability of flipping each axis in ``flip_axes`` (flips are folded into the same warp, or
            done on the crop when there is no warp, so they cost nothing extra).
        flip_axes: axes that may be flipped (default: all).
    """

    def __init__(
        self,
        patch_size: tuple[int, ...],
        *,
        p_rotation: float = 0.2,
        rotation_deg: float = 30.0,
        p_scale: float = 0.2,
        scale: tuple[float, float] = (0.7, 1.4),
        p_elastic: float = 0.0,
        elastic_magnitude: tuple[float, float] = (0.0, 3.0),
        elastic_grid: int = 12,
        image_mode: str = "bilinear",
        p_flip: float = 0.0,
        flip_axes: tuple[int, ...] | None = None,
    ) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        self.nd = len(self.patch_size)
        if self.nd not in (2, 3):
            raise ConfigError(f"spatial augmentation needs a 2D or 3D patch, got {patch_size}")
        self.p_rotation, self.rotation = p_rotation, math.radians(rotation_deg)
        self.p_scale, self.scale = p_scale, scale
        self.p_elastic, self.elastic_magnitude, self.elastic_grid = p_elastic, elastic_magnitude, elastic_grid
        self.image_mode = image_mode
        self.p_flip = p_flip
        self.flip_axes = tuple(range(self.nd)) if flip_axes is None else tuple(flip_axes)

    def sample(self, generator: torch.Generator) -> SpatialParams:
        """Draw one sample's parameters and the input region size they need."""
        n_angles = 1 if self.nd == 2 else 3
        n_flips = len(self.flip_axes)
        # one generator call per sample (the Python overhead of many small draws dominates small patches)
        r = torch.rand(5 + n_angles + n_flips, dtype=torch.float64, generator=generator).tolist()
        u = r[:3]
        angles = [(2 * a - 1) * self.rotation for a in r[3 : 3 + n_angles]]
        zoom = self.scale[0] + (self.scale[1] - self.scale[0]) * r[3 + n_angles]
        lo, hi = self.elastic_magnitude
        mag = lo + (hi - lo) * r[4 + n_angles]
        flip_draw = r[5 + n_angles :]
        flips = tuple(a for a, f in zip(self.flip_axes, flip_draw) if f < self.p_flip)
        matrix = None
        if u[0] < self.p_rotation:
            matrix = rotation_matrix(angles)
        if u[1] < self.p_scale:
            s = torch.eye(self.nd, dtype=torch.float64) / zoom
            matrix = s if matrix is None else matrix @ s
        displacement = None
        if u[2] < self.p_elastic and mag > 0:
            noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            g = torch.Generator().manual_seed(noise_seed)
            coarse = [max(2, math.ceil(p / self.elastic_grid) + 1) for p in self.patch_size]
            field = torch.randn((1, self.nd, *coarse), generator=g) * mag
            mode = "bicubic" if self.nd == 2 else "trilinear"
            displacement = F.interpolate(field, size=self.patch_size, mode=mode, align_corners=True)[0]
        return SpatialParams(matrix, displacement, self.region_for(matrix, displacement), flips)

    def region_for(self, matrix: torch.Tensor | None, displacement: torch.Tensor | None) -> tuple[int, ...]:
        """Input region size covering the warped patch (plus the largest elastic displacement)."""
        if matrix is None and displacement is None:
            return self.patch_size
        p = [float(q) for q in self.patch_size]
        extent = p if matrix is None else [sum(abs(a) * b for a, b in zip(row, p)) for row in matrix.tolist()]
        if displacement is not None:
            most = displacement.abs().amax(dim=tuple(range(1, displacement.ndim))).double().tolist()
            extent = [e + 2 * d for e, d in zip(extent, most)]
        region = [int(math.ceil(max(e, q))) + 2 for e, q in zip(extent, p)]
        # same parity as the patch so the patch centre is the region centre exactly
        return tuple(r + (r - q) % 2 for r, q in zip(region, self.patch_size))

    def grid(self, params: list[SpatialParams], region: tuple[int, ...], device=None) -> torch.Tensor:
        """Sampling grid (B, *P, nd) for ``grid_sample`` (align_corners=False) reading a region of size ``region``.

        The map of :meth:`voxel_coordinates`, normalised (voxel centre ``c`` of an axis of length ``R`` is
        ``(2c + 1) / R - 1``) and in torch's coordinate order (x = last array axis).
        """
        scale = tuple(2.0 / r for r in region)
        offset = tuple(1.0 / r - 1.0 for r in region)
        coords = self.voxel_coordinates(params, region, scale=scale, offset=offset)  # (B, nd, *P), array order
        return torch.movedim(coords.flip(1), 1, -1).to(device=device)

    def warp(self, image: torch.Tensor, label: torch.Tensor | None, params: list[SpatialParams]) -> Pair:
        """Warp regions ``image (B, C, *R)``, ``label (B, *R)`` (patch centre = region centre) to (B, C, *P)."""
        region = tuple(image.shape[2:])
        if all(p.is_identity for p in params):
            out = centre_crop(image, self.patch_size)
            lab = None if label is None else centre_crop(label, self.patch_size)
            if any(p.flips for p in params):
                out, lab = out.clone(), None if lab is None else lab.clone()
                for b, p in enumerate(params):
                    if p.flips:
                        out[b] = torch.flip(out[b], [a + 1 for a in p.flips])
                        if lab is not None:
                            lab[b] = torch.flip(lab[b], list(p.flips))
            return out, lab
        sampler = runtime.resampler_3d(image.device) if self.nd == 3 else None
        if sampler is not None:  # the same resampling as grid_sample below, faster on this device

            def coordinates(out: torch.Tensor, scale: tuple[float, ...], offset: tuple[float, ...]) -> None:
                self.voxel_coordinates(params, region, out, scale=scale, offset=offset)

            out, lab = sampler(image, None if label is None else label[:, None], self.patch_size, coordinates,
                               self.image_mode)
            return out, None if lab is None else lab[:, 0].to(label.dtype)
        grid = self.grid(params, region, image.device)
        mode = self.image_mode
        out = F.grid_sample(image.float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
        lab = None
        if label is not None:
            lab = F.grid_sample(label[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
            lab = lab[:, 0].to(label.dtype)  # nearest: exact integer values, no rounding pass needed
        return out, lab

    def voxel_coordinates(
        self, params: list[SpatialParams], region: tuple[int, ...], out: torch.Tensor | None = None,
        scale: tuple[float, ...] | None = None, offset: tuple[float, ...] | None = None,
    ) -> torch.Tensor:
        """Input voxel coordinates ``(B, nd, *P)`` float32 (array axis order) read by each output voxel.

        Output voxel ``o`` reads ``(R - 1) / 2 + M (s * (o - (P - 1) / 2)) + d(o)``, ``s`` the flip signs and
        ``d`` the elastic displacement: the same map as :meth:`grid` (which normalises it for
        ``grid_sample``), built separably from 1D ramps.

        Args:
            params: one draw per sample.
            region: the input region size.
            out: optional (B, nd, *P) destination (any strides).
            scale, offset: per coordinate, return ``coordinate * scale + offset`` instead (folded into the
                ramps; elastic displacements are scaled too).
        """
        nd, P = self.nd, self.patch_size
        if out is None:
            out = torch.empty((len(params), nd, *P), dtype=torch.float32)
        scale = scale or (1.0,) * nd
        offset = offset or (0.0,) * nd
        ramps = []
        for axis, p in enumerate(P):
            shape = [1] * nd
            shape[axis] = p
            ramps.append((torch.arange(p, dtype=torch.float64) - (p - 1) / 2).reshape(shape))
        for b, prm in enumerate(params):
            m = torch.eye(nd, dtype=torch.float64) if prm.matrix is None else prm.matrix.clone()
            if prm.flips:
                m[:, list(prm.flips)] *= -1
            rows = m.tolist()
            for c in range(nd):
                k = scale[c]
                acc = ramps[0] * (rows[c][0] * k) + ((region[c] - 1) / 2 * k + offset[c])
                for axis in range(1, nd - 1):
                    acc = acc + ramps[axis] * (rows[c][axis] * k)  # small: (P0, P1, 1) at most
                torch.add(acc.float(), (ramps[nd - 1] * (rows[c][nd - 1] * k)).float(), out=out[b, c])
            if prm.displacement is not None:
                d = prm.displacement.to(torch.float32)
                if prm.flips:
                    d = torch.flip(d, [a + 1 for a in prm.flips])
                out[b] += d * torch.tensor(scale, dtype=torch.float32).reshape((nd,) + (1,) * nd)
        return out

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None, generator: torch.Generator) -> Pair:
        """Batched: draw per-sample parameters and warp the centre of ``image (B, C, *S)`` to the patch size."""
        params = [self.sample(generator) for _ in range(image.shape[0])]
        return self.warp(image, label, params)


def centre_crop(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Centre crop (or zero-pad) the last ``len(size)`` axes of ``x`` to ``size`` (start = (R - P) // 2 + ...).

    The crop keeps the region centre (R // 2 ... consistent with ``crop_with_padding``'s ``centre - P // 2``).
    """
    nd = len(size)
    shape = x.shape[-nd:]
    if tuple(shape) == tuple(size):
        return x
    pads, slices = [], []
    for r, p in zip(shape, size):
        start = r // 2 - p // 2
        lo, hi = max(start, 0), min(start + p, r)
        slices.append(slice(lo, hi))
        pads.append((lo - start, start + p - hi))
    out = x[(Ellipsis,) + tuple(slices)]
    if any(a or b for a, b in pads):
        flat = [v for a, b in reversed(pads) for v in (a, b)]
        out = F.pad(out, flat)
    return out


# ------------------------------------------------------------------------------ simple spatial ones


class Transform:
    """Base of the patch-level transforms: ``__call__`` returns new tensors, ``apply_`` works in place.

    Subclasses implement ``apply_(image, label, generator)``, which may modify ``image`` / ``label`` in
    place and returns the pair. :class:`Compose` copies the inputs once and chains ``apply_``.
    """

    def apply_(self, image: torch.Tensor, label: torch.Tensor | None, generator: torch.Generator) -> Pair:
        raise NotImplementedError

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None, generator: torch.Generator) -> Pair:
        return self.apply_(image.clone(), None if label is None else label.clone(), generator)


class RandomFlip(Transform):
    """Flip each spatial axis in ``axes`` with probability ``p``, per sample."""

    def __init__(self, axes: tuple[int, ...] = (0, 1, 2), p: float = 0.5) -> None:
        self.axes, self.p = tuple(axes), p

    def apply_(self, image, label, generator):
        B = image.shape[0]
        nd = image.ndim - 2
        axes = [a for a in self.axes if a < nd]
        draws = torch.rand(B, len(axes), generator=generator) < self.p
        for b in range(B):
            dims = [a for a, d in zip(axes, draws[b].tolist()) if d]
            if dims:
                image[b] = torch.flip(image[b], [a + 1 for a in dims])
                if label is not None:
                    label[b] = torch.flip(label[b], dims)
        return image, label


class RandomRot90(Transform):
    """Rotate by k x 90 degrees in a random plane of two equally sized axes, with probability ``p``."""

    def __init__(self, p: float = 0.5, axes: tuple[int, ...] = (0, 1, 2)) -> None:
        self.p, self.axes = p, tuple(axes)

    def apply_(self, image, label, generator):
        B, S = image.shape[0], image.shape[2:]
        axes = [a for a in self.axes if a < len(S)]
        planes = [(a, b) for i, a in enumerate(axes) for b in axes[i + 1 :] if S[a] == S[b]]
        apply = torch.rand(B, generator=generator) < self.p
        ks = torch.randint(1, 4, (B,), generator=generator)
        which = torch.randint(0, max(1, len(planes)), (B,), generator=generator)
        if not planes:
            return image, label
        for b in apply.nonzero()[:, 0].tolist():
            a0, a1 = planes[int(which[b])]
            image[b] = torch.rot90(image[b], int(ks[b]), [a0 + 1, a1 + 1])
            if label is not None:
                label[b] = torch.rot90(label[b], int(ks[b]), [a0, a1])
        return image, label


# -------------------------------------------------------------------------------------- intensity


def _dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _std_mean_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unbiased std and mean of each row of ``x (C, N)`` as (C, 1) each.

    Two vectorised passes (mean, then the norm of the deviations): ~20x faster on CPU than
    ``torch.std_mean`` over many dimensions, and as accurate (no sum-of-squares cancellation).
    """
    mean = x.mean(1, keepdim=True)
    std = torch.linalg.vector_norm(x - mean, dim=1, keepdim=True) / math.sqrt(max(x.shape[1] - 1, 1))
    return std, mean


class RandomGamma(Transform):
    """``x -> ((x - min) / range) ** gamma * range + min`` per sample and channel, optionally on the inverted
    image, keeping mean and std (nnU-Net's gamma)."""

    def __init__(self, p: float = 0.3, gamma: tuple[float, float] = (0.7, 1.5), p_invert: float = 0.0,
                 retain_stats: bool = True) -> None:
        self.p, self.gamma, self.p_invert, self.retain_stats = p, gamma, p_invert, retain_stats

    def apply_(self, image, label, generator):
        B = image.shape[0]
        apply = _coin(generator, B, self.p)
        # half the draws below 1, half above, as nnU-Net
        low = _coin(generator, B, 0.5)
        g = torch.where(low & (self.gamma[0] < 1), _uniform(generator, B, self.gamma[0], 1.0),
                        _uniform(generator, B, max(self.gamma[0], 1.0), self.gamma[1]))
        invert = _coin(generator, B, self.p_invert)
        for b in apply.nonzero()[:, 0].tolist():
            x = image[b]  # (C, *S), modified in place
            d = _dims(x)
            if not self.retain_stats:
                x = -x if invert[b] else x
                mn, mx = x.amin(d, keepdim=True), x.amax(d, keepdim=True)
                rng = (mx - mn).clamp_min(1e-7)
                y = ((x - mn) / rng).clamp_min_(0).pow_(float(g[b])).mul_(rng).add_(mn)
                image[b] = -y if invert[b] else y
                continue
            # With the statistics retained every positive affine rescaling of (x - min) cancels out, so
            # ((x - min) / range) ** g is replaced by (x - min) ** g (>= 0 exactly: x >= min), normalised
            # afterwards: 6 passes over the sample instead of ~15. Inverted: (max - x) ** g, negated back.
            C = x.shape[0]
            flat = x.reshape(C, -1)  # a view of image[b] when contiguous (modified in place), else a copy
            std, mean = _std_mean_rows(flat)
            if invert[b]:
                t = flat.neg_().add_(flat.amin(1, keepdim=True).neg_())  # -x - min(-x) = max(x) - x
            else:
                t = flat.sub_(flat.amin(1, keepdim=True))
            t.pow_(float(g[b]))
            t_std, t_mean = _std_mean_rows(t)
            scale = std / t_std.clamp_min(1e-7)
            if invert[b]:
                scale = -scale
            t.mul_(scale).add_(mean - t_mean * scale)
            if t.data_ptr() != x.data_ptr():  # reshape had to copy: write back
                image[b] = t.view_as(image[b])
        return image, label


class RandomBrightness(Transform):
    """Multiply intensities by a factor in ``factor`` (per sample and channel)."""

    def __init__(self, p: float = 0.15, factor: tuple[float, float] = (0.75, 1.25)) -> None:
        self.p, self.factor = p, factor

    def apply_(self, image, label, generator):
        B, C = image.shape[:2]
        apply = _coin(generator, B, self.p)
        f = self.factor[0] + (self.factor[1] - self.factor[0]) * torch.rand(B, C, generator=generator)
        for b in apply.nonzero()[:, 0].tolist():
            image[b] *= f[b].to(image.device, image.dtype).reshape((C,) + (1,) * (image.ndim - 2))
        return image, label


class RandomContrast(Transform):
    """``(x - mean) * f + mean``, clipped to the sample's original range (per sample and channel)."""

    def __init__(self, p: float = 0.15, factor: tuple[float, float] = (0.75, 1.25)) -> None:
        self.p, self.factor = p, factor

    def apply_(self, image, label, generator):
        B, C = image.shape[:2]
        apply = _coin(generator, B, self.p)
        f = self.factor[0] + (self.factor[1] - self.factor[0]) * torch.rand(B, C, generator=generator)
        for b in apply.nonzero()[:, 0].tolist():
            x = image[b]
            d = _dims(x)
            mean, mn, mx = x.mean(d, keepdim=True), x.amin(d, keepdim=True), x.amax(d, keepdim=True)
            fb = f[b].to(x.device, x.dtype).reshape((C,) + (1,) * (x.ndim - 1))
            image[b] = torch.minimum(torch.maximum((x - mean) * fb + mean, mn), mx)
        return image, label


class RandomNoise(Transform):
    """Add Gaussian noise with a standard deviation drawn in ``std`` (per sample)."""

    def __init__(self, p: float = 0.1, std: tuple[float, float] = (0.0, 0.3)) -> None:
        self.p, self.std = p, std

    def apply_(self, image, label, generator):
        B = image.shape[0]
        apply = _coin(generator, B, self.p)
        s = _uniform(generator, B, *self.std)
        for b in apply.nonzero()[:, 0].tolist():
            noise = torch.randn(image.shape[1:], generator=generator).to(image.device, image.dtype)
            image[b].add_(noise, alpha=float(s[b]))
        return image, label


def _gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x[None] / sigmas[:, None].clamp_min(1e-3)) ** 2)
    return k / k.sum(1, keepdim=True)


def gaussian_blur(image: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of ``image (B, C, *S)`` with one sigma (voxels) per sample ``sigmas (B,)``."""
    B, C = image.shape[:2]
    nd = image.ndim - 2
    radius = max(1, int(math.ceil(3 * float(sigmas.max()))))
    k = _gaussian_kernels(sigmas, radius).to(image.device, image.dtype)  # (B, L)
    weight = k.repeat_interleave(C, 0)  # (B*C, L)
    x = image.reshape(1, B * C, *image.shape[2:])
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    for axis in range(nd):
        shape = [B * C, 1] + [1] * nd
        shape[2 + axis] = 2 * radius + 1
        pad = [0] * (2 * nd)
        pad[2 * (nd - 1 - axis)] = radius
        pad[2 * (nd - 1 - axis) + 1] = radius
        x = conv(F.pad(x, pad, mode="replicate"), weight.reshape(shape), groups=B * C)
    return x.reshape(image.shape)


class RandomBlur(Transform):
    """Gaussian blur with sigma (voxels) drawn in ``sigma`` (per sample)."""

    def __init__(self, p: float = 0.2, sigma: tuple[float, float] = (0.5, 1.0)) -> None:
        self.p, self.sigma = p, sigma

    def apply_(self, image, label, generator):
        B = image.shape[0]
        apply = _coin(generator, B, self.p)
        s = _uniform(generator, B, *self.sigma)
        if apply.any():
            idx = apply.nonzero()[:, 0].to(image.device)
            image[idx] = gaussian_blur(image[idx], s[apply])
        return image, label


class RandomBiasField(Transform):
    """Multiply by a smooth field ``exp(c * f)``, f a low-resolution random field upsampled (per sample)."""

    def __init__(self, p: float = 0.1, strength: tuple[float, float] = (0.0, 0.4), grid: int = 4) -> None:
        self.p, self.strength, self.grid = p, strength, grid

    def apply_(self, image, label, generator):
        B = image.shape[0]
        nd = image.ndim - 2
        apply = _coin(generator, B, self.p)
        c = _uniform(generator, B, *self.strength)
        coarse = torch.randn((B, 1) + (self.grid,) * nd, generator=generator)
        mode = "bilinear" if nd == 2 else "trilinear"
        for b in apply.nonzero()[:, 0].tolist():
            field = F.interpolate(coarse[b : b + 1].to(image.device), size=image.shape[2:], mode=mode,
                                  align_corners=True)[0]
            image[b] *= torch.exp(field * float(c[b])).to(image.dtype)
        return image, label


class RandomLowRes(Transform):
    """Simulate low resolution: downsample by a zoom in ``zoom`` (nearest), upsample back (linear)."""

    def __init__(self, p: float = 0.25, zoom: tuple[float, float] = (0.5, 1.0)) -> None:
        self.p, self.zoom = p, zoom

    def apply_(self, image, label, generator):
        B = image.shape[0]
        size = image.shape[2:]
        apply = _coin(generator, B, self.p)
        z = _uniform(generator, B, *self.zoom)
        mode = "bilinear" if len(size) == 2 else "trilinear"
        for b in apply.nonzero()[:, 0].tolist():
            small = [max(1, int(round(s * float(z[b])))) for s in size]
            low = F.interpolate(image[b : b + 1], size=small, mode="nearest")
            image[b] = F.interpolate(low, size=size, mode=mode, align_corners=False)[0]
        return image, label


class Compose(Transform):
    """Apply transforms in order with one generator (inputs copied once, then modified in place)."""

    def __init__(self, transforms: list) -> None:
        self.transforms = list(transforms)

    def apply_(self, image, label, generator):
        for t in self.transforms:
            image, label = t.apply_(image, label, generator) if isinstance(t, Transform) else t(image, label, generator)
        return image, label

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None, generator: torch.Generator) -> Pair:
        if not self.transforms:
            return image, label
        return super().__call__(image, label, generator)


@dataclass
class Augmentation:
    """A spatial warp (coupled to patch cropping) followed by patch-level transforms.

    Attributes:
        spatial: the rotation/scale/elastic warp, or None.
        transforms: flips, intensity transforms, ... applied on the (B, C, *P) patch batch.
    """

    spatial: SpatialAugment | None
    transforms: Compose
    patch_size: tuple[int, ...] | None = None

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None, generator: torch.Generator) -> Pair:
        """Batched use (e.g. on GPU): warp the centre of ``image (B, C, *R)`` to the patch, then transforms."""
        if self.spatial is not None:
            image, label = self.spatial(image, label, generator)
        elif self.patch_size is not None:
            image = centre_crop(image, self.patch_size)
            label = None if label is None else centre_crop(label, self.patch_size)
        return self.transforms(image, label, generator)


def build_augmentation(name: str | Augmentation | None, patch_size: tuple[int, ...],
                       flip_axes: tuple[int, ...] | None = None) -> Augmentation:
    """A named augmentation pipeline for ``patch_size`` (2 or 3 entries).

    ``flip_axes`` limits flips (and the rot90 planes of ``strong``) to those axes of the patch; None: every axis.

    - ``default``: nnU-Net-like — rotation (p 0.2, +-30 deg) + scaling (p 0.2, 0.7-1.4) and flips on every
      axis (p 0.5, folded into the warp), Gaussian noise, blur, brightness, contrast, low resolution, gamma.
    - ``standard``: flips, rotation + scaling, gamma, noise (the benchmark pipeline).
    - ``strong``: ``default`` plus elastic deformation, bias field and rot90 in equal-sized planes.
    - ``none`` (or None): no augmentation.
    """
    if isinstance(name, Augmentation):
        return name
    nd = len(patch_size)
    axes = tuple(range(nd)) if flip_axes is None else tuple(int(a) for a in flip_axes)
    if name in (None, "none"):
        return Augmentation(None, Compose([]), tuple(patch_size))
    if name == "standard":
        return Augmentation(
            SpatialAugment(patch_size, p_rotation=0.2, p_scale=0.2, p_flip=0.5, flip_axes=axes),
            Compose([RandomGamma(p=0.3), RandomNoise(p=0.1)]),
            tuple(patch_size),
        )
    if name in ("default", "strong"):
        strong = name == "strong"
        spatial = SpatialAugment(patch_size, p_rotation=0.2, p_scale=0.2, p_elastic=0.2 if strong else 0.0,
                                 p_flip=0.5, flip_axes=axes)
        ts = [RandomNoise(p=0.1), RandomBlur(p=0.2), RandomBrightness(p=0.15), RandomContrast(p=0.15),
              RandomLowRes(p=0.25), RandomGamma(p=0.1, p_invert=1.0), RandomGamma(p=0.3)]
        if strong:
            ts.insert(0, RandomBiasField(p=0.1))
            ts.append(RandomRot90(p=0.3, axes=axes))
        return Augmentation(spatial, Compose(ts), tuple(patch_size))
    raise ConfigError(f"unknown augmentation '{name}' (known: default, standard, strong, none)")
