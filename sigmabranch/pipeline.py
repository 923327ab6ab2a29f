"""The main job (`make run`): the whole flow on the embedded digits data."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from model.config import apply_overrides, load_config
from model.train import write_json

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "demo_edge_digits.yaml"


def run_demo(out: str | Path = "runs/demo", config: str | Path | None = None, quick: bool = False,
             device: str = "auto") -> dict[str, Any]:
    """Dense training on digits; writes ``<out>/dense/`` and ``<out>/metrics.json``."""
    from model.dense import train_dense

    out = Path(out)
    cfg = load_config(config or DEFAULT_CONFIG)
    if quick:
        cfg = apply_overrides(cfg, ["epochs=2"])
    t0 = time.perf_counter()
    dense = train_dense(cfg, out / "dense", device=device)
    metrics = {"dense": dense, "seconds": {"dense": time.perf_counter() - t0}}
    write_json(out / "metrics.json", metrics)
    return metrics
