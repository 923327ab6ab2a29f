"""Generate the SystemVerilog parameters of the on-chip router decision (``hls/rtl/router_decide.sv``).

numpy only (no torch). :func:`write_router_params` writes one ``.sv`` file holding a wrapper module
that instantiates ``router_decide`` with the integer router of one tree node baked in as packed
parameter vectors (``BIAS_INT``, ``U_INT``: element ``j`` at ``[j*W +: W]``, two's complement,
written as sized hex literals of any width), plus a JSON sidecar (``<path>.json``) with the same
values for testbenches and drivers. The wrapper has exactly ``router_decide``'s ports, so it is a
drop-in toplevel / instance; Verilator and Vivado both accept it (no ``$readmemh``, no package
name clashes when a tree has several routers: each gets its own module name).

Values come from :meth:`quant.qtree.QuantRouterNode.integer_params` (keys ``weight_int``,
``bias_int``, ``u_int``, ``c_int``, ``e_int``); :func:`write_router_params_from_integer` takes that
dict directly. ``weight_int`` is the projection MVAU's weight and is not used here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

U_WIDTH = 16  # quant.qtree.ROUTER_PARAM_BITS


def signed_width(values: Sequence[int] | np.ndarray | int) -> int:
    """Smallest two's-complement width holding every value (at least 2 bits)."""
    vals = [int(v) for v in np.atleast_1d(np.asarray(values, dtype=object))]
    w = 2
    for v in vals:
        while not (-(1 << (w - 1)) <= v < (1 << (w - 1))):
            w += 1
    return w


def unsigned_width(value: int) -> int:
    return max(1, int(value).bit_length())


def pack_signed(values: Sequence[int] | np.ndarray, width: int) -> int:
    """Element j at bits [j*width +: width], two's complement."""
    out = 0
    mask = (1 << width) - 1
    for j, v in enumerate(np.asarray(values, dtype=object).ravel().tolist()):
        v = int(v)
        if not -(1 << (width - 1)) <= v < (1 << (width - 1)):
            raise ValueError(f"value {v} does not fit INT{width}")
        out |= (v & mask) << (j * width)
    return out


def _lit(width: int, value: int) -> str:
    return f"{width}'h{value & ((1 << width) - 1):x}"


def router_param_values(bias_int, u_int, c_int: int, e_int: int, *, z_width: int, pe: int = 1,
                        idx_base: int = 0, u_width: int = U_WIDTH, out_width: int = 16) -> dict[str, Any]:
    """The ``router_decide`` parameter set (Python ints) for these integers."""
    bias = [int(v) for v in np.asarray(bias_int).ravel().tolist()]
    u = [int(v) for v in np.asarray(u_int).ravel().tolist()]
    n = len(u)
    if len(bias) != n:
        raise ValueError(f"bias_int has {len(bias)} entries, u_int {n}")
    if n % pe:
        raise ValueError(f"N={n} not divisible by PE={pe}")
    c_int, e_int = int(c_int), int(e_int)
    if e_int < 0:
        raise ValueError("e_int must be >= 0")
    if signed_width(u) > u_width:
        raise ValueError(f"u_int needs {signed_width(u)} bits > UW={u_width}")
    bw, cw, ew = signed_width(bias), signed_width(c_int), unsigned_width(e_int)
    return {"N": n, "PE": int(pe), "ZW": int(z_width), "BW": bw, "UW": int(u_width), "CW": cw, "EW": ew,
            "BIAS_INT": pack_signed(bias, bw), "U_INT": pack_signed(u, u_width),
            "C_INT": c_int & ((1 << cw) - 1), "E_INT": e_int, "IDX_BASE": int(idx_base), "OUT_W": int(out_width),
            # plain values, for the JSON sidecar
            "_bias_int": bias, "_u_int": u, "_c_int": c_int, "_e_int": e_int}


def write_router_params(path: str | Path, bias_int, u_int, c_int: int, e_int: int, *, z_width: int,
                        pe: int = 1, idx_base: int = 0, module_name: str | None = None,
                        u_width: int = U_WIDTH, out_width: int = 16) -> dict[str, Any]:
    """Write ``path`` (a ``.sv`` file with module ``module_name``, default the file's stem) and ``path.json``.

    ``z_width``: bit width of the signed z_acc elements the projection MVAU emits (its output
    datatype ``INT<z_width>``); ``pe``: that MVAU's PE (elements per stream word).
    Returns the parameter values (packed vectors as Python ints).
    """
    path = Path(path)
    name = module_name or path.stem
    p = router_param_values(bias_int, u_int, c_int, e_int, z_width=z_width, pe=pe, idx_base=idx_base,
                            u_width=u_width, out_width=out_width)
    n, bw, uw, cw, ew = p["N"], p["BW"], p["UW"], p["CW"], p["EW"]
    in_word = ((p["PE"] * p["ZW"] + 7) // 8) * 8
    params = [
        ("N", str(n)), ("PE", str(p["PE"])), ("ZW", str(p["ZW"])), ("BW", str(bw)), ("UW", str(uw)),
        ("CW", str(cw)), ("EW", str(ew)),
        ("BIAS_INT", _lit(n * bw, p["BIAS_INT"])), ("U_INT", _lit(n * uw, p["U_INT"])),
        ("C_INT", _lit(cw, p["C_INT"])), ("E_INT", _lit(ew, p["E_INT"])),
        ("IDX_BASE", str(p["IDX_BASE"])), ("OUT_W", str(p["OUT_W"])), ("IN_WORD_W", str(in_word)),
    ]
    plist = ",\n".join(f"    .{k}({v})" for k, v in params)
    text = f"""// Generated by hls/router_params.py: do not edit.
// Router decision with baked-in integers: N={n}, PE={p['PE']}, z_acc INT{p['ZW']},
// bias INT{bw}, u INT{uw}, c = {p['_c_int']} (INT{cw}), E = {p['_e_int']} (UINT{ew}), index = {p['IDX_BASE']} + d.
// bias_int = {p['_bias_int']}
// u_int    = {p['_u_int']}
module {name} (
  input  logic                 ap_clk,
  input  logic                 ap_rst_n,
  input  logic [{in_word - 1}:0]  in0_V_tdata,
  input  logic                 in0_V_tvalid,
  output logic                 in0_V_tready,
  output logic [{p['OUT_W'] - 1}:0]  out0_V_tdata,
  output logic                 out0_V_tvalid,
  input  logic                 out0_V_tready,
  output logic                 decision,
  output logic                 decision_valid
);
  router_decide #(
{plist}
  ) core (.*);
endmodule
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    side = {k: (str(v) if isinstance(v, int) and k in ("BIAS_INT", "U_INT") else v)
            for k, v in p.items() if not k.startswith("_")}
    side.update({"module": name, "IN_WORD_W": in_word, "bias_int": p["_bias_int"], "u_int": p["_u_int"],
                 "c_int": p["_c_int"], "e_int": p["_e_int"]})
    Path(str(path) + ".json").write_text(json.dumps(side, indent=1))
    return p


def write_router_params_from_integer(path: str | Path, params: Mapping[str, Any], *, z_width: int,
                                     pe: int = 1, **kw) -> dict[str, Any]:
    """:func:`write_router_params` from ``QuantRouterNode.integer_params(...)``'s dict."""
    return write_router_params(path, params["bias_int"], params["u_int"], params["c_int"], params["e_int"],
                               z_width=z_width, pe=pe, **kw)
