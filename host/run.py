"""Run the tree accelerator over a set of inputs: accuracy, leaf counts, DDR bytes, latency.

    python host/run.py --bundle build/pynq-z2 --inputs samples.npz [--backend board|sim|ref]
                       [--strategy serial|prefetch] [--limit N] [--json out.json]

``samples.npz`` holds ``x`` (float ``(N, C, H, W)`` as the model takes it, quantised here; or
integers already quantised) and optionally ``y`` (labels). A PointNet++ bundle also takes point
clouds (``--inputs airplane_0627.txt``, a ``.npy``, or a folder of them): the processor runs
SA1 + SA2 (``host/pointnet_backbone.py``) and streams their output map to the fabric. numpy (and ``pynq`` on a board) only:
copy ``build/<board>/`` and ``host/`` to the board and run this there (docs/host.md).

``--backend sim`` runs the same driver in simulation (off-board, from the repository:
``sim/host_backend.py``, imported only then): on the whole design behind AXI (the Verilator model
of ``<bundle>/vivado/``, ``sim/pynq_sim.py`` standing in for ``pynq``) where the build has
``vivado/hdl.json``, else part by part (``host.backends.execute_on_backend`` chooses).

From Python (the pipeline): :func:`run_bundle` returns the report that ``--json`` writes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python host/run.py`: make `host` importable from its parent
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from host.backends import BACKENDS, WHOLE, execute_on_backend  # noqa: E402
from host.driver import STRATEGIES, Bundle, SigmaBranchOverlay  # noqa: E402
from host.errors import BackendUnavailable, DriverError, ManifestError  # noqa: E402


def load_samples(path: str | Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with np.load(path, allow_pickle=False) as npz:
        if "x" not in npz.files:
            raise KeyError(f"{path} has no array 'x' (inputs); it has {', '.join(npz.files) or 'nothing'}")
        x = npz["x"]
        y = npz["y"] if "y" in npz.files else None
    if limit is not None:
        x, y = x[:limit], (None if y is None else y[:limit])
    return x, y


CLOUD_SUFFIXES = (".npy", ".txt")


def load_point_clouds(path: str | Path, bundle: str | Path, limit: int | None = None) -> np.ndarray:
    """Point clouds for a PointNet++ bundle, normalised as in training: one ModelNet40 ``.txt`` or
    ``.npy`` cloud ``(P, C)``, a ``.npy`` batch ``(N, P, C)``, or a folder of such files (sorted by
    name). ``P`` and ``C`` are the bundle's (``tree.json``'s ``host.input_shape``)."""
    from host.int_reference import read_manifest
    from host.pointcloud import PointCloudError, load_point_cloud, normalize_to_unit_sphere

    path = Path(path)
    host = read_manifest(Path(bundle) / "export").get("host")
    if not host:
        raise ValueError(f"{path}: point clouds are for a PointNet++ bundle; {bundle} takes images (a samples.npz)")
    points, channels = (int(v) for v in host["input_shape"])
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix in CLOUD_SUFFIXES)[:limit]
        if not files:
            raise FileNotFoundError(f"{path}: no .txt or .npy point clouds in this folder")
        return np.stack([load_point_cloud(f, points, channels) for f in files])
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    if path.suffix == ".npy":
        try:
            batch = np.load(path, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise PointCloudError(f"cannot read {str(path)!r}: {err}") from err
        if batch.ndim == 3:
            if batch.shape[1] < points or batch.shape[2] < channels:
                raise PointCloudError(f"{str(path)!r}: shape {batch.shape}, expected (N, P >= {points}, C >= {channels})")
            batch = np.asarray(batch[:limit, :points, :channels], dtype=np.float32)
            if not np.isfinite(batch).all():
                raise PointCloudError(f"{str(path)!r}: NaN or infinite coordinates")
            return normalize_to_unit_sphere(batch)
    return load_point_cloud(path, points, channels)[None]


def load_inputs(path: str | Path, bundle: str | Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A ``samples.npz`` (``x``, optionally ``y``), or point clouds (:func:`load_point_clouds`)."""
    path = Path(path)
    if path.is_dir() or path.suffix in CLOUD_SUFFIXES:
        return load_point_clouds(path, bundle, limit), None
    return load_samples(path, limit)


class _Progress:
    """tqdm when installed, else a one-line bar on stderr; shown from its first call (``bar(0)``:
    the run has started), so a run that fails to start prints no bar."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.total, self.done, self.desc, self.enabled, self.bar = total, 0, desc, enabled, None
        self.started = False

    def _start(self) -> None:
        self.started = True
        try:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.total, desc=self.desc, unit="inf")
        except ImportError:
            pass

    def __call__(self, n: int = 1) -> None:
        if not self.enabled:
            return
        if not self.started:
            self._start()
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        else:
            filled = int(30 * self.done / max(self.total, 1))
            print(f"\r{self.desc} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}", end="",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.started:
            print(file=sys.stderr)


def summarize(out: dict[str, Any], y: np.ndarray | None, overlay: SigmaBranchOverlay | Bundle, backend: str,
              strategy: str, seconds: float, fetch_mode: str | None = None) -> dict[str, Any]:
    """The report of one run. ``overlay``: the overlay that ran (or, for a run that happened
    elsewhere, e.g. in a simulator process, the bundle and ``fetch_mode``)."""
    bundle = overlay if isinstance(overlay, Bundle) else overlay.bundle
    fetch_mode = fetch_mode or overlay.fetch_mode
    n, depth = len(out["classes"]), bundle.depth
    by = out["bytes"]
    unit = out["latency_unit"]
    clk_ns = float(bundle.driver["clk_ns"])
    lat = out["latency"]
    lat_us = lat * clk_ns / 1e3 if unit == "cycles" else lat * 1e6
    report = {
        "bundle": str(bundle.root), "board": bundle.driver.get("board"), "backend": backend,
        "strategy": strategy, "fetch_mode": fetch_mode, "inputs": n,
        "accuracy": None if y is None else float(np.mean(out["classes"] == np.asarray(y))),
        "leaf_counts": np.bincount(out["leaves"], minlength=2 ** depth).tolist(),
        "path_counts": {f"level {l}": np.bincount(out["paths"][:, l], minlength=2 ** (l + 1)).tolist()
                        for l in range(depth)},
        "ddr_bytes_per_inference": {
            "weights": float(by["weights"].mean()) if n else 0.0,
            "weights_by_level": by["weights_by_level"].mean(0).tolist() if n else [0.0] * depth,
            "wasted_prefetch": float(by["wasted"].mean()) if n else 0.0,
            "input": float(by["input"].mean()) if n else 0.0,
            "output": float(by["output"].mean()) if n else 0.0,
            "path_weights": sum(int(bundle.region(level, 0)["bytes"]) for level in range(depth)),
        },
        "latency": {"unit": unit, "mean": float(lat.mean()) if n else 0.0,
                    "p50": float(np.median(lat)) if n else 0.0, "max": float(lat.max()) if n else 0.0,
                    "mean_us": float(lat_us.mean()) if n else 0.0,
                    "modelled": backend == "ref", "simulated": backend == "sim"},
        "wall_seconds": seconds,
        "predictions": out["classes"].tolist(), "leaves": out["leaves"].tolist(),
        "paths": out["paths"].tolist(),
        "accumulators": out["acc"].tolist(),  # the head's INT32 outputs: backends compare bit for bit
    }
    d = report["ddr_bytes_per_inference"]
    d["total"] = d["weights"] + d["input"] + d["output"]
    if out.get("host_seconds_per_inference"):   # PointNet++: SA1 + SA2 on this processor, numpy
        report["host_backbone_ms_per_inference"] = 1e3 * out["host_seconds_per_inference"]
    return report


def print_report(r: dict[str, Any]) -> None:
    d, lat = r["ddr_bytes_per_inference"], r["latency"]
    print(f"{r['inputs']} inputs on {r['board']} ({r['backend']} backend, {r['strategy']} fetch, {r['fetch_mode']} mode)")
    if r["accuracy"] is not None:
        print(f"accuracy: {100 * r['accuracy']:.2f}%")
    print("leaf counts: " + ", ".join(f"leaf {k}: {c}" for k, c in enumerate(r["leaf_counts"])))
    print(f"DDR bytes per inference: weights {d['weights']:.0f} (by level "
          + ", ".join(f"{b:.0f}" for b in d["weights_by_level"]) + f"; wasted by prefetch {d['wasted_prefetch']:.0f}), "
          f"input {d['input']:.0f}, output {d['output']:.0f}, total {d['total']:.0f}")
    kind = "modelled" if lat["modelled"] else "simulated" if lat.get("simulated") else "measured"
    print(f"latency per inference ({kind}): mean {lat['mean']:.0f} {lat['unit']} ({lat['mean_us']:.1f} us), "
          f"p50 {lat['p50']:.0f}, max {lat['max']:.0f}")
    if "host_backbone_ms_per_inference" in r:
        print(f"processor backbone (SA1 + SA2, numpy, this CPU): {r['host_backbone_ms_per_inference']:.2f} ms per inference")


def run_bundle(bundle: str | Path, inputs: str | Path | tuple[np.ndarray, np.ndarray | None], *,
               backend: str = "ref", strategy: str = "serial", fetch_mode: str | None = None,
               limit: int | None = None, timeout_s: float = 2.0, bitfile: str | Path | None = None,
               progress: bool = False, batch: int = 1) -> dict[str, Any]:
    """Run the driver over ``inputs`` on ``backend`` and return the report (what ``--json`` writes).

    ``inputs``: the path of a ``samples.npz`` (``x``, optionally ``y``) or a tuple ``(x, y)`` of
    arrays (``y`` may be ``None``); ``limit``: the first N only. ``timeout_s`` bounds every DMA or
    router wait (simulated seconds in ``sim``). ``bitfile``: ``board`` only (default:
    driver.json's). ``progress``: a progress bar on stderr. ``batch``: inputs per start, streamed
    back to back (on-chip fetch; the latency reported is then the batch's time per input). Raises the driver's errors
    (:class:`BackendUnavailable`, :class:`DriverError`, :class:`ManifestError`, ...),
    ``FileNotFoundError``, ``KeyError`` or ``ValueError`` for what it cannot run."""
    bundle = Path(bundle)
    if isinstance(inputs, (str, Path)):
        x, y = load_inputs(inputs, bundle, limit)
    else:
        x, y = inputs
        x = np.asarray(x)
        y = None if y is None else np.asarray(y)
        if limit is not None:
            x, y = x[:limit], (None if y is None else y[:limit])
    extra = {"bitfile": bitfile} if backend == "board" and bitfile else {}
    bar = _Progress(len(x), f"{backend}/{strategy}", enabled=progress)
    try:
        run = execute_on_backend(bundle, x, backend=backend, strategy=strategy, fetch_mode=fetch_mode,
                                 timeout_s=timeout_s, progress=bar, batch=batch,
                                 log=(lambda line: print(line, file=sys.stderr, flush=True)) if progress else None,
                                 **extra)
    finally:
        bar.close()
    report = summarize(run.out, y, run.bundle, backend, strategy, run.seconds, fetch_mode=run.fetch_mode)
    if run.route == WHOLE:
        sim = run.simulation
        report["simulation"] = {"design": "whole design behind AXI (vivado/hdl.json)",
                                "ddr_read_bytes": [p["ddr_read_bytes"] for p in sim["per_inference"]],
                                "cycles": sim["counters"]["cycles"], "build_seconds": sim["build_seconds"],
                                "sim_seconds": sim["sim_seconds"]}
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="host/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, type=Path, help="build/<board> folder written by `sigmabranch build`")
    p.add_argument("--inputs", required=True, type=Path,
                   help="samples.npz with x (and optionally y); for a PointNet++ bundle also point clouds: a "
                        "ModelNet40 .txt or .npy file, an (N, P, C) .npy batch, or a folder of them")
    p.add_argument("--backend", default="board", choices=list(BACKENDS))
    p.add_argument("--strategy", default="serial", choices=STRATEGIES)
    p.add_argument("--fetch-mode", choices=["host", "onchip"],
                   help="default: driver.json's, else the design's first (host where the design has weight "
                        "DMAs, else onchip; sim part by part: onchip)")
    p.add_argument("--bitfile", help="board: the bitstream (default: driver.json's)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds any one DMA or router wait may take")
    p.add_argument("--limit", type=int, help="first N inputs only")
    p.add_argument("--batch", type=int, default=1,
                   help="inputs per start, streamed back to back so they overlap in the tree (on-chip fetch; "
                        "at most 64, the design's path queue); the latency is then the batch's time per input")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        report = run_bundle(args.bundle, args.inputs, backend=args.backend, strategy=args.strategy,
                            fetch_mode=args.fetch_mode, limit=args.limit, timeout_s=args.timeout,
                            bitfile=args.bitfile, progress=not args.no_progress, batch=args.batch)
    except (BackendUnavailable, DriverError, ManifestError, ValueError, KeyError, FileNotFoundError) as err:
        print(f"host/run.py: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
