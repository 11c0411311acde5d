"""Large volumes: peak memory and time of preprocessing, caching, patch sampling and validation at 512x512x300.

Writes two CT phantoms of 512 x 512 x 300 voxels (0.8 x 0.8 x 3 mm; in a child process, so their making is not
counted), plans them for a time budget on this machine (``--budget``, default 10m), then in this process:
fingerprint, cache (crop, normalise, resample), 20 batches from the patch loader, and one sliding-window
validation of the planned network (untrained weights) over one case. Prints the seconds of each stage and the
process's peak resident memory after each.

Run: ``python -m benchmarks.large_volume [--budget 10m] [--shape 512 512 300]`` (``--quick``: 128 x 128 x 60).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    apply_threads,
    environment,
    format_table,
    make_parser,
    own_peak_rss_mb,
    write_results,
)

NAME = "large_volume"


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--budget", default="10m", help="the time budget the plan is made for")
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    args = parser.parse_args(argv)
    threads = apply_threads(args.threads)
    shape = (128, 128, 60) if args.quick else tuple(args.shape)
    root = Path(tempfile.mkdtemp(prefix="medzoo_large_"))
    code = ("import sys; from medzoo.data.phantom import make_phantom_dataset; "
            f"make_phantom_dataset(sys.argv[1], cases=2, seed=0, shape={shape!r}, kind='ct')")
    subprocess.run([sys.executable, "-c", code, str(root / "data")], check=True)
    # the two cases draw different slice spacings; the shape given is the largest

    import torch

    from medzoo.data.cache import build_cache
    from medzoo.data.layouts import load_dataset
    from medzoo.data.loader import PatchLoader
    from medzoo.engine.checkpoint import build_model
    from medzoo.engine.validation import validate
    from medzoo.planning.fingerprint import compute_fingerprint
    from medzoo.planning.planner import make_plan
    from medzoo.utils import parse_duration

    rows = []

    def stage(name: str, t0: float) -> None:
        rows.append({"stage": name, "seconds": time.perf_counter() - t0, "peak_rss_mb": own_peak_rss_mb()})

    t0 = time.perf_counter()
    info = load_dataset(str(root / "data"))
    fingerprint = compute_fingerprint(info)
    stage("fingerprint (2 cases)", t0)
    t0 = time.perf_counter()
    plan = make_plan(info, fingerprint, time_budget=parse_duration(args.budget))
    stage("plan (step-time probe)", t0)
    t0 = time.perf_counter()
    cached = build_cache(info, plan, root / "cache", progress=False)
    stage("cache (crop, normalise, resample)", t0)
    t0 = time.perf_counter()
    loader = PatchLoader(cached, plan.patch_size, plan.batch_size, spatial_dims=plan.spatial_dims, seed=0,
                         num_workers=0, slice_axis=plan.slice_axis, augment="standard")
    batches = iter(loader)
    for _ in range(20):
        next(batches)
    if hasattr(loader, "close"):
        loader.close()
    stage("20 training batches", t0)
    t0 = time.perf_counter()
    model = build_model(plan).eval()
    with torch.no_grad():
        result = validate(model, cached[:1], plan, torch.device("cpu"), overlap=0.5)
    stage("validation of one case", t0)
    spacing = "native" if plan.target_spacing is None else "x".join(f"{s:.2f}" for s in plan.target_spacing)
    print(f"== {NAME}: {shape} CT phantoms, plan for {args.budget}: {plan.model} patch "
          f"{'x'.join(map(str, plan.patch_size))} batch {plan.batch_size} spacing {spacing}; cached grid "
          f"{cached[0].image.shape[1:]}; validation Dice (untrained) {result.mean_foreground_dice:.3f}")
    print(format_table(rows, ["stage", "seconds", "peak_rss_mb"]))
    results = {"benchmark": NAME, "environment": environment(), "threads": threads, "shape": list(shape),
               "plan": plan.to_dict(), "rows": rows}
    print(f"wrote {write_results(NAME, results, args.out)}")
    return results


if __name__ == "__main__":
    main()
