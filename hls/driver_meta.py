"""What a board needs besides the bitstream: the export's manifest and integer programs (the
``ref`` backend), and ``driver.json``: buffers, the weight regions and the board's facts
(``board_facts``: the whole :class:`hls.boards.Board` record, so host/ needs no copy of it).
``hls.vivado.vivado_step`` later merges the register map and IP names into it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .boards import Board

DRIVER_FORMAT = "sigmabranch-driver/1"


def driver_json(manifest: dict[str, Any], report: dict[str, Any], weights: dict[str, Any], board: Board) -> dict[str, Any]:
    backbone, head = manifest["nodes"]["backbone"], manifest["nodes"]["head_0"]
    in_shape = backbone["input_shape"]
    return {"format": DRIVER_FORMAT, "board": board.name, "board_facts": board.as_dict(), "part": board.part,
            "clk_ns": board.clk_ns, "manifest": "export/tree.json", "weights": "weights.json",
            "input": {"shape_nhwc": [in_shape[0], *in_shape[2:], in_shape[1]],
                      "datatype": backbone["input_datatype"], "scale": backbone["input_scale"],
                      "bytes": report["ddr"]["input_bytes"]},
            "output": {"shape": head["output_shape"], "datatype": "INT32", "bytes": report["ddr"]["output_bytes"]},
            "levels": [{"level": level["level"], "base": level["base"], "region_stride": level["region_stride"],
                        "region_bytes": level["regions"][0]["bytes"]} for level in weights["levels"]],
            "bitstream": None, "hwh": None}


def write_bundle(export_dir: Path, out: Path, manifest: dict[str, Any], report: dict[str, Any],
                 weights: dict[str, Any], board: Board) -> None:
    """``<out>/export/`` (tree.json, every node's integer parameters, the processor's backbone if
    any) and ``<out>/driver.json``."""
    (out / "export").mkdir(exist_ok=True)
    host = [manifest["host"]["file"]] if manifest.get("host") else []   # PointNet++: the processor's backbone
    for name in ["tree.json"] + [info["params_file"] for info in manifest["nodes"].values()] + host:
        shutil.copy2(export_dir / name, out / "export" / name)
    (out / "driver.json").write_text(json.dumps(driver_json(manifest, report, weights, board), indent=1))
