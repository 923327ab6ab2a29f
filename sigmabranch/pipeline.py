"""The main job (`make run`): the whole flow on the embedded digits data.

dense training -> conversion -> soft-routing fine-tuning -> hard-routed evaluation ->
quantisation-aware fine-tuning (W4A4, integer router decision) -> QONNX export per node and
the integer reference's cross-checks -> FINN+ hardware build for PYNQ-Z2 and ZCU104 (up to the
vendor step) -> the host driver (``ref`` backend; then ``sim`` on the Verilator model of the
PYNQ-Z2 design), writing ``runs/demo/metrics.json`` and the plots. Every stage also writes its
own folder, so each step's files can be inspected (and re-run by hand with the same CLI
subcommand). A hardware simulation that disagrees with the reference fails the run, after
metrics.json is written.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from hls.boards import BOARDS
from model.config import apply_overrides, load_config
from model.train import write_json

from .errors import HardwareCheckFailed

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DENSE_CONFIG = REPO / "configs" / "demo_edge_digits.yaml"
DEFAULT_TREE_CONFIG = REPO / "configs" / "demo_tree_digits.yaml"
DEFAULT_QUANT_CONFIG = REPO / "configs" / "demo_quant_digits.yaml"
DEMO_FINN_INPUTS = 32
SIM_BOARD = "pynq-z2"  # the board whose whole design the demo simulates (the other is estimated only)
HOST_KEYS = ("backend", "board", "accuracy", "leaf_counts", "ddr_bytes_per_inference", "latency")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Stages:
    """The demo's stage runner: ``with stages("dense"): ...`` times the block, logs one line
    (stderr, so stdout stays the metrics JSON) and records the seconds in :attr:`seconds`."""

    def __init__(self, log: Callable[[str], None] = _stderr):
        self.seconds: dict[str, float] = {}
        self.log = log

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            self.log(f"[demo] stage {name} failed after {time.perf_counter() - t0:.1f} s")
            raise
        self.seconds[name] = time.perf_counter() - t0
        self.log(f"[demo] stage {name} {self.seconds[name]:.1f} s")


def run_demo(out: str | Path = "runs/demo", config: str | Path | None = None, tree_config: str | Path | None = None,
             quick: bool = False, device: str = "auto", tree_overrides: list[str] | None = None,
             hardware_sim: int = 0, notebooks: bool = True) -> dict[str, Any]:
    """Dense -> tree on digits -> quantised -> exported -> built -> host driver (``ref``) ->
    executed notebooks; ``quick`` trains a few epochs only (smoke test); ``hardware_sim`` test
    images also go through the host driver on the Verilator model of the PYNQ-Z2 design
    (:func:`run_host_sim`); if it disagrees with the reference, metrics.json is written and then
    :class:`HardwareCheckFailed` is raised."""
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
    stages = Stages()

    with stages("dense"):
        dense = train_dense(dense_cfg, out / "dense", device=device)
    with stages("convert"):
        conversion = run_convert(out / "dense" / "checkpoint.pt", tree_cfg, out / "tree")
    with stages("finetune"):
        run_finetune(out / "tree" / "tree.pt", tree_cfg, out / "finetune", device=device)
    with stages("evaluate"):
        tree = evaluate_tree_checkpoint(out / "finetune" / "checkpoint.pt", tree_cfg, device=device, out_dir=out)
    tree.pop("class_leaf_counts")
    tree["active_reduction_pct"] = 100 * (1 - tree["active_params"] / dense["params"])
    tree["conversion"] = {k: conversion[k] for k in ("widths", "level_names", "nodes", "init", "alpha")}
    tree["resp_lambda"] = tree_cfg.tree.resp_lambda
    (out / "tree" / "partition.png").replace(out / "partition.png")

    from quant.qat import run_quantize

    with stages("quantize"):
        quant = run_quantize(out / "finetune" / "checkpoint.pt", quant_cfg, out / "quant", device=device)
    quant = {"top1_hard": quant["top1"], "top1_soft": quant["top1_soft"], "bits": quant["bits"],
             "router_agreement": quant["router_agreement"], "leaf_agreement": quant["leaf_agreement"],
             "active_weight_bytes": quant["active_weight_bytes"], "balance": quant["balance"]}

    from quant.check import run_check
    from quant.export import run_export

    with stages("export"):
        run_export(out / "quant" / "checkpoint.pt", out / "export")
        # qonnx and Brevitas on every test input; FINN+'s executor runs one input at a time (slow),
        # so on the first DEMO_FINN_INPUTS only.
        check = run_check(out / "quant" / "checkpoint.pt", out / "export", quant_cfg, finn_inputs=DEMO_FINN_INPUTS)
        write_json(out / "export" / "check.json", check)
    quant["int_reference"] = {k: check[k] for k in ("top1", "inputs", "same_class", "same_leaf", "identical_accumulators",
                                                    "max_relative_logit_diff")}
    quant["int_reference"]["finn_exact_inputs"] = DEMO_FINN_INPUTS

    from hls.build import build

    with stages("build"):
        hardware = {board: hardware_summary(build(out / "export", board, out / "build" / board)) for board in BOARDS}

    with stages("host"):
        host_report = run_host(out, quant_cfg, board=SIM_BOARD)
    host = {k: host_report[k] for k in HOST_KEYS}
    if hardware_sim:
        with stages("hardware_sim"):
            sim = run_host_sim(out, hardware_sim, host_report, board=SIM_BOARD)
        hardware["simulation"] = sim
        # the hardware issue's keys, on the simulated board (the other is estimated, not simulated)
        hardware[SIM_BOARD].update(bitexact=sim["bitexact"], cycles_per_inference=sim["cycles_per_inference"],
                                   simulated_ddr_weight_bytes_per_inference=sim["ddr_weight_bytes_per_inference"])
        hardware["bitexact"] = sim["bitexact"]
        hardware["cycles_per_inference"] = {SIM_BOARD: sim["cycles_per_inference"]}

    metrics = {"dense": dense, "tree": tree, "quant": quant, "hardware": hardware, "host": host,
               "seconds": stages.seconds, "config": {"dense": str(config or DEFAULT_DENSE_CONFIG),
                                                     "tree": str(tree_config or DEFAULT_TREE_CONFIG)}}
    write_metrics_then_check(out, metrics)
    if notebooks:
        with stages("notebooks"):
            metrics["notebooks"] = execute_notebooks(out)
        write_json(out / "metrics.json", metrics)
    return metrics


def hardware_summary(report: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's ``hardware.<board>`` from a build's placement report."""
    ddr = report["ddr"]
    io_bytes = ddr["input_bytes"] + ddr["output_bytes"]
    return {"ddr_bytes_per_inference": ddr["tree_weight_bytes"] + io_bytes,
            "ddr_weight_bytes_per_inference": ddr["tree_weight_bytes"],
            "dense_ddr_weight_bytes_per_inference": ddr["dense_weight_bytes"],
            # the dense model under the same placement (backbone on chip, the rest from DDR)
            "dense_ddr_bytes_per_inference": ddr["dense_weight_bytes"] + io_bytes,
            "tree_vs_dense_ddr": ddr["tree_vs_dense"],
            "onchip_bytes": sum(e["onchip_weight_bytes"] for e in report["onchip"]),
            "onchip_estimate": report["total"], "budget": report["budget"],
            "target_cycles": report["target_cycles"]}


def write_metrics_then_check(out: Path, metrics: dict[str, Any]) -> None:
    """Write ``metrics.json``, then fail if the hardware simulation disagreed with the reference:
    the file keeps every number of the run, the exception says which images and where."""
    write_json(out / "metrics.json", metrics)
    sim = metrics["hardware"].get("simulation")
    if sim and sim["mismatches"]:
        ref_report = out / f"host_{sim['board']}.json"
        raise HardwareCheckFailed(f"the {sim['board']} hardware simulation disagrees with the integer reference "
                                  f"on {len(sim['mismatches'])} point(s): " + "; ".join(sim["mismatches"])
                                  + f" (reports: {sim['report']}, {ref_report}; metrics: {out / 'metrics.json'})")


def run_host(out: Path, cfg, board: str = SIM_BOARD) -> dict[str, Any]:
    """The host driver (:func:`host.run.run_bundle`) as a user runs it on a board, here with the
    ``ref`` backend (the integer reference and the driver's DDR transfers) over the whole test
    split. Writes ``samples.npz`` and the report, ``host_<board>.json``; returns the report."""
    import numpy as np

    from host.run import run_bundle
    from quant.check import test_split

    x, y = (t.numpy() for t in test_split(out / "quant" / "checkpoint.pt", cfg))
    np.savez(out / "samples.npz", x=x, y=y)  # for host/run.py by hand, and run_host_sim
    report = run_bundle(out / "build" / board, (x, y), backend="ref")
    (out / f"host_{board}.json").write_text(json.dumps(report, indent=1))
    return report


def run_host_sim(out: Path, inputs: int, ref: dict[str, Any], board: str = SIM_BOARD,
                 fetch_mode: str = "onchip") -> dict[str, Any]:
    """The host driver with the ``sim`` backend on the first ``inputs`` test images: the same
    driver code on the Verilator model of the whole design behind AXI (``<build>/vivado``), with a
    DDR model that counts the bytes it serves. Compared with ``ref``, the ``ref`` run of
    :func:`run_host` on the same images (:func:`compare_sim_to_ref`): accumulators and paths bit
    for bit; bytes against the manifest's path bytes. Writes ``host_sim_<board>.json``. The first
    run builds the Verilator model (minutes); later runs reuse it (content-hashed cache)."""
    from host.run import run_bundle

    bundle = out / "build" / board
    report_path = out / f"host_sim_{board}.json"
    sim = run_bundle(bundle, out / "samples.npz", backend="sim", fetch_mode=fetch_mode, limit=inputs, progress=True)
    report_path.write_text(json.dumps(sim, indent=1))
    n = sim["inputs"]
    weights = json.loads((bundle / "weights.json").read_text())
    path_bytes = [sum(weights["levels"][level]["regions"][branch]["bytes"] for level, branch in enumerate(path))
                  for path in sim["paths"]]
    # on chip: what the DDR model served; host-driven: what the weight DMAs moved (the driver's count)
    served = (sim["simulation"]["ddr_read_bytes"] if fetch_mode == "onchip"
              else [sim["ddr_bytes_per_inference"]["weights"]] * n)
    mismatches = compare_sim_to_ref(sim, ref, path_bytes, served)
    return {"board": board, "inputs": n, "fetch_mode": fetch_mode, "strategy": sim["strategy"],
            "bitexact": sim["accumulators"] == ref["accumulators"][:n] and sim["paths"] == ref["paths"][:n],
            "same_predictions": sim["predictions"] == ref["predictions"][:n],
            "ddr_weight_bytes_per_inference": served,
            "path_weight_bytes": path_bytes,
            "bytes_equal_path": served == path_bytes,
            "mismatches": mismatches,
            "cycles_per_inference": sim["latency"]["mean"], "latency_us": sim["latency"]["mean_us"],
            "report": str(report_path), "build_seconds": sim["simulation"]["build_seconds"],
            "sim_seconds": sim["simulation"]["sim_seconds"]}


def compare_sim_to_ref(sim: dict[str, Any], ref: dict[str, Any], path_bytes: list[int], served: list[int]) -> list[str]:
    """What differs, image by image, between a ``sim`` report and the ``ref`` report of the same
    images (empty: bit-exact, and every image fetched exactly its path's weight bytes). A path that
    differs names the first router that chose otherwise; equal paths with other accumulators name
    the path's nodes and the head outputs that differ."""
    problems = []
    for i in range(sim["inputs"]):
        if i >= len(ref["paths"]):
            problems.append(f"image {i}: not in the reference report ({len(ref['paths'])} images)")
            continue
        got, want = list(sim["paths"][i]), list(ref["paths"][i])
        level = next((l for l, (a, b) in enumerate(zip(got, want)) if a != b), None)
        if level is not None:
            node = want[level - 1] if level else 0  # the router at level l sits on the branch chosen at l - 1
            problems.append(f"image {i}: router_{level}_{node} (level {level}) chose branch {got[level]} in "
                            f"simulation, {want[level]} in the reference")
        elif list(sim["accumulators"][i]) != list(ref["accumulators"][i]):
            outputs = [k for k, (a, b) in enumerate(zip(sim["accumulators"][i], ref["accumulators"][i])) if a != b]
            nodes = " -> ".join(["backbone"] + [f"branch_{l}_{b}" for l, b in enumerate(want)] + [f"head_{want[-1]}"])
            problems.append(f"image {i}: same path ({nodes}) but accumulators differ at head output(s) {outputs}: "
                            f"{[sim['accumulators'][i][k] for k in outputs]} in simulation, "
                            f"{[ref['accumulators'][i][k] for k in outputs]} in the reference")
        if served[i] != path_bytes[i]:
            problems.append(f"image {i}: {served[i]} weight bytes fetched from DDR, its path {got} needs {path_bytes[i]}")
    return problems


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
