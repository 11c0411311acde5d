"""``medzoo fingerprint``: spacings, shapes, intensity statistics and class frequencies of a dataset."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fingerprint",
        help="compute a dataset fingerprint (spacings, shapes, intensities, class frequencies)",
        description="Read every labelled case once and write the dataset fingerprint as JSON.",
    )
    p.add_argument("data", help="dataset folder (layout auto-detected)")
    p.add_argument("--out", default="fingerprint.json", help="output JSON (default fingerprint.json)")
    p.add_argument("--layout", default=None, help="dataset layout name (default: auto-detect)")
    p.add_argument("--skip-bad-cases", action="store_true", help="log and skip inconsistent cases")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from medzoo.data.layouts import load_dataset
    from medzoo.planning.fingerprint import compute_fingerprint, save_fingerprint

    info = load_dataset(ns.data, ns.layout)
    fp = compute_fingerprint(info, skip_bad_cases=ns.skip_bad_cases, progress=True)
    path = save_fingerprint(fp, ns.out)
    spacing = " x ".join(f"{s:.3g}" for s in fp["median_spacing"])
    shape = " x ".join(f"{s:.0f}" for s in fp["median_shape"])
    print(f"{fp['num_cases']} cases, median spacing {spacing} mm, median shape {shape}; wrote {path}")
    return 0
