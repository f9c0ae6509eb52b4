"""Choose which layers to capture: by exact module name, glob, or type; errors list the valid names.

A module loaded from TorchScript is known by the class it was compiled from (``original_name``:
``Conv2d``), not by its wrapper's type, so a scripted or traced model selects like an eager one.
"""

from __future__ import annotations

import fnmatch

from torch import nn

from volviz.errors import LayerSelectionError  # noqa: F401  (re-exported)

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR_TYPES = (nn.Linear,)
TYPE_ALIASES = {
    "conv": CONV_TYPES,
    "linear": LINEAR_TYPES,
    "fc": LINEAR_TYPES,
    "relu": (nn.ReLU,),
    "pool": (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d),
    "bn": (nn.BatchNorm1d, nn.BatchNorm2d),
}


def named_leaf_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that compute something themselves (no children), keyed by dotted path."""
    return {name: m for name, m in model.named_modules() if name and not list(m.children())}


def type_name(module: nn.Module) -> str:
    """The class name a user knows: ``Conv2d`` also for a TorchScript module compiled from one."""
    name = getattr(module, "original_name", None)
    return name if isinstance(name, str) and name else type(module).__name__


def _is(module: nn.Module, types: tuple) -> bool:
    return isinstance(module, types) or type_name(module) in {t.__name__ for t in types}


def layer_kind(module: nn.Module) -> str:
    if _is(module, CONV_TYPES):
        return "conv"
    if _is(module, LINEAR_TYPES):
        return "linear"
    return type_name(module).lower()


def _type_matches(module: nn.Module, wanted: str) -> bool:
    if wanted.lower() in TYPE_ALIASES:
        return _is(module, TYPE_ALIASES[wanted.lower()])
    return type_name(module).lower() == wanted.lower()


def _listing(modules: dict[str, nn.Module], limit: int = 60) -> str:
    items = [f"{n} ({type_name(m)})" for n, m in modules.items()]
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def select_layers(model: nn.Module, include: list[str] | None = None, types: list[str] | None = None) -> list[str]:
    """Names of the layers to capture, in the model's module order.

    include: exact names or globs (``features.*``, ``layer?.0.conv1``); None = every conv and
    linear layer. types: ``conv``, ``linear``, ``relu``, ... or a class name such as ``Conv2d``.
    """
    modules = named_leaf_modules(model)
    if not modules:
        raise LayerSelectionError("the model has no submodules to capture")
    if include:
        chosen: list[str] = []
        for pattern in include:
            hits = [n for n in modules if n == pattern or fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise LayerSelectionError(f"no layer named {pattern!r}. Valid layer names: {_listing(modules)}")
            chosen.extend(h for h in hits if h not in chosen)
    else:
        chosen = list(modules)
    if types:
        chosen = [n for n in chosen if any(_type_matches(modules[n], t) for t in types)]
        if not chosen:
            raise LayerSelectionError(f"no selected layer has type {', '.join(types)}. Layers: {_listing(modules)}")
    elif not include:
        chosen = [n for n in chosen if _is(modules[n], CONV_TYPES + LINEAR_TYPES)]
        if not any(_is(modules[n], CONV_TYPES) for n in chosen):
            raise LayerSelectionError(
                "the model has no conv layer, so there is no layer volume to show. Select layers "
                f"explicitly with --layers. Layers: {_listing(modules)}"
            )
    order = {n: i for i, n in enumerate(modules)}
    return sorted(chosen, key=order.__getitem__)
