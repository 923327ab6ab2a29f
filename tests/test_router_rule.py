"""The integer router decision's int64 bounds (host/router_rule.py): a router that fits, one that
would overflow (refused with the node named), and bounds that are the real worst case."""
import numpy as np
import pytest

from host.router_rule import (INT64_MAX, DecisionBoundError, check_decision_bounds, check_router_bounds,
                              decision_bounds, projection_bounds, projection_int, router_decision)

U16 = 2 ** 15 - 1


def test_a_router_that_fits_int64_passes_and_reports_its_bounds():
    u = np.array([U16, -U16] * 8)
    bounds = check_decision_bounds(u, c_int=-U16, e_int=10 ** 6, z_bits=24, z_signed=True, node="router_0_0")
    m = 2 ** 23
    assert bounds["z"] == m and bounds["V"] == 16 ** 2 * m ** 2 <= INT64_MAX
    assert bounds["A"] == m * sum(abs(16 * v - int(u.sum())) for v in u.tolist()) <= INT64_MAX
    # A**2 and c**2 (V + E) are Python ints in router_decision: reported (hardware widths), not limited.
    assert bounds["A**2"] == bounds["A"] ** 2 > INT64_MAX
    assert bounds["c**2*(V+E)"] == U16 ** 2 * (bounds["V"] + 10 ** 6)


def test_a_router_whose_sums_overflow_int64_is_refused_naming_the_node_and_the_value():
    u = np.full(16, U16)
    with pytest.raises(DecisionBoundError, match=r"router router_1_1: the worst case of sum\(z\*z\) is "
                                                 r"\d+ .*does not fit int64") as info:
        check_decision_bounds(u, 5, 0, z_bits=32, z_signed=True, node="router_1_1")
    err = info.value
    assert isinstance(err, ValueError) and err.node == "router_1_1" and err.bound == 16 * 2 ** 62
    # Unsigned 31-bit z: the same n*sum(z*z) term overflows.
    with pytest.raises(DecisionBoundError, match="UINT31"):
        check_decision_bounds(u, 5, 0, z_bits=31, z_signed=False)
    # ... and it is real: numpy's int64 V wraps around there, Python ints do not.
    z = np.array([2 ** 31 - 1, -(2 ** 31)] * 8, dtype=np.int64)
    v64 = 16 * (z * z).sum() - z.sum() ** 2
    v = 16 * sum(int(a) ** 2 for a in z) - sum(int(a) for a in z) ** 2
    assert int(v64) != v


def test_the_bounds_are_reached():
    """Signed z at +-max: A and V reach their bounds exactly (computed as router_decision does)."""
    rng = np.random.default_rng(0)
    u = rng.integers(-U16, U16 + 1, size=8)
    m = 1000
    bounds = decision_bounds(u, 3, 7, z_max=m)
    n, su = len(u), int(u.sum())
    z = (m * np.sign(n * u - su)).astype(np.int64)[None]
    assert abs(int(n * (z @ u)[0] - su * z.sum())) == bounds["A"]
    z = np.array([[m, -m] * (n // 2)], dtype=np.int64)
    assert int(n * (z * z).sum() - z.sum() ** 2) == bounds["V"]
    assert router_decision(z, u, 3, 7).shape == (1,)


def test_projection_bounds_and_the_whole_router_check():
    rng = np.random.default_rng(1)
    w = rng.integers(-7, 8, size=(8, 16))      # INT4 projection weights, 16 channels -> 8 outputs
    b = rng.integers(-500, 500, size=8)
    pool = 16                                  # a 4x4 map
    p = projection_bounds(w, b, 0, 15, pool)   # UINT4 inputs
    assert p["pooled_sum"] == 15 * pool
    # The extreme input per output: every channel at 0 or at its maximum, by the weight's sign.
    for j in range(8):
        hi = projection_int(np.where(w[j] > 0, 15 * pool, 0)[None], w, b)[0, j]
        lo = projection_int(np.where(w[j] < 0, 15 * pool, 0)[None], w, b)[0, j]
        assert max(abs(hi), abs(lo)) <= p["z"]
    assert p["z"] in {abs(int(projection_int(np.where(w[j] * s > 0, 15 * pool, 0)[None], w, b)[0, j]))
                      for j in range(8) for s in (1, -1)}
    bounds = check_router_bounds("router_0_0", w, b, "UINT4", pool, rng.integers(-U16, U16, size=8), -40, 12)
    assert bounds["projection.z"] == p["z"] and bounds["z"] == p["z"]
    # 16-bit activations over a 64x64 map with wide weights: the decision's sums overflow.
    wide = np.full((16, 512), 2 ** 15 - 1)
    with pytest.raises(DecisionBoundError, match=r"router router_2_3: .*inputs UINT16 summed over 4096 positions"):
        check_router_bounds("router_2_3", wide, np.zeros(16, dtype=np.int64), "UINT16", 4096,
                            np.full(16, U16), 1, 0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n = 4, but u_int has 3"):
        decision_bounds([1, 2, 3], 0, 0, z_max=5, n=4)
    with pytest.raises(ValueError, match="e_int"):
        decision_bounds([1, 2, 3], 0, -1, z_max=5)
    with pytest.raises(ValueError, match="bias_int has 2 entries, the projection 3 outputs"):
        projection_bounds(np.ones((3, 4), dtype=np.int64), [0, 0], 0, 15, 4)
