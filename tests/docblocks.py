"""The fenced code blocks of README.md and docs/*.md, each with its page, line, language and
``<!-- doc-test: ... -->`` options: what tests/test_docs.py runs, and what tests/conftest.py
reads to schedule the blocks that need a server (see test_docs.py for what each part means)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FILE_HEADER = re.compile(r"^#\s*([\w./-]+\.(?:py|ya?ml))\s*$")
ANNOTATION = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    options: dict[str, str]

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def file_name(self) -> str | None:
        first = self.code.splitlines()[0] if self.code else ""
        m = FILE_HEADER.match(first)
        return m.group(1) if m and self.lang in ("python", "yaml") else None


def read_blocks(page: Path) -> list[Block]:
    """Every fenced block of a page, dedented to its fence's indentation."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(`{3,})(\S*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip()
                for ln in lines[i + 1:end]]
        options: dict[str, str] = {}
        before = i - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        note = ANNOTATION.match(lines[before].strip()) if before >= 0 else None
        if note:
            for item in note.group(1).split():
                key, _, value = item.partition("=")
                options[key] = value
        blocks.append(Block(page, i + 1, lang, "\n".join(body) + "\n", options))
        i = end + 1
    return blocks
