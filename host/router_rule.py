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
"""
from __future__ import annotations

import numpy as np


def projection_int(pooled_sum: np.ndarray, weight_int: np.ndarray, bias_int: np.ndarray) -> np.ndarray:
    """``z_int = W_int @ p_int + b_int`` for a batch of integer pooled sums ``(B, C)`` -> ``(B, n)``."""
    return pooled_sum.astype(np.int64) @ weight_int.astype(np.int64).T + bias_int.astype(np.int64)


def router_decision(z_int: np.ndarray, u_int: np.ndarray, c_int: int, e_int: int) -> np.ndarray:
    """Branch (0 or 1) per row of ``z_int`` (B, n), exact integer arithmetic."""
    z = np.asarray(z_int, dtype=np.int64)
    u = np.asarray(u_int, dtype=np.int64)
    n = z.shape[1]
    a = n * (z @ u) - int(u.sum()) * z.sum(1)          # fits int64 for <= 8-bit operands
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
