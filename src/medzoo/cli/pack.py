"""``medzoo pack``: a trained run as one shareable ``.medzoo`` file (weights, plan, card; no caches)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pack", help="pack a trained run into one .medzoo file to share")
    p.add_argument("run", help="run folder (plan.json + checkpoints)")
    p.add_argument("out", help="the file to write, e.g. model.medzoo")
    p.add_argument("--checkpoint", default="best", help="best | last | a checkpoint file (default: best)")
    p.add_argument("--with-optimizer", action="store_true",
                   help="also pack the optimizer, schedule and RNG states and the splits (to resume training)")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from medzoo.packaging import pack_model

    path = pack_model(ns.run, ns.out, checkpoint=ns.checkpoint, with_optimizer=ns.with_optimizer)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
