"""``medzoo plan``: print (and optionally save) the plan ``medzoo train`` would make, without training."""

from __future__ import annotations

import argparse

from medzoo.cli.options import add_layout_options, key_value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="print the plan (network, spacing, patch, batch and why) without training",
        description="Fingerprint a dataset and print the plan `medzoo train` would use, with the reason for "
        "each choice. With --time-budget the plan fits the budget on this machine (a step-time probe, cached).",
    )
    p.add_argument("data", help="dataset folder (layout auto-detected)")
    p.add_argument("--layout", help="dataset layout (default: auto-detect)")
    add_layout_options(p)
    p.add_argument("--time-budget", help="wall-clock budget of the training run, e.g. 10m, 1.5h")
    p.add_argument("--model", help="network (default: the planner's choice)")
    p.add_argument("--model-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="network argument, repeatable")
    p.add_argument("--spatial-dims", type=int, choices=[2, 3], help="force 2D (slices) or 3D")
    p.add_argument("--patch-size", type=int, nargs="+", metavar="N")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="device whose training steps the budget prices: cpu, cuda, cuda:1 "
                                    "(default: CUDA when available, as `medzoo train`)")
    p.add_argument("--out", help="also write the plan as JSON to this file")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from medzoo.planning.planner import describe_plan, plan_dataset
    from medzoo.utils import parse_duration

    plan = plan_dataset(
        ns.data, ns.layout, dict(ns.layout_option),
        time_budget=parse_duration(ns.time_budget) if ns.time_budget else None, model=ns.model,
        model_kwargs=dict(ns.model_arg) or None, spatial_dims=ns.spatial_dims,
        patch_size=tuple(ns.patch_size) if ns.patch_size else None, batch_size=ns.batch_size, device=ns.device,
    )
    print(describe_plan(plan))
    if ns.out:
        plan.save(ns.out)
        print(f"wrote {ns.out}")
    return 0
