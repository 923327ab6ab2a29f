"""Host fetch strategies: cycles per inference, serial vs prefetch, per board.

Run from the repository root::

    .venv/bin/python bench/host_fetch.py [--bundle build/pynq-z2 --bundle build/zcu104] [--inputs samples.npz]
                                         [--backend ref] [--limit N] [--json out.json]

Without ``--bundle`` it uses ``runs/demo/build/<board>`` (``make run``); with ``--export DIR`` it
builds the two bundles from that export first (``sigmabranch build --no-hdl``, into ``--workdir``).
Without ``--inputs`` it takes the digits test split (the demo's 360 images).

For each bundle the *same driver code* (``host.driver.SigmaBranchOverlay``) runs the inputs with

- ``serial``: each level's region fetched after its decision (the paper's flow);
- ``prefetch``: the most-chosen branch so far fetched before the decision (online counts);
- ``prefetch (oracle prior)``: the same with the predictor seeded with the run's own branch
  usage, an upper bound on what a better predictor could give;
- ``onchip``: serial, the router's decision driving ``fetch_weights`` (no host round trips);
- ``pipelined inputs (bound)``: not driven, an analytic bound: with the next input's backbone
  overlapping this input's fetches and levels, an inference costs its busiest stage (backbone +
  root router, one level's fetch + compute, or the DDR port);

and prints cycles per inference (mean), the ratio to serial, weight bytes per inference, the
bytes wasted on wrong guesses and how often both levels were guessed right. The ``ref`` cycles
are the transaction-level model of ``host/backends/ref.py`` (FINN+'s per-layer cycle
estimates, one DDR port at the board's bandwidth and first-word latency from driver.json
``board_facts``, 25 cycles per MMIO access).

``--backend sim`` adds the same driver on the Verilator model of the whole design behind AXI
(``sim.host_backend.run_sim``, needs the bundle's ``vivado/``): ``serial`` and ``prefetch`` in
host-driven fetch mode (the PS reads the decision, tags and starts one weight DMA per level; a
prefetched region fills the buffers before the decision, a wrong one is flushed on chip), the
prefetch again with the predictor seeded by the inputs' own branch usage (``prefetch prior``, as
the modelled oracle row) and ``onchip`` serial, each with its simulated cycles, and
the ratio to the simulated serial run measured in the same invocation. The stand-in's MMIO
costs a few cycles and its DMAs move 32 bytes per cycle when not stalled: a board's software
round trip and HP port are slower, so the simulated gain of prefetch is a lower bound of what
it hides on a board. ``--limit`` keeps it short (a demo inference is ~150k cycles).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from host.driver import SigmaBranchOverlay  # noqa: E402


def digits_test() -> tuple[np.ndarray, np.ndarray]:
    from model.data import build_dataset
    test = build_dataset("digits").test
    x = np.stack([np.asarray(test[i][0]) for i in range(len(test))]).astype(np.float32)
    y = np.array([int(test[i][1]) for i in range(len(test))])
    return x, y


def run_bundle(bundle: Path, x: np.ndarray, y: np.ndarray | None, backend: str, sim_options: dict | None = None) -> dict:
    rows = {}
    serial = SigmaBranchOverlay(bundle, "ref", strategy="serial").execute(x)
    usage = [np.bincount(serial["paths"][:, l], minlength=2 ** (l + 1)) for l in range(serial["paths"].shape[1])]
    runs = [("serial", "ref", {"strategy": "serial"}, None),
            ("prefetch", "ref", {"strategy": "prefetch"}, None),
            ("prefetch (oracle prior)", "ref", {"strategy": "prefetch"}, usage),
            ("onchip serial", "ref", {"strategy": "serial", "fetch_mode": "onchip"}, None)]
    for name, be, kwargs, prior in runs:
        ov = SigmaBranchOverlay(bundle, be, **kwargs)
        ov.prior = None if prior is None else [u * len(x) for u in prior]
        out = serial if name == "serial" else ov.execute(x)
        assert np.array_equal(out["acc"], serial["acc"]), f"{name}: results differ from serial"
        rows[name] = {"backend": be, "cycles_per_inference": float(out["latency"].mean()), "unit": out["latency_unit"],
                      "weight_bytes": float(out["bytes"]["weights"].mean()),
                      "wasted_bytes": float(out["bytes"]["wasted"].mean()),
                      "right_guesses": (float(np.mean(out["bytes"]["wasted"] == 0))
                                        if kwargs["strategy"] == "prefetch" else None)}
    # Not driven, a bound: inputs pipelined (the next input's backbone overlaps this one's fetches and
    # levels), so an inference costs the busiest stage: backbone + root router, a level's datapath
    # (its fetch then its compute: one weight buffer), or the DDR port.
    from host.backends.ref import Timing
    driver = json.loads((bundle / "driver.json").read_text())
    tm = Timing.from_bundle(bundle, driver, len(driver["levels"]))
    fetch = [tm.fetch_cycles(int(l["region_bytes"])) for l in driver["levels"]]
    stages = [tm.backbone_cycles] + [f + c for f, c in zip(fetch, tm.level_cycles)] + [sum(fetch)]
    rows["pipelined inputs (bound)"] = {"cycles_per_inference": float(max(stages)), "unit": "cycles",
                                        "weight_bytes": rows["serial"]["weight_bytes"], "wasted_bytes": 0.0,
                                        "right_guesses": None, "stages": stages}
    base = rows["serial"]["cycles_per_inference"]
    for row in rows.values():
        row["ratio_to_serial"] = row["cycles_per_inference"] / base
    if backend == "sim":
        rows.update(simulated_rows(bundle, x, serial, sim_options or {}))
    return {"bundle": str(bundle), "board": driver["board"], "clk_ns": driver["clk_ns"], "backend": backend,
            "inputs": len(x), "accuracy": None if y is None else float(np.mean(serial["classes"] == y)),
            "leaf_counts": np.bincount(serial["leaves"], minlength=2 ** serial["paths"].shape[1]).tolist(),
            "strategies": rows}


def simulated_rows(bundle: Path, x: np.ndarray, ref: dict, options: dict) -> dict:
    """The driver on the Verilator model of the whole design: host serial, host prefetch (cold, and
    with the predictor seeded by the inputs' own branch usage, as the ``ref`` oracle row), onchip."""
    from sim.host_backend import run_sim
    usage = [(np.bincount(ref["paths"][:, l], minlength=2 ** (l + 1)) * len(x)).tolist()
             for l in range(ref["paths"].shape[1])]
    rows = {}
    for name, kwargs in [("serial (Verilator)", {"strategy": "serial", "fetch_mode": "host"}),
                         ("prefetch (Verilator)", {"strategy": "prefetch", "fetch_mode": "host"}),
                         ("prefetch prior (Verilator)", {"strategy": "prefetch", "fetch_mode": "host",
                                                               "prior": usage}),
                         ("onchip serial (Verilator)", {"strategy": "serial", "fetch_mode": "onchip"})]:
        out = run_sim(bundle, x, **kwargs, **options)
        assert np.array_equal(out["acc"], ref["acc"]), f"{name}: results differ from the reference"
        rows[name] = {"backend": "sim", "cycles_per_inference": float(out["latency"].mean()), "unit": "cycles",
                      "weight_bytes": float(out["bytes"]["weights"].mean()),
                      "wasted_bytes": float(out["bytes"]["wasted"].mean()),
                      "right_guesses": (float(np.mean(out["bytes"]["wasted"] == 0))
                                        if kwargs["strategy"] == "prefetch" else None),
                      "sim_seconds": out["sim"]["sim_seconds"]}
    base = rows["serial (Verilator)"]["cycles_per_inference"]
    for row in rows.values():
        row["ratio_to_serial"] = row["cycles_per_inference"] / base   # to the simulated serial run
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", action="append", type=Path)
    p.add_argument("--export", type=Path, help="build the pynq-z2 and zcu104 bundles from this export first")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/sigmabranch-bench-host"))
    p.add_argument("--inputs", type=Path)
    p.add_argument("--backend", default="ref", choices=["ref", "sim"])
    p.add_argument("--limit", type=int)
    p.add_argument("--sim-options", help='JSON for the simulator, e.g. \'{"p_ready": 1.0, "p_valid": 1.0}\'')
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    bundles = args.bundle
    if args.export:
        bundles = []
        for board in ("pynq-z2", "zcu104"):
            out = args.workdir / board
            subprocess.run([sys.executable, "-m", "sigmabranch", "build", "--export", str(args.export), "--board", board,
                            "--out", str(out), "--no-hdl"], check=True, stdout=subprocess.DEVNULL,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
            bundles.append(out)
    bundles = bundles or [REPO / "runs" / "demo" / "build" / b for b in ("pynq-z2", "zcu104")]
    missing = [str(b) for b in bundles if not (b / "driver.json").is_file()]
    if missing:
        print(f"no bundle at {', '.join(missing)}: run `make run`, or pass --export runs/demo/export", file=sys.stderr)
        return 2
    if args.inputs:
        with np.load(args.inputs) as npz:
            x, y = npz["x"], (npz["y"] if "y" in npz.files else None)
    else:
        x, y = digits_test()
    if args.limit:
        x, y = x[:args.limit], (None if y is None else y[:args.limit])
    sim_options = json.loads(args.sim_options) if args.sim_options else None
    results = [run_bundle(b, x, y, args.backend, sim_options) for b in bundles]
    for r in results:
        acc = "" if r["accuracy"] is None else f", accuracy {100 * r['accuracy']:.2f}%"
        print(f"\n{r['board']} ({1000 / r['clk_ns']:.0f} MHz, {r['inputs']} inputs{acc}; "
              f"leaves {r['leaf_counts']})")
        print(f"  {'strategy':<26}{'cycles/inf':>12}{'us/inf':>9}{'ratio':>8}{'weight B':>10}{'wasted B':>10}{'right':>7}")
        for name, row in r["strategies"].items():
            print(f"  {name:<26}{row['cycles_per_inference']:>12.0f}{row['cycles_per_inference'] * r['clk_ns'] / 1e3:>9.1f}"
                  f"{row['ratio_to_serial']:>8.3f}{row['weight_bytes']:>10.0f}{row['wasted_bytes']:>10.0f}"
                  + (f"{100 * row['right_guesses']:>6.0f}%" if row["right_guesses"] is not None else f"{'-':>7}"))
        if any(name.endswith("(Verilator)") for name in r["strategies"]):
            print("  (Verilator rows: simulated cycles, ratio to serial (Verilator); the others: modelled, ratio to serial)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
