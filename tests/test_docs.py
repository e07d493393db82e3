"""The documentation stays navigable: every relative link resolves, quoted test names exist, the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
DOCS = sorted([README, *(REPO_ROOT / "docs").rglob("*.md")])
README_MAX_LINES = 220

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.M)
# A test function quoted in backticks, alone or after its file: `test_x` or `tests/a/test_b.py::test_x`.
QUOTED_TEST = re.compile(r"`(?:[\w./]+\.py::)?(test_\w+)`")


def prose(text: str) -> str:
    """The text outside code blocks and inline code, where markdown links live."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a file's headings: lower case, punctuation dropped, spaces to hyphens."""
    slugs = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(path.read_text(encoding="utf-8")))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_docs_are_found():
    assert README in DOCS and (REPO_ROOT / "docs" / "adding_a_method.md") in DOCS


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(doc):
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    assert not broken, f"{doc.relative_to(REPO_ROOT)} links to what does not exist: {broken}"


def test_quoted_test_names_exist():
    """Names of this repository's tests, quoted by the pages that point to them (the specs quote transformers' own
    tests, so they are not checked)."""
    specs = REPO_ROOT / "docs" / "specs"
    defined = set()
    for test_file in (REPO_ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^\s*def (test_\w+)", test_file.read_text(encoding="utf-8"), re.M))
    missing = {
        f"{doc.relative_to(REPO_ROOT)}: {name}"
        for doc in DOCS
        if not doc.is_relative_to(specs)
        for name in QUOTED_TEST.findall(FENCE.sub("", doc.read_text(encoding="utf-8")))
        if name not in defined
    }
    assert not missing, f"the docs quote tests that do not exist: {sorted(missing)}"


def test_readme_stays_a_front_page():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move details to docs/ (limit {README_MAX_LINES})"
