"""Griffe extension: read medzoo's docstrings (Google style with a few Sphinx habits) the way Sphinx would.

- An ``Example:`` section is read as Google style's ``Examples:`` (Napoleon accepts both); griffe alone would
  render it as an admonition of Markdown text, in which ``Conv[3](16, 32)`` reads as a link.
- Sphinx cross-reference roles (``:func:`~medzoo.io.readers.read_volume```, ``:class:`Volume```) become
  optional autorefs links: a link where the target is documented, plain code where it is not (a private or
  external name), never a build warning. Short names are looked up in the docstring's own module first.
"""

from __future__ import annotations

import html
import re

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(?P<body>[^`]+)`")


def _module_of(obj: griffe.Object) -> griffe.Object:
    while not obj.is_module and obj.parent is not None:
        obj = obj.parent
    return obj


def _identifier(target: str, obj: griffe.Object) -> str:
    """The dotted path ``target`` most likely names, seen from ``obj``'s docstring."""
    target = target.lstrip(".")
    if target.startswith("medzoo."):
        return target
    module = _module_of(obj)
    head = target.split(".", 1)[0]
    for scope in (obj, obj.parent, module):
        if scope is not None and head in scope.members:
            member = scope.members[head]
            base = member.target_path if member.is_alias else member.path
            return base + target[len(head):]
    return target


def _link(match: re.Match, obj: griffe.Object) -> str:
    body = match["body"].strip()
    titled = re.match(r"^(?P<title>.+?)\s*<(?P<target>[^>]+)>$", body)
    if titled:
        title, target = titled["title"], titled["target"]
    else:
        target = body.lstrip("~")
        title = target.rsplit(".", 1)[-1] if body.startswith("~") else target.lstrip(".")
    identifier = html.escape(_identifier(target, obj), quote=True)
    return f'<autoref identifier="{identifier}" optional><code>{html.escape(title)}</code></autoref>'


class DocstringRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is None:
            return
        text = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
        obj.docstring.value = _ROLE.sub(lambda m: _link(m, obj), text)
