"""Write the generated parts of the docs: the settings table in docs/settings.md, from `service.config.Settings`,
and the table of errors in docs/api.md, from `service.error_responses.ROWS`.

    .venv/bin/python docs/generate.py           # rewrite both tables between their markers
    .venv/bin/python docs/generate.py --check   # exit 1 if a page is not what this would write

tests/test_docs.py runs the check, so the table cannot drift from the code.
"""

import argparse
import sys
import typing
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
SETTINGS_PAGE = DOCS / "settings.md"
API_PAGE = DOCS / "api.md"

if str(REPO) not in sys.path:  # run as a script from anywhere: the service package is the repository's
    sys.path.insert(0, str(REPO))

from service.config import ENV_PREFIX, Settings  # noqa: E402
from service.error_responses import markdown_table  # noqa: E402


def cell(text: str) -> str:
    """`text` on one line, safe inside a Markdown table cell (no pipes, no raw HTML)."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def show_default(name: str, value: object) -> str:
    """A field's default as a reader would type it in the environment."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        if value.is_absolute():  # the bundled model, found next to the package wherever it is installed
            value = value.relative_to(REPO) if value.is_relative_to(REPO) else value
        return f"`{value}`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`" if value else "(empty)"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and name.endswith("_bytes"):
        for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
            if value >= size and value % size == 0:
                return f"`{value}` ({value // size} {unit})"
    return f"`{value}`"


def settings_table() -> str:
    """The table of every setting: its environment variable, default and description."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = field.description or ""
        if typing.get_origin(field.annotation) is typing.Literal:
            meaning += " One of: " + ", ".join(f"`{choice}`" for choice in typing.get_args(field.annotation)) + "."
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {show_default(name, field.default)} | {cell(meaning)} |")
    return "\n".join(rows)


GENERATED = {SETTINGS_PAGE: ("settings", settings_table), API_PAGE: ("errors", markdown_table)}
"""Each page with generated text: the name of its markers and what writes the text between them."""


def render(page: Path, text: str) -> str:
    """`text` (the page's content) with the part between its markers replaced by what is generated now."""
    name, generate = GENERATED[page]
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    before, found, rest = text.partition(start)
    _, found_end, after = rest.partition(end)
    if not (found and found_end):
        raise ValueError(f"{page.name} lacks the markers {start} and {end}")
    return f"{before}{start}\n{generate().strip()}\n{end}{after}"


def main() -> int:
    """Rewrite the generated parts, or with --check only compare them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is not what would be written")
    args = parser.parse_args()
    stale = 0
    for page in GENERATED:
        text = page.read_text()
        wanted = render(page, text)
        if text == wanted:
            continue
        if args.check:
            print(f"{page.relative_to(REPO)} is out of date: run .venv/bin/python docs/generate.py")
            stale = 1
        else:
            page.write_text(wanted)
            print(f"wrote {page.relative_to(REPO)}")
    return stale


if __name__ == "__main__":
    sys.exit(main())
