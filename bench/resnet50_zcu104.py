"""The ResNet-50 tree (CIFAR stem, 100 classes, W4A4) through ``sigmabranch build --board zcu104``
to the vendor step (issue #13): does its on-chip part fit the ZU7EV, and what makes it fit?

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/resnet50_zcu104.py            # all stages
    .venv/bin/python bench/resnet50_zcu104.py --out runs/r50 --variants default,fit  # another folder
    .venv/bin/python bench/resnet50_zcu104.py --hdl                                  # + the HDL step

Stages, each skipped when its output exists under ``--out`` (default ``runs/resnet50_zcu104/``;
delete a stage's output to redo it):

1. ``qtree.pt``: the data-free tree of ``default_spec("resnet50_cifar", ...)`` (depth 2, 4
   leaves, the paper's widths: level 0 = layer3 narrowed to 724 channels / 181 inner planes, level
   1 = layer4 narrowed to 1024 / 256; first-k channel indices, random routers, as
   ``bench/tree_latency.py`` builds it), quantised W4A4 (``quantize_tree``) and calibrated on
   random 32x32 batches in train mode (BN statistics, activation scales; as
   ``tests/fixtures_quant.py`` does); saved as a ``qtree`` checkpoint (what ``sigmabranch export``
   reads). Untrained weights: the build only needs the shapes and integer ranges.
2. ``export/``: ``run_export`` (QONNX per node + FINN+ streamlining, ``tree.json``); the time of
   each node is read from its files' modification times.
3. ``build/<variant>/``: ``hls.build.build(export, "zcu104", ..., hdl=False)`` per variant
   (:data:`VARIANTS`: the board's defaults, then the options that make it fit). A placement that
   does not fit is a result: ``placement.json``/``placement.md`` are written before the
   ``BuildError``, whose message (the overflow) is kept in ``refusal.txt``.
4. ``--hdl``: ``hls.vivado.vivado_step(build, run=False)`` for the first variant that fits
   (FINN+'s PrepareIP per layer, the stitched HDL, the block-design Tcl), timed.

Results: ``bench/results/resnet50_zcu104.json`` and ``.md`` (``--results`` to change), with the
timings of every stage (kept in ``<out>/timings.json`` across resumed runs).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "resnet50_cifar"
NUM_CLASSES = 100
SHAPE = (3, 32, 32)
BOARD = "zcu104"

# The quantised trees: "r8" is the w4a4 preset as it is (8-bit residual additions); "r4" the same
# with 4-bit residual additions (15 thresholds per channel instead of 255 for the add quantizers).
RESIDUAL_BITS = {"r8": 8, "r4": 4}
# Folding targets (cycles per frame). 2**18 (~760 frames/s at 200 MHz) would do for the backbone's
# DSPs, but FINN+'s SetFolding accepts any SIMD that meets the target before it checks the weight
# width, and PE/SIMD must divide the channel counts: level 0's 181 inner planes (724 = 4 x 181; 181
# is prime) leave SIMD 1 or 181, so its 1x1 convolutions 181 -> 724 take SIMD 181 = 181 DSPs each
# (six of them) where one would do below the target. 2**22 (~48 frames/s) brings the total under
# the ZU7EV's DSPs; with weight_buffer="none" the DDR port bounds the rate anyway (~29 frames/s:
# the bytes read per inference at 4.8 GB/s).
FOLD_262K, FOLD_2M, FOLD = 262_144, 2_097_152, 4_194_304
# name -> (tree, keyword arguments of hls.build.build besides export/board/out): the board's
# defaults, folding alone, then each memory change alone and together; `fit` is the smallest
# combination that fits (see bench/README.md).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("r8", {}),
    "folded_262k": ("r8", {"target_cycles": FOLD_262K}),
    "folded": ("r8", {"target_cycles": FOLD}),
    "r4_uram_2m": ("r4", {"target_cycles": FOLD_2M, "weight_ram": "ultra"}),
    "r8_nobuffer_uram": ("r8", {"target_cycles": FOLD, "weight_ram": "ultra", "weight_buffer": "none"}),
    "r4_nobuffer_uram_2m": ("r4", {"target_cycles": FOLD_2M, "weight_ram": "ultra", "weight_buffer": "none"}),
    "fit": ("r4", {"target_cycles": FOLD, "weight_buffer": "none"}),
}


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


class Timings:
    """Seconds per stage, in ``<out>/timings.json`` (a resumed run keeps the earlier stages')."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def record(self, key: str, seconds: float, **extra: Any) -> None:
        self.data[key] = {"seconds": round(seconds, 1), **extra,
                          "finished": datetime.datetime.now().isoformat(timespec="seconds")}
        self.path.write_text(json.dumps(self.data, indent=1))


# ------------------------------------------------------------------------------ 1. the quantised tree
def make_qtree(residual_bits: int, batches: int, batch_size: int, seed: int):
    """The data-free tree, quantised W4A4 with ``residual_bits``-bit residual additions, calibrated."""
    import torch

    from model.registry import create_model
    from model.tree_layout import build_tree, default_spec
    from quant.presets import QuantPreset, get_preset
    from quant.qtree import quantize_tree

    torch.manual_seed(seed)
    args = {"num_classes": NUM_CLASSES}
    dense = create_model(MODEL, **args).eval()
    tree = build_tree(dense, default_spec(MODEL, args, dense)).eval()
    preset = get_preset("w4a4")
    if residual_bits != preset.residual_bits:
        preset = QuantPreset(f"w4a4-r{residual_bits}", 4, 4, residual_bits=residual_bits)
    qtree = quantize_tree(tree, preset)
    log(f"tree: widths {tree.spec['widths']} (dense {tree.spec['dense_widths']}), "
        f"{sum(p.numel() for p in tree.parameters()) / 1e6:.2f}M parameters, preset {preset}; calibrating on "
        f"{batches} random batches of {batch_size}")
    g = torch.Generator().manual_seed(seed)
    qtree.train()
    with torch.no_grad():  # BN statistics and activation scales from random images (tests/fixtures_quant.py)
        for i in range(batches):
            qtree(torch.randn(batch_size, *SHAPE, generator=g), mode="leaves")
            log(f"tree: calibration batch {i + 1}/{batches}")
    return qtree.eval(), args


def tree_stage(out: Path, timings: Timings, batches: int, batch_size: int, seed: int) -> Path:
    """The w4a4 tree (8-bit residual additions) as a ``qtree`` checkpoint (``sigmabranch export`` reads it)."""
    ckpt = out / "qtree.pt"
    if ckpt.is_file():
        log(f"tree: {ckpt} exists, skipped")
        return ckpt
    from model.checkpoint import save_checkpoint

    t0 = time.perf_counter()
    qtree, args = make_qtree(8, batches, batch_size, seed)
    save_checkpoint(ckpt, kind="qtree", model_name=MODEL, model_args=args, state_dict=qtree.state_dict(),
                    spec=qtree.spec, input_shape=list(SHAPE), metrics={}, epoch=0)
    timings.record("tree", time.perf_counter() - t0, batches=batches, batch_size=batch_size)
    log(f"tree: {ckpt} written ({timings.data['tree']['seconds']} s)")
    return ckpt


# ------------------------------------------------------------------------------ 2. the export
def _per_node(export: Path, t0: float) -> dict[str, float]:
    """Seconds per node: from the previous node's streamlined file (or the start) to this node's."""
    manifest = json.loads((export / "tree.json").read_text())
    per_node, prev = {}, t0
    for name, node in manifest["nodes"].items():
        done = (export / node["finn_onnx"]).stat().st_mtime
        per_node[name] = round(done - prev, 1)
        prev = done
    return per_node


def export_stage(ckpt: Path, out: Path, timings: Timings) -> Path:
    """``sigmabranch export`` (``run_export``) of the checkpoint."""
    export = out / "export"
    if (export / "tree.json").is_file():
        log(f"export: {export / 'tree.json'} exists, skipped")
        return export
    from quant.export import run_export

    log("export: QONNX + FINN+ streamlining per node (minutes per node on this CPU)")
    t0 = time.time()
    run_export(ckpt, export, progress=True)
    seconds = time.time() - t0
    per_node = _per_node(export, t0)
    timings.record("export", seconds, per_node=per_node)
    log(f"export: done in {seconds:.0f} s; per node: {per_node}")
    return export


def export_other_stage(out: Path, tree: str, timings: Timings, batches: int, batch_size: int, seed: int) -> Path:
    """A tree other than the preset's (``RESIDUAL_BITS``): quantised, calibrated and exported with
    ``export_tree`` directly (its preset has no name ``get_preset`` knows, so no checkpoint)."""
    from quant.export import export_tree

    export = out / f"export_{tree}"
    if (export / "tree.json").is_file():
        log(f"export {tree}: {export / 'tree.json'} exists, skipped")
        return export
    t0 = time.time()
    qtree, _ = make_qtree(RESIDUAL_BITS[tree], batches, batch_size, seed)
    log(f"export {tree}: QONNX + FINN+ streamlining per node")
    t1 = time.time()
    export_tree(qtree, SHAPE, export, progress=True)
    seconds = time.time() - t0
    per_node = _per_node(export, t1)
    timings.record(f"export_{tree}", seconds, quantise_calibrate=round(t1 - t0, 1), per_node=per_node)
    log(f"export {tree}: done in {seconds:.0f} s; per node: {per_node}")
    return export


# ------------------------------------------------------------------------------ 3. the build
PARTS = {"backbone": (["backbone"], 1), "root router": (["router_0_0"], 1),
         "level 0 datapath": (["branch_0_0", "router_1_0"], 2), "level 1 datapath": (["branch_1_0", "head_0"], 4)}
BRAM18_BITS, URAM_BITS = 18 * 1024, 72 * 4096


def memory_bits(folder: Path) -> dict[str, Any]:
    """What the on-chip memories must hold, in bits, per part (from the built ``nodes/*.hw.onnx``):
    MVAU weights (one set), the fetch buffers FINN+'s ``local_weight_buffer`` instantiates for a
    streamed MVAU (two banks of 2**ceil(log2(NF*SF)) words of PE*SIMD*W bits), and the thresholds
    (channels x steps x threshold bits, x the sets a shared datapath keeps: one per branch),
    split into the add quantizers' (more than 15 steps) and the rest."""
    import math

    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    parts = {}
    for part, (names, sets) in PARTS.items():
        bits = {"weights": 0, "fetch_buffers_rtl": 0, "thresholds_wide": 0, "thresholds_15": 0}
        for name in names:
            model = ModelWrapper(str(folder / "nodes" / f"{name}.hw.onnx"))
            for node in model.graph.node:
                inst = getCustomOp(node)
                if node.op_type.startswith("MVAU"):
                    pe, simd, w = inst.get_nodeattr("PE"), inst.get_nodeattr("SIMD"), inst.get_input_datatype(1).bitwidth()
                    mh, mw = inst.get_nodeattr("MH"), inst.get_nodeattr("MW")
                    bits["weights"] += mh * mw * w
                    if inst.get_nodeattr("mem_mode") == "external_mem":
                        tiles = (mh // pe) * (mw // simd)
                        bits["fetch_buffers_rtl"] += 2 * 2 ** math.ceil(math.log2(max(tiles, 2))) * pe * simd * w
                elif node.op_type.startswith("Thresholding"):
                    steps = inst.get_nodeattr("numSteps")
                    tbits = DataType[inst.get_nodeattr("weightDataType")].bitwidth()
                    key = "thresholds_wide" if steps > 15 else "thresholds_15"
                    bits[key] += inst.get_nodeattr("NumChannels") * steps * tbits * sets
        parts[part] = bits
    total = {k: sum(p[k] for p in parts.values()) for k in next(iter(parts.values()))}
    return {"parts": parts, "total": total}


def build_stage(export: Path, out: Path, variant: str, tree: str, options: dict[str, Any],
                timings: Timings) -> dict[str, Any]:
    """The placement report of one variant, with ``fits`` and (if it does not) the refusal."""
    from hls.build import BuildError, build

    folder = out / "build" / variant
    done = folder / "result.json"
    if done.is_file():
        log(f"build {variant}: {done} exists, skipped")
        result = json.loads(done.read_text())
        if "memory_bits" not in result:  # a result written before the accounting existed
            result = {"memory_bits": memory_bits(folder), "tree": tree, "residual_bits": RESIDUAL_BITS[tree], **result}
            done.write_text(json.dumps(result, indent=1, default=str))
        return result
    if folder.exists():
        shutil.rmtree(folder)  # a half-made one from a killed run
    log(f"build {variant}: hls.build.build(export, {BOARD!r}, hdl=False, {options})")
    t0 = time.perf_counter()
    try:
        report, refusal = build(export, BOARD, folder, hdl=False, **options), None
    except BuildError as err:
        if not (folder / "placement.json").is_file():
            raise
        report, refusal = json.loads((folder / "placement.json").read_text()), str(err)
        (folder / "refusal.txt").write_text(refusal + "\n")
    seconds = time.perf_counter() - t0
    timings.record(f"build_{variant}", seconds)
    result = {"memory_bits": memory_bits(folder), "variant": variant, "tree": tree, "residual_bits": RESIDUAL_BITS[tree], "export": str(export),
              "options": options, "fits": refusal is None, "refusal": refusal,
              "seconds": round(seconds, 1), "folder": str(folder), **report}
    done.write_text(json.dumps(result, indent=1, default=str))
    log(f"build {variant}: {'fits' if refusal is None else 'does NOT fit'} ({seconds:.0f} s)"
        + (f": {refusal}" if refusal else ""))
    print((folder / "placement.md").read_text(), flush=True)
    return result


# ------------------------------------------------------------------------------ 4. the HDL step
def hdl_stage(result: dict[str, Any], timings: Timings) -> dict[str, Any]:
    from hls.vivado import vivado_step

    folder = Path(result["folder"])
    done = folder / "hdl.json"
    if done.is_file():
        log(f"hdl: {done} exists, skipped")
        return json.loads(done.read_text())
    log(f"hdl: vivado_step({folder}, run=False)")
    t0 = time.perf_counter()
    try:
        written = vivado_step(folder, run=False)
        hdl = {"ok": True, "top": written["hdl"]["top"], "sources": len(written["hdl"]["sources"]),
               "written": {k: str(v) for k, v in written.items() if k != "hdl"}}
    except Exception as err:  # a result too: the step's limits for large trees
        import traceback
        hdl = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    hdl["seconds"] = round(time.perf_counter() - t0, 1)
    hdl["variant"] = result["variant"]
    timings.record(f"hdl_{result['variant']}", hdl["seconds"], ok=hdl["ok"])
    done.write_text(json.dumps(hdl, indent=1))
    log(f"hdl: {'done' if hdl['ok'] else 'FAILED: ' + hdl['error']} ({hdl['seconds']} s)")
    return hdl


# ------------------------------------------------------------------------------ results
RES = ("BRAM_18K", "URAM", "LUT", "DSP")


def rate(r: dict[str, Any]) -> dict[str, float]:
    """Frames per second the placement allows: the slowest layer at the board's clock (compute), and
    the weight bytes read per inference at the board's PS-PL port bandwidth (DDR)."""
    board = r["board"]
    slowest = max(row["cycles"] for e in r["onchip"] for row in e["layers"])
    streamed = r["ddr"].get("tree_streamed_bytes", r["ddr"]["tree_weight_bytes"])
    return {"slowest_layer_cycles": slowest, "compute_fps": 1e9 / board["clk_ns"] / slowest,
            "ddr_weight_bytes": streamed, "ddr_fps": board["ddr_bytes_per_s"] / streamed}


def summary(results: list[dict[str, Any]], timings: Timings, export: Path, hdl: dict | None) -> dict[str, Any]:
    manifest = json.loads((export / "tree.json").read_text())
    variants = []
    for r in results:
        variants.append({
            "variant": r["variant"], "tree": r.get("tree", "r8"), "residual_bits": r.get("residual_bits", 8),
            "options": r["options"], "fits": r["fits"], "refusal": r["refusal"],
            "target_cycles": r["target_cycles"], "budget": r["budget"], "total": r["total"],
            "problems": r["problems"], "ddr": r["ddr"],
            "parts": [{"part": e["part"], "nodes": e["nodes"], **e["resources"],
                       "onchip_weight_bytes": e["onchip_weight_bytes"],
                       "ddr_bytes_per_inference": e["ddr_bytes_per_inference"],
                       "cycles_max_layer": max((row["cycles"] for row in e["layers"]), default=0)}
                      for e in r["onchip"]],
            "residual_fifos": [{"part": e["part"], **f} for e in r["onchip"] for f in e.get("residual_fifos", [])],
            "memory_bits": r.get("memory_bits"), "rate": rate(r),
            "weight_ram": r.get("weight_ram"), "weight_buffer": r.get("weight_buffer", "branch")})
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
            "model": MODEL, "num_classes": NUM_CLASSES, "input": list(SHAPE), "board": BOARD,
            "quant": manifest["quant"], "spec": manifest["spec"],
            "nodes": {n: {"input_shape": v["input_shape"], "output_shape": v["output_shape"]}
                      for n, v in manifest["nodes"].items()},
            "timings": timings.data, "variants": variants, "hdl": hdl}


def _opts(v: dict[str, Any]) -> str:
    o = v["options"]
    bits = [f"residual {v['residual_bits']}-bit", f"target {v['target_cycles']}"]
    bits += [f"weight_ram={o['weight_ram']}"] if o.get("weight_ram") else []
    bits += [f"weight_buffer={o['weight_buffer']}"] if o.get("weight_buffer") else []
    return ", ".join(bits)


def markdown(res: dict[str, Any]) -> str:
    spec = res["spec"]
    lines = [f"# ResNet-50 tree (CIFAR stem, {res['num_classes']} classes, W{res['quant']['weight_bits']}"
             f"A{res['quant']['act_bits']}) on ZCU104 (XCZU7EV)", "",
             f"Written by `bench/resnet50_zcu104.py` on {res['date']}. Tree: depth 2, 4 leaves, widths "
             f"{spec.get('widths')} (dense {spec.get('dense_widths')}), untrained (data-free spec, random "
             "routers, BN/activation scales calibrated on random images). Numbers are FINN+'s estimates as "
             "`hls.build.build` reports them (`placement.json`).", "",
             "## Variants side by side", "",
             "| variant | build | fits | BRAM18 | URAM | LUT | DSP | DDR weight bytes / inference | frames/s: compute / DDR |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for v in res["variants"]:
        t, b = v["total"], v["budget"]
        cell = lambda k: f"**{t[k]}**" if t[k] > b[k] else str(t[k])
        lines.append(f"| `{v['variant']}` | {_opts(v)} | {'yes' if v['fits'] else 'no'} | {cell('BRAM_18K')} | "
                     f"{cell('URAM')} | {cell('LUT')} | {cell('DSP')} | "
                     f"{v['rate']['ddr_weight_bytes']} | {v['rate']['compute_fps']:.0f} / {v['rate']['ddr_fps']:.0f} |")
    b = res["variants"][0]["budget"]
    lines += [f"| ZU7EV budget | | | {b['BRAM_18K']} | {b['URAM']} | {b['LUT']} | {b['DSP']} | | |", "",
              "Bold: over the budget. Frames/s: the slowest layer's cycles at 200 MHz, and the weight bytes "
              "read per inference at the 4.8 GB/s PS-PL port (`hls/boards.py`).", ""]
    fits = [v["variant"] for v in res["variants"] if v["fits"]]
    lines += ["Fits: " + (", ".join(f"`{n}`" for n in fits) if fits else "none of the variants") + ".", ""]
    for v in res["variants"]:
        b, t = v["budget"], v["total"]
        lines += [f"## `{v['variant']}`: {'fits' if v['fits'] else 'does NOT fit'} ({_opts(v)})", "",
                  f"`hls.build.build(export, 'zcu104', out, hdl=False, **{json.dumps(v['options'])})` on the "
                  f"{v['residual_bits']}-bit-residual export.", "",
                  "| on-chip part | BRAM18 | URAM | LUT | DSP | on-chip weight bytes | DDR weight bytes / inference | slowest layer (cycles) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for p in v["parts"]:
            lines.append(f"| {p['part']} | {p['BRAM_18K']} | {p['URAM']} | {p['LUT']} | {p['DSP']} | "
                         f"{p['onchip_weight_bytes']} | {p['ddr_bytes_per_inference']} | {p['cycles_max_layer']} |")
        lines.append(f"| **total** / ZU7EV | **{t['BRAM_18K']}** / {b['BRAM_18K']} | **{t['URAM']}** / {b['URAM']} | "
                     f"**{t['LUT']}** / {b['LUT']} | **{t['DSP']}** / {b['DSP']} | | | |")
        over = [f"{k} over by {t[k] - b[k]} ({t[k] / b[k]:.2f}x the budget)" for k in RES if t[k] > b[k]]
        lines += ["", "Overflow: " + ("; ".join(over) if over else "none") + "."]
        d = v["ddr"]
        lines += ["", f"DDR weight bytes per inference: the tree's path {d['tree_weight_bytes']} vs dense "
                  f"{d['dense_weight_bytes']} (ratio {d['tree_vs_dense']:.3f}); read as placed "
                  f"{d.get('tree_streamed_bytes', d['tree_weight_bytes'])}; input {d['input_bytes']} B, "
                  f"output {d['output_bytes']} B."]
        mb = v.get("memory_bits")
        if mb:
            lines += ["", "What the memories hold (Mbit; thresholds x the sets a shared datapath keeps; fetch buffers as "
                      "FINN+'s `local_weight_buffer` instantiates them: 2 banks, depth rounded to a power of two):", "",
                      "| part | weights (one set) | fetch buffers (RTL) | add-quantizer thresholds (255 or more steps) | other thresholds |",
                      "|---|---:|---:|---:|---:|"]
            for part, x in list(mb["parts"].items()) + [("**total**", mb["total"])]:
                lines.append(f"| {part} | {x['weights'] / 1e6:.2f} | {x['fetch_buffers_rtl'] / 1e6:.2f} | "
                             f"{x['thresholds_wide'] / 1e6:.2f} | {x['thresholds_15'] / 1e6:.2f} |")
            lines += ["", f"On-chip capacity: {b['BRAM_18K']} BRAM18 = {b['BRAM_18K'] * BRAM18_BITS / 1e6:.1f} Mbit, "
                      f"{b['URAM']} URAM = {b['URAM'] * URAM_BITS / 1e6:.1f} Mbit."]
        fifos = v["residual_fifos"]
        if fifos:
            lines += ["", f"Residual-path FIFOs: {len(fifos)}, total BRAM18 {sum(f['BRAM_18K'] for f in fifos)}, "
                      f"URAM {sum(f['URAM'] for f in fifos)}, LUT {sum(f['LUT'] for f in fifos)}; deepest "
                      + ", ".join(f"{f['node']} {f['add']} path {f['path']}: {f['depth']} x {f['width']} bits"
                                  for f in sorted(fifos, key=lambda f: -f['depth'] * f['width'])[:3])
                      + " (full list: the variant's placement.md)."]
        lines.append("")
    lines += ["## Stage timings", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v['seconds']} |" for k, v in res["timings"].items()]
    for key in ("export", "export_r4"):
        per_node = res["timings"].get(key, {}).get("per_node")
        if per_node:
            lines += ["", f"{key} per node (s): " + ", ".join(f"{k} {v}" for k, v in per_node.items()) + "."]
    if res.get("hdl"):
        h = res["hdl"]
        lines += ["", f"HDL step (`vivado_step(run=False)`) on `{h.get('variant')}`: "
                  f"{'completed' if h['ok'] else 'FAILED'} in {h['seconds']} s"
                  + (f" ({h['sources']} sources, top {h['top']})" if h["ok"] else f": `{h['error']}`") + "."]
        built = next((v for v in res["variants"] if v["variant"] == h.get("variant")), None)
        if built and (built["weight_buffer"] == "none" or built["weight_ram"] == "ultra"):
            lines += ["", "The HDL is generated from the same `nodes/*.hw.onnx`, which keep FINN+'s `external_mem` "
                      "fetchers: it is the branch-buffered design (FINN+'s `fetch_weights` with its local weight "
                      "buffers), not the placement's `weight_buffer='none'` (which `build(hdl=True)` refuses). It "
                      "shows the HDL flow copes with a tree this size, not that the fitting design exists."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "resnet50_zcu104", help="work folder (resumable)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"build variants, comma-separated ({', '.join(VARIANTS)})")
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--calib-batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hdl", nargs="?", const="fit", metavar="VARIANT",
                   help="then the HDL step (vivado_step(run=False)) on this variant's build (default: fit)")
    p.add_argument("--stop-after", choices=("tree", "export"), help="stop after this stage")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "resnet50_zcu104",
                   help="results path without suffix (.json and .md are written)")
    args = p.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings = Timings(out / "timings.json")
    log(f"work folder {out}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    import torch
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    ckpt = tree_stage(out, timings, args.calib_batches, args.calib_batch_size, args.seed)
    if args.stop_after == "tree":
        return 0
    export = export_stage(ckpt, out, timings)
    if args.stop_after == "export":
        return 0
    names = args.variants.split(",")
    for name in names + ([args.hdl] if args.hdl else []):
        if name not in VARIANTS:
            p.error(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    exports = {"r8": export}
    results = []
    for name in names:
        tree, options = VARIANTS[name]
        if tree not in exports:
            exports[tree] = export_other_stage(out, tree, timings, args.calib_batches, args.calib_batch_size, args.seed)
        results.append(build_stage(exports[tree], out, name, tree, options, timings))
    hdl = None
    if args.hdl:
        built = next((r for r in results if r["variant"] == args.hdl), None)
        if built is None:
            p.error(f"--hdl {args.hdl}: build that variant too (--variants)")
        hdl = hdl_stage(built, timings)
    res = summary(results, timings, export, hdl)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps(res, indent=1))
    args.results.with_suffix(".md").write_text(markdown(res))
    log(f"results: {args.results.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
