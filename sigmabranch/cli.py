"""``sigmabranch``: one command line for every stage of the flow.

Each subcommand imports its stage lazily, so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DESCRIPTION = """\
Take a pretrained dense network to an FPGA as a Sigma-Branch tree.

Stages (each reads and writes files you can inspect):
  train      train a dense model from a YAML/JSON config
  evaluate   Top-1/Top-5, params and MACs of a checkpoint
  models     list the registered models
  demo       the main job on the embedded digits data (what `make run` calls)

Run `sigmabranch <stage> --help` for a stage's options.
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML or JSON run config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set epochs=2 --set optim.lr=0.05 (repeatable)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: auto)")


def _load_cfg(args):
    from model.config import apply_overrides, load_config
    return apply_overrides(load_config(args.config), args.overrides)


def cmd_train(args) -> int:
    from model.dense import train_dense
    metrics = train_dense(_load_cfg(args), args.out, device=args.device, resume=args.resume)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from model.dense import evaluate_dense
    cfg = _load_cfg(args) if args.config else None
    print(json.dumps(evaluate_dense(args.checkpoint, cfg, device=args.device), indent=2))
    return 0


def cmd_models(args) -> int:
    from model.accounting import count_params
    from model.registry import create_model, list_models
    for name in list_models():
        line = name
        if args.params:
            line += f"  {count_params(create_model(name)) / 1e6:.3f}M params"
        print(line)
    return 0


def cmd_demo(args) -> int:
    from sigmabranch.pipeline import run_demo
    metrics = run_demo(args.out, config=args.config, quick=args.quick, device=args.device)
    print(json.dumps(metrics, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sigmabranch", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="<stage>")

    p = sub.add_parser("train", help="train a dense model from a config",
                       description="Train a dense registered model. Writes checkpoint.pt (resumable), "
                                   "metrics.json and train_curve.png to --out. Under torchrun it runs "
                                   "data-parallel (DDP).")
    _add_config_args(p)
    p.add_argument("--out", required=True, type=Path, help="output run directory")
    p.add_argument("--resume", help="continue from this checkpoint.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a dense checkpoint",
                       description="Top-1/Top-5 (%%), params and MACs (fvcore convention, batch 1) of a checkpoint.")
    p.add_argument("checkpoint", help="checkpoint.pt written by `sigmabranch train`")
    p.add_argument("--config", help="evaluate on this config's data (default: the config stored in the checkpoint)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("models", help="list registered models", description="List the registered models.")
    p.add_argument("--params", action="store_true", help="also print each model's parameter count")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("demo", help="the main job on the embedded digits data",
                       description="Dense training on scikit-learn's digits and every later stage, "
                                   "writing runs/demo/metrics.json and plots.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default: runs/demo)")
    p.add_argument("--config", default=None, help="dense config (default: configs/demo_edge_digits.yaml)")
    p.add_argument("--quick", action="store_true", help="a few epochs only (smoke test)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from model.errors import USER_ERRORS
    try:
        return args.func(args)
    except USER_ERRORS as err:
        # Bad input is reported as one clear line, not a traceback.
        print(f"sigmabranch {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
