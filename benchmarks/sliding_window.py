"""Sliding-window inference: medzoo vs MONAI, core and end to end.

The network: ``unet3d`` (features 8,16,32,64, one input channel, 4 classes) trained for a few seconds on
patches of a brain-like head phantom (different seed from the one predicted), so its labels mean something
(air -> background) and "equal labels" is a real check. Weights are cached in
``benchmarks/results/sliding_window_net_*.pt`` (a stale or missing cache is simply retrained).

The phantom (:func:`head_phantom`): 160x192x160 on an oblique, anisotropic grid; a head ellipsoid (scalp,
skull, CSF, wavy brain) with air exactly 0 outside it, about 45 % of the voxels non-zero, like a real head
MRI in that field of view. Labels: 0 air/background, 1 scalp+skull, 2 CSF, 3 brain.

1. Core: the same network and input through ``medzoo.inference.sliding_window`` and
   ``monai.inferers.sliding_window_inference`` with identical window settings (patch 96, overlap 0.5,
   Gaussian sigma 0.125, batch 4). Checks blended outputs within 1e-4 and identical labels; time ratio.
2. End to end, each run in a fresh process (so peak RSS is its own), interleaved, read to written file,
   imports excluded:
   - ``medzoo``: ``medzoo.inference.predict`` with its defaults: the plan crops to the non-zero region and
     z-scores non-zero voxels, windows whose input is all air are skipped, and on the CPU the network runs
     under the runtime ``backend="auto"`` picks (:func:`medzoo.inference.backends.resolve_backend`:
     OpenVINO in fp32 through an export cached in the run folder, PyTorch under bf16 autocast on a CPU with
     native bf16). The export and its checks are made before the timed runs (once per checkpoint; reported
     as ``export_s``, the chosen runtimes as ``medzoo_backend``; a network that does not export is reported
     there, and predicted with PyTorch).
   - ``medzoo_fp32``: the same with ``amp="none"``: every runtime in fp32, labels equal to fp32's up to
     near-ties.
   - ``medzoo_openvino``, ``medzoo_onnxruntime`` and ``medzoo_torch``: the same in fp32 with
     ``backend="openvino"`` / ``"onnxruntime"`` / ``"torch"`` (eager PyTorch, in the layout the card asks
     for: channels-last for unet3d on the CPU), to show what each backend brings;
     ``medzoo_torch_contiguous``: PyTorch in the default layout, MONAI's exact arithmetic.
   - ``monai``: the MONAI equivalent of that pipeline: LoadImage + CropForeground (``x > 0``, the same box
     medzoo crops to) + NormalizeIntensity(nonzero, channel-wise) + sliding_window_inference (same window
     settings) + argmax, pasted back into the full grid as background, + SaveImage. ``monai_amp``: the same
     under the autocast medzoo's default uses (bf16 on the CPU).
   All sides then tile the same box with the same windows, so the label maps agree except where a runtime's
   float rounding (ONNX Runtime about 1e-5, OpenVINO about 1e-4 on the logits) flips a near-tie; the row
   reports the agreement (all voxels, inside the head), the number of differing voxels per backend and the
   per-class Dice between the maps and against the truth, and, for each side, the largest top-two
   probability gap of MONAI's fp32 softmax among the voxels that differ (from one more, untimed MONAI pass):
   a small gap means only near-ties flipped.

Run: ``python -m benchmarks.sliding_window [--quick] [--reps N] [--threads N] [--skip-core]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    RESULTS_DIR,
    apply_threads,
    environment,
    format_table,
    interleaved,
    make_parser,
    median,
    ratio,
    reps_for,
    summarize,
    write_results,
)

NAME = "sliding_window"
NUM_CLASSES = 4
CLASS_NAMES = {0: "background", 1: "skull", 2: "csf", 3: "brain"}


# ----------------------------------------------------------------------------------------------- phantom
def head_phantom(seed: int, shape: tuple[int, int, int], spacing=(1.0, 1.0, 1.2)):
    """A head MRI phantom with an empty (exactly zero) air background.

    Args:
        seed: everything random comes from ``numpy.random.default_rng(seed)``.
        shape: (I, J, K).
        spacing: voxel size in mm (the affine is also rotated, i.e. oblique).

    Returns:
        ``(image, label)`` Volumes: image (1, I, J, K) float32, > 0 inside the head and exactly 0 outside;
        label (1, I, J, K) uint8 (0 background, 1 scalp+skull, 2 CSF, 3 brain).
    """
    from medzoo.io.volume import Volume, make_affine

    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij")
    centre = rng.uniform(-0.03, 0.03, size=3)
    radii = np.array([0.94, 0.96, 0.94]) * rng.uniform(0.98, 1.02, size=3)
    q = [(g - np.float32(c)) / np.float32(r) for g, c, r in zip(grids, centre, radii)]
    r = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
    waves = sum(np.sin(np.float32(f) * qk / np.maximum(r, 1e-3) + np.float32(ph))
                for qk, f, ph in zip(q, rng.uniform(4, 7, 3), rng.uniform(0, 6.3, 3))) / 3.0  # fmt: skip
    tissue = np.zeros(shape, dtype=np.uint8)  # 0 air, 1 scalp, 2 skull, 3 csf, 4 brain
    tissue[r < 1.0] = 1
    tissue[r < 0.92] = 2
    tissue[r < 0.85] = 3
    tissue[r < 0.78 + 0.04 * waves] = 4
    label = np.array([0, 1, 1, 2, 3], dtype=np.uint8)[tissue]
    means = np.array([0.0, 700.0, 120.0, 250.0, 600.0], dtype=np.float32) * rng.uniform(0.95, 1.05, 5)
    image = means[tissue].astype(np.float32)
    image *= np.exp(0.1 * grids[0] - 0.08 * grids[2]).astype(np.float32)  # smooth bias field
    image += rng.standard_normal(shape, dtype=np.float32) * np.float32(20.0)
    head = tissue > 0
    np.clip(image, 1.0, None, out=image)
    image[~head] = 0.0  # air: exactly zero
    angle = np.deg2rad(10.0)
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = make_affine(tuple(spacing), (-80.0, -100.0, -90.0), rot)
    return Volume(image[None], affine, {}), Volume(label[None], affine.copy(), {})


# ----------------------------------------------------------------------------------------------- network
def _untrained(features: tuple[int, ...]) -> torch.nn.Module:
    import medzoo

    torch.manual_seed(0)
    return medzoo.create_model("unet3d", in_channels=1, num_classes=NUM_CLASSES, features=features)


def trained_net(shape, features, steps: int, patch: int, cache_dir: Path | None, device: str = "cpu"
                ) -> tuple[torch.nn.Module, dict]:
    """The benchmark network, trained on phantom seed 1 patches on ``device`` (cached by settings); returned
    on the CPU in eval mode."""
    key = hashlib.sha1(json.dumps([list(shape), list(features), steps, patch, 2]).encode()).hexdigest()[:10]
    cache = None if cache_dir is None else Path(cache_dir) / f"{NAME}_net_{key}.pt"
    net = _untrained(features)
    info: dict[str, Any] = {"train_steps": steps, "train_patch": patch}
    if cache is not None and cache.exists():
        net.load_state_dict(torch.load(cache, weights_only=True))
        info["cached"] = True
        return net.eval(), info
    image, label = head_phantom(1, shape)
    x = image.array[0]
    mask = x != 0
    x = np.where(mask, (x - x[mask].mean()) / x[mask].std(), 0).astype(np.float32)
    y = label.array[0].astype(np.int64)
    rng = np.random.default_rng(0)
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    started = time.perf_counter()
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(2):
            lo = [int(rng.integers(0, n - patch + 1)) for n in shape]
            sl = tuple(slice(a, a + patch) for a in lo)
            xs.append(x[sl])
            ys.append(y[sl])
        xb = torch.from_numpy(np.stack(xs))[:, None].to(device)
        yb = torch.from_numpy(np.stack(ys)).to(device)
        loss = torch.nn.functional.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    info.update(cached=False, train_seconds=time.perf_counter() - started, final_loss=float(loss.detach()))
    net.cpu().eval()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), cache)
    return net, info


def dice_between(a: np.ndarray, b: np.ndarray, classes: int) -> dict[str, float]:
    """Per-class Dice of two label maps (1.0 when a class is absent from both)."""
    out = {}
    for k in range(classes):
        pa, pb = a == k, b == k
        denom = int(pa.sum()) + int(pb.sum())
        out[CLASS_NAMES.get(k, str(k))] = 1.0 if denom == 0 else 2.0 * int((pa & pb).sum()) / denom
    return out


# -------------------------------------------------------------------------------------------------- core
def core(net, shape, patch, batch, reps, warmup, device: str = "cpu", dtype: torch.dtype | None = None,
         sync: Callable[[Callable[[], Any]], Callable[[], Any]] | None = None) -> dict[str, Any]:
    """The same network and input through both sliding windows, interleaved.

    ``device``: where the network and the volume live. ``dtype``: autocast both to it (then the outputs are
    compared, not required to match). ``sync`` wraps each timed call (the GPU benchmark passes one that
    synchronizes CUDA around it).
    """
    from monai.inferers import sliding_window_inference

    from medzoo.inference import sliding_window

    image, _ = head_phantom(0, shape)
    raw = torch.from_numpy(image.array)[None]
    nz = raw != 0
    x = torch.where(nz, (raw - raw[nz].mean()) / raw[nz].std(), torch.zeros(())).to(device)
    net = net.to(device)
    kw = {"overlap": 0.5}

    def amp():
        return torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def run_monai():
        with torch.inference_mode(), amp():
            return sliding_window_inference(x, patch, batch, net, mode="gaussian", sigma_scale=0.125, **kw)

    def run_medzoo():
        with amp():
            return sliding_window(x, net, patch, blend="gaussian", batch_size=batch, **kw)

    ref, ours = run_monai().float(), run_medzoo()
    max_diff = float((ours - ref).abs().max())
    labels_equal = bool(torch.equal(ours.argmax(1), ref.argmax(1)))
    agreement = float((ours.argmax(1) == ref.argmax(1)).float().mean())
    if dtype is None:
        assert max_diff < 1e-4, f"blended outputs differ by {max_diff}"
        assert labels_equal, "label maps differ"
    wrap = sync or (lambda fn: fn)
    times = interleaved({"medzoo": wrap(run_medzoo), "monai": wrap(run_monai)}, reps=reps, warmup=warmup)
    m, p = summarize(times["medzoo"]), summarize(times["monai"])
    return {
        "workload": f"core sliding window {'x'.join(map(str, shape))} patch {patch[0]} batch {batch}",
        "medzoo_s": m["median"], "monai_s": p["median"], "ratio_monai_over_medzoo": ratio(p["median"], m["median"]),
        "max_abs_diff": max_diff, "labels_identical": labels_equal, "label_agreement": agreement,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------- end to end
def _monai_net(folder: Path, device: str) -> torch.nn.Module:
    from medzoo.models import create_model  # the same network class, loaded from the same weights

    net = create_model("unet3d", **json.loads((folder / "net.json").read_text()))
    net.load_state_dict(torch.load(folder / "net.pt", weights_only=True))
    return net.to(device).eval()


def _monai_logits(net, folder: Path, patch, batch: int, device: str, amp_dtype=None):
    """MONAI's pipeline up to the blended logits: (image MetaTensor, crop box, logits (1, K, *box))."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import CropForeground, LoadImage, NormalizeIntensity

    loader = LoadImage(image_only=True, ensure_channel_first=True)
    norm = NormalizeIntensity(nonzero=True, channel_wise=True)
    img = loader(str(folder / "in" / "case.nii.gz"))
    cropper = CropForeground(select_fn=lambda x: x > 0, margin=0, allow_smaller=True)
    start, end = cropper.compute_bounding_box(img)
    box = tuple(slice(int(a), int(b)) for a, b in zip(start, end))
    x = norm(cropper.crop_pad(img, start, end)).to(device)
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=amp_dtype or torch.float32,
                                                 enabled=amp_dtype is not None):
        logits = sliding_window_inference(x[None], patch, batch, net, overlap=0.5, mode="gaussian",
                                          sigma_scale=0.125)  # fmt: skip
    return img, box, logits


def _top_two_gap(folder: Path, patch, batch: int, device: str) -> np.ndarray:
    """MONAI's fp32 softmax, top-two probability gap per voxel of the full grid (1 outside the crop box)."""
    img, box, logits = _monai_logits(_monai_net(folder, device), folder, patch, batch, device)
    top2 = torch.softmax(logits[0].float(), 0).topk(2, dim=0).values.cpu()
    gap = np.ones(tuple(img.shape[1:]), dtype=np.float32)
    gap[box] = (top2[0] - top2[1]).numpy()
    return gap


def _child(side: str, folder: Path, patch: tuple[int, ...], batch: int, device: str = "cpu") -> dict[str, Any]:
    """One end-to-end prediction on ``device`` in this (fresh) process; returns seconds and peak RSS."""
    import re

    if side.startswith("medzoo"):
        from medzoo.inference.predictor import predict

        backend = {"medzoo_torch": "torch", "medzoo_torch_contiguous": "torch", "medzoo_openvino": "openvino",
                   "medzoo_onnxruntime": "onnxruntime"}.get(side, "auto")  # fmt: skip
        layout = "contiguous" if side == "medzoo_torch_contiguous" else "auto"
        out = folder / side

        def run():
            if side == "medzoo_export":  # the one-off export and checks (cached in the run folder)
                from medzoo.inference.backends import cached_onnx_export, load_backend

                picks = [] if cached_onnx_export(folder / "run") is not None else ["export failed"]
                for amp in ("auto", "none"):  # the default (bf16 where native) and fp32
                    model, _ = load_backend(folder / "run", backend="auto", device="cpu", batch_size=batch, amp=amp)
                    name = "PyTorch" if isinstance(model, torch.nn.Module) else type(model).__name__
                    picks.append(f"{name} (amp {amp})")
                (folder / "auto_backend.txt").write_text(", ".join(picks))
                return
            # every side but the default one predicts in fp32: runtimes compared at equal precision
            report = predict(folder / "run", folder / "in" / "case.nii.gz", out, progress=False, device=device,
                             backend=backend, amp="auto" if side == "medzoo" else "none",
                             memory_format=layout)  # fmt: skip
            assert report.ok, report.failed
    else:
        from monai.transforms import SaveImage

        net = _monai_net(folder, device)
        amp_dtype = None
        if side == "monai_amp":  # MONAI under the autocast medzoo predict picks on a GPU (bf16 on the CPU)
            from medzoo.runtime import cuda_amp_dtype

            amp_dtype = cuda_amp_dtype("auto") if torch.device(device).type == "cuda" else torch.bfloat16

        def run():
            saver = SaveImage(output_dir=str(folder / side), output_postfix="", separate_folder=False,
                              output_dtype=np.uint8, resample=False, print_log=False)  # fmt: skip
            img, box, logits = _monai_logits(net, folder, patch, batch, device, amp_dtype)
            labels = torch.zeros_like(img, dtype=torch.uint8)  # MetaTensor: keeps the image's affine
            labels[(slice(None), *box)] = logits[0].argmax(0, keepdim=True).to(torch.uint8).cpu()
            saver(labels)

    started = time.perf_counter()
    run()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    status = Path("/proc/self/status").read_text()
    rss = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024.0
    return {"seconds": seconds, "peak_rss_mb": rss}


def _spawn(side: str, folder: Path, patch, batch, threads: int, device: str = "cpu") -> dict[str, Any]:
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "benchmarks.sliding_window", "--child", side, "--child-dir", str(folder),
           "--child-patch", ",".join(map(str, patch)), "--batch", str(batch), "--threads", str(threads),
           "--child-device", device]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("CHILD "):
            return json.loads(line[6:])
    raise RuntimeError(f"{side} end-to-end run failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")


def end_to_end(net, features, shape, patch, batch, reps, threads, device: str = "cpu",
               sides: Sequence[str] | None = None) -> dict[str, Any]:
    """File in, file out, each side in fresh processes on ``device``. On the CPU: medzoo's default, medzoo in
    fp32 and each fp32 runtime against MONAI in fp32 and under bf16 autocast. On a GPU: medzoo's default
    (PyTorch under autocast) and medzoo in fp32 (``amp="none"``) against MONAI in fp32 and MONAI under the
    same autocast. Labels are compared with
    MONAI's fp32 map. ``sides`` overrides the list (the first is medzoo's default, one is "monai"). The
    files live in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="medzoo_bench_sw_") as folder:
        return _end_to_end_in(Path(folder), net, features, shape, patch, batch, reps, threads, device, sides)


def _end_to_end_in(tmp: Path, net, features, shape, patch, batch, reps, threads, device: str,
                   sides: Sequence[str] | None) -> dict[str, Any]:
    from medzoo.engine.checkpoint import save_checkpoint
    from medzoo.io.readers import read_volume, write_volume
    from medzoo.planning.plan import Plan

    image, truth = head_phantom(0, shape)
    write_volume(image, tmp / "in" / "case.nii.gz")
    net_kwargs = {"in_channels": 1, "num_classes": NUM_CLASSES, "features": list(features)}
    plan = Plan(
        model="unet3d", in_channels=1, num_classes=NUM_CLASSES, model_kwargs={"features": net_kwargs["features"]},
        patch_size=patch, crop_to_nonzero=True, normalization=["zscore_nonzero"], modalities=["t1"],
        labels=dict(CLASS_NAMES),
    )  # fmt: skip
    run = tmp / "run"
    run.mkdir()
    plan.save(run / "plan.json")
    save_checkpoint(run / "checkpoint_best.pt", {"model": net.state_dict(), "plan": plan.to_dict()})
    torch.save(net.state_dict(), tmp / "net.pt")
    (tmp / "net.json").write_text(json.dumps(net_kwargs))

    if torch.device(device).type == "cpu":
        export_s = _spawn("medzoo_export", tmp, patch, batch, threads)["seconds"]
        sides = list(sides or ["medzoo", "medzoo_fp32", "medzoo_openvino", "medzoo_onnxruntime", "medzoo_torch",
                               "medzoo_torch_contiguous", "monai", "monai_amp"])  # fmt: skip
    else:  # a GPU runs PyTorch (resolve_backend), nothing to export
        export_s = float("nan")
        (tmp / "auto_backend.txt").write_text("torch")
        sides = list(sides or ["medzoo", "medzoo_fp32", "monai", "monai_amp"])
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(reps):  # interleaved, rotating who goes first
        for side in sides[r % len(sides):] + sides[: r % len(sides)]:
            results[side].append(_spawn(side, tmp, patch, batch, threads, device))
    ours_sides = [side for side in sides if side.startswith("medzoo")]
    labels = {side: np.asarray(read_volume(tmp / side / "case.nii.gz").array[0]) for side in ours_sides}
    theirs = np.asarray(read_volume(next((tmp / "monai").glob("*.nii.gz"))).array[0])
    ours = labels["medzoo"]
    written = read_volume(tmp / "medzoo" / "case.nii.gz")
    inside = image.array[0] != 0
    gap = _top_two_gap(tmp, patch, batch, device)  # untimed: how close to a tie each differing voxel was
    sec = {side: median([x["seconds"] for x in results[side]]) for side in sides}
    return {
        "workload": f"end to end head phantom {'x'.join(map(str, shape))} patch {patch[0]} batch {batch}",
        "device": device,
        "medzoo_backend": (tmp / "auto_backend.txt").read_text(),
        **{f"{side}_s": sec[side] for side in sides},
        "ratio_monai_over_medzoo": ratio(sec["monai"], sec["medzoo"]),
        **{f"ratio_monai_over_{side}": ratio(sec["monai"], sec[side]) for side in ours_sides[1:]},
        **({"ratio_monai_amp_over_medzoo": ratio(sec["monai_amp"], sec["medzoo"])} if "monai_amp" in sec else {}),
        "export_s": export_s,
        **{f"{side}_runs_s": [round(x["seconds"], 2) for x in results[side]] for side in sides},
        **{f"{side}_peak_rss_mb": max(x["peak_rss_mb"] for x in results[side]) for side in sides},
        "label_agreement": float((ours == theirs).mean()),
        "label_agreement_nonzero": float((ours == theirs)[inside].mean()),
        **{f"voxels_differing_{side}": int((labels[side] != theirs).sum()) for side in ours_sides},
        **{f"max_top2_gap_differing_{side}": float(gap[labels[side] != theirs].max(initial=0.0))
           for side in ours_sides},  # fmt: skip
        "dice_medzoo_vs_monai": dice_between(ours, theirs, NUM_CLASSES),
        "dice_medzoo_vs_truth": dice_between(ours, truth.array[0], NUM_CLASSES),
        "dice_monai_vs_truth": dice_between(theirs, truth.array[0], NUM_CLASSES),
        "geometry_exact": bool(written.spatial_shape == image.spatial_shape
                               and np.allclose(written.affine, image.affine, atol=1e-5)),  # fmt: skip
        "nonzero_fraction": float(inside.mean()),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--features", default="8,16,32,64", help="unet3d channels per level")
    parser.add_argument("--batch", type=int, default=4, help="windows per forward pass (both libraries)")
    parser.add_argument("--train-steps", type=int, default=200, help="training steps of the benchmark net")
    parser.add_argument("--skip-core", action="store_true", help="only the end-to-end comparison")
    parser.add_argument("--child", choices=["medzoo", "medzoo_openvino", "medzoo_onnxruntime", "medzoo_torch", "medzoo_torch_contiguous",
                                            "medzoo_fp32", "medzoo_export", "monai", "monai_amp"],
                        help=argparse_hidden())
    parser.add_argument("--child-dir", type=Path, help=argparse_hidden())
    parser.add_argument("--child-patch", help=argparse_hidden())
    parser.add_argument("--child-device", default="cpu", help=argparse_hidden())
    args = parser.parse_args(argv)
    threads = apply_threads(args.threads)
    if args.child:
        patch = tuple(int(p) for p in args.child_patch.split(","))
        print("CHILD " + json.dumps(_child(args.child, args.child_dir, patch, args.batch, args.child_device)),
              flush=True)
        return {}
    reps = reps_for(args, default=3, quick=1)
    features = tuple(int(f) for f in args.features.split(","))
    if args.quick:
        shape, patch, features, steps, train_patch = (40, 48, 40), (24, 24, 24), (4, 8), 3, 16
    else:
        shape, patch, steps, train_patch = (160, 192, 160), (96, 96, 96), args.train_steps, 48
    rows = []
    try:
        import monai  # noqa: F401
    except ImportError:
        rows.append({"workload": "all", "skipped": "monai is not installed"})
        info: dict = {}
    else:
        net, info = trained_net(shape, features, steps, train_patch, None if args.quick else RESULTS_DIR)
        if not args.skip_core:
            rows.append(core(net, shape, patch, args.batch, reps, args.warmup))
        rows.append(end_to_end(net, features, shape, patch, args.batch, reps, threads))
    results = {"benchmark": NAME, "environment": environment(), "threads": threads,
               "features": list(features), "network": info, "rows": rows}  # fmt: skip
    print(format_table([{k: v for k, v in row.items() if not isinstance(v, (dict, list))} for row in rows]))
    for row in rows:
        for key in ("dice_medzoo_vs_monai", "dice_medzoo_vs_truth", "dice_monai_vs_truth"):
            if key in row:
                print(f"{key}: " + ", ".join(f"{k} {v:.5f}" for k, v in row[key].items()))
    path = write_results(NAME, results, args.out)
    print(f"results: {path}")
    return results


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
