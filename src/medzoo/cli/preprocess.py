"""``medzoo preprocess``: preprocess a dataset once into a cache of memory-mappable arrays."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess",
        help="preprocess a dataset into a cache (.npy + JSON), reused until the settings change",
        description="Crop, normalise and resample every labelled case as the plan says and write the "
        "result as memory-mappable .npy arrays plus JSON metadata. Safe to interrupt and rerun.",
    )
    p.add_argument("data", help="dataset folder (layout auto-detected)")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--plan", default=None, help="plan.json to follow (default: plan the dataset)")
    p.add_argument("--layout", default=None, help="dataset layout name (default: auto-detect)")
    p.add_argument("--skip-bad-cases", action="store_true", help="log and skip inconsistent cases")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from medzoo.data.cache import preprocess_dataset

    plan, cached = preprocess_dataset(
        ns.data, ns.out, ns.plan, layout=ns.layout, skip_bad_cases=ns.skip_bad_cases, progress=True
    )
    print(f"{len(cached)} cases preprocessed in {ns.out} (plan: {ns.out}/plan.json)")
    return 0
