"""The PointNet++ tree on the embedded procedural shapes, down to the fabric's integer programs, and
its processor half (SA1 + SA2 in numpy) timed here and modelled for the boards' ARM cores.

    .venv/bin/python bench/pointnet_shapes.py                 # all stages, resumable (~15 min on 2 cores)
    .venv/bin/python bench/pointnet_shapes.py --report-only   # the .md again from the .json

Stages, each skipped once its output exists, in ``<work>`` (default ``runs/pointnet_shapes``):
``dense/`` (configs/pointnet2_small_shapes.yaml), ``tree/`` (convert + soft-routing fine-tuning,
configs/pointnet2_tree_shapes.yaml), ``quant/`` (W4A4 QAT of the routed part,
configs/pointnet2_quant_shapes.yaml), ``export/`` (QONNX per node, integer programs,
``host_backbone.npz``; ``check.json``: integer reference vs Brevitas, qonnx and FINN+).

Then the processor: ``host/pointnet_backbone.py`` on every test cloud (batch 1, one thread), its
time split into sampling + grouping (farthest-point sampling, ball query, gathers) and the shared
MLPs, and how often its output, quantised, gives the Brevitas tree's leaf and class through the
integer reference. The ARM model (no board here): the MLPs' MACs at an assumed sustained NEON rate,
the rest (numpy loops and gathers, bound by instruction throughput) at this CPU's measured time
times an assumed per-core slowdown; both assumptions are printed with the result
(:data:`ARM_CORES`). Results: ``bench/results/pointnet_shapes.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Assumed, not measured (no board here). Sustained fp32 MAC rate of numpy's matmul on one core:
# NEON peak x 25 % (small matrices, OpenBLAS); slowdown of the loop/gather part against this CPU:
# clock ratio x an instructions-per-cycle ratio (in-order A53 and out-of-order but narrow A9
# against a current server core, ~2-2.5x per clock).
ARM_CORES = {
    "pynq-z2": {"core": "Cortex-A9, 650 MHz", "peak_macs_per_cycle": 2, "clock_hz": 650e6, "efficiency": 0.25,
                "loop_slowdown": 10.0},
    "zcu104": {"core": "Cortex-A53, 1.2 GHz", "peak_macs_per_cycle": 4, "clock_hz": 1.2e9, "efficiency": 0.25,
               "loop_slowdown": 5.0},
}


def stage(name: str, done: Path, run) -> None:
    if done.exists():
        print(f"[pointnet] {name}: done before ({done})", flush=True)
        return
    t0 = time.perf_counter()
    run()
    print(f"[pointnet] {name}: {time.perf_counter() - t0:.0f} s", flush=True)


def run_stages(work: Path, check_inputs: int) -> None:
    from baselines.compare import run_tree_stage
    from model.config import load_config
    from model.dense import train_dense
    from model.train import resumable, write_json
    from quant.check import run_check
    from quant.export import run_export
    from quant.qat import run_quantize

    cfg = {k: load_config(REPO / "configs" / f"pointnet2_{k}_shapes.yaml") for k in ("small", "tree", "quant")}
    stage("dense", work / "dense" / "metrics.json", lambda: train_dense(
        cfg["small"], work / "dense", resume=resumable(work / "dense" / "checkpoint.pt", cfg["small"])))
    stage("tree", work / "tree" / "finetune" / "metrics.json", lambda: write_json(
        work / "tree" / "metrics.json", run_tree_stage(work / "dense" / "checkpoint.pt", cfg["tree"], work / "tree")))
    stage("quant", work / "quant" / "metrics.json", lambda: run_quantize(
        work / "tree" / "finetune" / "checkpoint.pt", cfg["quant"], work / "quant",
        resume=resumable(work / "quant" / "checkpoint.pt", cfg["quant"])))
    stage("export", work / "export" / "tree.json", lambda: run_export(work / "quant" / "checkpoint.pt", work / "export"))

    def check() -> None:
        report = run_check(work / "quant" / "checkpoint.pt", work / "export", limit=check_inputs, finn_inputs=4)
        (work / "export" / "check.json").write_text(json.dumps(report, indent=1))
    stage("check", work / "export" / "check.json", check)


def time_processor(export: Path, clouds: np.ndarray) -> dict:
    """SA1 + SA2 in numpy, batch 1: seconds per cloud for sampling/grouping and for the MLPs."""
    from host.pointnet_backbone import PointNetBackbone, sample_and_group

    backbone = PointNetBackbone.load(export / "host_backbone.npz")
    group_s = mlp_s = 0.0
    macs = 0
    for cloud in clouds:
        xyz, feats = cloud[None, :, :3].astype(np.float32), None
        for sa in backbone.layers:
            t0 = time.perf_counter()
            new_xyz, x = sample_and_group(sa.npoint, sa.radius, sa.nsample, xyz, feats)
            t1 = time.perf_counter()
            for w, bias in zip(sa.weights, sa.biases):
                macs += x.shape[0] * x.shape[1] * x.shape[2] * w.size
                x = np.maximum(x @ w.T + bias, np.float32(0.0))
            xyz, feats = new_xyz, x.max(axis=2)
            mlp_s += time.perf_counter() - t1
            group_s += t1 - t0
    n = len(clouds)
    return {"clouds": n, "group_ms": 1e3 * group_s / n, "mlp_ms": 1e3 * mlp_s / n,
            "total_ms": 1e3 * (group_s + mlp_s) / n, "mlp_macs": macs // n,
            "mlp_gmacs_per_s_here": macs / max(mlp_s, 1e-12) / 1e9}


def arm_model(measured: dict) -> dict:
    out = {}
    for board, core in ARM_CORES.items():
        rate = core["peak_macs_per_cycle"] * core["clock_hz"] * core["efficiency"]
        mlp_ms = 1e3 * measured["mlp_macs"] / rate
        group_ms = measured["group_ms"] * core["loop_slowdown"]
        out[board] = {**core, "sustained_gmacs_per_s": rate / 1e9, "mlp_ms": mlp_ms, "group_ms": group_ms,
                      "total_ms": mlp_ms + group_ms}
    return out


def parity(work: Path, x, y) -> dict:
    """The numpy processor path -> quantise -> integer reference, against the Brevitas tree (torch
    backbone) on the same clouds."""
    import torch

    from host.int_reference import IntegerTree
    from host.pointnet_backbone import PointNetBackbone
    from quant.qat import qtree_from_checkpoint

    export = work / "export"
    ref = IntegerTree.load(export)
    fabric = PointNetBackbone.load(export / "host_backbone.npz").fabric_input(x)
    got = ref.infer(fabric)
    qtree, _ = qtree_from_checkpoint(work / "quant" / "checkpoint.pt")
    with torch.no_grad():
        logits, leaves = qtree.eval()(torch.from_numpy(x), mode="hard")
    return {"clouds": len(x), "same_leaf": float((got["leaves"] == leaves.numpy()).mean()),
            "same_class": float((got["classes"] == logits.argmax(1).numpy()).mean()),
            "top1_int_reference": 100 * float((got["classes"] == y).mean()),
            "leaf_counts": np.bincount(got["leaves"], minlength=2 ** ref.depth).tolist()}


def table(r: dict) -> str:
    m = r["metrics"]
    lines = ["# PointNet++ tree on the procedural shapes: fabric part W4A4, processor part numpy", "",
             "| model | Top-1 (%) | balance | leaf agreement with float (%) | epochs | train s |",
             "|---|---:|---:|---:|---:|---:|",
             f"| dense `pointnet2_ssg_small` | {m['dense']['top1']:.2f} | | | {m['dense'].get('epochs', '')} | "
             f"{m['dense'].get('train_seconds', 0):.0f} |",
             f"| tree, depth 2, hard routing | {m['tree']['top1']:.2f} | {m['tree']['balance']:.3f} | | "
             f"{m['tree'].get('epochs', '')} | {m['tree'].get('train_seconds', 0):.0f} |",
             f"| W4A4 tree (fabric part) | {m['quant']['top1']:.2f} | {m['quant']['balance']:.3f} | "
             f"{m['quant']['leaf_agreement']:.1f} | {m['quant']['epochs']} | {m['quant']['train_seconds']:.0f} |", ""]
    c = r["check"]
    lines += [f"Export check on {c['inputs']} test clouds: the integer reference gives the Brevitas tree's class for "
              f"{100 * c['same_class']:.1f}% and its leaf for {100 * c['same_leaf']:.1f}% of them (every node also "
              "against qonnx and, on 4 clouds, FINN+'s execution of the streamlined graph: integer-equal).", ""]
    p = r["parity"]
    lines += [f"Processor path (`host/pointnet_backbone.py`, numpy) -> quantise -> integer reference, against the "
              f"Brevitas tree on all {p['clouds']} test clouds: same leaf {100 * p['same_leaf']:.1f}%, same class "
              f"{100 * p['same_class']:.1f}%, Top-1 {p['top1_int_reference']:.2f}%, leaf counts {p['leaf_counts']}.", ""]
    t = r["processor_here"]
    lines += [f"SA1 + SA2 per cloud on this CPU (numpy, one thread, batch 1, {t['clouds']} clouds): "
              f"{t['total_ms']:.2f} ms = sampling + grouping {t['group_ms']:.2f} ms + shared MLPs {t['mlp_ms']:.2f} ms "
              f"({t['mlp_macs']:,} MACs, {t['mlp_gmacs_per_s_here']:.2f} GMAC/s).", "",
              "| board | core | MLPs (modelled) | sampling + grouping (modelled) | SA1 + SA2 per cloud |",
              "|---|---|---:|---:|---:|"]
    for board, a in r["processor_arm_model"].items():
        lines.append(f"| {board} | {a['core']} | {a['mlp_ms']:.2f} ms at {a['sustained_gmacs_per_s']:.2f} GMAC/s | "
                     f"{a['group_ms']:.2f} ms ({a['loop_slowdown']:.0f}x this CPU) | {a['total_ms']:.2f} ms |")
    lines += ["", "The ARM figures are a model, not a measurement: MLP MACs at the core's NEON peak "
              "(MACs per cycle x clock) x 25 % (what numpy's sgemm sustains on small matrices), plus this CPU's "
              "sampling/grouping time x the assumed per-core slowdown (clock ratio x instructions per clock). "
              "Measure on the board with `host/pointnet_backbone.py` to replace them."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "pointnet_shapes")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--check-inputs", type=int, default=200, help="test clouds for the export check (default 200)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    out = args.results / "pointnet_shapes.json"
    if args.report_only:
        out.with_suffix(".md").write_text(table(json.loads(out.read_text())))
        return 0
    run_stages(args.work, args.check_inputs)

    from quant.check import test_split
    x, y = (t.numpy() for t in test_split(args.work / "quant" / "checkpoint.pt"))
    metrics = {}
    for name, path in (("dense", "dense"), ("tree", "tree/finetune"), ("quant", "quant")):
        metrics[name] = json.loads((args.work / path / "metrics.json").read_text())
    check = json.loads((args.work / "export" / "check.json").read_text())
    report = {"metrics": metrics, "check": {k: v for k, v in check.items() if k != "nodes"},
              "parity": parity(args.work, x, y)}
    report["processor_here"] = time_processor(args.work / "export", x)
    report["processor_arm_model"] = arm_model(report["processor_here"])
    args.results.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(table(report))
    print(table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
