"""``medzoo demo``: phantom data -> train -> predict -> evaluate -> overlay, in a few minutes."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train and evaluate on synthetic phantoms in a few minutes")
    p.add_argument("--out", default="medzoo_demo", help="folder for data, run, predictions (default: %(default)s)")
    p.add_argument("--time-budget", default="2.5m", help="training budget, e.g. 90s, 2.5m (default: %(default)s)")
    p.add_argument("--cases", type=int, default=16, help="phantom training cases (default: %(default)s)")
    p.add_argument("--test-cases", type=int, default=4, help="held-out phantom cases (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="registry name (default: the planner's choice)")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from medzoo.demo import run_demo

    result = run_demo(ns.out, time_budget=ns.time_budget, cases=ns.cases, test_cases=ns.test_cases,
                      seed=ns.seed, model=ns.model)
    print(result.table)
    print(f"\noverlay: {result.files['overlay']}\nmetrics: {result.files['evaluation']}")
    print(f"report:  {result.files['report']}")
    return 0
