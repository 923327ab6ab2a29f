"""Cross-checks of an exported tree (``sigmabranch export --check``).

Three independent executions of every node are compared with the integer reference
(``host/int_reference.py``), each fed the reference's integers from the node's parent, so every
branch sees every test input (not only those routed to it):

1. FINN+'s executor on ``<node>.finn.onnx`` (ConvertQONNXtoFINN + streamlining) without its float
   tail: integer tensors (integer-valued float32 sums well below 2**24, so exact), compared for
   **equality**. This is the graph the hardware is built from.
2. qonnx's executor on ``<node>.onnx`` (the QONNX export, a float graph): its output divided by
   the node's output scale (less a head's bias) must round to the reference's integers and sit
   within ``ROUNDING_SLACK`` of the grid.
3. The Brevitas node module on the same integer input, likewise.

Why 2 and 3 allow rare off-by-one values (*boundary flips*, at most ``BOUNDARY_FLIP_FRACTION``
of a node's values, each exactly one step): a float executor computes a convolution as a float32
sum of (integer x scale) products, then BN, then rounds to the activation grid. When the exact
pre-activation lies within float32 rounding error of a rounding boundary (k + 1/2 steps), the
float result can land on either side, while the integer datapath (thresholds on the exact
integer accumulator) always lands on one. Both are faithful to the trained model; only the
integer side is reproducible bit for bit, and it is what the hardware computes. The rate grows
with the activation width (finer steps) and the accumulation length. Measured on the digits edge
tree: none at W4A4 and W2A2; at W8A8 up to 1.7e-4 of a node's values (Brevitas float32) and
5e-5 (qonnx). Re-running Brevitas in float64 leaves at most 2 in 92,160: those are FINN+'s own
thresholds, computed in float32 during streamlining, sitting one step off the exact boundary,
which the hardware inherits from FINN+. In a W4A4 ResNet-8 tree: 1 of 132,480 values of one
branch (Brevitas; qonnx exact). End to end the class and leaf must still match on every input.

End to end, the reference's hard-routed inference is compared with the Brevitas tree's: the
same class and the same leaf on every input. Logits may differ where a float scale remains:
Brevitas passes float tensors (integer x scale) between layers, so a pre-activation landing
within float32 rounding of a quantisation boundary can round to the neighbouring integer in
Brevitas but never in the integer datapath. Such a flip moves a head's accumulator by a few
units; ``LOGIT_TOLERANCE`` (relative to the largest logit) bounds it, and the report counts the
inputs whose accumulators are not identical.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from host.int_reference import IntegerTree

from .export import drop_float_tail, fabric_inputs, tree_nodes

ROUNDING_SLACK = 0.05  # in output integer units: how far a float executor's output may sit off the grid
BOUNDARY_FLIP_FRACTION = 1e-3  # off-by-one values allowed from a float executor (boundary flips)
ACCUMULATOR_RTOL = 1e-5  # float32 executors vs integer accumulators (router projection, head)
LOGIT_TOLERANCE = 0.05  # max |logit difference| / max |logit|, end to end vs Brevitas


class ExportMismatch(AssertionError):
    pass


def _with_batch(model, batch: int):
    """The graph with batch size ``batch``: every tensor's leading 1 becomes ``batch`` (qonnx's
    ChangeBatchSize drops intermediate shapes, which FINN's NHWC max-pool cannot re-infer)."""
    graph = model.graph
    for info in [*graph.input, *graph.output, *graph.value_info]:
        dims = info.type.tensor_type.shape.dim
        if dims and dims[0].dim_value == 1:
            dims[0].dim_value = batch
    return model


def _integers(y: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    bias = np.asarray(info.get("output_bias") or 0.0)
    return (y.reshape(len(y), -1) - bias.reshape(1, -1) if info["kind"] == "head" else y) / info["output_scale"]


def _compare(name: str, what: str, approx: np.ndarray, exact: np.ndarray, accumulator: bool = False) -> dict[str, Any]:
    """Float executor vs the integers: off-by-one *boundary flips* are counted, and allowed up
    to ``BOUNDARY_FLIP_FRACTION`` of the values (see the module docstring); anything else fails.

    ``accumulator`` (router projections, leaf heads: no activation rounds their output): a float32
    executor holds the integer sum only to float32 precision (integers above 2**24 are not even
    representable), so those are compared within ``ACCUMULATOR_RTOL`` of the largest value."""
    approx = approx.reshape(exact.shape)
    if accumulator:
        err = float(np.abs(approx - exact).max()) if exact.size else 0.0
        bound = ACCUMULATOR_RTOL * max(float(np.abs(exact).max(initial=0)), 1.0) + ROUNDING_SLACK
        if err > bound:
            raise ExportMismatch(f"node {name}: {what} differs from the integer accumulators by {err:.3g} "
                                 f"(allowed {bound:.3g})")
        return {"boundary_flips": 0, "values": int(exact.size), "max_off_grid": err}
    diff = np.abs(np.round(approx) - exact)
    flips = int((diff == 1).sum())
    residual = np.abs(approx - np.round(approx))
    slack = float(residual.max()) if exact.size else 0.0
    if diff.max(initial=0) > 1 or flips > BOUNDARY_FLIP_FRACTION * exact.size or slack > ROUNDING_SLACK:
        raise ExportMismatch(f"node {name}: {what} differs from the integer reference in {int((diff > 0).sum())} of "
                             f"{exact.size} values (max |diff| {diff.max(initial=0):.0f}, off-grid {slack:.3g})")
    return {"boundary_flips": flips, "values": int(exact.size), "max_off_grid": slack}


@torch.no_grad()
def check_export(export_dir: str | Path, qtree, x: torch.Tensor, finn_inputs: int | None = None,
                 qonnx: bool = True, labels: torch.Tensor | None = None) -> dict[str, Any]:
    """Run the checks above on inputs ``x`` (float, as the dataset gives them); raise
    :class:`ExportMismatch` naming the first node that differs; return a report."""
    import qonnx.core.onnx_exec as qonnx_exec
    from finn.core.onnx_exec import execute_onnx as finn_execute
    from qonnx.core.modelwrapper import ModelWrapper

    root = Path(export_dir)
    ref = IntegerTree.load(root)
    qtree.eval()
    modules = {node["name"]: node["module"] for node in tree_nodes(qtree)}
    ints: dict[str, np.ndarray] = {}
    report: dict[str, Any] = {"inputs": len(x), "nodes": {}}
    q_in = ref.quantize_input(fabric_inputs(qtree, x).numpy())
    for name, node in ref.nodes.items():  # manifest order: every producer before its consumers
        src = q_in if node.info["input_node"] is None else ints[node.info["input_node"]]
        ints[name] = out = node.run(src)
        accumulator = node.info["kind"] in ("router", "head")
        entry = {"brevitas": _compare(name, "the Brevitas module", _integers(
            modules[name](torch.from_numpy(src).float()).numpy(), node.info), out, accumulator)}
        if qonnx:
            model = _with_batch(ModelWrapper(str(root / node.info["qonnx"])), len(src))
            y = qonnx_exec.execute_onnx(model, {model.graph.input[0].name: src.astype(np.float32)})
            entry["qonnx"] = _compare(name, "qonnx's execution of the QONNX file",
                                               _integers(y[model.graph.output[0].name], node.info), out, accumulator)
        if not node.info["program"]:  # PointNet++'s fabric backbone only quantises: nothing to execute
            entry["finn_exact_inputs"] = 0
        elif finn_inputs is None or finn_inputs > 0:
            # One input at a time: qonnx's Im2Col (used in FINN's streamlined graphs) mixes up
            # images at batch > 1, and FINN itself always executes batch 1.
            model = drop_float_tail(ModelWrapper(str(root / node.info["finn_onnx"])))
            rows = range(len(src) if finn_inputs is None else min(len(src), finn_inputs))
            y = np.stack([finn_execute(model, {model.graph.input[0].name: src[i:i + 1].astype(np.float32)})[
                model.graph.output[0].name].reshape(out.shape[1:]) for i in rows])
            if not np.array_equal(y, out[:len(y)]):
                raise ExportMismatch(f"node {name}: FINN+'s execution of the streamlined graph differs from the "
                                     f"integer reference in {int((y != out[:len(y)]).sum())} values")
            entry["finn_exact_inputs"] = len(y)
        report["nodes"][name] = entry
    report.update(end_to_end(ref, qtree, x, labels))
    return report


@torch.no_grad()
def end_to_end(ref: IntegerTree, qtree, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
    """Hard-routed reference inference vs the Brevitas tree: class, leaf, logits (and the
    reference's Top-1 in % when ``labels`` are given)."""
    result = ref.infer(fabric_inputs(qtree, x).numpy())
    logits, leaves = qtree(x, mode="hard")
    logits = logits.numpy()
    same_class = float((result["classes"] == logits.argmax(1)).mean())
    same_leaf = float((result["leaves"] == leaves.numpy()).mean())
    head_scale = np.array([ref.nodes[ref.head_name(int(k))].info["output_scale"] for k in result["leaves"]])
    acc_diff = np.abs(logits - result["logits"]).max(1) / head_scale  # in accumulator units
    logit_diff = float(np.abs(logits - result["logits"]).max() / max(np.abs(logits).max(), 1e-12))
    report = {"same_class": same_class, "same_leaf": same_leaf, "identical_accumulators": float((acc_diff < 0.5).mean()),
              "max_relative_logit_diff": logit_diff}
    if labels is not None:
        report["top1"] = 100.0 * float((result["classes"] == labels.numpy()).mean())
    if same_class < 1 or same_leaf < 1 or logit_diff > LOGIT_TOLERANCE:
        raise ExportMismatch(f"end to end vs the Brevitas tree: same class {same_class:.2%}, same leaf {same_leaf:.2%}, "
                             f"max relative logit difference {logit_diff:.3g} (tolerance {LOGIT_TOLERANCE})")
    return report


def test_split(checkpoint: str | Path, cfg=None, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split of the checkpoint's own config (or ``cfg``): ``(inputs, labels)``."""
    from model.checkpoint import load_checkpoint
    from model.config import config_from_dict
    from model.dense import dataset_for

    cfg = cfg or config_from_dict(load_checkpoint(checkpoint)["config"])
    test = dataset_for(cfg, augment=False).test
    count = len(test) if limit is None else min(limit, len(test))
    items = [test[i] for i in range(count)]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


def run_check(checkpoint: str | Path, export_dir: str | Path, cfg=None, limit: int | None = None,
              finn_inputs: int | None = None) -> dict[str, Any]:
    """``sigmabranch export --check``: the checks above on the checkpoint's test split."""
    from .qat import qtree_from_checkpoint

    qtree, _ = qtree_from_checkpoint(checkpoint)
    x, labels = test_split(checkpoint, cfg, limit)
    return check_export(export_dir, qtree, x, finn_inputs=finn_inputs, labels=labels)
