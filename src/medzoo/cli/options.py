"""Argument types shared by several commands."""

from __future__ import annotations

import argparse
import json


def key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> ``(key, value)``, the value read as JSON when it parses (numbers, lists, objects)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def add_layout_options(parser: argparse.ArgumentParser) -> None:
    """``--layout-option KEY=VALUE`` (repeatable): options of the dataset layout."""
    parser.add_argument(
        "--layout-option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
        help="dataset layout option, repeatable (value read as JSON if possible), e.g. classes=4 for mrbrains, "
             "'images={\"t1\": \"{case}/t1.nii.gz\"}' and label=... for folder",
    )
