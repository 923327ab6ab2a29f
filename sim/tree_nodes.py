"""Every hardware node type of the tree in cocotb + Verilator, against the integer reference.

The parts of a ``sigmabranch build`` output (``nodes/<node>.hw.onnx``, ``weights.bin/json``,
``export/``) as :class:`hls.parts.TreeParts` assembles them, written by :mod:`hls.stitch` as one
SystemVerilog top per part and driven by ``sim/tb/test_tree_chain.py`` with random valid/ready on
every stream and random DDR stalls::

    from sim.tree_nodes import TreeSim
    ts = TreeSim("build/zcu104")
    y = ts.backbone(x_int)                        # (B, H, W, C) ints, vs IntegerTree node "backbone"
    d = ts.router(0, 0, h_int)                    # decisions, vs IntegerTree.decide
    r = ts.level(0, 1, h_int)                     # branch_0_1 -> router_1_1 from DDR region 1 of level 0
    r.outputs, r.taps[...], r.bytes, r.cycles     # per inference
    acc = ts.level(1, 2, h_int).outputs           # last level: branch_1_2 -> head_2 accumulators
    ts.parts.level(0, 1).stages                   # what that top connects (hls.parts.Part)

Parts: the backbone (every FINN+ RTL layer, max-pools by ``hls/rtl/stream_maxpool.sv``); the root
router (``global_sum_pool`` -> projection ``MVAU_rtl`` from its memstream -> ``router_decide``); a
level datapath (the level's branch, then the node below it: the next level's router or the leaf
head), whose ``external_mem`` MVAUs fetch the chosen branch's region from the DDR model: the top's
``region_base`` is ``WEIGHTS_BASE + level.base + branch * level.region_stride`` and one index token
(0) per inference starts every fetcher of the level once. One Verilator build serves all branches
of a level (module names are level-generic; the branches' thresholds are ``$readmemh`` files copied
into the run directory, the routers of the next level are selected by ``branch_sel``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hls.parts import Part, TreeParts
from hls.stitch import RTL_FORK, stage_files, write_chain_top, write_tree_top
from host.int_reference import IntegerTree
from sim.verilator import cache_root, run_cocotb
from sim.words import pack_words, unpack_words

WEIGHTS_BASE = 0x1000_0000   # where the testbench's DDR model places weights.bin


@dataclass
class ChainResult:
    outputs: list[np.ndarray]              # per inference: output elements (flat, NHWC order)
    taps: dict[int, list[np.ndarray]]      # stage index -> per inference elements
    bytes: list[int]                       # DDR bytes served per inference
    cycles: list[int]                      # cycles from the inference's start to its last output word
    bursts: list[list[tuple[int, int]]]    # per inference: (address, beats) of each AXI burst
    build_seconds: float = 0.0
    sim_seconds: float = 0.0
    cached: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class TreeSim:
    """Stitched tops of one ``sigmabranch build`` output (:class:`hls.parts.TreeParts`), simulated
    part by part. ``work_dir``: where the nodes are prepared and the tops written (default: under
    the sim cache, keyed by the build's contents)."""

    def __init__(self, build_dir: str | Path, work_dir: str | Path | None = None):
        build_dir = Path(build_dir)
        # Keyed by what the parts are made of, not by where the build lies: a copy of a build (a
        # test's own, the host driver's sim backend) reuses the prepared nodes and Verilator models.
        digest = hashlib.sha256((build_dir / "weights.json").read_bytes() + (build_dir / "export" / "tree.json").read_bytes())
        for node in sorted((build_dir / "nodes").glob("*.hw.onnx")):
            digest.update(node.name.encode() + node.read_bytes())
        key = digest.hexdigest()[:12]
        self.parts = TreeParts(build_dir, Path(work_dir) if work_dir else cache_root() / "tree-hdl" / key)
        self.build_dir, self.work = self.parts.build_dir, self.parts.work
        self.driver, self.weights, self.tree, self.manifest = (self.parts.driver, self.parts.weights,
                                                               self.parts.tree, self.parts.manifest)

    def region_base(self, level: int, branch: int) -> int:
        """The region's address in the testbench's DDR model."""
        return WEIGHTS_BASE + self.parts.region_offset(level, branch)

    # ----------------------------------------------------------------- running
    def tree_top(self, x_int: np.ndarray, *, p_valid: float = 0.7, p_ready: float = 0.7, p_rvalid: float = 0.8,
                 p_arready: float = 0.7, seed: int = 0, max_cycles: int = 400_000, pipelined: bool = False,
                 ddr_port: dict[str, float] | None = None) -> ChainResult:
        """Hard-routed inference in the stitched whole-tree top (one image after another): outputs
        are the leaf head's accumulators, ``info["leaves"]`` the leaf per image, ``bytes`` the DDR
        bytes the tree fetched per inference, ``cycles`` image-in to last accumulator.

        ``pipelined``: the images' inputs streamed back to back (the next enters while earlier ones
        are in the levels); ``cycles`` then counts from the first input word to each image's last
        accumulator and ``bytes`` is the whole run's, on the first image. ``ddr_port``: the memory's
        port model (``hls.boards.Board.weight_port()``)."""
        tree = self.parts.whole_tree()
        top = self.work / "tops" / "tree_top.sv"
        info = write_tree_top(top, "tree_top", tree)
        srcs, incs, data = stage_files(tree.stages, also=(RTL_FORK,))
        in_bits, in_pe, _ = info["in_elem"]
        n_out = self.manifest["num_classes"] // info["out_elem"][1]
        frames = [{"in": [hex(w) for w in pack_words(x, in_bits, in_pe)], "n_out": n_out, "idx": False} for x in x_int]
        cfg = {"frames": frames, "p_valid": p_valid, "p_ready": p_ready, "p_rvalid": p_rvalid, "p_arready": p_arready,
               "seed": seed, "max_cycles": max_cycles, "taps": [], "memory": self._memory(),
               "pipelined": bool(pipelined), "ddr_port": ddr_port}
        res, got = self._run(srcs + [top], "tree_top", incs, data, cfg, info)
        res.info["leaves"] = [g["leaf"] for g in got]
        return res

    def run_part(self, part: Part, frames_in: list[np.ndarray], *, region_base: list[int] | None = None,
                 branch_sel: int | None = None, taps: tuple[int, ...] = (), expect_bytes: list[int] | None = None,
                 p_valid: float = 0.7, p_ready: float = 0.7, p_rvalid: float = 0.8, p_arready: float = 0.7,
                 seed: int = 0, max_cycles: int = 200_000, prefetch_settle: int | None = None) -> ChainResult:
        """``part``'s stitched top on ``frames_in`` (one inference each), under random valid/ready."""
        top = self.work / "tops" / f"{part.top}.sv"
        info = write_chain_top(top, part.top, part.stages, taps=taps)
        srcs, incs, data = stage_files(part.stages)
        in_bits, in_pe, _ = info["in_elem"]
        frames = []
        for i, x in enumerate(frames_in):
            fr = {"in": [hex(w) for w in pack_words(x, in_bits, in_pe)], "n_out": part.out_elems // info["out_elem"][1],
                  "idx": bool(info["n_fetchers"])}
            if region_base is not None:
                fr["region_base"] = int(region_base[i])
            if expect_bytes is not None:
                fr["expect_bytes"] = int(expect_bytes[i])
            if prefetch_settle is not None:          # weights fetched before the input arrives
                fr.update(prefetch=True, prefetch_settle=int(prefetch_settle))
            frames.append(fr)
        cfg = {"frames": frames, "p_valid": p_valid, "p_ready": p_ready, "p_rvalid": p_rvalid, "p_arready": p_arready,
               "seed": seed, "max_cycles": max_cycles, "taps": list(taps),
               "memory": self._memory() if info["n_fetchers"] else None}
        if branch_sel is not None:
            cfg["branch_sel"] = int(branch_sel)
        res, _ = self._run(srcs + [top], part.top, incs, data, cfg, info, taps)
        return res

    def _memory(self) -> dict[str, Any]:
        """The testbench's DDR model: weights.bin at WEIGHTS_BASE."""
        return {"file": str((self.build_dir / "weights.bin").resolve()), "base": WEIGHTS_BASE}

    @staticmethod
    def _run(srcs: list[Path], top: str, incs: list[Path], data: list[Path], cfg: dict[str, Any],
             info: dict[str, Any], taps: tuple[int, ...] = ()) -> tuple[ChainResult, list[dict[str, Any]]]:
        """Build and run ``sim/tb/test_tree_chain.py`` on ``top``; (result, the testbench's per-frame records)."""
        res = run_cocotb(srcs, top, "sim.tb.test_tree_chain", includes=incs, defines={"FINN_SIMULATION": 1},
                         config=cfg, copy_files=data)
        got = json.loads((res.test_dir / "outputs.json").read_text())
        out_bits, out_pe, out_signed = info["out_elem"]
        outs = [unpack_words([int(w, 16) for w in g["out"]], out_bits, out_pe, out_signed) for g in got]
        tap_out = {t: [unpack_words([int(w, 16) for w in g["taps"][str(t)]], *info["taps"][t][:2], info["taps"][t][2])
                       for g in got] for t in taps}
        return ChainResult(outs, tap_out, [g["bytes"] for g in got], [g["cycles"] for g in got],
                           [[tuple(b) for b in g["bursts"]] for g in got], res.build.seconds, res.sim_seconds,
                           res.build.cached, info), got

    # ----------------------------------------------------------------- node types vs the reference
    def backbone(self, x_int: np.ndarray, **kw) -> ChainResult:
        """``x_int``: (B, H, W, C) NHWC integers. Outputs: per image the NHWC feature map (flat)."""
        return self.run_part(self.parts.backbone(), list(x_int), **kw)

    def router(self, level: int, node: int, h_int: np.ndarray, **kw) -> ChainResult:
        """Outputs: per feature map the decision word (``router_decide``: 0 + d)."""
        return self.run_part(self.parts.router(level, node), list(h_int), **kw)

    def level(self, level: int, branch: int, h_int: np.ndarray, prefetch: bool = False, **kw) -> ChainResult:
        """The level datapath computing branch ``branch`` (and the node below it) on each map of
        ``h_int``; ``taps[tap]`` holds the branch's output, ``outputs`` the router decision (or the
        head's accumulators), ``bytes`` the DDR bytes served per inference."""
        part = self.parts.level(level, branch)
        n = len(h_int)
        region = self.parts.region(level, branch)
        if prefetch:   # settle: the local buffers fill at SIMD weights a cycle after the bytes arrive
            kw["prefetch_settle"] = sum(la["MH"] * la["MW"] // la["SIMD"] for la in region["layers"]) + 200
        res = self.run_part(part, list(h_int), region_base=[self.region_base(level, branch)] * n,
                            branch_sel=branch if not part.below.startswith("head_") else None,
                            taps=(part.tap,), expect_bytes=[region["bytes"]] * n, **kw)
        res.info.update(tap=part.tap, below=part.below, region_bytes=region["bytes"], region_offset=region["offset"])
        return res

    # ----------------------------------------------------------------- the whole path, part by part
    def infer(self, x_int: np.ndarray, **kw) -> dict[str, Any]:
        """Hard-routed inference through the simulated parts: backbone -> root router -> for each
        level the datapath with the branch the *simulated* router chose (its DDR region), the next
        router's decision coming out of that datapath, the last level ending in the leaf head.
        ``x_int``: (B, H, W, C) NHWC integers. Returns leaves, accumulators, decisions, DDR bytes and
        cycles per inference and per part (the parts run one after another here; the stitched
        top with the feature-map FIFO is :func:`hls.stitch.write_tree_top`'s job)."""
        n = len(x_int)
        bb = self.backbone(x_int, **kw)
        shape = self.manifest["nodes"]["backbone"]["output_shape"][1:]          # C, H, W
        h = np.stack(bb.outputs).reshape(n, shape[1], shape[2], shape[0])
        rt = self.router(0, 0, h, **kw)
        choice = np.array([int(o[0]) for o in rt.outputs])
        node = np.zeros(n, dtype=np.int64)
        decisions = np.zeros((n, self.tree.depth), dtype=np.int64)
        decisions[:, 0] = choice
        cycles = np.array(bb.cycles) + np.array(rt.cycles)
        nbytes = np.zeros(n, dtype=np.int64)
        acc = np.zeros((n, self.manifest["num_classes"]), dtype=np.int64)
        for level in range(self.tree.depth):
            branch = 2 * node + choice
            out_shape = self.manifest["nodes"][IntegerTree.branch_name(level, 0)]["output_shape"][1:]
            new_h = np.zeros((n, out_shape[1], out_shape[2], out_shape[0]), dtype=np.int64)
            for b in np.unique(branch):
                rows = np.flatnonzero(branch == b)
                r = self.level(level, int(b), h[rows], **kw)
                for k, i in enumerate(rows):
                    new_h[i] = r.taps[r.info["tap"]][k].reshape(out_shape[1], out_shape[2], out_shape[0])
                    cycles[i] += r.cycles[k]
                    nbytes[i] += r.bytes[k]
                    if level + 1 < self.tree.depth:
                        choice[i] = int(r.outputs[k][0])
                        decisions[i, level + 1] = choice[i]
                    else:
                        acc[i] = r.outputs[k]
            node, h = branch, new_h
        return {"leaves": node, "acc": acc, "path_decisions": decisions, "bytes": nbytes, "cycles": cycles}

    def expected_bytes(self, leaves: np.ndarray) -> np.ndarray:
        """Sum over levels of the chosen region's bytes (from the leaf: branch at level L = leaf >> (depth-1-L))."""
        d = self.tree.depth
        return np.array([sum(self.parts.region(L, int(leaf) >> (d - 1 - L))["bytes"] for L in range(d))
                         for leaf in leaves])
