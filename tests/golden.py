"""Where the golden fixtures (`tests/fixtures/`, `VTC_FIXTURES_DIR` overrides the root) and the COCO images live."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
COCO_DIR = TESTS_DIR / "data" / "coco_cc"


def fixtures_root() -> Path:
    return Path(os.environ.get("VTC_FIXTURES_DIR", TESTS_DIR / "fixtures"))


@dataclass
class FixtureCase:
    """One golden case: a `NAME.json` manifest, `NAME.safetensors` tensors, or both."""

    name: str
    manifest: dict
    tensors: dict[str, torch.Tensor]
    files: list[Path] = field(default_factory=list)

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors named `prefix.*`, with the prefix removed."""
        return {k[len(prefix) + 1 :]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    @property
    def atol(self) -> float:
        tolerances = self.manifest.get("tolerances") or self.manifest.get("tolerance") or {}
        if isinstance(tolerances, (int, float)):
            return float(tolerances)
        return float(tolerances.get("atol", 1e-5))

    def unknown(self, check: str) -> AssertionError:
        """The error of a `kind_of` that recognises no check for this case."""
        return AssertionError(
            f"Fixture case {self.name!r} ({', '.join(str(path) for path in self.files)}) matches no known {check} "
            f"check; manifest keys {sorted(self.manifest)[:8]}, tensors {sorted(self.tensors)[:8]}. Teach the "
            "parity module's kind_of (and a test) about it."
        )


def case_names(method: str) -> list[str]:
    """Every case of a method's folder: each `NAME.json` manifest and each `NAME.safetensors`, never a fixed list."""
    folder = fixtures_root() / method
    if not folder.is_dir():
        raise FileNotFoundError(f"Fixture folder {folder} is missing; set VTC_FIXTURES_DIR to the fixtures root.")
    return sorted({path.stem for pattern in ("*.json", "*.safetensors") for path in folder.glob(pattern)})


def load_case(method: str, name: str) -> FixtureCase:
    folder = fixtures_root() / method
    manifest_path, tensors_path = folder / f"{name}.json", folder / f"{name}.safetensors"
    files = [path for path in (manifest_path, tensors_path) if path.exists()]
    if not files:
        raise FileNotFoundError(f"No fixture case {name!r} in {folder}.")
    return FixtureCase(
        name=name,
        manifest=json.loads(manifest_path.read_text()) if manifest_path.exists() else {},
        tensors=load_file(tensors_path) if tensors_path.exists() else {},
        files=files,
    )


def classify(method: str, kind_of: Callable[[FixtureCase], str]) -> dict[str, str | None]:
    """Every case's kind, None where `kind_of` rejects it: at collection, so that the per-kind tests can be
    parametrized, but an unknown case only fails its own `test_every_case_has_known_kind`, not the module."""
    kinds = {}
    for name in case_names(method):
        try:
            kinds[name] = kind_of(load_case(method, name))
        except Exception:
            kinds[name] = None
    return kinds


def cases_of(kinds: dict[str, str | None], *wanted: str) -> list[str]:
    return [name for name, kind in kinds.items() if kind in wanted]


def assert_index_lists_every_file(method: str, name: str, checksummed: Callable[[str], bool] = lambda file: True):
    """The index case `name` of `method` names exactly the folder's other files, and each file `checksummed` accepts
    byte for byte (its sha256), so that a stale or missing case is caught."""
    folder = fixtures_root() / method
    listed = {entry["file"]: entry["sha256"] for entry in load_case(method, name).manifest["files"]}
    assert set(listed) == {path.name for path in folder.iterdir()} - {f"{name}.json"}
    for file, sha256 in listed.items():
        if checksummed(file):
            assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == sha256, file
