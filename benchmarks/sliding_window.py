"""Sliding-window inference: medzoo vs MONAI, core and end to end.

1. Core: the same unet3d (random init, seed 0) and the same input through
   ``medzoo.inference.sliding_window`` and ``monai.inferers.sliding_window_inference`` with identical window
   settings (patch, overlap 0.5, Gaussian sigma 0.125, batch). Checks the blended outputs agree within 1e-4
   and the label maps are identical; reports the time ratio.
2. End to end: a brain-like phantom (``medzoo.data.phantom``, empty background) written as NIfTI;
   ``medzoo.inference.predict`` with its defaults (the plan crops to the non-zero region, z-scores
   non-zero voxels) vs MONAI's LoadImage + NormalizeIntensity(nonzero, channel-wise) +
   sliding_window_inference + argmax + SaveImage. Reports the time ratio and the voxel agreement of the two
   label maps (windows differ once medzoo crops, so a random network's labels agree only approximately).

Run: ``python -m benchmarks.sliding_window [--quick] [--reps N] [--threads N] [--features 8,16,32,64]``.
"""

from __future__ import annotations

import tempfile
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
    ratio,
    reps_for,
    summarize,
    write_results,
)

NAME = "sliding_window"


def _net(in_channels: int, num_classes: int, features: tuple[int, ...]) -> torch.nn.Module:
    import medzoo

    torch.manual_seed(0)
    return medzoo.create_model(
        "unet3d", in_channels=in_channels, num_classes=num_classes, features=features
    ).eval()


def core(shape, patch, batch, features, reps, warmup) -> dict[str, Any]:
    from monai.inferers import sliding_window_inference

    from medzoo.inference import sliding_window

    net = _net(1, 4, features)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((1, 1, *shape), generator=g)
    kw = {"overlap": 0.5}
    with torch.inference_mode():
        ref = sliding_window_inference(x, patch, batch, net, mode="gaussian", sigma_scale=0.125, **kw)
    ours = sliding_window(x, net, patch, blend="gaussian", batch_size=batch, **kw)
    max_diff = float((ours - ref).abs().max())
    labels_equal = bool(torch.equal(ours.argmax(1), ref.argmax(1)))
    assert max_diff < 1e-4, f"blended outputs differ by {max_diff}"
    assert labels_equal, "label maps differ"

    def run_monai():
        with torch.inference_mode():
            sliding_window_inference(x, patch, batch, net, mode="gaussian", sigma_scale=0.125, **kw)

    times = interleaved(
        {"medzoo": lambda: sliding_window(x, net, patch, blend="gaussian", batch_size=batch, **kw),
         "monai": run_monai},
        reps=reps, warmup=warmup,
    )  # fmt: skip
    m, p = summarize(times["medzoo"]), summarize(times["monai"])
    return {
        "workload": f"core sliding window {'x'.join(map(str, shape))} patch {patch[0]} batch {batch}",
        "medzoo_s": m["median"], "monai_s": p["median"], "ratio_monai_over_medzoo": ratio(p["median"], m["median"]),
        "max_abs_diff": max_diff, "labels_identical": labels_equal,
    }  # fmt: skip


def end_to_end(shape, patch, batch, features, reps, warmup) -> dict[str, Any]:
    from monai.inferers import sliding_window_inference
    from monai.transforms import LoadImage, NormalizeIntensity, SaveImage

    from medzoo.data.phantom import make_phantom_case
    from medzoo.engine.checkpoint import save_checkpoint
    from medzoo.inference.predictor import predict
    from medzoo.io.readers import read_volume, write_volume
    from medzoo.planning.plan import Plan

    tmp = Path(tempfile.mkdtemp(prefix="medzoo_bench_sw_"))
    image, _ = make_phantom_case(0, shape=shape)
    write_volume(image, tmp / "in" / "case.nii.gz")
    net = _net(2, 4, features)
    plan = Plan(
        model="unet3d", in_channels=2, num_classes=4, model_kwargs={"features": list(features)},
        patch_size=patch, crop_to_nonzero=True, normalization=["zscore_nonzero"] * 2,
        modalities=["t1", "t2"], labels={0: "background", 1: "csf", 2: "gray_matter", 3: "white_matter"},
    )  # fmt: skip
    run = tmp / "run"
    run.mkdir()
    plan.save(run / "plan.json")
    save_checkpoint(run / "checkpoint_best.pt", {"model": net.state_dict(), "plan": plan.to_dict()})

    loader = LoadImage(image_only=True, ensure_channel_first=True)
    norm = NormalizeIntensity(nonzero=True, channel_wise=True)
    saver = SaveImage(output_dir=str(tmp / "monai"), output_postfix="", separate_folder=False,
                      output_dtype=np.uint8, resample=False, print_log=False)  # fmt: skip

    def run_monai():
        img = norm(loader(str(tmp / "in" / "case.nii.gz")))
        with torch.inference_mode():
            logits = sliding_window_inference(img[None], patch, batch, net, overlap=0.5, mode="gaussian")
        saver(logits[0].argmax(0, keepdim=True).to(torch.uint8))

    def run_medzoo():
        report = predict(run, tmp / "in" / "case.nii.gz", tmp / "medzoo", batch_size=batch, progress=False,
                         device="cpu")  # fmt: skip
        assert report.ok, report.failed

    times = interleaved({"medzoo": run_medzoo, "monai": run_monai}, reps=reps, warmup=warmup)
    ours = read_volume(tmp / "medzoo" / "case.nii.gz").array[0]
    theirs_path = next((tmp / "monai").glob("*.nii.gz"))
    theirs = np.asarray(read_volume(theirs_path).array[0])
    inside = image.array.any(axis=0)
    m, p = summarize(times["medzoo"]), summarize(times["monai"])
    return {
        "workload": f"end to end phantom {'x'.join(map(str, shape))} patch {patch[0]}",
        "medzoo_s": m["median"], "monai_s": p["median"], "ratio_monai_over_medzoo": ratio(p["median"], m["median"]),
        "label_agreement": float((ours == theirs).mean()),
        "label_agreement_nonzero": float((ours == theirs)[inside].mean()),
        "nonzero_fraction": float(inside.mean()),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--features", default="8,16,32,64", help="unet3d channels per level")
    parser.add_argument("--batch", type=int, default=2, help="windows per forward pass (both libraries)")
    args = parser.parse_args(argv)
    threads = apply_threads(args.threads)
    reps = reps_for(args, default=3, quick=1)
    features = tuple(int(f) for f in args.features.split(","))
    if args.quick:
        shape, patch, features = (40, 48, 40), (24, 24, 24), (4, 8)
    else:
        shape, patch = (160, 192, 160), (96, 96, 96)
    rows = []
    try:
        import monai  # noqa: F401
    except ImportError:
        rows.append({"workload": "all", "skipped": "monai is not installed"})
    else:
        rows.append(core(shape, patch, args.batch, features, reps, args.warmup))
        rows.append(end_to_end(shape, patch, args.batch, features, reps, args.warmup))
    results = {"benchmark": NAME, "environment": environment(), "threads": threads,
               "features": list(features), "rows": rows}  # fmt: skip
    print(format_table(rows))
    path = write_results(NAME, results, args.out)
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
