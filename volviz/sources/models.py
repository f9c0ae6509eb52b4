"""Load the model a user points at: a demo name, a torchvision architecture plus a local
weights file, a ``package.module:factory`` plus weights, or a TorchScript file.

Weights are always read with ``weights_only=True`` (or safetensors): a pickled full model runs
arbitrary code on load, so it is refused unless the user passes ``trust_pickle=True``.
A torchvision name also brings, from its weights' metadata (offline, nothing is downloaded), the
class names and the evaluation preprocessing (``Resize(256) + CenterCrop(224)`` and the ImageNet
mean/std for most): ``LoadedModel.class_names`` and ``LoadedModel.preprocess``.
"""

from __future__ import annotations

import importlib
import pathlib
from dataclasses import dataclass, field

import torch
from torch import nn

from volviz.errors import ModelLoadError  # noqa: F401  (re-exported)
from volviz.sources.preprocess import Preprocess

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


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
    preprocess: Preprocess | None = None  # the model's own evaluation preprocessing, when known
    wordnet_ids: list[str] | None = None  # per class, when known (ImageNet folders are named by them)

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "weights": self.weights,
            "input_size": self.input_size,
            "class_names": self.class_names,
            "mean": self.mean,
            "std": self.std,
            "type": type(self.module).__name__,
        }


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _first_line(exc: BaseException) -> str:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch colours some messages
    text = text.split(" This is an internal miniz error")[0]  # the rest is advice for torch developers
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _check_weights_file(path: pathlib.Path) -> None:
    if path.is_dir():
        inside = sorted(f.name for f in path.iterdir() if f.suffix in WEIGHT_SUFFIXES)
        hint = f" (it holds {', '.join(inside[:4])})" if inside else ""
        raise ModelLoadError(
            f"--weights {path} is a folder{hint}; pass the weights file itself, e.g. --weights FOLDER/model.safetensors"
        )
    if not path.exists():
        raise ModelLoadError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(
            f"weights file {path} is empty (0 bytes): the save or download was interrupted; save or download it again"
        )


def _read_state_dict(path: pathlib.Path, trust_pickle: bool) -> dict | nn.Module:
    _check_weights_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError: truncated, corrupt, not safetensors
            raise ModelLoadError(
                f"{path} is not a readable safetensors file ({_first_line(exc)}): it is "
                "truncated or damaged; save or download it again"
            ) from None
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # a pickle weights_only refuses: a full model, custom classes
        if "weights only" not in str(exc).lower():
            raise ModelLoadError(
                f"{path} is not a readable PyTorch weights file ({_first_line(exc)[:120]}): it is "
                "truncated or damaged; save or download it again"
            ) from None
        if not trust_pickle:
            raise ModelLoadError(
                f"{path} is not a plain state_dict (loading with weights_only=True failed: "
                f"{_first_line(exc)[:120]}). If it is a pickled full model from a source you "
                "trust, pass --trust-pickle; better, save model.state_dict() instead."
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise ModelLoadError(f"{path} cannot be loaded even as a trusted pickle ({_first_line(exc2)})") from None
    except Exception as exc:  # EOFError, a broken zip: the file itself is damaged
        raise ModelLoadError(
            f"{path} is not a readable PyTorch weights file ({_first_line(exc)[:120]}): it is "
            "truncated or damaged; save or download it again"
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        # checkpoints saved from DataParallel / torch.compile prefix every key
        for prefix in ("module.", "_orig_mod."):
            if obj and all(isinstance(k, str) and k.startswith(prefix) for k in obj):
                obj = {k[len(prefix) :]: v for k, v in obj.items()}
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
        raise ModelLoadError(
            f"weights in {weights} do not fit {type(module).__name__}: {' '.join(str(exc).split()[6:])[:400]}"
        ) from None
    if missing or unexpected:
        raise ModelLoadError(
            f"weights in {weights} do not fit {type(module).__name__}: "
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    return module


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_meta(name: str) -> tuple[list[str] | None, Preprocess | None]:
    """Class names and evaluation preprocessing of a torchvision architecture, from its DEFAULT
    weights' metadata and ``transforms()`` (both offline: nothing is downloaded)."""
    import torchvision

    try:
        w = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None, None
    cats = w.meta.get("categories")
    names = list(cats) if cats else None
    try:
        t = w.transforms()
        crop, short = int(t.crop_size[0]), int(t.resize_size[0])
        prep = Preprocess(
            (crop, crop),
            3,
            tuple(map(float, t.mean)),
            tuple(map(float, t.std)),
            mode="resize_crop",
            short_side=max(short, crop),
        )
    except (AttributeError, TypeError, IndexError, ValueError):
        prep = None
    return names, prep


def load_model(
    spec: str, weights: str | None = None, *, trust_pickle: bool = False, num_classes: int | None = None
) -> LoadedModel:
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
        return LoadedModel(
            module.eval(),
            spec,
            weights,
            tuple(info.input_size),
            list(info.class_names),
            tuple(info.mean),
            tuple(info.std),
        )

    path = pathlib.Path(spec)
    if path.suffix in (".pt", ".pth", ".ts", ".jit", ".torchscript") or path.exists():
        if not path.exists():
            raise ModelLoadError(f"model file not found: {path}")
        if path.is_dir() or path.stat().st_size == 0:
            raise ModelLoadError(
                f"{path} is {'a folder' if path.is_dir() else 'empty (0 bytes)'}, not a "
                "TorchScript file; pass the file written by torch.jit.save"
            )
        from volviz.sources.scripted import load_torchscript

        try:
            module = load_torchscript(path)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"{path} is not a TorchScript file ({_first_line(exc)[:160]}). A state_dict "
                "needs an architecture: --model resnet18 --weights FILE, or --model pkg.mod:factory "
                "--weights FILE"
            ) from None
        return LoadedModel(module, spec, None)

    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ModelLoadError(f"cannot import factory {spec!r}: {exc}") from None
        try:
            module = factory()
        except Exception as exc:  # the user's code failed: say where, keep it to one line
            raise ModelLoadError(
                f"factory {spec!r} raised {type(exc).__name__}: {_first_line(exc)}; "
                "fix the factory (it is called with no arguments)"
            ) from None
        if not isinstance(module, nn.Module):
            raise ModelLoadError(f"factory {spec!r} returned {type(module).__name__}, not nn.Module")
        module = _apply_weights(module, weights, trust_pickle)
        return LoadedModel(module.eval(), spec, weights)

    names = _torchvision_names()
    if spec not in names:
        raise ModelLoadError(
            f"unknown model {spec!r}. Use a demo model ({', '.join(demo.DEMO_NAMES)}), a "
            f"package.module:factory, a TorchScript file, or a torchvision name: {', '.join(names)}"
        )
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
    names, prep = torchvision_meta(spec)
    if names is not None and num_classes is not None and num_classes != len(names):
        names = None  # a re-headed model: the weights' categories are not its classes
    size = prep.size[0] if prep else (299 if spec.startswith("inception") else 224)
    mean, std = (prep.mean, prep.std) if prep else (IMAGENET_MEAN, IMAGENET_STD)
    return LoadedModel(module.eval(), spec, weights, (3, size, size), names, mean, std, extra, prep)
