"""Training loop shared by dense training, tree fine-tuning and (later) QAT.

The recipes are the paper's: SGD with Nesterov momentum, cosine schedule with linear warm-up
and label smoothing for images; Adam with step decay for point clouds. A stage plugs in its
own ``loss_fn`` and ``evaluate_fn``; everything else (devices, AMP, DDP, progress bars,
resumable checkpoints, metrics.json and the training-curve plot) lives here once.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, load_state_dict_checked, save_checkpoint
from .config import OptimConfig, TrainConfig, config_from_dict
from .distributed import all_reduce_sum, init_distributed, is_distributed, is_main_process, local_device

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
EvaluateFn = Callable[[nn.Module, DataLoader, torch.device], dict[str, float]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optim.name must be 'sgd' or 'adam', got {cfg.name!r}")


def build_scheduler(cfg: OptimConfig, optimizer, epochs: int, steps_per_epoch: int):
    """A per-step LambdaLR: linear warm-up then cosine to zero, or step decay per epoch."""
    total = max(1, epochs * steps_per_epoch)
    warmup = cfg.warmup_epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    elif cfg.schedule == "step":
        def factor(step: int) -> float:
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
    else:
        raise ValueError(f"optim.schedule must be 'cosine' or 'step', got {cfg.schedule!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def classification_loss(label_smoothing: float = 0.0) -> LossFn:
    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
    return loss_fn


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Top-1 / Top-5 (%) and mean cross-entropy, summed over all processes when distributed."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # correct1, correct5, loss_sum, count
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        totals += torch.tensor([
            (topk[:, 0] == y).sum().item(), (topk == y[:, None]).any(1).sum().item(),
            F.cross_entropy(logits, y, reduction="sum").item(), len(y)], dtype=torch.float64)
    totals = all_reduce_sum(totals)
    n = max(1.0, totals[3].item())
    return {"top1": 100 * totals[0].item() / n, "top5": 100 * totals[1].item() / n, "loss": totals[2].item() / n}


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A DataLoader that shards with a DistributedSampler under torchrun."""
    sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last) if is_distributed() else None
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=num_workers, drop_last=drop_last, generator=generator)


def plot_history(history: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    if all("test_loss" in h for h in history):
        ax_loss.plot(epochs, [h["test_loss"] for h in history], label="test")
    ax_loss.set_xlabel("epoch"), ax_loss.set_ylabel("loss"), ax_loss.legend()
    ax_acc.plot(epochs, [h["test_top1"] for h in history], label="test top-1")
    if all("test_top1_soft" in h for h in history):
        ax_acc.plot(epochs, [h["test_top1_soft"] for h in history], label="test top-1 (soft routing)")
    ax_acc.set_xlabel("epoch"), ax_acc.set_ylabel("top-1 (%)"), ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict[str, Any]]
    final: dict[str, float]
    checkpoint: Path | None


def fit(model: nn.Module, cfg: TrainConfig, train_set: Dataset, test_set: Dataset, out_dir: str | Path, *,
        kind: str, model_name: str, model_args: dict[str, Any], loss_fn: LossFn | None = None,
        evaluate_fn: EvaluateFn = evaluate_classifier, device: str = "auto", resume: str | Path | None = None,
        extra_checkpoint: dict[str, Any] | None = None, progress: bool = True) -> FitResult:
    """Train ``model`` for ``cfg.epochs``; writes ``checkpoint.pt`` every epoch and ``train_curve.png``.

    Under torchrun the model is wrapped in DistributedDataParallel and the data sharded; only
    rank 0 writes files. On CUDA, automatic mixed precision (fp16 autocast + GradScaler) is on.
    """
    out_dir = Path(out_dir)
    dev = local_device(device)
    rank, world = init_distributed(dev)
    seed_everything(cfg.seed)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(dev, memory_format=memory_format)
    loss_fn = loss_fn or classification_loss(cfg.optim.label_smoothing)
    train_model = nn.parallel.DistributedDataParallel(model) if world > 1 else model

    train_loader = make_loader(train_set, cfg.batch_size, True, cfg.seed, cfg.num_workers, drop_last=len(train_set) > cfg.batch_size)
    test_loader = make_loader(test_set, cfg.eval_batch_size, False, cfg.seed, cfg.num_workers)
    optimizer = build_optimizer(cfg.optim, [p for p in model.parameters() if p.requires_grad])
    scheduler = build_scheduler(cfg.optim, optimizer, cfg.epochs, len(train_loader))
    use_amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume is not None:
        ckpt = load_checkpoint(resume, kind=kind)
        load_state_dict_checked(model, ckpt["state_dict"], source=str(resume))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history = list(ckpt.get("history", []))
        start_epoch = int(ckpt["epoch"])

    ckpt_path = out_dir / "checkpoint.pt"
    if is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
    for epoch in range(start_epoch, cfg.epochs):
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        train_model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros(2, dtype=torch.float64)
        bar = tqdm(train_loader, desc=f"{kind} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (progress and is_main_process()) or None)
        for x, y in bar:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if x.dim() == 4:
                x = x.contiguous(memory_format=memory_format)
            with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(train_model, x, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += torch.tensor([loss.item() * len(y), len(y)], dtype=torch.float64)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        loss_sum = all_reduce_sum(loss_sum)
        metrics = evaluate_fn(model, test_loader, dev)
        record = {"epoch": epoch + 1, "train_loss": loss_sum[0].item() / max(1.0, loss_sum[1].item()),
                  "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
                  **{f"test_{k}": v for k, v in metrics.items()}}
        history.append(record)
        if is_main_process():
            print(f"[{kind}] epoch {epoch + 1:3d}/{cfg.epochs}  train_loss {record['train_loss']:.4f}  "
                  + "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()) + f"  ({record['seconds']:.1f}s)", flush=True)
            save_checkpoint(ckpt_path, kind=kind, model_name=model_name, model_args=model_args,
                            state_dict=model.state_dict(), config=cfg.to_dict(), metrics=metrics,
                            epoch=epoch + 1, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            history=history, **(extra_checkpoint or {}))
    final = history[-1] if history else {}
    if is_main_process() and history:
        plot_history(history, out_dir / "train_curve.png", f"{kind}: {model_name}")
    return FitResult(model=model, history=history,
                     final={k[5:]: v for k, v in final.items() if k.startswith("test_")},
                     checkpoint=ckpt_path if is_main_process() else None)


def resumable(checkpoint: str | Path, cfg: TrainConfig) -> Path | None:
    """``checkpoint`` if it exists and was written by a run of exactly ``cfg`` (so ``fit`` may
    continue it), else None; a checkpoint of other settings is an error, never silently reused."""
    path = Path(checkpoint)
    if not path.is_file():
        return None
    # through the config schema, so fields added since the checkpoint was written take their defaults
    saved = config_from_dict(load_checkpoint(path).get("config") or {}, where=str(path)).to_dict()
    wanted = cfg.to_dict()
    if saved != wanted:
        differ = sorted(k for k in wanted if saved.get(k) != wanted.get(k))
        raise ValueError(f"{path} was written with other settings (differing: {', '.join(differ)}); "
                         "move it away to start over")
    return path


def write_json(path: str | Path, values: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
