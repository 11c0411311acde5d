"""Data pipeline throughput: patch sampling + a standard augmentation, medzoo vs TorchIO vs MONAI.

The same work on every side (``SAME_WORK`` below, printed above the table and stored in the JSON): every
training patch is drawn with foreground oversampling (1/3 of patches centred on foreground) and augmented
INDEPENDENTLY with the nnU-Net-like "standard" pipeline, same transforms, same probabilities:
random flip of each axis (p 0.5 each); a spatial warp with p 0.36 = 1 - 0.8^2 (medzoo: rotation +-30 deg
p 0.2 and isotropic scaling 0.7-1.4 p 0.2, composed into one resampling; the peers: one random affine with
both, p 0.36, so the same fraction of patches is resampled, once); gamma 0.7-1.5 (p 0.3); Gaussian noise
std 0-0.3 (p 0.1). Torch runs with ONE intra-op thread (``--threads`` to change; SimpleITK, which TorchIO
resamples with, gets the same count), as in DataLoader workers, where torch sets one thread per worker.

- medzoo: :class:`~medzoo.data.loader.PatchLoader` over the preprocessed cache (memory-mapped .npy),
  ``augment="standard"``: crop + flip by indexing for the ~64% of patches without a warp; for the others a
  slightly larger crop, resampled once (trilinear image, nearest label) with PyTorch's vectorised 2D
  grid_sample on a stack of its slices (``medzoo.accel.warp``; equals the 3D grid_sample within 1e-3); gamma /
  noise on the patch. Headline:
  ``num_workers=0`` (same thread, like the peers); also one background thread / process.
- TorchIO: ``tio.Queue`` with ``LabelSampler`` (foreground probability 1/3), ``samples_per_volume=1``:
  TorchIO transforms the whole subject before sampling (its design), so each independently augmented
  patch costs one whole-volume augmentation; that is part of its time. Secondary row ``torchio_spv8``:
  ``samples_per_volume=8`` — LESS work per patch (one augmentation shared by 8 correlated patches), shown
  for reference only. Subjects are held in memory (no file I/O), ``num_workers=0``.
- MONAI: ``RandCropByPosNegLabeld`` (pos 1 : neg 2) at the patch size, then ``RandAffined`` (p 0.36,
  zero padding: rotated patches get empty corners — less work than medzoo's border-filling warp),
  ``RandFlipd`` x3, ``RandAdjustContrastd`` (gamma), ``RandGaussianNoised``, on in-memory arrays.

Datasets: MSD Task04 Hippocampus (``../shared/data/Task04_Hippocampus`` or ``$MEDZOO_HIPPOCAMPUS_DIR``;
skipped with a message when absent; MSD data licence CC-BY-SA 4.0) and 160x192x160 two-channel phantoms.

Also measured: one "epoch" reading every hippocampus case (image + label, full arrays) from the NIfTI files
(medzoo.data.loading.load_case) versus from the cache (memory-mapped .npy, copied into memory).

With ``--memory``, each side also draws the same batches in a fresh process of its own, and its peak resident
memory (VmHWM) is reported.

Run: ``python -m benchmarks.data_pipeline [--quick] [--reps N] [--memory]``; writes ``benchmarks/results/data_pipeline.json``.
Ratios are ``peer seconds / medzoo seconds`` for the same number of patches (> 1: medzoo faster).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    apply_threads,
    environment,
    format_table,
    interleaved,
    make_parser,
    peak_rss_mb_subprocess,
    ratio,
    reps_for,
    summarize,
    write_results,
)

NAME = "data_pipeline"

P_FLIP, P_ROTATION, P_SCALE, P_GAMMA, P_NOISE = 0.5, 0.2, 0.2, 0.3, 0.1
P_WARP = 1 - (1 - P_ROTATION) * (1 - P_SCALE)  # 0.36: a patch is resampled when rotated and/or scaled
SAME_WORK = (
    "same work per patch on every side: each patch sampled (1/3 foreground) and augmented independently — "
    f"flip per axis p {P_FLIP}; resampling warp p {P_WARP:.2f} (rotation +-30 deg p {P_ROTATION} and/or "
    f"isotropic scale 0.7-1.4 p {P_SCALE}, one resampling); gamma 0.7-1.5 p {P_GAMMA}; noise std 0-0.3 "
    f"p {P_NOISE}. torchio = Queue samples_per_volume=1 (whole-volume augmentation per patch, its design); "
    "torchio_spv8 = samples_per_volume=8: LESS work per patch (1 augmentation per 8 patches), reference only"
)


def hippocampus_dir() -> Path:
    env = os.environ.get("MEDZOO_HIPPOCAMPUS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"


# --------------------------------------------------------------------------------------------- peers


def torchio_stream(cases, patch_size, batch_size, seed=0, samples_per_volume=1):
    """A function producing one batch from a TorchIO Queue over in-memory subjects (or None)."""
    try:
        import torchio as tio
    except ImportError:
        return None
    torch.manual_seed(seed)
    def padded(a: np.ndarray) -> torch.Tensor:  # TorchIO's samplers need volumes >= the patch (not timed)
        pad = [(0, 0)] + [(0, max(0, p - s)) for p, s in zip(patch_size, a.shape[1:])]
        return torch.from_numpy(np.pad(a, pad))

    subjects = [
        tio.Subject(
            image=tio.ScalarImage(tensor=padded(np.array(c.image))),
            label=tio.LabelMap(tensor=padded(np.array(c.label)[None].astype(np.int64))),
        )
        for c in cases
    ]
    transform = tio.Compose([
        tio.RandomFlip(axes=(0, 1, 2), flip_probability=P_FLIP),
        tio.RandomAffine(scales=(0.7, 1.4), degrees=30, isotropic=True, p=P_WARP, default_pad_value=0),
        tio.RandomGamma(log_gamma=(-0.35, 0.4), p=P_GAMMA),  # gamma 0.70-1.49
        tio.RandomNoise(std=(0, 0.3), p=P_NOISE),
    ])
    dataset = tio.SubjectsDataset(subjects, transform=transform)
    n_classes = int(max(int(np.max(c.label)) for c in cases)) + 1
    probs = {0: 2 / 3}
    probs.update({k: (1 / 3) / (n_classes - 1) for k in range(1, n_classes)})
    sampler = tio.LabelSampler(patch_size, label_name="label", label_probabilities=probs)
    queue = tio.Queue(dataset, max_length=16, samples_per_volume=samples_per_volume, sampler=sampler,
                      num_workers=0)
    loader = torch.utils.data.DataLoader(queue, batch_size=batch_size, num_workers=0)
    state = {"it": iter(loader)}

    def next_batch():
        try:
            b = next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            b = next(state["it"])
        return b["image"][tio.DATA], b["label"][tio.DATA]

    return next_batch


def monai_stream(cases, patch_size, batch_size, seed=0):
    """A function producing one batch with MONAI dictionary transforms on in-memory arrays (or None)."""
    try:
        from monai import transforms as mt
    except ImportError:
        return None
    keys = ["image", "label"]
    pipeline = mt.Compose([
        mt.SpatialPadd(keys, spatial_size=patch_size),
        mt.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=patch_size, pos=1, neg=2, num_samples=1),
        mt.RandAffined(keys, spatial_size=patch_size, prob=P_WARP, rotate_range=[np.pi / 6] * 3,
                       scale_range=[0.35] * 3, mode=("bilinear", "nearest"), padding_mode="zeros"),
        mt.RandFlipd(keys, prob=P_FLIP, spatial_axis=0),
        mt.RandFlipd(keys, prob=P_FLIP, spatial_axis=1),
        mt.RandFlipd(keys, prob=P_FLIP, spatial_axis=2),
        mt.RandAdjustContrastd("image", prob=P_GAMMA, gamma=(0.7, 1.5)),
        mt.RandGaussianNoised("image", prob=P_NOISE, std=0.3),
    ])
    pipeline.set_random_state(seed)
    data = [{"image": np.array(c.image), "label": np.array(c.label)[None]} for c in cases]
    rng = np.random.default_rng(seed)

    def next_batch():
        imgs, labs = [], []
        for _ in range(batch_size):
            out = pipeline(data[int(rng.integers(len(data)))])[0]
            imgs.append(torch.as_tensor(out["image"]))
            labs.append(torch.as_tensor(out["label"]))
        return torch.stack(imgs), torch.stack(labs)

    return next_batch


# ------------------------------------------------------------------------------------------- medzoo


def medzoo_stream(cases, patch_size, batch_size, num_workers=0, worker_mode="thread", seed=0):
    from medzoo.data.loader import PatchLoader

    loader = PatchLoader(cases, patch_size, batch_size, augment="standard", seed=seed,
                         num_workers=num_workers, worker_mode=worker_mode)
    return loader


def throughput_rows(label, cases, patch_size, batch_size, batches, reps, warmup) -> list[dict[str, Any]]:
    streams: dict[str, Any] = {}
    loaders = []
    ours0 = medzoo_stream(cases, patch_size, batch_size, 0)
    ours1 = medzoo_stream(cases, patch_size, batch_size, 1, "thread")
    ours_p = medzoo_stream(cases, patch_size, batch_size, 1, "process")
    loaders += [ours0, ours1, ours_p]
    streams["medzoo"] = lambda: next(ours0)
    streams["medzoo_thread1"] = lambda: next(ours1)
    streams["medzoo_process1"] = lambda: next(ours_p)
    tio_next = torchio_stream(cases, patch_size, batch_size, samples_per_volume=1)
    if tio_next is not None:
        streams["torchio"] = tio_next
        streams["torchio_spv8"] = torchio_stream(cases, patch_size, batch_size, samples_per_volume=8)
    monai_next = monai_stream(cases, patch_size, batch_size)
    if monai_next is not None:
        streams["monai"] = monai_next

    def run_n(fn):
        return lambda: [fn() for _ in range(batches)]

    times = interleaved({k: run_n(v) for k, v in streams.items()}, reps=reps, warmup=warmup)
    for loader in loaders:
        loader.close()
    per = {k: summarize(v)["median"] for k, v in times.items()}
    patches = batches * batch_size
    row: dict[str, Any] = {"workload": label, "patch": "x".join(map(str, patch_size)), "batch": batch_size,
                           "patches_timed": patches}
    for k, sec in per.items():
        row[f"{k}_patches_s"] = patches / sec
    if "torchio" in per:
        row["x_torchio"] = ratio(per["torchio"], per["medzoo"])
        row["x_torchio_thread1"] = ratio(per["torchio"], per["medzoo_thread1"])
        row["x_torchio_spv8"] = ratio(per["torchio_spv8"], per["medzoo"])
    if "monai" in per:
        row["x_monai"] = ratio(per["monai"], per["medzoo"])
    row["seconds"] = {k: summarize(v) for k, v in times.items()}
    return [row]


MEMORY_SIDES = ("medzoo", "torchio", "monai")


def memory_child(side: str, data_root: str, n_cases: int, channels: int, classes: int, cache_dir: str,
                 patch: tuple[int, ...], batch: int, batches: int) -> None:
    """In a fresh process: open the (already built) cache, draw ``batches`` batches from one side's stream.

    The caller reads the process's peak resident memory: that side's own cost for the same patches.
    """
    from medzoo.data.cache import build_cache
    from medzoo.data.layouts import load_dataset
    from medzoo.planning.plan import Plan

    info = load_dataset(data_root)
    info.cases = info.cases[:n_cases]
    plan = Plan(model="unet3d", in_channels=channels, num_classes=classes, normalization=["zscore"] * channels)
    cached = build_cache(info, plan, cache_dir, progress=False)
    if side == "medzoo":
        loader = medzoo_stream(cached, patch, batch, 0)
        draw = lambda: next(loader)  # noqa: E731
    else:
        draw = {"torchio": torchio_stream, "monai": monai_stream}[side](cached, patch, batch)
        if draw is None:
            raise SystemExit(f"{side} is not installed")
    for _ in range(batches):
        draw()


def memory_row(label: str, data_root: Path, n_cases: int, channels: int, classes: int, cache_dir: Path,
               patch: tuple[int, ...], batch: int, batches: int) -> dict[str, Any]:
    """Peak RSS (MiB) of each side drawing the same batches, one fresh process each (``--memory``)."""
    row: dict[str, Any] = {"workload": f"{label} peak RSS", "patch": "x".join(map(str, patch)), "batch": batch}
    for side in MEMORY_SIDES:
        code = (f"from benchmarks.data_pipeline import memory_child\n"
                f"memory_child({side!r}, {str(data_root)!r}, {n_cases}, {channels}, {classes}, "
                f"{str(cache_dir)!r}, {tuple(patch)!r}, {batch}, {batches})")
        row[f"{side}_peak_rss_mb"] = peak_rss_mb_subprocess(code)
    return row


def epoch_rows(info, cached, reps) -> list[dict[str, Any]]:
    """Read every case fully: from NIfTI (load_case, + z-score) vs from the cache (memmaps -> memory)."""
    from medzoo.data.loading import load_case
    from medzoo.planning.plan import Plan
    from medzoo.transforms.preprocess import Preprocessor

    pre = Preprocessor(Plan(model="unet3d", in_channels=1, num_classes=3, normalization=["zscore"]))

    def nifti_epoch():
        for case in info.cases[: len(cached)]:
            image, label = load_case(case, info)
            float(image.array.sum())  # touch

    def nifti_pre_epoch():
        for case in info.cases[: len(cached)]:
            out = pre.apply(*load_case(case, info))
            float(out.image.sum())

    def cache_epoch():  # the loader keeps the cases memory-mapped: an epoch reads the arrays
        for c in cached:
            img, lab = np.array(c.image), np.array(c.label)
            float(img.sum())  # touch
            del lab

    times = interleaved({"nifti": nifti_epoch, "nifti_pre": nifti_pre_epoch, "cache": cache_epoch},
                        reps=reps, warmup=1)
    per = {k: summarize(v)["median"] for k, v in times.items()}
    return [{
        "workload": f"epoch read ({len(cached)} hippocampus cases)",
        "nifti_s": per["nifti"], "nifti_preprocess_s": per["nifti_pre"], "cache_s": per["cache"],
        "x_cache_vs_nifti": ratio(per["nifti"], per["cache"]),
        "x_cache_vs_nifti_preprocess": ratio(per["nifti_pre"], per["cache"]),
    }]


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--hippo-cases", type=int, default=40, help="hippocampus cases used (default 40)")
    parser.add_argument("--memory", action="store_true",
                        help="also the peak RSS of each side drawing the same batches (one fresh process each)")
    args = parser.parse_args(argv)
    threads = apply_threads(args.threads if args.threads is not None else 1)
    try:  # TorchIO resamples with SimpleITK: the same thread budget
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    except ImportError:
        pass
    reps = reps_for(args, default=5, quick=2)
    from medzoo.data.cache import build_cache
    from medzoo.data.layouts import load_dataset
    from medzoo.data.phantom import make_phantom_dataset
    from medzoo.planning.plan import Plan

    results: dict[str, Any] = {"benchmark": NAME, "environment": environment(), "threads": threads,
                               "same_work": SAME_WORK, "rows": []}
    rows = results["rows"]
    with tempfile.TemporaryDirectory(prefix="medzoo_bench_") as tmp:
        tmp = Path(tmp)
        root = hippocampus_dir()
        if (root / "dataset.json").is_file():
            info = load_dataset(root)
            n = 6 if args.quick else args.hippo_cases
            info.cases = info.cases[:n]
            plan = Plan(model="unet3d", in_channels=1, num_classes=3, normalization=["zscore"])
            t0 = time.perf_counter()
            cached = build_cache(info, plan, tmp / "hippo_cache", progress=False)
            rows.append({"workload": f"build cache ({n} hippocampus cases)", "seconds": time.perf_counter() - t0})
            rows += epoch_rows(info, cached, reps)
            patch = (24, 32, 24) if args.quick else (40, 56, 40)
            rows += throughput_rows("hippocampus", cached, patch, 4 if args.quick else 8,
                                    batches=2 if args.quick else 6, reps=reps, warmup=args.warmup)
            if args.memory:
                rows.append(memory_row("hippocampus", root, n, 1, 3, tmp / "hippo_cache", patch,
                                       4 if args.quick else 8, batches=2 if args.quick else 12))
        else:
            msg = f"hippocampus data not found at {root} (set MEDZOO_HIPPOCAMPUS_DIR)"
            print(f"skipping hippocampus: {msg}")
            rows.append({"workload": "hippocampus", "skipped": msg})
        shape = (48, 56, 48) if args.quick else (160, 192, 160)
        ph = make_phantom_dataset(tmp / "phantom", cases=2, seed=0, shape=shape)
        pinfo = load_dataset(ph)
        plan = Plan(model="unet3d", in_channels=2, num_classes=4, normalization=["zscore", "zscore"])
        pcached = build_cache(pinfo, plan, tmp / "phantom_cache", progress=False)
        patch = (32, 32, 32) if args.quick else (96, 96, 96)
        rows += throughput_rows(f"phantom {'x'.join(map(str, shape))}", pcached, patch, 2,
                                batches=2 if args.quick else 8, reps=reps, warmup=args.warmup)
        if args.memory:
            rows.append(memory_row(f"phantom {'x'.join(map(str, shape))}", ph, 2, 2, 4, tmp / "phantom_cache",
                                   patch, 2, batches=2 if args.quick else 8))
    cols = ["workload", "patch", "batch", "medzoo_patches_s", "medzoo_thread1_patches_s",
            "medzoo_process1_patches_s", "torchio_patches_s", "torchio_spv8_patches_s", "monai_patches_s",
            "x_torchio", "x_torchio_thread1", "x_torchio_spv8", "x_monai", "medzoo_peak_rss_mb",
            "torchio_peak_rss_mb", "monai_peak_rss_mb", "nifti_s", "nifti_preprocess_s", "cache_s", "x_cache_vs_nifti", "x_cache_vs_nifti_preprocess",
            "skipped"]
    print(f"threads: {threads}; {SAME_WORK}")
    print(format_table([{k: v for k, v in r.items() if k != "seconds" or not isinstance(v, dict)} for r in rows],
                       cols))
    path = write_results(NAME, results, args.out)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
