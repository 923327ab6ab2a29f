"""The PYNQ host driver of a Sigma-Branch tree accelerator (numpy, and ``pynq`` on a board).

In the style of FINN's ``FINNExampleOverlay``: :class:`SigmaBranchOverlay` loads the build's
bundle (``build/<board>/``: ``driver.json``, ``weights.json`` + ``weights.bin``,
``export/tree.json``) and the design (through a backend, see ``host/backends/base.py``),
allocates its contiguous buffers once (input, output, the whole DDR weight image), checks the
bundle against itself and against the loaded design, copies the weight image to DDR and
verifies every branch region's CRC32 there. Per inference it sends the input, waits (bounded)
for each router decision, moves only the chosen branch's region for each level (one DMA
transfer; or, in ``onchip`` fetch mode, checks that the fetchers read exactly that region), and
returns the prediction, the path, the bytes moved and the latency.

Fetch strategies (``strategy=``):

- ``serial``: fetch a level's region after its decision (the paper's flow);
- ``prefetch``: before a level's decision, start fetching the branch the router chose most often
  so far at that node (counts kept by the driver, ties to branch 0); a right guess hides the
  fetch behind the backbone / the previous level, a wrong one is cancelled and refetched (its
  partial bytes are reported as ``wasted``).

Usage::

    from host.driver import SigmaBranchOverlay
    ov = SigmaBranchOverlay("build/pynq-z2", backend="board")   # or "ref"; "sim" off-board (sim/host_backend.py)
    out = ov.execute(x)            # x: float (N, C, H, W) as the model takes it
    out["classes"], out["leaves"], out["bytes"]["weights"], out["latency"]
"""
from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .backends import get_backend
from .backends.base import Buffer, Hardware, layout_signature
# The driver's exceptions live in host/errors.py; imported here so `from host.driver import DriverTimeout` works.
from .errors import (BackendUnavailable, BundleError, DecisionError, DriverError, DriverTimeout,  # noqa: F401
                     InputError, ManifestError, WeightImageError)
from .int_reference import datatype_range, quantize_input, read_manifest

STRATEGIES = ("serial", "prefetch")
DEFAULT_TIMEOUT_S = 2.0


# ------------------------------------------------------------------------------ the bundle
@dataclass
class Bundle:
    """``build/<board>/`` as the driver reads it (numpy only), checked for consistency."""
    root: Path
    driver: dict[str, Any]
    weights: dict[str, Any]
    manifest: dict[str, Any]
    image: bytes

    @classmethod
    def load(cls, root: str | Path) -> "Bundle":
        root = Path(root)
        driver = _read_json(root / "driver.json", "sigmabranch-driver/1")
        weights = _read_json(root / driver.get("weights", "weights.json"), "sigmabranch-weights/1")
        manifest = read_manifest(_manifest_dir(root, driver))
        image_path = root / weights.get("file", "weights.bin")
        if not image_path.is_file():
            raise BundleError(f"{image_path} not found (the DDR weight image of the build)")
        bundle = cls(root, driver, weights, manifest, image_path.read_bytes())
        bundle.check()
        return bundle

    @property
    def depth(self) -> int:
        return int(self.manifest["depth"])

    @property
    def manifest_dir(self) -> Path:
        """The export folder of the bundle (tree.json and the files it names)."""
        return _manifest_dir(self.root, self.driver)

    def region(self, level: int, branch: int) -> dict[str, Any]:
        return self.weights["levels"][level]["regions"][branch]

    def check(self) -> None:
        """tree.json, weights.json, driver.json and weights.bin must describe one design."""
        d, w, m = self.driver, self.weights, self.manifest
        where = f"bundle {self.root}"
        if len(self.image) != int(w["bytes"]):
            raise BundleError(f"{where}: weights.bin has {len(self.image)} bytes, weights.json says {w['bytes']}")
        if len(w["levels"]) != self.depth or len(d["levels"]) != self.depth:
            raise BundleError(f"{where}: tree.json is a depth-{self.depth} tree, but weights.json has "
                              f"{len(w['levels'])} levels and driver.json {len(d['levels'])}")
        for level, (wl, dl) in enumerate(zip(w["levels"], d["levels"])):
            regions = wl["regions"]
            if len(regions) != 2 ** (level + 1):
                raise BundleError(f"{where}: level {level} has {len(regions)} weight regions, a depth-{self.depth} "
                                  f"tree has {2 ** (level + 1)} branches there")
            if (int(dl["base"]), int(dl["region_stride"])) != (int(wl["base"]), int(wl["region_stride"])):
                raise BundleError(f"{where}: level {level}: driver.json places regions at base {dl['base']} stride "
                                  f"{dl['region_stride']}, weights.json at {wl['base']} stride {wl['region_stride']}")
            for branch, region in enumerate(regions):
                name = f"branch_{level}_{branch}"
                if region["nodes"][0] != name or name not in m["nodes"]:
                    raise BundleError(f"{where}: level {level} region {branch} holds {region['nodes']}, expected "
                                      f"{name} (from tree.json)")
                if int(region["offset"]) != int(wl["base"]) + branch * int(wl["region_stride"]):
                    raise BundleError(f"{where}: region {name} is at offset {region['offset']}, not base + "
                                      f"{branch} x stride")
                if int(region["bytes"]) != int(dl["region_bytes"]) or int(region["bytes"]) > int(wl["region_stride"]):
                    raise BundleError(f"{where}: region {name} has {region['bytes']} bytes; driver.json says "
                                      f"{dl['region_bytes']}, stride {wl['region_stride']}")
                if int(region["offset"]) + int(region["bytes"]) > len(self.image):
                    raise BundleError(f"{where}: region {name} ends past the end of weights.bin")
        shape = list(d["input"]["shape_nhwc"])
        nchw = [shape[0], shape[3], shape[1], shape[2]]
        if nchw[1:] != list(m["input"]["shape"]) or d["input"]["datatype"] != m["input"]["datatype"]:
            raise BundleError(f"{where}: driver.json's input {shape} (NHWC) {d['input']['datatype']} is not "
                              f"tree.json's {m['input']['shape']} (CHW) {m['input']['datatype']}")
        if int(d["input"]["bytes"]) != int(np.prod(shape)) * _element_bytes(d["input"]["datatype"]):
            raise BundleError(f"{where}: driver.json's input bytes {d['input']['bytes']} do not fit shape {shape}")
        if int(np.prod(d["output"]["shape"])) != int(m["num_classes"]) or int(d["output"]["bytes"]) != 4 * int(m["num_classes"]):
            raise BundleError(f"{where}: driver.json's output {d['output']['shape']} ({d['output']['bytes']} bytes) "
                              f"is not {m['num_classes']} INT32 class accumulators")
        if zlib.crc32(self.image) != int(w["crc32"]):
            # Name the region(s) that differ: the same check the driver runs again on the DDR copy.
            bad = bad_regions(self.weights, self.image)
            raise WeightImageError(f"{where}: weights.bin fails its CRC32; corrupt region(s): "
                                   + (", ".join(bad) if bad else "padding between regions"))


def _manifest_dir(root: Path, driver: dict[str, Any]) -> Path:
    return root / Path(driver.get("manifest", "export/tree.json")).parent


def _read_json(path: Path, fmt: str) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"{path} not found (copy the whole build/<board>/ folder)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{path} is not valid JSON: {err}") from err
    if data.get("format") != fmt:
        raise BundleError(f"{path}: format {data.get('format')!r}, expected {fmt!r}")
    return data


def _element_bytes(datatype: str) -> int:
    bits = int(datatype.lstrip("UINT"))
    return 1 if bits <= 8 else 2 if bits <= 16 else 4


def as_batch(x: np.ndarray, shape, what: str) -> np.ndarray:
    """``x`` as a batch ``(N, *shape)`` (one sample gets N = 1); else an :class:`InputError`."""
    expected = tuple(shape)
    if x.ndim == len(expected):
        x = x[None]
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise InputError(f"{what}: shape {x.shape}, expected (N, {', '.join(map(str, expected))})")
    return x


def bad_regions(weights: dict[str, Any], image) -> list[str]:
    """The regions whose CRC32 over ``image`` differs from ``weights.json``."""
    view = memoryview(image)
    bad = []
    for level in weights["levels"]:
        for region in level["regions"]:
            start, size = int(region["offset"]), int(region["bytes"])
            if zlib.crc32(view[start:start + size]) != int(region["crc32"]):
                bad.append(f"level {level['level']} branch {region['branch']} ({region['nodes'][0]}, bytes "
                           f"{start}..{start + size - 1})")
    return bad


# ------------------------------------------------------------------------------ the overlay
class SigmaBranchOverlay:
    """The accelerator as a PYNQ user drives it (see the module docstring)."""

    def __init__(self, bundle: str | Path | Bundle, backend: str | Hardware = "ref", strategy: str = "serial",
                 fetch_mode: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, **backend_args):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown fetch strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.hw = backend if isinstance(backend, Hardware) else get_backend(backend, **backend_args)
        self.strategy, self.timeout_s = strategy, float(timeout_s)
        d = self.bundle.driver
        self.depth = self.bundle.depth
        self.design = self.hw.open(self.bundle)
        self.fetch_mode = fetch_mode or d.get("fetch_mode") or self.design.fetch_modes[0]
        if self.fetch_mode == "onchip" and strategy != "serial":
            raise ValueError("in onchip fetch mode the hardware fetches after the decision: strategy must be serial")
        self._check_design()
        # Buffers, once: input, output, the whole weight image.
        self.ibuf = self.hw.allocate("input", int(d["input"]["bytes"]))
        self.obuf = self.hw.allocate("output", int(d["output"]["bytes"]))
        self.wbuf = self.hw.allocate("weights", len(self.bundle.image))
        self._buffers = (self.ibuf, self.obuf, self.wbuf)
        self.load_weights()
        self.hw.set_weight_base(self.wbuf, self.fetch_mode)
        heads = [self.bundle.manifest["nodes"][f"head_{k}"] for k in range(2 ** self.depth)]
        self._head_scale = np.array([float(h["output_scale"]) for h in heads])
        self._head_bias = np.array([np.asarray(h.get("output_bias", 0.0), dtype=np.float64)
                                    * np.ones(self.bundle.manifest["num_classes"]) for h in heads])
        self._counts = [np.zeros(2 ** (level + 1), dtype=np.int64) for level in range(self.depth)]
        # PointNet++: the processor runs SA1 + SA2 (numpy) and streams their output map to the fabric
        host = self.bundle.manifest.get("host")
        self.host_backbone = None
        if host:
            from .pointnet_backbone import PointNetBackbone
            self.host_backbone = PointNetBackbone.load(self.bundle.manifest_dir / host["file"])
        self.host_seconds = 0.0    # the processor's part of the last execute()
        self.prior = None  # optional per-level branch counts to start the prefetch predictor from

    # -- load-time checks
    def _check_design(self) -> None:
        expected = layout_signature(self.bundle.driver)
        if self.design.signature != expected or self.design.levels != self.depth:
            raise BundleError(f"the bundle {self.bundle.root} does not match the loaded design "
                              f"({self.hw.name}): design layout signature {self.design.signature:#010x} with "
                              f"{self.design.levels} levels, bundle {expected:#010x} with {self.depth} levels "
                              "(rebuild, or load the bitstream this bundle was built with)")
        if self.fetch_mode not in self.design.fetch_modes:
            raise BundleError(f"fetch mode {self.fetch_mode!r} is not offered by the loaded design "
                              f"({', '.join(self.design.fetch_modes)})")

    def load_weights(self) -> None:
        """Copy the weight image into its DDR buffer and check every region's CRC32 there."""
        self.wbuf.array[:] = np.frombuffer(self.bundle.image, dtype=np.uint8)
        self.hw.sync_to_device(self.wbuf)
        bad = bad_regions(self.bundle.weights, self.wbuf.array)
        if bad:
            raise WeightImageError("weight image in DDR fails its CRC32 in " + "; ".join(bad)
                                   + f" (from {self.bundle.root / self.bundle.weights.get('file', 'weights.bin')})")

    # -- inputs
    def fabric_input(self, x: np.ndarray) -> np.ndarray:
        """What the fabric takes: ``x`` itself, or for a PointNet++ tree float point clouds
        ``(N, P, C)`` (or one ``(P, C)``) through the processor's backbone (timed: ``host_seconds``)."""
        x = np.asarray(x)
        host = self.bundle.manifest.get("host")
        if self.host_backbone is None or x.dtype.kind != "f":
            return x
        x = as_batch(x, host["input_shape"], f"point clouds ({host['input_layout']})")
        t0 = time.perf_counter()
        fabric = self.host_backbone.fabric_input(x)
        self.host_seconds = time.perf_counter() - t0
        return fabric

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Float ``(N, C, H, W)`` (point clouds ``(N, P, C)`` for PointNet++) or already-quantised
        integers -> checked int64 ``(N, C, H, W)``."""
        inp = self.bundle.manifest["input"]
        x = as_batch(self.fabric_input(x), inp["shape"], f"input ({inp.get('layout', 'NCHW')}, as the model takes it)")
        lo, hi = datatype_range(inp["datatype"])
        if x.dtype.kind == "f":
            if not np.all(np.isfinite(x)):
                raise InputError("input holds NaN or infinity")
            return quantize_input(x, inp["scale"], inp["datatype"])
        if x.dtype.kind in "iu" and x.dtype != np.uint64:
            if x.size and (x.min() < lo or x.max() > hi):
                raise InputError(f"integer input outside {inp['datatype']} [{lo}, {hi}]: pass floats to have it "
                                 "quantised, or integers already quantised")
            return x.astype(np.int64)
        raise InputError(f"input dtype {x.dtype} is not accepted: float (quantised here with scale "
                         f"{inp['scale']:.6g}) or integers in {inp['datatype']}")

    def _pack_input(self, q: np.ndarray, buf: Buffer | None = None) -> int:
        """CHW integer samples (one, or a batch ``(N, C, H, W)``) -> NHWC bytes in the input buffer."""
        dtype = {1: np.int8, 2: np.int16, 4: np.int32}[_element_bytes(self.bundle.driver["input"]["datatype"])]
        if self.bundle.driver["input"]["datatype"].startswith("UINT"):
            dtype = np.dtype(dtype).str.replace("i", "u")
        buf = buf or self.ibuf
        nhwc = q.transpose(1, 2, 0) if q.ndim == 3 else q.transpose(0, 2, 3, 1)
        data = np.ascontiguousarray(nhwc).astype(dtype).view(np.uint8).ravel()
        buf.array[:data.size] = data
        self.hw.sync_to_device(buf)
        return int(data.size)

    # -- waiting
    def _clock(self) -> float:
        """Seconds for the waits' deadlines: the design's own time where the backend simulates it
        (a simulator runs ~1e5 times slower than the hardware, so wall-clock bounds would fire on a
        healthy design; every poll there advances simulated time, so a hung one still hits it),
        else wall-clock."""
        if getattr(self.hw, "simulated", False):
            return self.hw.now() * float(self.bundle.driver["clk_ns"]) * 1e-9
        return time.monotonic()

    def _wait(self, poll: Callable[[], Any], what: str) -> Any:
        deadline = self._clock() + self.timeout_s
        while True:
            try:
                value = poll()
            except (RuntimeError, MemoryError) as err:  # a DMA error bit, an error status of the design
                if isinstance(err, DriverError):
                    raise
                self.hw.reset()
                raise DriverError(f"{what} failed on the {self.hw.name} backend: {err}; the accelerator was reset") from err
            if value is not None and value is not False:
                return value
            if self._clock() > deadline:
                self.hw.reset()
                kind = " of simulated time" if getattr(self.hw, "simulated", False) else ""
                raise DriverTimeout(f"{what} did not complete within {self.timeout_s:g} s{kind} ({self.hw.name} backend); "
                                    "the accelerator was reset and the overlay stays usable")
            self.hw.idle()

    # -- one inference
    def _region_address(self, level: int, branch: int) -> tuple[int, int]:
        region = self.bundle.region(level, branch)
        address, nbytes = self.wbuf.physical_address + int(region["offset"]), int(region["bytes"])
        if not self.wbuf.contains(address, nbytes):  # never DMA outside the weight buffer
            raise DriverError(f"region of level {level} branch {branch} lies outside the weight buffer")
        return address, nbytes

    def _guess(self, level: int, parent: int | None) -> int:
        """The prefetch predictor: the child of ``parent`` chosen most often so far (ties: branch 0)."""
        counts = self._counts[level] + (0 if self.prior is None else np.asarray(self.prior[level]))
        first = 0 if level == 0 else 2 * parent
        return first + int(np.argmax(counts[first:first + 2]))

    def _check_decision(self, level: int, branch: Any, parent: int | None) -> int:
        valid = range(2 ** (level + 1)) if level == 0 else (2 * parent, 2 * parent + 1)
        if not isinstance(branch, (int, np.integer)) or int(branch) not in valid:
            self.hw.reset()
            raise DecisionError(f"the router of level {level} reported branch {branch!r}; valid: "
                                f"{list(valid)} (level {level} has {2 ** (level + 1)} branches"
                                + (f", children of branch {parent}" if level else "") + "); nothing was fetched")
        return int(branch)

    def _run_one(self, q: np.ndarray) -> dict[str, Any]:
        hw, t0 = self.hw, self.hw.now()
        in_bytes = self._pack_input(q)
        out_bytes = int(self.bundle.driver["output"]["bytes"])
        hw.send_input(self.ibuf, in_bytes, self.obuf, out_bytes)
        issued: dict[int, tuple[int, int]] = {}  # level -> (branch, bytes) in flight or done
        if self.strategy == "prefetch":
            guess = self._guess(0, None)
            hw.start_fetch(0, *self._region_address(0, guess))
            issued[0] = (guess, self._region_address(0, guess)[1])
        path, parent = [], None
        for level in range(self.depth):
            branch = self._check_decision(level, self._wait(lambda: hw.poll_decision(level), f"router decision of "
                                                            f"level {level}"), parent)
            path.append(branch)
            if self.fetch_mode == "host":
                if level in issued and issued[level][0] != branch:
                    hw.cancel_fetch(level)
                    del issued[level]
                if level not in issued:
                    address, nbytes = self._region_address(level, branch)
                    hw.start_fetch(level, address, nbytes)
                    issued[level] = (branch, nbytes)
                if self.strategy == "prefetch" and level + 1 < self.depth:
                    guess = self._guess(level + 1, branch)
                    hw.start_fetch(level + 1, *self._region_address(level + 1, guess))
                    issued[level + 1] = (guess, self._region_address(level + 1, guess)[1])
                self._wait(lambda: hw.poll_fetch(level), f"weight fetch of level {level} (branch {branch})")
                hw.commit_weights(level, branch)
            parent = branch
        self._wait(hw.poll_output, "output DMA")
        hw.sync_from_device(self.obuf)
        latency = hw.now() - t0
        acc = np.frombuffer(self.obuf.array[:out_bytes].tobytes(), dtype="<i4").astype(np.int64)
        # Bytes the fetchers moved, and the check that only the chosen regions were read.
        by_level = [0] * self.depth
        for level, address, nbytes in hw.fetch_log():
            if not self.wbuf.contains(address, nbytes):
                raise DriverError(f"level {level}'s fetch read {nbytes} bytes at {address:#x}, outside the weight buffer")
            by_level[level] += nbytes
        needed = [self._region_address(level, b) for level, b in enumerate(path)]
        read = {(l, a, n) for l, a, n in hw.fetch_log()}
        for level, (address, nbytes) in enumerate(needed):
            if (level, address, nbytes) not in read:
                raise DriverError(f"level {level}: the fetchers did not read the chosen region (branch {path[level]}, "
                                  f"{nbytes} bytes at {address:#x}); read: {sorted(read)}")
        extra = read - {(level, a, n) for level, (a, n) in enumerate(needed)}
        if extra and self.fetch_mode == "onchip":  # the router drives the fetchers: nothing else may be read
            raise DriverError("the on-chip fetchers read outside the chosen regions: "
                              + ", ".join(f"level {l}: {n} bytes at {a:#x}" for l, a, n in sorted(extra))
                              + f" (path {path})")
        path_bytes = sum(n for _, n in needed)
        wasted = sum(by_level) - path_bytes
        for level, branch in enumerate(path):
            self._counts[level][branch] += 1
        return {"acc": acc, "path": path, "latency": latency, "weights": sum(by_level), "by_level": by_level,
                "wasted": wasted, "input": in_bytes, "output": out_bytes}

    def _run_batch(self, q: np.ndarray) -> list[dict[str, Any]]:
        """``len(q)`` inputs in one start, back to back through the tree (on-chip fetch): the
        design keeps each image's leaf (PATH); the fetchers' byte counters cover the whole batch."""
        hw, t0, n = self.hw, self.hw.now(), len(q)
        d = self.bundle.driver
        in_one, out_one = int(d["input"]["bytes"]), int(d["output"]["bytes"])
        if getattr(self, "_batch_bufs", None) is None:
            self._batch_bufs = (hw.allocate("input batch", hw.max_batch * in_one),
                                hw.allocate("output batch", hw.max_batch * out_one))
            self._buffers += self._batch_bufs
        ibuf, obuf = self._batch_bufs
        in_bytes = self._pack_input(q, ibuf)
        hw.send_batch(ibuf, in_bytes, obuf, n * out_one, n)
        self._wait(hw.poll_output, f"output DMA of a batch of {n} inputs")
        hw.sync_from_device(obuf)
        latency = (hw.now() - t0) / n
        leaves = hw.read_paths(n)
        acc = np.frombuffer(obuf.array[:n * out_one].tobytes(), dtype="<i4").astype(np.int64).reshape(n, -1)
        runs, total = [], 0
        for i, leaf in enumerate(leaves):
            if leaf is None or not 0 <= leaf < 2 ** self.depth:
                hw.reset()
                raise DecisionError(f"image {i} of the batch: the design reported leaf {leaf!r} (valid: 0 to "
                                    f"{2 ** self.depth - 1}); the accelerator was reset")
            path = [int(leaf) >> (self.depth - 1 - level) for level in range(self.depth)]
            by_level = [self._region_address(level, b)[1] for level, b in enumerate(path)]
            total += sum(by_level)
            for level, branch in enumerate(path):
                self._counts[level][branch] += 1
            runs.append({"acc": acc[i], "path": path, "latency": latency, "weights": sum(by_level),
                         "by_level": by_level, "wasted": 0, "input": in_one, "output": out_one})
        read = sum(nbytes for _, _, nbytes in hw.fetch_log())
        if read != total:   # the router drives the fetchers: exactly the chosen regions, once per image
            raise DriverError(f"the fetchers read {read} bytes for the batch of {n}; its images' paths need {total}")
        return runs

    def execute(self, x: np.ndarray, progress: Callable | None = None, batch: int = 1) -> dict[str, Any]:
        """Inference over a batch: ``classes``, ``leaves``, ``paths`` (branch per level),
        ``logits``, ``acc``, ``bytes`` (per inference: ``weights``, ``weights_by_level``,
        ``wasted``, ``input``, ``output``) and ``latency`` (per inference, in ``latency_unit``).

        ``batch`` = 1: one input at a time through the accelerator (any fetch mode and strategy).
        ``batch`` > 1 (on-chip fetch): up to that many inputs per start, streamed back to back so
        they overlap in the tree; the same results, ``latency`` = the batch's time / its inputs."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, not {batch}")
        if batch > 1:
            if self.fetch_mode != "onchip":
                raise ValueError("batch > 1 needs the on-chip fetch (the host drives each inference's "
                                 "weight DMAs in host mode)")
            if getattr(self.hw, "max_batch", 1) < 2:
                raise ValueError(f"the {self.hw.name} backend's design takes one input per start (no FRAMES "
                                 "register: rebuild it)")
            batch = min(batch, self.hw.max_batch)
        self.host_seconds = 0.0
        q = self.quantize(x)
        prepare = getattr(self.hw, "prepare", None)
        if prepare is not None:  # a simulator may run the whole batch at once (results replayed per inference)
            try:
                prepare(q)
            except Exception as err:  # a simulation that failed or ran past its cycle bound
                raise DriverError(f"the {self.hw.name} backend could not run the inputs: {type(err).__name__}: "
                                  f"{str(err)[-2000:]}") from err
        runs = []
        if batch > 1:
            for i in range(0, len(q), batch):
                runs += self._run_batch(q[i:i + batch])
                if progress is not None:
                    progress(len(q[i:i + batch]))
        for i in range(len(q) if batch == 1 else 0):
            runs.append(self._run_one(q[i]))
            if progress is not None:
                progress(1)
        n, classes = len(runs), int(self.bundle.manifest["num_classes"])
        acc = np.array([r["acc"] for r in runs], dtype=np.int64).reshape(n, classes)
        paths = np.array([r["path"] for r in runs], dtype=np.int64).reshape(n, self.depth)
        leaves = paths[:, -1] if n else np.zeros(0, dtype=np.int64)
        logits = acc * self._head_scale[leaves][:, None] + self._head_bias[leaves]
        return {"classes": logits.argmax(1) if n else np.zeros(0, dtype=np.int64), "leaves": leaves, "paths": paths,
                "logits": logits, "acc": acc,
                "bytes": {"weights": np.array([r["weights"] for r in runs], dtype=np.int64),
                          "weights_by_level": np.array([r["by_level"] for r in runs], dtype=np.int64).reshape(n, self.depth),
                          "wasted": np.array([r["wasted"] for r in runs], dtype=np.int64),
                          "input": np.array([r["input"] for r in runs], dtype=np.int64),
                          "output": np.array([r["output"] for r in runs], dtype=np.int64)},
                "latency": np.array([r["latency"] for r in runs], dtype=np.float64),
                "latency_unit": self.hw.clock_unit,
                "host_seconds_per_inference": self.host_seconds / n if n and self.host_backbone else 0.0}

    def path_bytes(self) -> int:
        """Weight bytes one inference moves without speculation: one region per level."""
        return sum(int(self.bundle.region(level, 0)["bytes"]) for level in range(self.depth))

    def close(self) -> None:
        self.hw.close()
