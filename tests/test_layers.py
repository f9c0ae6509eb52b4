"""The data flows one way: a module never imports one of a higher layer (checked over the real
imports of every module, lazy imports inside functions included)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "volviz"

#: lowest first; a module may import its own layer and any lower one
LAYERS = [
    ("errors", "__init__"),
    ("sources",),
    ("capture",),
    ("store",),
    ("analysis",),
    ("views",),
    ("record", "scene"),
    ("app",),
    ("commands", "cli", "__main__"),
]


def layer_of(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS in {__file__}")


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("volviz"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("volviz") and not node.level:
            found.add(node.module)
    return found


def test_no_module_imports_a_higher_layer():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        me = module_name(path)
        for target in imports_of(path):
            if target == "volviz":
                continue
            if layer_of(target) > layer_of(me):
                bad.append(f"{me} (layer {layer_of(me)}) imports {target} (layer {layer_of(target)})")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_the_check_sees_real_imports():
    """The check must not pass vacuously: the app does import the store, and so on."""
    app = imports_of(ROOT / "cli.py")
    assert any(t.startswith("volviz.store") for t in app)
    assert layer_of("volviz.views.volume") > layer_of("volviz.analysis.reorder") > layer_of("volviz.store.store")


def test_no_zarr_path_or_plan_key_outside_the_store():
    """Only volviz/store knows the layout: no zarr paths, no ``plan[...]`` outside it."""
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.is_relative_to(ROOT / "store"):
            continue
        text = path.read_text()
        for needle in ("plan[", "grad_weight/", '"act/', "f\"act/", "._root", ".root[", "zarr.open"):
            if needle in text:
                bad.append(f"{path.relative_to(ROOT.parent)}: {needle}")
    assert not bad, "store internals used outside volviz/store:\n" + "\n".join(bad)
