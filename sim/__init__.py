"""cocotb + Verilator testbenches; built in issue #5."""
