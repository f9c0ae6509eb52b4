"""Load the model a user points at: a demo name, a torchvision architecture plus a local
weights file, a ``package.module:factory`` plus weights, or a TorchScript file.

Weights are always read with ``weights_only=True`` (or safetensors): a pickled full model runs
arbitrary code on load, so it is refused unless the user passes ``trust_pickle=True``.
"""
from __future__ import annotations

from volviz.errors import ModelLoadError  # noqa: F401  (re-exported)
import importlib
import pathlib
from dataclasses import dataclass, field

import torch
from torch import nn




@dataclass
class LoadedModel:
    module: nn.Module
    spec: str
    weights: str | None = None
    input_size: tuple[int, int, int] | None = None  # (C, H, W) the model expects, when known
    class_names: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"spec": self.spec, "weights": self.weights, "input_size": self.input_size,
                "class_names": self.class_names, "mean": self.mean, "std": self.std,
                "type": type(self.module).__name__}


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _read_state_dict(path: pathlib.Path, trust_pickle: bool) -> dict | nn.Module:
    if not path.exists():
        raise ModelLoadError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends
        if not trust_pickle:
            raise ModelLoadError(
                f"{path} is not a plain state_dict (loading with weights_only=True failed: "
                f"{str(exc).splitlines()[0][:200]}). If it is a pickled full model from a source you "
                "trust, pass --trust-pickle; better, save model.state_dict() instead.") from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        # checkpoints saved from DataParallel / torch.compile prefix every key
        for prefix in ("module.", "_orig_mod."):
            if obj and all(k.startswith(prefix) for k in obj):
                obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _apply_weights(module: nn.Module, weights: str | None, trust_pickle: bool) -> nn.Module:
    if weights is None:
        return module
    obj = _read_state_dict(pathlib.Path(weights), trust_pickle)
    if isinstance(obj, nn.Module):
        return obj
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{weights} holds a {type(obj).__name__}, not a state_dict")
    try:
        missing, unexpected = module.load_state_dict(obj, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ModelLoadError(f"weights in {weights} do not fit {type(module).__name__}: "
                             f"{' '.join(str(exc).split()[6:])[:400]}") from None
    if missing or unexpected:
        raise ModelLoadError(
            f"weights in {weights} do not fit {type(module).__name__}: "
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    return module


def _torchvision_names() -> list[str]:
    import torchvision
    return sorted(torchvision.models.list_models(module=torchvision.models))


def load_model(spec: str, weights: str | None = None, *, trust_pickle: bool = False,
               num_classes: int | None = None) -> LoadedModel:
    """Resolve ``spec`` to an eval-mode model.

    spec: ``digits`` / ``faces`` (embedded demo), a torchvision name (``resnet18``), a factory
    ``package.module:function``, or a path to a TorchScript (``.pt``/``.pth`` saved by
    ``torch.jit.save``) file.
    """
    from volviz.sources import demo

    if spec in demo.DEMO_NAMES:
        info = demo.DEMO_INFO[spec]
        if weights is None:
            module = demo.load_demo_model(spec)
            weights = str(demo.demo_weights_path(spec))
        else:
            module = _apply_weights(demo.build_demo_model(spec), weights, trust_pickle)
        return LoadedModel(module.eval(), spec, weights, tuple(info.input_size),
                           list(info.class_names), tuple(info.mean), tuple(info.std))

    path = pathlib.Path(spec)
    if path.suffix in (".pt", ".pth", ".ts", ".jit", ".torchscript") or path.exists():
        if not path.exists():
            raise ModelLoadError(f"model file not found: {path}")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(
                f"{path} is not a TorchScript file ({str(exc).splitlines()[0][:160]}). A state_dict "
                "needs an architecture: --model resnet18 --weights FILE, or --model pkg.mod:factory "
                "--weights FILE") from None
        return LoadedModel(module.eval(), spec, None)

    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ModelLoadError(f"cannot import factory {spec!r}: {exc}") from None
        module = factory()
        if not isinstance(module, nn.Module):
            raise ModelLoadError(f"factory {spec!r} returned {type(module).__name__}, not nn.Module")
        module = _apply_weights(module, weights, trust_pickle)
        return LoadedModel(module.eval(), spec, weights)

    names = _torchvision_names()
    if spec not in names:
        raise ModelLoadError(
            f"unknown model {spec!r}. Use a demo model ({', '.join(demo.DEMO_NAMES)}), a "
            f"package.module:factory, a TorchScript file, or a torchvision name: {', '.join(names)}")
    import torchvision
    kwargs = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    module = torchvision.models.get_model(spec, **kwargs)
    if weights is None:
        extra = {"random_weights": True}
    else:
        extra = {}
        module = _apply_weights(module, weights, trust_pickle)
    size = 299 if spec.startswith("inception") else 224
    return LoadedModel(module.eval(), spec, weights, (3, size, size), None,
                       IMAGENET_MEAN, IMAGENET_STD, extra)
