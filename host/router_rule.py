"""The router's hard decision in integers: the rule the on-chip router block computes.

numpy only (this runs on a PYNQ image). The float router is
``pool -> linear (W, b) -> LayerNorm (gamma, beta, eps) -> linear (R, r) -> argmax of 2``.
Only the sign of ``d = logit1 - logit0`` matters. With ``w = R1 - R0``, ``u = w * gamma`` and
``c = w . beta + r1 - r0``, and ``z = K * z_int`` the projection in integers::

    d > 0  <=>  A + c * sqrt(V + E) > 0,
    A = n * sum(u * z_int) - sum(u) * sum(z_int)      (n * u.(z - mean z), scaled)
    V = n * sum(z_int**2) - sum(z_int)**2              (n**2 * var(z), scaled)
    E = n**2 * eps / K**2                              (LayerNorm's eps in the same units)

so no division and no square root is needed: compare ``A**2`` with ``c**2 * (V + E)`` by sign
cases. ``u``, ``c`` and ``E`` are integers after quantisation (``quant/``), so the decision is
exact. Branch 1 iff ``d > 0``; a tie (``d == 0``) goes to branch 0, like ``argmax``.

Integer widths. :func:`projection_int` and the sums of :func:`router_decision` (``z.u``,
``sum z``, ``sum z**2``, ``A``, ``V``) are numpy int64; ``A**2``, ``V + E`` and ``c**2 * (V + E)``
are Python ints (exact at any size). With ``m = max |z_int|`` the int64 ones are bounded by
``|A| <= m * sum_j |n*u_j - sum(u)|`` and ``0 <= V <= n*sum(z**2) <= n**2 * m**2`` (the bounds of
every term: :func:`decision_bounds`), which must stay below ``2**63``: for 16-bit ``u`` and
``n = 16`` that holds up to ``m`` of about ``2**27``. :func:`check_router_bounds` (called by
``quant/export.py`` for every router it exports) proves it from the router's input datatype,
pool size and integer weights, and raises :class:`DecisionBoundError` otherwise.
"""
from __future__ import annotations

from typing import Any

import numpy as np

INT64_MAX = 2 ** 63 - 1


class DecisionBoundError(ValueError):
    """A router's integer decision could overflow int64: names the router node, the quantity and
    its worst-case magnitude."""

    def __init__(self, node: str, quantity: str, bound: int, detail: str = ""):
        self.node, self.quantity, self.bound = node, quantity, int(bound)
        super().__init__(f"router {node}: the worst case of {quantity} is {bound} (|value| < 2**"
                         f"{int(bound).bit_length()}), which does not fit int64 (|value| <= 2**63 - 1) in the integer "
                         f"decision rule (host/router_rule.py){'; ' + detail if detail else ''}: narrower router "
                         "inputs or projection weights, or fewer projection outputs, are needed")


def _ints(values) -> list[int]:
    return [int(v) for v in np.asarray(values).ravel().tolist()]


def projection_bounds(weight_int, bias_int, in_lo: int, in_hi: int, pool_size: int) -> dict[str, int]:
    """Worst-case magnitudes of :func:`projection_int`'s int64 terms when the pooled sums add up
    ``pool_size`` inputs in ``[in_lo, in_hi]``: ``pooled_sum``, ``W*p`` (one product), ``W@p``
    (the widest row, every partial sum included) and ``z`` (``W@p + b``: ``max |z_int|``)."""
    w = np.asarray(weight_int, dtype=object)
    w = w.reshape(w.shape[0], -1) if w.ndim else w.reshape(1, 1)
    bias = _ints(bias_int)
    p_lo, p_hi = int(pool_size) * int(in_lo), int(pool_size) * int(in_hi)
    p_max = max(abs(p_lo), abs(p_hi))
    rows = [_ints(row) for row in w.tolist()] if w.size else []
    if len(bias) != len(rows):
        raise ValueError(f"bias_int has {len(bias)} entries, the projection {len(rows)} outputs")
    w_abs = max((abs(v) for row in rows for v in row), default=0)
    wp = max((sum(abs(v) for v in row) * p_max for row in rows), default=0)
    z = 0
    for row, b in zip(rows, bias):
        hi = b + sum(max(v * p_lo, v * p_hi) for v in row)
        lo = b + sum(min(v * p_lo, v * p_hi) for v in row)
        z = max(z, abs(hi), abs(lo))
    return {"pooled_sum": p_max, "W*p": w_abs * p_max, "W@p": wp, "z": z}


# The terms router_decision computes in numpy int64 (the others are Python ints).
INT64_TERMS = ("z", "z*u", "z.u", "n*z.u", "sum(u)", "sum(z)", "sum(u)*sum(z)", "A",
               "z*z", "sum(z*z)", "n*sum(z*z)", "sum(z)**2", "V")


def decision_bounds(u_int, c_int: int, e_int: int, z_max: int, n: int | None = None) -> dict[str, int]:
    """Worst-case magnitude of every intermediate of :func:`router_decision` for ``|z_int| <= z_max``
    (Python ints): the int64 terms (:data:`INT64_TERMS`) and ``E``, ``V+E``, ``A**2``,
    ``c**2*(V+E)`` (Python ints there; the width the on-chip block needs for them)."""
    u = _ints(u_int)
    n = len(u) if n is None else int(n)
    if n != len(u):
        raise ValueError(f"n = {n}, but u_int has {len(u)} entries")
    c, e, m = int(c_int), int(e_int), int(z_max)
    if e < 0 or m < 0:
        raise ValueError(f"e_int ({e}) and z_max ({m}) must be >= 0")
    su, su_abs = sum(u), sum(abs(v) for v in u)
    b = {"z": m, "z*u": m * max((abs(v) for v in u), default=0), "z.u": m * su_abs, "n*z.u": n * m * su_abs,
         "sum(u)": abs(su), "sum(z)": n * m, "sum(u)*sum(z)": abs(su) * n * m,
         "A": m * sum(abs(n * v - su) for v in u),
         "z*z": m * m, "sum(z*z)": n * m * m, "n*sum(z*z)": n * n * m * m, "sum(z)**2": (n * m) ** 2,
         "V": n * n * m * m}                          # 0 <= V <= n * sum(z*z)
    b.update({"E": e, "V+E": b["V"] + e})
    b.update({"A**2": b["A"] ** 2, "c**2*(V+E)": c * c * b["V+E"]})
    return b


def _check_int64(bounds: dict[str, int], terms, node: str, detail: str) -> None:
    for name in terms:
        if bounds[name] > INT64_MAX:
            raise DecisionBoundError(node, name, bounds[name], detail)


def check_decision_bounds(u_int, c_int: int, e_int: int, z_bits: int, z_signed: bool = True, n: int | None = None,
                          *, node: str = "router") -> dict[str, int]:
    """:func:`decision_bounds` for a projection output ``z_int`` of datatype ``INT<z_bits>``
    (``UINT<z_bits>`` if not ``z_signed``); :class:`DecisionBoundError` (a ``ValueError`` naming
    ``node``) where an int64 term could overflow. Returns the bounds."""
    z_max = 2 ** (int(z_bits) - 1) if z_signed else 2 ** int(z_bits) - 1
    bounds = decision_bounds(u_int, c_int, e_int, z_max, n)
    _check_int64(bounds, INT64_TERMS, node, f"z_int {'INT' if z_signed else 'UINT'}{int(z_bits)}, "
                 f"n = {len(_ints(u_int)) if n is None else n}")
    return bounds


def check_router_bounds(node: str, weight_int, bias_int, input_datatype: str, pool_size: int, u_int, c_int: int,
                        e_int: int) -> dict[str, int]:
    """The whole integer router of ``node`` (:func:`projection_int` then :func:`router_decision`)
    against int64, from its input datatype (``"UINT4"``: the activations the pool adds up), the pool
    size (positions summed) and its integers; :class:`DecisionBoundError` if a term could
    overflow. Returns every bound (the projection's prefixed ``projection.``)."""
    from .int_reference import datatype_range  # lazy: int_reference imports this module
    lo, hi = datatype_range(input_datatype)
    proj = projection_bounds(weight_int, bias_int, lo, hi, pool_size)
    detail = f"inputs {input_datatype} summed over {int(pool_size)} positions, max |z_int| = {proj['z']}"
    _check_int64(proj, proj, node, detail)
    bounds = decision_bounds(u_int, c_int, e_int, proj["z"])
    _check_int64(bounds, INT64_TERMS, node, detail + f", n = {len(_ints(u_int))}")
    return {**{f"projection.{k}": v for k, v in proj.items()}, **bounds}


def projection_int(pooled_sum: np.ndarray, weight_int: np.ndarray, bias_int: np.ndarray) -> np.ndarray:
    """``z_int = W_int @ p_int + b_int`` for a batch of integer pooled sums ``(B, C)`` -> ``(B, n)``."""
    return pooled_sum.astype(np.int64) @ weight_int.astype(np.int64).T + bias_int.astype(np.int64)


def router_decision(z_int: np.ndarray, u_int: np.ndarray, c_int: int, e_int: int) -> np.ndarray:
    """Branch (0 or 1) per row of ``z_int`` (B, n), exact integer arithmetic."""
    z = np.asarray(z_int, dtype=np.int64)
    u = np.asarray(u_int, dtype=np.int64)
    n = z.shape[1]
    # int64: |A| <= max|z| * sum_j |n*u_j - sum(u)|, 0 <= V <= n**2 * max|z|**2 (every term bounded
    # likewise: decision_bounds); check_router_bounds proves both < 2**63 at export.
    a = n * (z @ u) - int(u.sum()) * z.sum(1)
    v = n * (z * z).sum(1) - z.sum(1) ** 2
    c, e = int(c_int), int(e_int)
    out = np.zeros(len(z), dtype=np.int64)
    for i, (ai, vi) in enumerate(zip(a.tolist(), v.tolist())):
        radicand = vi + e                                # >= 0: V >= 0 (Cauchy-Schwarz), E >= 0
        # Python ints: A**2 and c**2 * (V + E) overflow int64.
        if c >= 0:
            positive = ai > 0 or (c > 0 and c * c * radicand > ai * ai)
        else:
            positive = ai > 0 and ai * ai > c * c * radicand
        out[i] = int(positive)
    return out
