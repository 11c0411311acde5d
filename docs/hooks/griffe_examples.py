"""Griffe extension: read an ``Example:`` section as Google style's ``Examples:`` (Napoleon accepts both).

Without it griffe renders ``Example:`` as an admonition of Markdown text, in which ``Conv[3](16, 32)`` reads
as a link.
"""

from __future__ import annotations

import re

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.MULTILINE)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
