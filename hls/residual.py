"""Residual blocks in a node's FINN+ HW graph: their stream order, and the FIFO depths at the
ends of their two paths.

After ``InferDuplicateStreamsLayer`` and ``InferElementwiseBinaryOperation`` a residual block is
``DuplicateStreams`` -> two paths -> ``ElementwiseAdd``. The stitched design forks with
``hls/rtl/stream_fork.sv`` and adds with ``hls/rtl/stream_add.sv``; the add takes a word only
when both operands are there, so the path that runs ahead must buffer what the other has not yet
matched. :func:`path_fifo_depths` computes that backlog from the layers' geometry (FINN's
``set_fifo_depths`` measures it in RTL simulation instead; without Vivado this is the cheap,
exact-for-deadlock alternative). The placement report lists the FIFOs
(:func:`residual_fifos`); ``tests/test_residual_hw.py`` shows a too-shallow FIFO deadlocking.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .stitch import StitchError


def stream_order(model) -> list:
    """The graph's nodes in stream order from its input; each residual block is one item
    ``(fork, path0, path1, add)``, path0 feeding the add's first input."""
    items, join = _stream_order(model, model.graph.input[0].name)
    if join is not None:
        raise StitchError(f"{join.name}: an add outside a fork/add block")
    return items


def _stream_order(model, tensor: str) -> tuple[list, Any]:
    """The nodes along the stream from ``tensor``, in stream order, until an ``ElementwiseAdd``
    (returned second, the join of the fork this path belongs to) or the graph's end (None). A
    ``DuplicateStreams`` ... ``ElementwiseAdd`` block is one item ``(fork, path0, path1, add)``,
    path0 feeding the add's first input."""
    items: list = []
    while True:
        readers = model.find_consumers(tensor) or []
        if not readers:
            return items, None
        if len(readers) > 1:
            raise StitchError(f"{readers[0].name}: tensor {tensor} forks without a DuplicateStreams layer")
        node = readers[0]
        if node.op_type.startswith("ElementwiseAdd"):
            return items, node
        if not node.op_type.startswith("DuplicateStreams"):
            items.append(node)
            tensor = node.output[0]
            continue
        walks = [_stream_order(model, out) for out in node.output]
        adds = {w[1].name if w[1] is not None else None for w in walks}
        if len(adds) != 1 or None in adds:
            raise StitchError(f"{node.name}: its two streams are not joined by one ElementwiseAdd")
        add = walks[0][1]
        ends = [path[-1].output[0] if path else out for (path, _), out in zip(walks, node.output)]
        if list(add.input) == ends[::-1]:
            walks = walks[::-1]
        elif list(add.input) != ends:
            raise StitchError(f"{add.name}: its inputs are not the ends of {node.name}'s two paths")
        items.append((node, walks[0][0], walks[1][0], add))
        tensor = add.output[0]


def _folded(shape) -> tuple[int, int]:
    """(pixels, words per pixel) of a folded FINN shape ``[1, ..., fold, PE]``."""
    return int(np.prod(shape[1:-2])), int(shape[-2])


def _pixel_need(inst) -> np.ndarray:
    """``need[j]``: the input pixels (raster order) a layer must have taken before it can emit
    output pixel ``j``. Window generators need their window's last pixel, padding the real pixels
    up to its position; every other layer maps pixel to pixel."""
    op = inst.onnx_node.op_type
    if op.startswith("ConvolutionInputGenerator"):
        (h, w), (kh, kw) = inst.get_nodeattr("IFMDim"), inst.get_nodeattr("ConvKernelDim")
        (sh, sw), (dh, dw) = inst.get_nodeattr("Stride"), inst.get_nodeattr("Dilation")
        oh, ow = inst.get_nodeattr("OFMDim")
        r, c = np.divmod(np.arange(oh * ow), ow)
        return np.minimum(h * w, (r * sh + (kh - 1) * dh) * w + c * sw + (kw - 1) * dw + 1)
    if op.startswith("FMPadding"):
        (h, w), (pt, pl, _, _) = inst.get_nodeattr("ImgDim"), inst.get_nodeattr("Padding")
        oh, ow = inst.get_padded_odim()
        r, c = np.divmod(np.arange(oh * ow), ow)
        rows_before = np.clip(r - pt, 0, h)
        in_row = (r >= pt) & (r < pt + h)
        return rows_before * w + np.where(in_row, np.clip(c - pl + 1, 0, w), 0)
    n_in, n_out = _folded(inst.get_folded_input_shape(0))[0], _folded(inst.get_folded_output_shape(0))[0]
    if n_in != n_out:
        raise StitchError(f"{inst.onnx_node.name}: {op} maps {n_in} pixels to {n_out}; the residual FIFO sizing "
                          "knows window generators, padding and pixel-wise layers")
    return np.arange(1, n_out + 1)


def _path_need(path: list, n_pixels: int) -> np.ndarray:
    """``need[j]``: fork pixels a path takes before it emits its output pixel ``j``."""
    from qonnx.custom_op.registry import getCustomOp

    need = None
    for node in reversed(path):
        layer = _pixel_need(getCustomOp(node))
        need = layer if need is None else layer[need - 1]
    return np.arange(1, n_pixels + 1) if need is None else need


def path_fifo_depths(model, fork, paths: tuple[list, list], add) -> tuple[tuple[int, int], tuple[int, int]]:
    """Depths (words) of the FIFOs at the ends of a residual block's two paths, and the backlogs
    (words) they cover, from the layers' geometry (FINN's ``set_fifo_depths`` measures this in simulation;
    here it is computed): when the add waits for output pixel ``j`` of path Y, the fork has sent
    ``need_Y[j]`` pixels, from which path X has made ``produced_X(need_Y[j])`` pixels; ``j`` of
    them are consumed, the rest wait in X's FIFO. The depth is the largest such backlog plus one
    pixel (the fork hands words, not whole pixels, to a path) in X's output words, at least 2."""
    from qonnx.custom_op.registry import getCustomOp
    add_inst = getCustomOp(add)
    n_out, _ = _folded(add_inst.get_folded_output_shape(0))
    n_in, _ = _folded(getCustomOp(fork).get_folded_input_shape(0))
    needs = [_path_need(p, n_out) for p in paths]
    if any(len(nd) != n_out or nd[-1] > n_in for nd in needs):
        raise StitchError(f"{add.name}: its two paths do not produce {n_out} pixels from the fork's {n_in}")
    depths, backlogs = [], []
    for x, y in ((0, 1), (1, 0)):
        produced = np.searchsorted(needs[x], needs[y], side="right")     # X's pixels made by then
        backlog = int(np.max(produced - np.arange(n_out)))
        src = paths[x][-1] if paths[x] else fork     # its words per pixel reach the add's input x
        words = _folded(getCustomOp(src).get_folded_output_shape(0))[1]
        backlogs.append(backlog * words)
        depths.append(max(2, (backlog + 1) * words))
    return (depths[0], depths[1]), (backlogs[0], backlogs[1])


def residual_fifos(model, part: str) -> list[dict[str, Any]]:
    """The residual FIFOs of one HW graph (before ``InsertDWC``; the stitched design inserts the
    width converters the same way first): per block, both paths' depth, width, the backlog the
    depth covers, and FINN+'s estimate of that ``fifo.sv`` (its ``StreamingFIFO_rtl`` model)."""
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from onnx import helper
    from qonnx.custom_op.registry import getCustomOp

    model = model.transform(InsertDWC()).transform(SpecializeLayers(part))
    rows = []
    blocks = [it for it in stream_order(model) if isinstance(it, tuple)]
    while blocks:
        fork, path0, path1, add = blocks.pop(0)
        blocks += [it for path in (path0, path1) for it in path if isinstance(it, tuple)]
        depths, backlog = path_fifo_depths(model, fork, (path0, path1), add)
        for p, path in enumerate((path0, path1)):
            src = path[-1] if path else fork
            width = -(-getCustomOp(src).get_outstream_width(0) // 8) * 8
            rows.append({"add": add.name, "path": p, "layers": len(path), "depth": depths[p], "width": width,
                         "backlog_words": backlog[p], **fifo_estimate(depths[p], width, part)})
    return rows


def fifo_estimate(depth: int, width: int, part: str) -> dict[str, int]:
    """FINN+'s estimate of one ``fifo.sv`` (its ``StreamingFIFO_rtl`` model)."""
    from onnx import helper
    from qonnx.custom_op.registry import getCustomOp
    fifo = getCustomOp(helper.make_node("StreamingFIFO_rtl", ["i"], ["o"], domain="finn.custom_op.fpgadataflow.rtl",
                                        depth=depth, folded_shape=[1, 1, width], dataType="BINARY"))
    return {"BRAM_18K": int(fifo.bram_estimation(part)), "URAM": int(fifo.uram_estimation(part)),
            "LUT": int(fifo.lut_estimation(part)), "DSP": 0}


# Words of the FIFO between two layers of a chain (at most an image's): the window generators take
# their input rows in bursts while their consumers take windows at their own pace.
LAYER_FIFO_WORDS = 256


def layer_fifo_depth(inst) -> int:
    """Depth of the FIFO after a FINN+ layer inside a chain (where FINN's ``InsertFIFO`` puts one):
    :data:`LAYER_FIFO_WORDS`, at most the layer's output words of one image, at least 2. Without
    them the layers are coupled word by word: the demo backbone, whose slowest layer needs 19,168
    cycles an image, took a new image only every 33,600 cycles (bench/fetch_rate.py)."""
    image = int(np.prod([int(v) for v in inst.get_folded_output_shape()][:-1]))
    return max(2, min(image, LAYER_FIFO_WORDS))


def layer_fifos(model, part: str, skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The FIFOs the stitched chain puts between a graph's layers (after every layer but the last;
    ``skip``: op types the stitch replaces by blocks without one), with FINN+'s estimate each."""
    from qonnx.custom_op.registry import getCustomOp
    rows = []
    for node in list(model.graph.node)[:-1]:
        if node.op_type in skip:
            continue
        inst = getCustomOp(node)
        depth, width = layer_fifo_depth(inst), -(-inst.get_outstream_width(0) // 8) * 8
        rows.append({"layer": node.name, "depth": depth, "width": width, **fifo_estimate(depth, width, part)})
    return rows
