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
         leaf$top.u.genMaster[0]      1
      "design": {"num_cells": 70}
}
"""


def test_hierarchical_stat_counts_every_instance_and_the_glue(tmp_path):
    path = tmp_path / "stat.json"
    path.write_text(STAT)
    totals, rows = yosys_resources.hierarchy_cells(yosys_resources.read_hierarchy(path, "top"), "top", "top")
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


# read_slang --keep-hierarchy: one module per instance, named `<module>$<instance path>`
SLANG_STAT = """{
   "modules": {
      "\\\\sigmabranch_tree_axi": {"num_cells_by_type": {"FDRE": 1, "sigmabranch_tree$sigmabranch_tree_axi.core": 1}},
      "\\\\sigmabranch_tree$sigmabranch_tree_axi.core": {"num_cells_by_type": {
          "mvu$sigmabranch_tree_axi.core.bb_MVAU_rtl_0": 1, "fifo$sigmabranch_tree_axi.core.l0b_s2_fifo": 1,
          "mvu$sigmabranch_tree_axi.core.l0n_MVAU_rtl_0": 1, "arb$sigmabranch_tree_axi.core.ddr_arb": 1, "LUT3": 2,
          "l0_routers$sigmabranch_tree_axi.core.l0_routers": 1}},
      "\\\\l0_routers$sigmabranch_tree_axi.core.l0_routers": {"num_cells_by_type": {"LUT6": 5}},
      "\\\\mvu$sigmabranch_tree_axi.core.bb_MVAU_rtl_0": {"num_cells_by_type": {"DSP48E1": 2, "LUT6": 10}},
      "\\\\mvu$sigmabranch_tree_axi.core.l0n_MVAU_rtl_0": {"num_cells_by_type": {"DSP48E1": 1, "LUT6": 4}},
      "\\\\fifo$sigmabranch_tree_axi.core.l0b_s2_fifo": {"num_cells_by_type": {"RAM64M": 1, "FDRE": 6}},
      "\\\\arb$sigmabranch_tree_axi.core.ddr_arb": {"num_cells_by_type": {"LUT2": 3}}
   }
}
"""


def test_slang_module_names_are_found_and_summed_per_finn_part(tmp_path):
    path = tmp_path / "stat.json"
    path.write_text(SLANG_STAT)
    totals, rows = yosys_resources.hierarchy_cells(yosys_resources.read_hierarchy(path, "sigmabranch_tree_axi"),
                                                   "sigmabranch_tree_axi", "sigmabranch_tree")
    assert {r["instance"] for r in rows} == {"bb_MVAU_rtl_0", "l0b_s2_fifo", "l0n_MVAU_rtl_0", "ddr_arb", "l0_routers",
                                            "(glue)"}
    assert next(r for r in rows if r["instance"] == "(glue)")["LUT"] == 2   # the core's own LUTs; the top's FF too
    finn = [{"part": "backbone", "resources": {"LUT": 5}}, {"part": "level 0 datapath (x1, serves 2 branches)",
                                                            "resources": {"LUT": 7, "DSP": 1}}]
    parts = {p["part"]: p for p in yosys_resources.parts_table(rows, finn)}
    assert (parts["backbone"]["LUT_TOTAL"], parts["backbone"]["DSP"], parts["backbone"]["finn"]) == (10, 2, {"LUT": 5})
    assert (parts["level 0 datapath"]["LUT_TOTAL"], parts["level 0 datapath"]["FF"]) == (4 + 4 + 5, 6)
    assert parts["level 0 datapath"]["finn"]["DSP"] == 1
    assert parts["own blocks"]["LUT_TOTAL"] == 3 + 2 and parts["own blocks"]["finn"] is None
    assert list(parts) == ["backbone", "level 0 datapath", "own blocks"]   # FINN+'s order, own blocks last


def test_module_types_sum_every_instance_of_one_rtl_module(tmp_path):
    path = tmp_path / "stat.json"
    path.write_text(SLANG_STAT)
    types = {r["module"]: r for r in yosys_resources.module_type_cells(
        yosys_resources.read_hierarchy(path, "sigmabranch_tree_axi"), "sigmabranch_tree_axi")}
    assert (types["mvu"]["instances"], types["mvu"]["LUT"], types["mvu"]["DSP"]) == (2, 14, 3)
    assert types["sigmabranch_tree"]["LUT"] == 2 and types["sigmabranch_tree_axi"]["FF"] == 1
    assert next(iter(types)) == "mvu"  # largest first
