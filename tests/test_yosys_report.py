"""bench/yosys_resources.py's reading of a hierarchical Yosys `stat -json` (no Yosys needed)."""
import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "yosys_resources.py"
spec = importlib.util.spec_from_file_location("yosys_resources", BENCH)
yosys_resources = importlib.util.module_from_spec(spec)
spec.loader.exec_module(yosys_resources)

# As Yosys 0.23 writes it for top -> (mid -> 2 x leaf) + leaf + 8 FFs: with its plain-text
# instance list leaking into the JSON before "design".
STAT = """{
   "modules": {
      "\\\\leaf": {"num_cells": 4, "num_cells_by_type": {"CARRY4": 2, "FDRE": 8, "LUT2": 8}},
      "\\\\mid": {"num_cells": 2, "num_cells_by_type": {"leaf": 2}},
      "\\\\top": {"num_cells": 18, "num_cells_by_type": {"FDRE": 8, "INV": 8, "leaf": 1, "mid": 1}}
   },
       leaf                          2
      "design": {"num_cells": 70}
}
"""


def test_hierarchical_stat_counts_every_instance_and_the_glue(tmp_path):
    path = tmp_path / "stat.json"
    path.write_text(STAT)
    totals, rows = yosys_resources.hierarchy_cells(path, "top", "top")
    assert totals == {"FDRE": 32, "INV": 8, "CARRY4": 6, "LUT2": 24}
    by_module = {r["module"]: r for r in rows}
    assert (by_module["mid"]["instances"], by_module["mid"]["LUT"], by_module["mid"]["FF"]) == (1, 16, 16)
    assert (by_module["leaf"]["LUT"], by_module["(glue)"]["FF"], by_module["(glue)"]["LUT"]) == (8, 8, 0)
    assert [r["module"] for r in rows][0] == "mid"  # largest first


def test_per_module_elaboration_keeps_the_hierarchy(tmp_path):
    # read_slang flattens by default: without --keep-hierarchy the per-module table has the top only
    def script(keep):
        return yosys_resources.elaborate_script({}, "top", tmp_path / "bb.v", ["DSP48E1"], tmp_path / "n.v",
                                                tmp_path / "s.txt", ["a.sv"], [], keep_hierarchy=keep)
    assert "--keep-hierarchy" in script(True).splitlines()[0]
    assert "--keep-hierarchy" not in script(False)
