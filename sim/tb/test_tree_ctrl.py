"""cocotb testbench of ``hls/rtl/tree_ctrl.sv`` against a register-level reference model.

:class:`TreeCtrlModel` is the register contract (``host/backends/base.py`` ``REGISTERS``) as the
control block implements it, written independently of the RTL: the testbench plays inferences
on the block's datapath-facing ports (decisions rising, AXI read bursts of the fetchers with
random gaps, the last output word), drives the AXI4-Lite port with random valid/ready timing
(:class:`AxiLiteMaster`), and after every event reads registers and compares each with the model.

config: levels, signature, level_lo / level_hi (per level, byte offsets in weights.bin),
stride (region stride per level), n_inferences, seed.
"""
from __future__ import annotations

import json
import random

import cocotb
from cocotb.triggers import RisingEdge

from host.backends.base import REGISTERS
from sim.tb.axi_lite import AxiLiteMaster
from sim.tb.axis import reset, start_clock
from sim.verilator import tb_config, tb_dir

M32 = 0xFFFFFFFF


class TreeCtrlModel:
    """What every register of tree_ctrl reads, event by event (see tree_ctrl.sv's header)."""

    def __init__(self, levels: int, signature: int, level_lo: list[int], level_hi: list[int]):
        self.levels, self.signature = levels, signature
        self.lo, self.hi = level_lo, level_hi
        self.wb = 0
        self.running = self.soft = self.done = self.commit_err = self.range_err = False
        self.onchip = True
        self.tag = [0] * levels
        self.host_beats = [0] * levels      # the weight_stream_splits' matching beats (inputs)
        self.len_error = [False] * levels
        self.dec_valid = 0
        self.decision = [0] * levels
        self.commit = [0] * levels
        self.frames, self.frames_run, self.frames_done = 1, 1, 0
        self.path_q: list[int] = []
        self.path_ovf = False
        self._clear_fetch()

    def _clear_fetch(self):
        self.fetch_addr = [0] * self.levels
        self.fetch_bytes = [0] * self.levels
        self.seen = [False] * self.levels

    # -- host side
    def write(self, addr: int, data: int, strb: int = 0xF) -> None:
        def merge(old):
            for i in range(4):
                if strb >> i & 1:
                    old = (old & ~(0xFF << 8 * i)) | (data & (0xFF << 8 * i))
            return old & M32
        if addr == REGISTERS["CTRL"] and strb & 1:
            if data & 2:
                self.running, self.soft = False, True
                self._clear_run()
            elif data & 1 and not self.running:
                self.running, self.soft = True, False
                self._clear_run()
        elif addr == REGISTERS["FETCH_MODE"] and strb & 1:
            self.onchip = bool(data & 1)
        elif addr == REGISTERS["FRAMES"]:
            self.frames = merge(self.frames)
        elif addr == REGISTERS["WEIGHT_BASE_LO"]:
            self.wb = (self.wb & ~M32) | merge(self.wb & M32)
        elif addr == REGISTERS["WEIGHT_BASE_HI"]:
            self.wb = (self.wb & M32) | merge(self.wb >> 32) << 32
        else:
            for l in range(self.levels):
                if addr == REGISTERS["COMMIT_0"] + 4 * l:
                    self.commit[l] = merge(self.commit[l])
                    if not self.onchip and self.commit[l] != (1 << 31 | self.decision[l]):
                        self.commit_err = True
                if addr == REGISTERS["FETCH_BRANCH_0"] + 4 * l:
                    self.tag[l] = merge(self.tag[l]) & 0xFF

    def _clear_run(self):
        self.done = self.range_err = self.commit_err = self.path_ovf = False
        self.dec_valid = 0
        self.frames_done, self.path_q = 0, []
        self.frames_run = 1 if not self.onchip or self.frames == 0 else self.frames
        self._clear_fetch()

    def read(self, addr: int) -> int:
        r = REGISTERS
        if addr == r["CTRL"]:
            return int(self.running) | int(self.soft) << 1
        if addr == r["STATUS"]:
            host_err = self.commit_err or (not self.onchip and any(self.len_error))
            return (int(self.done) | int(not self.running) << 1
                    | int(host_err or self.range_err or self.path_ovf) << 2
                    | int(host_err) << 3 | int(self.range_err) << 4 | int(self.path_ovf) << 5)
        if addr == r["SIGNATURE"]:
            return self.signature
        if addr == r["LEVELS"]:
            return self.levels
        if addr == r["FETCH_MODE"]:
            return int(self.onchip)
        if addr == r["WEIGHT_BASE_LO"]:
            return self.wb & M32
        if addr == r["WEIGHT_BASE_HI"]:
            return self.wb >> 32
        if addr == r["DECISION_VALID"]:
            return self.dec_valid
        if addr == r["FRAMES"]:
            return self.frames
        if addr == r["FRAMES_DONE"]:
            return self.frames_done
        if addr == r["PATH"]:                        # the read pops the oldest path
            return (1 << 31 | self.path_q.pop(0)) if self.path_q else 0
        for l in range(self.levels):
            if addr == r["DECISION_0"] + 4 * l:
                return self.decision[l]
            if addr == r["COMMIT_0"] + 4 * l:
                return self.commit[l]
            if addr == r["FETCH_ADDR_LO_0"] + 8 * l:
                return self.fetch_addr[l] & M32
            if addr == r["FETCH_ADDR_HI_0"] + 8 * l:
                return self.fetch_addr[l] >> 32
            if addr == r["FETCH_BYTES_0"] + 4 * l:
                return self.fetch_bytes[l] if self.onchip else (self.host_beats[l] << 5) & M32
            if addr == r["FETCH_BRANCH_0"] + 4 * l:
                return self.tag[l]
        return 0

    # -- datapath side
    def decide(self, level: int, branch: int) -> None:
        self.dec_valid |= 1 << level
        self.decision[level] = branch

    def burst(self, addr: int, size: int, beats: int) -> None:
        off = (addr - self.wb) % (1 << 64)
        level = next((l for l in range(self.levels) if self.lo[l] <= off < self.hi[l]), None)
        if level is None:
            self.range_err = True
            return
        if not self.seen[level] or addr < self.fetch_addr[level]:
            self.fetch_addr[level] = addr
        self.seen[level] = True
        self.fetch_bytes[level] = (self.fetch_bytes[level] + beats * (1 << size)) & M32

    def out_done(self) -> None:
        if self.running:
            self.frames_done += 1
            if self.frames_done >= self.frames_run:
                self.running, self.done = False, True

    def path(self, leaf: int, depth: int) -> None:
        if self.running:
            if len(self.path_q) < depth:
                self.path_q.append(leaf)
            else:
                self.path_ovf = True

    def all_addresses(self) -> list[int]:
        r = REGISTERS
        fixed = [r[k] for k in ("CTRL", "STATUS", "SIGNATURE", "LEVELS", "FETCH_MODE", "WEIGHT_BASE_LO",
                                "WEIGHT_BASE_HI", "DECISION_VALID", "FRAMES", "FRAMES_DONE", "PATH")]
        per = [a for l in range(self.levels) for a in (r["DECISION_0"] + 4 * l, r["COMMIT_0"] + 4 * l,
                                                        r["FETCH_ADDR_LO_0"] + 8 * l, r["FETCH_ADDR_HI_0"] + 8 * l,
                                                        r["FETCH_BYTES_0"] + 4 * l, r["FETCH_BRANCH_0"] + 4 * l)]
        return fixed + per + [0xFC]


def reg_name(addr: int) -> str:
    for k, v in REGISTERS.items():
        for l in range(8):
            stride = 8 if k.startswith("FETCH_ADDR") else 4
            if k.endswith("_0") and addr == v + stride * l:
                return f"{k[:-2]}_{l}"
        if addr == v:
            return k
    return f"0x{addr:02x}"


@cocotb.test()
async def tree_ctrl_registers(dut):
    cfg = tb_config()
    rng = random.Random(cfg.get("seed", 0))
    levels, stride = int(cfg["levels"]), cfg["stride"]
    model = TreeCtrlModel(levels, int(cfg["signature"]), cfg["level_lo"], cfg["level_hi"])
    start_clock(dut)
    dut.level_branch.value = 0
    dut.level_busy.value = 0
    dut.out_done.value = 0
    dut.path_push.value = 0
    dut.path_leaf.value = 0
    path_depth = int(cfg.get("path_depth", 64))
    dut.host_fwd_beats.value = 0
    dut.host_len_error.value = 0
    for name in ("mon_araddr", "mon_arsize", "mon_arvalid", "mon_arready", "mon_rvalid", "mon_rready", "mon_rlast"):
        getattr(dut, name).value = 0
    axi = AxiLiteMaster(dut, "s_axi", seed=rng.randrange(1 << 30))
    await reset(dut, 6)
    n_checked = 0
    branch_w = len(dut.level_branch) // levels

    async def check(addrs=None):
        nonlocal n_checked
        for a in addrs if addrs is not None else model.all_addresses():
            got, exp = await axi.read(a), model.read(a)
            assert got == exp, f"{reg_name(a)}: read 0x{got:x}, the model says 0x{exp:x}"
            n_checked += 1

    async def write(a, v, strb=0xF):
        await axi.write(a, v, strb)
        model.write(a, v, strb)

    async def burst(addr: int, beats: int, size: int = 5):
        await RisingEdge(dut.ap_clk)
        dut.mon_araddr.value, dut.mon_arsize.value = addr, size
        dut.mon_arvalid.value = 1
        while True:                                  # AR with a random ready
            ready = rng.random() < 0.6
            dut.mon_arready.value = int(ready)
            await RisingEdge(dut.ap_clk)
            if ready:
                break
        dut.mon_arvalid.value = 0
        dut.mon_arready.value = 0
        dut.mon_araddr.value = rng.getrandbits(64)     # junk while not valid
        sent = 0
        while sent < beats:                          # R beats with gaps, only valid & ready count
            v, r = rng.random() < 0.7, rng.random() < 0.7
            dut.mon_rvalid.value, dut.mon_rready.value = int(v), int(r)
            dut.mon_rlast.value = int(sent == beats - 1)
            await RisingEdge(dut.ap_clk)
            sent += int(v and r)
        dut.mon_rvalid.value = 0
        dut.mon_rready.value = 0
        dut.mon_rlast.value = 0
        model.burst(addr, size, beats)

    # after reset
    await check()
    await write(REGISTERS["FETCH_MODE"], 0)          # host mode and back
    await check([REGISTERS["STATUS"], REGISTERS["FETCH_MODE"]])
    await write(REGISTERS["FETCH_MODE"], 1)
    await check([REGISTERS["STATUS"], REGISTERS["FETCH_MODE"]])
    await write(REGISTERS["COMMIT_0"], 0x8000_0001)
    await write(REGISTERS["WEIGHT_BASE_LO"], 0xAABBCCDD, strb=0b0101)   # byte strobes
    await check([REGISTERS["COMMIT_0"], REGISTERS["WEIGHT_BASE_LO"]])

    def set_host_inputs():
        dut.host_fwd_beats.value = sum(b << 32 * l for l, b in enumerate(model.host_beats))
        dut.host_len_error.value = sum(int(e) << l for l, e in enumerate(model.len_error))

    async def pulse(signal, value=1):
        await RisingEdge(dut.ap_clk)
        signal.value = value
        await RisingEdge(dut.ap_clk)
        signal.value = 0

    results = []
    for n in range(int(cfg.get("n_inferences", 4))):
        host = n % 2 == 1                            # every other inference: host-driven fetch
        # every fourth: several images per start (FRAMES; host-driven fetch takes one regardless);
        # the last of these more images than the path queue holds, unread (STATUS bit5)
        frames = (path_depth + 1 if n == 8 else 3) if n % 4 == 0 and n else 1
        await write(REGISTERS["FETCH_MODE"], int(not host))
        await write(REGISTERS["FRAMES"], frames if n % 4 == 0 else (0 if n % 3 == 0 else 1))
        model.host_beats, model.len_error = [0] * levels, [False] * levels   # the splits' clear at start
        set_host_inputs()
        wb = rng.randrange(1 << 20, 1 << 36) & ~0xFFF
        await write(REGISTERS["WEIGHT_BASE_LO"], wb & M32)
        await write(REGISTERS["WEIGHT_BASE_HI"], wb >> 32)
        await write(REGISTERS["CTRL"], 1)
        await check([REGISTERS["CTRL"], REGISTERS["STATUS"], REGISTERS["DECISION_VALID"], REGISTERS["FRAMES"]])
        await write(REGISTERS["CTRL"], 1)            # start while running: ignored
        abort_at = rng.randrange(levels) if n % 3 == 2 and frames == 1 else None
        aborted = False
        for image in range(model.frames_run):
            branch = 0
            busy = 0
            fast = image >= 4                        # many images: the decisions only, no register checks
            for level in range(levels):
                branch = 2 * branch + rng.randrange(2)
                await RisingEdge(dut.ap_clk)
                word = dut.level_branch.value.to_unsigned() & ~(((1 << branch_w) - 1) << branch_w * level)
                dut.level_branch.value = word | branch << branch_w * level
                busy |= 1 << level
                dut.level_busy.value = busy
                model.decide(level, branch)
                if fast:
                    continue
                await check([REGISTERS["DECISION_VALID"], REGISTERS["DECISION_0"] + 4 * level])
                if host:                                 # the PS tags, its DMA streams, it commits
                    await write(REGISTERS["FETCH_BRANCH_0"] + 4 * level, branch)
                    model.host_beats[level] = rng.randrange(1, 200)
                    model.len_error[level] = n % 4 == 3 and level == levels - 1
                    set_host_inputs()
                    wrong = n % 6 == 5 and level == 0     # a commit naming another branch
                    await write(REGISTERS["COMMIT_0"] + 4 * level, 1 << 31 | (branch ^ int(wrong)))
                    await check([REGISTERS["STATUS"], REGISTERS["FETCH_BYTES_0"] + 4 * level,
                                 REGISTERS["FETCH_BRANCH_0"] + 4 * level])
                base = wb + cfg["level_lo"][level] + branch * stride[level]
                addrs = [base + 512 * k for k in range(3)]
                rng.shuffle(addrs)                       # the lowest address is not the first burst
                for a in (addrs if not host else addrs[:1]):   # host mode: the monitor still counts (unread)
                    await burst(a, rng.choice([1, 4, 16]))
                if n % 4 == 1 and level == 0:            # a read outside every level's regions
                    await burst(wb + cfg["level_hi"][-1] + 4096, 2)
                if level:                                # the previous level's output left
                    busy &= ~(1 << (level - 1))
                    dut.level_busy.value = busy
                await check([a for a in model.all_addresses() if a != REGISTERS["PATH"]])
                if abort_at == level:
                    await write(REGISTERS["CTRL"], 2)    # soft reset mid-inference
                    dut.level_busy.value = busy = 0
                    await check()
                    aborted = True
                    break
            if aborted:
                break
            dut.path_leaf.value = branch                 # the image's first output word: its path
            await pulse(dut.path_push)
            model.path(branch, path_depth)
            await pulse(dut.out_done)                    # its last output word
            dut.level_busy.value = busy = 0
            model.out_done()
            if not fast:
                await check([a for a in model.all_addresses() if a != REGISTERS["PATH"]])
        await check()                                    # PATH: pops one
        for _ in range(len(model.path_q) + 1):           # the rest of the paths, then 0
            await check([REGISTERS["PATH"], REGISTERS["STATUS"]])
        results.append({"weights_base": wb, "aborted": abort_at is not None, "host": host, "frames": model.frames_run,
                        "fetch_bytes": list(model.fetch_bytes), "decision": list(model.decision)})
    (tb_dir() / "outputs.json").write_text(json.dumps({"checked": n_checked, "inferences": results}))
