"""Quantised tree: Brevitas layers, the integer router decision, QAT and its checkpoints."""
import copy
import decimal
import math

import brevitas.nn as qnn
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from host.router_rule import projection_int, router_decision
from model.config import TreeConfig, config_from_dict
from model.convert import convert, save_tree
from model.registry import create_model
from model.tree_layout import build_tree
from quant.presets import get_preset
from quant.qat import (active_weight_bytes, freeze_routers, hard_leaves, qtree_from_checkpoint, refit_routers,
                       routing_distillation_loss, run_quantize)
from quant.qtree import quantize_tree, router_agreement


def float_sign_rule(z, u, c, e):
    """The same decision through division and a square root in float64 (an independent path)."""
    z = z.astype(np.float64)
    n = z.shape[1]
    centred = z - z.mean(1, keepdims=True)
    sigma = np.sqrt((centred ** 2).mean(1) + e / n ** 2)
    return (centred @ u / sigma + c > 0).astype(np.int64), np.abs(centred @ u / sigma + c)


@pytest.mark.parametrize("bits", [4, 8])
def test_integer_decision_equals_the_layernorm_sign_rule(bits):
    rng = np.random.default_rng(bits)
    hi = 2 ** (bits - 1) - 1
    z = rng.integers(-hi * 500, hi * 500, size=(2000, 16))
    u = rng.integers(-32767, 32767, size=16)
    for c, e in [(0, 0), (1234, 0), (-50000, 77), (3_000_000, 10_000)]:
        exact = router_decision(z, u, c, e)
        approx, margin = float_sign_rule(z, u, c, e)
        clear = margin > 1e-6 * (np.abs(u).sum() + abs(c))  # float64 cannot settle near-ties
        assert clear.mean() > 0.99 and (exact[clear] == approx[clear]).all()
        assert 0 < exact.mean() < 1 or c != 0


def decimal_layernorm_decision(z_row, u, c, e):
    """``d = u . (z - mean z) / sigma + c`` with ``sigma = sqrt(var z + E / n**2)``, the LayerNorm
    router's formula, in 60-digit decimals (division and square root, not the rule's squares).
    Returns ``(branch, d)``."""
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        z = [decimal.Decimal(int(v)) for v in z_row]
        n = len(z)
        mean = sum(z) / n
        centred = [v - mean for v in z]
        sigma = (sum(v * v for v in centred) / n + decimal.Decimal(int(e)) / n ** 2).sqrt()
        dot = sum(decimal.Decimal(int(w)) * v for w, v in zip(u, centred))
        d = (dot / sigma if sigma else decimal.Decimal(0)) + int(c)
        return int(d > 0), d


def test_ties_go_to_branch_zero_and_no_overflow():
    z = np.zeros((1, 4), dtype=np.int64)          # d == 0 exactly
    assert router_decision(z, np.array([1, -1, 2, 0]), 0, 0).tolist() == [0]
    # Sums at the rule's limits: A**2 reaches ~2e29 and c**2 * (V + E) ~1e27, far past int64.
    rng = np.random.default_rng(0)
    big = rng.integers(-12_000_000, 12_000_000, size=(64, 128))
    u = rng.integers(-32767, 32768, size=128)
    # c = minus a middle row's u . (z - mean) / sigma: both branches occur and that row is a near-tie
    median = sorted(decimal_layernorm_decision(row, u, 0, 1000)[1] for row in big)[32]
    for c in (-int(median), 32767, -32767):
        expected = [decimal_layernorm_decision(row, u, c, 1000) for row in big]
        assert all(abs(d) > 1e-30 for _, d in expected)  # no exact tie: the expectation is unambiguous
        assert router_decision(big, u, c, 1000).tolist() == [branch for branch, _ in expected]
        if c == -int(median):
            assert 0 < sum(branch for branch, _ in expected) < 64
    assert projection_int(np.array([[1, 2]]), np.array([[3, -1]]), np.array([5])).tolist() == [[6]]


def small_edge_tree(seed=0):
    torch.manual_seed(seed)
    dense = create_model("edge_cnn", num_classes=4).eval()
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(64) % 4
    x = torch.randn(64, 1, 8, 8, generator=g) * 0.3
    x[y < 2, :, :4] += 2.0
    tree, _ = convert(dense, "edge_cnn", {"num_classes": 4}, TensorDataset(x, y), TreeConfig(max_samples=64))
    return tree, x


def test_quantize_tree_replaces_every_layer_with_mappable_quantizers():
    tree, x = small_edge_tree()
    qtree = quantize_tree(tree, get_preset("w4a4")).eval()
    count = lambda model, kind: sum(type(m) is kind for m in model.modules())
    assert count(qtree, qnn.QuantConv2d) == count(tree, torch.nn.Conv2d)
    assert count(qtree, qnn.QuantReLU) == count(tree, torch.nn.ReLU)
    # Every Linear but the routers' final one (folded into the integer decision) is quantised.
    assert count(qtree, qnn.QuantLinear) == count(tree, torch.nn.Linear) - len(sum(map(list, tree.routers), []))
    conv = qtree.specialisers[0][1][0][0].conv
    w = conv.quant_weight().int()
    assert isinstance(conv, qnn.QuantConv2d) and w.min() >= -7 and w.max() <= 7  # signed, narrow range
    assert isinstance(qtree.backbone[0], qnn.QuantIdentity)
    logits, leaves = qtree.forward_hard(x)
    assert logits.shape == (64, 4) and leaves.max() < 4
    assert qtree.spec["quant"] == {"name": "w4a4", "weight_bits": 4, "act_bits": 4, "input_bits": 8}
    assert 0.9 <= router_agreement(qtree, x) <= 1.0


def float64_router_margin(router, h):
    """The float LayerNorm router of a quantised router node, from its own parameters in float64
    (quantised projection weights, float bias, LayerNorm, router): ``d = logit1 - logit0`` per input,
    and a bound on how far rounding ``u``, ``c`` and the bias to integers can move it."""
    with torch.no_grad():
        p = h.double().mean((2, 3))                          # h is on the activation grid: exact
        weight = router.proj.quant_weight()
        z = p @ weight.value.double().T + router.proj.bias.double()
        sigma = torch.sqrt(z.var(1, unbiased=False) + router.norm.eps)
        latent = (z - z.mean(1, keepdim=True)) / sigma[:, None] * router.norm.weight.double() + router.norm.bias.double()
        logits = latent @ router.router.weight.double().T + router.router.bias.double()
        w = (router.router.weight[1] - router.router.weight[0]).double()
        u = w * router.norm.weight.double()
        c = float(w @ router.norm.bias.double() + router.router.bias[1] - router.router.bias[0])
    n = z.shape[1]
    step = max(float(u.abs().max()), abs(c)) / (2 ** 15 - 1)  # the 16-bit grid of u and c
    k = float(weight.scale) * float(router.input_act.act_quant.scale()) / (h.shape[2] * h.shape[3])
    # |sum_i du_i (z_i - mean) / sigma| <= n * step / 2, plus step / 2 for c; a bias moved by up to
    # k / 2 per component moves d by at most 2 ||u|| sqrt(n) (k / 2) / sigma. Twice that, for safety.
    bound = 2 * ((n + 1) * step / 2 + float(u.norm()) * n ** 0.5 * k / sigma.numpy())
    return (logits[:, 1] - logits[:, 0]).numpy(), bound


def test_quantized_router_decision_is_the_integer_rule_on_its_integers():
    tree, x = small_edge_tree()
    qtree = quantize_tree(tree, get_preset("w8a8")).eval()
    router = qtree.routers[0][0]
    with torch.no_grad():
        h = qtree.backbone(x)
        # Untrained, this router sends every input one way; move its boundary among the inputs
        # (to their median logit difference) so both branches are tested.
        router.router.bias[1] -= float(np.median(float64_router_margin(router, h)[0]))
    decided = router.decide(h).numpy()
    ints = router.integer_params(h.shape[2] * h.shape[3])
    # The pooled sums are integers of the input activation's grid.
    pooled = router.pooled_sum_int(h)
    assert np.allclose(pooled * ints["act_scale"], h.double().sum((2, 3)).numpy(), rtol=1e-6, atol=1e-9)
    # On those integers it is the LayerNorm sign rule, evaluated here in exact Python integers
    # (the projection) and 60-digit decimals (division and square root), not by the rule's code.
    z = pooled.astype(object) @ ints["weight_int"].astype(object).T + ints["bias_int"].astype(object)
    expected = [decimal_layernorm_decision(row, ints["u_int"], ints["c_int"], ints["e_int"]) for row in z]
    assert all(d != 0 for _, d in expected)  # no exact tie on these inputs: the expectation is unambiguous
    assert decided.tolist() == [branch for branch, _ in expected]
    # ... and it is the float LayerNorm router's choice (float64, from the model's own parameters)
    # wherever rounding u, c and the bias to integers cannot have flipped it.
    d, bound = float64_router_margin(router, h)
    clear = np.abs(d) > bound
    assert clear.mean() >= 0.9 and (decided[clear] == (d[clear] > 0)).all()
    assert 0 < decided.mean() < 1  # both branches are taken: the comparison is not vacuous
    assert (router.float_decide(h).numpy() == decided).mean() >= 0.95


def test_bit_widths_finn_cannot_map_are_refused():
    with pytest.raises(ValueError, match="weight bit width 1"):
        get_preset("w1a4")
    with pytest.raises(ValueError, match="unknown quantisation preset"):
        get_preset("int4")


def test_active_weight_bytes_counts_path_weights_at_the_bit_width():
    tree, _ = small_edge_tree()
    n = sum(m.weight.numel() for part in tree.path_modules(0) for m in part.modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert active_weight_bytes(quantize_tree(tree, get_preset("w4a4")), 4) == math.ceil(n / 2)


def test_routing_distillation_targets_the_float_trees_routing_and_leaves_routers_alone():
    teacher, _ = small_edge_tree()
    student = copy.deepcopy(teacher).eval()
    cfg = config_from_dict({"quant": {"route_distill": 2.0}})
    loss_fn = routing_distillation_loss(teacher, cfg)
    torch.manual_seed(1)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    # the student is the teacher: no latent mismatch, so the loss is the specialist loss under the
    # teacher's routing plus 2 x the cross-entropy of the teacher's own hard leaf
    with torch.no_grad():
        leaf_logits, log_probs = teacher(x, mode="leaves")
        leaf_ce = torch.stack([torch.nn.functional.cross_entropy(leaf_logits[:, k], y, reduction="none")
                               for k in range(leaf_logits.shape[1])], 1)
        expected = (log_probs.exp() * leaf_ce).sum(1).mean() - 2.0 * log_probs.max(1).values.mean()
    assert torch.allclose(loss_fn(student, x, y), expected, rtol=1e-5)
    # a trained quantised student: its features move, its routers do not
    qtree = quantize_tree(teacher, get_preset("w4a4")).train()
    freeze_routers(qtree)
    routers_before = copy.deepcopy(qtree.routers.state_dict())
    backbone_before = copy.deepcopy(qtree.backbone.state_dict())
    optimiser = torch.optim.Adam([p for p in qtree.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimiser.zero_grad()
        loss_fn(qtree, x, y).backward()
        optimiser.step()
    assert all(torch.equal(v, qtree.routers.state_dict()[k]) for k, v in routers_before.items())
    assert any(not torch.equal(v, qtree.backbone.state_dict()[k]) for k, v in backbone_before.items())


def test_router_refit_restores_the_float_decisions_with_the_final_linear_only():
    teacher, x = small_edge_tree()
    qtree = quantize_tree(teacher, get_preset("w2a2")).train()   # coarse: many decisions flip
    with torch.no_grad():
        for _ in range(3):
            qtree(x, mode="leaves")
    qtree.eval()
    float_leaves = hard_leaves(teacher.eval(), x)
    before = (hard_leaves(qtree, x) == float_leaves).double().mean().item()
    proj_before = copy.deepcopy([[r.proj.state_dict(), r.norm.state_dict()] for level in qtree.routers for r in level])
    report = refit_routers(qtree, teacher, TensorDataset(x, torch.zeros(len(x))), samples=64, batch_size=16)
    assert [r["inputs"] for r in report][0] == 64 and sum(r["inputs"] for r in report[1:]) == 64
    assert all(r["agreement_after"] >= r["agreement_before"] for r in report)
    after = (hard_leaves(qtree, x) == float_leaves).double().mean().item()
    assert after >= before and (before < 1.0 and after > before)   # something to restore, and restored
    # only each router's final linear moved: projections and LayerNorms are as they were
    for (proj, norm), router in zip(proj_before, (r for level in qtree.routers for r in level)):
        assert all(torch.equal(v, router.proj.state_dict()[k]) for k, v in proj.items())
        assert all(torch.equal(v, router.norm.state_dict()[k]) for k, v in norm.items())


@pytest.mark.slow
def test_qat_runs_and_its_checkpoint_rebuilds(tmp_path):
    tree, _ = small_edge_tree()
    tree.spec["dense_args"] = {"num_classes": 10}
    dense = create_model("edge_cnn", num_classes=10)
    tree = build_tree(dense, tree.spec)  # a digits-sized tree (10 classes)
    save_tree(tmp_path / "tree.pt", tree)
    cfg = config_from_dict({"model": {"name": "edge_cnn"}, "data": {"name": "digits"}, "epochs": 1,
                            "quant": {"bits": "w4a4", "calibration_batches": 2}, "optim": {"name": "adam", "lr": 1e-3}})
    metrics = run_quantize(tmp_path / "tree.pt", cfg, tmp_path / "q", device="cpu")
    assert metrics["bits"] == "w4a4" and 0 <= metrics["router_agreement"] <= 1
    assert 0 <= metrics["leaf_agreement"] <= 100 and metrics["route_distill"] == 1.0
    assert len(metrics["router_refit"]["nodes"]) == 3   # refit on by default, the checkpoint holds it
    assert metrics["active_weight_bytes"] == active_weight_bytes(tree, 4)
    qtree, _ = qtree_from_checkpoint(tmp_path / "q" / "checkpoint.pt")
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        first = qtree.eval()(x)
        again = qtree_from_checkpoint(tmp_path / "q" / "checkpoint.pt")[0].eval()(x)
    assert torch.equal(first, again)
