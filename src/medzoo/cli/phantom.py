"""``medzoo phantom``: write a synthetic brain-like dataset (MSD layout) for demos and tests."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantom",
        help="write a synthetic brain-like MRI dataset (MSD layout)",
        description="Write synthetic T1/T2 brain-like phantoms with labels 0 background, 1 csf, "
        "2 gray_matter, 3 white_matter in the Medical Segmentation Decathlon layout.",
    )
    p.add_argument("--out", required=True, help="output folder (imagesTr/, labelsTr/, dataset.json)")
    p.add_argument("--cases", type=int, default=8, help="number of training cases (default 8)")
    p.add_argument("--test-cases", type=int, default=0, help="extra cases in imagesTs/ + labelsTs/")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed -> identical data)")
    p.add_argument(
        "--shape", type=int, nargs=3, metavar=("I", "J", "K"), default=None,
        help="voxels per axis (default 64 64 48 for brain; for the other kinds the largest case, e.g. 256 256 200)",
    )
    p.add_argument(
        "--kind", default="brain", choices=["brain", "ct", "thick-mri", "multi-organ"],
        help="brain: T1/T2 brain-like MRI (default); ct: abdominal CT in HU with a table (liver, kidneys, spleen); "
             "multi-organ: seven structures from liver to adrenal; thick-mri: the brain on 5-10 mm slices",
    )
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from medzoo.data.phantom import make_phantom_dataset

    out = make_phantom_dataset(
        ns.out, cases=ns.cases, seed=ns.seed, shape=tuple(ns.shape) if ns.shape else None,
        test_cases=ns.test_cases, kind=ns.kind,
    )
    print(f"wrote {ns.cases} training and {ns.test_cases} test {ns.kind} phantom cases to {out}")
    return 0
