"""Build the site and render one page in headless Chromium: title, a code block, no broken local links."""

from __future__ import annotations

import html.parser
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


class _Page(html.parser.HTMLParser):
    """Collects the title, the code blocks, every local link target and every element id."""

    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self.code_blocks = 0
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.code_text = ""
        self._in_title = False
        self._in_pre = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        self._in_title = tag == "title" or self._in_title
        if tag == "pre":
            self._in_pre = True
        if tag == "code" and self._in_pre:
            self.code_blocks += 1
        for key in ("href", "src"):
            value = attrs.get(key)
            if value and not urlsplit(value).scheme and not value.startswith("//"):
                self.links.append(value)

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag == "pre":
            self._in_pre = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._in_pre:
            self.code_text += data


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _target_file(site: Path, page_file: Path, link: str) -> tuple[Path, str]:
    parts = urlsplit(link)
    path = unquote(parts.path)
    target = (page_file.parent / path).resolve() if path else page_file
    if target.is_dir():
        target = target / "index.html"
    return target, parts.fragment


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_page_renders_in_chromium(site, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium not installed (Debian package 'chromium')")
    page_file = site / "getting-started" / "index.html"
    assert page_file.is_file()
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
         page_file.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _parse(proc.stdout)
    assert dom.title.strip() == "Getting started - medzoo"
    assert dom.code_blocks >= 5, "the rendered page lost its code blocks"
    assert "python3 -m medzoo demo" in dom.code_text

    broken = []
    pages: dict[Path, _Page] = {}
    for link in dom.links:
        target, fragment = _target_file(site, page_file, link)
        if not target.exists():
            broken.append(f"{link} -> {target} does not exist")
            continue
        if fragment and target.suffix == ".html":
            ids = pages.setdefault(target, _parse(target.read_text())).ids if target != page_file else dom.ids
            if fragment not in ids:
                broken.append(f"{link}: no element with id '{fragment}' in {target.relative_to(site)}")
    assert len(dom.links) > 20
    assert not broken, "\n".join(broken)
