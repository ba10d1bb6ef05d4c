"""MkDocs hook: links from docs/ to repository files outside it become plain text on the site.

The site holds docs/ only, so `[the README](../README.md)` has no target there, and `mkdocs build --strict` would
fail on it. On GitHub such links work as written; on the site they read "the README (`README.md` in the
repository)". tests/test_docs.py checks that every one of them points at a file that exists.
"""

import re

OUTSIDE_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(\.\./([^)#\s]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, **_: object) -> str:
    """The page's Markdown with each link out of docs/ replaced by its text and the file's repository path."""

    def plain(link: re.Match[str]) -> str:
        text, path = link[1], link[2]
        return f"`{path}` in the repository" if text.strip("`") == path else f"{text} (`{path}` in the repository)"

    return OUTSIDE_LINK.sub(plain, markdown)
