"""Run configurations: YAML or JSON files loaded into typed dataclasses.

Unknown keys are an error (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    augment: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    name: str = "edge_cnn"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd (Nesterov momentum) or adam
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine (with linear warm-up) or step
    warmup_epochs: int = 0
    step_size: int = 20  # step schedule: decay every step_size epochs
    gamma: float = 0.7  # step schedule: decay factor
    label_smoothing: float = 0.0


@dataclass
class TreeConfig:
    """Conversion (Section III-C) and fine-tuning loss (III-D) settings.

    The paper's copy lost the values of tau and N; the defaults here are our choices.
    """

    depth: int | str = 2  # or "auto": the deepest tree up to max_depth whose every split is clustered
    max_depth: int = 3  # depth: auto tries 1..max_depth (model/convert.py choose_depth)
    auto_min_gap: float = 0.05  # depth: auto: a split's silhouette must beat its structureless reference by this ...
    auto_min_cluster: float = 0.1  # ... and its smaller cluster this fraction of the node's samples
    alpha: float = 0.5  # fraction of each specialiser's channels shared by both branches
    width_factors: list[float] | None = None  # per level; None = the architecture's default
    proj_dim: int = 128
    dropout: float = 0.1
    max_samples: int = 2048  # N: training samples forwarded for k-means and activation statistics
    kmeans_iters: int = 50
    init: str = "activation"  # or "random" (random channel partition, Section V-E ablation)
    channel_score: str = "activation"  # Phase 2 per-channel score: mean "activation" or "agf" utility (model/agf.py)
    recalibrate_bn: bool = True  # re-estimate BN statistics of narrowed layers (not in the paper)
    resp_lambda: float = 0.3  # weight of the responsibility loss (0 = the Section V-E ablation)
    resp_tau: float = 1.0  # temperature of the soft-min responsibility target
    balance_lambda: float = 0.0  # load-balancing term (model/finetune.py balance_loss; not in the paper)
    margin_lambda: float = 0.0  # routing-margin term (model/finetune.py margin_loss; not in the paper)
    margin: float = 0.8  # the margin it asks of every router, in its LayerNorm latent's units
    # Knowledge distillation from the dense model (Hinton et al.; not in the paper): every leaf is
    # pulled toward the dense model's softened outputs on the inputs routed to it
    # (model/finetune.py distill_loss). The teacher is a dense checkpoint.pt.
    distill_lambda: float = 0.0
    distill_tau: float = 4.0
    distill_teacher: str | None = None


@dataclass
class QuantConfig:
    """Quantisation-aware fine-tuning (``sigmabranch quantize``)."""

    bits: str = "w4a4"  # a preset of quant/presets.py: w8a8, w4a4 (hardware default), w2a2, or wXaY
    calibration_batches: int = 8  # forward passes (no gradient) that set the activation scales first
    # Keep the fine-tuned float tree's routing: its hard leaf is the routers' target and its routing
    # weights the specialist loss, with this weight on the routing term. 0 = re-learn the routing
    # (the float fine-tuning's responsibility loss), which moved ~70% of the demo's inputs to
    # another leaf at W4A4.
    route_distill: float = 1.0
    # After QAT, refit each router's final linear (a logistic regression on the quantised tree's
    # latents) to the float tree's decisions on this many training inputs (0 = off); with
    # route_distill > 0 only. It costs nothing in hardware: the refit router folds into u and c.
    router_refit_samples: int = 10000


@dataclass
class TrainConfig:
    """Everything a training run needs; the file format of ``configs/*.yaml``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 30
    batch_size: int = 64
    eval_batch_size: int = 256
    seed: int = 0
    num_workers: int = 0
    channels_last: bool = False  # NHWC memory format for conv nets: ~20-25% faster on CPU here
    tree: TreeConfig = field(default_factory=TreeConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a leaf value against its field type. YAML 1.1 reads ``1e-3`` (no dot) as a string,
    so a string that parses as a number is accepted for a float field."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{where}: a value is required")
    for option in options:
        base = typing.get_origin(option) or option
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base is float and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                continue
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base in (bool, str, dict) and isinstance(value, base):
            return value
        if base is list and isinstance(value, list):
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{where}: expected {names}, got {value!r}")


def build_section(cls, values: dict[str, Any], where: str):
    """A config dataclass ``cls`` from a mapping, nested sections included. Unknown keys and
    mistyped values are a :class:`ConfigError` naming ``where`` (the file, then the key path).
    Other config formats (``baselines/compare.py``) reuse it for the same checks."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    kwargs = {}
    for key, value in values.items():
        sub = known[key].default_factory if known[key].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[key] = build_section(sub, value or {}, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any], where: str = "config") -> TrainConfig:
    return build_section(TrainConfig, values, where)


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Load a YAML (``.yaml``/``.yml``) or JSON config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from err
    return config_from_dict(values or {}, where=str(path))


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars), e.g. ``epochs=2``."""
    values = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=0.05)")
        dotted, raw = item.split("=", 1)
        node = values
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = node[part]
        node[leaf] = yaml.safe_load(raw)
    return config_from_dict(values, where="config (with overrides)")
