"""cocotb testbenches (run through sim.verilator.run_cocotb; see tests/test_rtl_blocks.py)."""
