"""CPU latency / throughput of a Sigma-Branch tree vs its dense ResNet-50 (CIFAR stem, 32x32, 100 classes).

Run from the repository root::

    .venv/bin/python bench/tree_latency.py [--quick] [--threads N] [--json out.json] [--wait-quiet S]

One run measures (details and this machine's numbers: bench/README.md):

1. batch-1 latency, dense vs tree hard path (``forward_hard``): median / p90 / min, speed-up
   dense/tree next to the MAC ratio path/dense;
2. batch-64 throughput, dense vs tree hard routing, with the routers as initialised (the observed
   leaf distribution is printed) and with the routers forced to an exactly balanced split;
3. grouped dispatch (``forward_hard``) vs "evaluate every leaf and mask" (every branch runs on the
   whole batch, then each input takes its routed leaf's logits), at batch 1 and batch 64;
4. a per-stage breakdown at batch 1 and batch 64 (each part timed alone on its real input, per
   image; at batch 64 the tree parts run on the group sizes a balanced split gives them: 32 at
   level 0, 16 at level 1), which says where the tree gains less than its MAC ratio.

``--fold-bn`` adds an EXPERIMENT (no model code changes): BatchNorm folded into the preceding
convolutions of copies of both models, then sections 1-2 again. ``--fast-path`` adds another: a
batch-1 fast path for ``forward_hard`` (``single_path_hard``) timed against it.

Correctness guards: batched ``forward_hard`` vs per-sample ``forward_hard`` (max abs diff of the
logits, leaves equal) and the masked baseline vs ``forward_hard``.

Timing: ``torch.inference_mode``, ``time.perf_counter``; the candidates of one comparison run
interleaved (one call of each per round) so background load hits them alike; each candidate gets
at least ``min_reps`` calls and ``min_time`` seconds after a warm-up. The process's CPU share while
timing is printed: well below 1.0 means other processes took the cores and the numbers are
distorted. The tree is data-free (``default_spec``: the paper's widths, first-k channel
indices, random routers), which is fine for timing.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.accounting import count_macs, model_macs  # noqa: E402
from model.registry import create_model  # noqa: E402
from model.resnet import Bottleneck  # noqa: E402
from model.tree import SigmaBranchTree  # noqa: E402
from model.tree_layout import build_tree, default_spec  # noqa: E402

MODEL = "resnet50_cifar"
NUM_CLASSES = 100
SHAPE = (3, 32, 32)


# ---------------------------------------------------------------------------------------- timing
def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def measure(cands: dict[str, Callable[[], object]], min_reps: int, min_time: float, warmup: int,
            max_time: float) -> tuple[dict[str, dict], float]:
    """Interleaved timing: each round calls every candidate once. Stops when every candidate has
    ``min_reps`` calls and ``min_time`` seconds of calls (or after ``max_time`` seconds, with at
    least 3 calls each). Returns the per-candidate stats and this process's CPU share."""
    for fn in cands.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cands}
    start, cpu0 = time.perf_counter(), time.process_time()
    while True:
        for name, fn in cands.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        reps = len(next(iter(times.values())))
        done = all(len(ts) >= min_reps and sum(ts) >= min_time for ts in times.values())
        if done or (reps >= 3 and time.perf_counter() - start > max_time):
            break
    # CPU time over wall time per thread: ~1.0 on a quiet machine (idle OpenMP workers spin), lower
    # when other processes took the cores
    cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - start) / torch.get_num_threads()
    stats = {name: {"median_s": statistics.median(ts), "p90_s": percentile(ts, 0.9), "min_s": min(ts),
                    "mean_s": statistics.fmean(ts), "reps": len(ts)} for name, ts in times.items()}
    return stats, cpu_share


def cpu_busy(interval: float = 2.0) -> float | None:
    """Fraction of all cores busy over ``interval`` seconds (from /proc/stat; None elsewhere)."""
    def read():
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    try:
        t0, i0 = read()
        time.sleep(interval)
        t1, i1 = read()
    except OSError:
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float | None:
    """Wait (up to ``max_wait`` s) until other processes use at most ``threshold`` of the cores."""
    start = time.perf_counter()
    busy = cpu_busy()
    while busy is not None and busy > threshold and time.perf_counter() - start < max_wait:
        print(f"# machine busy ({busy:.0%} of the cores used by other processes), waiting ...", flush=True)
        time.sleep(8)
        busy = cpu_busy()
    return busy


# ---------------------------------------------------------------------------------------- routing
def all_leaves_masked(tree: SigmaBranchTree, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Baseline: run every branch and head on the whole batch, then take each input's routed leaf.

    The routing rule is forward_hard's: per node, argmax of the router logits (ties -> branch 0)."""
    feats = [tree.backbone(x)]
    n = feats[0].shape[0]
    node = torch.zeros(n, dtype=torch.long)  # the node each input is at, within its level
    for level in range(tree.depth):
        choices = torch.stack([tree.routers[level][k](h).argmax(dim=1) for k, h in enumerate(feats)], dim=1)
        node = 2 * node + choices.gather(1, node[:, None]).squeeze(1)
        feats = [tree.specialisers[level][2 * k + c](h) for k, h in enumerate(feats) for c in (0, 1)]
    leaf_logits = torch.stack([head(h) for head, h in zip(tree.heads, feats)], dim=1)  # (B, L, C)
    return leaf_logits[torch.arange(n), node], node


def soft_masked(tree: SigmaBranchTree, x: torch.Tensor) -> torch.Tensor:
    """The same baseline through the model's own ``forward_soft`` (what training evaluates); the leaf
    is picked by the largest path probability (can differ from the per-level argmax path)."""
    leaf_logits, leaf_log_probs = tree.forward_soft(x)
    return leaf_logits[torch.arange(x.shape[0]), leaf_log_probs.argmax(1)]


@torch.inference_mode()
def balance_routers(tree: SigmaBranchTree, x: torch.Tensor) -> None:
    """Rewrite every router's final linear so that ``x`` splits exactly in half at every node.

    Router logit 1 becomes ``w . latent - t`` (w: the top principal direction of the node's latents
    on its share of ``x``; t: the midpoint of the two middle projections), logit 0 becomes 0. The
    router's cost is unchanged (same shapes), only its decisions change."""

    def visit(h, level: int, node: int) -> None:
        if level == tree.depth:
            return
        rn = tree.routers[level][node]
        z = rn.latent(h)
        if z.shape[0] > 1:
            w = torch.linalg.svd(z - z.mean(0, keepdim=True), full_matrices=False).Vh[0]
            s = (z @ w).sort().values
            m = len(s) // 2
            t = (s[m - 1] + s[m]) / 2
        else:
            w, t = torch.ones(z.shape[1]), (z.sum(1)[0] - 1.0)
        rn.router.weight.zero_()
        rn.router.bias.zero_()
        rn.router.weight[1] = w
        rn.router.bias[1] = -t
        choice = rn(h).argmax(1)
        for child in (0, 1):
            rows = (choice == child).nonzero().flatten()
            if len(rows):
                visit(tree.specialisers[level][2 * node + child](h.index_select(0, rows)), level + 1, 2 * node + child)

    visit(tree.backbone(x), 0, 0)


def leaf_counts(tree: SigmaBranchTree, x: torch.Tensor) -> list[int]:
    with torch.inference_mode():
        _, leaves = tree.forward_hard(x)
    return torch.bincount(leaves, minlength=tree.num_leaves).tolist()


@torch.inference_mode()
def correctness(tree: SigmaBranchTree, x: torch.Tensor) -> dict:
    logits, leaves = tree.forward_hard(x)
    single = [tree.forward_hard(x[i:i + 1]) for i in range(x.shape[0])]
    s_logits = torch.cat([lg for lg, _ in single])
    s_leaves = torch.cat([lv for _, lv in single])
    m_logits, m_leaves = all_leaves_masked(tree, x)
    return {"batched_vs_per_sample_max_abs_diff": (logits - s_logits).abs().max().item(),
            "batched_vs_per_sample_leaves_equal": bool(torch.equal(leaves, s_leaves)),
            "masked_vs_hard_max_abs_diff": (logits - m_logits).abs().max().item(),
            "masked_vs_hard_leaves_equal": bool(torch.equal(leaves, m_leaves)),
            "logit_scale_max_abs": logits.abs().max().item()}


# ---------------------------------------------------------------------------------------- breakdown
PARTS = ["backbone (stem, layer1, layer2)", "router L0", "layer3 | level-0 branch", "router L1",
         "layer4 | level-1 branch", "head (pool + fc)"]


@torch.inference_mode()
def breakdown_cands(dense: nn.Module, tree: SigmaBranchTree, x: torch.Tensor):
    """Per part: (dense fn, dense batch, tree fn, tree batch). Tree parts run on the group sizes an
    even split gives them (B/2 at level 0, B/4 at level 1); times are divided by the batch."""
    b = x.shape[0]
    g0, g1 = max(1, b // 2), max(1, b // 4)
    h2 = tree.backbone(x)  # = dense stem + layer1 + layer2 (the backbone is a copy of them)
    h3 = dense.layer3(h2)
    h4 = dense.layer4(h3)
    r0, s0, r1, s1, head = tree.routers[0][0], tree.specialisers[0][0], tree.routers[1][0], tree.specialisers[1][0], tree.heads[0]
    h2g = h2[:g0].contiguous()
    t1 = s0(h2g)
    t1g = t1[:g1].contiguous()
    t2 = s1(t1g)
    return {
        PARTS[0]: (lambda: dense.layer2(dense.layer1(dense.stem(x))), b, lambda: tree.backbone(x), b),
        PARTS[1]: (None, b, lambda: r0(h2).argmax(1), b),
        PARTS[2]: (lambda: dense.layer3(h2), b, lambda: s0(h2g), g0),
        PARTS[3]: (None, b, lambda: r1(t1).argmax(1), g0),
        PARTS[4]: (lambda: dense.layer4(h3), b, lambda: s1(t1g), g1),
        PARTS[5]: (lambda: dense.forward_head(h4), b, lambda: head(t2), g1),
    }


@torch.no_grad()
def breakdown_macs(dense: nn.Module, tree: SigmaBranchTree) -> dict[str, tuple[int, int]]:
    x = torch.zeros(1, *SHAPE)
    h2 = tree.backbone(x)
    h3 = dense.layer3(h2)
    h4 = dense.layer4(h3)
    t1 = tree.specialisers[0][0](h2)
    t2 = tree.specialisers[1][0](t1)
    r0, r1 = tree.routers[0][0], tree.routers[1][0]
    head = nn.Sequential(dense.avgpool, nn.Flatten(1), dense.fc)
    return {
        PARTS[0]: (count_macs(lambda: tree.backbone(x), tree.backbone),) * 2,
        PARTS[1]: (0, count_macs(lambda: r0(h2), r0)),
        PARTS[2]: (count_macs(lambda: dense.layer3(h2), dense.layer3), count_macs(lambda: tree.specialisers[0][0](h2), tree.specialisers[0][0])),
        PARTS[3]: (0, count_macs(lambda: r1(t1), r1)),
        PARTS[4]: (count_macs(lambda: dense.layer4(h3), dense.layer4), count_macs(lambda: tree.specialisers[1][0](t1), tree.specialisers[1][0])),
        PARTS[5]: (count_macs(lambda: head(h4), head), count_macs(lambda: tree.heads[0](t2), tree.heads[0])),
    }


def run_breakdown(dense, tree, x, cfg) -> tuple[dict, float]:
    b = x.shape[0]
    parts = breakdown_cands(dense, tree, x)
    cands, per = {}, {}
    for k, (dfn, db, tfn, tb) in parts.items():
        if dfn is not None:
            cands[f"dense | {k}"] = dfn
            per[f"dense | {k}"] = db
        cands[f"tree | {k}"] = tfn
        per[f"tree | {k}"] = tb
    cands["dense | end-to-end"], per["dense | end-to-end"] = (lambda: dense(x)), b
    cands["tree | end-to-end"], per["tree | end-to-end"] = (lambda: tree.forward_hard(x)), b
    with torch.inference_mode():
        stats, share = measure(cands, **cfg)
    # per image: median time / batch the part ran on
    return {k: {**v, "per_image_s": v["median_s"] / per[k], "batch": per[k]} for k, v in stats.items()}, share


def print_breakdown(title: str, bd: dict, macs: dict) -> dict:
    print(f"\n== {title} ==")
    print(f"{'part':<34}{'dense ms':>9}{'tree ms':>9}{'speed-up':>10}{'MAC ratio':>10}{'dense time%':>12}{'dense MAC%':>11}")
    d_sum = sum(bd[f"dense | {k}"]["per_image_s"] for k in PARTS if f"dense | {k}" in bd)
    t_sum = sum(bd[f"tree | {k}"]["per_image_s"] for k in PARTS)
    d_mac_tot = sum(m[0] for m in macs.values())
    out = {}
    for k in PARTS:
        d = bd.get(f"dense | {k}")
        t = bd[f"tree | {k}"]
        dm, tm = macs[k]
        d_txt = f"{d['per_image_s'] * 1e3:9.3f}" if d else f"{'-':>9}"
        sp_txt = f"{d['per_image_s'] / t['per_image_s']:9.2f}x" if d else " " * 10
        mr_txt = f"{tm / dm:10.3f}" if dm else f"{'-':>10}"
        sh_txt = f"{d['per_image_s'] / d_sum:12.0%}{dm / d_mac_tot:11.0%}" if d else ""
        print(f"{k:<34}{d_txt}{t['per_image_s'] * 1e3:9.3f}{sp_txt}{mr_txt}{sh_txt}")
        out[k] = {"dense_per_image_s": d["per_image_s"] if d else None, "tree_per_image_s": t["per_image_s"],
                  "tree_batch": t["batch"], "dense_macs": dm, "tree_macs": tm}
    d_e2e, t_e2e = bd["dense | end-to-end"]["per_image_s"], bd["tree | end-to-end"]["per_image_s"]
    t_mac_tot = sum(m[1] for m in macs.values())
    print(f"{'sum of parts':<34}{d_sum * 1e3:9.3f}{t_sum * 1e3:9.3f}{d_sum / t_sum:9.2f}x{t_mac_tot / d_mac_tot:10.3f}")
    print(f"{'end-to-end (forward / forward_hard)':<34}{d_e2e * 1e3:9.3f}{t_e2e * 1e3:9.3f}{d_e2e / t_e2e:9.2f}x")
    print(f"{'glue = end-to-end - parts':<34}{(d_e2e - d_sum) * 1e3:9.3f}{(t_e2e - t_sum) * 1e3:9.3f}")
    return {"parts": out, "dense_sum_s": d_sum, "tree_sum_s": t_sum, "dense_e2e_s": d_e2e, "tree_e2e_s": t_e2e}


# ---------------------------------------------------------------------------------------- experiment
def fold_bn(model: nn.Module) -> nn.Module:
    """EXPERIMENT: a copy with every BatchNorm2d folded into the conv before it (eval numerics)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    model = copy.deepcopy(model).eval()
    for m in list(model.modules()):
        if isinstance(m, Bottleneck):
            for i in (1, 2, 3):
                setattr(m, f"conv{i}", fuse_conv_bn_eval(getattr(m, f"conv{i}"), getattr(m, f"bn{i}")))
                setattr(m, f"bn{i}", nn.Identity())
        if isinstance(m, nn.Sequential):
            for i in range(len(m) - 1):
                if isinstance(m[i], nn.Conv2d) and isinstance(m[i + 1], nn.BatchNorm2d):
                    m[i], m[i + 1] = fuse_conv_bn_eval(m[i], m[i + 1]), nn.Identity()
        if isinstance(getattr(m, "conv1", None), nn.Conv2d) and isinstance(getattr(m, "bn1", None), nn.BatchNorm2d):
            m.conv1, m.bn1 = fuse_conv_bn_eval(m.conv1, m.bn1), nn.Identity()  # the ResNet stem
    return model


def single_path_hard(tree: SigmaBranchTree, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """EXPERIMENT: the batch-1 fast path proposed for ``forward_hard`` (walk the one path with
    ``int(argmax)``; no arange / nonzero / index bookkeeping / scatter). Same modules, same result."""
    if x.shape[0] != 1:
        return tree.forward_hard(x)
    h, node = tree.backbone(x), 0
    for level in range(tree.depth):
        node = 2 * node + int(tree.routers[level][node](h).argmax(dim=1))
        h = tree.specialisers[level][node](h)
    return tree.heads[node](h), torch.full((1,), node, dtype=torch.long)


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repeats (a smoke run)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable cores)")
    ap.add_argument("--batch", type=int, default=64, help="the throughput batch size (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="first wait up to S seconds until other processes leave the cores idle")
    ap.add_argument("--fold-bn", action="store_true", help="EXPERIMENT: also time both models with BN folded into the convs")
    ap.add_argument("--fast-path", action="store_true",
                    help="EXPERIMENT: also time a batch-1 fast path for forward_hard (see single_path_hard)")
    args = ap.parse_args(argv)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or cores
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    if args.quick:
        b1 = dict(min_reps=10, min_time=0.5, warmup=3, max_time=20)
        bn = dict(min_reps=2, min_time=0.5, warmup=1, max_time=30)
        bd_b1 = dict(min_reps=10, min_time=0.1, warmup=2, max_time=20)
        bd_bn = dict(min_reps=1, min_time=0.0, warmup=1, max_time=0)
    else:
        b1 = dict(min_reps=50, min_time=3.0, warmup=10, max_time=90)
        bn = dict(min_reps=6, min_time=6.0, warmup=2, max_time=150)
        bd_b1 = dict(min_reps=30, min_time=0.5, warmup=5, max_time=40)
        bd_bn = dict(min_reps=3, min_time=0.0, warmup=1, max_time=60)
    n = args.batch

    busy0 = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else cpu_busy(1.0)
    if busy0 is not None and busy0 > 0.25 and threads > 1:
        print(f"# WARNING: other processes use {busy0:.0%} of the cores; with {threads} threads the OpenMP workers "
              "wait on each other and the timings blow up (x10-x80 seen); use --wait-quiet S or --threads 1", flush=True)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    dense = create_model(MODEL, num_classes=NUM_CLASSES).eval()
    tree = build_tree(dense, default_spec(MODEL, {"num_classes": NUM_CLASSES}, dense)).eval()
    dense_macs = model_macs(dense, SHAPE)
    path_macs = tree.path_macs(SHAPE)
    mac_ratio = path_macs / dense_macs
    res: dict = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
        "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
        "cores": cores, "threads": threads, "quick": args.quick, "model": MODEL, "num_classes": NUM_CLASSES,
        "input": list(SHAPE), "batch": n, "widths": tree.spec["widths"], "dense_widths": tree.spec["dense_widths"],
        "dense_macs": dense_macs, "path_macs": path_macs, "mac_ratio_path_over_dense": mac_ratio,
        "dense_params": sum(p.numel() for p in dense.parameters()), "tree_active_params": tree.active_params(),
        "tree_total_params": sum(p.numel() for p in tree.parameters()),
        "timing": {"batch1": b1, f"batch{n}": bn, "breakdown_batch1": bd_b1, f"breakdown_batch{n}": bd_bn},
    }
    print(f"# {MODEL}, {NUM_CLASSES} classes, input {SHAPE}, torch {torch.__version__}, "
          f"{threads} thread(s) of {cores} core(s), {'QUICK' if args.quick else 'full'} run, {res['date']}")
    print(f"# tree widths {res['widths']} (dense {res['dense_widths']}); MACs dense {dense_macs / 1e6:.1f}M, "
          f"tree path {path_macs / 1e6:.1f}M, ratio {mac_ratio:.3f} (ideal speed-up {1 / mac_ratio:.2f}x); "
          f"params dense {res['dense_params'] / 1e6:.2f}M, tree active {res['tree_active_params'] / 1e6:.2f}M, "
          f"tree total {res['tree_total_params'] / 1e6:.2f}M")

    gen = torch.Generator().manual_seed(args.seed)
    x1 = torch.randn(1, *SHAPE, generator=gen)
    xb = torch.randn(n, *SHAPE, generator=gen)
    balanced = copy.deepcopy(tree)
    balance_routers(balanced, xb)
    dist_init, dist_bal = leaf_counts(tree, xb), leaf_counts(balanced, xb)
    res["leaf_distribution"] = {"as_initialised": dist_init, "balanced": dist_bal}
    print(f"# batch-{n} leaf distribution (inputs per leaf): routers as initialised {dist_init}; "
          f"routers forced balanced {dist_bal}")

    guard = {"as_initialised": correctness(tree, xb), "balanced": correctness(balanced, xb)}
    res["correctness"] = guard
    for name, g in guard.items():
        print(f"# guard ({name}): forward_hard batch vs per-sample max|diff| {g['batched_vs_per_sample_max_abs_diff']:.2e} "
              f"(leaves equal: {g['batched_vs_per_sample_leaves_equal']}); masked baseline vs forward_hard "
              f"max|diff| {g['masked_vs_hard_max_abs_diff']:.2e} (leaves equal: {g['masked_vs_hard_leaves_equal']}); "
              f"|logits| <= {g['logit_scale_max_abs']:.2f}")
    ok = all(g["batched_vs_per_sample_leaves_equal"] and g["masked_vs_hard_leaves_equal"]
             and g["batched_vs_per_sample_max_abs_diff"] < 1e-3 * max(1.0, g["logit_scale_max_abs"])
             and g["masked_vs_hard_max_abs_diff"] < 1e-3 * max(1.0, g["logit_scale_max_abs"])
             for g in guard.values())
    res["correctness_ok"] = ok
    print("# guard: OK" if ok else "# WARNING: correctness guard FAILED")

    shares = {}
    with torch.inference_mode():
        print(f"\n[batch 1] timing (interleaved; >= {b1['min_reps']} calls and >= {b1['min_time']} s each) ...", flush=True)
        m1, shares["batch1"] = measure({
            "dense": lambda: dense(x1),
            "tree forward_hard": lambda: tree.forward_hard(x1),
            "tree all-leaves+mask": lambda: all_leaves_masked(tree, x1),
            "tree forward_soft+mask": lambda: soft_masked(tree, x1),
        }, **b1)
        print(f"[batch {n}] timing (interleaved; >= {bn['min_reps']} calls and >= {bn['min_time']} s each) ...", flush=True)
        mb, shares[f"batch{n}"] = measure({
            "dense": lambda: dense(xb),
            "tree forward_hard (routers as init)": lambda: tree.forward_hard(xb),
            "tree forward_hard (balanced)": lambda: balanced.forward_hard(xb),
            "tree all-leaves+mask": lambda: all_leaves_masked(balanced, xb),
            "tree forward_soft+mask": lambda: soft_masked(balanced, xb),
        }, **bn)
    print("[batch 1] per-stage breakdown ...", flush=True)
    bd1, shares["breakdown_batch1"] = run_breakdown(dense, balanced, x1, bd_b1)
    print(f"[batch {n}] per-stage breakdown ...", flush=True)
    bdn, shares[f"breakdown_batch{n}"] = run_breakdown(dense, balanced, xb, bd_bn)
    macs = breakdown_macs(dense, tree)

    folded = None
    if args.fold_bn:
        print("[EXPERIMENT fold-bn] timing ...", flush=True)
        fd, ft = fold_bn(dense), fold_bn(balanced)
        with torch.inference_mode():
            fold_err = max((fd(xb) - dense(xb)).abs().max().item(),
                           (ft.forward_hard(xb)[0] - balanced.forward_hard(xb)[0]).abs().max().item())
            f1, shares["fold_bn_batch1"] = measure({"dense": lambda: fd(x1), "tree forward_hard": lambda: ft.forward_hard(x1)}, **b1)
            fb, shares[f"fold_bn_batch{n}"] = measure({"dense": lambda: fd(xb), "tree forward_hard (balanced)": lambda: ft.forward_hard(xb)}, **bn)
        folded = {"max_abs_diff_vs_unfolded": fold_err, "batch1": f1, f"batch{n}": fb}

    fast = None
    if args.fast_path:
        print("[EXPERIMENT fast-path] timing ...", flush=True)
        with torch.inference_mode():
            fl, fleaf = single_path_hard(tree, x1)
            hl, hleaf = tree.forward_hard(x1)
            fp, shares["fast_path_batch1"] = measure({"dense": lambda: dense(x1), "tree forward_hard": lambda: tree.forward_hard(x1),
                                                      "tree single-path fast path": lambda: single_path_hard(tree, x1)},
                                                     **{**b1, "min_reps": 3 * b1["min_reps"]})
        fast = {"max_abs_diff": (fl - hl).abs().max().item(), "leaves_equal": bool(torch.equal(fleaf, hleaf)), "batch1": fp}

    # ------------------------------------------------------------------------------ report
    print("\n# CPU share of this process while timing (1.00 = it had its "
          f"{threads} thread(s) to itself): " + ", ".join(f"{k} {v:.2f}" for k, v in shares.items()))
    if min(shares.values()) < 0.85:
        print("# WARNING: other processes competed for the cores; the numbers below are distorted "
              "(re-run on a quiet machine, e.g. with --wait-quiet 600, or compare the min columns)")

    print("\n== 1. batch-1 latency (ms) ==")
    print(f"{'':<28}{'median':>9}{'p90':>9}{'min':>9}{'reps':>6}")
    for k in ("dense", "tree forward_hard"):
        s = m1[k]
        print(f"{k:<28}{s['median_s'] * 1e3:9.2f}{s['p90_s'] * 1e3:9.2f}{s['min_s'] * 1e3:9.2f}{s['reps']:6d}")
    sp1 = m1["dense"]["median_s"] / m1["tree forward_hard"]["median_s"]
    sp1_min = m1["dense"]["min_s"] / m1["tree forward_hard"]["min_s"]
    print(f"speed-up dense/tree {sp1:.2f}x (medians; {sp1_min:.2f}x from the minima)   MAC ratio path/dense "
          f"{mac_ratio:.3f} (= {1 / mac_ratio:.2f}x fewer MACs)")

    print(f"\n== 2. batch-{n} throughput ==")
    print(f"{'':<38}{'med ms':>9}{'p90 ms':>9}{'min ms':>9}{'img/s':>8}{'vs dense':>10}  inputs per leaf")
    d_med = mb["dense"]["median_s"]
    for name, dist in [("dense", None), ("tree forward_hard (routers as init)", dist_init),
                       ("tree forward_hard (balanced)", dist_bal), ("tree all-leaves+mask", dist_bal),
                       ("tree forward_soft+mask", dist_bal)]:
        s = mb[name]
        print(f"{name:<38}{s['median_s'] * 1e3:9.1f}{s['p90_s'] * 1e3:9.1f}{s['min_s'] * 1e3:9.1f}{n / s['median_s']:8.1f}"
              f"{d_med / s['median_s']:9.2f}x  {'' if dist is None else dist}")

    print("\n== 3. grouped dispatch (forward_hard) vs evaluate every leaf and mask (medians) ==")
    print(f"{'':<44}{'hard ms':>10}{'mask ms':>10}{'mask/hard':>11}")
    disp = {}
    for label, m, hard in [("batch 1", m1, "tree forward_hard"), (f"batch {n}, balanced", mb, "tree forward_hard (balanced)")]:
        for base in ("tree all-leaves+mask", "tree forward_soft+mask"):
            r = m[base]["median_s"] / m[hard]["median_s"]
            disp[f"{label} | {base}"] = r
            print(f"{label + ' | ' + base.replace('tree ', ''):<44}{m[hard]['median_s'] * 1e3:10.2f}"
                  f"{m[base]['median_s'] * 1e3:10.2f}{r:10.2f}x")

    bd_out = {
        "batch1": print_breakdown("4a. batch-1 per-stage breakdown (ms per image, medians; each part alone)", bd1, macs),
        f"batch{n}": print_breakdown(f"4b. batch-{n} per-stage breakdown (ms per image, medians; tree parts on "
                                     f"groups of {max(1, n // 2)} / {max(1, n // 4)} as a balanced split gives)", bdn, macs),
    }

    if folded:
        print(f"\n== EXPERIMENT: BN folded into the convs (copies of both models; max|diff| vs unfolded "
              f"{folded['max_abs_diff_vs_unfolded']:.1e}) ==")
        f1, fb = folded["batch1"], folded[f"batch{n}"]
        print(f"batch 1: dense {f1['dense']['median_s'] * 1e3:.2f} ms, tree {f1['tree forward_hard']['median_s'] * 1e3:.2f} ms, "
              f"speed-up {f1['dense']['median_s'] / f1['tree forward_hard']['median_s']:.2f}x "
              f"(unfolded dense was {m1['dense']['median_s'] / f1['dense']['median_s']:.2f}x slower)")
        print(f"batch {n}: dense {n / fb['dense']['median_s']:.1f} img/s, tree (balanced) "
              f"{n / fb['tree forward_hard (balanced)']['median_s']:.1f} img/s, ratio "
              f"{fb['dense']['median_s'] / fb['tree forward_hard (balanced)']['median_s']:.2f}x "
              f"(unfolded dense was {mb['dense']['median_s'] / fb['dense']['median_s']:.2f}x slower)")

    if fast:
        fp = fast["batch1"]
        d, h, f = (fp[k]["median_s"] for k in ("dense", "tree forward_hard", "tree single-path fast path"))
        print(f"\n== EXPERIMENT: batch-1 fast path for forward_hard (max|diff| {fast['max_abs_diff']:.1e}, "
              f"leaves equal: {fast['leaves_equal']}) ==")
        print(f"dense {d * 1e3:.2f} ms, forward_hard {h * 1e3:.2f} ms (speed-up {d / h:.2f}x), fast path {f * 1e3:.2f} ms "
              f"(speed-up {d / f:.2f}x); the fast path saves {(h - f) * 1e3:.2f} ms = {(h - f) / h:.1%}")

    load1 = os.getloadavg()
    wall = time.perf_counter() - t_start
    if busy0 is not None:
        print(f"\n# other processes used {busy0:.0%} of the cores just before the run")
    print(f"# load average (1 min) at start {load0[0]:.2f}, at end {load1[0]:.2f}; wall time {wall:.0f} s")

    res.update({
        "batch1": m1, f"batch{n}": mb, "breakdown": bd_out, "breakdown_raw": {"batch1": bd1, f"batch{n}": bdn},
        "fold_bn_experiment": folded, "fast_path_experiment": fast,
        "ratios": {
            "batch1_speedup_dense_over_tree_median": sp1,
            "batch1_speedup_dense_over_tree_min": sp1_min,
            "mac_ratio_path_over_dense": mac_ratio,
            f"batch{n}_throughput_tree_over_dense_balanced": d_med / mb["tree forward_hard (balanced)"]["median_s"],
            f"batch{n}_throughput_tree_over_dense_as_init": d_med / mb["tree forward_hard (routers as init)"]["median_s"],
            "mask_over_hard": disp,
        },
        "cpu_share": shares, "cores_busy_before_start": busy0, "loadavg_start_end": [load0[0], load1[0]], "wall_s": wall,
    })
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
        print(f"# wrote {args.json}")
    return res


if __name__ == "__main__":
    main()
