"""A model registry in the style of timm: ``create_model("resnet50_cifar", num_classes=100)``.

Each variant is a small function decorated with :func:`register_model` that builds
its arguments and calls one shared builder.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name; returns it unchanged."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def _import_builtin_models() -> None:
    # Importing the modules runs their @register_model decorators.
    from . import edge_cnn, pointnet2, resnet  # noqa: F401


def list_models() -> list[str]:
    _import_builtin_models()
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model, e.g. ``create_model("pointnet2_ssg", num_classes=40)``."""
    _import_builtin_models()
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(sorted(_MODELS))}")
    model = _MODELS[name](**kwargs)
    model.model_name = name
    return model
