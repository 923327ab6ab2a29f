"""The main job (`make run`): the whole flow on the embedded digits data.

dense training -> conversion -> soft-routing fine-tuning -> hard-routed evaluation ->
quantisation-aware fine-tuning (W4A4, integer router decision) -> QONNX export per node and
the integer reference's cross-checks -> FINN+ hardware build for PYNQ-Z2 and ZCU104 (up to the
vendor step), writing
``runs/demo/metrics.json`` and the plots. Every stage also writes its own folder, so each
step's files can be inspected (and re-run by hand with the same CLI subcommand).
"""
from __future__ import annotations

import json
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
             quick: bool = False, device: str = "auto", tree_overrides: list[str] | None = None,
             hardware_sim: int = 0, notebooks: bool = True) -> dict[str, Any]:
    """Dense -> tree on digits -> quantised -> exported -> built -> host driver (``ref``) ->
    executed notebooks; ``quick`` trains a few epochs only (smoke test); ``hardware_sim`` test
    images also go through the host driver on the Verilator model of the PYNQ-Z2 design
    (:func:`run_host_sim`)."""
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
                           # the dense model under the same placement (backbone on chip, the rest from DDR)
                           "dense_ddr_bytes_per_inference": report["ddr"]["dense_weight_bytes"]
                           + report["ddr"]["input_bytes"] + report["ddr"]["output_bytes"],
                           "tree_vs_dense_ddr": report["ddr"]["tree_vs_dense"],
                           "onchip_bytes": sum(e["onchip_weight_bytes"] for e in report["onchip"]),
                           "onchip_estimate": report["total"], "budget": report["budget"],
                           "target_cycles": report["target_cycles"]}
    seconds["build"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    host = run_host(out, quant_cfg)
    seconds["host"] = time.perf_counter() - t0
    if hardware_sim:
        t0 = time.perf_counter()
        sim = run_host_sim(out, hardware_sim, board="pynq-z2")
        hardware["simulation"] = sim
        # the hardware issue's keys, on the simulated board (the other is estimated, not simulated)
        hardware["pynq-z2"].update(bitexact=sim["bitexact"], cycles_per_inference=sim["cycles_per_inference"],
                                   simulated_ddr_weight_bytes_per_inference=sim["ddr_weight_bytes_per_inference"])
        hardware["bitexact"] = sim["bitexact"]
        hardware["cycles_per_inference"] = {"pynq-z2": sim["cycles_per_inference"]}
        seconds["hardware_sim"] = time.perf_counter() - t0

    metrics = {"dense": dense, "tree": tree, "quant": quant, "hardware": hardware, "host": host,
               "seconds": seconds, "config": {"dense": str(config or DEFAULT_DENSE_CONFIG),
                                              "tree": str(tree_config or DEFAULT_TREE_CONFIG)}}
    write_json(out / "metrics.json", metrics)
    if notebooks:
        t0 = time.perf_counter()
        metrics["notebooks"] = execute_notebooks(out)
        metrics["seconds"]["notebooks"] = time.perf_counter() - t0
        write_json(out / "metrics.json", metrics)
    return metrics


def run_host(out: Path, cfg, board: str = "pynq-z2") -> dict[str, Any]:
    """``host/run.py`` as a user runs it on a board, here with the ``ref`` backend (the integer
    reference and the driver's DDR transfers) over the whole test split: ``samples.npz``, then
    ``host_<board>.json``."""
    import numpy as np

    from host.run import main as host_run
    from quant.check import test_split

    x, y = test_split(out / "quant" / "checkpoint.pt", cfg)
    np.savez(out / "samples.npz", x=x.numpy(), y=y.numpy())
    report_path = out / f"host_{board}.json"
    rc = host_run(["--bundle", str(out / "build" / board), "--inputs", str(out / "samples.npz"), "--backend", "ref",
                   "--json", str(report_path), "--no-progress"])
    if rc != 0:
        raise RuntimeError(f"host/run.py failed ({rc}) on {out / 'build' / board}")
    report = json.loads(report_path.read_text())
    return {k: report[k] for k in ("backend", "board", "accuracy", "leaf_counts", "ddr_bytes_per_inference", "latency")}


def run_host_sim(out: Path, inputs: int, board: str = "pynq-z2", fetch_mode: str = "onchip") -> dict[str, Any]:
    """``host/run.py --backend sim`` on the first ``inputs`` test images: the same driver code on
    the Verilator model of the whole design behind AXI (``<build>/vivado``), with a DDR model that
    counts the bytes it serves. Compared with the ``ref`` run of :func:`run_host` on the same
    images: accumulators and paths bit for bit; bytes against the manifest's path bytes. The first
    run builds the Verilator model (minutes); later runs reuse it (content-hashed cache)."""
    from host.run import main as host_run

    bundle = out / "build" / board
    report_path = out / f"host_sim_{board}.json"
    rc = host_run(["--bundle", str(bundle), "--inputs", str(out / "samples.npz"), "--backend", "sim",
                   "--fetch-mode", fetch_mode, "--limit", str(inputs), "--json", str(report_path)])
    if rc != 0:
        raise RuntimeError(f"host/run.py --backend sim failed ({rc}) on {bundle}")
    sim = json.loads(report_path.read_text())
    ref = json.loads((out / f"host_{board}.json").read_text())
    n = sim["inputs"]
    weights = json.loads((bundle / "weights.json").read_text())
    path_bytes = [sum(weights["levels"][level]["regions"][branch]["bytes"] for level, branch in enumerate(path))
                  for path in sim["paths"]]
    # on chip: what the DDR model served; host-driven: what the weight DMAs moved (the driver's count)
    served = (sim["simulation"]["ddr_read_bytes"] if fetch_mode == "onchip"
              else [sim["ddr_bytes_per_inference"]["weights"]] * n)
    return {"board": board, "inputs": n, "fetch_mode": fetch_mode, "strategy": sim["strategy"],
            "bitexact": sim["accumulators"] == ref["accumulators"][:n] and sim["paths"] == ref["paths"][:n],
            "same_predictions": sim["predictions"] == ref["predictions"][:n],
            "ddr_weight_bytes_per_inference": served,
            "path_weight_bytes": path_bytes,
            "bytes_equal_path": served == path_bytes,
            "cycles_per_inference": sim["latency"]["mean"], "latency_us": sim["latency"]["mean_us"],
            "report": str(report_path), "build_seconds": sim["simulation"]["build_seconds"],
            "sim_seconds": sim["simulation"]["sim_seconds"]}


def execute_notebooks(out: Path) -> list[str]:
    """The report: notebooks/*.ipynb executed on this run's artifacts, saved under ``out/notebooks``."""
    import os

    import nbclient
    import nbformat

    folder = out / "notebooks"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["SIGMABRANCH_NB_DEMO"] = str(out.resolve())
    written = []
    for source in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(source, as_version=4)
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
        nbformat.write(nb, folder / source.name)
        written.append(str(folder / source.name))
    return written
