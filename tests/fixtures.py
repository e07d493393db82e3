"""Where the golden fixtures and the shared data live (`VTC_FIXTURES_DIR` overrides the fixtures root)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
COCO_DIR = SHARED / "data" / "coco_cc"


def fixtures_root() -> Path:
    return Path(os.environ.get("VTC_FIXTURES_DIR", SHARED / "fixtures"))


@dataclass
class FixtureCase:
    """One golden case: `NAME.safetensors` plus its `NAME.json` manifest."""

    name: str
    manifest: dict
    tensors: dict[str, torch.Tensor]

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors named `prefix.*`, with the prefix removed."""
        return {k[len(prefix) + 1 :]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    @property
    def atol(self) -> float:
        tolerances = self.manifest.get("tolerances") or self.manifest.get("tolerance") or {}
        if isinstance(tolerances, (int, float)):
            return float(tolerances)
        return float(tolerances.get("atol", 1e-5))


def case_names(method: str) -> list[str]:
    """Every case (a `.safetensors` file) in a method's fixture folder, never a hard-coded list."""
    folder = fixtures_root() / method
    if not folder.is_dir():
        raise FileNotFoundError(f"Fixture folder {folder} is missing; set VTC_FIXTURES_DIR to the fixtures root.")
    return sorted(path.stem for path in folder.glob("*.safetensors"))


def load_case(method: str, name: str) -> FixtureCase:
    folder = fixtures_root() / method
    manifest_path = folder / f"{name}.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    return FixtureCase(name=name, manifest=manifest, tensors=load_file(folder / f"{name}.safetensors"))
