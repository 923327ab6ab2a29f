"""Conversion (Phases 0-5), its degenerate cases, the fine-tuning loss, checkpoints and the demo."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from model.checkpoint import CheckpointError
from model.config import TreeConfig
from model.convert import (ConversionError, convert, cosine_silhouette, save_tree, select_channels, spherical_kmeans,
                           tree_from_checkpoint)
from model.config import TrainConfig
from model.config import ConfigError
from model.finetune import (balance_loss, balance_score, distill_loss, load_teacher, margin_loss, sigma_branch_loss,
                            tree_loss)
from model.registry import create_model


def clustered_digits_like(n=96, seed=0):
    """Inputs from two well-separated families, so k-means has something to find."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.2
    x[y < 2, :, :4] += 2.0
    x[y >= 2, :, 4:] += 2.0
    return TensorDataset(x, y)


def converted(init="activation", n=96, depth=2, seed=0, data=None):
    torch.manual_seed(seed)
    dense = create_model("edge_cnn", num_classes=4).eval()
    cfg = TreeConfig(depth=depth, init=init, max_samples=n)
    return dense, *convert(dense, "edge_cnn", {"num_classes": 4}, data or clustered_digits_like(n), cfg, seed=seed)


def test_spherical_kmeans_separates_two_directions_and_is_seeded():
    rng = np.random.default_rng(0)
    a = rng.normal([5, 0, 0], 0.3, size=(40, 3))
    b = rng.normal([0, 5, 0], 0.3, size=(30, 3))
    centroids, assign = spherical_kmeans(np.concatenate([a, b]), seed=3)
    assert sorted(np.bincount(assign).tolist()) == [30, 40]
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1)
    assert np.array_equal(assign, spherical_kmeans(np.concatenate([a, b]), seed=3)[1])


def test_select_channels_hand_case():
    m0 = torch.tensor([1.0, 0.9, 0.0, 0.8, 0.1, 0.5])
    m1 = torch.tensor([1.0, 0.0, 0.9, 0.7, 0.2, 0.5])
    (b0, b1), shared = select_channels(m0, m1, width=4, alpha=0.5)
    # min over clusters: [1, 0, 0, .7, .1, .5] -> shared {0, 3}; contrast picks 1,5 vs 2,4.
    assert shared.tolist() == [0, 3]
    assert b0.tolist() == [0, 1, 3, 5] and b1.tolist() == [0, 2, 3, 4]


def test_router_decision_is_the_kmeans_partition_and_channels_are_copied():
    dense, tree, report = converted()
    root = report["nodes"][0]
    assert root["samples"] == 96 and sum(root["cluster_sizes"]) == 96 and min(root["cluster_sizes"]) > 0
    assert all(node["recovery"] is None for node in report["nodes"])
    # Each level-1 branch: 91 channels, half of them shared.
    assert [len(i) for i in tree.spec["out_indices"][0]] == [91, 91]
    shared = set(tree.spec["out_indices"][0][0]) & set(tree.spec["out_indices"][0][1])
    assert len(shared) >= round(0.5 * 91)
    # The router on the k-means latents reproduces the clusters it was initialised from.
    x = clustered_digits_like()[:][0]
    with torch.no_grad():
        latents = tree.routers[0][0].eval().latent(tree.backbone(x))
        decision = tree.routers[0][0].router(latents).argmax(1)
    _, assign = spherical_kmeans(latents.numpy(), seed=0)
    assert np.bincount(decision.numpy(), minlength=2).tolist() == root["cluster_sizes"]
    assert (decision.numpy() == assign).all() or (decision.numpy() == 1 - assign).all()
    # Phase 2 copies: branch 0's last conv holds the dense weights of its channels.
    idx = torch.tensor(tree.spec["out_indices"][0][0])
    dense_w = dense.block3[1].conv.weight[idx]
    assert torch.equal(tree.specialisers[0][0][0][1].conv.weight, dense_w[:, tree_inner_rows(tree, dense)])
    # Phase 5: leaf heads hold the dense classifier's columns, the bias is shared.
    leaf_idx = torch.tensor(tree.spec["out_indices"][1][3])
    assert torch.equal(tree.heads[3][2].weight, dense.fc.weight[:, leaf_idx])
    assert torch.equal(tree.heads[3][2].bias, dense.fc.bias)


def tree_inner_rows(tree, dense):
    """The inner (first-conv) channels the level-1 specialisers kept: the top L1 filters of the dense conv."""
    k = tree.specialisers[0][0][0][0].conv.out_channels
    return dense.block3[0].conv.weight.flatten(1).abs().sum(1).topk(k).indices.sort().values


def test_random_partition_ablation_keeps_sizes_but_changes_channels():
    _, tree_act, _ = converted("activation")
    _, tree_rand, report = converted("random")
    assert report["init"] == "random"
    assert [len(i) for i in tree_rand.spec["out_indices"][0]] == [91, 91]
    assert tree_rand.spec["out_indices"] != tree_act.spec["out_indices"]
    # Seeded: the same call gives the same partition.
    assert converted("random")[1].spec["out_indices"] == tree_rand.spec["out_indices"]


def test_too_few_samples_is_a_clear_error():
    with pytest.raises(ConversionError, match=r"level \d node \d received \d training sample"):
        converted(n=3, data=clustered_digits_like(3))


def test_nan_inputs_are_a_clear_error():
    data = clustered_digits_like()
    data.tensors[0][5] = float("nan")
    with pytest.raises(ConversionError, match="NaN"):
        converted(data=data)


def test_identical_inputs_cannot_be_split():
    x = torch.ones(16, 1, 8, 8)
    with pytest.raises(ConversionError, match="identical"):
        converted(n=16, data=TensorDataset(x, torch.zeros(16, dtype=torch.long)))


def test_cosine_silhouette_is_scikit_learns():
    from sklearn.metrics import silhouette_score
    rng = np.random.default_rng(0)
    for n, d in ((40, 5), (200, 32)):
        z = rng.normal(size=(n, d)) + rng.normal(size=d)
        assign = (z[:, 0] > np.median(z[:, 0])).astype(np.int64)
        assert cosine_silhouette(z, assign) == pytest.approx(silhouette_score(z, assign, metric="cosine"), abs=1e-9)
    assign[1:] = 0                                        # a point alone in its cluster scores 0
    assign[0] = 1
    assert cosine_silhouette(z, assign) == pytest.approx(silhouette_score(z, assign, metric="cosine"), abs=1e-9)


def test_auto_depth_stops_where_the_splits_lose_their_clusters():
    """Two input families: the root's split has clusters, the next level's splits (one family each)
    do not beat a one-Gaussian reference, so depth: auto keeps one level; the candidates are recorded."""
    _, tree, report = converted(depth="auto")
    auto = report["depth_auto"]
    assert tree.spec["depth"] == auto["chosen"] == 1 and report["nodes"][0]["cluster_sizes"] == [48, 48]
    first, second = auto["candidates"]
    assert first["clustered"] and first["min_gap"] > 0.15 and not second["clustered"]
    assert len(second["silhouettes"]) == len(second["null_silhouettes"]) == 3
    assert "one-Gaussian reference" in auto["criterion"] and auto["max_depth"] == 3


@pytest.mark.parametrize("gap, chosen, tried", [(-2.0, 3, 3), (2.0, 1, 1)])
def test_auto_depth_follows_its_thresholds(gap, chosen, tried):
    torch.manual_seed(0)
    dense = create_model("edge_cnn", num_classes=4).eval()
    cfg = TreeConfig(depth="auto", max_samples=96, auto_min_gap=gap)
    tree, report = convert(dense, "edge_cnn", {"num_classes": 4}, clustered_digits_like(96), cfg)
    assert tree.spec["depth"] == report["depth_auto"]["chosen"] == chosen
    assert len(report["depth_auto"]["candidates"]) == tried and len(tree.heads) == 2 ** chosen


@pytest.mark.parametrize("depth", ["deep", 0])
def test_a_bad_depth_is_a_clear_error(depth):
    with pytest.raises(ConversionError, match="tree.depth must be a positive integer or 'auto'"):
        converted(depth=depth)


def test_tree_checkpoint_roundtrip_and_wrong_kind(tmp_path):
    _, tree, _ = converted()
    path = save_tree(tmp_path / "tree.pt", tree)
    rebuilt, _ = tree_from_checkpoint(path)
    x = clustered_digits_like(8)[:][0]
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), tree.eval()(x))
    from model.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "dense.pt", kind="dense", model_name="edge_cnn", state_dict={})
    with pytest.raises(CheckpointError, match="expected a 'tree'"):
        tree_from_checkpoint(tmp_path / "dense.pt")
    state = dict(tree.state_dict())
    state.pop("heads.2.2.bias")
    save_checkpoint(tmp_path / "broken.pt", kind="tree", model_name="edge_cnn", spec=tree.spec, state_dict=state)
    with pytest.raises(CheckpointError, match=r"missing key 'heads.2.2.bias'"):
        tree_from_checkpoint(tmp_path / "broken.pt")


def test_loss_on_a_hand_computed_case():
    # One sample, two leaves, two classes.
    leaf_logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    log_p = torch.log(torch.tensor([[0.25, 0.75]])).requires_grad_()
    y = torch.tensor([0])
    ce = [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(1.0))]
    specialist = 0.25 * ce[0] + 0.75 * ce[1]
    r = torch.softmax(-torch.tensor(ce) / 0.5, 0)
    responsibility = -(r[0] * math.log(0.25) + r[1] * math.log(0.75))
    loss = sigma_branch_loss(leaf_logits, log_p, y, resp_lambda=0.3, resp_tau=0.5)
    assert loss.item() == pytest.approx(specialist + 0.3 * responsibility.item(), rel=1e-6)
    assert sigma_branch_loss(leaf_logits, log_p, y, resp_lambda=0.0).item() == pytest.approx(specialist, rel=1e-6)
    # The responsibility target is a stop-gradient: no gradient reaches the leaf logits through it.
    logits = leaf_logits.clone().requires_grad_()
    (0.3 * -(torch.softmax(-F.cross_entropy(logits[0], torch.tensor([0, 0]), reduction="none").detach() / 0.5, 0)
             * log_p[0]).sum()).backward()
    assert logits.grad is None


def test_balance_loss_pulls_the_batch_toward_every_leaf_not_each_input_toward_uncertainty():
    # Two inputs, each routed with certainty, to different leaves: the batch is balanced -> 0.
    certain_split = torch.log(torch.tensor([[1.0, 1e-9], [1e-9, 1.0]]))
    assert balance_loss(certain_split).item() == pytest.approx(0.0, abs=1e-6)
    # Every input a coin toss balances the batch just as well, but scores log L / 2,
    # and the gradient sharpens each input toward the leaf it already leans to.
    logits = torch.tensor([[0.1, 0.0], [0.0, 0.1]], requires_grad=True)
    uncertain = balance_loss(torch.log_softmax(logits, 1))
    assert uncertain.item() == pytest.approx(0.5 * math.log(2), rel=1e-2)
    uncertain.backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1] and logits.grad[1, 1] < 0 < logits.grad[1, 0]
    # The whole batch on leaf 0: log L, and the gradient moves routing mass toward leaf 1.
    logits = torch.tensor([[4.0, -4.0], [4.0, -4.0]], requires_grad=True)
    collapsed = balance_loss(torch.log_softmax(logits, 1))
    assert collapsed.item() == pytest.approx(math.log(2), rel=1e-2)
    collapsed.backward()
    assert (logits.grad[:, 1] < 0).all() and (logits.grad[:, 0] > 0).all()
    # In the total loss it is added with its weight, and is absent at weight 0 (the paper's loss).
    leaf_logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    log_p = torch.log(torch.tensor([[0.9, 0.1], [0.8, 0.2]]))
    y = torch.tensor([0, 1])
    plain = sigma_branch_loss(leaf_logits, log_p, y)
    assert sigma_branch_loss(leaf_logits, log_p, y, balance_lambda=0.5).item() == pytest.approx(
        plain.item() + 0.5 * balance_loss(log_p).item(), rel=1e-6)


def test_margin_loss_is_the_reach_weighted_hinge_on_each_routers_distance():
    _, tree, _ = converted(depth=2)
    d = tree.routers[0][0].router.in_features
    with torch.no_grad():
        for level, nodes in enumerate(tree.routers):
            for node in nodes:
                node.router.weight.zero_(), node.router.bias.zero_()
                node.router.weight[1, level] = 2.0  # w = 2 e_level, |w| = 2: distance = |z[level]|
    z = torch.zeros(2, d)
    z[0, 0], z[1, 0] = 0.1, 3.0  # root: input 0 inside the margin (0.7 short), input 1 clear of it
    z1, z2 = torch.zeros(2, d), torch.zeros(2, d)
    z1[:, 1], z2[:, 1] = 0.5, 0.2  # level-1 nodes: 0.3 and 0.6 short for every input
    latents = [z.requires_grad_(), z1, z2]
    p = torch.tensor([[0.4, 0.2, 0.3, 0.1], [0.1, 0.1, 0.5, 0.3]])  # reach node 1: 0.6 / 0.2, node 2: 0.4 / 0.8
    hinge = (0.7 + 0) / 2 + (0.6 * 0.3 + 0.2 * 0.3) / 2 + (0.4 * 0.6 + 0.8 * 0.6) / 2
    # split: the reach-weighted mean of tanh(s / margin) per node, squared (every input on one side here)
    split = ((math.tanh(0.1 / 0.8) + math.tanh(3.0 / 0.8)) / 2) ** 2 + math.tanh(0.5 / 0.8) ** 2 + math.tanh(0.2 / 0.8) ** 2
    expected = hinge + split
    loss = margin_loss(tree, latents, p.log(), margin=0.8)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # the hinge pushes input 0 away from the hyperplane, the split pulls both back toward it (the
    # batch is all on one side): input 1, clear of the margin, feels only the split
    assert latents[0].grad[1, 0] > 0
    router = tree.routers[0][0].router
    assert router.bias.grad[1] > 0  # a descent step moves the hyperplane into the batch
    with torch.no_grad():  # scaling a router sharpens its softmax but moves no decision: same loss
        tree.routers[0][0].router.weight.mul_(10.0)
    assert margin_loss(tree, latents, p.log(), margin=0.8).item() == pytest.approx(expected, rel=1e-5)


def test_the_margin_term_is_added_to_the_tree_loss_with_its_weight():
    _, tree, _ = converted(depth=2)
    tree.eval()  # no dropout: both forwards see the same latents
    x, y = clustered_digits_like(8)[:]
    cfg = TrainConfig()
    plain = tree_loss(cfg)(tree, x, y)
    cfg.tree.margin_lambda, cfg.tree.margin = 0.5, 2.0
    latents: list = []
    _, log_p = tree(x, mode="leaves", latents=latents)
    added = margin_loss(tree, latents, log_p, 2.0)
    assert added.item() > 0
    assert tree_loss(cfg)(tree, x, y).item() == pytest.approx(plain.item() + 0.5 * added.item(), rel=1e-5)


def test_distill_loss_is_the_routing_weighted_kl_to_the_teacher_on_a_hand_case():
    teacher = torch.tensor([[2.0, 0.0]])
    leaves = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]], requires_grad=True)  # leaf 0 agrees, leaf 1 is reversed
    p = torch.tensor([[0.25, 0.75]], requires_grad=True)
    tau = 2.0
    t = torch.softmax(teacher / tau, -1)[0]
    kl_reversed = float((t * (t.log() - torch.softmax(torch.tensor([0.0, 2.0]) / tau, -1).log())).sum())
    loss = distill_loss(leaves, p.log(), teacher, tau)
    assert loss.item() == pytest.approx(tau * tau * 0.75 * kl_reversed, rel=1e-6)  # leaf 0's KL is 0
    loss.backward()
    assert p.grad is None or torch.all(p.grad == 0)  # routing weights detached: routing is not taught
    assert leaves.grad[0, 1, 0] < 0 and leaves.grad[0, 0].abs().max() < 1e-7  # leaf 1 pulled toward class 0


def test_the_distillation_term_is_added_and_a_wrong_teacher_is_refused(tmp_path):
    dense, tree, _ = converted(depth=2)
    tree.eval()
    x, y = clustered_digits_like(8)[:]
    cfg = TrainConfig()
    plain = tree_loss(cfg)(tree, x, y)
    cfg.tree.distill_lambda, cfg.tree.distill_tau = 0.5, 3.0
    with pytest.raises(ValueError, match="teacher"):
        tree_loss(cfg)
    leaf_logits, log_p = tree(x, mode="leaves")
    added = distill_loss(leaf_logits, log_p, dense(x), 3.0)
    assert added.item() > 0
    assert tree_loss(cfg, dense)(tree, x, y).item() == pytest.approx(plain.item() + 0.5 * added.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="no dense checkpoint"):
        load_teacher(tmp_path / "missing.pt", tree)
    other = create_model("edge_cnn", num_classes=7)
    from model.checkpoint import FORMAT
    torch.save({"format": FORMAT, "kind": "dense", "model_name": "edge_cnn", "model_args": {"num_classes": 7},
                "state_dict": other.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="7 classes"):
        load_teacher(tmp_path / "other.pt", tree)


def test_balance_score_matches_the_papers_examples():
    assert balance_score([25, 25, 25, 25]) == pytest.approx(1.0)
    assert balance_score([100, 0, 0, 0]) == 0.0
    assert balance_score([16.6, 30.8, 17.6, 35.1]) == pytest.approx(0.965, abs=0.01)
    assert balance_score([0.2, 0.0, 52.9, 46.9]) == pytest.approx(0.504, abs=0.01)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The main job end to end, once for both demo tests (the notebooks run in tests/test_notebooks.py)."""
    from sigmabranch.pipeline import run_demo
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, device="cpu", notebooks=False)


@pytest.mark.slow
@pytest.mark.xdist_group("demo")  # one worker makes the module's demo fixture (the Makefile's --dist loadgroup)
def test_demo_writes_the_metrics(demo):
    tmp_path, metrics = demo
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["dense"]["top1"] == metrics["dense"]["top1"] > 50
    for key in ("top1_hard", "total_params", "active_params", "leaf_usage", "balance"):
        assert key in written["tree"]
    assert written["tree"]["active_params"] < 0.5 * written["dense"]["params"]
    assert sum(written["tree"]["leaf_usage"]) == pytest.approx(100)
    assert 0 <= written["quant"]["leaf_agreement"] <= 100
    for png in ("leaf_heatmap.png", "partition.png", "dense/train_curve.png", "finetune/train_curve.png"):
        assert (tmp_path / png).stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_full_demo_meets_the_method_bars(demo):
    """The bars of the method issue on digits, on the main job's own run."""
    tmp_path, m = demo
    dense, tree, quant = m["dense"], m["tree"], m["quant"]
    assert dense["top1"] >= 97.0
    assert tree["top1_hard"] >= dense["top1"] - 1.0            # within 1 pp of dense
    assert tree["active_params"] <= 0.5 * dense["params"]       # at least 50% fewer active params
    assert min(tree["leaf_usage"]) >= 5.0                       # no starved leaf
    assert quant["bits"] == "w4a4" and quant["top1_hard"] >= tree["top1_hard"] - 1.5
    assert quant["router_agreement"] >= 0.99
    # The export issue: the integer reference routes and classifies like the Brevitas tree.
    ref = quant["int_reference"]
    assert ref["same_class"] == 1.0 and ref["same_leaf"] == 1.0 and ref["inputs"] == 360
    assert abs(ref["top1"] - quant["top1_hard"]) < 1e-9
    assert (tmp_path / "export" / "tree.json").is_file() and (tmp_path / "export" / "check.json").is_file()
    # The hardware issue: both boards fit, and the tree streams at most 0.45x the dense model's bytes.
    for board in ("pynq-z2", "zcu104"):
        hw = m["hardware"][board]
        assert hw["tree_vs_dense_ddr"] <= 0.45
        assert all(hw["onchip_estimate"][k] <= hw["budget"][k] for k in hw["budget"])
    # The host issue: the driver (ref backend) gives the quantised tree's accuracy and moves
    # exactly the path's weight bytes.
    assert abs(100 * m["host"]["accuracy"] - quant["top1_hard"]) < 1e-9
    assert m["host"]["ddr_bytes_per_inference"]["weights"] == m["hardware"]["pynq-z2"]["ddr_weight_bytes_per_inference"]
