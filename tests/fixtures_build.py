"""The tiny trees of tests/fixtures_quant.py exported and built once per test session, shared by
every module and every pytest-xdist worker (one lock per artefact: the first asks makes it, the
others wait and reuse it). Each test module gets its own copy, so it may change it freely.

    def test_x(shared_builds, tmp_path):
        root = shared_builds.copy(tmp_path, "pynq-z2")   # root/export, root/pynq-z2
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from hls.filelock import file_lock

from fixtures_quant import tiny_qtree


class SharedBuilds:
    """Exports (``<root>/<model>-<bits>/export``) and builds (``.../<board>``) of the tiny trees."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _made(self, path: Path, make) -> Path:
        with file_lock(path.parent / f".{path.name}.lock"):
            if not (path / ".complete").is_file():
                shutil.rmtree(path, ignore_errors=True)  # a half-made one from a killed run
                make(path)
                (path / ".complete").write_text("")
        return path

    def export(self, model: str = "edge_cnn", bits: str = "w4a4") -> Path:
        """The shared export folder (read it, do not change it: :meth:`copy` gives a private one)."""
        from quant.export import export_tree

        def make(path):
            qtree, _ = tiny_qtree(bits, model=model)
            manifest = export_tree(qtree, (1, 8, 8), path, progress=False)
            (path.parent / "returned_manifest.json").write_text(json.dumps(manifest))
        return self._made(self.root / f"{model}-{bits}" / "export", make)

    def returned_manifest(self, model: str = "edge_cnn", bits: str = "w4a4") -> dict:
        """What ``export_tree`` returned when it wrote :meth:`export` (tests compare it with tree.json)."""
        return json.loads((self.export(model, bits).parent / "returned_manifest.json").read_text())

    def build(self, board: str, model: str = "edge_cnn", bits: str = "w4a4") -> Path:
        """The shared build folder for ``board``, without HDL (``hls.build.build(..., hdl=False)``): the
        HDL names its own folder, so it is written in each copy that needs it (``vivado_step``)."""
        from hls.build import build
        export = self.export(model, bits)
        return self._made(export.parent / board, lambda path: build(export, board, path, hdl=False))

    def copy(self, dst: Path, *boards: str, model: str = "edge_cnn", bits: str = "w4a4") -> Path:
        """A private copy in ``dst``: ``dst/export`` and ``dst/<board>`` for each board; returns ``dst``."""
        dst, skip = Path(dst), shutil.ignore_patterns(".complete")
        shutil.copytree(self.export(model, bits), dst / "export", ignore=skip)
        for board in boards:
            shutil.copytree(self.build(board, model, bits), dst / board, ignore=skip)
        return dst


def session_root(tmp_path_factory) -> Path:
    """A folder every xdist worker of this session sees (their base temp folders' parent)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-builds"


def tree_sim(tmp_path_factory, shared_builds, board: str = "zcu104", model: str = "edge_cnn"):
    """``sim.tree_nodes.TreeSim`` on a private copy of the shared build of ``model``'s tiny tree."""
    from sim.tree_nodes import TreeSim
    root = shared_builds.copy(tmp_path_factory.mktemp(f"treesim-{model}"), board, model=model)
    return TreeSim(root / board)


def node_input(ts, node: str, n: int, seed: int):
    """``n`` random NHWC integer inputs of a tree node: INT8 images for the backbone, 4-bit
    activations for the others."""
    import numpy as np
    c, h, w = ts.manifest["nodes"][node]["input_shape"][1:]
    lo, hi = (-128, 128) if node == "backbone" else (0, 16)
    return np.random.default_rng(seed).integers(lo, hi, size=(n, h, w, c))

