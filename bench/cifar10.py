"""CIFAR-10 runs of the method (a task that does not saturate), resumable, for 2 CPU cores.

    .venv/bin/python bench/cifar10.py --model resnet20 [--stages dense,tree,quant] [--work runs/cifar10]

Stages, each in ``<work>/<model>/`` and each continued from its checkpoint when interrupted
(``--resume`` semantics of the CLI; a checkpoint of other settings is refused):

- ``dense``: the dense model (``configs/<model>_cifar10.yaml``);
- ``tree``: conversion (depth 2, 4 leaves), soft-routing fine-tuning, hard-routed evaluation
  (``configs/<model>_tree_cifar10.yaml``), the leaf heat map, in ``tree_activation/``;
- ``quant``: W4A4 QAT keeping the float routing (``configs/<model>_quant_cifar10.yaml``), with
  Top-1, leaf agreement with the float tree and balance;
- ``margin``: the tree stage's tree fine-tuned further with the routing-margin term
  (``configs/<model>_margin_cifar10.yaml``, ``margin/``), hard-routed evaluation, then the same
  W4A4 QAT from it (``quant_margin/``): does a margin on the float routers keep their decisions
  through quantisation?
- ``distill``: the tree stage's tree fine-tuned longer with knowledge distillation from the dense
  model (``configs/<model>_distill_cifar10.yaml``, ``distill/``), then the margin phase, still
  distilling (``distill_margin/``), then the same W4A4 QAT (``quant_distill/``);
- ``distill_long``: the distill stage's last tree fine-tuned further, distilling and with the margin
  term, the learning rate restarted (``configs/<model>_distill_long_cifar10.yaml``,
  ``distill_long/``), then the same W4A4 QAT (``quant_distill_long/``);
- ``depths``: the tree config's conversion at depths 1, 2, 3 and at ``tree.depth: auto``
  (``depth_<d>/``, ``depth_auto/``): per depth the active parameters, every node's silhouette
  against its one-Gaussian reference (model/convert.py ``choose_depth``), the hard-routed Top-1
  before fine-tuning, and the depth ``auto`` chooses.

What each finished stage reports is collected in ``bench/results/cifar10_<model>.json`` and
``.md`` (training budget included: epochs and seconds per stage). The baselines run with
``sigmabranch compare --config configs/compare_<model>_cifar10.yaml --out <work>/<model>``,
which reuses this dense model (same folder, same settings).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.config import load_config  # noqa: E402
from model.train import resumable, write_json  # noqa: E402

STAGES = ("dense", "tree", "quant", "margin", "distill", "distill_long", "depths", "variants")
# Fine-tuned trees beside the main one (stage ``variants``; the tree config with these overrides, the
# same budget): the depths next to depth 2, and the paper's Section V-E ablations.
VARIANTS = {"depth_1": ["tree.depth=1"], "depth_3": ["tree.depth=3"],
            "random_partition": ["tree.init=random"], "lambda_0": ["tree.resp_lambda=0"]}


def run_stage(name: str, folder: Path, run) -> dict:
    """``folder/metrics.json`` if the stage finished before, else run it (it resumes itself)."""
    done = folder / "metrics.json"
    if done.is_file():
        print(f"[cifar10] {name}: done before ({done})", flush=True)
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    metrics = run()
    print(f"[cifar10] {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "cifar10")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"the variants stage's trees (default all: {', '.join(VARIANTS)}); two processes may split them")
    args = p.parse_args(argv)
    stages = args.stages.split(",")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        p.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")

    from baselines.compare import run_tree_stage
    from model.dense import train_dense
    from quant.qat import run_quantize

    work = args.work / args.model
    config_of = {"dense": "", "tree": "_tree", "quant": "_quant", "margin": "_margin", "depths": "_tree",
                 "variants": "_tree", "distill": "_distill", "distill_long": "_distill_long"}
    configs = {s: load_config(REPO / "configs" / f"{args.model}{config_of[s]}_cifar10.yaml") for s in stages}
    report: dict = {"model": args.model, "dataset": "cifar10"}
    results = args.results / f"cifar10_{args.model}.json"
    if "dense" in stages:
        cfg = configs["dense"]
        report["dense"] = run_stage("dense", work / "dense", lambda: train_dense(
            cfg, work / "dense", resume=resumable(work / "dense" / "checkpoint.pt", cfg)))
    tree_dir = work / "tree_activation"  # sigmabranch compare's layout, so compare reuses it
    if "tree" in stages:
        cfg = configs["tree"]

        def tree() -> dict:
            result = run_tree_stage(work / "dense" / "checkpoint.pt", cfg, tree_dir)
            write_json(tree_dir / "metrics.json", result)
            return result
        report["tree"] = run_stage("tree", tree_dir, tree)
    if "quant" in stages:
        cfg = configs["quant"]
        report["quant"] = run_stage("quant", work / "quant", lambda: run_quantize(
            tree_dir / "finetune" / "checkpoint.pt", cfg, work / "quant",
            resume=resumable(work / "quant" / "checkpoint.pt", cfg)))
    if "margin" in stages:
        cfg, margin_dir = configs["margin"], work / "margin"
        report["margin"] = run_stage("margin", margin_dir, lambda: finetune_further(
            tree_dir / "finetune" / "checkpoint.pt", cfg, margin_dir, ("margin", "margin_lambda")))
        qcfg = load_config(REPO / "configs" / f"{args.model}_quant_cifar10.yaml")
        report["quant_margin"] = run_stage("quant from the margin tree", work / "quant_margin", lambda: run_quantize(
            margin_dir / "finetune" / "checkpoint.pt", qcfg, work / "quant_margin",
            resume=resumable(work / "quant_margin" / "checkpoint.pt", qcfg)))
    if "distill" in stages:
        from model.config import apply_overrides
        teacher = [f"tree.distill_teacher={work / 'dense' / 'checkpoint.pt'}"]
        cfg, distill_dir = apply_overrides(configs["distill"], teacher), work / "distill"
        report["distill"] = run_stage("distill", distill_dir, lambda: finetune_further(
            tree_dir / "finetune" / "checkpoint.pt", cfg, distill_dir, ("distill_lambda", "distill_tau")))
        # then the margin phase (still distilling) and W4A4 QAT, as the margin stage does for the tree
        mcfg = apply_overrides(load_config(REPO / "configs" / f"{args.model}_margin_cifar10.yaml"), teacher + [
            f"tree.distill_lambda={cfg.tree.distill_lambda}", f"tree.distill_tau={cfg.tree.distill_tau}"])
        report["distill_margin"] = run_stage("margin phase of the distilled tree", work / "distill_margin",
                                             lambda: finetune_further(distill_dir / "finetune" / "checkpoint.pt", mcfg,
                                                                      work / "distill_margin", ("margin", "margin_lambda")))
        qcfg = load_config(REPO / "configs" / f"{args.model}_quant_cifar10.yaml")
        report["quant_distill"] = run_stage("quant from the distilled tree", work / "quant_distill", lambda: run_quantize(
            work / "distill_margin" / "finetune" / "checkpoint.pt", qcfg, work / "quant_distill",
            resume=resumable(work / "quant_distill" / "checkpoint.pt", qcfg)))
    if "distill_long" in stages:
        from model.config import apply_overrides
        cfg = apply_overrides(configs["distill_long"], [f"tree.distill_teacher={work / 'dense' / 'checkpoint.pt'}"])
        long_dir = work / "distill_long"
        report["distill_long"] = run_stage("distill_long", long_dir, lambda: finetune_further(
            work / "distill_margin" / "finetune" / "checkpoint.pt", cfg, long_dir,
            ("distill_lambda", "distill_tau", "margin", "margin_lambda")))
        qcfg = load_config(REPO / "configs" / f"{args.model}_quant_cifar10.yaml")
        report["quant_distill_long"] = run_stage("quant from the longer-distilled tree", work / "quant_distill_long",
                                                 lambda: run_quantize(
            long_dir / "finetune" / "checkpoint.pt", qcfg, work / "quant_distill_long",
            resume=resumable(work / "quant_distill_long" / "checkpoint.pt", qcfg)))
    if "depths" in stages:
        report["depths"] = run_stage("depths", work / "depths", lambda: depths(
            work / "dense" / "checkpoint.pt", configs["depths"], work / "depths"))
    if "variants" in stages:
        from model.config import apply_overrides
        for name in args.variants.split(","):
            if name not in VARIANTS:
                p.error(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
            vcfg = apply_overrides(configs["variants"], VARIANTS[name])
            folder = work / "variants" / name

            def variant(vcfg=vcfg, folder=folder) -> dict:
                result = run_tree_stage(work / "dense" / "checkpoint.pt", vcfg, folder)
                write_json(folder / "metrics.json", result)
                return result
            run_stage(f"variant {name}", folder, variant)
        # every finished variant, this run's or another's
        report["variants"] = {name: json.loads((work / "variants" / name / "metrics.json").read_text())
                              for name in VARIANTS if (work / "variants" / name / "metrics.json").is_file()}
    if results.is_file():  # earlier runs' stages, and those another run may have added meanwhile
        report = {**json.loads(results.read_text()), **report}
    write_json(results, report)
    results.with_suffix(".md").write_text(table(report))
    print(results.with_suffix(".md").read_text())
    return 0


def finetune_further(checkpoint: Path, cfg, folder: Path, keys: tuple[str, ...]) -> dict:
    """A fine-tuned tree fine-tuned further under ``cfg`` (``folder/finetune``, resumed), then its
    hard-routed evaluation; ``keys`` of ``cfg.tree`` go into the stage's metrics."""
    from model.finetune import run_finetune
    from model.tree_report import evaluate_tree_checkpoint

    finetune = run_finetune(checkpoint, cfg, folder / "finetune",
                            resume=resumable(folder / "finetune" / "checkpoint.pt", cfg))
    result = evaluate_tree_checkpoint(folder / "finetune" / "checkpoint.pt", cfg, out_dir=folder)
    result.pop("class_leaf_counts")
    result = {**result, "epochs": cfg.epochs, "train_seconds": finetune["train_seconds"],
              **{k: getattr(cfg.tree, k) for k in keys}}
    write_json(folder / "metrics.json", result)
    return result


def depths(dense_checkpoint: Path, cfg, folder: Path) -> dict:
    """Conversions at depths 1-3 and ``auto`` (no fine-tuning): active params, split quality, Top-1."""
    from model.config import apply_overrides
    from model.convert import run_convert
    from model.tree_report import evaluate_tree_checkpoint

    rows = {}
    for depth in ("1", "2", "3", "auto"):
        dcfg = apply_overrides(cfg, [f"tree.depth={depth}"])
        out = folder / f"depth_{depth}"
        conversion = run_convert(dense_checkpoint, dcfg, out)
        evaluated = evaluate_tree_checkpoint(out / "tree.pt", dcfg, out_dir=out)
        nodes = conversion["nodes"]
        rows[depth] = {"depth": len(conversion["widths"]),
                       "active_params": conversion["active_params"], "total_params": conversion["total_params"],
                       "top1_hard_before_finetune": evaluated["top1_hard"], "balance": evaluated["balance"],
                       "min_silhouette_gap": min(n["silhouette"] - n["silhouette_null"] for n in nodes),
                       "silhouettes": [round(n["silhouette"], 4) for n in nodes],
                       "null_silhouettes": [round(n["silhouette_null"], 4) for n in nodes]}
        if depth == "auto":
            rows[depth]["depth_auto"] = conversion["depth_auto"]
    write_json(folder / "metrics.json", rows)
    return rows


def table(report: dict) -> str:
    """The report as a markdown table: Top-1, active params, leaf balance, budget."""
    rows = ["| model | Top-1 (%) | active params | balance | leaf agreement (%) | epochs | train s |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    dense = report.get("dense")
    if dense:
        rows.append(f"| dense {report['model']} | {dense['top1']:.2f} | {dense['params']:,} | - | - | "
                    f"{dense['epochs']} | {dense['train_seconds']:.0f} |")
    def tree_row(tree: dict, name: str, more: bool = False) -> None:
        """A hard-routed fine-tuned tree; ``more``: its epochs come on top of an earlier stage's."""
        rows.append(f"| {name} | {tree['top1_hard']:.2f} | {tree['active_params']:,} | {tree['balance']:.3f} | - | "
                    f"{'+' if more else ''}{tree['epochs']} | {tree['train_seconds']:.0f} |")

    def quant_row(quant: dict, name: str) -> None:
        refit = quant.get("router_refit") or {}
        before = f" ({refit['leaf_agreement_before']:.1f} before the router refit)" if refit else ""
        rows.append(f"| {name} {quant['bits']} | {quant['top1']:.2f} | - | {quant['balance']:.3f} | "
                    f"{quant['leaf_agreement']:.1f}{before} | {quant['epochs']} | {quant['train_seconds']:.0f} |")
    if report.get("tree"):
        tree_row(report["tree"], "tree (depth 2, hard)")
    if report.get("quant"):
        quant_row(report["quant"], "tree")
    if (m := report.get("margin")):
        tree_row(m, f"tree + margin phase (margin {m['margin']}, lambda {m['margin_lambda']}, hard)", more=True)
    if report.get("quant_margin"):
        quant_row(report["quant_margin"], "tree + margin phase")
    if (d := report.get("distill")):
        tree_row(d, f"tree + distillation (lambda {d['distill_lambda']}, tau {d['distill_tau']}, hard)", more=True)
    if report.get("distill_margin"):
        tree_row(report["distill_margin"], "tree + distillation + margin phase (hard)", more=True)
    if report.get("quant_distill"):
        quant_row(report["quant_distill"], "tree + distillation + margin phase")
    if report.get("distill_long"):
        tree_row(report["distill_long"], "tree + distillation + margin phase, continued (lr restarted, hard)", more=True)
    if report.get("quant_distill_long"):
        quant_row(report["quant_distill_long"], "tree + distillation + margin phase, continued")
    for name, v in (report.get("variants") or {}).items():
        tree_row(v, f"tree {name.replace('_', ' ')} ({VARIANTS[name][0]}, hard)")
    text = f"# CIFAR-10, {report['model']} (2 CPU cores)\n\n" + "\n".join(rows) + "\n"
    if report.get("depths"):
        text += ("\n## Tree depth (conversion only, before fine-tuning)\n\n"
                 "| tree.depth | depth | active params | Top-1 hard (%) | balance | min silhouette gap |\n"
                 "|---|---:|---:|---:|---:|---:|\n")
        for name, row in report["depths"].items():
            text += (f"| {name} | {row['depth']} | {row['active_params']:,} | {row['top1_hard_before_finetune']:.2f} | "
                     f"{row['balance']:.3f} | {row['min_silhouette_gap']:+.3f} |\n")
    return text


if __name__ == "__main__":
    sys.exit(main())
