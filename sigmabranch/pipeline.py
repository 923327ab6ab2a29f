"""The main job (`make run`): the whole flow on the embedded digits data.

dense training -> conversion -> soft-routing fine-tuning -> hard-routed evaluation ->
quantisation-aware fine-tuning (W4A4, integer router decision) -> QONNX export per node and
the integer reference's cross-checks -> FINN+ hardware build for PYNQ-Z2 and ZCU104 (up to the
vendor step), writing
``runs/demo/metrics.json`` and the plots. Every stage also writes its own folder, so each
step's files can be inspected (and re-run by hand with the same CLI subcommand).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from model.config import apply_overrides, load_config
from model.train import write_json

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DENSE_CONFIG = REPO / "configs" / "demo_edge_digits.yaml"
DEFAULT_TREE_CONFIG = REPO / "configs" / "demo_tree_digits.yaml"
DEFAULT_QUANT_CONFIG = REPO / "configs" / "demo_quant_digits.yaml"
DEMO_FINN_INPUTS = 32


def run_demo(out: str | Path = "runs/demo", config: str | Path | None = None, tree_config: str | Path | None = None,
             quick: bool = False, device: str = "auto", tree_overrides: list[str] | None = None) -> dict[str, Any]:
    """Dense -> tree on digits; ``quick`` trains a few epochs only (smoke test)."""
    from model.convert import run_convert
    from model.dense import train_dense
    from model.finetune import run_finetune
    from model.tree_report import evaluate_tree_checkpoint

    out = Path(out)
    dense_cfg = load_config(config or DEFAULT_DENSE_CONFIG)
    tree_cfg = apply_overrides(load_config(tree_config or DEFAULT_TREE_CONFIG), tree_overrides or [])
    quant_cfg = load_config(DEFAULT_QUANT_CONFIG)
    if quick:
        dense_cfg = apply_overrides(dense_cfg, ["epochs=2"])
        tree_cfg = apply_overrides(tree_cfg, ["epochs=1"])
        quant_cfg = apply_overrides(quant_cfg, ["epochs=1"])
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    dense = train_dense(dense_cfg, out / "dense", device=device)
    seconds["dense"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    conversion = run_convert(out / "dense" / "checkpoint.pt", tree_cfg, out / "tree")
    seconds["convert"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run_finetune(out / "tree" / "tree.pt", tree_cfg, out / "finetune", device=device)
    seconds["finetune"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tree = evaluate_tree_checkpoint(out / "finetune" / "checkpoint.pt", tree_cfg, device=device, out_dir=out)
    seconds["evaluate"] = time.perf_counter() - t0
    tree.pop("class_leaf_counts")
    tree["active_reduction_pct"] = 100 * (1 - tree["active_params"] / dense["params"])
    tree["conversion"] = {k: conversion[k] for k in ("widths", "level_names", "nodes", "init", "alpha")}
    tree["resp_lambda"] = tree_cfg.tree.resp_lambda
    (out / "tree" / "partition.png").replace(out / "partition.png")

    from quant.qat import run_quantize

    t0 = time.perf_counter()
    quant = run_quantize(out / "finetune" / "checkpoint.pt", quant_cfg, out / "quant", device=device)
    seconds["quantize"] = time.perf_counter() - t0
    quant = {"top1_hard": quant["top1"], "top1_soft": quant["top1_soft"], "bits": quant["bits"],
             "router_agreement": quant["router_agreement"], "active_weight_bytes": quant["active_weight_bytes"],
             "balance": quant["balance"]}

    from quant.check import run_check
    from quant.export import run_export

    t0 = time.perf_counter()
    run_export(out / "quant" / "checkpoint.pt", out / "export")
    # qonnx and Brevitas on every test input; FINN+'s executor runs one input at a time (slow),
    # so on the first DEMO_FINN_INPUTS only.
    check = run_check(out / "quant" / "checkpoint.pt", out / "export", quant_cfg, finn_inputs=DEMO_FINN_INPUTS)
    write_json(out / "export" / "check.json", check)
    seconds["export"] = time.perf_counter() - t0
    quant["int_reference"] = {k: check[k] for k in ("top1", "inputs", "same_class", "same_leaf", "identical_accumulators",
                                                    "max_relative_logit_diff")}
    quant["int_reference"]["finn_exact_inputs"] = DEMO_FINN_INPUTS

    from hls.build import build

    hardware = {}
    t0 = time.perf_counter()
    for board in ("pynq-z2", "zcu104"):
        report = build(out / "export", board, out / "build" / board)
        hardware[board] = {"ddr_bytes_per_inference": report["ddr"]["tree_weight_bytes"] + report["ddr"]["input_bytes"]
                           + report["ddr"]["output_bytes"],
                           "ddr_weight_bytes_per_inference": report["ddr"]["tree_weight_bytes"],
                           "dense_ddr_weight_bytes_per_inference": report["ddr"]["dense_weight_bytes"],
                           "tree_vs_dense_ddr": report["ddr"]["tree_vs_dense"],
                           "onchip_bytes": sum(e["onchip_weight_bytes"] for e in report["onchip"]),
                           "onchip_estimate": report["total"], "budget": report["budget"],
                           "target_cycles": report["target_cycles"]}
    seconds["build"] = time.perf_counter() - t0

    metrics = {"dense": dense, "tree": tree, "quant": quant, "hardware": hardware,
               "seconds": seconds, "config": {"dense": str(config or DEFAULT_DENSE_CONFIG),
                                              "tree": str(tree_config or DEFAULT_TREE_CONFIG)}}
    write_json(out / "metrics.json", metrics)
    return metrics
