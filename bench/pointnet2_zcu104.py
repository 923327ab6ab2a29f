"""The full ``pointnet2_ssg`` tree (ModelNet40 size: 1024 points, 40 classes, W4A4, untrained)
through ``sigmabranch build`` for ZCU104 (issue #15): the processor keeps SA1 + SA2, the fabric
gets SA3 (level 0), FC1 (level 1), the routers and the leaf heads. Does its on-chip part fit, what
does it read from DDR per inference against the dense model under the same placement?

    OMP_NUM_THREADS=1 nice .venv/bin/python bench/pointnet2_zcu104.py               # ~10 min on 2 cores
    .venv/bin/python bench/pointnet2_zcu104.py --boards zcu104,pynq-z2 --no-hdl

Stages, each skipped when its output exists under ``--out`` (default ``runs/pointnet2_zcu104/``):

1. ``qtree.pt``: ``pointnet2_ssg(num_classes=40)`` with random weights, converted to a depth-2
   tree on ``--clouds`` random clouds (the k-means initialisation needs activations, not trained
   ones), quantised W4A4 (``quantize_tree``: the routed part only) and calibrated on them.
   Untrained weights: the build needs the shapes and integer ranges only.
2. ``export/``: QONNX per node, the integer programs, ``host_backbone.npz``.
3. ``build/<board>/``: ``hls.build.build`` (with the HDL unless ``--no-hdl``); a placement that
   does not fit is a result (``placement.md`` written before the refusal).

Results: ``bench/results/pointnet2_ssg_zcu104.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL, NUM_CLASSES, POINTS = "pointnet2_ssg", 40, 1024


def make_qtree(path: Path, clouds: int) -> None:
    import torch
    from torch.utils.data import TensorDataset

    from model.checkpoint import save_checkpoint
    from model.config import TreeConfig
    from model.convert import convert
    from model.registry import create_model
    from quant.presets import get_preset
    from quant.qat import calibrate
    from quant.qtree import quantize_tree

    torch.manual_seed(0)
    args = {"num_classes": NUM_CLASSES}
    dense = create_model(MODEL, **args).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(clouds, POINTS, 3, generator=g)
    x = x / x.norm(dim=-1).amax(dim=1, keepdim=True)[..., None]   # unit sphere, as the loaders normalise
    data = TensorDataset(x, torch.arange(clouds) % NUM_CLASSES)
    tree, _ = convert(dense, MODEL, args, data, TreeConfig(max_samples=clouds))
    qtree = quantize_tree(tree, get_preset("w4a4"))
    calibrate(qtree, data, batches=4, batch_size=16)
    save_checkpoint(path, kind="qtree", model_name=MODEL, model_args=args, state_dict=qtree.state_dict(),
                    spec=qtree.spec, input_shape=[POINTS, 3])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "pointnet2_zcu104")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--boards", default="zcu104,pynq-z2", help="boards to build for (default zcu104,pynq-z2)")
    p.add_argument("--target-cycles", type=int, default=200_000,
                   help="SetFolding target, cycles per frame (default 200000: 1,000 clouds/s at 200 MHz)")
    p.add_argument("--clouds", type=int, default=64, help="random clouds for the conversion (default 64)")
    p.add_argument("--no-hdl", action="store_true", help="placement only")
    args = p.parse_args(argv)

    from hls.build import BuildError, build
    from quant.export import run_export

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()
    if not (out / "qtree.pt").is_file():
        make_qtree(out / "qtree.pt", args.clouds)
        timings["qtree_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not (out / "export" / "tree.json").is_file():
        run_export(out / "qtree.pt", out / "export")
        timings["export_s"] = time.perf_counter() - t0
    manifest = json.loads((out / "export" / "tree.json").read_text())
    report = {"model": MODEL, "num_classes": NUM_CLASSES, "points": POINTS, "target_cycles": args.target_cycles,
              "fabric_input": manifest["input"], "host": manifest.get("host"), "boards": {}, "timings": timings}
    for board in args.boards.split(","):
        t0 = time.perf_counter()
        bdir = out / "build" / board
        try:
            placed = {"fits": True, **build(out / "export", board, bdir, target_cycles=args.target_cycles,
                                            hdl=not args.no_hdl)}
        except BuildError as err:
            if not (bdir / "placement.json").is_file():
                raise
            placed = {"fits": False, "refusal": str(err), **json.loads((bdir / "placement.json").read_text())}
        timings[f"build_{board}_s"] = time.perf_counter() - t0
        report["boards"][board] = {k: placed.get(k) for k in ("fits", "refusal", "total", "budget", "ddr", "hdl")}
        report["boards"][board]["placement_md"] = (bdir / "placement.md").read_text()
        print(f"[pointnet2] {board}: fits {placed['fits']} ({timings[f'build_{board}_s']:.0f} s)", flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    res = args.results / "pointnet2_ssg_zcu104.json"
    res.write_text(json.dumps(report, indent=1))
    lines = [f"# Full `{MODEL}` tree (ModelNet40 size: {POINTS} points, {NUM_CLASSES} classes, W4A4, untrained) "
             "on the fabric", "",
             f"SA1 + SA2 on the processor; the fabric's input map {report['fabric_input']['shape']} "
             f"{report['fabric_input']['datatype']}; SetFolding target {args.target_cycles:,} cycles per frame. "
             "Written by `bench/pointnet2_zcu104.py`.", ""]
    for board, b in report["boards"].items():
        lines += [b["placement_md"].replace("# Placement", "## Placement"), ""]
        if not b["fits"]:
            lines += [f"Refused: {b['refusal']}", ""]
    res.with_suffix(".md").write_text("\n".join(lines))
    print(res.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
