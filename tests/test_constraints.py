"""constraints.txt is what install.sh hands pip: every line a pin, so a bad line cannot break a fresh install."""

from __future__ import annotations

import re
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def test_every_line_is_a_pin():
    lines = [line.strip() for line in CONSTRAINTS.read_text().splitlines()]
    pins = [line for line in lines if line and not line.startswith("#")]
    bad = [line for line in pins if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[a-z0-9,_-]+\])?==[^\s=]+", line)]
    assert pins and not bad, f"not a 'name==version' pin: {bad}"
    names = [re.split(r"[\[=]", line)[0].lower().replace("_", "-") for line in pins]
    assert len(names) == len(set(names)), "a package pinned twice"
