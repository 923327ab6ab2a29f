"""Baselines: which filters L1/FPGM/HRank/AGF pick on hand cases, pruned models (residual
dependencies kept, reported counts true, checkpoints reload), confidence routing's expected cost,
the AGF channel score in conversion, and a tiny end-to-end ``sigmabranch compare``."""
import csv
import json
import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from baselines.compare import load_compare_config, run_compare
from baselines.confidence import confidence_sweep, expected_cost, operating_point, route_by_confidence
from baselines.criteria import (PruningError, agf_channel_scores, calibrate_agf, calibrate_hrank,
                                fpgm_filter_scores, hrank_channel_scores, l1_filter_scores)
from baselines.prune import prune_model, pruned_from_checkpoint
from model.accounting import count_params
from model.agf import agf_sample_utilities
from model.checkpoint import save_checkpoint
from model.config import ConfigError, TreeConfig
from model.convert import convert
from model.edge_cnn import EdgeCNN
from model.registry import create_model
from model.resnet import BasicBlock, ResNet

COMPARE_CONFIG = "configs/compare_edge_digits.yaml"


class TinyNet(nn.Module):
    """1x1 conv -> BN (identity statistics) -> ReLU -> average pool -> fc: channel c of the BN output
    is exactly ``conv.weight[c] . x`` (a hand-checkable feature map)."""

    def __init__(self, in_chans: int, width: int = 4, classes: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, width, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.bn(self.conv(x)))), 1))


def kept_filters(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Which rows of ``before`` survive in ``after`` (pruning keeps their order)."""
    return [i for i in range(len(before)) if any(torch.equal(before[i], row) for row in after)]


# ---------------------------------------------------------------------------- L1 and FPGM
# Filters of a 1x1 conv with two inputs. L1 norms 4.5, 0.5, 4.2, 4.4 -> L1 keeps {0, 3}.
# Pairwise distances: d01 2.828, d02 3.330, d03 2.759, d12 4.230, d13 3.900, d23 6.083, so the
# FPGM sums are 8.917, 10.958, 13.643, 12.742 -> FPGM keeps {2, 3}: filter 0 has the largest norm
# but lies nearest the geometric median, so the others can stand in for it.
FILTERS = torch.tensor([[2.0, 2.5], [0.0, 0.5], [4.2, 0.0], [0.0, 4.4]])


def tiny_with_filters():
    net = TinyNet(2)
    with torch.no_grad():
        net.conv.weight.copy_(FILTERS[:, :, None, None])
    return net


def test_l1_scores_and_pick_on_a_hand_case():
    assert l1_filter_scores(FILTERS).tolist() == pytest.approx([4.5, 0.5, 4.2, 4.4])
    net = tiny_with_filters()
    prune_model(net, "l1", 0.5, (2, 3, 3), progress=False)
    assert kept_filters(FILTERS, net.conv.weight[:, :, 0, 0]) == [0, 3]
    assert net.bn.num_features == 2 and net.fc.in_features == 2 and net.fc.out_features == 2


def test_l1_matches_torch_pruning_first_layer_magnitude():
    """Our L1 is Torch-Pruning's "standard L1 of the first layer in a group" on a plain chain."""
    import torch_pruning as tp

    net = tiny_with_filters()
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 2, 3, 3))
    group = graph.get_pruning_group(net.conv, tp.prune_conv_out_channels, idxs=[0, 1, 2, 3])
    theirs = tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first")(group)
    assert torch.allclose(theirs, l1_filter_scores(FILTERS))


def test_fpgm_scores_and_pick_on_a_hand_case():
    d = {(0, 1): 2.828427, (0, 2): 3.330165, (0, 3): 2.758623, (1, 2): 4.229657, (1, 3): 3.9, (2, 3): 6.082763}
    sums = [sum(v for k, v in d.items() if i in k) for i in range(4)]
    assert fpgm_filter_scores(FILTERS).tolist() == pytest.approx(sums, abs=1e-4)
    net = tiny_with_filters()
    prune_model(net, "fpgm", 0.5, (2, 3, 3), progress=False)
    assert kept_filters(FILTERS, net.conv.weight[:, :, 0, 0]) == [2, 3]


# ---------------------------------------------------------------------------- HRank
def rank_planes() -> torch.Tensor:
    """Four 3x3 input planes of rank 3, 1, 0 and 2."""
    planes = torch.stack([torch.eye(3), torch.ones(3, 3), torch.zeros(3, 3), torch.diag(torch.tensor([1.0, 1.0, 0.0]))])
    return planes[None]


def test_hrank_scores_and_pick_on_a_hand_case():
    assert hrank_channel_scores(rank_planes()).tolist() == [3.0, 1.0, 0.0, 2.0]
    net = TinyNet(4)
    with torch.no_grad():
        net.conv.weight.copy_(torch.eye(4)[:, :, None, None])  # channel c = input plane c
    scores = calibrate_hrank(net, [(rank_planes(), torch.zeros(1, dtype=torch.long))], progress=False)
    assert scores[net.bn].tolist() == [3.0, 1.0, 0.0, 2.0]
    prune_model(net, "hrank", 0.5, (4, 3, 3), [(rank_planes(), torch.zeros(1, dtype=torch.long))], progress=False)
    assert kept_filters(torch.eye(4), net.conv.weight[:, :, 0, 0]) == [0, 3]


# ---------------------------------------------------------------------------- AGF
def test_agf_utility_takes_the_magnitude_per_sample_before_averaging():
    a = torch.tensor([[[1.0, 2.0]], [[1.0, 2.0]]])  # (N=2, C=1, 2 positions)
    g = torch.tensor([[[2.0, 0.0]], [[-2.0, 0.0]]])  # sample 0 gains +2, sample 1 loses 2
    assert agf_sample_utilities(a, g).tolist() == [[2.0], [2.0]]
    assert agf_channel_scores(a, g).tolist() == [2.0]  # a signed mean (classic Taylor) would give 0


def test_agf_scores_and_pick_on_a_hand_case():
    """Every channel sees a constant map of ones, so each channel's utility is
    |sum_hw a * dL/da| = |delta . fc.weight[:, c]| with delta = softmax - onehot; with
    fc columns (s_c, -s_c) that is 2 * s_c * p1. AGF keeps the two largest s_c."""
    s = torch.tensor([0.1, 2.0, 0.5, 1.0])
    net = TinyNet(1)
    with torch.no_grad():
        net.conv.weight.fill_(1.0)
        net.fc.weight.copy_(torch.stack([s, -s]))
        net.fc.bias.zero_()
    x, y = torch.ones(1, 1, 3, 3), torch.zeros(1, dtype=torch.long)
    p1 = torch.sigmoid(torch.tensor(-2 * s.sum().item()))  # softmax of logits (sum s, -sum s)
    scores = calibrate_agf(net, [(x, y)], progress=False)[net.bn]
    assert scores.tolist() == pytest.approx((2 * s * p1).tolist(), rel=1e-4)
    prune_model(net, "agf", 0.5, (1, 3, 3), [(x, y)], steps=2, progress=False)
    assert net.conv.out_channels == 2
    assert net.fc.weight[0].tolist() == pytest.approx([2.0, 1.0])  # channels 1 and 3 survive


# ---------------------------------------------------------------------------- pruned registered models
def calibration(n=16):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))]


@pytest.mark.parametrize("criterion", ["l1", "fpgm", "hrank", "agf"])
def test_pruned_edge_cnn_runs_and_has_the_narrow_models_params(criterion):
    torch.manual_seed(0)
    model = create_model("edge_cnn")
    prune_model(model, criterion, 0.5, (1, 8, 8), calibration(), steps=2 if criterion == "agf" else 1, progress=False)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert count_params(model) == count_params(EdgeCNN(widths=(16, 32, 64, 128)))


@pytest.mark.parametrize("criterion", ["l1", "fpgm", "hrank", "agf"])
def test_pruned_resnet8_keeps_residual_sums_consistent(criterion):
    torch.manual_seed(0)
    model = create_model("resnet8")
    prune_model(model, criterion, 0.5, (1, 8, 8), calibration(), progress=False)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    # Each residual sum adds tensors of equal width: the identity shortcut of layer1 ties the stem to
    # layer1's second conv; the projection shortcuts follow their block's output.
    assert model.conv1.out_channels == model.layer1[0].conv2.out_channels == 8
    for layer in (model.layer2[0], model.layer3[0]):
        assert layer.downsample[0].out_channels == layer.conv2.out_channels
    narrow = ResNet(BasicBlock, [1, 1, 1], (8, 16, 32), num_classes=10, in_chans=1, stem="cifar", stem_width=8)
    assert count_params(model) == count_params(narrow)


def test_pruned_checkpoint_reloads_with_its_shapes(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet8")
    prune_model(model, "l1", 0.35, (1, 8, 8), progress=False)
    path = save_checkpoint(tmp_path / "p.pt", kind="pruned", model_name="resnet8", model_args={}, state_dict=model.state_dict())
    again, _ = pruned_from_checkpoint(path)
    x = torch.randn(2, 1, 8, 8)
    assert count_params(again) == count_params(model)
    assert torch.equal(again.eval()(x), model.eval()(x))


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.1])
def test_ratio_outside_the_open_unit_interval_is_an_error(ratio):
    with pytest.raises(PruningError, match="strictly between 0 and 1"):
        prune_model(create_model("edge_cnn"), "l1", ratio, (1, 8, 8))


def test_unknown_criterion_and_missing_calibration_are_errors():
    with pytest.raises(PruningError, match="unknown pruning criterion 'l2'"):
        prune_model(create_model("edge_cnn"), "l2", 0.5, (1, 8, 8))
    with pytest.raises(PruningError, match="needs calibration batches"):
        prune_model(create_model("edge_cnn"), "hrank", 0.5, (1, 8, 8))


# ---------------------------------------------------------------------------- confidence routing
def test_confidence_routing_expected_cost_on_a_hand_case():
    assert expected_cost(0.42, 1.0, 0.5) == pytest.approx(0.92)  # the AGF abstract's 0.92x at ~50% heavy use
    expert = torch.tensor([[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.3, 0.4, 0.3], [0.0, 0.05, 0.95]])
    full = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    labels = torch.tensor([0, 0, 2, 2])
    pred, escalated = route_by_confidence(expert, full, 0.5)
    assert escalated.tolist() == [False, False, True, False] and pred.tolist() == [0, 1, 2, 2]
    rows = confidence_sweep(expert, full, labels, expert_macs=42, full_macs=100, expert_params=10, full_params=40,
                            thresholds=[0.0, 0.5, 0.7, 1.01])
    assert [r["top1"] for r in rows] == [50.0, 75.0, 75.0, 50.0]
    assert [r["full_fraction"] for r in rows] == [0.0, 0.25, 0.5, 1.0]
    assert [r["expected_cost"] for r in rows] == pytest.approx([0.42, 0.67, 0.92, 1.42])
    assert rows[1]["expected_params"] == pytest.approx(10 + 0.25 * 40)
    assert operating_point(rows, reference_top1=75.0, tolerance_pp=0.5)["threshold"] == 0.5
    assert operating_point(rows, reference_top1=99.0, tolerance_pp=0.5)["threshold"] == 0.5  # none matches: most accurate


# ---------------------------------------------------------------------------- AGF channel score in the tree
def test_agf_channel_score_conversion_runs_and_changes_only_the_channels():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(96) % 4
    x = torch.randn(96, 1, 8, 8, generator=g) * 0.2
    x[y < 2, :, :4] += 2.0
    x[y >= 2, :, 4:] += 2.0
    data = TensorDataset(x, y)
    trees = {}
    for score in ("activation", "agf"):
        torch.manual_seed(0)
        dense = create_model("edge_cnn", num_classes=4).eval()
        cfg = TreeConfig(depth=2, max_samples=96, channel_score=score)
        trees[score] = convert(dense, "edge_cnn", {"num_classes": 4}, data, cfg)
    (act, act_report), (agf, agf_report) = trees["activation"], trees["agf"]
    assert agf_report["channel_score"] == "agf" and agf.spec["channel_score"] == "agf"
    # Level 1's k-means does not depend on the channel score; the chosen channels do.
    assert agf_report["nodes"][0]["cluster_sizes"] == act_report["nodes"][0]["cluster_sizes"]
    assert agf.spec["out_indices"] != act.spec["out_indices"]
    assert agf.active_params() == act.active_params()
    assert agf.eval()(x[:5]).shape == (5, 4)
    with pytest.raises(Exception, match="channel_score must be 'activation' or 'agf'"):
        convert(dense, "edge_cnn", {"num_classes": 4}, data, TreeConfig(channel_score="taylor"))


# ---------------------------------------------------------------------------- compare
TINY = ["dense_overrides=[epochs=1]", "tree_overrides=[epochs=1, tree.max_samples=256]", "ratios=[0.5]",
        "agf_steps=2", "calibration_batches=1", "routing_thresholds=11"]


def test_compare_config_errors():
    with pytest.raises(ConfigError, match="unknown key"):
        load_compare_config(COMPARE_CONFIG, ["ratio=[0.5]"])
    with pytest.raises(PruningError, match="strictly between 0 and 1"):
        load_compare_config(COMPARE_CONFIG, ["ratios=[0.5, 1.2]"])
    with pytest.raises(PruningError, match="unknown pruning criterion"):
        load_compare_config(COMPARE_CONFIG, ["methods=[l1, snip]"])
    with pytest.raises(ConfigError, match="routing needs an AGF-pruned expert"):
        load_compare_config(COMPARE_CONFIG, ["methods=[l1]"])


def test_cli_reports_a_bad_ratio_in_one_line(capsys):
    from sigmabranch.cli import main
    assert main(["compare", "--config", COMPARE_CONFIG, "--set", "ratios=[1.5]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigmabranch compare: error:") and "strictly between 0 and 1" in err and err.count("\n") == 1


def test_tiny_compare_writes_the_table_and_reuses_its_stages(tmp_path):
    out = tmp_path / "cmp"
    metrics = run_compare(COMPARE_CONFIG, out, overrides=TINY, device="cpu", progress=False)
    for name in ("compare.md", "compare.csv", "pareto.png", "metrics.json", "routing/sweep.csv", "routing/sweep.png"):
        assert (out / name).is_file(), name
    with open(out / "compare.csv") as fh:
        rows = list(csv.DictReader(fh))
    measured = [r for r in rows if r["source"] == "measured"]
    assert [r["method"] for r in measured] == ["dense", "tree (activation score)", "tree (agf score)",
                                               "l1", "fpgm", "hrank", "agf", "agf routing"]
    assert sum(r["source"].startswith("quoted") for r in rows) == 9
    assert {"FPGM-30", "FPGM-40", "HRank-44%", "HRank-62%", "HRank-76%", "SkipNet+SP", "Narrow-DeepMoE-A"} <= {r["method"] for r in rows}
    # Reported parameter counts are those of the saved, reloadable pruned models.
    dense = count_params(create_model("edge_cnn"))
    for method in ("l1", "fpgm", "hrank", "agf"):
        model, _ = pruned_from_checkpoint(out / "pruned" / f"{method}_50" / "checkpoint.pt")
        row = next(r for r in measured if r["method"] == method)
        assert float(row["active_params_m"]) * 1e6 == pytest.approx(count_params(model), abs=1)
        assert float(row["active_pct"]) == pytest.approx(100 * count_params(model) / dense, abs=1e-6)
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    text = (out / "compare.md").read_text()
    assert "**Verdict**" in text and "**AGF channel score in the tree**" in text and "quoted: paper" in text
    again = run_compare(COMPARE_CONFIG, out, overrides=TINY, device="cpu", progress=False)
    assert set(again["reused"]) == {"dense", "tree_activation", "tree_agf", "l1_50", "fpgm_50", "hrank_50",
                                    "agf_50", "routing"}
    assert json.loads((out / "metrics.json").read_text())["rows"][0]["top1"] == pytest.approx(metrics["rows"][0]["top1"])
    assert not math.isnan(again["rows"][1]["top1"])
