"""cocotb test of hls/rtl/weight_stream_split.sv: a host DMA stream of one branch's weight region split
among the level's fetchers, against the Python model :func:`reference`, under random valid/ready.

Config (``tb_config()``): ``lo``, ``hi`` (each fetcher's beat range, as the RTL's BEAT_LO/BEAT_HI),
``region_beats``, ``seed``.
"""
from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from sim.tb.axis import reset, start_clock
from sim.verilator import tb_config


def reference(lo, hi, region_beats, decision, transfers):
    """The block's model for one inference (clear, then the decision taken before any beat moves).

    ``transfers``: ``(tag, words, tlast)`` in the order the host's DMA sends them; ``tlast`` False is
    a transfer the host aborted after ``words`` (no TLAST); the tag is constant during a transfer.
    Returns ``out`` (each fetcher's words), ``consumed`` (beats taken of each transfer; the rest is
    held until clear), ``fwd_beats``, ``drop_beats``, ``filled``, ``len_error``.
    """
    out = [[] for _ in lo]
    consumed = []
    mode, idx = "idle", 0
    fwd = drop = 0
    filled = len_error = False
    for tag, words, tlast in transfers:
        taken = 0
        for j, w in enumerate(words):
            if filled:  # a delivered region holds the stream until the next clear
                break
            taken += 1
            last = tlast and j == len(words) - 1
            if mode == "fwd" or tag == decision:  # inside a region, or a (re-tagged) transfer's first beat
                i = idx if mode == "fwd" else 0
                fwd += 1
                for k in range(len(lo)):
                    if lo[k] <= i < hi[k]:
                        out[k].append(w)
                if last or i == region_beats - 1:
                    filled = True
                    len_error |= last != (i == region_beats - 1)
                    mode = "idle"
                else:
                    mode, idx = "fwd", i + 1
            else:
                drop += 1
                mode = "idle" if last else "drop"
        consumed.append(taken)
    return dict(out=out, consumed=consumed, fwd_beats=fwd, drop_beats=drop, filled=filled, len_error=len_error)


class Harness:
    """Drives s_axis (random tvalid, TLAST) and the fetchers' m_tready (random, per fetcher); the
    fetcher monitor checks the demux rules every cycle and collects each fetcher's words."""

    def __init__(self, dut, seed: int):
        self.dut = dut
        self.n = len(dut.m_tvalid)
        self.rng = random.Random(seed)
        self.p_valid = 1.0
        self.p_ready = [1.0] * self.n
        self.got: list[list[int]] = [[] for _ in range(self.n)]
        self.taken = 0          # s_axis beats consumed
        self.hold = False       # while set, no beat may be offered or consumed
        self.abort = False      # the host stops the running transfer (no TLAST)
        dut.s_axis_tvalid.value = 0
        dut.s_axis_tlast.value = 0
        dut.m_tready.value = 0
        dut.clear.value = 0
        dut.decision_valid.value = 0
        dut.decision.value = 0
        dut.tag.value = 0

    async def fetchers(self):
        dut = self.dut
        while True:
            await RisingEdge(dut.ap_clk)
            r = sum(1 << k for k in range(self.n) if self.rng.random() < self.p_ready[k])
            dut.m_tready.value = r
            await ReadOnly()
            v = dut.m_tvalid.value.to_unsigned()
            s_fire = dut.s_axis_tvalid.value == 1 and dut.s_axis_tready.value == 1
            assert v & (v - 1) == 0, f"one beat offered to several fetchers: m_tvalid={v:b}"
            assert not v or dut.s_axis_tvalid.value == 1, "m_tvalid without s_axis_tvalid"
            if self.hold:
                assert v == 0 and not s_fire, "a beat moved while the stream should be held"
            if v:   # a fetcher's beat is taken exactly when that fetcher takes it
                assert s_fire == bool(v & r), "s_axis_tready differs from the addressed fetcher's m_tready"
            if v & r:
                self.got[(v & r).bit_length() - 1].append(dut.m_tdata.value.to_unsigned())
            self.taken += s_fire

    async def send(self, words, tlast: bool):
        """One DMA transfer; returns when all words are taken or ``abort`` is set."""
        dut, width = self.dut, len(self.dut.s_axis_tdata)
        i, fire = 0, False
        for _ in range(1000 + 200 * len(words)):   # a stuck stream fails instead of hanging the simulation
            await RisingEdge(dut.ap_clk)
            i += fire
            if i == len(words) or self.abort:
                dut.s_axis_tvalid.value = 0
                return
            v = self.rng.random() < self.p_valid
            dut.s_axis_tvalid.value = int(v)
            # idle cycles drive junk data and TLAST: a block that looks at them without valid is caught
            dut.s_axis_tdata.value = words[i] if v else self.rng.getrandbits(width)
            dut.s_axis_tlast.value = int(tlast and i == len(words) - 1) if v else self.rng.getrandbits(1)
            await ReadOnly()
            fire = v and dut.s_axis_tready.value == 1
        raise AssertionError(f"transfer stuck: {i} of {len(words)} beats taken")

    async def clear(self):
        """New inference: one-cycle clear; the decision is withdrawn."""
        await RisingEdge(self.dut.ap_clk)
        self.dut.clear.value = 1
        self.dut.decision_valid.value = 0
        await RisingEdge(self.dut.ap_clk)
        self.dut.clear.value = 0
        self.got = [[] for _ in range(self.n)]

    async def decide(self, decision: int):
        await RisingEdge(self.dut.ap_clk)
        self.dut.decision.value = decision
        self.dut.decision_valid.value = 1

    async def expect_held(self, cycles: int = 25):
        """Nothing moves for ``cycles`` (the source keeps offering its beat)."""
        self.hold = True
        await ClockCycles(self.dut.ap_clk, cycles)
        self.hold = False

    async def transfer(self, tag: int, words, tlast: bool, consumed: int, decide: tuple[int, int] | None = None,
                       held_then_abort: bool = True):
        """Tag and send one transfer. ``decide=(decision, cycles)``: the decision comes only after the
        transfer was held ``cycles``. If the model takes only ``consumed`` of its words, check the rest
        is held, then abort it (or, ``held_then_abort=False``, return its still-running task)."""
        self.dut.tag.value = tag
        start = self.taken
        self.abort = False
        task = cocotb.start_soon(self.send(words, tlast))
        if decide:
            await self.expect_held(decide[1])
            await self.decide(decide[0])
        if consumed == len(words):
            await task
            return None
        for _ in range(1000 + 200 * len(words)):
            await RisingEdge(self.dut.ap_clk)
            if self.taken - start >= consumed:
                break
        assert self.taken - start == consumed, f"{self.taken - start} beats taken, model {consumed}"
        await self.expect_held()
        if not held_then_abort:
            return task
        self.abort = True
        await task
        self.abort = False
        return None

    async def check(self, exp, what: str):
        await ClockCycles(self.dut.ap_clk, 3)
        await ReadOnly()
        dut = self.dut
        for k in range(self.n):
            assert self.got[k] == exp["out"][k], f"{what}: fetcher {k} got {len(self.got[k])} words " \
                f"{[hex(w) for w in self.got[k]]}, model {[hex(w) for w in exp['out'][k]]}"
        got = dict(fwd_beats=dut.fwd_beats.value.to_unsigned(), drop_beats=dut.drop_beats.value.to_unsigned(),
                   filled=bool(dut.filled.value), len_error=bool(dut.len_error.value))
        want = {k: exp[k] for k in got}
        assert got == want, f"{what}: status {got}, model {want}"
        await RisingEdge(dut.ap_clk)

    async def inference(self, decision, transfers, what, decide_after: int = 0):
        """clear, the decision (``decide_after`` > 0: only after the first transfer was held that
        long), the transfers; then compare with the model."""
        cfg = tb_config()
        exp = reference(cfg["lo"], cfg["hi"], cfg["region_beats"], decision, transfers)
        await self.clear()
        if not decide_after:
            await self.decide(decision)
        for n, ((tag, words, tlast), c) in enumerate(zip(transfers, exp["consumed"])):
            await self.transfer(tag, words, tlast, c, decide=(decision, decide_after) if decide_after and n == 0 else None)
        await self.check(exp, what)
        return exp


async def _setup(dut):
    cfg = tb_config()
    start_clock(dut)
    h = Harness(dut, cfg.get("seed", 0))
    await reset(dut)
    cocotb.start_soon(h.fetchers())
    return h, cfg


def _words(rng, n, width):
    return [rng.getrandbits(width) for _ in range(n)]


@cocotb.test()
async def scenarios(dut):
    h, cfg = await _setup(dut)
    rng = random.Random(cfg.get("seed", 0) + 1)
    r, w = cfg["region_beats"], len(dut.s_axis_tdata)
    region = lambda: _words(rng, r, w)  # noqa: E731
    for pv, pr in [(1.0, 1.0), (0.6, 0.5), (0.3, 0.9), (0.9, 0.2)]:
        h.p_valid, h.p_ready = pv, [pr * rng.uniform(0.5, 1.0) for _ in range(h.n)]
        tag = f" (p_valid {pv}, p_ready {pr})"
        # (1) matching transfer: padding beats (gaps between ranges, before and after) reach nobody
        exp = await h.inference(3, [(3, region(), True)], "matching" + tag)
        assert exp["filled"] and not exp["len_error"]
        # (2) the DMA starts before the decision: held, not a beat consumed, until decision_valid
        await h.inference(5, [(5, region(), True)], "decision late" + tag, decide_after=30)
        # a prefetch of the wrong branch, started before the decision, is dropped once decided
        await h.inference(6, [(1, region(), True), (6, region(), True)], "wrong prefetch" + tag, decide_after=20)
        # (3) mismatching tag: all dropped, filled stays 0; then the right transfer is forwarded
        exp = await h.inference(1, [(2, region(), True)], "mismatch only" + tag)
        assert not exp["filled"] and exp["drop_beats"] == r
        await h.inference(1, [(2, region(), True), (1, region(), True)], "mismatch then match" + tag)
        # (4) wrong transfer aborted mid-way (no TLAST), re-tagged for the decision: forwarded from beat 0
        await h.inference(7, [(4, region()[:max(1, r // 2)], False), (7, region(), True)], "aborted" + tag)
        await h.inference(7, [(4, region()[:1], False), (9, region()[:2], False), (7, region(), True)],
                          "aborted twice" + tag)
        # (5) after filled, a further transfer waits (no beat taken) until clear; the next
        # inference (same decision) then takes it whole
        first, second = region(), region()
        exp = reference(cfg["lo"], cfg["hi"], r, 0, [(0, first, True), (0, second, True)])
        assert exp["consumed"] == [r, 0]
        await h.clear()
        await h.decide(0)
        await h.transfer(0, first, True, r)
        waiting = await h.transfer(0, second, True, 0, held_then_abort=False)
        await h.check(exp, "held after filled" + tag)
        await h.clear()
        await h.expect_held(10)                 # cleared, no decision yet: still held
        await h.decide(0)
        await waiting
        await h.check(reference(cfg["lo"], cfg["hi"], r, 0, [(0, second, True)]), "taken after clear" + tag)
        # (6) wrong lengths: TLAST early, TLAST late (the rest held), no TLAST at all
        if r > 1:
            exp = await h.inference(2, [(2, region()[:r - 1], True)], "short" + tag)
            assert exp["filled"] and exp["len_error"]
        exp = await h.inference(2, [(2, region() + _words(rng, 2, w), True)], "long" + tag)
        assert exp["filled"] and exp["len_error"] and exp["consumed"] == [r]
        exp = await h.inference(2, [(2, region(), False)], "no TLAST" + tag)
        assert exp["filled"] and exp["len_error"]


@cocotb.test()
async def random_inferences(dut):
    """Random mixes: wrong-branch transfers (whole or aborted), then the right one (sometimes of a
    wrong length), random decision timing and back-pressure; every inference against the model."""
    h, cfg = await _setup(dut)
    rng = random.Random(cfg.get("seed", 0) + 2)
    r, w = cfg["region_beats"], len(dut.s_axis_tdata)
    for n in range(cfg.get("n_random", 12)):
        h.p_valid = rng.choice([1.0, 0.7, 0.3])
        h.p_ready = [rng.choice([1.0, 0.6, 0.2]) for _ in range(h.n)]
        decision = rng.randrange(1 << len(dut.decision))
        transfers = []
        for _ in range(rng.randrange(3)):
            tag = rng.choice([t for t in range(4) if t != decision] or [decision ^ 1])
            if rng.random() < 0.5:
                transfers.append((tag, _words(rng, rng.randrange(1, 2 * r + 1), w), True))
            else:
                transfers.append((tag, _words(rng, rng.randrange(1, r + 1), w), False))
        length = r if rng.random() < 0.7 else rng.randrange(1, r + 3)
        transfers.append((decision, _words(rng, length, w), rng.random() < 0.9))
        await h.inference(decision, transfers, f"random inference {n}", decide_after=rng.choice([0, 0, 7]))
