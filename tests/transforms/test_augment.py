"""Augmentations: image and label transformed identically, reproducible, correct axis conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medzoo.transforms import augment as A


def blobs(shape=(2, 17, 15, 13), seed=0) -> torch.Tensor:
    """Label batch (B, *S) with a few boxes of classes 1..3."""
    g = torch.Generator().manual_seed(seed)
    lab = torch.zeros(shape, dtype=torch.int64)
    for b in range(shape[0]):
        for k in (1, 2, 3):
            lo = [int(torch.randint(0, s - 5, (1,), generator=g)) for s in shape[1:]]
            lab[(b,) + tuple(slice(a, a + 5) for a in lo)] = k
    return lab


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("p_elastic", [0.0, 1.0])
def test_spatial_nearest_image_matches_label_exactly(p_elastic):
    lab = blobs()
    img = torch.stack([lab * 10.0, lab * -3.0], dim=1)  # (B, 2, *S) derived from the label
    aug = A.SpatialAugment((11, 9, 7), p_rotation=1.0, p_scale=1.0, p_elastic=p_elastic, image_mode="nearest")
    out, out_lab = aug(img, lab, gen(3))
    assert out.shape == (2, 2, 11, 9, 7) and out_lab.shape == (2, 11, 9, 7) and out_lab.dtype == torch.int64
    torch.testing.assert_close(out[:, 0], out_lab.float() * 10.0)
    torch.testing.assert_close(out[:, 1], out_lab.float() * -3.0)
    assert out_lab.unique().numel() > 1


def test_spatial_linear_image_agrees_with_label():
    lab = blobs((2, 30, 30, 30), seed=1)
    img = (lab * 10.0)[:, None]
    aug = A.SpatialAugment((20, 20, 20), p_rotation=1.0, p_scale=1.0, p_elastic=1.0)
    out, out_lab = aug(img, lab, gen(4))
    agree = (torch.round(out[:, 0] / 10.0).long() == out_lab).float().mean().item()
    assert agree > 0.95
    # where the linear interpolation is not at a class edge, it matches exactly
    assert (torch.round(out[:, 0] / 10.0).long() != out_lab).float().mean().item() < 0.05


def test_spatial_rotation_axis_convention_2d_and_3d():
    x = torch.arange(7 * 7, dtype=torch.float32).reshape(1, 1, 7, 7)
    aug = A.SpatialAugment((7, 7), image_mode="nearest")
    m = A.rotation_matrix([np.pi / 2])  # v_in = M v_out: out[i, j] = in[c - (j - c), i]
    out, _ = aug.warp(x, None, [A.SpatialParams(m, None, (7, 7))])
    torch.testing.assert_close(out, torch.rot90(x, 3, [2, 3]))
    # 3D, non-cubic: rotation about axis I acts in the (J, K) plane only
    y = torch.arange(5 * 7 * 7, dtype=torch.float32).reshape(1, 1, 5, 7, 7)
    aug3 = A.SpatialAugment((5, 7, 7), image_mode="nearest")
    m3 = A.rotation_matrix([np.pi / 2, 0.0, 0.0])
    out3, _ = aug3.warp(y, None, [A.SpatialParams(m3, None, (5, 7, 7))])
    torch.testing.assert_close(out3, torch.rot90(y, 3, [3, 4]))


def test_spatial_identity_is_centre_crop_and_scale_zooms():
    x = torch.randn(1, 1, 12, 10, 9)
    aug = A.SpatialAugment((6, 6, 5), image_mode="nearest")
    ident = A.SpatialParams(torch.eye(3, dtype=torch.float64), None, (12, 10, 9))
    out, _ = aug.warp(x, None, [ident])
    torch.testing.assert_close(out, x[:, :, 3:9, 2:8, 2:7])  # start = R // 2 - P // 2
    # zoom 2 (input offsets halved): output voxel pairs come from one input voxel
    big = torch.arange(8.0).repeat_interleave(1).reshape(1, 1, 8, 1, 1).expand(1, 1, 8, 3, 3).contiguous()
    augz = A.SpatialAugment((8, 3, 3), image_mode="bilinear")
    half = A.SpatialParams(torch.diag(torch.tensor([0.5, 1.0, 1.0], dtype=torch.float64)), None, (8, 3, 3))
    z, _ = augz.warp(big, None, [half])
    torch.testing.assert_close(z[0, 0, :, 1, 1], torch.tensor([1.75, 2.25, 2.75, 3.25, 3.75, 4.25, 4.75, 5.25]))


def test_region_covers_rotated_patch():
    aug = A.SpatialAugment((16, 16, 8), p_rotation=1.0, p_scale=1.0, scale=(0.7, 0.7))
    prm = aug.sample(gen(0))
    assert all(r >= p for r, p in zip(prm.region, (16, 16, 8)))
    assert all((r - p) % 2 == 0 for r, p in zip(prm.region, (16, 16, 8)))
    # a full region of ones warps to all ones: the patch never reads outside the region
    ones = torch.ones((1, 1) + prm.region)
    out, _ = aug.warp(ones, None, [prm])
    assert out.min().item() > 0.999


@pytest.mark.parametrize("t", [A.RandomFlip((0, 1, 2), p=0.5), A.RandomRot90(p=1.0)])
def test_flip_and_rot90_keep_image_label_pairing(t):
    lab = blobs((4, 9, 9, 6))
    img = torch.stack([lab * 10.0, lab + 0.5], 1)
    out, out_lab = t(img, lab, gen(1))
    torch.testing.assert_close(out[:, 0], out_lab.float() * 10.0)
    torch.testing.assert_close(out[:, 1], out_lab.float() + 0.5)
    assert not torch.equal(out_lab, lab)


INTENSITY = [A.RandomGamma(p=1.0), A.RandomGamma(p=1.0, p_invert=1.0), A.RandomBrightness(p=1.0),
             A.RandomContrast(p=1.0), A.RandomNoise(p=1.0), A.RandomBlur(p=1.0), A.RandomBiasField(p=1.0),
             A.RandomLowRes(p=1.0, zoom=(0.5, 0.6))]


@pytest.mark.parametrize("t", INTENSITY, ids=lambda t: type(t).__name__)
def test_intensity_transforms_reproducible_and_label_untouched(t):
    lab = blobs((3, 10, 9, 8))
    img = torch.rand(3, 2, 10, 9, 8, generator=gen(5)) + lab[:, None] * 2.0
    a, la = t(img, lab, gen(7))
    b, lb = t(img, lab, gen(7))
    c, _ = t(img, lab, gen(8))
    assert a.shape == img.shape and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    assert torch.equal(la, lab)
    assert not torch.allclose(a, img) and not torch.allclose(a, c)


def test_intensity_specific_properties():
    img = torch.rand(2, 1, 12, 12, 12, generator=gen(0)) * 5 + 1
    g, _ = A.RandomGamma(p=1.0)(img, None, gen(1))
    torch.testing.assert_close(g.mean((2, 3, 4)), img.mean((2, 3, 4)), atol=1e-4, rtol=1e-4)
    blurred, _ = A.RandomBlur(p=1.0)(img, None, gen(1))
    assert (blurred.std((2, 3, 4)) < img.std((2, 3, 4))).all()
    skip, _ = A.RandomNoise(p=0.0)(img, None, gen(1))
    assert torch.equal(skip, img)


def test_2d_pipeline_and_named_augmentations():
    lab = blobs((2, 20, 18))
    img = (lab * 10.0)[:, None]
    for name in ("default", "standard", "strong", "none"):
        aug = A.build_augmentation(name, (12, 10))
        out, out_lab = aug(img, lab, gen(2))
        assert out.shape == (2, 1, 12, 10) and out_lab.shape == (2, 12, 10)
    with pytest.raises(Exception, match="unknown augmentation"):
        A.build_augmentation("wild", (8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_augmentation_same_on_gpu_and_cpu():
    lab = blobs((2, 20, 20, 20))
    img = torch.stack([lab * 10.0, lab * 1.0], 1)
    aug = A.build_augmentation("standard", (12, 12, 12))
    aug.spatial.p_rotation = aug.spatial.p_scale = 1.0
    cpu, cl = aug(img, lab, gen(3))
    gpu, gl = aug(img.cuda(), lab.cuda(), gen(3))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)
    assert (gl.cpu() == cl).float().mean() > 0.999


def test_flips_folded_into_warp_equal_flipping_after():
    x = torch.randn(1, 2, 9, 8, 7, generator=gen(0))
    lab = (x[:, 0] > 0).long()
    aug = A.SpatialAugment((9, 8, 7), image_mode="nearest")
    m = torch.diag(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    plain, plain_lab = aug.warp(x, lab, [A.SpatialParams(m, None, (9, 8, 7))])
    flipped, flipped_lab = aug.warp(x, lab, [A.SpatialParams(m, None, (9, 8, 7), flips=(0, 2))])
    torch.testing.assert_close(flipped, torch.flip(plain, [2, 4]))
    assert torch.equal(flipped_lab, torch.flip(plain_lab, [1, 3]))
    # without a warp the flip is applied to the crop
    only, _ = aug.warp(x, lab, [A.SpatialParams(None, None, (9, 8, 7), flips=(1,))])
    torch.testing.assert_close(only, torch.flip(x, [3]))


def reference_grid(aug, params, region):
    """Independent oracle for ``SpatialAugment.grid``: the warp as a matrix in torch's normalised coordinates,
    through ``F.affine_grid``, plus the (normalised, flipped) elastic displacement."""
    nd, P = aug.nd, aug.patch_size
    R = torch.tensor(region, dtype=torch.float64)
    thetas = []
    for prm in params:
        m = torch.eye(nd, dtype=torch.float64) if prm.matrix is None else prm.matrix
        if prm.flips:
            m = m @ torch.diag(torch.tensor([-1.0 if a in prm.flips else 1.0 for a in range(nd)], dtype=torch.float64))
        theta = torch.diag(2.0 / R) @ m @ torch.diag(torch.tensor(P, dtype=torch.float64) / 2.0)
        thetas.append(torch.cat([theta.flip(0).flip(1), torch.zeros(nd, 1, dtype=torch.float64)], dim=1))
    grid = torch.nn.functional.affine_grid(torch.stack(thetas).float(), [len(params), 1, *P], align_corners=False)
    for b, prm in enumerate(params):
        if prm.displacement is not None:
            d = prm.displacement.float()
            if prm.flips:
                d = torch.flip(d, [a + 1 for a in prm.flips])
            d = d * (2.0 / R.float()).reshape((nd,) + (1,) * nd)
            grid[b] += torch.movedim(d.flip(0), 0, -1)
    return grid


@pytest.mark.parametrize("p_elastic", [0.0, 1.0])
def test_grid_equals_affine_grid_oracle(p_elastic):
    g = gen(7)
    aug = A.SpatialAugment((13, 11, 9), p_rotation=1.0, p_scale=1.0, p_elastic=p_elastic, p_flip=0.5)
    params = [aug.sample(g) for _ in range(4)]
    region = (31, 29, 27)
    torch.testing.assert_close(aug.grid(params, region), reference_grid(aug, params, region), atol=1e-5, rtol=0)


@pytest.mark.parametrize("p_elastic", [0.0, 1.0])
def test_cpu_slice_stack_warp_equals_3d_grid_sample(p_elastic):
    """The CPU 3D path (2D samplers on slice stacks) equals ``grid_sample`` 3D on the same grid."""
    g = gen(5)
    aug = A.SpatialAugment((13, 11, 9), p_rotation=1.0, p_scale=1.0, p_elastic=p_elastic, p_flip=0.5)
    params = [aug.sample(g) for _ in range(3)]
    region = (31, 29, 27)  # larger than every draw's region: parts of the grid also fall outside
    img = torch.randn(3, 2, *region, generator=g)
    lab = blobs((3, *region), seed=2)
    ref_grid = reference_grid(aug, params, region)
    ref = torch.nn.functional.grid_sample(img, ref_grid, mode="bilinear", align_corners=False)
    ref_lab = torch.nn.functional.grid_sample(lab[:, None].float(), ref_grid, mode="nearest", align_corners=False)
    out, out_lab = aug.warp(img, lab, params)
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=0)
    assert torch.equal(out_lab, ref_lab[:, 0].long()) and out_lab.dtype == torch.int64
    # region edges: zero padding as in 3D (a sample fully outside is exactly 0)
    far = [A.SpatialParams(torch.eye(3, dtype=torch.float64) * 3.0, None, region)]
    far_out, _ = aug.warp(img[:1], lab[:1], far)
    far_ref = torch.nn.functional.grid_sample(img[:1], reference_grid(aug, far, region), align_corners=False)
    torch.testing.assert_close(far_out, far_ref, atol=1e-3, rtol=0)
    assert (far_out == 0).any()


def test_loader_batches_keep_image_label_aligned_through_the_warp():
    """PatchLoader crops into the warp's slice stacks: an image derived from the label stays equal to it."""
    from medzoo.data.loader import PatchLoader

    class Case:
        def __init__(self, label):
            self.label = label.numpy().astype(np.uint8)
            self.image = (self.label[None] * np.float32(10.0)).astype(np.float32)
            self.shape = self.label.shape
            self.class_locations = {k: np.argwhere(self.label == k) for k in (0, 1, 2, 3)}

    cases = [Case(blobs((1, 24, 22, 20), seed=s)[0]) for s in range(2)]
    aug = A.build_augmentation("standard", (12, 10, 8))
    aug.spatial.p_rotation = aug.spatial.p_scale = 1.0
    aug.spatial.image_mode = "nearest"
    aug.transforms = A.Compose([])
    loader = PatchLoader(cases, (12, 10, 8), 4, augment=aug, seed=1, num_workers=0)
    image, label = loader.make_batch(0)
    assert image.shape == (4, 1, 12, 10, 8) and label.dtype == torch.int64
    torch.testing.assert_close(image[:, 0], label.float() * 10.0)
    assert label.unique().numel() > 2
    again, again_lab = loader.make_batch(0)
    assert torch.equal(again, image) and torch.equal(again_lab, label)  # reproducible by (seed, index)
