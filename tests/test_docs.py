"""The docs stay true: the generated settings table is current, every link lands, and the site builds."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md")), REPO / "benchmarks" / "results" / "history.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def load_generator():
    """docs/generate.py as a module (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outside_code(text: str) -> list[str]:
    """The lines of a Markdown page outside its fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors_of(text: str) -> set[str]:
    """GitHub's anchors for the headings of Markdown `text`: lowercased, punctuation dropped, spaces as hyphens."""
    anchors: set[str] = set()
    for line in outside_code(text):
        heading = re.match(r"#{1,6}\s+(.*?)\s*$", line)
        if not heading:
            continue
        words = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading[1]).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", words.lower()).replace(" ", "-")
        anchor, number = slug, 0
        while anchor in anchors:  # GitHub numbers repeated headings
            number += 1
            anchor = f"{slug}-{number}"
        anchors.add(anchor)
    return anchors


@pytest.mark.parametrize("page", ["settings.md", "api.md"])
def test_the_generated_tables_are_what_the_generator_writes(page: str) -> None:
    """docs/settings.md's table comes from Settings, docs/api.md's table of errors from error_responses.ROWS: every
    setting and every error class is in the docs, as the code has it now."""
    generator = load_generator()
    text = (DOCS / page).read_text()
    assert text == generator.render(DOCS / page, text), (
        f"docs/{page} is out of date: run .venv/bin/python docs/generate.py"
    )


def test_every_relative_link_points_at_a_file_and_heading_that_exist() -> None:
    broken = []
    for page in PAGES:
        for line in outside_code(page.read_text()):
            for target in LINK.findall(re.sub(r"`[^`]*`(?!\])", "", line)):
                if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                path, _, anchor = target.partition("#")
                file = (page.parent / path).resolve() if path else page
                where = f"{page.relative_to(REPO)}: {target}"
                if not file.exists():
                    broken.append(f"{where} (no such file)")
                elif anchor and file.suffix == ".md" and anchor not in anchors_of(file.read_text()):
                    broken.append(f"{where} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_anchor_rule_matches_github() -> None:
    text = "# The API\n## The memory limit, in a real cgroup\n## `CLASSIFIER_X`: a [link](x)\n```sh\n# a comment\n```\n"
    text += "## Notes\n## Notes\n"
    assert anchors_of(text) == {
        "the-api",
        "the-memory-limit-in-a-real-cgroup",
        "classifier_x-a-link",
        "notes",
        "notes-1",
    }


def test_the_code_map_names_every_module_and_only_files_that_exist() -> None:
    development = (DOCS / "development.md").read_text()
    section = development.split("## Code map", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`((?:service|training|tests|docs)/[\w/]*(?:\.py|/))`", section))
    assert all((REPO / path).exists() for path in named), sorted(p for p in named if not (REPO / p).exists())
    files = [*(REPO / "service").glob("*.py"), *(REPO / "training").glob("*.py")]
    modules = {str(path.relative_to(REPO)) for path in files}
    entry_points = {"service/__init__.py", "service/__main__.py", "training/__init__.py", "training/__main__.py"}
    assert modules - entry_points <= named, f"not in the code map: {sorted(modules - entry_points - named)}"


def test_the_site_builds_strictly_and_offline(tmp_path: Path) -> None:
    # --strict fails on a link to a missing page or heading, a page left out of the nav, a bad config.
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    pages = {path.name: path.read_text() for path in (tmp_path / "site").glob("*.html")}
    assert {"index.html", "settings.html", "api.html", "development.html"} <= set(pages)
    fetched = [
        f"{name}: {url}"
        for name, html in pages.items()
        for url in re.findall(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"(https?://[^\"]+)\"", html)
    ]
    assert not fetched, f"the site loads from the network: {fetched}"
    assert "../README.md" not in pages["index.html"], "a link out of docs/ was not rewritten for the site"
