"""The integer reference: the exported tree executed in numpy, hard routing included.

numpy only (it is the ``ref`` backend of the host driver on a PYNQ image, and the golden model
of ``sim/``). It reads what ``sigmabranch export`` writes:

- ``tree.json``: the topology (which node feeds which, which router selects which branch),
  every node's input/output shape, datatype and scale, the router decision integers, and each
  node's *integer program*: the node's FINN+-streamlined graph as a list of integer ops.
- ``<node>.npz``: the arrays of that program (integer weights, integer thresholds).

Every op works on int64 tensors, so results are exact. Ops (names and semantics as in FINN+'s
streamlined graphs): ``Transpose``, ``Im2Col`` (NHWC, columns ordered (kh, kw, c)), ``MatMul``
(integer weights), ``MultiThreshold`` (count of thresholds <= x, plus an integer bias),
``MaxPool``/``MaxPoolNHWC``, ``GlobalAccPool`` (sum over H, W), ``Flatten``/``Reshape``, and
``Add`` of two tensors (a residual addition; both inputs carry the same scale). Each op names its
input and output tensors, so a program is a graph (a fork is two ops reading one tensor).
What stays float is outside the programs and applied by the caller: the input scale (the host
quantises) and each node's output scale (and, for leaf heads, the classifier bias).
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ManifestError
from .router_rule import router_decision

MANIFEST = "tree.json"
FORMAT = "sigmabranch-tree/1"

_INT_RANGES = {"INT": lambda b: (-(2 ** (b - 1)), 2 ** (b - 1) - 1), "UINT": lambda b: (0, 2 ** b - 1)}


def datatype_range(name: str) -> tuple[int, int]:
    """``"INT8"`` -> (-128, 127); ``"UINT4"`` -> (0, 15)."""
    for prefix in ("UINT", "INT"):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return _INT_RANGES[prefix](int(name[len(prefix):]))
    raise ManifestError(f"not an integer datatype: {name!r}")


def quantize_input(x: np.ndarray, scale: float, datatype: str) -> np.ndarray:
    """Float input -> integers, as Brevitas' input quantizer does (float32 divide, round half
    to even, clamp)."""
    lo, hi = datatype_range(datatype)
    q = np.round(np.asarray(x, dtype=np.float32) / np.float32(scale))
    return np.clip(q, lo, hi).astype(np.int64)


# ---------------------------------------------------------------------------------- integer ops
def _im2col(x: np.ndarray, kernel: list[int], stride: list[int], pad: list[int], pad_value: int,
            dilation: list[int]) -> np.ndarray:
    n, h, w, c = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    x = np.pad(x, ((0, 0), (pad[0], pad[2]), (pad[1], pad[3]), (0, 0)), constant_values=pad_value)
    oh = (h + pad[0] + pad[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pad[1] + pad[3] - dw * (kw - 1) - 1) // sw + 1
    cols = [x[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw, :]
            for i in range(kh) for j in range(kw)]
    return np.concatenate(cols, axis=3)


def _maxpool_nhwc(x: np.ndarray, kernel: list[int], stride: list[int], pads: list[int]) -> np.ndarray:
    if any(pads):
        raise ManifestError("padded max-pooling is not supported by the integer reference")
    n, h, w, c = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    windows = [x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] for i in range(kh) for j in range(kw)]
    return np.max(np.stack(windows), axis=0)


def _multithreshold(x: np.ndarray, thresholds: np.ndarray, channels_last: bool, out_bias: int) -> np.ndarray:
    xc = x if channels_last else np.moveaxis(x, 1, -1)
    out = (xc[..., None] >= thresholds).sum(-1) + out_bias  # thresholds (C or 1, steps) broadcast
    return out if channels_last else np.moveaxis(out, -1, 1)


def run_op(op: dict[str, Any], inputs: list[np.ndarray], params: dict[str, np.ndarray]) -> np.ndarray:
    kind, attrs = op["op"], op.get("attrs", {})
    x = inputs[0]
    if kind == "Add":  # a residual addition: both inputs share one scale, so it is an integer sum
        return inputs[0] + inputs[1]
    if kind == "Transpose":
        return x.transpose(attrs["perm"])
    if kind == "Im2Col":
        return _im2col(x, attrs["kernel_size"], attrs["stride"], attrs["pad_amount"], attrs.get("pad_value", 0),
                       attrs.get("dilations", [1, 1]))
    if kind == "MatMul":
        return x @ params[op["params"]["weights"]]
    if kind == "MultiThreshold":
        return _multithreshold(x, params[op["params"]["thresholds"]], attrs.get("data_layout", "NCHW") == "NHWC",
                               int(attrs.get("out_bias", 0)))
    if kind == "MaxPoolNHWC":
        return _maxpool_nhwc(x, attrs["kernel_shape"], attrs["strides"], attrs.get("pads", [0, 0, 0, 0]))
    if kind == "MaxPool":  # NCHW
        return _maxpool_nhwc(x.transpose(0, 2, 3, 1), attrs["kernel_shape"], attrs["strides"],
                             attrs.get("pads", [0, 0, 0, 0])).transpose(0, 3, 1, 2)
    if kind == "GlobalAccPool":  # NHWC in, (N, 1, 1, C) out
        return x.sum(axis=(1, 2), keepdims=True)
    if kind in ("Flatten", "Reshape"):
        return x.reshape(len(x), *op["out_shape"][1:])
    raise ManifestError(f"op {kind!r} is not an integer op the reference executes")


# ---------------------------------------------------------------------------------- the tree
@dataclass
class IntegerNode:
    name: str
    info: dict[str, Any]
    params: dict[str, np.ndarray]

    def run(self, x_int: np.ndarray) -> np.ndarray:
        """The node's integer output for a batch of integer inputs (shape ``(B, *input_shape[1:])``)."""
        expected = tuple(self.info["input_shape"][1:])
        if x_int.shape[1:] != expected:
            raise ManifestError(f"node {self.name}: input of shape {x_int.shape[1:]}, expected {expected}")
        tensors = {self.info["program_input"]: np.asarray(x_int, dtype=np.int64)}
        for op in self.info["program"]:  # topological order (the streamlined graph's)
            tensors[op["output"]] = run_op(op, [tensors[name] for name in op["inputs"]], self.params)
        return tensors[self.info["program_output"]]


class IntegerTree:
    """The exported tree, loaded and checked: :meth:`infer` runs hard-routed inference."""

    def __init__(self, manifest: dict[str, Any], nodes: dict[str, IntegerNode], root: Path):
        self.manifest, self.nodes, self.root = manifest, nodes, root
        self.depth = int(manifest["depth"])

    @classmethod
    def load(cls, export_dir: str | Path) -> "IntegerTree":
        root = Path(export_dir)
        manifest = read_manifest(root)
        nodes = {}
        for name, info in manifest["nodes"].items():
            path = root / info["params_file"]
            if not path.is_file():
                raise ManifestError(f"node {name}: parameter file {path} is missing")
            try:
                with np.load(path, allow_pickle=False) as npz:
                    params = {k: npz[k].astype(np.int64) for k in npz.files}
            except (OSError, ValueError) as err:
                raise ManifestError(f"node {name}: {path} is not a readable .npz ({err})") from err
            if zlib.crc32(path.read_bytes()) != info.get("params_crc32"):
                raise ManifestError(f"node {name}: {path} does not match the CRC32 in {MANIFEST} (modified or corrupt)")
            for op in info["program"]:
                for key in op.get("params", {}).values():
                    if key not in params:
                        raise ManifestError(f"node {name}: op {op['op']} needs array {key!r}, absent from {path}")
            nodes[name] = IntegerNode(name, info, params)
        tree = cls(manifest, nodes, root)
        tree._check_shapes()
        return tree

    def _check_shapes(self) -> None:
        """Run every node once on zeros: each program must map its declared input shape to its
        declared output shape, and every consumer must expect its producer's output."""
        for name, node in self.nodes.items():
            out = node.run(np.zeros((1, *node.info["input_shape"][1:]), dtype=np.int64))
            if list(out.shape[1:]) != list(node.info["output_shape"][1:]):
                raise ManifestError(f"node {name}: its program gives shape {list(out.shape)}, the manifest says "
                                    f"{node.info['output_shape']}")
            source = node.info.get("input_node")
            if source is not None:
                if source not in self.nodes:
                    raise ManifestError(f"node {name}: input node {source!r} is not in the manifest")
                produced = self.nodes[source].info["output_shape"][1:]
                if list(produced) != list(node.info["input_shape"][1:]):
                    raise ManifestError(f"node {name}: expects input {node.info['input_shape']}, but {source} "
                                        f"produces {self.nodes[source].info['output_shape']}")

    # -- naming helpers (the manifest's convention)
    @staticmethod
    def router_name(level: int, node: int) -> str:
        return f"router_{level}_{node}"

    @staticmethod
    def branch_name(level: int, branch: int) -> str:
        return f"branch_{level}_{branch}"

    @staticmethod
    def head_name(leaf: int) -> str:
        return f"head_{leaf}"

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        inp = self.manifest["input"]
        if tuple(np.shape(x)[1:]) != tuple(inp["shape"]):
            raise ManifestError(f"input of shape {tuple(np.shape(x)[1:])}, the tree expects {tuple(inp['shape'])}")
        return quantize_input(x, inp["scale"], inp["datatype"])

    def decide(self, level: int, node: int, h_int: np.ndarray) -> np.ndarray:
        """Branch (0/1) per row: the router's projection program, then the integer rule."""
        router = self.nodes[self.router_name(level, node)]
        d = router.info["decision"]
        z = router.run(h_int) + np.asarray(d["bias_int"], dtype=np.int64)
        return router_decision(z, np.asarray(d["u_int"], dtype=np.int64), int(d["c_int"]), int(d["e_int"]))

    def head_logits(self, leaf: int, h_int: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(integer accumulators, float logits = acc * scale + bias)`` of one leaf head."""
        head = self.nodes[self.head_name(leaf)]
        acc = head.run(h_int)
        logits = acc * np.float64(head.info["output_scale"]) + np.asarray(head.info["output_bias"], dtype=np.float64)
        return acc, logits

    def infer(self, x: np.ndarray, quantized: bool = False) -> dict[str, np.ndarray]:
        """Hard-routed inference of a batch: ``{"classes", "leaves", "logits", "acc", "path_decisions"}``.

        ``x`` is the float input (quantised here, as the host does) or, with ``quantized=True``,
        the integer input.
        """
        q = np.asarray(x, dtype=np.int64) if quantized else self.quantize_input(x)
        n = len(q)
        groups = [(np.arange(n), self.nodes["backbone"].run(q), 0)]
        decisions = np.zeros((n, self.depth), dtype=np.int64)
        for level in range(self.depth):
            next_groups = []
            for rows, h, node in groups:
                choice = self.decide(level, node, h)
                decisions[rows, level] = choice
                for child in (0, 1):
                    picked = np.flatnonzero(choice == child)
                    if len(picked):
                        branch = 2 * node + child
                        next_groups.append((rows[picked], self.nodes[self.branch_name(level, branch)].run(h[picked]),
                                            branch))
            groups = next_groups
        num_classes = self.manifest["num_classes"]
        logits, acc = np.zeros((n, num_classes)), np.zeros((n, num_classes), dtype=np.int64)
        leaves = np.zeros(n, dtype=np.int64)
        for rows, h, leaf in groups:
            acc[rows], logits[rows] = self.head_logits(leaf, h)
            leaves[rows] = leaf
        return {"classes": logits.argmax(1), "leaves": leaves, "logits": logits, "acc": acc,
                "path_decisions": decisions}


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path} not found (run `sigmabranch export` first)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path} is not valid JSON: {err}") from err
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for key in ("depth", "input", "nodes", "num_classes"):
        if key not in manifest:
            raise ManifestError(f"{path}: missing key {key!r}")
    depth = int(manifest["depth"])
    required = (["backbone"] + [IntegerTree.router_name(l, n) for l in range(depth) for n in range(2 ** l)]
                + [IntegerTree.branch_name(l, b) for l in range(depth) for b in range(2 ** (l + 1))]
                + [IntegerTree.head_name(k) for k in range(2 ** depth)])
    for name in required:
        if name not in manifest["nodes"]:
            raise ManifestError(f"{path}: node {name} of a depth-{depth} tree is missing")
        for key in ("input_shape", "output_shape", "program", "program_input", "program_output", "params_file"):
            if key not in manifest["nodes"][name]:
                raise ManifestError(f"{path}: node {name} has no {key!r}")
    return manifest
