"""``sigmabranch compare``: the tree against its rivals on one backbone and one dataset, one table.

Runs, in ``out/`` (each stage reused when its folder holds results of the same settings):

- ``dense/``: the dense model (the dense config);
- ``tree_activation/``, ``tree_agf/``: conversion with each Phase 2 channel score, soft-routing
  fine-tuning and hard-routed evaluation (the tree config: its epochs/optimiser are *the* budget);
- ``pruned/<method>_<ratio>/``: L1, FPGM, HRank (one shot) and AGF (iterative) pruning at each
  ratio, fine-tuned with the tree's budget;
- ``routing/``: AGF's confidence-routed cascade (an AGF-pruned expert in front of the dense model),
  threshold sweep and its operating point;

and writes ``compare.md``, ``compare.csv``, ``pareto.png`` (Top-1 vs active params and vs MACs)
and ``metrics.json``. The paper's ImageNet-1K ResNet-50 rows (Tables IV-V) are appended, marked
as quoted. ``compare.md`` ends with the verdict: at matched Top-1 (a static model no more than
``match_tolerance_pp`` below the tree), does the tree cut more active parameters than each
static method, by how many points, and what the AGF channel score changed in the tree.

Columns: Top-1 (%), active params (M, % of dense): what one inference reads (the tree: one
root-to-leaf path; routing: the expected value over the test set); MACs (G, % of dense; fvcore
convention, batch 1); total params stored; streamed params (M): the active parameters outside
the on-chip backbone (the tree's backbone cut, applied to every model), i.e. the weights an
inference fetches from DDR under the placement rule "backbone on chip, the rest streamed".
DDR weight bytes / inference (W4): those streamed conv/linear weights at the hardware default of
4 bits, in FINN+'s ``fetch_weights`` layout (256-bit words per layer, as ``sigmabranch build``
writes them; BN folds into on-chip thresholds, the root router stays on chip): for the demo tree
the same number ``sigmabranch build`` reports.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from tqdm.auto import tqdm

from model.config import ConfigError, TrainConfig, apply_overrides, build_section, load_config
from model.train import resumable

from .criteria import CRITERIA, check_criterion
from .prune import check_ratio

# The paper's Tables IV-V (ImageNet-1K, ResNet-50), as published. Reductions are vs. each
# method's own dense baseline; "% of dense" = 100 - reduction. None = not reported.
QUOTED_ROWS: list[dict[str, Any]] = [
    {"method": "ResNet-50 dense (paper)", "top1": 76.54, "active_params_m": 25.56, "active_pct": 100.0,
     "macs_g": 4.112, "macs_pct": 100.0, "source": "Table IV"},
    {"method": "Sigma-Branch tree (paper)", "top1": 74.82, "active_params_m": 10.34, "active_pct": 40.5,
     "macs_g": 2.834, "macs_pct": 68.9, "source": "Table IV"},
    {"method": "FPGM-30", "top1": 75.59, "active_params_m": 16.96, "active_pct": 66.4, "macs_g": 2.36,
     "macs_pct": 57.8, "source": "Table IV (FPGM [13])"},
    {"method": "FPGM-40", "top1": 74.83, "active_params_m": 14.57, "active_pct": 57.0, "macs_g": 1.90,
     "macs_pct": 46.5, "source": "Table IV (FPGM [13])"},
    {"method": "HRank-44%", "top1": 74.98, "active_params_m": 16.15, "active_pct": 63.3, "macs_g": 2.30,
     "macs_pct": 56.2, "source": "Table IV (HRank [14])"},
    {"method": "HRank-62%", "top1": 71.98, "active_params_m": 13.77, "active_pct": 54.0, "macs_g": 1.55,
     "macs_pct": 37.9, "source": "Table IV (HRank [14])"},
    {"method": "HRank-76%", "top1": 69.10, "active_params_m": 8.27, "active_pct": 32.4, "macs_g": 0.98,
     "macs_pct": 24.0, "source": "Table IV (HRank [14])"},
    {"method": "SkipNet+SP", "top1": 70.03, "active_params_m": None, "active_pct": 93.3, "macs_g": None,
     "macs_pct": 93.3, "source": "Table V (SkipNet [12])"},
    {"method": "Narrow-DeepMoE-A", "top1": 66.27, "active_params_m": None, "active_pct": 56.4, "macs_g": None,
     "macs_pct": 40.4, "source": "Table V (DeepMoE [11])"},
]

CHANNEL_SCORES = ("activation", "agf")


@dataclass
class CompareConfig:
    """The file format of ``configs/compare_*.yaml``. Paths are relative to the config file."""

    dense: str = ""  # dense training config
    tree: str = ""  # tree config: conversion settings and THE fine-tuning budget of every method
    dense_overrides: list[str] = field(default_factory=list)  # key=value, applied to the dense config
    tree_overrides: list[str] = field(default_factory=list)  # key=value, applied to the tree config
    methods: list[str] = field(default_factory=lambda: list(CRITERIA))
    ratios: list[float] = field(default_factory=lambda: [0.2, 0.35, 0.5, 0.65])  # channels removed per layer
    calibration_batches: int = 8  # training batches HRank/AGF measure on (tree config's batch size)
    agf_steps: int = 4  # AGF iterative pruning rounds
    tree_channel_scores: list[str] = field(default_factory=lambda: list(CHANNEL_SCORES))
    routing: bool = True  # AGF confidence routing (needs "agf" in methods)
    routing_ratio: float | None = None  # which AGF-pruned expert; None = the largest ratio
    routing_thresholds: int = 101  # thresholds 0..1 in the sweep (plus one above 1)
    match_tolerance_pp: float = 0.5  # "matched Top-1": at most this far below the tree
    quoted_rows: bool = True  # append the paper's ImageNet rows

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _validate(cfg: CompareConfig, where: str) -> CompareConfig:
    for key in ("dense", "tree"):
        if not getattr(cfg, key):
            raise ConfigError(f"{where}: '{key}' (a config path) is required")
    for method in cfg.methods:
        check_criterion(method)
    if not cfg.methods and not cfg.tree_channel_scores:
        raise ConfigError(f"{where}: nothing to compare (no methods, no tree channel scores)")
    cfg.ratios = [check_ratio(r) for r in cfg.ratios]
    if cfg.methods and not cfg.ratios:
        raise ConfigError(f"{where}: 'ratios' is empty")
    for score in cfg.tree_channel_scores:
        if score not in CHANNEL_SCORES:
            raise ConfigError(f"{where}: tree_channel_scores entries must be in {CHANNEL_SCORES}, got {score!r}")
    if cfg.routing and "agf" not in cfg.methods:
        raise ConfigError(f"{where}: routing needs an AGF-pruned expert: add 'agf' to methods or set routing: false")
    if cfg.routing and cfg.routing_ratio is not None and check_ratio(cfg.routing_ratio) not in cfg.ratios:
        raise ConfigError(f"{where}: routing_ratio {cfg.routing_ratio} is not one of ratios {cfg.ratios}")
    if cfg.agf_steps < 1 or cfg.calibration_batches < 1:
        raise ConfigError(f"{where}: agf_steps and calibration_batches must be >= 1")
    if cfg.match_tolerance_pp < 0:
        raise ConfigError(f"{where}: match_tolerance_pp must be >= 0")
    return cfg


def load_compare_config(path: str | Path, overrides: list[str] | None = None) -> tuple[CompareConfig, Path]:
    """``(config, directory its paths are relative to)``; ``overrides`` are ``key=value`` (YAML values)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = (json.loads if path.suffix == ".json" else yaml.safe_load)(path.read_text()) or {}
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not valid YAML/JSON: {err}") from err
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. ratios=[0.5])")
        key, raw = item.split("=", 1)
        values[key] = yaml.safe_load(raw)
    cfg = build_section(CompareConfig, values, str(path))
    return _validate(cfg, str(path)), path.resolve().parent


def _resolve(base: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else base / p


# ---------------------------------------------------------------------------- stages with reuse
def _stage(folder: Path, settings: dict[str, Any], run: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """Run a stage, or reuse it: ``folder/stage.json`` records the settings of the finished run."""
    marker = folder / "stage.json"
    settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
    if marker.is_file() and (folder / "metrics.json").is_file():
        if json.loads(marker.read_text()).get("settings") == settings:
            return json.loads((folder / "metrics.json").read_text()), True
    metrics = run()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n")
    marker.write_text(json.dumps({"settings": settings}, indent=2, sort_keys=True) + "\n")
    return metrics, False


def _ratio_tag(ratio: float) -> str:
    return f"{round(100 * ratio):d}"


DDR_WEIGHT_BITS = 4  # the hardware default (W4A4)


def dense_ddr_bytes(model, depth: int) -> int:
    from hls.build import dense_weight_bytes
    return dense_weight_bytes(model, depth, DDR_WEIGHT_BITS)


def tree_ddr_bytes(tree) -> int:
    from hls.build import tree_weight_bytes
    return tree_weight_bytes(tree, DDR_WEIGHT_BITS)


def _backbone_params(model, depth: int) -> int:
    """Parameters of the stages before the tree's first cut (on chip under the placement rule)."""
    from model.accounting import count_params
    from model.tree_layout import split_dense
    return count_params(split_dense(model, depth).backbone)


# ---------------------------------------------------------------------------- table
def _pct(part: float | None, whole: float) -> float | None:
    return None if part is None else 100.0 * part / whole


def _row(method: str, setting: str, top1: float, active: float, macs: float, total: float, streamed: float,
         dense: dict[str, Any], note: str = "", ddr_bytes: float | None = None) -> dict[str, Any]:
    return {"method": method, "setting": setting, "top1": top1, "ddr_weight_bytes": ddr_bytes,
            "active_params_m": active / 1e6, "active_pct": _pct(active, dense["params"]),
            "macs_g": macs / 1e9, "macs_pct": _pct(macs, dense["macs"]), "total_params_m": total / 1e6,
            "streamed_params_m": streamed / 1e6, "source": "measured", "note": note}


COLUMNS = [("method", "method"), ("setting", "setting"), ("top1", "Top-1 (%)"),
           ("active_params_m", "active params (M)"), ("active_pct", "active params (% of dense)"),
           ("macs_g", "MACs (G)"), ("macs_pct", "MACs (% of dense)"), ("total_params_m", "total params stored (M)"),
           ("streamed_params_m", "streamed params (M)"), ("ddr_weight_bytes", "DDR weight bytes / inference (W4)"),
           ("source", "source"), ("note", "note")]


def _fmt(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key == "macs_g":
        return f"{value:.4f}" if value < 0.1 else f"{value:.3f}"
    if key == "ddr_weight_bytes":
        return f"{value:,.0f}"
    if key in ("active_params_m", "total_params_m", "streamed_params_m"):
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def write_table(rows: list[dict[str, Any]], md: Path, csv_path: Path, title: str, footer: str) -> str:
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[k for k, _ in COLUMNS])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k, _ in COLUMNS})
    lines = [f"# {title}", "", "| " + " | ".join(h for _, h in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_fmt(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    text = "\n".join(lines) + "\n\n" + footer
    md.write_text(text)
    return text


def plot_pareto(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Top-1 vs active params and vs MACs (% of dense), measured rows only (the quoted ImageNet rows
    are on another dataset and scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r["source"] == "measured"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    styles = {"dense": ("k", "s"), "tree": ("tab:red", "*"), "l1": ("tab:blue", "o"), "fpgm": ("tab:orange", "^"),
              "hrank": ("tab:green", "v"), "agf": ("tab:purple", "D"), "agf routing": ("tab:brown", "P")}
    for ax, key, label in ((axes[0], "active_pct", "active params (% of dense)"), (axes[1], "macs_pct", "MACs (% of dense)")):
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in measured:
            groups.setdefault(r["method"], []).append(r)
        for method, items in groups.items():
            family = "tree" if method.startswith("tree") else method.split(" (")[0]
            colour, marker = styles.get(family, ("grey", "x"))
            items = sorted(items, key=lambda r: r[key])
            ax.plot([r[key] for r in items], [r["top1"] for r in items], marker=marker, color=colour,
                    ls="-" if len(items) > 1 else "", ms=11 if marker == "*" else 6,
                    mfc="white" if "agf score" in method else colour, label=method)
        front, best = [], -1.0  # Pareto front: no other model is both smaller and more accurate
        for r in sorted(measured, key=lambda r: (r[key], -r["top1"])):
            if r["top1"] > best:
                front.append(r)
                best = r["top1"]
        ax.step([r[key] for r in front], [r["top1"] for r in front], where="post", color="grey", lw=0.8, alpha=0.6,
                label="Pareto front")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%)")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(rows: list[dict[str, Any]], methods: list[str], tolerance_pp: float,
            test_samples: int | None = None) -> tuple[str, dict[str, Any]]:
    """Per static method: its largest active-param cut among ratios whose Top-1 is at most
    ``tolerance_pp`` below the tree's, against the tree's cut."""
    tree = next((r for r in rows if r["method"] == "tree (activation score)"), None) or \
        next((r for r in rows if r["method"].startswith("tree")), None)
    if tree is None:
        return "No tree row: nothing to compare against.\n", {}
    tree_cut = 100 - tree["active_pct"]
    lines = [f"**Verdict** (matched Top-1 = at most {tolerance_pp:g} pp below the tree's {tree['top1']:.2f}%; "
             f"tree: {tree['method']}, active params cut {tree_cut:.1f}%"
             + (f"; {test_samples} test samples, so one sample = {100 / test_samples:.2f} pp" if test_samples else "")
             + "):", ""]
    result: dict[str, Any] = {"tree": tree["method"], "tree_top1": tree["top1"], "tree_cut_pct": tree_cut}
    for method in methods:
        candidates = [r for r in rows if r["method"] == method and r["source"] == "measured"]
        matched = [r for r in candidates if r["top1"] >= tree["top1"] - tolerance_pp]
        if not candidates:
            continue
        if matched:
            best = max(matched, key=lambda r: 100 - r["active_pct"])
            cut = 100 - best["active_pct"]
            margin = tree_cut - cut
            outcome = (f"the tree beats it by {margin:.1f} pp of active params" if margin > 0 else
                       f"the tree does NOT beat it: {method} cuts {-margin:.1f} pp more active params")
            lines.append(f"- {method}: best matched = {best['setting']} (Top-1 {best['top1']:.2f}%, cut {cut:.1f}%): "
                         f"{outcome}.")
            result[method] = {"matched": best["setting"], "top1": best["top1"], "cut_pct": cut, "tree_margin_pp": margin}
        else:
            closest = max(candidates, key=lambda r: r["top1"])
            cut = 100 - closest["active_pct"]
            if cut < tree_cut:  # less accurate and cutting less: the tree dominates it
                outcome = (f"the tree dominates it (more accurate by {tree['top1'] - closest['top1']:.2f} pp and "
                           f"{tree_cut - cut:.1f} pp more active params cut)")
            else:
                outcome = "no matched point, so no verdict at matched Top-1 (try smaller ratios or a longer budget)"
            lines.append(f"- {method}: no ratio reaches the tree's Top-1 within {tolerance_pp:g} pp; its most accurate "
                         f"is {closest['setting']} at {closest['top1']:.2f}%, cut {cut:.1f}%: {outcome}.")
            result[method] = {"matched": None, "closest": closest["setting"], "closest_top1": closest["top1"],
                              "closest_cut_pct": cut, "dominated_by_tree": cut < tree_cut}
    trees = {r["method"]: r for r in rows if r["method"].startswith("tree")}
    act, agf = trees.get("tree (activation score)"), trees.get("tree (agf score)")
    if act and agf:
        lines += ["", f"**AGF channel score in the tree**: Top-1 {act['top1']:.2f}% -> {agf['top1']:.2f}% "
                      f"({agf['top1'] - act['top1']:+.2f} pp), balance {act['balance']:.3f} -> {agf['balance']:.3f}, "
                      f"leaf usage {act['leaf_usage']} -> {agf['leaf_usage']} (%); same active params "
                      f"({act['active_params_m']:.3f}M): the score only changes *which* channels each branch keeps."]
        result["agf_channel_score"] = {"top1_delta_pp": agf["top1"] - act["top1"],
                                       "balance_activation": act["balance"], "balance_agf": agf["balance"]}
    return "\n".join(lines) + "\n", result


# ---------------------------------------------------------------------------- the run
def run_tree_stage(dense_checkpoint: Path, cfg: TrainConfig, folder: Path, device: str = "auto") -> dict[str, Any]:
    """Conversion (``folder/convert``, kept if there), soft-routing fine-tuning (``folder/finetune``,
    continued from its checkpoint) and hard-routed evaluation (``folder/leaf_heatmap.png``)."""
    from model.convert import run_convert
    from model.finetune import run_finetune
    from model.tree_report import evaluate_tree_checkpoint

    tree_pt = folder / "convert" / "tree.pt"
    conversion = (json.loads((folder / "convert" / "conversion.json").read_text()) if tree_pt.is_file()
                  else run_convert(dense_checkpoint, cfg, folder / "convert"))
    finetune = run_finetune(tree_pt, cfg, folder / "finetune", device=device,
                            resume=resumable(folder / "finetune" / "checkpoint.pt", cfg))
    result = evaluate_tree_checkpoint(folder / "finetune" / "checkpoint.pt", cfg, device=device, out_dir=folder)
    result.pop("class_leaf_counts")
    return {**result, "conversion_nodes": conversion["nodes"], "epochs": cfg.epochs,
            "train_seconds": finetune["train_seconds"]}


def run_compare(config: str | Path, out: str | Path = "runs/compare", overrides: list[str] | None = None,
                device: str = "auto", progress: bool = True) -> dict[str, Any]:
    from model.accounting import count_params
    from model.checkpoint import model_from_checkpoint
    from model.convert import tree_from_checkpoint
    from model.dense import train_dense

    from .confidence import default_thresholds, run_routing
    from .prune import pruned_from_checkpoint, run_prune

    t_start = time.perf_counter()
    cfg, base = load_compare_config(config, overrides)
    dense_cfg: TrainConfig = apply_overrides(load_config(_resolve(base, cfg.dense)), cfg.dense_overrides)
    tree_cfg: TrainConfig = apply_overrides(load_config(_resolve(base, cfg.tree)), cfg.tree_overrides)
    if (dense_cfg.model.name, dense_cfg.data.name) != (tree_cfg.model.name, tree_cfg.data.name):
        raise ConfigError(f"dense ({dense_cfg.model.name} on {dense_cfg.data.name}) and tree "
                          f"({tree_cfg.model.name} on {tree_cfg.data.name}) configs must use the same model and data")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    reused: list[str] = []
    depth = tree_cfg.tree.depth
    if not isinstance(depth, int):  # the dense accounting below cuts the dense model at the tree's levels
        raise ConfigError(f"{config}: compare needs a fixed tree.depth, got {depth!r}; `sigmabranch convert` "
                          "with tree.depth: auto records the depth it chooses in conversion.json")

    def timed(name: str, folder: Path, settings: dict[str, Any], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        t0 = time.perf_counter()
        metrics, was_reused = _stage(folder, settings, run)
        seconds[name] = time.perf_counter() - t0
        if was_reused:
            reused.append(name)
        return metrics

    dense_settings = dense_cfg.to_dict()
    # Long runs continue from their checkpoints (bench/cifar10.py trains into the same folders).
    dense = timed("dense", out / "dense", dense_settings, lambda: train_dense(
        dense_cfg, out / "dense", device=device, resume=resumable(out / "dense" / "checkpoint.pt", dense_cfg)))
    dense_ckpt = out / "dense" / "checkpoint.pt"
    dense_model, _ = model_from_checkpoint(dense_ckpt)
    dense_backbone = _backbone_params(dense_model, depth)

    dense_bytes = dense_ddr_bytes(dense_model, depth)
    rows = [_row("dense", "-", dense["top1"], dense["params"], dense["macs"], dense["params"],
                 dense["params"] - dense_backbone, dense, ddr_bytes=dense_bytes)]

    for score in cfg.tree_channel_scores:
        tcfg = apply_overrides(tree_cfg, [f"tree.channel_score={score}"])
        folder = out / f"tree_{score}"

        def run_tree(tcfg=tcfg, folder=folder) -> dict[str, Any]:
            return run_tree_stage(dense_ckpt, tcfg, folder, device=device)

        tree = timed(f"tree_{score}", folder, {"dense": dense_settings, "tree": tcfg.to_dict()}, run_tree)
        tree_model, _ = tree_from_checkpoint(folder / "finetune" / "checkpoint.pt")
        streamed = tree["active_params"] - count_params(tree_model.backbone)
        row = _row(f"tree ({score} score)", f"depth {depth}, alpha {tcfg.tree.alpha:g}", tree["top1_hard"],
                   tree["active_params"], tree["path_macs"], tree["total_params"], streamed, dense,
                   ddr_bytes=tree_ddr_bytes(tree_model),
                   note=f"balance {tree['balance']:.3f}, leaves " + "/".join(f"{u:.0f}" for u in tree["leaf_usage"]) + "%")
        row.update(balance=tree["balance"], leaf_usage=[round(u, 1) for u in tree["leaf_usage"]])
        rows.append(row)

    jobs = [(m, r) for m in cfg.methods for r in cfg.ratios]
    for method, ratio in tqdm(jobs, desc="pruning baselines", disable=not progress or None):
        folder = out / "pruned" / f"{method}_{_ratio_tag(ratio)}"
        steps = cfg.agf_steps if method == "agf" else 1
        settings = {"dense": dense_settings, "budget": tree_cfg.to_dict(), "method": method, "ratio": ratio,
                    "steps": steps, "calibration_batches": cfg.calibration_batches}
        pruned = timed(f"{method}_{_ratio_tag(ratio)}", folder, settings, lambda: run_prune(
            dense_ckpt, method, ratio, tree_cfg, folder, calibration_batches=cfg.calibration_batches, steps=steps,
            device=device, progress=progress))
        model, _ = pruned_from_checkpoint(folder / "checkpoint.pt")
        streamed = pruned["params"] - _backbone_params(model, depth)
        rows.append(_row(method, f"ratio {ratio:g}" + (f", {steps} steps" if steps > 1 else ""), pruned["top1"],
                         pruned["params"], pruned["macs"], pruned["params"], streamed, dense,
                         ddr_bytes=dense_ddr_bytes(model, depth), note=f"before fine-tuning {pruned['top1_before_finetune']:.2f}%"))

    routing = None
    if cfg.routing:
        ratio = cfg.routing_ratio if cfg.routing_ratio is not None else max(cfg.ratios)
        expert_dir = out / "pruned" / f"agf_{_ratio_tag(ratio)}"
        settings = {"expert": json.loads((expert_dir / "stage.json").read_text()), "dense": dense_settings,
                    "thresholds": cfg.routing_thresholds, "tolerance": cfg.match_tolerance_pp}
        routing = timed("routing", out / "routing", settings, lambda: run_routing(
            expert_dir / "checkpoint.pt", dense_ckpt, tree_cfg, out / "routing",
            thresholds=default_thresholds(cfg.routing_thresholds), tolerance_pp=cfg.match_tolerance_pp, device=device))
        chosen = routing["chosen"]
        expert_model, _ = pruned_from_checkpoint(expert_dir / "checkpoint.pt")
        f = chosen["full_fraction"]
        streamed = (routing["expert_params"] - _backbone_params(expert_model, depth)) + f * (dense["params"] - dense_backbone)
        rows.append(_row("agf routing", f"AGF-{_ratio_tag(ratio)} expert -> dense, t={chosen['threshold']:.2f}",
                         chosen["top1"], chosen["expected_params"], chosen["expected_macs"], routing["stored_params"],
                         streamed, dense, ddr_bytes=dense_ddr_bytes(expert_model, depth) + f * dense_bytes,
                         note=f"{100 * f:.1f}% to the full model, expected cost "
                                               f"{chosen['expected_cost']:.2f}x (MACs); per-input average"))

    if cfg.quoted_rows:
        rows += [{**q, "setting": "ImageNet-1K ResNet-50", "total_params_m": None, "streamed_params_m": None,
                  "ddr_weight_bytes": None,
                  "source": f"quoted: paper {q['source']}", "note": "as published"} for q in QUOTED_ROWS]

    title = f"{dense_cfg.model.name} on {dense_cfg.data.name}: Sigma-Branch tree vs. static pruning, AGF, routing"
    plot_pareto(rows, out / "pareto.png", title)
    from model.dense import dataset_for
    text_verdict, result = verdict(rows, cfg.methods, cfg.match_tolerance_pp,
                                   test_samples=len(dataset_for(tree_cfg, augment=False).test))
    seconds["total"] = time.perf_counter() - t_start
    footer = (text_verdict + "\n"
              f"Fine-tuning budget of every pruned model = the tree's: {tree_cfg.epochs} epochs, "
              f"{tree_cfg.optim.name} lr {tree_cfg.optim.lr:g}, {tree_cfg.optim.schedule}. Ratio = fraction of channels "
              "removed from every prunable layer (residual groups together). Streamed params = active params "
              "outside the backbone (the stages before the tree's first cut), what one inference reads from DDR "
              "with the backbone on chip. Quoted rows are ImageNet-1K ResNet-50 from the "
              "paper (FPGM/HRank/SkipNet/DeepMoE as published there), not comparable in absolute Top-1.\n\n"
              f"Wall time {seconds['total']:.0f} s" + (f" (reused: {', '.join(reused)})" if reused else "") + ".\n")
    table = write_table(rows, out / "compare.md", out / "compare.csv", title, footer)
    metrics = {"rows": rows, "verdict": result, "seconds": seconds, "reused": reused, "routing": routing,
               "config": {"compare": cfg.to_dict(), "dense": dense_cfg.to_dict(), "tree": tree_cfg.to_dict()}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    metrics["table"] = table
    return metrics
