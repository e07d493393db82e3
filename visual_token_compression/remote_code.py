"""A flat, self-contained copy of a model type's code, so `trust_remote_code=True` loads it without this package.

transformers copies a remote class's module file and the files it imports with `from .name import`, all from the
checkpoint's top folder; it cannot follow `from ..compat import` across our subpackages. So every module the
classes need is copied under a flat name (`modeling/base.py` -> `modeling_base.py`) with its relative imports
rewritten, and one entry module re-exports the classes. Every `auto_map` entry points to that one module: the
dynamic loader hashes each entry module's import closure into its own folder, so entries in different modules
would load two copies of a shared class, and `isinstance` checks between them (the processor's HD test) would fail.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import sys
from pathlib import Path

PACKAGE = __name__.rpartition(".")[0]
ENTRY_MODULE = "remote_classes"
_IMPORT_HEAD = re.compile(r"from\s+\.+[\w.]*\s+import")


def flat_name(module_name: str) -> str:
    """`visual_token_compression.modeling.base` -> `modeling_base`."""
    return module_name.removeprefix(PACKAGE + ".").replace(".", "_")


def _resolve(module_name: str, node: ast.ImportFrom) -> str:
    """The absolute module a relative `from ... import` names, from inside `module_name` (a plain module)."""
    parent = module_name.rsplit(".", node.level)[0]
    return f"{parent}.{node.module}" if node.module else parent


def _relative_imports(module_name: str) -> tuple[str, list[tuple[ast.ImportFrom, str]]]:
    """The module's source and each of its relative imports (anywhere in the file) with the module it names."""
    source = Path(sys.modules[module_name].__file__).read_text(encoding="utf-8")
    imports = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            target = _resolve(module_name, node)
            if hasattr(importlib.import_module(target), "__path__"):
                raise ValueError(
                    f"{module_name} imports from the package {target}; import from the defining module instead, "
                    "so that its code can be bundled flat for trust_remote_code."
                )
            imports.append((node, target))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
            if any(name.split(".")[0] == PACKAGE for name in names):
                raise ValueError(f"{module_name} imports {PACKAGE} by its absolute name; use a relative import.")
    return source, imports


def _rewrite(source: str, imports: list[tuple[ast.ImportFrom, str]]) -> str:
    lines = source.splitlines(keepends=True)
    for node, target in imports:
        line = lines[node.lineno - 1]
        head = _IMPORT_HEAD.match(line, node.col_offset)
        if head is None:  # e.g. a backslash continuation: not written in this package, refuse rather than guess
            raise ValueError(f"Cannot rewrite the import on line {node.lineno}: {line.strip()!r}")
        lines[node.lineno - 1] = line[: head.start()] + f"from .{flat_name(target)} import" + line[head.end() :]
    return "".join(lines)


def _first_public_name(module_name: str) -> str:
    """A name the module defines at top level, for the entry module to import it by."""
    for node in ast.parse(Path(sys.modules[module_name].__file__).read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node]
        for target in targets:
            name = getattr(target, "name", None) or getattr(target, "id", None)
            if isinstance(name, str) and not name.startswith("_"):
                return name
    raise ValueError(f"{module_name} defines no public name for the entry module to import.")


def bundle_sources(classes: list[type]) -> dict[str, str]:
    """File name -> source of every module the classes need, imports made flat, plus the entry module."""
    for cls in classes:
        if not cls.__module__.startswith(PACKAGE + "."):
            raise ValueError(f"{cls.__qualname__} is defined in {cls.__module__}, outside {PACKAGE}.")
    files, pending, seen = {}, [cls.__module__ for cls in classes], set()
    while pending:
        module_name = pending.pop()
        if module_name in seen:
            continue
        seen.add(module_name)
        source, imports = _relative_imports(module_name)
        relative_path = module_name.removeprefix(PACKAGE + ".").replace(".", "/") + ".py"
        header = f"# {PACKAGE}/{relative_path}, bundled for trust_remote_code with its imports made flat.\n"
        files[flat_name(module_name) + ".py"] = header + _rewrite(source, imports)
        pending.extend(target for _, target in imports)
    if ENTRY_MODULE + ".py" in files:
        raise ValueError(f"A bundled module is already named {ENTRY_MODULE}.py.")

    # transformers 4.57 copies only the files a local entry module imports directly (5.x follows them
    # recursively), so the entry imports something from every bundled module, not only the auto_map classes.
    auto_map_names = {}
    for cls in classes:
        auto_map_names.setdefault(flat_name(cls.__module__), set()).add(cls.__name__)
    by_module = {flat_name(name): auto_map_names.get(flat_name(name)) or {_first_public_name(name)} for name in seen}
    entry = ['"""The classes `auto_map` points to, all from one module so that they load as one copy."""\n\n']
    entry.append("# Every bundled module is imported: transformers 4.57 copies only a local entry's direct imports.\n")
    for module, names in sorted(by_module.items()):
        entry.append(f"from .{module} import {', '.join(sorted(names))}\n")
    entry.append(f"\n__all__ = {json.dumps(sorted({cls.__name__ for cls in classes}))}\n")
    files[ENTRY_MODULE + ".py"] = "".join(entry)
    return files


def _update_json(path: Path, update) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    update(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _add_auto_map(data: dict, entries: dict[str, type]) -> None:
    data.setdefault("auto_map", {}).update({auto: f"{ENTRY_MODULE}.{cls.__name__}" for auto, cls in entries.items()})


def _image_processor_classes(entry, processor=None) -> list[type]:
    """This package's image processors a model type may use (TokenPacker-HD's tiler), and the processor's own."""
    candidates = [entry.image_processor_class, type(getattr(processor, "image_processor", None))]
    ours = [cls for cls in candidates if cls is not None and cls.__module__.startswith(PACKAGE + ".")]
    return list(dict.fromkeys(ours))


def remote_classes(entry, processor=None) -> list[type]:
    """Every class a model type's bundle holds: config, models, processor and image processors. The same for the
    model's and the processor's `save_pretrained`, so that each writes the same entry module and their `auto_map`s
    point to one copy of the code."""
    processor_class = entry.processor_class if processor is None else type(processor)
    image_processors = _image_processor_classes(entry, processor)
    return list(
        dict.fromkeys(
            [entry.config_class, entry.model_class, entry.for_generation_class, processor_class, *image_processors]
        )
    )


def write_remote_code(folder: str | Path, entry, processor=None) -> list[str]:
    """Write the code bundle of a model type into a `save_pretrained` folder and point its `auto_map`s at it.

    Every config file present gets its `auto_map` (config.json: the model's auto classes and AutoProcessor; the
    processor's files: AutoProcessor, and AutoImageProcessor where the saved image processor is one of this
    package's), so the model's and the processor's `save_pretrained` each call it, in either order.

    Args:
        folder: holds the model's and/or the processor's `save_pretrained` output.
        entry: the model type's `auto.ModelType`.
        processor: the saved processor, if any; its class is the one `AutoProcessor` maps to (default: the model
            type's processor class).

    Returns:
        The names of the code files written.
    """
    folder = Path(folder)
    classes = remote_classes(entry, processor)
    processor_class = entry.processor_class if processor is None else type(processor)
    model_autos = {
        "AutoConfig": entry.config_class,
        "AutoModel": entry.model_class,
        "AutoModelForImageTextToText": entry.for_generation_class,
        # 4.57's older name for the same auto class; 5.x ignores keys it does not know.
        "AutoModelForVision2Seq": entry.for_generation_class,
        "AutoProcessor": processor_class,
    }
    files = bundle_sources(classes)
    for name, source in files.items():
        (folder / name).write_text(source, encoding="utf-8")

    if (folder / "config.json").exists():
        _update_json(folder / "config.json", lambda config: _add_auto_map(config, model_autos))
    processor_autos = {"AutoProcessor": processor_class}
    image_processors = {cls.__name__: cls for cls in _image_processor_classes(entry, processor)}

    def image_autos(image_processor_config: dict) -> dict:
        cls = image_processors.get(image_processor_config.get("image_processor_type"))
        return {"AutoImageProcessor": cls} if cls is not None else {}

    # 5.x nests the image processor in processor_config.json; 4.57 writes it to preprocessor_config.json.
    if (folder / "processor_config.json").exists():

        def update_processor(data):
            _add_auto_map(data, processor_autos)
            nested = data.get("image_processor")
            if isinstance(nested, dict) and image_autos(nested):
                _add_auto_map(nested, image_autos(nested))

        _update_json(folder / "processor_config.json", update_processor)
    if (folder / "preprocessor_config.json").exists():
        _update_json(
            folder / "preprocessor_config.json", lambda data: _add_auto_map(data, processor_autos | image_autos(data))
        )
    return sorted(files)
