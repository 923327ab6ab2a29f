"""``sigmabranch``: one command line for every stage of the flow.

Each subcommand imports its stage lazily, so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hls.boards import BOARDS, ROUTER_FOLD  # plain Python (dataclasses only): --help stays instant
from sigmabranch.errors import CHECK_FAILURES, user_errors

DESCRIPTION = """\
Take a pretrained dense network to an FPGA as a Sigma-Branch tree.

Stages (each reads and writes files you can inspect):
  train      train a dense model from a YAML/JSON config          -> checkpoint.pt
  convert    dense checkpoint -> initialised Sigma-Branch tree    -> tree.pt, partition.png
  finetune   soft-routing fine-tuning of a tree                   -> checkpoint.pt
  quantize   Brevitas quantisation-aware fine-tuning of a tree   -> checkpoint.pt (W4A4 default)
  export     quantised tree -> QONNX per node, integer programs    -> tree.json, <node>.onnx/.npz
  build      exported tree -> FINN+ HW layers per node, placement, DDR weight image ({boards})
  evaluate   Top-1/Top-5, params, MACs, leaf usage of a checkpoint (dense or tree)
  summary    dense vs default tree accounting of a registered model, no data needed
  models     list the registered models
  demo       the main job on the embedded digits data (what `make run` calls)
  compare    tree vs L1/FPGM/HRank/AGF pruning and AGF routing     -> compare.md/.csv, pareto.png

Run `sigmabranch <stage> --help` for a stage's options.
""".format(boards=", ".join(BOARDS))


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML or JSON run config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set epochs=2 --set optim.lr=0.05 (repeatable)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: auto)")


def _depth(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of levels or 'auto', got {text!r}") from None


def tree_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--init", choices=["activation", "random"], help="channel partition (random = ablation)")
    p.add_argument("--lambda", dest="resp_lambda", type=float, help="responsibility-loss weight (0 = ablation)")
    p.add_argument("--alpha", type=float, help="shared-channel fraction of each specialiser")
    p.add_argument("--depth", type=_depth, help="tree levels (leaves = 2**depth), or auto: the deepest tree up to "
                   "tree.max_depth whose every router split is clustered (silhouette), recorded in conversion.json")
    p.add_argument("--max-samples", dest="max_samples", type=int, help="training samples used for k-means")
    p.add_argument("--channel-score", dest="channel_score", choices=["activation", "agf"],
                   help="Phase 2 channel score: mean activation (paper) or AGF utility |a * dL/da|")


def _load_cfg(args):
    from model.config import apply_overrides, load_config
    return apply_overrides(load_config(args.config), args.overrides)


def cmd_train(args) -> int:
    from model.dense import train_dense
    metrics = train_dense(_load_cfg(args), args.out, device=args.device, resume=args.resume)
    print(json.dumps(metrics, indent=2))
    return 0


def _tree_overrides(args) -> list[str]:
    extra = []
    for flag, key in (("init", "tree.init"), ("resp_lambda", "tree.resp_lambda"), ("alpha", "tree.alpha"),
                      ("depth", "tree.depth"), ("max_samples", "tree.max_samples"),
                      ("channel_score", "tree.channel_score")):
        if getattr(args, flag, None) is not None:
            extra.append(f"{key}={getattr(args, flag)}")
    return extra


def cmd_convert(args) -> int:
    from model.config import apply_overrides
    from model.convert import run_convert
    cfg = apply_overrides(_load_cfg(args), _tree_overrides(args))
    report = run_convert(args.dense, cfg, args.out)
    print(json.dumps(report, indent=2))
    return 0


def cmd_finetune(args) -> int:
    from model.config import apply_overrides
    from model.finetune import run_finetune
    cfg = apply_overrides(_load_cfg(args), _tree_overrides(args))
    if args.teacher:  # distil from this dense checkpoint, at the config's weight (1.0 where it has none)
        cfg = apply_overrides(cfg, [f"tree.distill_teacher={args.teacher}",
                                    f"tree.distill_lambda={cfg.tree.distill_lambda or 1.0}"])
    print(json.dumps(run_finetune(args.tree, cfg, args.out, device=args.device, resume=args.resume), indent=2))
    return 0


def cmd_quantize(args) -> int:
    from model.config import apply_overrides
    from quant.qat import run_quantize
    cfg = _load_cfg(args)
    if args.bits:
        cfg = apply_overrides(cfg, [f"quant.bits={args.bits}"])
    print(json.dumps(run_quantize(args.tree, cfg, args.out, device=args.device, resume=args.resume), indent=2))
    return 0


def cmd_export(args) -> int:
    from quant.export import run_export
    manifest = run_export(args.checkpoint, args.out)
    print(f"exported {len(manifest['nodes'])} nodes to {args.out} (manifest {args.out / 'tree.json'})")
    if args.check:
        from quant.check import run_check
        cfg = _load_cfg(args) if args.config else None
        from quant.check import ExportMismatch
        try:
            report = run_check(args.checkpoint, args.out, cfg, limit=args.limit, finn_inputs=args.finn_inputs)
        except ExportMismatch as err:
            print(f"sigmabranch export: check FAILED: {err}", file=sys.stderr)
            return 1
        (args.out / "check.json").write_text(json.dumps(report, indent=1))
        print(json.dumps({k: v for k, v in report.items() if k != "nodes"}, indent=2))
    return 0


def cmd_build(args) -> int:
    from hls.build import build
    build(args.export, args.board, args.out, target_cycles=args.target_cycles, folding_config=args.folding,
          hdl=not args.no_hdl, weight_ram=args.weight_ram, weight_buffer=args.weight_buffer,
          router_fold=args.router_fold, port_fill=args.port_fill,
          threshold_bram_depth=args.threshold_bram_depth)
    print((args.out / "placement.md").read_text())
    if args.bitstream:
        from hls.vivado import vivado_step
        vivado_step(args.out, run=True)  # no vivado on PATH: VivadoMissing, a BuildError (one line, exit 2)
    return 0


def cmd_evaluate(args) -> int:
    from model.checkpoint import load_checkpoint
    cfg = _load_cfg(args) if args.config else None
    kind = load_checkpoint(args.checkpoint).get("kind")
    if kind == "tree":
        from model.tree_report import evaluate_tree_checkpoint
        result = evaluate_tree_checkpoint(args.checkpoint, cfg, device=args.device, out_dir=args.out,
                                          dense_checkpoint=args.dense)
        result.pop("class_leaf_counts")
    else:
        from model.dense import evaluate_dense
        result = evaluate_dense(args.checkpoint, cfg, device=args.device)
    print(json.dumps(result, indent=2))
    return 0


def cmd_summary(args) -> int:
    from model.tree_report import summarize
    result = summarize(args.model, args.num_classes, depth=args.depth, input_shape=args.input_shape)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['model']} ({result['num_classes']} classes, input {tuple(result['input_shape'])}), "
              f"depth {result['depth']}, levels {result['level_names']} at widths {result['widths']}")
        print(f"  params   dense {result['dense_params'] / 1e6:8.3f}M   tree total {result['total_params'] / 1e6:8.3f}M"
              f"   active {result['active_params'] / 1e6:8.3f}M ({result['active_reduction_pct']:.1f}% fewer)")
        print(f"  MACs     dense {result['dense_macs'] / 1e9:8.3f}G   hard path  {result['path_macs'] / 1e9:8.3f}G"
              f"   ({result['mac_ratio']:.3f}x)")
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


def cmd_compare(args) -> int:
    from baselines.compare import run_compare
    metrics = run_compare(args.config, args.out, overrides=args.overrides, device=args.device)
    print(metrics["table"])
    return 0


def cmd_demo(args) -> int:
    from sigmabranch.pipeline import run_demo
    metrics = run_demo(args.out, config=args.config, tree_config=args.tree_config, quick=args.quick,
                       device=args.device, tree_overrides=_tree_overrides(args), hardware_sim=args.hardware_sim,
                       notebooks=not args.no_notebooks)
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

    p = sub.add_parser("convert", help="dense checkpoint -> initialised tree",
                       description="Phases 0-5 of Sigma-Branch (Section III-C): spherical k-means routers and "
                                   "activation-based channel partition. Writes tree.pt, conversion.json and "
                                   "partition.png (per-channel activation, cluster 0 vs 1).")
    _add_config_args(p)
    p.add_argument("--dense", required=True, help="dense checkpoint.pt (from `sigmabranch train`)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    tree_flags(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("finetune", help="soft-routing fine-tuning of a tree",
                       description="Specialist loss + lambda * responsibility loss (Section III-D), every leaf "
                                   "evaluated; evaluation uses hard top-1 routing. Resumable; DDP under torchrun.")
    _add_config_args(p)
    p.add_argument("--tree", required=True, help="tree.pt from `sigmabranch convert` (or a fine-tuned checkpoint)")
    p.add_argument("--out", required=True, type=Path, help="output run directory")
    p.add_argument("--resume", help="continue from this checkpoint.pt")
    p.add_argument("--teacher", help="dense checkpoint.pt to distil from (knowledge distillation, not in the paper; "
                                     "weight tree.distill_lambda, 1.0 if unset; temperature tree.distill_tau)")
    tree_flags(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("quantize", help="quantisation-aware fine-tuning of a tree (Brevitas)",
                       description="Turn a fine-tuned tree into a Brevitas tree (signed narrow-range weights, "
                                   "unsigned activations, 8-bit input) and fine-tune it with the soft-routing "
                                   "objective. Evaluation uses hard routing with the integer router decision; "
                                   "router_agreement says how often it matches the float LayerNorm router.")
    _add_config_args(p)
    p.add_argument("--tree", required=True, help="fine-tuned tree checkpoint.pt (from `sigmabranch finetune`)")
    p.add_argument("--out", required=True, type=Path, help="output run directory")
    p.add_argument("--bits", help="preset: w8a8, w4a4 (default), w2a2 or wXaY")
    p.add_argument("--resume", help="continue from this checkpoint.pt")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("export", help="quantised tree -> QONNX per node + tree.json (+ cross-checks)",
                       description="Export every node of a quantised tree (backbone, routers, branches, leaf heads) "
                                   "as QONNX, run FINN+'s ConvertQONNXtoFINN + streamlining on it, and write its "
                                   "integer program and tree.json (topology, shapes, datatypes, scales, router "
                                   "integers). --check compares the numpy integer reference with qonnx's and "
                                   "FINN+'s execution of every node and with the Brevitas tree end to end, on the "
                                   "test split, and writes check.json.")
    p.add_argument("checkpoint", help="checkpoint.pt of kind qtree (from `sigmabranch quantize`)")
    p.add_argument("--out", required=True, type=Path, help="export directory (e.g. runs/export)")
    p.add_argument("--check", action="store_true", help="run the cross-checks on the test split")
    p.add_argument("--config", help="(--check) take the test data from this config (default: the checkpoint's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--limit", type=int, help="(--check) at most this many test inputs")
    p.add_argument("--finn-inputs", dest="finn_inputs", type=int,
                   help="(--check) run FINN+'s executor (slow, one input at a time) on only this many inputs")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("build", help="exported tree -> FINN+ hardware, placement report, DDR weight image",
                       description="Per node of an exported tree: FINN+ HW layers (RTL where FINN+ has them), "
                                   "folding, HDL generation (PrepareIP). The backbone and root router keep their "
                                   "weights on chip; each tree level gets one datapath shared by its branches, "
                                   "whose weights FINN+'s fetch_weights reads from DDR once per inference. Writes "
                                   "placement.json/.md (FINN+ estimates vs the board), weights.bin/.json (one "
                                   "contiguous, 4 KiB-aligned, CRC32-checked region per branch), driver.json, "
                                   "nodes/*.hw.onnx and vivado/ (the stitched HDL, block-design Tcl, build_bitstream.sh). "
                                   "Refuses a design whose on-chip part does not fit.")
    p.add_argument("--export", required=True, type=Path, help="directory written by `sigmabranch export`")
    p.add_argument("--board", required=True, choices=list(BOARDS))
    p.add_argument("--out", required=True, type=Path, help="build directory (e.g. build/pynq-z2)")
    p.add_argument("--target-cycles", dest="target_cycles", type=int,
                   help="SetFolding target, cycles per frame (default: the board's: "
                        + ", ".join(f"{b.name} {b.target_cycles}" for b in BOARDS.values()) + ")")
    p.add_argument("--router-fold", dest="router_fold", type=int, default=ROUTER_FOLD,
                   help=f"routers and leaf heads fold to the target / this (default {ROUTER_FOLD}): their cycles "
                        "are serial with the levels'; 1 folds them like the levels")
    p.add_argument("--no-port-fill", dest="port_fill", action="store_false",
                   help="keep the folding target's SIMD for the fetched layers (default: widened so each weight "
                        "buffer fills at the DDR port's rate, which the layer waits for)")
    p.add_argument("--folding", help="a FINN folding config JSON (ApplyConfig) instead of SetFolding")
    p.add_argument("--no-hdl", dest="no_hdl", action="store_true", help="skip the HDL and the Vivado project (estimates and weight image only)")
    p.add_argument("--weight-ram", dest="weight_ram", choices=("auto", "block", "distributed", "ultra"),
                   help="memory of the on-chip (backbone, root router) MVAU weights; ultra = URAM (runtime-writeable "
                        "on UltraScale+; placement only for now: needs --no-hdl)")
    p.add_argument("--threshold-bram-depth", dest="threshold_bram_depth", type=int, default=0, metavar="N",
                   help="threshold memories of N entries or more in BRAM, the rest in LUTRAM (FINN+'s "
                        "depth_trigger_bram; default 0: all LUTRAM). A ResNet tree's levels hold every branch's "
                        "threshold sets, most of their LUTs")
    p.add_argument("--weight-buffer", dest="weight_buffer", choices=("branch", "none"), default="branch",
                   help="branch (default): the levels' fetch buffers hold a whole branch for the inference; none: no "
                        "level weights on chip, each layer re-read from DDR for every pixel (placement only for now: "
                        "needs --no-hdl)")
    p.add_argument("--bitstream", action="store_true",
                   help="then run synthesis and the bitstream (needs `vivado` on PATH)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("evaluate", help="evaluate a dense or tree checkpoint",
                       description="Dense: Top-1/Top-5 (%%), params, MACs (fvcore convention, batch 1). Tree: hard "
                                   "and soft Top-1, Top-5, total/active params, path MACs, leaf usage, balance and "
                                   "a per-class leaf heatmap PNG.")
    p.add_argument("checkpoint", help="checkpoint.pt / tree.pt")
    p.add_argument("--config", help="evaluate on this config's data (default: the config stored in the checkpoint)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--dense", help="(tree) also evaluate this dense checkpoint and report the active-param cut")
    p.add_argument("--out", type=Path, help="(tree) where to write leaf_heatmap.png (default: beside the checkpoint)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("summary", help="dense vs tree accounting of a registered model",
                       description="Build a dense model and its default tree without data and print params, "
                                   "active params along a hard path, and MACs (dense and path, batch 1).")
    p.add_argument("--model", required=True, help="registered model (see `sigmabranch models`)")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--depth", type=int, default=2, help="tree levels (default 2: 4 leaves)")
    p.add_argument("--input-shape", type=int, nargs="+", help="one input's shape (default: the model's own)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("models", help="list registered models", description="List the registered models.")
    p.add_argument("--params", action="store_true", help="also print each model's parameter count")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("compare", help="tree vs static pruning, AGF and routing: one table",
                       description="Train (or reuse) the dense model, the tree with each channel score, L1/FPGM/HRank/"
                                   "AGF pruning at each ratio (fine-tuned with the tree's budget) and AGF confidence "
                                   "routing; write compare.md, compare.csv, pareto.png and metrics.json to --out. "
                                   "Stages whose folder holds results of the same settings are reused.")
    p.add_argument("--config", required=True, help="compare config (configs/compare_*.yaml)")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="output directory (default: runs/compare)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a compare-config entry, e.g. --set 'ratios=[0.5]' (repeatable)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="the main job on the embedded digits data",
                       description="Dense training on scikit-learn's digits and every later stage, "
                                   "writing runs/demo/metrics.json and plots.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default: runs/demo)")
    p.add_argument("--config", default=None, help="dense config (default: configs/demo_edge_digits.yaml)")
    p.add_argument("--tree-config", default=None, help="tree config (default: configs/demo_tree_digits.yaml)")
    p.add_argument("--quick", action="store_true", help="a few epochs only (smoke test)")
    p.add_argument("--hardware-sim", dest="hardware_sim", type=int, default=2, metavar="N",
                   help="run the first N test images through host/run.py --backend sim: the driver on the "
                        "Verilator model of the PYNQ-Z2 design behind AXI (bit-exactness vs the reference, DDR "
                        "bytes, cycles; default 2, 0 skips it); the first run builds the model, later runs "
                        "reuse it. A mismatch fails the run (exit 1) after metrics.json is written")
    p.add_argument("--no-notebooks", dest="no_notebooks", action="store_true",
                   help="skip executing notebooks/ into <out>/notebooks")
    tree_flags(p)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except CHECK_FAILURES as err:
        # A failed check (the run's files are written): one line naming what differed.
        print(f"sigmabranch {args.command}: check FAILED: {err}", file=sys.stderr)
        return 1
    except user_errors() as err:
        # Bad input is reported as one clear line, not a traceback.
        print(f"sigmabranch {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
