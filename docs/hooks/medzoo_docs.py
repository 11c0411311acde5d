"""MkDocs hook: the parts of the site that are generated from the code, so they cannot go stale.

- ``<!-- medzoo:cli-reference -->`` in a page is replaced by every flag of every ``medzoo`` command, read
  from the argparse parsers that ``medzoo.cli.build_parser`` builds (the same ones the console script uses).
- ``api/*.md`` pages are generated for the public API (the names ``medzoo/__init__.py`` exports, read with
  ``ast``) and for every package and top-level module under ``src/medzoo``; mkdocstrings renders them from
  the docstrings by static analysis (nothing is imported).
- Top-level pages that the nav in ``mkdocs.yml`` does not name (pages added by others) are appended under
  "More", so a new page is never silently left out.

The CLI parsers are imported from this checkout's ``src`` (not from whatever medzoo is installed), so a
build documents the code beside it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = SRC / "medzoo"
CLI_MARKER = "<!-- medzoo:cli-reference -->"


# --- CLI reference ---------------------------------------------------------------------------------------

def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _help_text(action: argparse.Action) -> str:
    text = action.help or ""
    if "%" in text:
        try:
            text = text % {**vars(action), "prog": ""}
        except (KeyError, TypeError, ValueError):
            text = text.replace("%%", "%")
    return text


def _default_text(action: argparse.Action) -> str:
    default = action.default
    if default is None or default is argparse.SUPPRESS or default is False or default == []:
        return ""
    if isinstance(action, argparse._StoreTrueAction):
        return ""
    if isinstance(default, list | tuple):
        return "`" + " ".join(map(str, default)) + "`"
    return f"`{default}`"


def _argument_text(action: argparse.Action) -> str:
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return " \\| ".join(f"`{c}`" for c in action.choices)
    if action.nargs == 0:
        return ""
    metavar = action.metavar or action.dest.upper()
    if action.nargs in ("+", "*"):
        return f"`{metavar} ...`"
    return f"`{metavar}`"


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| flag | value | default | what it does |", "|---|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}` (positional)"
        required = " (required)" if action.required and action.option_strings else ""
        extra = []
        if isinstance(action, argparse._AppendAction) and "repeatable" not in (action.help or ""):
            extra.append("repeatable")
        help_text = _help_text(action) + (f" ({', '.join(extra)})" if extra else "")
        rows.append(
            f"| {names}{required} | {_argument_text(action)} | {_default_text(action)} | {_cell(help_text)} |"
        )
    return rows


def _exclusive_groups(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for group in parser._mutually_exclusive_groups:
        flags = " / ".join(f"`{a.option_strings[0]}`" for a in group._group_actions if a.option_strings)
        lines.append(f"At most one of {flags}.")
    return lines


def cli_reference() -> str:
    """Markdown for the top-level options and every sub-command's flags."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    from medzoo.cli import build_parser

    parser = build_parser()
    parser.prog = "medzoo"
    out = ["### `medzoo` (global options)", "", "Given before the command, e.g. `medzoo -q train ...`.", ""]
    out += _options_table(parser) + [""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    for name, command in sub.choices.items():
        out += [f"### `medzoo {name}`", "", _cell(helps.get(name) or command.description or ""), ""]
        out += ["```text", command.format_usage().strip(), "```", ""]
        out += _options_table(command) + [""]
        out += [line + "\n" for line in _exclusive_groups(command)]
    return "\n".join(out)


# --- API reference ---------------------------------------------------------------------------------------

def _public_exports() -> dict[str, str]:
    """``name -> module`` of ``medzoo/__init__.py``'s lazily loaded ``_EXPORTS`` table, read without import."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "_EXPORTS" and node.value is not None:
            return ast.literal_eval(node.value)
    return {}


def _api_modules() -> list[str]:
    """Dotted names of medzoo's sub-packages and top-level modules, private ones left out."""
    names = []
    for path in sorted(PACKAGE.iterdir()):
        if path.name.startswith("_"):
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            names.append(f"medzoo.{path.name}")
        elif path.suffix == ".py":
            names.append(f"medzoo.{path.stem}")
    return names


def _summary(module: str, name: str) -> str:
    """First line of ``name``'s docstring in ``module``, read with ``ast`` (nothing is imported)."""
    path = SRC / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
            doc = ast.get_docstring(node) or ""
            return doc.strip().split("\n")[0]
    return ""


def _api_pages() -> dict[str, str]:
    index = [
        "# Public API",
        "",
        "What `import medzoo` offers at the top level (`medzoo.NAME`, loaded on first use). Each name links to",
        "its documentation in the module that defines it; the pages after this one cover every package.",
        "",
        "| name | defined in | what it is |",
        "|---|---|---|",
    ]
    for name, module in sorted(_public_exports().items()):
        index.append(f"| [`{name}`][{module}.{name}] | `{module}` | {_cell(_summary(module, name))} |")
    pages = {"api/index.md": "\n".join(index) + "\n"}
    for module in _api_modules():
        pages[f"api/{module}.md"] = f"# `{module}`\n\n::: {module}\n    options:\n      show_root_heading: false\n"
    return pages


def _nav_paths(nav: object) -> set[str]:
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_nav_paths(v) for v in nav.values())) if nav else set()
    if isinstance(nav, list):
        return set().union(*(_nav_paths(v) for v in nav)) if nav else set()
    return set()


# --- mkdocs events ---------------------------------------------------------------------------------------

def on_files(files: Files, config) -> Files:
    pages = _api_pages()
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    nav = config["nav"]
    if nav is not None:
        named = _nav_paths(nav)
        extra = [
            f.src_uri for f in files.documentation_pages()
            if "/" not in f.src_uri and f.src_uri not in named
        ]
        if extra:
            nav.append({"More": sorted(extra)})
        api = [{"Public API": "api/index.md"}] + [
            {uri[len("api/"):-len(".md")]: uri} for uri in pages if uri != "api/index.md"
        ]
        nav.append({"API reference": api})
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown
