"""cocotb testbench of ``sigmabranch_tree_axi`` (hls/axi_top.py): the tree driven as the host does.

Per image, in the order of ``host/backends/board.py``: FETCH_MODE and WEIGHT_BASE once, then
the output sink armed, CTRL start, the image streamed on ``s_axis_in`` (what idma0 MM2S would
send), STATUS polled over AXI-Lite until done (bounded), then DECISION_VALID, DECISION_l,
FETCH_ADDR_l and FETCH_BYTES_l read. ``m_axis_out`` is taken with random ``tready`` and its TLAST
recorded; ``m_axi_weights`` is served by an AXI4 read-slave DDR model (weights.bin at
``memory.base``, random ``arready``/``rvalid`` stalls, bursts queued in order) that counts the
bytes it served. Optionally first an aborted inference: start, half the image, CTRL soft reset,
the rest of the image drained.

Frames listed in ``host_frames`` run in host-driven fetch mode (FETCH_MODE 0), as the board
backend's ``start_fetch`` does it: per level, wait for DECISION_VALID, write FETCH_BRANCH_l, stream
the chosen region from weights.bin on ``s_axis_w<l>`` (random valid, TLAST on the last beat),
write COMMIT_l. In the first host frame, level 0 first gets a wrong prefetch: the other branch's
region, tagged and started before the decision, aborted mid-way (no TLAST) once the decision is
read, then the right one.

config: frames [{"in": [hex beats], "n_out": beats}], memory {file, base}, levels, p_valid,
p_ready, p_rvalid, p_arready, seed, max_cycles, abort_first, host_frames, regions
(per level, per branch: [offset, bytes] in weights.bin), as ``sim/axi_top_sim.py`` writes it.
Results: outputs.json.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from host.backends.base import REGISTERS
from sim.tb.axi_lite import AxiLiteMaster
from sim.tb.axi_ram import AxiReadRam
from sim.tb.axis import StreamSource, count_cycles, reset, start_clock
from sim.verilator import tb_config, tb_dir

R = REGISTERS


class WeightDma:
    """``s_axis_w<l>`` as an AXI DMA MM2S channel drives it: 32-byte beats, TLAST on the last,
    random tvalid; :meth:`stop` ends a transfer at once (no TLAST), as a DMA reset does."""

    def __init__(self, dut, level: int, p_valid: float, seed: int):
        self.dut, self.clk, self.p = dut, dut.ap_clk, p_valid
        self.port = lambda n: getattr(dut, f"s_axis_w{level}_{n}")
        self.rng = random.Random(seed)
        self.stopped = False
        self.port("tvalid").value = 0
        self.port("tlast").value = 0
        self.port("tkeep").value = (1 << len(self.port("tkeep"))) - 1

    async def send(self, data: bytes) -> int:
        beats = [int.from_bytes(data[i:i + 32], "little") for i in range(0, len(data), 32)]
        i, fire, self.stopped = 0, False, False
        while True:
            await RisingEdge(self.clk)
            i += int(fire)
            if i == len(beats) or self.stopped:
                self.port("tvalid").value = 0
                self.port("tlast").value = 0
                return i
            v = self.rng.random() < self.p
            self.port("tvalid").value = int(v)
            self.port("tdata").value = beats[i] if v else self.rng.getrandbits(256)
            self.port("tlast").value = int(i == len(beats) - 1)
            await ReadOnly()
            fire = v and self.port("tready").value == 1

    def stop(self) -> None:
        self.stopped = True


class OutSink:
    """``m_axis_out`` with random ``tready``: (word, tlast) of every handshake."""

    def __init__(self, dut, p_ready: float, seed: int):
        self.dut, self.p = dut, p_ready
        self.rng = random.Random(seed)
        self.beats: list[tuple[int, int]] = []
        dut.m_axis_out_tready.value = 0

    async def run(self):
        d = self.dut
        while True:
            await RisingEdge(d.ap_clk)
            r = self.rng.random() < self.p
            d.m_axis_out_tready.value = int(r)
            await ReadOnly()
            if r and d.m_axis_out_tvalid.value == 1:
                self.beats.append((d.m_axis_out_tdata.value.to_unsigned(), int(d.m_axis_out_tlast.value)))


@cocotb.test()
async def tree_axi(dut):
    cfg = tb_config()
    seed = int(cfg.get("seed", 0))
    start_clock(dut)
    dut.s_axis_in_tkeep.value = (1 << len(dut.s_axis_in_tkeep)) - 1
    dut.s_axis_in_tlast.value = 0
    src = StreamSource(dut, "s_axis_in", cfg.get("p_valid", 1.0), seed + 1)
    sink = OutSink(dut, cfg.get("p_ready", 1.0), seed + 2)
    mem = cfg["memory"]
    ddr = AxiReadRam(dut, "m_axi_weights", Path(mem["file"]).read_bytes(), int(mem["base"]),
                     cfg.get("p_arready", 1.0), cfg.get("p_rvalid", 1.0), seed + 3, check_4k=True)
    axi = AxiLiteMaster(dut, "s_axi_ctrl", seed=seed + 4)
    await reset(dut, 8)
    cocotb.start_soon(ddr.run())
    cocotb.start_soon(sink.run())
    cycle = count_cycles(dut)
    levels = int(cfg["levels"])
    max_cycles = int(cfg.get("max_cycles", 400_000))
    info = {"signature": await axi.read(R["SIGNATURE"]), "levels": await axi.read(R["LEVELS"]),
            "status_after_reset": await axi.read(R["STATUS"])}
    # the board backend's set_weight_base: FETCH_MODE, then the base
    await axi.write(R["FETCH_MODE"], 0)
    info["status_host_mode"], info["mode_host"] = await axi.read(R["STATUS"]), await axi.read(R["FETCH_MODE"])
    await axi.write(R["FETCH_MODE"], 1)
    info["status_onchip"], info["mode_onchip"] = await axi.read(R["STATUS"]), await axi.read(R["FETCH_MODE"])
    await axi.write(R["WEIGHT_BASE_LO"], int(mem["base"]) & 0xFFFFFFFF)
    await axi.write(R["WEIGHT_BASE_HI"], int(mem["base"]) >> 32)

    async def poll_done(what: str) -> int:
        t0 = cycle[0]
        while cycle[0] - t0 < max_cycles:
            status = await axi.read(R["STATUS"])
            if status & 1:
                return status
            await ClockCycles(dut.ap_clk, 100)        # the host polls now and then, not every cycle
        raise AssertionError(f"{what}: STATUS done not set after {max_cycles} cycles (STATUS "
                             f"0x{await axi.read(R['STATUS']):x}, CTRL 0x{await axi.read(R['CTRL']):x}, "
                             f"DECISION_VALID 0x{await axi.read(R['DECISION_VALID']):x}); input beats sent "
                             f"{src.sent}, output beats {len(sink.beats)}, DDR bytes {ddr.bytes}, DDR errors "
                             f"{ddr.errors[:3]}")

    if cfg.get("abort_first"):
        words = [int(w, 16) for w in cfg["frames"][0]["in"]]
        await axi.write(R["CTRL"], 1)
        half = cocotb.start_soon(src.send(words[:len(words) // 2]))
        while not half.done():
            await RisingEdge(dut.ap_clk)
        for _ in range(50):
            await RisingEdge(dut.ap_clk)
        await axi.write(R["CTRL"], 2)                 # soft reset mid-inference
        info["abort_status"] = await axi.read(R["STATUS"])
        info["abort_ctrl"] = await axi.read(R["CTRL"])
        rest = cocotb.start_soon(src.send(words[len(words) // 2:]))   # the DMA's remaining beats: drained
        t0 = cycle[0]
        while not rest.done() and cycle[0] - t0 < 20_000:
            await RisingEdge(dut.ap_clk)
        info["abort_drained"] = rest.done()
        for _ in range(200):
            await RisingEdge(dut.ap_clk)
        info["abort_out_beats"] = len(sink.beats)

    image = Path(mem["file"]).read_bytes()
    wdma = [WeightDma(dut, level, cfg.get("p_valid", 1.0), seed + 10 + level) for level in range(levels)]
    host_frames = set(cfg.get("host_frames", []))

    def region(level: int, branch: int) -> bytes:
        offset, nbytes = cfg["regions"][level][branch]
        return image[offset:offset + nbytes]

    async def host_fetch(f: int) -> list[int]:
        """The PS's part of one inference in host mode; returns the beats of the wrong prefetch sent."""
        wrong_sent, branch = [], 0
        if f == min(host_frames):                  # a wrong guess, started before the decision
            guess = 1 - (int(cfg["path_hint"][f][0]) if cfg.get("path_hint") else 0)
            await axi.write(R["FETCH_BRANCH_0"], guess)
            prefetch = cocotb.start_soon(wdma[0].send(region(0, guess)))
        else:
            prefetch = guess = None
        for level in range(levels):
            t0 = cycle[0]
            while not (await axi.read(R["DECISION_VALID"])) >> level & 1:
                if cycle[0] - t0 > max_cycles:
                    raise AssertionError(f"frame {f}: no decision of level {level}")
            branch = await axi.read(R["DECISION_0"] + 4 * level)
            if prefetch is not None and level == 0:
                if guess != branch:                # cancel: the DMA stops mid-transfer, then the right one
                    for _ in range(20):
                        await RisingEdge(dut.ap_clk)
                    wdma[0].stop()
                    while not prefetch.done():
                        await RisingEdge(dut.ap_clk)
                    wrong_sent.append(prefetch.result())
                    prefetch = None
                else:
                    while not prefetch.done():
                        await RisingEdge(dut.ap_clk)
            if prefetch is None or level > 0:
                await axi.write(R["FETCH_BRANCH_0"] + 4 * level, branch)
                await wdma[level].send(region(level, branch))
            await axi.write(R["COMMIT_0"] + 4 * level, 1 << 31 | branch)
        return wrong_sent

    results = []
    for f, frame in enumerate(cfg["frames"]):
        words = [int(w, 16) for w in frame["in"]]
        host = f in host_frames
        await axi.write(R["FETCH_MODE"], int(not host))
        b0, n0, t0, k0 = ddr.bytes, len(sink.beats), cycle[0], len(ddr.bursts)
        await axi.write(R["CTRL"], 1)
        send = cocotb.start_soon(src.send(words))
        wrong = await host_fetch(f) if host else []
        status = await poll_done(f"frame {f}")
        beats = sink.beats[n0:]
        t_done = cycle[0] - t0
        if not send.done():
            raise AssertionError(f"frame {f}: done, but only {src.sent} input beats taken")
        res = {"status": status, "out": [hex(w) for w, _ in beats], "tlast": [t for _, t in beats],
               "decision_valid": await axi.read(R["DECISION_VALID"]),
               "decision": [await axi.read(R["DECISION_0"] + 4 * l) for l in range(levels)],
               "fetch_addr": [await axi.read(R["FETCH_ADDR_LO_0"] + 8 * l)
                              | await axi.read(R["FETCH_ADDR_HI_0"] + 8 * l) << 32 for l in range(levels)],
               "fetch_bytes": [await axi.read(R["FETCH_BYTES_0"] + 4 * l) for l in range(levels)],
               "ddr_bytes": ddr.bytes - b0, "bursts": ddr.bursts[k0:], "cycles": t_done,
               "status_idle": await axi.read(R["STATUS"]), "host": host, "wrong_prefetch_beats": wrong}
        results.append(res)
    if ddr.errors:
        raise AssertionError(f"DDR model: {ddr.errors[:5]}")
    (tb_dir() / "outputs.json").write_text(json.dumps({"info": info, "frames": results}))
