"""transformers' own test mixins, taken at test time from the installed release's source distribution.

The mixins (`ModelTesterMixin`, `ConfigTester`, `ProcessorTesterMixin`) live in transformers' `tests/` folder, which
the wheel does not ship. `load(name)` fetches the sdist of exactly the installed version with pip, extracts its
`tests/` tree (once per version) into a cache outside the repository and imports a module of it as
`transformers_tests.<name>`: a package name that cannot clash with our own `tests` package, under which the
modules' relative imports keep working. Nothing of transformers' test code is copied into this repository.

Cache: `$VTC_TRANSFORMERS_TESTS_CACHE/<version>/`, else `~/.cache/visual_token_compression/transformers-tests/
<version>/` (`$XDG_CACHE_HOME` honoured). It is built in a temporary sibling folder and renamed into place, so a
killed run never leaves a half-extracted tree. Without network (and without a cache) loading fails with the pip
command that failed: these tests must not silently disappear.

The sdist's `tests/` holds only the top-level common files. Four modules they import are missing from it; each is
stood in for below (only while the sdist lacks it), and what is lost is said where:
- `tests/generation/test_utils.py` (`GenerationTesterMixin`): no generation mixin runs; tests/test_generation.py
  covers the generation behaviours for every model type.
- `tests/exporters/test_export.py` (`ExportTesterMixin`, a base of `ModelTesterMixin`): the export tests are
  missing from the run.
- `tests/utils/test_configuration_utils.py` (`config_common_kwargs`): read only by `ConfigTester` for configs
  without sub-configs (ours all have them); any use raises.
- `utils/fetch_hub_objects_for_ci.py` (`url_to_local_path`): transformers' CI downloads test media beforehand. Here
  image URLs map to a synthetic local image (the Hub cannot be reached), other URLs are returned as they are (as the
  real helper does when a file was not fetched): our processors take no video or audio.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
import warnings
from pathlib import Path

import pytest
import transformers

PACKAGE = "transformers_tests"
CACHE_ENV = "VTC_TRANSFORMERS_TESTS_CACHE"


class SuiteUnavailable(RuntimeError):
    """The installed transformers version's sdist could not be fetched (no registry access and no cache)."""


def cache_dir(version: str | None = None) -> Path:
    """Where the extracted `tests/` of a transformers version lives (as `<dir>/transformers_tests`)."""
    version = version or transformers.__version__
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base).expanduser() / version
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "visual_token_compression" / "transformers-tests" / version


def download_command(version: str, destination: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"transformers=={version}",
        "--no-binary",
        ":all:",
        "--no-deps",
        "--disable-pip-version-check",
        "-d",
        str(destination),
    ]


def _download_sdist(version: str, destination: Path) -> Path:
    command = download_command(version, destination)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as error:
        result = None
        detail = str(error)
    else:
        detail = (result.stdout + result.stderr)[-3000:]
    archives = sorted(destination.glob(f"transformers-{version}.tar.gz"))
    if result is None or result.returncode != 0 or not archives:
        raise SuiteUnavailable(
            f"Could not fetch transformers {version}'s source distribution, which holds the transformers test mixins "
            f"these tests run. The command was:\n  {' '.join(command)}\nIt needs access to the package registry "
            f"(PyPI). Run it where the registry can be reached, or point ${CACHE_ENV} at a folder holding "
            f"<version>/{PACKAGE}/ extracted from the sdist's tests/. Its output:\n{detail}"
        )
    return archives[0]


def _extract_tests(archive: Path, version: str, target: Path):
    """The sdist's `tests/` tree, and nothing else, as `target` (a package: an empty `__init__.py` is added, as in
    the transformers repository, where `tests/__init__.py` is empty)."""
    prefix = f"transformers-{version}/tests/"
    with tarfile.open(archive) as sdist:
        members = [m for m in sdist.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
        if not any(m.name.endswith("/test_modeling_common.py") for m in members):
            raise RuntimeError(f"{archive.name} has no tests/test_modeling_common.py; cannot run the mixins.")
        staging = target.parent / "sdist"
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12 / 3.11.4
        sdist.extractall(staging, members=members, **safe)
    (staging / prefix).rename(target)
    shutil.rmtree(staging)
    (target / "__init__.py").touch(exist_ok=True)


def ensure_extracted(version: str | None = None) -> Path:
    """The cache folder for `version` with `transformers_tests/` in it, downloading and extracting it once."""
    version = version or transformers.__version__
    final = cache_dir(version)
    if (final / PACKAGE / "test_modeling_common.py").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=final.parent))
    try:
        archive = _download_sdist(version, partial / "download")
        _extract_tests(archive, version, partial / PACKAGE)
        shutil.rmtree(partial / "download")
        partial.chmod(0o755)  # mkdtemp's 0o700 would keep the cache private to its creator
        try:
            os.rename(partial, final)  # atomic: another run either finds the whole tree or none of it
        except OSError:
            if not (final / PACKAGE / "test_modeling_common.py").is_file():
                raise  # not another run's finished tree, e.g. a stale non-empty folder: say so
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------------------------------
# Stand-ins for the modules the sdist lacks (see the module docstring).


class _GenerationTesterMixin:
    """Stand-in for transformers' `GenerationTesterMixin`, absent from the sdist: inheriting it is an error, so that no
    test class silently runs without its generation tests."""

    def __init_subclass__(cls, **kwargs):
        raise TypeError(
            "transformers' sdist does not ship tests/generation/test_utils.py, so GenerationTesterMixin cannot run; "
            "tests/test_generation.py covers generation."
        )


class _ExportTesterMixin:
    """Stand-in for transformers' `ExportTesterMixin` (a base of `ModelTesterMixin`), absent from the sdist."""


class _UnavailableConfigCommonKwargs(dict):
    """Stand-in for `config_common_kwargs`: `ConfigTester` reads it only for configs without sub-configs."""

    def _refuse(self, *args, **kwargs):
        raise RuntimeError(
            "config_common_kwargs lives in transformers' tests/utils/test_configuration_utils.py, which the sdist "
            "does not ship; ConfigTester.check_config_arguments_init cannot run for a config without sub-configs."
        )

    __deepcopy__ = __copy__ = __iter__ = __getitem__ = items = keys = values = __len__ = _refuse


def _synthetic_image(cache: Path, name: str) -> Path:
    path = cache / "hub_objects" / name
    if not path.exists():
        import numpy as np
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        scratch = path.with_name(f".{os.getpid()}.{name}")
        Image.fromarray(pixels).save(scratch, format="PNG" if name.lower().endswith(".png") else "JPEG")
        os.replace(scratch, path)
    return path


def _url_to_local_path(cache: Path):
    def url_to_local_path(url, return_url_if_not_found=True):
        name = str(url).split("/")[-1].split("?")[0]
        if name.lower().endswith((".png", ".jpg", ".jpeg")):
            return str(_synthetic_image(cache, name))
        return url if return_url_if_not_found else name

    return url_to_local_path


def _stand_in(name: str, is_package: bool = False, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    if is_package:
        module.__path__ = []
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def _install_stand_ins(cache: Path):
    tests = cache / PACKAGE
    missing = {
        "generation/test_utils.py": {"GenerationTesterMixin": _GenerationTesterMixin},
        "exporters/test_export.py": {"ExportTesterMixin": _ExportTesterMixin},
        "utils/test_configuration_utils.py": {"config_common_kwargs": _UnavailableConfigCommonKwargs()},
    }
    for relative, attributes in missing.items():
        if (tests / relative).is_file():
            continue  # a later sdist ships it: use the real one
        package, module = relative.removesuffix(".py").split("/")
        if f"{PACKAGE}.{package}" not in sys.modules:
            _stand_in(f"{PACKAGE}.{package}", is_package=True)
        _stand_in(f"{PACKAGE}.{package}.{module}", **attributes)
    # test_processing_common appends <cache>/utils to sys.path and imports this module from there.
    if (
        not (cache / "utils" / "fetch_hub_objects_for_ci.py").is_file()
        and "fetch_hub_objects_for_ci" not in sys.modules
    ):
        _stand_in("fetch_hub_objects_for_ci", url_to_local_path=_url_to_local_path(cache))


def load(module: str) -> types.ModuleType:
    """`transformers_tests.<module>` of the installed transformers version, e.g. `load("test_modeling_common")`."""
    cache = ensure_extracted()
    if str(cache) not in sys.path:
        sys.path.append(str(cache))
    _install_stand_ins(cache)
    with warnings.catch_warnings():
        # The modules mark tests with transformers' own marks (flash_attn_test, torch_compile_test, ...), which its
        # conftest.py registers; unregistered here, they only warn.
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        return importlib.import_module(f"{PACKAGE}.{module}")


def missing_from_sdist(relative: str) -> bool:
    """Whether the installed version's sdist lacks `tests/<relative>` (e.g. "generation/test_utils.py")."""
    return not (ensure_extracted() / PACKAGE / relative).is_file()
