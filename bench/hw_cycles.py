"""Cycles per inference of the stitched tree in simulation, and a modelled latency per board with
the weight fetch serialised after the router (what the hardware does now) vs overlapped with
compute (the fetch hidden: prefetched speculatively or during the previous level).

    python bench/hw_cycles.py --build build/zcu104 --images 3          # digits test images
    python bench/hw_cycles.py --build /tmp/tiny/zcu104 --random 4      # a build without digits

What is measured (cocotb + Verilator, hls/stitch.py's whole-tree top, full-rate streams, a DDR
model serving one 32-byte beat per cycle): cycles from an image's first input word to its last
accumulator, the DDR bytes served per inference (checked == the sum of the chosen regions'
bytes), the leaf and accumulators (checked == IntegerTree.infer). Per level part (one build per
level, reused), cycles with the fetch started together with the input (serialised) and with the
weights fetched before the input arrives (compute only): their difference is the exposed fetch.

What is modelled (per board of hls/boards.py): latency = cycles * clk_ns, where the exposed fetch
of each level is rescaled to the board's DDR bandwidth: a level's fetch takes
max(buffer fill, bytes / (ddr_bytes_per_s * clk)) cycles, the buffer fill being FINN+'s
local_weight_buffer writing SIMD weights a cycle (sum over the level's layers of MH*MW/SIMD).
Overlapped = the same without the exposed fetch. Results: bench/results_hw_cycles.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def digits_images(tree, n: int) -> tuple[np.ndarray, list[int]]:
    """Quantised NHWC digits test images: the first image of each leaf first, then in order."""
    from model.data import build_dataset
    test = build_dataset("digits").test
    x = np.stack([np.asarray(test[i][0]) for i in range(len(test))])
    q = tree.quantize_input(x)
    leaves = tree.infer(q, quantized=True)["leaves"]
    order = [int(np.flatnonzero(leaves == leaf)[0]) for leaf in np.unique(leaves)]
    order += [i for i in range(len(q)) if i not in order]
    idx = order[:n]
    return q[idx].transpose(0, 2, 3, 1), idx


def fill_cycles(level: dict) -> int:
    """local_weight_buffer fill: SIMD weights per cycle, summed over the level's layers."""
    return sum(layer["MH"] * layer["MW"] // layer["SIMD"] for layer in level["regions"][0]["layers"])


def level_parts(ts, x_int: np.ndarray) -> list[dict]:
    """Per level: serialised vs prefetched cycles of the level datapath (full-rate streams)."""
    n = len(x_int)
    tree = ts.tree
    res = tree.infer(x_int.transpose(0, 3, 1, 2), quantized=True)
    h = tree.nodes["backbone"].run(x_int.transpose(0, 3, 1, 2))
    out = []
    for level in range(tree.depth):
        branch = res["leaves"] >> (tree.depth - 1 - level)
        b = int(branch[0])
        rows = np.flatnonzero(branch == b)[:2]
        hin = h[rows] if level == 0 else hl[rows]
        kw = dict(p_valid=1.0, p_ready=1.0, p_rvalid=1.0, p_arready=1.0)
        serial = ts.level(level, b, hin.transpose(0, 2, 3, 1), **kw)
        pre = ts.level(level, b, hin.transpose(0, 2, 3, 1), prefetch=True, **kw)
        out.append({"level": level, "branch": b, "serial_cycles": serial.cycles, "prefetched_cycles": pre.cycles,
                    "exposed_fetch_cycles": int(np.median(np.array(serial.cycles) - np.array(pre.cycles))),
                    "bytes": serial.bytes[0], "fill_cycles": fill_cycles(ts.weights["levels"][level]),
                    "build_seconds": serial.build_seconds, "sim_seconds": serial.sim_seconds + pre.sim_seconds})
        hl = np.stack([tree.nodes[f"branch_{level}_{int(bb)}"].run(h_row[None])[0]
                       for bb, h_row in zip(branch, h if level == 0 else hl)])
    return out


def model_boards(tree_cycles: float, parts: list[dict], weights: dict) -> dict:
    """Per board: the simulated cycles with each level's exposed fetch rescaled to the board's DDR.

    A level's fetch takes F = max(fill, bytes / DDR bytes per cycle) cycles (fill: the local
    weight buffer's SIMD-a-cycle write). In simulation (32 B/cycle) part of it was hidden behind
    the level's first layers (padding, window generator), H = F_sim - exposed_sim; on a board the
    exposed part is max(0, F_board - H). Serialised = compute + the exposed fetches; overlapped =
    compute (weights already on chip when the level's input arrives)."""
    from hls.boards import BOARDS
    rows = {}
    compute = tree_cycles - sum(p["exposed_fetch_cycles"] for p in parts)
    for name, board in BOARDS.items():
        per_cycle = board.ddr_bytes_per_s * board.clk_ns * 1e-9          # DDR bytes per fabric cycle
        exposed = []
        for p in parts:
            hidden = max(0.0, max(p["fill_cycles"], p["bytes"] / 32) - p["exposed_fetch_cycles"])
            exposed.append(max(0.0, max(p["fill_cycles"], p["bytes"] / per_cycle) - hidden))
        serial = compute + sum(exposed)
        rows[name] = {"clk_ns": board.clk_ns, "ddr_bytes_per_s": board.ddr_bytes_per_s,
                      "ddr_bytes_per_cycle": per_cycle, "compute_cycles": compute,
                      "exposed_fetch_cycles_per_level": exposed,
                      "serialised_us": serial * board.clk_ns / 1e3, "overlapped_us": compute * board.clk_ns / 1e3,
                      "serialised_over_overlapped": serial / compute}
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=str(ROOT / "build" / "zcu104"))
    ap.add_argument("--images", type=int, default=3, help="digits test images (one per leaf first)")
    ap.add_argument("--random", type=int, default=0, help="random INT8 images instead of digits")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results_hw_cycles.json"))
    ap.add_argument("--no-parts", action="store_true", help="skip the per-level serial/prefetched runs")
    args = ap.parse_args(argv)

    from sim.tree_nodes import TreeSim
    t0 = time.perf_counter()
    ts = TreeSim(args.build)
    if args.random:
        c, hh, ww = ts.manifest["nodes"]["backbone"]["input_shape"][1:]
        x = np.random.default_rng(0).integers(-128, 128, size=(args.random, hh, ww, c))
        source = f"{args.random} random INT8 images"
    else:
        x, idx = digits_images(ts.tree, args.images)
        source = f"digits test images {idx}"
    ref = ts.tree.infer(x.transpose(0, 3, 1, 2), quantized=True)
    r = ts.tree_top(x, p_valid=1.0, p_ready=1.0, p_rvalid=1.0, p_arready=1.0)
    ok_acc = bool(np.array_equal(np.stack(r.outputs), ref["acc"]))
    ok_leaf = list(map(int, r.info["leaves"])) == ref["leaves"].tolist()
    expected = ts.expected_bytes(ref["leaves"]).tolist()
    parts = [] if args.no_parts else level_parts(ts, x)
    tree_cycles = float(np.median(r.cycles))
    result = {"build": str(args.build), "inputs": source, "leaves": ref["leaves"].tolist(),
              "bit_exact_acc": ok_acc, "same_leaves": ok_leaf,
              "bytes_per_inference": r.bytes, "expected_bytes": expected, "bytes_match": r.bytes == expected,
              "cycles_per_inference": r.cycles, "tree_build_seconds": r.build_seconds,
              "tree_sim_seconds": r.sim_seconds, "levels": parts,
              "boards": model_boards(tree_cycles, parts, ts.weights) if parts else {},
              "wall_seconds": time.perf_counter() - t0}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{source}: leaves {result['leaves']}, accumulators bit-exact {ok_acc}, leaves equal {ok_leaf}")
    print(f"DDR bytes per inference {r.bytes} (manifest: {expected}); cycles per inference {r.cycles}")
    if parts:
        print("\n| level | branch | serialised cycles | prefetched cycles | exposed fetch | fill cycles | bytes |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for p in parts:
            print(f"| {p['level']} | {p['branch']} | {p['serial_cycles']} | {p['prefetched_cycles']} | "
                  f"{p['exposed_fetch_cycles']} | {p['fill_cycles']} | {p['bytes']} |")
        print("\n| board | clk ns | DDR B/cycle | serialised us | overlapped us | ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, b in result["boards"].items():
            print(f"| {name} | {b['clk_ns']} | {b['ddr_bytes_per_cycle']:.1f} | {b['serialised_us']:.2f} | "
                  f"{b['overlapped_us']:.2f} | {b['serialised_over_overlapped']:.3f} |")
    print(f"\n{args.out} ({result['wall_seconds']:.0f} s)")
    return 0 if ok_acc and ok_leaf and result["bytes_match"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
