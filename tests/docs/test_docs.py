"""The documentation site: the nav names real pages, relative links resolve, the CLI reference is complete.

The full build (``mkdocs build --strict``) runs in CI after the tests (``.ci/run``); the rendered page is
checked in headless Chromium by the slow test in ``test_render.py``.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SRC = ROOT / "src"

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in _nav_pages(v)]
    if isinstance(nav, list):
        return [p for v in nav for p in _nav_pages(v)]
    return []


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc gives a heading (its default slugify, on the heading's text)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.MULTILINE)}


def relative_links(text: str) -> list[str]:
    """Targets of the Markdown links in ``text`` that point inside the repository (no scheme, no mailto),
    outside code."""
    text = _INLINE_CODE.sub("", _FENCE.sub("", text))
    return [t for t in _LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def link_problem(page: Path, target: str) -> str | None:
    """Why ``target`` (a link in ``page``) does not resolve, or None when it does."""
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    generated = dest.is_relative_to(DOCS / "api")
    if generated:  # api/<module>.md pages are generated from src/ at build time
        module = dest.stem
        if dest.name == "index.md":
            return None
        parts = module.split(".")
        if not ((SRC / Path(*parts)).with_suffix(".py").is_file() or (SRC / Path(*parts) / "__init__.py").is_file()):
            return f"{target}: no module {module} under src/ for the generated API page"
        return None
    if not dest.exists():
        return f"{target}: {dest} does not exist"
    if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
        return f"{target}: no heading with the anchor #{anchor} in {dest.name}"
    return None


def _mkdocs_config() -> dict:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # !!python/name and !ENV tags
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)


def test_nav_names_existing_pages():
    config = _mkdocs_config()
    pages = _nav_pages(config["nav"])
    assert "index.md" in pages and "configuration.md" in pages and "architecture.md" in pages
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist: {missing}"


def test_relative_links_resolve():
    pages = sorted(DOCS.rglob("*.md")) + [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]
    assert len(pages) > 10
    problems = [f"{page.relative_to(ROOT)}: {p}" for page in pages for t in relative_links(page.read_text())
                if (p := link_problem(page, t))]
    assert not problems, "\n".join(problems)


def test_link_checker_catches_broken_links():
    page = DOCS / "index.md"
    assert link_problem(page, "getting-started.md#install") is None
    assert link_problem(page, "getting-started.md#no-such-heading") is not None
    assert link_problem(page, "no-such-page.md") is not None
    assert link_problem(page, "api/medzoo.losses.md") is None
    assert link_problem(page, "api/medzoo.no_such_module.md") is not None
    text = "[a](x.md) `[b](y.md)` [c](https://e.org) [d](z.md#h)\n```\n[e](w.md)\n```\n"
    assert relative_links(text) == ["x.md", "z.md#h"]
    assert _slug("Where the `prediction` speed comes from") == "where-the-prediction-speed-comes-from"
    assert _slug("Channels-last per model (2×48³)") == "channels-last-per-model-2483"


def test_readme_stays_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/"


def test_cli_reference_lists_every_flag():
    pytest.importorskip("mkdocs")
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("medzoo_docs_hook", DOCS / "hooks" / "medzoo_docs.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    text = hook.cli_reference()

    from medzoo.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) >= {"train", "predict", "evaluate", "export", "models"}
    for name, command in sub.choices.items():
        assert f"### `medzoo {name}`" in text
        section = text.split(f"### `medzoo {name}`", 1)[1].split("\n### ", 1)[0]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                assert f"`{flag}`" in section, f"medzoo {name} {flag} is missing from the CLI reference"
    assert "<!-- medzoo:cli-reference -->" in (DOCS / "configuration.md").read_text()


def test_environment_variables_are_documented():
    """Every MEDZOO_* variable the code reads appears in the configuration reference."""
    names = set()
    for path in list(SRC.rglob("*.py")) + list((ROOT / "benchmarks").glob("*.py")):
        names.update(re.findall(r"\b(MEDZOO_[A-Z0-9_]+)\b", path.read_text()))
    text = (DOCS / "configuration.md").read_text()
    missing = sorted(n for n in names if n not in text)
    assert not missing, f"environment variables missing from docs/configuration.md: {missing}"


def test_architecture_names_every_package():
    """docs/architecture.md's table names every package and top-level module under src/medzoo."""
    text = (DOCS / "architecture.md").read_text()
    entries = [
        f"`{p.name}/`" if p.is_dir() else f"`{p.name}`"
        for p in sorted((SRC / "medzoo").iterdir())
        if not p.name.startswith(("_", ".")) and (p.suffix == ".py" or (p / "__init__.py").is_file())
    ]
    assert "`cli/`" in entries and "`losses.py`" in entries
    missing = [e for e in entries if e not in text]
    assert not missing, f"docs/architecture.md does not say where these live: {missing}"


def test_docstrings_parse_without_warnings():
    """Every docstring reads as the API reference reads it (griffe, Google style, the site's extension):
    a warning here is one that fails ``mkdocs build --strict`` in CI."""
    griffe = pytest.importorskip("griffe")
    import importlib.util
    import logging

    spec = importlib.util.spec_from_file_location("griffe_docstrings", DOCS / "hooks" / "griffe_docstrings.py")
    ext_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext_module)
    options = _mkdocs_config()["plugins"][1]["mkdocstrings"]["handlers"]["python"]["options"]

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                messages.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("griffe")
    logger.addHandler(handler)
    try:
        package = griffe.load(
            "medzoo", search_paths=[str(SRC)], allow_inspection=False, docstring_parser="google",
            docstring_options=options["docstring_options"],
            extensions=griffe.load_extensions(ext_module.DocstringRoles()),
        )
        seen = []

        def walk(obj):
            if obj.docstring is not None:
                obj.docstring.parsed  # noqa: B018 (parsing logs the warnings)
                seen.append(obj.path)
                text = re.sub(r"``[^`]*``|`[^`\n]*`|^\s*(>>>|\.\.\.).*$", "", obj.docstring.value, flags=re.MULTILINE)
                if re.search(r"\]\((?!https?://)[^)]*\)", text):
                    messages.append(f"{obj.path}: Markdown reads '[...](...)' in the docstring as a link")
            for member in obj.members.values():
                if not member.is_alias:
                    walk(member)

        walk(package)
    finally:
        logger.removeHandler(handler)
    assert len(seen) > 100
    assert not messages, "\n".join(messages)


def test_commands_in_the_docs_use_real_flags():
    """Every ``medzoo COMMAND --flag`` written in a page's code blocks is a flag that command has."""
    import argparse

    from medzoo.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()}
    problems, checked = [], 0
    pages = sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]
    for page in pages:
        for block in re.findall(r"^```(?:bash|sh|console)?\n(.*?)^```", page.read_text(), re.MULTILINE | re.DOTALL):
            for command in re.sub(r"\\\n\s*", " ", block).splitlines():
                m = re.search(r"-m medzoo\s+((?:-[qv]\s+)*)([a-z]+)\b(.*)", command)
                if not m or m.group(2) not in flags:
                    continue
                words = m.group(3).split("#")[0].split()
                for word in words:
                    flag = word.split("=", 1)[0]
                    if flag.startswith("--") and flag not in flags[m.group(2)]:
                        problems.append(f"{page.relative_to(ROOT)}: medzoo {m.group(2)} has no {flag}")
                checked += 1
    assert checked > 30
    assert not problems, "\n".join(problems)
