"""The DDR weight image (``weights.bin`` + ``weights.json``) and what a weight fetch reads.

Per level, one region per branch, each contiguous (its layers in datapath order, each in
FINN+'s ``external_mem`` layout: 256-bit words, elements packed from the LSB), regions 4 KiB
aligned so no AXI burst crosses a 4 KiB boundary, a CRC32 per region. The router's decision
selects the region: each fetcher of the level reads ``region_base(branch) + layer_offset``.

The byte counts (:func:`fetch_len`) are FINN+'s ``get_weight_mem_bytes``; the model-side counts
(:func:`dense_weight_bytes`, :func:`tree_weight_bytes`) apply them to a torch model's layers, and
:func:`dense_streamed_bytes` to the dense model's layer sizes that ``sigmabranch export`` records
in ``tree.json`` (so the build needs no torch model).
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import BuildError

REGION_ALIGN = 4096          # AXI bursts must not cross 4 KiB
FETCH_DATA_BITS = 256        # fetch_weights' AXI-MM data width (DATA_BITS in fetch_weights.sv)


def fetch_len(elements: int, weight_bits: int) -> int:
    """Bytes ``fetch_weights`` reads for one weight set (``get_weight_mem_bytes``)."""
    per_word = FETCH_DATA_BITS // weight_bits
    return -(-elements // per_word) * (FETCH_DATA_BITS // 8)


def streamed_bytes(elements: Iterable[int], weight_bits: int) -> int:
    """What ``fetch_weights`` reads for weight sets of these element counts, one set each."""
    return sum(fetch_len(int(n), weight_bits) for n in elements)


def dense_weight_bytes(dense, depth: int, bits: int) -> int:
    """DDR weight bytes per inference of a dense (or statically pruned) model under the same
    placement: the backbone on chip, every later conv/linear (the tree levels' dense blocks and
    the classifier) fetched once per inference in the same layout."""
    from quant.export import dense_streamed_elements
    return streamed_bytes(_every_layer(dense_streamed_elements(dense, depth)), bits)


def tree_weight_bytes(tree, bits: int) -> int:
    """One hard path's streamed weights: its specialisers, the projections of the routers below
    the root (the root router is on chip; a decision is a few integers) and its leaf head."""
    from quant.export import weight_elements
    modules = [tree.specialisers[level][0] for level in range(tree.depth)]
    modules += [tree.routers[level][0].proj for level in range(1, tree.depth)] + [tree.heads[0]]
    return streamed_bytes(weight_elements(modules), bits)


def dense_streamed_bytes(manifest: dict[str, Any]) -> int:
    """:func:`dense_weight_bytes` of the dense model an exported tree came from, at the tree's
    weight width, from the layer sizes ``tree.json`` records (``dense.streamed_weight_elements``)."""
    counts = manifest.get("dense", {}).get("streamed_weight_elements")
    if counts is None:
        raise BuildError("tree.json has no dense.streamed_weight_elements (an export older than the build): "
                         "re-run `sigmabranch export`")
    return streamed_bytes(_every_layer(counts), int(manifest["quant"]["weight_bits"]))


def _every_layer(counts: dict[str, Any]) -> list[int]:
    return [n for level in counts["levels"] for n in level] + counts["head"]


def align(n: int, to: int = REGION_ALIGN) -> int:
    return -(-n // to) * to


def is_narrow(weights: np.ndarray, datatype) -> bool:
    """No weight at the datatype's minimum (Brevitas' narrow range, e.g. INT4 in [-7, 7]): FINN+'s
    MVAU_rtl then packs more PE lanes per DSP48E1 (``NARROW_WEIGHTS``)."""
    return bool(datatype.signed() and np.min(weights) > datatype.min())


def narrow_layers(weights: dict[str, Any], node: str) -> set[str]:
    """The layers of streamed ``node`` whose weights are narrow in every branch of its level
    (``weights.json``'s per-level ``narrow``, aligned with each region's layers)."""
    for level in weights["levels"]:
        for region in level["regions"]:
            if node in region["nodes"]:
                flags = level.get("narrow") or [False] * len(region["layers"])
                return {layer["layer"] for layer, n in zip(region["layers"], flags) if n and layer["node"] == node}
    return set()


def fetch_layer_bytes(inst, weights: np.ndarray, scratch: Path) -> bytes:
    """One weight set in FINN+'s ``external_mem`` layout (``make_weight_file``): 256-bit words,
    written one hex word per line; as DDR bytes, little-endian (byte 0 = bits 7:0)."""
    path = scratch / "weights.dat"
    inst.make_weight_file(weights, "decoupled_verilog_dat", str(path))
    words = path.read_text().split()
    return b"".join(int(word, 16).to_bytes(FETCH_DATA_BITS // 8, "little") for word in words)


def write_weight_image(hw: dict[str, Any], paths: list, out: Path, scratch: Path) -> dict[str, Any]:
    """``weights.bin`` + ``weights.json`` (see the module docstring) of the streamed levels
    (``paths``: :class:`hls.placement.LevelDatapath` per level)."""
    from qonnx.custom_op.registry import getCustomOp

    image = bytearray()
    levels = []
    for path in paths:
        regions = []
        for branch, names in enumerate(path.branches):
            region, layers = bytearray(), []
            for name in names:
                model = hw[name]
                for node in model.graph.node:
                    if not node.op_type.startswith("MVAU"):
                        continue
                    inst = getCustomOp(node)
                    w = model.get_initializer(node.input[1])
                    data = fetch_layer_bytes(inst, w, scratch)
                    layers.append({"node": name, "layer": node.name, "offset": len(region), "bytes": len(data),
                                   "MH": inst.get_nodeattr("MH"), "MW": inst.get_nodeattr("MW"),
                                   "PE": inst.get_nodeattr("PE"), "SIMD": inst.get_nodeattr("SIMD"),
                                   "weight_datatype": inst.get_nodeattr("weightDataType"),
                                   "narrow": is_narrow(w, inst.get_input_datatype(1))})
                    region += data
            regions.append((region, layers))
        stride = align(max(len(r) for r, _ in regions))
        base = len(image)
        entries = []
        for branch, (region, layers) in enumerate(regions):
            offset = base + branch * stride
            image += bytes(offset - len(image)) + region
            entries.append({"branch": branch, "nodes": path.branches[branch], "offset": offset, "bytes": len(region),
                            "crc32": zlib.crc32(region), "layers": layers})
        image += bytes(base + len(regions) * stride - len(image))
        # a datapath layer may assume narrow weights only if every branch's set is narrow
        narrow = [all(r[1][j]["narrow"] for r in regions) for j in range(len(regions[0][1]))]
        levels.append({"level": path.level, "base": base, "region_stride": stride, "regions": entries,
                       "narrow": narrow})
    (out / "weights.bin").write_bytes(bytes(image))
    meta = {"format": "sigmabranch-weights/1", "file": "weights.bin", "bytes": len(image), "align": REGION_ALIGN,
            "data_bits": FETCH_DATA_BITS, "crc32": zlib.crc32(bytes(image)),
            "layout": "per level, one contiguous region per branch at base + branch * region_stride; inside a "
                      "region, its layers in datapath order, each in FINN+'s external_mem layout",
            "levels": levels}
    (out / "weights.json").write_text(json.dumps(meta, indent=1))
    return meta
