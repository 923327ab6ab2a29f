"""Configs (YAML/JSON, strict keys, overrides) and the command line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.config import ConfigError, apply_overrides, load_config
from sigmabranch.cli import build_parser, main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    if path.name.startswith("compare_"):  # `sigmabranch compare` configs name a dense and a tree config
        from baselines.compare import load_compare_config
        cfg, _ = load_compare_config(path)
        assert cfg.methods
        return
    cfg = load_config(path)
    assert cfg.epochs > 0 and cfg.model.name


def test_unknown_keys_are_rejected_with_their_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\noptim:\n  lr: 0.1\n  nesterof: true\n")
    with pytest.raises(ConfigError, match=r"optim.*nesterof"):
        load_config(bad)


def test_json_configs_and_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 3, "model": {"name": "resnet8"}}))
    cfg = apply_overrides(load_config(path), ["optim.lr=0.5", "data.options={num_points: 64}"])
    assert (cfg.epochs, cfg.model.name, cfg.optim.lr, cfg.data.options) == (3, "resnet8", 0.5, {"num_points": 64})
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(cfg, ["epochs"])


def test_values_are_type_checked(tmp_path):
    cfg = load_config(CONFIGS / "demo_edge_digits.yaml")
    # YAML 1.1 reads 1e-3 (no dot) as a string: accepted as the float it means.
    assert apply_overrides(cfg, ["optim.lr=1e-3"]).optim.lr == 1e-3
    with pytest.raises(ConfigError, match=r"epochs: expected int, got 'abc'"):
        apply_overrides(cfg, ["epochs=abc"])
    with pytest.raises(ConfigError, match=r"optim.lr: expected float"):
        apply_overrides(cfg, ["optim.lr=fast"])
    assert apply_overrides(cfg, ["tree.width_factors=[0.5, 0.5]"]).tree.width_factors == [0.5, 0.5]


def test_malformed_yaml_names_the_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("epochs: [3\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(bad)


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"train", "evaluate", "models", "demo"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: sigmabranch" in capsys.readouterr().out


def test_console_script_lists_stages():
    out = subprocess.run([sys.executable, "-m", "sigmabranch", "--help"], capture_output=True, text=True, check=True).stdout
    for stage in ("train", "evaluate", "demo"):
        assert stage in out


def test_bad_checkpoint_is_one_clear_line(tmp_path, capsys):
    bogus = tmp_path / "nope.pt"
    bogus.write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(bogus)]) == 2
    err = capsys.readouterr().err
    assert "nope.pt" in err and "Traceback" not in err
