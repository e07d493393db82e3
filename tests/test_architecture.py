"""The import contracts of pyproject.toml (`[tool.importlinter]`): layers and no cycles, checked on every run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACTS = (
    "Layers: tools on the registry on the model code on configuration",
    "No import cycles between the modules of any package",
)


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` over the package in `root`, with `root/pyproject.toml`'s contracts (lazy imports count)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=root, capture_output=True, text=True, timeout=300
    )


def test_the_package_keeps_its_import_contracts():
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for contract in CONTRACTS:
        assert f"{contract} KEPT" in result.stdout


@pytest.mark.parametrize(
    ("module", "import_line", "broken"),
    [
        # The model may not depend on a processor (modeling and processing are independent)...
        ("modeling/tokenpacker.py", "from ..processing.tokenpacker_hd import TokenPackerImageProcessor", CONTRACTS[0]),
        # ...nor on a tool, even lazily inside a function.
        ("modeling/base.py", "def _lazy():\n    from ..tools.tiny import build_tiny", CONTRACTS[0]),
        # Two tools importing each other.
        ("tools/tiny.py", "def _lazy():\n    from . import demo", CONTRACTS[1]),
    ],
    ids=["model-on-processor", "model-on-tool-lazily", "cycle-between-tools"],
)
def test_the_contracts_catch_a_forbidden_import(tmp_path, module, import_line, broken):
    """The contracts are not vacuous: one forbidden import in a copy of the package breaks the contract it names."""
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(
        REPO_ROOT / "visual_token_compression",
        tmp_path / "visual_token_compression",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    with open(tmp_path / "visual_token_compression" / module, "a", encoding="utf-8") as source:
        source.write(f"\n\n{import_line}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert f"{broken} BROKEN" in result.stdout, result.stdout


def test_importing_the_package_loads_no_tool():
    """`import visual_token_compression` (what a saved model's user runs) registers the model types and loads the
    model code only: no command line, conversion, training or benchmark module."""
    script = "import sys, visual_token_compression; print(sorted(m for m in sys.modules if m.startswith('visual_token_compression.tools')))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
