"""The weight fetch against the port's limit, and the serial time of the routers: designs before
and after, built from one export and simulated in the same run.

    .venv/bin/python bench/fetch_rate.py [--export runs/demo/export] [--board pynq-z2] [--images 8]
                                         [--batch 32] [--stream]

Every design is the whole design behind AXI (``vivado/``), simulated with Verilator under the
unchanged host driver (on-chip fetch, one inference at a time). They differ in

- the weight port's arbiter (``hls/rtl/axi_read_arbiter.sv``, the top's parameters):
  ``FETCH_BUF_BEATS=0`` is the design before (one burst at a time, the port held by its fetcher
  until the burst's last beat is taken), 32 buffers 32 beats per fetcher with 4 bursts in flight;
  ``FETCH_PRIORITY`` 0 serves the fetchers in turn, 1 in datapath order (a level's first layer
  gets its weights first and computes while the later layers' arrive; the default);
- the routers' and heads' folding (``sigmabranch build --router-fold``): 1 = the levels' cycle
  target (before), 8 = an eighth of it (now the default);
- the fetched layers' SIMD (``sigmabranch build --no-port-fill``): the folding target's, or wide
  enough that each weight buffer fills at the port's rate (``hls.finn_steps.PortRateFill``, the
  default).

Every design has the FIFOs the stitch puts between two layers of a chain (``hls.residual.
LAYER_FIFO_WORDS``), the first row included: the baseline is the earlier fetch and folding on
today's stitch. (Without those FIFOs the first design took 166,054 cycles per inference on PYNQ-Z2,
bench/results history, 2026-12-05.)

The simulated DDR is the board's port (``hls.boards.Board.weight_port``: PYNQ-Z2 8 bytes a cycle at
100 MHz, first word after 15 cycles; ZCU104 16 bytes at 200 MHz, 30 cycles), full-rate streams
elsewhere. Per design: cycles per inference (the driver's latency: start to the last output word),
bit-exact against the integer reference (``ref`` backend), DDR bytes == the chosen regions' bytes,
and per level the fetch's port cycles (first to last beat of the level's regions) against its
bytes / port bytes per cycle. Then the last design under the driver with ``execute(x, batch=N)``
(the images of a batch streamed back to back in one start, overlapping in the tree; throughput as
cycles per inference) and, with ``--stream``, the stitched tree without the AXI wrapper one at a
time and back to back. Written to ``bench/results/fetch_rate_<board>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

UNBUFFERED = {"FETCH_BUF_BEATS": 0, "FETCH_OUTSTANDING": 1, "FETCH_PRIORITY": 0}
BUFFERED = {"FETCH_BUF_BEATS": 32, "FETCH_OUTSTANDING": 4, "FETCH_PRIORITY": 0}
IN_ORDER = {**BUFFERED, "FETCH_PRIORITY": 1}     # the default top
# name: (router_fold, port_fill, the top's parameters)
DESIGNS = {"before: port held per burst, routers at the levels' target": (1, False, UNBUFFERED),
           "buffered port": (1, False, BUFFERED),
           "+ routers folded 8x": (8, False, BUFFERED),
           "+ buffers filled at port rate": (8, True, BUFFERED),
           "+ fetchers served in datapath order (default)": (8, True, IN_ORDER)}


def pick_digits(bundle: Path, n: int) -> np.ndarray:
    """Digits test images, the first of each leaf first (so a short run reaches every leaf)."""
    from bench.host_fetch import digits_test
    from host.driver import SigmaBranchOverlay
    x, _ = digits_test()
    leaves = SigmaBranchOverlay(bundle, "ref").execute(x[:200])["leaves"]
    first = [int(np.flatnonzero(leaves == v)[0]) for v in np.unique(leaves)]
    order = first + [i for i in range(len(x)) if i not in first]
    return x[order[:n]]


def level_fetch(beats: list[tuple[int, int]], weights_addr: int, levels: list[dict]) -> list[dict]:
    """Per level: the beats of its regions, the cycles from its first to its last beat."""
    out = []
    for lv in levels:
        lo = weights_addr + int(lv["base"])
        hi = lo + int(lv["region_stride"]) * 2 ** (int(lv["level"]) + 1)
        cyc = [c for c, a in beats if lo <= a < hi]
        out.append({"beats": len(cyc), "port_cycles": (max(cyc) - min(cyc) + 1) if cyc else 0})
    return out


def run_design(bundle: Path, x: np.ndarray, ref: dict, params: dict, port: dict, driver: dict) -> dict:
    from sim.host_backend import run_sim
    t0 = time.perf_counter()
    out = run_sim(bundle, x, fetch_mode="onchip", parameters=params, ddr_port=port, record_beats=True,
                  p_valid=1.0, p_ready=1.0, p_arready=1.0, p_rvalid=1.0)
    per = out["sim"]["per_inference"]
    weights_addr = int(out["sim"]["open"]["buffers"]["weights"])
    fetch = [level_fetch(r["ddr_beats"], weights_addr, driver["levels"]) for r in per]
    expected = [sum(int(lv["region_bytes"]) for lv in driver["levels"])] * len(x)
    return {"parameters": params,
            "cycles_per_inference": [float(c) for c in out["latency"]],
            "bit_exact": bool(np.array_equal(out["acc"], ref["acc"]) and np.array_equal(out["paths"], ref["paths"])),
            "ddr_bytes": [int(r["ddr_read_bytes"]) for r in per], "path_bytes": expected,
            "bytes_match": [int(r["ddr_read_bytes"]) for r in per] == expected,
            "level_fetch": fetch, "build_s": out["sim"]["build_seconds"], "sim_s": out["sim"]["sim_seconds"],
            "wall_s": time.perf_counter() - t0}


def batch_run(bundle: Path, x: np.ndarray, ref: dict, port: dict, driver: dict, batch: int, params: dict) -> dict:
    """The whole design behind AXI under the driver, ``execute(x, batch=...)``: the images of a
    batch streamed back to back in one start, each image's leaf read from the design (PATH)."""
    from sim.host_backend import run_sim
    t0 = time.perf_counter()
    out = run_sim(bundle, x, fetch_mode="onchip", parameters=params, ddr_port=port, batch=batch,
                  p_valid=1.0, p_ready=1.0, p_arready=1.0, p_rvalid=1.0)
    per = out["sim"]["per_inference"]            # one record per batch
    path = sum(int(lv["region_bytes"]) for lv in driver["levels"])
    sizes = [len(x[i:i + batch]) for i in range(0, len(x), batch)]
    r = {"batch": batch, "cycles_per_inference": float(np.mean(out["latency"])),
         "bit_exact": bool(np.array_equal(out["acc"], ref["acc"]) and np.array_equal(out["paths"], ref["paths"])),
         "ddr_bytes": [int(p["ddr_read_bytes"]) for p in per], "path_bytes": [n * path for n in sizes],
         "build_s": out["sim"]["build_seconds"], "sim_s": out["sim"]["sim_seconds"],
         "wall_s": time.perf_counter() - t0}
    r["bytes_match"] = r["ddr_bytes"] == r["path_bytes"]
    print(f"[fetch_rate]   driver, batch {batch}: {r['cycles_per_inference']:,.0f} cycles/inference, bit-exact "
          f"{r['bit_exact']}, bytes match {r['bytes_match']}", flush=True)
    # the same batch under random back-pressure on every stream and random DDR stalls: results only
    out = run_sim(bundle, x, fetch_mode="onchip", parameters=params, ddr_port=port, batch=batch, seed=1,
                  p_valid=0.7, p_ready=0.7, p_arready=0.8, p_rvalid=0.8)
    per = out["sim"]["per_inference"]
    r["backpressure"] = {"bit_exact": bool(np.array_equal(out["acc"], ref["acc"])
                                           and np.array_equal(out["paths"], ref["paths"])),
                         "bytes_match": [int(p["ddr_read_bytes"]) for p in per] == r["path_bytes"],
                         "cycles_per_inference": float(np.mean(out["latency"]))}
    print(f"[fetch_rate]   driver, batch {batch}, random back-pressure: bit-exact {r['backpressure']['bit_exact']}, "
          f"bytes match {r['backpressure']['bytes_match']}", flush=True)
    return r


def stream_run(bundle: Path, x: np.ndarray, ref: dict, port: dict) -> dict:
    """The stitched whole tree (hls/stitch.py write_tree_top, no AXI wrapper and no driver) on the
    same images, one after another and then back to back: the levels already pass frames on (each
    level's controller takes the next decision once the level's output left), so images overlap
    in the tree; what the AXI wrapper's one-image-per-start and the driver do not use yet."""
    from sim.tree_nodes import TreeSim
    ts = TreeSim(bundle)
    q = ts.tree.quantize_input(x)               # the integer NHWC input the tree's stream carries
    x_int = q.transpose(0, 2, 3, 1)
    kw = dict(p_valid=1.0, p_ready=1.0, p_rvalid=1.0, p_arready=1.0, ddr_port=port, max_cycles=1_000_000)
    out = {}
    for mode, pipelined in (("one at a time", False), ("back to back", True)):
        t0 = time.perf_counter()
        r = ts.tree_top(x_int, pipelined=pipelined, **kw)
        acc = np.array([np.asarray(o).reshape(-1) for o in r.outputs])
        cycles = [int(c) for c in r.cycles]
        per = float(np.mean(cycles)) if not pipelined else cycles[-1] / len(x)
        steady = (cycles[-1] - cycles[0]) / (len(x) - 1) if pipelined and len(x) > 1 else per
        out[mode] = {"cycles": cycles, "cycles_per_inference": per, "steady_cycles_per_inference": steady,
                     "bit_exact": bool(np.array_equal(acc, ref["acc"]) and r.info["leaves"] == [int(v) for v in ref["leaves"]]),
                     "ddr_bytes": int(sum(r.bytes)), "build_s": r.build_seconds, "sim_s": r.sim_seconds,
                     "wall_s": time.perf_counter() - t0}
        print(f"[fetch_rate]   tree top, {mode}: {per:,.0f} cycles/inference (steady {steady:,.0f}), bit-exact "
              f"{out[mode]['bit_exact']}, {out[mode]['ddr_bytes']:,} DDR bytes", flush=True)
    return out


def table(res: dict) -> str:
    names = list(res["designs"])
    base = res["designs"][names[0]]
    lv_bytes = [int(lv["region_bytes"]) for lv in res["levels"]]
    pb = res["port"]["port_bytes"]
    lines = [f"# Weight fetch vs the port: {res['board']} (built from {res['export']})", "",
             f"{res['images']} digits test images (leaves {res['leaves']}), on-chip fetch, one inference at a time; "
             f"simulated port {pb:g} B/cycle, first word after {res['port']['first_word_cycles']} cycles. "
             f"Every design has the FIFOs between layers (`hls.residual.LAYER_FIFO_WORDS`), the first "
             f"row too. Written by `bench/fetch_rate.py` on {res['date']}.", "",
             "| design | router fold | cycles / inference | ratio | bit-exact | DDR bytes = path | "
             + " | ".join(f"level {i} fetch port cycles (bytes/port = {b / pb:,.0f})" for i, b in enumerate(lv_bytes))
             + " |", "|---|---:|---:|---:|---|---|" + "---:|" * len(lv_bytes)]
    for name in names:
        d = res["designs"][name]
        cyc = float(np.mean(d["cycles_per_inference"]))
        fetch = [float(np.mean([f[i]["port_cycles"] for f in d["level_fetch"]])) for i in range(len(lv_bytes))]
        lines.append(f"| {name} | {d['router_fold']} | {cyc:,.0f} | {cyc / np.mean(base['cycles_per_inference']):.3f} | "
                     f"{d['bit_exact']} | {d['bytes_match']} | "
                     + " | ".join(f"{c:,.0f} ({c / (b / pb):.2f}x)" for c, b in zip(fetch, lv_bytes)) + " |")
    clk = res["clk_ns"]
    lines += ["", "Throughput against the limits (one inference in flight, so measured = 1 / latency; "
              "compute-bound = the slowest layer's FINN+ estimate, what a design with inferences pipelined "
              "through its layers could reach; fetch-bound = path bytes / port bytes a cycle):", "",
              f"| design | measured (inferences/s at {1e3 / clk:g} MHz) | compute-bound | fetch-bound |",
              "|---|---:|---:|---:|"]
    for name in names:
        d = res["designs"][name]
        cyc = float(np.mean(d["cycles_per_inference"]))
        lines.append(f"| {name} | {1e9 / (cyc * clk):,.0f} ({cyc:,.0f} cycles) | "
                     f"{1e9 / (d['slowest_layer_cycles'] * clk):,.0f} ({d['slowest_layer_cycles']:,} cycles) | "
                     f"{1e9 / (sum(lv_bytes) / pb * clk):,.0f} ({sum(lv_bytes) / pb:,.0f} cycles) |")
    if res.get("batch"):
        b = res["batch"]
        base_cyc = float(np.mean(base["cycles_per_inference"]))
        last = res["designs"][names[-1]]
        lines += ["", f"The last design under the driver with `execute(x, batch={b['batch']})`: the images of a batch "
                  "streamed back to back in one start (FRAMES), each image's leaf read back (PATH):", "",
                  "| run | cycles / inference | inferences/s | vs the first row | vs one at a time | bit-exact | "
                  "DDR bytes = path |", "|---|---:|---:|---:|---:|---|---|",
                  f"| batch {b['batch']} | {b['cycles_per_inference']:,.0f} | "
                  f"{1e9 / (b['cycles_per_inference'] * clk):,.0f} | {base_cyc / b['cycles_per_inference']:.2f}x | "
                  f"{np.mean(last['cycles_per_inference']) / b['cycles_per_inference']:.2f}x | {b['bit_exact']} | "
                  f"{b['bytes_match']} |"]
        if b.get("backpressure"):
            bp = b["backpressure"]
            lines += ["", f"The same batch with random valid/ready on every stream (0.7) and DDR stalls (0.8): "
                      f"bit-exact {bp['bit_exact']}, DDR bytes = path {bp['bytes_match']} "
                      f"({bp['cycles_per_inference']:,.0f} cycles per inference)."]
    if res.get("stream"):
        s = res["stream"]
        one, b2b = s["one at a time"], s["back to back"]
        path = sum(lv_bytes) * res["images"]
        lines += ["", f"The stitched whole tree of the last design without the AXI wrapper (`TreeSim.tree_top`), "
                  f"the same {res['images']} images, the same port model:", "",
                  "| images | cycles / inference | inferences/s | ratio to the first row | bit-exact | DDR bytes (path bytes) |",
                  "|---|---:|---:|---:|---|---:|"]
        base_cyc = float(np.mean(base["cycles_per_inference"]))
        for name, r in (("one at a time", one), ("back to back (steady state)", b2b)):
            c = r["steady_cycles_per_inference"]
            lines.append(f"| {name} | {c:,.0f} | {1e9 / (c * clk):,.0f} | {base_cyc / c:.2f}x | {r['bit_exact']} | "
                         f"{r['ddr_bytes']:,} ({path:,}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", type=Path, default=REPO / "runs" / "demo" / "export")
    p.add_argument("--board", default="pynq-z2")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--batch", type=int, default=32, help="the last design under the driver with this batch "
                   "(images per start, back to back); 1: skip")
    p.add_argument("--only-last", action="store_true", help="the last (default) design only, no baselines")
    p.add_argument("--stream", action="store_true",
                   help="also the stitched whole tree (no AXI wrapper) with the images back to back")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "fetch_rate")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    from hls.boards import get_board
    from hls.build import build
    from host.driver import SigmaBranchOverlay
    board = get_board(args.board)
    port = board.weight_port()
    res = {"export": str(args.export), "board": board.name, "port": port, "clk_ns": board.clk_ns, "date": time.strftime("%Y-%m-%d"),
           "designs": {}}
    x = ref = None
    designs = dict(list(DESIGNS.items())[-1:]) if args.only_last else DESIGNS
    for name, (router_fold, port_fill, params) in designs.items():
        bundle = (args.work / f"{board.name}_router_fold{router_fold}{'_port_fill' * port_fill}").resolve()
        if not (bundle / "vivado" / "hdl.json").is_file():
            print(f"[fetch_rate] building {bundle} (router_fold {router_fold}, port_fill {port_fill})", flush=True)
            build(args.export, board.name, bundle, router_fold=router_fold, port_fill=port_fill)
        driver = json.loads((bundle / "driver.json").read_text())
        if x is None:
            x = pick_digits(bundle, args.images)
            ref = SigmaBranchOverlay(bundle, "ref").execute(x)
            res.update(images=len(x), leaves=sorted(set(int(v) for v in ref["leaves"])), levels=driver["levels"])
        print(f"[fetch_rate] {name}: {params}", flush=True)
        d = run_design(bundle, x, ref, params, port, driver)
        d["router_fold"], d["port_fill"] = router_fold, port_fill
        placement = json.loads((bundle / "placement.json").read_text())
        d["slowest_layer_cycles"] = max(int(r["cycles"]) for part in placement["onchip"] for r in part["layers"])
        res["designs"][name] = d
        print(f"[fetch_rate]   {np.mean(d['cycles_per_inference']):,.0f} cycles/inference, bit-exact "
              f"{d['bit_exact']}, bytes match {d['bytes_match']} ({d['build_s']:.0f} s build, {d['sim_s']:.0f} s sim)",
              flush=True)
    if args.batch > 1:
        print(f"[fetch_rate] the last design under the driver, batch {args.batch}", flush=True)
        res["batch"] = batch_run(bundle, x, ref, port, driver, args.batch, params)
    if args.stream:
        print("[fetch_rate] the whole tree top, one at a time and back to back", flush=True)
        res["stream"] = stream_run(bundle, x, ref, port)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"fetch_rate_{board.name}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    text = table(res)
    stem.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
