"""Cache (build, reuse, invalidate, atomicity) and PatchLoader (shapes, determinism, 2D, samplers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medzoo.data.cache import build_cache, load_cache
from medzoo.data.loader import PatchLoader, slices_with_context
from medzoo.errors import DataError
from medzoo.io.readers import write_volume
from medzoo.io.volume import Volume
from medzoo.planning.plan import Plan
from support.cache import PLAN, SHAPE, make_dataset, oblique_affine  # noqa: F401


def test_cache_builds_memmaps_and_reuses(tmp_path):
    info = make_dataset(tmp_path / "raw")
    cached = build_cache(info, PLAN, tmp_path / "cache", progress=False)
    assert [c.case_id for c in cached] == ["case_0", "case_1", "case_2"]
    c = cached[0]
    assert isinstance(c.image, np.memmap) and c.image.dtype == np.float32
    assert c.image.shape == (2, 16, 14, 10) and c.label.shape == (16, 14, 10)  # cropped to non-zero
    assert c.meta["crop_box"] == [[2, 18], [2, 16], [1, 11]]
    assert set(c.class_locations) == {0, 1, 2}
    locs = c.class_locations[1]
    assert (np.asarray(c.label)[tuple(locs.T)] == 1).all()
    mtime = (tmp_path / "cache" / "case_0_image.npy").stat().st_mtime_ns
    again = build_cache(info, PLAN, tmp_path / "cache", progress=False)
    assert (tmp_path / "cache" / "case_0_image.npy").stat().st_mtime_ns == mtime  # reused
    np.testing.assert_array_equal(again[0].image, c.image)
    assert [x.case_id for x in load_cache(tmp_path / "cache")] == ["case_0", "case_1", "case_2"]
    # a settings change redoes the cases
    plan2 = Plan(**{**PLAN.to_dict(), "normalization": ["zscore", "zscore"]})
    build_cache(info, plan2, tmp_path / "cache", progress=False)
    assert (tmp_path / "cache" / "case_0_image.npy").stat().st_mtime_ns != mtime
    assert json.loads((tmp_path / "cache" / "case_0.json").read_text())["normalization"] == ["zscore", "zscore"]


def test_cache_interrupted_case_is_redone_and_bad_case_leaves_nothing(tmp_path):
    info = make_dataset(tmp_path / "raw", n=2)
    build_cache(info, PLAN, tmp_path / "cache", progress=False)
    (tmp_path / "cache" / "case_1.json").unlink()  # as if interrupted before the metadata was written
    (tmp_path / "cache" / "case_1_image.npy").write_bytes(b"garbage")
    cached = build_cache(info, PLAN, tmp_path / "cache", progress=False)
    assert cached[1].image.shape[0] == 2
    # a bad case: label values outside the declared classes
    bad = np.zeros(SHAPE, np.uint8)
    bad[0, 0, 0] = 7
    write_volume(Volume(bad[None], oblique_affine()), info.cases[0].label_path)
    with pytest.raises(DataError, match="case_0"):
        build_cache(info, PLAN, tmp_path / "cache2", progress=False)
    assert not any((tmp_path / "cache2").glob("case_0*"))
    cached = build_cache(info, PLAN, tmp_path / "cache2", progress=False, skip_bad_cases=True)
    assert [c.case_id for c in cached] == ["case_1"]


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    info = make_dataset(root / "raw")
    return build_cache(info, PLAN, root / "cache", progress=False)


def test_loader_shapes_and_determinism(cached):
    a = PatchLoader(cached, (8, 8, 6), 3, seed=5, num_workers=0, augment="strong")
    b = PatchLoader(cached, (8, 8, 6), 3, seed=5, num_workers=1, augment="strong")
    for _ in range(3):
        (xa, ya), (xb, yb) = next(a), next(b)
        assert xa.shape == (3, 2, 8, 8, 6) and xa.dtype == torch.float32
        assert ya.shape == (3, 8, 8, 6) and ya.dtype == torch.int64
        torch.testing.assert_close(xa, xb)
        torch.testing.assert_close(ya, yb)
    b.close()
    c = PatchLoader(cached, (8, 8, 6), 3, seed=6, num_workers=0, augment="strong")
    assert not torch.equal(next(c)[0], next(PatchLoader(cached, (8, 8, 6), 3, seed=5, num_workers=0,
                                                           augment="strong"))[0])


def test_loader_foreground_oversampling(cached):
    loader = PatchLoader(cached, (4, 4, 4), 4, oversample_foreground=1.0, augment="none", num_workers=0)
    for _ in range(5):
        _, y = next(loader)
        assert all(y[i].any() for i in range(4))  # every patch holds foreground
    uniform = PatchLoader(cached, (4, 4, 4), 4, sampler="uniform", augment="none", num_workers=0)
    fg = np.mean([next(uniform)[1].reshape(4, -1).any(1).float().mean().item() for _ in range(5)])
    assert fg < 1.0


def test_loader_2d_with_context_matches_slices(cached):
    loader = PatchLoader(cached, (16, 14), 2, spatial_dims=2, slice_axis=2, context_slices=1,
                         augment="none", sampler="uniform", num_workers=0)
    x, y = next(loader)
    assert x.shape == (2, 6, 16, 14) and y.shape == (2, 16, 14)
    # each sample equals some slice of some case, built the way the predictor builds it
    stacks = [slices_with_context(np.asarray(c.image), 2, 1) for c in cached]
    labels = [torch.from_numpy(np.array(c.label)).long().movedim(2, 0) for c in cached]
    for i in range(2):
        hits = [(s, k) for s in range(3) for k in range(stacks[s].shape[0]) if torch.equal(stacks[s][k], x[i])]
        assert hits
        s, k = hits[0]
        assert torch.equal(labels[s][k], y[i])


def test_samplers_class_balanced_and_threshold(cached):
    from medzoo.data.sampling import ThresholdSampler, crop_with_padding, get_sampler

    rng = np.random.default_rng(0)
    case = cached[0]
    balanced = get_sampler("class_balanced")
    hits = {0: 0, 1: 0, 2: 0}
    for _ in range(60):
        centre = balanced(case, (1, 1, 1), rng)
        hits[int(case.label[tuple(centre)])] += 1
    assert all(n > 8 for n in hits.values())  # each of the 3 classes about a third of the time
    sampler = ThresholdSampler(threshold=0.2, max_tries=50)
    for _ in range(5):
        centre = sampler(case, (6, 6, 4), rng)
        assert np.count_nonzero(crop_with_padding(case.label, centre, (6, 6, 4))) / 144 > 0.2
    with pytest.raises(Exception, match="unknown sampler"):
        get_sampler("nope")


def test_crop_with_padding_outside_and_into_flipped_view():
    from medzoo.data.sampling import crop_with_padding

    a = np.arange(2 * 5 * 4 * 3, dtype=np.float32).reshape(2, 5, 4, 3)
    block = crop_with_padding(a, (0, 0, 1), (4, 2, 3))  # starts at (-2, -1, 0)
    assert block.shape == (2, 4, 2, 3)
    np.testing.assert_array_equal(block[:, 2:, 1:], a[:, :2, :1])
    assert (block[:, :2] == 0).all() and (block[:, :, :1] == 0).all()
    out = np.empty((2, 4, 2, 3), np.float32)
    crop_with_padding(a, (3, 2, 1), (4, 2, 3), out=out[:, ::-1])
    np.testing.assert_array_equal(out, a[:, 1:5, 1:3][:, ::-1])


def test_loader_process_workers_same_stream(cached):
    a = PatchLoader(cached, (8, 8, 6), 2, seed=1, num_workers=0, augment="default")
    b = PatchLoader(cached, (8, 8, 6), 2, seed=1, num_workers=1, worker_mode="process", augment="default")
    try:
        for _ in range(2):
            (xa, ya), (xb, yb) = next(a), next(b)
            torch.testing.assert_close(xa, xb)
            assert torch.equal(ya, yb)
    finally:
        b.close()


def test_loader_threads_run_torch_on_one_thread_and_leave_the_others_alone(cached, monkeypatch):
    """A loader thread's torch ops use one OpenMP thread (two full-width teams stall training on a small
    machine); the training thread and threads started later keep the process's count."""
    import threading

    from medzoo.data.loader import PatchLoader

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        original = PatchLoader.make_batch

        def recording(self, index):
            seen.append(torch.get_num_threads())
            return original(self, index)

        monkeypatch.setattr(PatchLoader, "make_batch", recording)
        loader = PatchLoader(cached, (8, 8, 6), 2, seed=0, num_workers=1, augment="standard")
        next(loader)
        loader.close()
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
        later = []
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert later == [2]
    finally:
        torch.set_num_threads(before)
