"""One ResNet-50 level datapath in Verilator, bit-exact against the integer reference (issue #13).

    .venv/bin/python bench/resnet50_level_sim.py                      # after bench/resnet50_zcu104.py
    .venv/bin/python bench/resnet50_level_sim.py --variant folded_262k --level 1 --branches 0,3

The whole ResNet-50 tree is too large to simulate here; one level node is not. This takes a build
of ``bench/resnet50_zcu104.py`` (``<work>/build/<variant>``: the placement, ``nodes/*.hw.onnx`` and
the DDR weight image; the variant need not fit the ZU7EV, the simulation checks the logic) and
runs the stitched level datapath with :class:`sim.tree_nodes.TreeSim`: the level's branch (layer4's
three bottlenecks: 1x1, 3x3/2, 1x1 convs, the strided 1x1 shortcut and two identity skips, every
weight fetched from the DDR model) then the node below it (the last level's leaf head, or the next
router), under random valid/ready and DDR stalls, on random inputs in the level's input type.

Checked per input: the branch's output feature map and the head's accumulators (or the router's
decision) equal the integer reference's, and the DDR bytes served equal the branch's region.
Results: ``bench/results/resnet50_level_sim.json`` and ``.md``.
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


def level_inputs(ts, node: str, n: int, seed: int) -> np.ndarray:
    """``n`` random NHWC inputs of ``node`` over the whole range of its input datatype."""
    from qonnx.core.modelwrapper import ModelWrapper
    model = ModelWrapper(str(ts.build_dir / "nodes" / f"{node}.hw.onnx"))
    dtype = model.get_tensor_datatype(model.graph.input[0].name)
    c, h, w = ts.manifest["nodes"][node]["input_shape"][1:]
    return np.random.default_rng(seed).integers(int(dtype.min()), int(dtype.max()) + 1, size=(n, h, w, c)), dtype.name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "resnet50_zcu104")
    p.add_argument("--variant", default="folded_262k", help="the build of bench/resnet50_zcu104.py (default folded_262k)")
    p.add_argument("--level", type=int, default=1, help="tree level whose datapath is simulated (default 1, the last)")
    p.add_argument("--branches", default="0", help="comma-separated branches of that level (default 0)")
    p.add_argument("--inputs", type=int, default=2, help="inputs per branch (default 2)")
    p.add_argument("--max-cycles", type=int, default=4_000_000)
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    from sim.tree_nodes import TreeSim

    build = args.work / "build" / args.variant
    if not (build / "nodes").is_dir():
        p.error(f"{build}: no build; run bench/resnet50_zcu104.py first")
    ts = TreeSim(build)
    placement = json.loads((build / "placement.json").read_text())
    rows = []
    for branch in (int(b) for b in args.branches.split(",")):
        node = f"branch_{args.level}_{branch}"
        h, dtype = level_inputs(ts, node, args.inputs, seed=branch)
        t0 = time.perf_counter()
        r = ts.level(args.level, branch, h, p_valid=0.8, p_ready=0.8, p_rvalid=0.8, p_arready=0.7, seed=branch,
                     max_cycles=args.max_cycles)
        wall = time.perf_counter() - t0
        ref = ts.tree.nodes[node].run(h.transpose(0, 3, 1, 2))
        branch_exact = np.array_equal(np.stack(r.taps[r.info["tap"]]), ref.transpose(0, 2, 3, 1).reshape(len(h), -1))
        if r.info["below"].startswith("head_"):
            below_ref = ts.tree.head_logits(branch, ref)[0]
            below_exact = np.array_equal(np.stack(r.outputs), below_ref)
        else:
            below_exact = [int(o[0]) for o in r.outputs] == ts.tree.decide(args.level + 1, branch, ref).tolist()
        region = r.info["region_bytes"]
        rows.append({"node": node, "below": r.info["below"], "inputs": len(h), "input_type": dtype,
                     "input_shape_nhwc": list(h.shape[1:]), "branch_bitexact": bool(branch_exact),
                     "below_bitexact": bool(below_exact), "bytes": r.bytes, "region_bytes": region,
                     "bytes_equal_region": all(b == region for b in r.bytes), "cycles": r.cycles,
                     "stages": len(r.info.get("stages", [])) or None, "verilator_build_s": round(r.build_seconds, 1),
                     "sim_s": round(r.sim_seconds, 1), "wall_s": round(wall, 1)})
        print(json.dumps(rows[-1]), flush=True)
    report = {"build": str(build), "variant": args.variant, "level": args.level,
              "target_cycles": placement.get("target_cycles"), "rows": rows}
    out = args.results / "resnet50_level_sim.json"
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(table(report))
    print(table(report))
    return 0 if all(r["branch_bitexact"] and r["below_bitexact"] and r["bytes_equal_region"] for r in rows) else 1


def table(report: dict) -> str:
    lines = [f"# One ResNet-50 level datapath in Verilator (ZCU104 build `{report['variant']}`, folding target "
             f"{report['target_cycles']:,} cycles)", "",
             "Written by `bench/resnet50_level_sim.py`: the stitched level datapath (every weight fetched from "
             "the DDR model) under random valid/ready and DDR stalls, against the integer reference.", "",
             "| node | then | inputs (type, NHWC) | branch output bit-exact | then bit-exact | DDR bytes / inference "
             "| = region | cycles / inference | Verilator build s | sim s |",
             "|---|---|---|---|---|---:|---|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['node']} | {r['below']} | {r['inputs']} ({r['input_type']}, {'x'.join(map(str, r['input_shape_nhwc']))}) | "
                     f"{r['branch_bitexact']} | {r['below_bitexact']} | {sorted(set(r['bytes']))} | "
                     f"{r['bytes_equal_region']} | {', '.join(f'{c:,}' for c in r['cycles'])} | "
                     f"{r['verilator_build_s']:.0f} | {r['sim_s']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
