"""``medzoo info``: what a run folder, a ``.medzoo`` file or a cross-validation parent is, and what ``predict``
would do with it."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a trained run, a .medzoo file or a cross-validation folder "
                                      "(data, plan, training, Dice)")
    p.add_argument("model", help="run folder, .medzoo file or cross-validation folder")
    p.add_argument("--checkpoint", default="best", help="best | last | a checkpoint file (default: best)")
    p.add_argument("--json", action="store_true", help="print JSON (for machines)")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from medzoo.info import run_info

    info = run_info(ns.model, checkpoint=ns.checkpoint)
    print(json.dumps(info, indent=2) if ns.json else "\n".join(format_info(info)))
    return 0


def format_info(info: dict[str, Any]) -> list[str]:
    """Readable lines: one heading per section, one ``key: value`` line per entry (nested dicts inline), a
    multi-line value (a cross-validation's table) indented below its key."""
    lines = []
    for section, entries in info.items():
        lines.append(f"{section}:")
        for key, value in entries.items():
            if (key == "packed_with" and value is None) or key in _JSON_ONLY:
                continue
            if isinstance(value, str) and "\n" in value:
                lines.append(f"  {key.replace('_', ' ')}:")
                lines.extend(f"    {line}" for line in value.splitlines())
                continue
            lines.append(f"  {key.replace('_', ' ')}: {_value(value)}")
    return lines


_JSON_ONLY = {"summary"}  # nested figures a table already shows readably


def _value(value: Any) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return " x ".join(map(_value, value)) if all(isinstance(v, (int, float)) for v in value) else ", ".join(map(_value, value))
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v)}" for k, v in value.items()) or "-"
    return str(value)
