"""``medzoo models``: the table of registered networks."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the networks of the zoo")
    p.add_argument("pattern", nargs="?", default=None, help="glob filter, e.g. '*unet*'")
    p.add_argument("--in-channels", type=int, default=1, help="channels used to count parameters")
    p.add_argument("--num-classes", type=int, default=3, help="classes used to count parameters")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from medzoo.models.table import models_table

    print(models_table(ns.pattern, in_channels=ns.in_channels, num_classes=ns.num_classes))
    return 0
