"""Every hardware node type of the tree in cocotb + Verilator, against the integer reference.

Built from ``sigmabranch build``'s output (``nodes/<node>.hw.onnx``, ``weights.bin/json``,
``export/``), stitched by :mod:`hls.stitch` into one SystemVerilog top per part and driven by
``sim/tb/test_tree_chain.py`` with random valid/ready on every stream and random DDR stalls::

    from sim.tree_nodes import TreeSim
    ts = TreeSim("build/zcu104")
    y = ts.backbone(x_int)                        # (B, H, W, C) ints, vs IntegerTree node "backbone"
    d = ts.router(0, 0, h_int)                    # decisions, vs IntegerTree.decide
    r = ts.level(0, 1, h_int)                     # branch_0_1 -> router_1_1 from DDR region 1 of level 0
    r.outputs, r.taps[...], r.bytes, r.cycles     # per inference
    acc = ts.level(1, 2, h_int).outputs           # last level: branch_1_2 -> head_2 accumulators

Parts: the backbone (every FINN+ RTL layer, max-pools by ``hls/rtl/stream_maxpool.sv``); the root
router (``global_sum_pool`` -> projection ``MVAU_rtl`` from its memstream -> ``router_decide``); a
level datapath (the level's branch, then the node below it: the next level's router or the leaf
head), whose ``external_mem`` MVAUs fetch the chosen branch's region from the DDR model: the top's
``region_base`` is ``weights_base + level.base + branch * level.region_stride`` and one index token
(0) per inference starts every fetcher of the level once. One Verilator build serves all branches
of a level (module names are level-generic; the branches' thresholds are ``$readmemh`` files copied
into the run directory, the routers of the next level are selected by ``branch_sel``).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from host.int_reference import IntegerTree
from sim.verilator import cache_root, run_cocotb
from sim.words import pack_words, unpack_words

WEIGHTS_BASE = 0x1000_0000   # where the testbench's DDR model places weights.bin
RTL_FORK = Path(__file__).resolve().parents[1] / "hls" / "rtl" / "stream_fork.sv"


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
    """Stitched tops of one ``sigmabranch build`` output, simulated part by part."""

    def __init__(self, build_dir: str | Path, work_dir: str | Path | None = None):
        self.build_dir = Path(build_dir)
        self.driver = json.loads((self.build_dir / "driver.json").read_text())
        self.weights = json.loads((self.build_dir / "weights.json").read_text())
        self.tree = IntegerTree.load(self.build_dir / "export")
        self.manifest = self.tree.manifest
        key = hashlib.sha256(str(self.build_dir.resolve()).encode() + (self.build_dir / "weights.json").read_bytes()
                             + (self.build_dir / "export" / "tree.json").read_bytes()).hexdigest()[:12]
        self.work = Path(work_dir) if work_dir else cache_root() / "tree-hdl" / key
        self.part, self.clk_ns = self.driver["part"], float(self.driver["clk_ns"])
        self._models: dict[tuple[str, str], Any] = {}
        from sim.finn_rtllib import ensure_finn_settings
        ensure_finn_settings()

    # ----------------------------------------------------------------- preparation
    def prepared(self, node: str, prefix: str):
        """``nodes/<node>.hw.onnx`` with DWCs, unique names (``prefix``) and HDL, cached on disk."""
        from qonnx.core.modelwrapper import ModelWrapper

        from hls.stitch import prepare_node
        if (node, prefix) in self._models:
            return self._models[(node, prefix)]
        d = self.work / prefix / node
        saved = d / "prepared.onnx"
        if saved.exists():
            model = ModelWrapper(str(saved))
        else:
            if d.exists():
                shutil.rmtree(d)
            model = prepare_node(ModelWrapper(str(self.build_dir / "nodes" / f"{node}.hw.onnx")), self.part,
                                 self.clk_ns, prefix, d)
            model.save(str(saved))
        self._models[(node, prefix)] = model
        return model

    def _region(self, level: int, branch: int) -> dict[str, Any]:
        return self.weights["levels"][level]["regions"][branch]

    def region_base(self, level: int, branch: int) -> int:
        lv = self.weights["levels"][level]
        return WEIGHTS_BASE + lv["base"] + branch * lv["region_stride"]

    def _stages(self, node: str, prefix: str, layers=None):
        from hls.stitch import annotate_fetchers, node_stages
        model = self.prepared(node, prefix)
        stages = node_stages(model, prefix)
        if layers is not None:
            names = {n.name: (node, n.name[len(prefix) + 1:]) for n in model.graph.node}
            annotate_fetchers(stages, model, layers, names)
        else:
            annotate_fetchers(stages, model, [], {})
        return model, stages

    # ----------------------------------------------------------------- parts
    def part_backbone(self):
        _, stages = self._stages("backbone", "bb")
        return "tree_backbone", stages, {}

    def part_router(self, level: int, node: int):
        from hls.stitch import router_stage
        name = IntegerTree.router_name(level, node)
        prefix = f"r{level}{node}"
        model, stages = self._stages(name, prefix)
        stages.append(router_stage(model, self.manifest["nodes"][name]["decision"], f"{prefix}_decide",
                                   self.work / prefix / "gen"))
        return f"tree_{prefix}", stages, {}

    def part_level(self, level: int, branch: int):
        """The level's datapath with branch ``branch``'s thresholds (its MVAU weights come from DDR)."""
        from hls.stitch import router_select_stage
        depth = self.tree.depth
        n_branches = 2 ** (level + 1)
        layers = self._region(level, branch)["layers"]
        # level-generic prefixes: the same modules for every branch of the level
        bmodel, bstages = self._stages(IntegerTree.branch_name(level, branch), f"l{level}b", layers)
        below = (IntegerTree.router_name(level + 1, branch) if level + 1 < depth else IntegerTree.head_name(branch))
        nmodel, nstages = self._stages(below, f"l{level}n", layers)
        if level + 1 < depth:
            decisions = [self.manifest["nodes"][IntegerTree.router_name(level + 1, b)]["decision"]
                         for b in range(n_branches)]
            nstages.append(router_select_stage(nmodel, decisions, f"l{level}_routers", self.work / f"l{level}n" / "gen"))
        return f"tree_l{level}", bstages + nstages, {"tap": len(bstages) - 1, "below": below}

    def part_tree(self):
        """The whole tree as one stitched top (hls.stitch.write_tree_top's inputs)."""
        from hls.stitch import LevelPart, multiset_thresholds, router_select_stage
        depth = self.tree.depth
        _, bb = self._stages("backbone", "bb")
        _, rr, _ = self.part_router(0, 0)
        bb_words = self._n_out("backbone") // bb[-1].out_elem[1]
        levels = []
        for L in range(depth):
            nb = 2 ** (L + 1)
            per_branch = [self._stages(IntegerTree.branch_name(L, b), f"l{L}b", self._region(L, b)["layers"])[1]
                          for b in range(nb)]
            bstages = list(per_branch[0])
            for i, st in enumerate(bstages):
                if "Thresholding" in st.module:
                    bstages[i] = multiset_thresholds([pb[i] for pb in per_branch], self.work / f"l{L}b" / "sets", "sel")
            below0 = IntegerTree.router_name(L + 1, 0) if L + 1 < depth else IntegerTree.head_name(0)
            nmodel, nstages = self._stages(below0, f"l{L}n", self._region(L, 0)["layers"])
            if any("Thresholding" in st.module for st in nstages):
                raise NotImplementedError(f"{below0}: thresholds in the node below a branch are not stitched")
            if L + 1 < depth:
                decisions = [self.manifest["nodes"][IntegerTree.router_name(L + 1, b)]["decision"] for b in range(nb)]
                nstages.append(router_select_stage(nmodel, decisions, f"l{L}_routers", self.work / f"l{L}n" / "gen"))
                out_words = 1
            else:
                out_words = self.manifest["num_classes"] // nstages[-1].out_elem[1]
            in_node = "backbone" if L == 0 else IntegerTree.branch_name(L - 1, 0)
            fmap_words = self._n_out(in_node) // (bb[-1].out_elem[1] if L == 0 else levels[-1].branch[-1].out_elem[1])
            lv = self.weights["levels"][L]
            levels.append(LevelPart(bstages, nstages, nb, lv["base"], lv["region_stride"], fmap_words, out_words))
        return bb, rr, levels, bb_words

    def tree_top(self, x_int: np.ndarray, *, p_valid: float = 0.7, p_ready: float = 0.7, p_rvalid: float = 0.8,
                 p_arready: float = 0.7, seed: int = 0, max_cycles: int = 400_000) -> ChainResult:
        """Hard-routed inference in the stitched whole-tree top (one image after another): outputs
        are the leaf head's accumulators, ``info["leaves"]`` the leaf per image, ``bytes`` the DDR
        bytes the tree fetched per inference, ``cycles`` image-in to last accumulator."""
        from hls.stitch import stage_files, write_tree_top
        bb, rr, levels, bb_words = self.part_tree()
        gen = self.work / "tops"
        info = write_tree_top(gen / "tree_top.sv", "tree_top", bb, rr, levels, bb_words)
        stages = bb + rr + [st for lv in levels for st in lv.branch + lv.below]
        srcs, incs, data = stage_files(stages)
        srcs = [RTL_FORK] + srcs
        in_bits, in_pe, _ = info["in_elem"]
        out_bits, out_pe, out_signed = info["out_elem"]
        n_out = self.manifest["num_classes"] // out_pe
        frames = [{"in": [hex(w) for w in pack_words(x, in_bits, in_pe)], "n_out": n_out, "idx": False} for x in x_int]
        cfg = {"frames": frames, "p_valid": p_valid, "p_ready": p_ready, "p_rvalid": p_rvalid, "p_arready": p_arready,
               "seed": seed, "max_cycles": max_cycles, "taps": [],
               "memory": {"file": str((self.build_dir / "weights.bin").resolve()), "base": WEIGHTS_BASE}}
        res = run_cocotb(srcs + [gen / "tree_top.sv"], "tree_top", "sim.tb.test_tree_chain", includes=incs,
                         defines={"FINN_SIMULATION": 1}, config=cfg, copy_files=data)
        got = json.loads((res.test_dir / "outputs.json").read_text())
        outs = [unpack_words([int(w, 16) for w in g["out"]], out_bits, out_pe, out_signed) for g in got]
        info["leaves"] = [g["leaf"] for g in got]
        return ChainResult(outs, {}, [g["bytes"] for g in got], [g["cycles"] for g in got],
                           [[tuple(b) for b in g["bursts"]] for g in got], res.build.seconds, res.sim_seconds,
                           res.build.cached, info)

    # ----------------------------------------------------------------- running
    def run_part(self, top: str, stages, frames_in: list[np.ndarray], *, region_base: list[int] | None = None,
                 branch_sel: int | None = None, taps: tuple[int, ...] = (), expect_bytes: list[int] | None = None,
                 p_valid: float = 0.7, p_ready: float = 0.7, p_rvalid: float = 0.8, p_arready: float = 0.7,
                 seed: int = 0, max_cycles: int = 200_000, prefetch_settle: int | None = None) -> ChainResult:
        from hls.stitch import stage_files, write_chain_top
        gen = self.work / "tops"
        info = write_chain_top(gen / f"{top}.sv", top, stages, taps=taps)
        srcs, incs, data = stage_files(stages)
        in_bits, in_pe, _ = info["in_elem"]
        out_bits, out_pe, out_signed = info["out_elem"]
        n_out_elems = self._out_elems(stages)
        frames = []
        for i, x in enumerate(frames_in):
            fr = {"in": [hex(w) for w in pack_words(x, in_bits, in_pe)], "n_out": n_out_elems // out_pe,
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
               "memory": {"file": str((self.build_dir / "weights.bin").resolve()), "base": WEIGHTS_BASE}
               if info["n_fetchers"] else None}
        if branch_sel is not None:
            cfg["branch_sel"] = int(branch_sel)
        res = run_cocotb(srcs + [gen / f"{top}.sv"], top, "sim.tb.test_tree_chain", includes=incs,
                         defines={"FINN_SIMULATION": 1}, config=cfg, copy_files=data)
        got = json.loads((res.test_dir / "outputs.json").read_text())
        outs = [unpack_words([int(w, 16) for w in g["out"]], out_bits, out_pe, out_signed) for g in got]
        tap_out = {t: [unpack_words([int(w, 16) for w in g["taps"][str(t)]], *info["taps"][t][:2], info["taps"][t][2])
                       for g in got] for t in taps}
        return ChainResult(outs, tap_out, [g["bytes"] for g in got], [g["cycles"] for g in got],
                           [[tuple(b) for b in g["bursts"]] for g in got], res.build.seconds, res.sim_seconds,
                           res.build.cached, info)

    @staticmethod
    def _out_elems(stages) -> int:
        """Output elements per inference: 1 decision after a router, else what the caller set."""
        last = stages[-1]
        if last.module.endswith("_decide") or last.aux.get("sel_w"):
            return 1
        if "n_out_elems" not in last.aux:
            raise ValueError(f"{last.name}: output size per inference not set")
        return int(last.aux["n_out_elems"])

    # ----------------------------------------------------------------- node types vs the reference
    def _n_out(self, node: str) -> int:
        return int(np.prod(self.manifest["nodes"][node]["output_shape"][1:]))

    def backbone(self, x_int: np.ndarray, **kw) -> ChainResult:
        """``x_int``: (B, H, W, C) NHWC integers. Outputs: per image the NHWC feature map (flat)."""
        top, stages, _ = self.part_backbone()
        stages[-1].aux["n_out_elems"] = self._n_out("backbone")
        return self.run_part(top, stages, list(x_int), **kw)

    def router(self, level: int, node: int, h_int: np.ndarray, **kw) -> ChainResult:
        """Outputs: per feature map the decision word (``router_decide``: 0 + d)."""
        top, stages, _ = self.part_router(level, node)
        return self.run_part(top, stages, list(h_int), **kw)

    def level(self, level: int, branch: int, h_int: np.ndarray, prefetch: bool = False, **kw) -> ChainResult:
        """The level datapath computing branch ``branch`` (and the node below it) on each map of
        ``h_int``; ``taps[tap]`` holds the branch's output, ``outputs`` the router decision (or the
        head's accumulators), ``bytes`` the DDR bytes served per inference."""
        top, stages, meta = self.part_level(level, branch)
        if meta["below"].startswith("head_"):
            stages[-1].aux["n_out_elems"] = self._n_out(meta["below"])
        n = len(h_int)
        region = self._region(level, branch)
        if prefetch:   # settle: the local buffers fill at SIMD weights a cycle after the bytes arrive
            kw["prefetch_settle"] = sum(la["MH"] * la["MW"] // la["SIMD"] for la in region["layers"]) + 200
        res = self.run_part(top, stages, list(h_int), region_base=[self.region_base(level, branch)] * n,
                            branch_sel=branch if not meta["below"].startswith("head_") else None,
                            taps=(meta["tap"],), expect_bytes=[region["bytes"]] * n, **kw)
        res.info.update(meta, region_bytes=region["bytes"], region_offset=region["offset"])
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
        return np.array([sum(self._region(L, int(leaf) >> (d - 1 - L))["bytes"] for L in range(d)) for leaf in leaves])
