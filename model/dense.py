"""Dense (pre-conversion) training and evaluation of a registered model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .accounting import count_params, model_macs
from .checkpoint import model_from_checkpoint
from .config import TrainConfig
from .data import build_dataset
from .registry import create_model
from .train import evaluate_classifier, fit, make_loader, seed_everything, write_json
from .distributed import is_main_process, local_device


def dataset_for(cfg: TrainConfig, augment: bool | None = None):
    augment = cfg.data.augment if augment is None else augment
    return build_dataset(cfg.data.name, cfg.data.root, seed=cfg.seed, augment=augment, **cfg.data.options)


def model_args_for(cfg: TrainConfig, num_classes: int, input_shape: tuple[int, ...]) -> dict[str, Any]:
    args = {"num_classes": num_classes, **cfg.model.args}
    if cfg.model.name.startswith("pointnet2"):
        args.setdefault("in_chans", input_shape[-1])
    else:
        args.setdefault("in_chans", input_shape[0])
    return args


def train_dense(cfg: TrainConfig, out_dir: str | Path, device: str = "auto", resume: str | None = None) -> dict[str, Any]:
    """Train the dense model of ``cfg``; writes checkpoint.pt, metrics.json, train_curve.png."""
    data = dataset_for(cfg)
    args = model_args_for(cfg, data.num_classes, data.input_shape)
    seed_everything(cfg.seed)  # the initial weights too, so a config reproduces its run
    model = create_model(cfg.model.name, **args)
    result = fit(model, cfg, data.train, data.test, out_dir, kind="dense", model_name=cfg.model.name,
                 model_args=args, device=device, resume=resume,
                 extra_checkpoint={"input_shape": list(data.input_shape)})
    metrics = {"model": cfg.model.name, "dataset": cfg.data.name, **result.final,
               "params": count_params(model), "macs": model_macs(model.cpu(), data.input_shape),
               "epochs": cfg.epochs, "train_seconds": sum(h["seconds"] for h in result.history)}
    if is_main_process():
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def evaluate_dense(checkpoint: str | Path, cfg: TrainConfig | None = None, device: str = "auto") -> dict[str, Any]:
    """Top-1/Top-5, params and MACs of a dense checkpoint on its config's test split."""
    from .config import config_from_dict

    model, ckpt = model_from_checkpoint(checkpoint)
    cfg = cfg or config_from_dict(ckpt["config"])
    data = dataset_for(cfg)
    dev = local_device(device)
    loader = make_loader(data.test, cfg.eval_batch_size, False, cfg.seed)
    metrics = evaluate_classifier(model.to(dev), loader, dev)
    return {"model": ckpt["model_name"], **metrics, "params": count_params(model),
            "macs": model_macs(model.cpu(), data.input_shape)}
