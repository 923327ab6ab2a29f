"""A CIFAR-10 tree (ResNet-20, or the 32x32 edge CNN) down the hardware path: export, build for each board, the host
driver on the Verilator model of the whole design behind AXI for test images reaching every leaf.

    .venv/bin/python bench/cifar10_hw.py --model resnet20            # after bench/cifar10.py's quant stage
    .venv/bin/python bench/cifar10_hw.py --model resnet20 --per-leaf 2 --sim-board pynq-z2

Reads the W4A4 tree of ``bench/cifar10.py`` (``<work>/<model>/quant/checkpoint.pt``, or with
``--quant quant_margin`` the QAT of its margin stage's tree) and writes, in ``<work>/<model>/hw/``
(``hw_quant_margin/``; the layout of ``sigmabranch demo``, so its functions run it):

- ``export/``: QONNX per node, ``tree.json``, ``check.json`` (integer reference vs qonnx, FINN+ and
  Brevitas on the first ``--check-inputs`` test images);
- ``build/<board>/``: ``sigmabranch build`` for each board (placement with the residual FIFOs,
  the DDR weight image, the HDL); a board the on-chip part does not fit is reported, not fatal;
- ``samples.npz``: ``--per-leaf`` test images per leaf (the integer reference's leaf over
  ``--search`` test images spread evenly over the split, which is ordered by class, so all ten
  classes are searched), ``host_<board>.json``: the ``ref`` backend on them;
- ``host_sim_<board>.json``: the same driver on the whole design (``--backend sim``): bit-exact
  against ``ref``, DDR bytes served against the path's bytes, cycles per inference.

Each stage is skipped when its output exists (delete it to redo). Results:
``bench/results/cifar10_<model>_hw.json`` and ``.md``.
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

BOARDS = ("pynq-z2", "zcu104")


def export_stage(ckpt: Path, hw: Path, check_inputs: int) -> dict:
    from quant.check import run_check
    from quant.export import run_export

    export = hw / "export"
    if not (export / "tree.json").is_file():
        run_export(ckpt, export)
    if not (export / "check.json").is_file():
        report = run_check(ckpt, export, limit=check_inputs, finn_inputs=min(4, check_inputs))
        (export / "check.json").write_text(json.dumps(report, indent=1))
    return json.loads((export / "check.json").read_text())


def build_stage(hw: Path, board: str, target_cycles: int | None, threshold_bram_depth: int = 0) -> dict:
    """The placement report, or the refusal (a part that does not fit is a result here)."""
    from hls.build import BuildError, build

    out = hw / "build" / board
    if (out / "vivado").is_dir() and (out / "placement.json").is_file():
        return {"fits": True, **json.loads((out / "placement.json").read_text())}
    try:
        return {"fits": True, **build(hw / "export", board, out, target_cycles=target_cycles,
                                      threshold_bram_depth=threshold_bram_depth)}
    except BuildError as err:
        if not (out / "placement.json").is_file():
            raise
        return {"fits": False, "refusal": str(err), **json.loads((out / "placement.json").read_text())}


def pick_images(ckpt: Path, hw: Path, board: str, per_leaf: int, search: int) -> dict:
    """``per_leaf`` test images per leaf (leaf of the integer reference), and their ``ref`` report."""
    from host.run import run_bundle
    from quant.check import test_split

    samples = hw / "samples.npz"
    ref_path = hw / f"host_{board}.json"
    if samples.is_file() and ref_path.is_file():
        return json.loads(ref_path.read_text())
    x, y = (t.numpy() for t in test_split(ckpt))
    searched = np.unique(np.linspace(0, len(x) - 1, min(search, len(x))).astype(np.int64))
    x, y = x[searched], y[searched]
    scan = run_bundle(hw / "build" / board, (x, y), backend="ref", progress=True)
    leaves = np.array([path[-1] for path in scan["paths"]])
    pick = [int(i) for leaf in sorted(set(leaves.tolist())) for i in np.flatnonzero(leaves == leaf)[:per_leaf]]
    np.savez(samples, x=x[pick], y=y[pick], test_index=searched[pick])
    ref = run_bundle(hw / "build" / board, samples, backend="ref")
    ref["leaf_usage_in_search"] = {int(k): int(v) for k, v in zip(*np.unique(leaves, return_counts=True))}
    ref["searched"] = int(len(x))
    ref_path.write_text(json.dumps(ref, indent=1))
    return ref


BRAM18_BITS = 18 * 1024   # with the parity bits: the most one BRAM18 can hold
URAM_BITS = 288 * 1024


def dense_on_chip(ckpt: Path, boards: list[str]) -> dict:
    """Could the dense model be held on chip at all (the paper's premise: a model that cannot runs as
    a tree)? A lower bound: its conv/linear weights at the tree's weight width, packed perfectly
    into BRAM18 (and URAM), before any activation buffer, threshold memory or FIFO."""
    import torch.nn as nn

    from hls.boards import get_board
    from model.checkpoint import load_checkpoint
    from model.registry import create_model

    spec = load_checkpoint(ckpt, kind="qtree")["spec"]
    dense = create_model(spec["dense_model"], **spec["dense_args"])
    elements = sum(m.weight.numel() for m in dense.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    bits = elements * int(spec["quant"]["weight_bits"])
    out = {"model": spec["dense_model"], "weight_elements": elements, "weight_bits": bits, "boards": {}}
    for name in boards:
        board = get_board(name)
        capacity = board.bram18 * BRAM18_BITS + board.uram * URAM_BITS
        out["boards"][name] = {"min_bram18_equivalents": -(-bits // BRAM18_BITS), "bram18": board.bram18,
                               "uram": board.uram, "share_of_onchip_memory": bits / capacity}
    return out


def board_table(boards: dict) -> list[str]:
    """Markdown rows per board: folding target, fit, FINN+'s totals against the budget, DDR bytes."""
    lines = ["| board | folding target (cycles) | thresholds in BRAM from depth | fits | BRAM18 | URAM | LUT | DSP | "
             "tree DDR weight B / inference | dense (same placement) | ratio |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for board, b in boards.items():
        t, bud, d = b["total"], b["budget"], b["ddr"]
        lines.append(f"| {board} | {b['target_cycles']:,} | {b.get('threshold_bram_depth') or '- (LUTRAM)'} | "
                     f"{'yes' if b['fits'] else 'no'} | {t['BRAM_18K']} / {bud['BRAM_18K']} | "
                     f"{t['URAM']} / {bud['URAM']} | {t['LUT']} / {bud['LUT']} | {t['DSP']} / {bud['DSP']} | "
                     f"{d['tree_weight_bytes']:,} | {d['dense_weight_bytes']:,} | {d['tree_vs_dense']:.3f} |")
    return lines


def table(report: dict) -> str:
    lines = [f"# CIFAR-10 {report['model']} tree on the FPGA flow (W4A4)", "", *board_table(report["boards"])]
    s = report.get("simulation")
    if s:
        lines += ["", f"Whole design behind AXI on {s['board']} (Verilator, `host/run.py --backend sim`, the driver "
                  f"unchanged): {s['inputs']} CIFAR-10 test images (test indices {s['test_index']}), leaves "
                  f"{s['leaves']}; bit-exact against the integer reference: **{s['bitexact']}**; DDR weight bytes "
                  f"served = the path's bytes: **{s['bytes_equal_path']}** ({sorted(set(s['ddr_weight_bytes_per_inference']))}); "
                  f"{s['cycles_per_inference']:,.0f} cycles per inference ({s['latency_us']:.1f} us at the board's clock); "
                  f"Verilator build {s['build_seconds']:.0f} s, simulation {s['sim_seconds']:.0f} s."]
        n_leaves = report.get("leaves_total", 0)
        unseen = [leaf for leaf in range(n_leaves) if str(leaf) not in map(str, s["leaf_usage_in_search"])]
        if unseen:
            lines += ["", f"Leaves {unseen} receive none of the {sum(s['leaf_usage_in_search'].values()):,} searched test "
                      f"images (leaf usage there: {s['leaf_usage_in_search']}), so no real image reaches them in "
                      "simulation: the W4A4 tree's routing (bench/results/cifar10_<model>.md), not the hardware."]
        if s["mismatches"]:
            lines += ["", "Mismatches:", *[f"- {m}" for m in s["mismatches"]]]
    d = report.get("dense_on_chip")
    if d:
        lines += ["", f"Dense {d['model']} on chip? Its conv/linear weights alone are {d['weight_elements']:,} x "
                  f"{d['weight_bits'] // d['weight_elements']} bits = {d['weight_bits'] / 1e6:.2f} Mbit; packed perfectly "
                  "(18 Kbit per BRAM18, 288 Kbit per URAM) that is at least "
                  + "; ".join(f"{b['min_bram18_equivalents']:,} BRAM18 on {name} ({100 * b['share_of_onchip_memory']:.0f} % "
                              f"of its {b['bram18']} BRAM18{' + ' + str(b['uram']) + ' URAM' if b['uram'] else ''})"
                              for name, b in d["boards"].items())
                  + ", before activation buffers, thresholds and FIFOs; the tree's whole on-chip part is in the "
                  "table above."]
    c = report.get("check")
    if c:
        lines += ["", f"Export check (`sigmabranch export --check`, first {c['inputs']} test images): the integer "
                  f"reference gives the Brevitas tree's class for {100 * c['same_class']:.1f}% and its leaf for "
                  f"{100 * c['same_leaf']:.1f}% of them; identical head accumulators "
                  f"{100 * c['identical_accumulators']:.1f}% (largest logit difference "
                  f"{100 * c['max_relative_logit_diff']:.2f}% of the range: Brevitas rounds float32 between layers); "
                  f"Top-1 on these images {c['top1']:.1f}%."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "cifar10")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--boards", default=",".join(BOARDS))
    p.add_argument("--sim-board", default="pynq-z2", help="the board whose design is simulated (default pynq-z2)")
    p.add_argument("--per-leaf", type=int, default=2, help="test images per leaf in the simulation (default 2)")
    p.add_argument("--search", type=int, default=2000,
                   help="N test images, spread evenly over the split, are searched for every leaf (default 2000)")
    p.add_argument("--check-inputs", type=int, default=64, help="test images for the export check (default 64)")
    p.add_argument("--target-cycles", default="pynq-z2=200000",
                   help="SetFolding targets per board, e.g. pynq-z2=200000,zcu104=20000 (others: the board's default; "
                        "the digits default, 20000 on PYNQ-Z2, needs 3x its DSPs for ResNet-20 at 32x32)")
    p.add_argument("--threshold-bram-depth", default="",
                   help="per board, threshold memories of N entries or more in BRAM (sigmabranch build "
                        "--threshold-bram-depth), e.g. pynq-z2=4096: the ResNet-20 tree's threshold sets overflow "
                        "PYNQ-Z2's LUTs in LUTRAM")
    p.add_argument("--quant", default="quant",
                   help="bench/cifar10.py's W4A4 folder to take the tree from: quant (default) or quant_margin "
                        "(QAT of the margin stage's tree); the hardware goes to hw/ or hw_<name>/")
    p.add_argument("--no-sim", action="store_true",
                   help="builds only; the simulation of the previous results .json is kept (its design unchanged)")
    p.add_argument("--report-only", action="store_true", help="rewrite the .md from the results .json, run nothing")
    args = p.parse_args(argv)
    out = args.results / f"cifar10_{args.model}_hw.json"
    if args.report_only:
        out.with_suffix(".md").write_text(table(json.loads(out.read_text())))
        return 0

    from sigmabranch.pipeline import run_host_sim

    work = args.work / args.model
    ckpt = work / args.quant / "checkpoint.pt"
    if not (work / args.quant / "metrics.json").is_file():
        p.error(f"{ckpt}: no finished W4A4 tree; run bench/cifar10.py --model {args.model} first")
    hw = work / ("hw" if args.quant == "quant" else f"hw_{args.quant}")
    report: dict = {"model": args.model, "checkpoint": str(ckpt), "check_inputs": args.check_inputs, "boards": {}}
    t0 = time.perf_counter()
    report["check"] = export_stage(ckpt, hw, args.check_inputs)
    report["leaves_total"] = 2 ** int(json.loads((hw / "export" / "tree.json").read_text())["depth"])
    report["dense_on_chip"] = dense_on_chip(ckpt, args.boards.split(","))
    print(f"[cifar10_hw] export + check: {time.perf_counter() - t0:.0f} s", flush=True)
    targets = {k: int(v) for k, v in (item.split("=") for item in args.target_cycles.split(",") if item)}
    depths = {k: int(v) for k, v in (item.split("=") for item in args.threshold_bram_depth.split(",") if item)}
    for board in args.boards.split(","):
        t0 = time.perf_counter()
        b = build_stage(hw, board, targets.get(board), depths.get(board, 0))
        report["boards"][board] = {k: b.get(k) for k in ("fits", "total", "budget", "ddr", "onchip", "problems", "target_cycles",
                                                         "threshold_bram_depth")}
        report["boards"][board]["refusal"] = b.get("refusal")
        print(f"[cifar10_hw] build {board}: {time.perf_counter() - t0:.0f} s, fits: {b['fits']}", flush=True)
    if args.no_sim:
        if out.is_file() and json.loads(out.read_text()).get("simulation"):
            report["simulation"] = json.loads(out.read_text())["simulation"]
    elif report["boards"].get(args.sim_board, {}).get("fits"):
        ref = pick_images(ckpt, hw, args.sim_board, args.per_leaf, args.search)
        sim = run_host_sim(hw, len(ref["paths"]), ref, board=args.sim_board)
        sim["leaves"] = [path[-1] for path in ref["paths"]]
        sim["test_index"] = np.load(hw / "samples.npz")["test_index"].tolist()
        sim["leaf_usage_in_search"] = ref["leaf_usage_in_search"]
        report["simulation"] = sim
    out.write_text(json.dumps(report, indent=1, default=str))
    out.with_suffix(".md").write_text(table(report))
    print(table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
