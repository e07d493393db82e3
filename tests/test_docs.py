"""The documentation stays navigable and true: every relative link resolves, quoted test names exist, the README
stays short and its quick start runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from visual_token_compression.tools.tiny import build_tiny

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


PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def readme_python_blocks() -> list[str]:
    return PYTHON_BLOCK.findall(README.read_text(encoding="utf-8"))


def test_readme_quick_start_runs_as_written(tmp_path):
    """Both README snippets, unchanged, in a fresh interpreter: the first loads `outputs/demo`, the folder `make demo`
    saves, here a tiny TokenPacker saved there by the test (the demo's own run is tests/test_demo.py's)."""
    blocks = readme_python_blocks()
    assert len(blocks) == 2 and '"outputs/demo"' in blocks[0], "the README's quick start changed shape"
    model, processor = build_tiny("tokenpacker")
    model.save_pretrained(tmp_path / "outputs" / "demo")
    processor.save_pretrained(tmp_path / "outputs" / "demo")
    for index, block in enumerate(blocks):
        script = tmp_path / f"quick_start_{index}.py"
        script.write_text(block, encoding="utf-8")
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"README python block {index + 1} failed:\n{result.stderr[-3000:]}"
        assert result.stdout.strip(), f"README python block {index + 1} printed nothing"
    # The config snippet states its own token count; it must be the model's.
    assert result.stdout.strip().splitlines()[-1] == "16 visual tokens per image"
