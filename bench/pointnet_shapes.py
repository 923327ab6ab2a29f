"""The PointNet++ tree on the embedded procedural shapes, down to the fabric's integer programs, and
its processor half (SA1 + SA2 in numpy) timed here and modelled for the boards' ARM cores.

    .venv/bin/python bench/pointnet_shapes.py                 # all stages, resumable (~30 min on 2 cores)
    .venv/bin/python bench/pointnet_shapes.py --report-only   # the .md again from the .json

Stages, each skipped once its output exists, in ``<work>`` (default ``runs/pointnet_shapes``):
``dense/`` (configs/pointnet2_small_shapes.yaml), ``tree/`` (convert + soft-routing fine-tuning,
configs/pointnet2_tree_shapes.yaml), ``quant/`` (W4A4 QAT of the routed part,
configs/pointnet2_quant_shapes.yaml), ``export/`` (QONNX per node, integer programs,
``host_backbone.npz``; ``check.json``: integer reference vs Brevitas, qonnx and FINN+); the same
for W8A8 in ``quant_w8a8/`` and ``export_w8a8/`` (``--bits``).

Then the processor: ``host/pointnet_backbone.py`` on every test cloud (batch 1, one thread), its
time split into sampling + grouping (farthest-point sampling, ball query, gathers) and the shared
MLPs, and how often its output, quantised, gives the Brevitas tree's leaf and class through the
integer reference. The ARM model (no board here): the MLPs' MACs at an assumed sustained NEON rate,
the rest (numpy loops and gathers, bound by instruction throughput) at this CPU's measured time
times an assumed per-core slowdown; both assumptions are printed with the result
(:data:`ARM_CORES`).

Then the hardware (``--no-hw`` skips it): the W4A4 export built for each board (``build/<board>``),
two test clouds per leaf through the host driver on the whole design behind AXI (Verilator), bit-exact
against the integer reference, DDR bytes served against the path's bytes. Results:
``bench/results/pointnet_shapes.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
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


def run_stages(work: Path, check_inputs: int, bits: tuple[str, ...] = ("w4a4",)) -> None:
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
    for preset in bits:   # W4A4 in quant/ and export/ (what the hardware stages build), others beside
        sfx = "" if preset == "w4a4" else f"_{preset}"
        qcfg = dataclasses.replace(cfg["quant"], quant=dataclasses.replace(cfg["quant"].quant, bits=preset))
        quant, export = work / f"quant{sfx}", work / f"export{sfx}"
        stage(f"quant {preset}", quant / "metrics.json", lambda: run_quantize(
            work / "tree" / "finetune" / "checkpoint.pt", qcfg, quant, resume=resumable(quant / "checkpoint.pt", qcfg)))
        stage(f"export {preset}", export / "tree.json", lambda: run_export(quant / "checkpoint.pt", export))

        def check() -> None:
            report = run_check(quant / "checkpoint.pt", export, limit=check_inputs, finn_inputs=4)
            (export / "check.json").write_text(json.dumps(report, indent=1))
        stage(f"check {preset}", export / "check.json", check)


def hardware(work: Path, boards: list[str], targets: dict[str, int], sim_board: str, per_leaf: int) -> dict:
    """The W4A4 export built for each board (``build/<board>``), ``per_leaf`` test clouds per leaf
    through the host driver on the whole design behind AXI (``--backend sim``: the processor's
    numpy backbone, then the Verilator model), against the ``ref`` backend: bit-exact, DDR bytes
    served = the path's bytes (the steps of bench/cifar10_hw.py, on this work folder)."""
    sys.path.insert(0, str(REPO / "bench"))
    from cifar10_hw import build_stage, pick_images

    from sigmabranch.pipeline import run_host_sim

    out = {"boards": {}}
    for board in boards:
        b = build_stage(work, board, targets.get(board))
        out["boards"][board] = {k: b.get(k) for k in ("fits", "refusal", "total", "budget", "ddr", "onchip",
                                                       "target_cycles")}
    if out["boards"].get(sim_board, {}).get("fits"):
        ckpt = work / "quant" / "checkpoint.pt"
        ref = pick_images(ckpt, work, sim_board, per_leaf, search=10 ** 9)   # every test cloud searched
        sim = run_host_sim(work, len(ref["paths"]), ref, board=sim_board)
        sim["leaves"] = [path[-1] for path in ref["paths"]]
        sim["leaf_usage_in_search"] = ref["leaf_usage_in_search"]
        sim["host_backbone_ms_per_inference"] = (json.loads(Path(sim["report"]).read_text()).get(
            "host_backbone_ms_per_inference") or ref.get("host_backbone_ms_per_inference"))
        out["simulation"] = sim
    return out


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
             *[f"| {q['bits'].upper()} tree (fabric part) | {q['top1']:.2f} | {q['balance']:.3f} | "
               f"{q['leaf_agreement']:.1f} | {q['epochs']} | {q['train_seconds']:.0f} |"
               for q in [m["quant"]] + [m[k] for k in sorted(m) if k.startswith("quant_")]], ""]
    for bits, c in r["checks"].items():
        lines += [f"Export check, {bits.upper()}, on {c['inputs']} test clouds: the integer reference gives the Brevitas "
                  f"tree's class for {100 * c['same_class']:.1f}% and its leaf for {100 * c['same_leaf']:.1f}% of them "
                  "(every node also against qonnx and, on 4 clouds, FINN+'s execution of the streamlined graph: "
                  "integer-equal).", ""]
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
    hw = r.get("hardware")
    if hw:
        sys.path.insert(0, str(REPO / "bench"))
        from cifar10_hw import board_table
        lines += ["", "## The routed part on the fabric (W4A4, `sigmabranch build`)", "", *board_table(hw["boards"])]
        s = hw.get("simulation")
        if s:
            lines += ["", f"Whole design behind AXI on {s['board']} (Verilator; `host/run.py --backend sim`, the driver "
                      f"unchanged, taking the point clouds: SA1 + SA2 in numpy on the processor, "
                      f"{s['host_backbone_ms_per_inference']:.2f} ms per cloud here, then the fabric): {s['inputs']} test "
                      f"clouds reaching leaves {s['leaves']} (leaf usage over the test set {s['leaf_usage_in_search']}); "
                      f"bit-exact against the integer reference: **{s['bitexact']}**; DDR weight bytes served = the "
                      f"path's bytes: **{s['bytes_equal_path']}** ({sorted(set(s['ddr_weight_bytes_per_inference']))}); "
                      f"{s['cycles_per_inference']:,.0f} cycles per inference on the fabric ({s['latency_us']:.1f} us); "
                      f"Verilator build {s['build_seconds']:.0f} s, simulation {s['sim_seconds']:.0f} s."]
            if s["mismatches"]:
                lines += ["", "Mismatches:", *[f"- {m}" for m in s["mismatches"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "pointnet_shapes")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--check-inputs", type=int, default=200, help="test clouds for the export check (default 200)")
    p.add_argument("--bits", default="w4a4,w8a8", help="QAT presets (default w4a4,w8a8; the hardware builds W4A4)")
    p.add_argument("--boards", default="pynq-z2,zcu104")
    p.add_argument("--target-cycles", default="", help="SetFolding targets per board, e.g. pynq-z2=20000 "
                                                         "(default: the board's)")
    p.add_argument("--sim-board", default="pynq-z2")
    p.add_argument("--per-leaf", type=int, default=2, help="test clouds per leaf in the simulation (default 2)")
    p.add_argument("--no-hw", action="store_true", help="skip the builds and the simulation")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    out = args.results / "pointnet_shapes.json"
    if args.report_only:
        out.with_suffix(".md").write_text(table(json.loads(out.read_text())))
        return 0
    bits = tuple(args.bits.split(","))
    if "w4a4" not in bits:
        p.error("--bits must include w4a4 (the preset the hardware stages build)")
    run_stages(args.work, args.check_inputs, bits)

    from quant.check import test_split
    x, y = (t.numpy() for t in test_split(args.work / "quant" / "checkpoint.pt"))
    metrics = {}
    for name, path in (("dense", "dense"), ("tree", "tree/finetune"), ("quant", "quant"),
                       *[(f"quant_{b}", f"quant_{b}") for b in bits if b != "w4a4"]):
        metrics[name] = json.loads((args.work / path / "metrics.json").read_text())
    checks = {b: json.loads((args.work / ("export" if b == "w4a4" else f"export_{b}") / "check.json").read_text())
              for b in bits}
    report = {"metrics": metrics, "checks": {b: {k: v for k, v in c.items() if k != "nodes"} for b, c in checks.items()},
              "parity": parity(args.work, x, y)}
    report["processor_here"] = time_processor(args.work / "export", x)
    report["processor_arm_model"] = arm_model(report["processor_here"])
    if not args.no_hw:
        targets = {k: int(v) for k, v in (item.split("=") for item in args.target_cycles.split(",") if item)}
        report["hardware"] = hardware(args.work, args.boards.split(","), targets, args.sim_board, args.per_leaf)
    args.results.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(table(report))
    print(table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
