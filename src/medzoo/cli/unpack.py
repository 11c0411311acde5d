"""``medzoo unpack``: a ``.medzoo`` file back into a run folder (checked before anything is written)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("unpack", help="unpack a .medzoo file into a run folder")
    p.add_argument("model", help="the .medzoo file")
    p.add_argument("out", help="the run folder to create (must not exist, or be empty)")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from medzoo.packaging import unpack_model

    print(f"unpacked {ns.model} into {unpack_model(ns.model, ns.out)}")
    return 0
