"""``medzoo ensemble``: average the saved probabilities of several prediction folders into label maps."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ensemble", help="combine folders written by `predict --save-probabilities`")
    p.add_argument("--inputs", nargs="+", required=True, metavar="DIR",
                   help="two or more folders of <case>_probabilities.npz (same cases, same grids)")
    p.add_argument("--output", "-o", required=True, help="folder for the ensemble's label maps")
    p.add_argument("--save-probabilities", action="store_true", help="also write the mean probabilities")
    p.add_argument("--postprocessing", metavar="JSON",
                   help="apply a post-processing chosen by cross-validation (RUN/postprocessing.json)")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from medzoo.inference.ensemble import ensemble_folders
    from medzoo.inference.postprocess import ChosenPostprocessing

    post = ChosenPostprocessing.load(ns.postprocessing) if ns.postprocessing else None
    written = ensemble_folders(ns.inputs, ns.output, save_probabilities=ns.save_probabilities, postprocess=post)
    print(f"wrote {len(written)} label maps (mean of {len(ns.inputs)} folders) to {ns.output}")
    return 0
