"""Checkpoints: plain dicts of tensors and primitives, loadable with ``weights_only=True``.

Layout: ``{"format": "sigmabranch-checkpoint/1", "kind": "dense"|"tree"|..., "model_name",
"model_args", "state_dict", "config", "metrics", "epoch", "optimizer", "scheduler"}``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

FORMAT = "sigmabranch-checkpoint/1"


class CheckpointError(ValueError):
    pass


def save_checkpoint(path: str | os.PathLike, **fields: Any) -> Path:
    """Write atomically (temp file + rename) so an interrupted save never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, **fields}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/foreign files
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a sigmabranch checkpoint (expected format {FORMAT!r})")
    if kind is not None and ckpt.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a {ckpt.get('kind')!r} model, expected a {kind!r} one")
    return ckpt


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """``load_state_dict(strict=True)`` with an error that names the first offending key.

    Torch's own strict load runs first: modules such as Brevitas quantizers add state (learned
    scales) only once trained and accept it at load time, which a plain key comparison would reject.
    """
    try:
        model.load_state_dict(state_dict, strict=True)
        return
    except RuntimeError as err:
        expected = model.state_dict()
        for key, value in state_dict.items():
            if key in expected and tuple(expected[key].shape) != tuple(value.shape):
                raise CheckpointError(f"{source}: shape mismatch for {key!r}: checkpoint {tuple(value.shape)}, "
                                      f"model {tuple(expected[key].shape)}") from err
        for key in expected:
            if key not in state_dict:
                raise CheckpointError(f"{source}: missing key {key!r} required by {type(model).__name__}") from err
        for key in state_dict:
            if key not in expected:
                raise CheckpointError(f"{source}: unexpected key {key!r} (not in {type(model).__name__})") from err
        raise CheckpointError(f"{source}: does not fit {type(model).__name__}: {err}") from err


def model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a dense registered model from its checkpoint."""
    from .registry import create_model

    ckpt = load_checkpoint(path, kind="dense")
    model = create_model(ckpt["model_name"], **ckpt.get("model_args", {}))
    load_state_dict_checked(model, ckpt["state_dict"], source=str(path))
    return model, ckpt
