"""``sigmabranch build``: the exported tree -> FINN+ hardware layers per node, memory placement,
the DDR weight image, the placement report and the driver metadata; then (``hdl``) the HDL and
the Vivado project.

This module is the orchestration (:func:`build`); each concern has its module:

1. :mod:`hls.finn_steps`: per node, ``<node>.finn.onnx`` (streamlined by ``sigmabranch export``)
   without its float tail and its boundary transposes (NHWC integers between nodes), FINN+'s HW
   layers (``InferThresholdingLayer``, ``InferQuantizedMatrixVectorActivation``, ``InferPool``,
   ``InferConvInpGen``; RTL variants, ``SpecializeLayers(part)``, widths minimised), folding
   (``SetFolding`` from a target of cycles per frame, or a FINN folding config via
   ``ApplyConfig``), one shared datapath per level, the weight memory mode.
2. :mod:`hls.placement`: what is on chip, what is streamed, FINN+'s estimates against the
   board's budget (``placement.json`` / ``placement.md``).
3. :mod:`hls.weight_image`: ``weights.bin`` + ``weights.json``, one 4 KiB-aligned region per
   branch; the tree's and the dense model's streamed bytes.
4. :mod:`hls.driver_meta`: ``driver.json`` and the export's files for the host.
5. :mod:`hls.vivado` (with ``hls/stitch.py``, ``hls/axi_top.py``): FINN+'s ``InsertDWC`` +
   ``PrepareIP`` per layer, the stitched tree behind AXI, the block-design Tcl. Synthesis and
   the bitstream need Vivado (:func:`hls.vivado.vivado_step`).

The board's facts are :class:`hls.boards.Board` (``get_board``: an unknown board is a ValueError).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from host.int_reference import read_manifest

from .boards import ROUTER_FOLD, get_board
from .driver_meta import write_bundle
from .errors import BuildError
from .finn_steps import (PortRateFill, SetLayerAttrs, SetThresholdMemory, SetWeightMemory, datapath_attrs, fold,
                         to_hw_layers)
from .placement import (ONCHIP_NODES, WEIGHT_BUFFERS, check_budget, level_datapaths, onchip_parts, placement_table,
                        resource_sum)
from .vivado import vivado_step
from .weight_image import dense_streamed_bytes, dense_weight_bytes, tree_weight_bytes, write_weight_image

# The public names others import from here (baselines/compare.py, sigmabranch/errors.py, the CLI).
__all__ = ["BuildError", "build", "dense_weight_bytes", "tree_weight_bytes", "vivado_step"]


def _fold_target(name: str, target_cycles: int, router_fold: int) -> int:
    return max(1, target_cycles // router_fold) if name.startswith(("router_", "head_")) else target_cycles


def _fold_levels(unfolded: dict[str, Any], paths, target, folding_config, fill_port_bytes: float | None) -> dict[str, Any]:
    """Each level's datapath: the first branch's nodes folded (``target(name)`` cycles; SIMD widened
    to fill at ``fill_port_bytes`` a cycle unless None), every branch given that folding and the
    level's widest types, weights from DDR."""
    folded = {}
    for path in paths:
        for position in range(len(path.branches[0])):
            names = [branch[position] for branch in path.branches]
            first = fold(unfolded[names[0]], target(names[0]), folding_config)
            if fill_port_bytes:
                first = first.transform(PortRateFill(fill_port_bytes))
            models = [first] + [unfolded[n] for n in names[1:]]
            shared = datapath_attrs(models, names)
            for n, model in zip(names, models):
                folded[n] = model.transform(SetLayerAttrs(shared)).transform(SetWeightMemory(external=True))
    return folded


def build(export_dir: str | Path, board_name: str, out_dir: str | Path, target_cycles: int | None = None,
          folding_config: str | Path | None = None, hdl: bool = True, weight_ram: str | None = None,
          weight_buffer: str = "branch", router_fold: int = ROUTER_FOLD,
          port_fill: bool = True, threshold_bram_depth: int = 0) -> dict[str, Any]:
    """The whole build up to the vendor step; returns the placement report. ``target_cycles``
    (cycles per frame for ``SetFolding``) defaults to the board's. Routers and leaf heads are
    folded to ``target_cycles // router_fold``: their time is serial with the levels (a level
    waits for its decision, the output for the head), so they get more parallelism than the
    pipelined layers around them (``router_fold=1``: the same target as the levels).
    ``port_fill``: the fetched layers' SIMD widened so each weight buffer fills at the DDR port's
    rate (:class:`hls.finn_steps.PortRateFill`); False keeps the folding target's SIMD. Where the
    widened layers do not fit the board, the folding's SIMD is kept and the report says why.

    Memory options for trees whose weights outgrow the board (bench/resnet50_zcu104.py):

    - ``weight_ram``: FINN+'s ``ram_style`` for the on-chip MVAU weights (backbone, root router);
      None keeps ``auto`` (BRAM/LUTRAM), ``"ultra"`` puts them in URAM (a board with URAM only).
      UltraScale+ URAM starts empty, so FINN+ makes those weights runtime-writeable (AXI-Lite);
      the stitched design has no loader for them yet, so ``hdl`` is refused.
    - ``weight_buffer``: ``"branch"`` (FINN+'s fetch buffers hold the level's branch for the whole
      inference) or ``"none"`` (no level weights on chip: every layer's set is re-read from DDR
      for each pixel; see :mod:`hls.placement`). ``"none"`` is a placement only: ``hdl`` is refused.
    - ``threshold_bram_depth``: threshold memories of this depth or more in BRAM, the rest in
      LUTRAM (FINN+'s ``depth_trigger_bram``, :class:`hls.finn_steps.SetThresholdMemory`); 0 keeps
      FINN+'s default (LUTRAM). For trees whose levels' threshold sets outgrow the LUTs.
    """
    from qonnx.core.modelwrapper import ModelWrapper
    from tqdm.auto import tqdm

    board = get_board(board_name)
    target_cycles = target_cycles or board.target_cycles
    if router_fold < 1:
        raise ValueError(f"router_fold must be >= 1, not {router_fold}")
    if weight_buffer not in WEIGHT_BUFFERS:
        raise ValueError(f"weight_buffer must be one of {', '.join(WEIGHT_BUFFERS)}, not {weight_buffer!r}")
    if weight_ram not in (None, "auto", "block", "distributed", "ultra"):
        raise ValueError(f"weight_ram must be auto, block, distributed or ultra, not {weight_ram!r}")
    if threshold_bram_depth < 0:
        raise ValueError(f"threshold_bram_depth must be >= 0 (0: FINN+'s default), not {threshold_bram_depth}")
    if weight_ram == "ultra" and not board.uram:
        raise BuildError(f"{board.name} ({board.part}) has no URAM: weight_ram='ultra' cannot be placed")
    export_dir, out = Path(export_dir), Path(out_dir)
    manifest = read_manifest(export_dir)
    dense_bytes = dense_streamed_bytes(manifest)  # before the slow part: an old export is refused at once
    out.mkdir(parents=True, exist_ok=True)
    paths = level_datapaths(manifest)
    hw = {}
    # A backbone with an empty program (PointNet++: the processor computes it, the fabric's input
    # is its output map) has no hardware: the input stream feeds the root router and level 0.
    fabric = [n for n in manifest["nodes"] if n != "backbone" or manifest["nodes"][n]["program"]]
    for name in tqdm(fabric, desc=f"FINN+ HW layers ({board.name})", unit="node"):
        hw[name] = to_hw_layers(ModelWrapper(str(export_dir / manifest["nodes"][name]["finn_onnx"])), board.part, name)
    for name in (n for n in ONCHIP_NODES if n in hw):
        hw[name] = fold(hw[name], _fold_target(name, target_cycles, router_fold), folding_config).transform(SetWeightMemory(external=False,
                                                                                             ram_style=weight_ram))
    unfolded = {n: hw[n] for path in paths for branch in path.branches for n in branch}
    fill_note = None
    for fill in ([True, False] if port_fill else [False]):
        hw.update(_fold_levels(unfolded, paths, lambda n: _fold_target(n, target_cycles, router_fold), folding_config,
                               board.weight_port()["port_bytes"] if fill else None))
        if threshold_bram_depth:
            hw = {n: m.transform(SetThresholdMemory(threshold_bram_depth)) for n, m in hw.items()}
        scratch = out / ".scratch"
        scratch.mkdir(exist_ok=True)
        weights = write_weight_image(hw, paths, out, scratch)
        shutil.rmtree(scratch)
        onchip = onchip_parts(hw, paths, weights, board.part, weight_buffer)
        # the wider SIMD costs DSPs/LUTs: where they do not fit, the folding's SIMD
        problems = check_budget(onchip, board)
        if not (fill and problems):
            break
        fill_note = "dropped: the widened fetched layers do not fit (" + "; ".join(problems) + ")"
    (out / "nodes").mkdir(exist_ok=True)
    for name, model in hw.items():
        model.save(str(out / "nodes" / f"{name}.hw.onnx"))
    tree_bytes = sum(level["regions"][0]["bytes"] for level in weights["levels"])
    head = manifest["nodes"]["head_0"]
    report = {"board": board.as_dict(), "target_cycles": target_cycles,
              "router_target_cycles": _fold_target("router_", target_cycles, router_fold), "port_fill": fill_note or port_fill, "folding_config": folding_config and str(folding_config),
              "weight_ram": weight_ram, "weight_buffer": weight_buffer, "threshold_bram_depth": threshold_bram_depth,
              "onchip": onchip, "total": resource_sum([e["resources"] for e in onchip]), "budget": board.budget(),
              "ddr": {"tree_weight_bytes": tree_bytes, "dense_weight_bytes": dense_bytes,
                      "tree_vs_dense": tree_bytes / dense_bytes,
                      "tree_streamed_bytes": sum(e["ddr_bytes_per_inference"] for e in onchip),  # as placed
                      "input_bytes": int(np.prod(manifest["nodes"]["backbone"]["input_shape"])),  # INT8 image
                      "output_bytes": 4 * int(np.prod(head["output_shape"]))},  # INT32 accumulators
              "weights": {k: weights[k] for k in ("file", "bytes", "crc32")},
              "host_backbone": manifest.get("host")}   # PointNet++: SA1 + SA2 on the processor
    report["problems"] = check_budget(onchip, board)
    write_bundle(export_dir, out, manifest, report, weights, board)
    (out / "placement.json").write_text(json.dumps(report, indent=1))
    (out / "placement.md").write_text(placement_table(report))
    unbuilt = [why for why in (weight_buffer == "none" and "weight_buffer='none' (FINN+'s fetch_weights keeps its "
                               "local buffer when TH=1; no per-pixel re-read for this part)",
                               weight_ram == "ultra" and "weight_ram='ultra' (the URAM weights are runtime-writeable: "
                               "the stitched design has no AXI-Lite loader for them)") if why]
    if hdl and unbuilt and not report["problems"]:
        raise BuildError("the placement fits, but its HDL is not generated for " + " and ".join(unbuilt)
                         + f" (report: {out / 'placement.md'}); build with hdl=False (--no-hdl)")
    if hdl and not report["problems"]:
        # The HDL and the Vivado side: FINN+'s PrepareIP per layer, the stitched tree behind AXI
        # (tree_ctrl, DMA streams, the weight reader), the block-design Tcl, build_bitstream.sh,
        # registers.json; driver.json gets the register map and IP names. Vivado itself runs only
        # in `vivado_step(out)` (`sigmabranch build --bitstream`).
        written = vivado_step(out, run=False)
        report["hdl"] = {"top": written["hdl"]["top"], "sources": len(written["hdl"]["sources"]),
                         "folder": str(out / "vivado" / "src")}
        report["vivado"] = {k: str(v) for k, v in written.items() if k != "hdl"}
    if report["problems"]:
        raise BuildError(f"the on-chip part does not fit {board.name} ({board.part}): " + "; ".join(report["problems"])
                         + f" (report: {out / 'placement.md'})")
    return report
