"""The tree: cuts and copies, hard single-path routing, accounting against the paper's Table III."""
import pytest
import torch

from model.accounting import count_params
from model.registry import create_model
from model.tree import route_groups, take_rows
from model.tree_layout import build_tree, default_spec, dense_chain
from model.tree_report import summarize

SMALL = [("resnet8", {"num_classes": 10}, (1, 8, 8)), ("resnet20", {"num_classes": 10}, (3, 16, 16)),
         ("edge_cnn", {"num_classes": 10}, (1, 8, 8)), ("pointnet2_ssg_small", {"num_classes": 10}, (64, 3))]


def randomise_bn(model):
    """Non-trivial BN statistics, so that a wrong channel copy cannot go unnoticed."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@torch.no_grad()
def balance_routers(tree, x):
    """Shift each router's bias so that it splits the samples reaching it at their median:
    random routers send everything one way, and the tests want every path exercised."""
    def split_at_median(level, node, h):
        router = tree.routers[level][node]
        logits = router(h)
        router.router.bias[1] -= (logits[:, 1] - logits[:, 0]).median() + 1e-4

    route_groups(tree.backbone, tree.routers, tree.specialisers, x, tree.depth, visit=split_at_median)
    return tree


def small_tree(name, kwargs, depth=2, seed=0):
    torch.manual_seed(seed)
    dense = randomise_bn(create_model(name, **kwargs))
    spec = default_spec(name, kwargs, dense, depth=depth)
    g = torch.Generator().manual_seed(seed)  # random channel subsets, not the first-k placeholders
    spec["out_indices"] = [[sorted(torch.randperm(dw, generator=g)[:w].tolist()) for _ in level]
                           for level, dw, w in zip(spec["out_indices"], spec["dense_widths"], spec["widths"])]
    return dense, build_tree(dense, spec).eval()


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("name,kwargs,shape", SMALL, ids=[s[0] for s in SMALL])
def test_dense_chain_through_the_narrowing_code_is_the_dense_model(name, kwargs, shape, depth):
    dense = randomise_bn(create_model(name, **kwargs))
    x = torch.randn(3, *shape)
    # Same kernels on the same channels in the same order: equal to the last bit.
    assert torch.equal(dense_chain(dense, depth).eval()(x), dense(x))


def test_resnet50_depth3_cuts_layer3_in_half_and_runs():
    dense = create_model("resnet50_cifar", num_classes=10).eval()
    spec = default_spec("resnet50_cifar", {"num_classes": 10}, dense, depth=3)
    assert spec["level_names"] == ["layer3[0:3]", "layer3[3:]", "layer4"]
    tree = build_tree(dense, spec).eval()
    assert tree.num_leaves == 8 and tree(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert torch.equal(dense_chain(dense, 3).eval()(torch.ones(1, 3, 32, 32)), dense(torch.ones(1, 3, 32, 32)))


@pytest.mark.parametrize("name,kwargs,shape", SMALL, ids=[s[0] for s in SMALL])
def test_unchosen_branches_never_run(name, kwargs, shape):
    _, tree = small_tree(name, kwargs)
    calls = {}
    for level, branches in enumerate(tree.specialisers):
        for b, module in enumerate(branches):
            module.register_forward_hook(lambda m, i, o, key=(level, b): calls.__setitem__(key, calls.get(key, 0) + 1))
    for i, head in enumerate(tree.heads):
        head.register_forward_hook(lambda m, inp, o, key=("head", i): calls.__setitem__(key, calls.get(key, 0) + 1))
    x = torch.randn(1, *shape)
    with torch.no_grad():
        _, leaf = tree.forward_hard(x)
    leaf = int(leaf)
    path = {(0, leaf >> 1), (1, leaf), ("head", leaf)}
    assert calls == {key: 1 for key in path}


@pytest.mark.parametrize("name,kwargs,shape", SMALL, ids=[s[0] for s in SMALL])
def test_batched_hard_routing_equals_single_samples(name, kwargs, shape):
    _, tree = small_tree(name, kwargs)
    x = torch.randn(24, *shape)
    balance_routers(tree, x)
    with torch.no_grad():
        logits, leaves = tree.forward_hard(x)
        singles = [tree.forward_hard(x[i:i + 1]) for i in range(len(x))]
        assert len(set(leaves.tolist())) == 4, "the test batch should exercise every path"
        # Routing decisions: identical.
        assert torch.equal(leaves, torch.cat([s[1] for s in singles]))
        # Logits: the grouped dispatch computes exactly what running each branch on its group
        # computes (checked bit for bit below). Against batch-1 runs they agree to float32
        # rounding only: PyTorch's CPU kernels (oneDNN conv, BLAS GEMM) block the reduction
        # differently per batch size, so even the dense model differs by ~1e-8 between a batch
        # and per-sample evaluation.
        torch.testing.assert_close(logits, torch.cat([s[0] for s in singles]), rtol=1e-5, atol=1e-6)
        h = tree.backbone(x)
        for b in (0, 1):
            rows_b = ((leaves >> 1) == b).nonzero().flatten()
            h_b = tree.specialisers[0][b](take_rows(h, rows_b))
            for leaf in (2 * b, 2 * b + 1):
                sub = (leaves[rows_b] == leaf).nonzero().flatten()
                expected = tree.heads[leaf](tree.specialisers[1][leaf](take_rows(h_b, sub)))
                assert torch.equal(logits[rows_b[sub]], expected)


def test_hard_path_is_the_greedy_path_of_the_soft_router_and_its_leaf_logits():
    _, tree = small_tree("edge_cnn", {"num_classes": 10})
    x = torch.randn(16, 1, 8, 8)
    balance_routers(tree, x)
    with torch.no_grad():
        logits, leaves = tree.forward_hard(x)
        leaf_logits, leaf_log_probs = tree.forward_soft(x)
    # Greedy: level-1 choice = argmax of P(branch), then the better child of it.
    p = leaf_log_probs.exp()
    first = (p[:, 2:].sum(1) > p[:, :2].sum(1)).long()
    second = (p[torch.arange(16), 2 * first + 1] > p[torch.arange(16), 2 * first]).long()
    assert torch.equal(leaves, 2 * first + second) and len(set(leaves.tolist())) == 4
    torch.testing.assert_close(logits, leaf_logits[torch.arange(16), leaves])
    assert torch.allclose(leaf_log_probs.exp().sum(1), torch.ones(16))


def test_every_path_has_the_same_active_parameter_count():
    _, tree = small_tree("resnet8", {"num_classes": 10})
    per_leaf = {sum(count_params(m) for m in tree.path_modules(leaf)) for leaf in range(4)}
    assert per_leaf == {tree.active_params()}
    assert tree.active_params() < count_params(tree)


@pytest.mark.parametrize("model,classes,dense,total,active,macs,path_macs", [
    # Paper Table III (params in M, MACs in G, fvcore convention).
    ("resnet50_cifar", 100, 23.71, 25.55, 9.41, 1.305, 0.888),
    ("resnet50_imagenet", 1000, 25.56, 29.25, 10.34, 4.112, 2.834),
])
def test_summary_reproduces_table_iii_for_resnet50(model, classes, dense, total, active, macs, path_macs):
    s = summarize(model, classes)
    assert s["dense_params"] / 1e6 == pytest.approx(dense, rel=0.005)
    assert s["total_params"] / 1e6 == pytest.approx(total, rel=0.005)
    assert s["active_params"] / 1e6 == pytest.approx(active, rel=0.005)
    assert s["dense_macs"] / 1e9 == pytest.approx(macs, rel=0.02)
    assert s["path_macs"] / 1e9 == pytest.approx(path_macs, rel=0.02)


def test_summary_pointnet2_matches_table_iii_within_5_percent():
    s = summarize("pointnet2_ssg", 40)
    assert s["dense_params"] / 1e6 == pytest.approx(1.47, rel=0.05)
    assert s["total_params"] / 1e6 == pytest.approx(1.46, rel=0.05)
    assert s["active_params"] / 1e6 == pytest.approx(0.61, rel=0.05)


def test_summary_cli_prints_json(capsys):
    import json

    from sigmabranch.cli import main
    assert main(["summary", "--model", "resnet8", "--num-classes", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"dense_params", "total_params", "active_params", "dense_macs", "path_macs"} <= set(out)
