"""Registered dense models: shapes, parameter counts, torchvision/timm state-dict names, MACs."""
import pytest
import torch

from model.accounting import count_params, model_macs
from model.checkpoint import CheckpointError, load_state_dict_checked
from model.registry import create_model, list_models


def test_registry_lists_every_family():
    names = set(list_models())
    assert {"resnet50_cifar", "resnet50_imagenet", "resnet8", "resnet20", "edge_cnn",
            "pointnet2_ssg", "pointnet2_ssg_small"} <= names


def test_unknown_model_names_the_registered_ones():
    with pytest.raises(KeyError, match="resnet50_cifar"):
        create_model("resnet51")


@pytest.mark.parametrize("name,kwargs,expected", [
    ("resnet50_cifar", {"num_classes": 100}, 23_705_252),      # paper Table III: 23.71M
    ("resnet50_imagenet", {"num_classes": 1000}, 25_557_032),  # torchvision resnet50: 25,557,032
    ("resnet20", {"num_classes": 10}, 272_474),                # He et al.: 0.27M
])
def test_parameter_counts_match_the_references(name, kwargs, expected):
    assert count_params(create_model(name, **kwargs)) == expected


def torchvision_resnet50_keys() -> list[str]:
    """The state-dict keys of torchvision's resnet50, written out from its definition."""
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    bn = lambda p: [f"{p}.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    for stage, blocks in enumerate([3, 4, 6, 3], start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            for i in (1, 2, 3):
                keys += [f"{p}.conv{i}.weight"] + bn(f"{p}.bn{i}")
            if b == 0:
                keys += [f"{p}.downsample.0.weight"] + bn(f"{p}.downsample.1")
    return keys + ["fc.weight", "fc.bias"]


def test_resnet50_state_dict_loads_from_torchvision_names():
    model = create_model("resnet50_imagenet")
    assert sorted(model.state_dict()) == sorted(torchvision_resnet50_keys())
    # A state dict built independently with the reference names and shapes loads strictly.
    reference = {k: torch.randn_like(v.float()).to(v.dtype) if v.dtype.is_floating_point else v.clone()
                 for k, v in create_model("resnet50_imagenet").state_dict().items()}
    load_state_dict_checked(model, reference)
    assert torch.equal(model.layer3[5].conv2.weight, reference["layer3.5.conv2.weight"])


def test_state_dict_errors_name_the_first_offending_key():
    model = create_model("resnet8")
    sd = model.state_dict()
    bad_shape = dict(sd, **{"layer2.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'layer2.0.conv1.weight'"):
        load_state_dict_checked(model, bad_shape)
    missing = {k: v for k, v in sd.items() if k != "fc.bias"}
    with pytest.raises(CheckpointError, match=r"missing key 'fc.bias'"):
        load_state_dict_checked(model, missing)
    with pytest.raises(CheckpointError, match=r"unexpected key 'head.weight'"):
        load_state_dict_checked(model, dict(sd, **{"head.weight": torch.zeros(1)}))


@pytest.mark.parametrize("name,shape", [("resnet50_cifar", (3, 32, 32)), ("resnet50_imagenet", (3, 224, 224)),
                                        ("resnet8", (1, 8, 8)), ("resnet20", (3, 32, 32)), ("edge_cnn", (1, 8, 8))])
def test_forward_shapes_and_feature_head_split(name, shape):
    model = create_model(name, num_classes=7, in_chans=shape[0]).eval()
    x = torch.randn(2, *shape)
    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features
    assert torch.allclose(model.forward_head(feats), model(x))
    assert model(x).shape == (2, 7)


def test_macs_follow_the_fvcore_convention():
    # Paper Table III: 1.305G (CIFAR-100) and 4.112G (ImageNet) with fvcore; conv+fc+BN here.
    assert model_macs(create_model("resnet50_cifar", num_classes=100), (3, 32, 32)) == pytest.approx(1.305e9, rel=0.01)
    assert model_macs(create_model("resnet50_imagenet"), (3, 224, 224)) == pytest.approx(4.112e9, rel=0.01)
    # A linear layer alone: exactly in*out MACs.
    assert model_macs(torch.nn.Linear(10, 3), (10,)) == 30
