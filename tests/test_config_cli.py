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


def test_build_boards_are_the_hardware_flows():
    from hls.boards import BOARDS
    build = build_parser()._subparsers._group_actions[0].choices["build"]
    board = next(a for a in build._actions if a.dest == "board")
    assert board.choices == list(BOARDS) and "pynq-z2" in BOARDS


def test_stage_runner_times_logs_and_records():
    from sigmabranch.pipeline import Stages
    lines = []
    stages = Stages(log=lines.append)
    with stages("dense"):
        pass
    with pytest.raises(KeyError), stages("convert"):
        raise KeyError("boom")
    assert list(stages.seconds) == ["dense"] and 0 <= stages.seconds["dense"] < 1  # a failed stage is not recorded
    assert lines[0].startswith("[demo] stage dense ") and lines[0].endswith(" s")
    assert lines[1].startswith("[demo] stage convert failed after ")


def _host_report(paths, accumulators):
    """The keys of a host/run.py report that the demo's hardware check reads."""
    return {"inputs": len(paths), "paths": paths, "accumulators": accumulators, "predictions": [0] * len(paths),
            "leaves": [p[-1] for p in paths], "strategy": "serial", "ddr_bytes_per_inference": {"weights": 0.0},
            "latency": {"mean": 100.0, "mean_us": 1.0}}


REF = _host_report([[0, 1], [1, 3], [0, 0]], [[5, -2, 7], [1, 1, 1], [0, 3, 9]])


def test_sim_vs_ref_comparison_names_the_images_and_where():
    from sigmabranch.pipeline import compare_sim_to_ref
    sim = _host_report([[0, 1], [1, 2], [0, 0]], [[5, -2, 7], [1, 1, 1], [0, 4, 9]])
    problems = compare_sim_to_ref(sim, REF, path_bytes=[10, 10, 10], served=[10, 10, 12])
    assert len(problems) == 3
    # image 1: level 1's router on branch 1 (router_1_1) chose branch 2, the reference branch 3
    assert problems[0].startswith("image 1: router_1_1 (level 1) chose branch 2") and "3 in the reference" in problems[0]
    # image 2: same path, head_0's output 1 differs
    assert problems[1].startswith("image 2: same path") and "head_0" in problems[1] and "output(s) [1]" in problems[1]
    assert problems[2].startswith("image 2: 12 weight bytes") and "needs 10" in problems[2]
    assert compare_sim_to_ref(REF, REF, [10, 10, 10], [10, 10, 10]) == []
    root = _host_report([[1, 2], [1, 3], [0, 0]], REF["accumulators"])
    assert compare_sim_to_ref(root, REF, [10] * 3, [10] * 3)[0].startswith("image 0: router_0_0 (level 0)")


def test_failed_hardware_check_fails_the_demo_after_writing_metrics(tmp_path, monkeypatch, capsys):
    """run_host_sim on a (stubbed) host API run that differs from the reference: metrics.json is
    written with the numbers, then the run fails; through the CLI: exit 1 and one line naming it."""
    import host.run
    from sigmabranch import pipeline
    from sigmabranch.errors import HardwareCheckFailed

    bundle = tmp_path / "build" / "pynq-z2"
    bundle.mkdir(parents=True)
    regions = [{"bytes": 4}, {"bytes": 4}, {"bytes": 6}, {"bytes": 6}]
    (bundle / "weights.json").write_text(json.dumps({"levels": [{"regions": regions[:2]}, {"regions": regions}]}))
    sim = _host_report([[0, 1], [1, 3]], [[5, -2, 7], [1, 1, 2]])
    sim["simulation"] = {"ddr_read_bytes": [8, 10], "build_seconds": 0.0, "sim_seconds": 0.0}
    calls = []
    monkeypatch.setattr(host.run, "run_bundle", lambda *a, **k: calls.append((a, k)) or sim, raising=False)
    result = pipeline.run_host_sim(tmp_path, 2, REF, board="pynq-z2")
    assert calls[0][1]["backend"] == "sim" and calls[0][1]["limit"] == 2
    assert json.loads((tmp_path / "host_sim_pynq-z2.json").read_text()) == sim  # still written for users
    assert result["bitexact"] is False and result["bytes_equal_path"] is True
    assert result["mismatches"] == [result["mismatches"][0]] and "image 1:" in result["mismatches"][0]
    metrics = {"hardware": {"simulation": result, "bitexact": result["bitexact"]}}
    with pytest.raises(HardwareCheckFailed, match=r"image 1: same path .*head_3"):
        pipeline.write_metrics_then_check(tmp_path, metrics)
    assert json.loads((tmp_path / "metrics.json").read_text())["hardware"]["bitexact"] is False

    def failing_demo(out, **_):
        pipeline.write_metrics_then_check(Path(out), metrics)

    monkeypatch.setattr(pipeline, "run_demo", failing_demo)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 1
    err = capsys.readouterr().err
    assert "sigmabranch demo: check FAILED" in err and "image 1:" in err and "Traceback" not in err
    assert (tmp_path / "demo" / "metrics.json").is_file()


def test_finetune_with_a_missing_teacher_is_one_clear_line(tmp_path, capsys):
    import torch

    from model.config import TreeConfig
    from model.convert import convert, save_tree
    from model.registry import create_model

    torch.manual_seed(0)
    dense = create_model("edge_cnn", num_classes=10).eval()
    x = torch.randn(32, 1, 8, 8)
    data = torch.utils.data.TensorDataset(x, torch.arange(32) % 10)
    tree, _ = convert(dense, "edge_cnn", {"num_classes": 10}, data, TreeConfig(depth=1, max_samples=32), seed=0)
    save_tree(tmp_path / "tree.pt", tree)
    code = main(["finetune", "--config", str(CONFIGS / "demo_tree_digits.yaml"), "--tree", str(tmp_path / "tree.pt"),
                 "--out", str(tmp_path / "ft"), "--teacher", str(tmp_path / "no_teacher.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "no_teacher.pt" in err and "distill_teacher" in err and "Traceback" not in err
    assert not (tmp_path / "ft" / "checkpoint.pt").exists()
