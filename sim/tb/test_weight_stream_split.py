"""cocotb test of hls/rtl/weight_stream_split.sv: a host DMA stream of one branch's weight region split
among the level's fetchers, against the Python model :func:`reference`, under random valid/ready,
with and without speculative fill (``speculate``; a wrong guess undone by ``flush``).

Config (``tb_config()``): ``lo``, ``hi`` (each fetcher's beat range, as the RTL's BEAT_LO/BEAT_HI),
``region_beats``, ``flush_cycles`` (the RTL's FLUSH_CYCLES), ``seed``, ``n_random``.
"""
from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from sim.tb.axis import reset, start_clock
from sim.verilator import tb_config

NEVER = 1 << 30     # decide_at: the decision only once the stream waits for it


class Model:
    """The block, beat by beat, for one inference (after clear)."""

    def __init__(self, lo, hi, region_beats, decision, speculate):
        self.lo, self.hi, self.region_beats = lo, hi, region_beats
        self.decision, self.speculate = decision, speculate
        self.out = [[] for _ in lo]
        self.mode, self.idx = "idle", 0
        self.fwd = self.drop = self.n = self.flushes = 0
        self.filled = self.len_error = self.decided = False
        self.spec = None        # tag of the region started before the decision (until it comes)

    def may_guess(self) -> bool:
        """Before the decision only a speculative region moves: a first beat, or the rest of it."""
        return self.speculate and not self.filled and (self.mode == "idle" or self.spec is not None)

    def decide(self):
        self.decided = True
        if self.spec is not None and self.spec != self.decision:   # wrong guess: flush, undo, drain
            self.flushes += 1
            self.out = [[] for _ in self.lo]
            self.drop, self.fwd = self.drop + self.fwd, 0
            self.filled = self.len_error = False
            if self.mode == "fwd":
                self.mode = "drop"
        self.spec = None

    def beat(self, tag, w, last) -> bool:
        """The next beat of the stream; False: held (until clear; the decision is taken)."""
        if self.filled:
            return False
        self.n += 1
        if self.mode == "fwd" or not self.decided or tag == self.decision:
            # inside a region, a guess, or a (re-tagged) transfer's first beat
            i = self.idx if self.mode == "fwd" else 0
            if not self.decided and self.mode == "idle":
                self.spec = tag
            self.fwd += 1
            for k in range(len(self.lo)):
                if self.lo[k] <= i < self.hi[k]:
                    self.out[k].append(w)
            if last or i == self.region_beats - 1:
                self.filled = True
                self.len_error |= last != (i == self.region_beats - 1)
                self.mode = "idle"
            else:
                self.mode, self.idx = "fwd", i + 1
        else:
            self.drop += 1
            self.mode = "idle" if last else "drop"
        return True


def reference(lo, hi, region_beats, decision, transfers, speculate=False, decide_at=0):
    """The block's model for one inference: clear, then ``transfers`` ``(tag, words, tlast)`` in the
    order the host's DMA sends them (``tlast`` False: the host aborted it after ``words``, no TLAST;
    the tag is constant during a transfer). The decision becomes valid once ``decide_at`` beats of
    the inference were taken, or earlier where the stream waits for it (at once without
    ``speculate``; with it, once the speculative region is complete or the transfers are over).

    Returns ``out`` (each fetcher's words since the last flush), ``consumed`` (beats taken of each
    transfer; the rest is held until clear), ``fwd_beats``, ``drop_beats``, ``filled``,
    ``len_error``, ``flushes`` (1: a wrong guess was undone), ``decide_at`` (beats taken before the
    decision) and ``held`` (the stream waits for the decision: it may come any later).
    """
    m = Model(lo, hi, region_beats, decision, speculate)
    held = True
    consumed = []
    for tag, words, tlast in transfers:
        taken = 0
        for j, w in enumerate(words):
            if not m.decided and (m.n >= decide_at or not m.may_guess()):
                held = not m.may_guess()
                decide_n = m.n
                m.decide()
            if not m.beat(tag, w, tlast and j == len(words) - 1):
                break
            taken += 1
        consumed.append(taken)
    if not m.decided:
        decide_n = m.n
        m.decide()
    return dict(out=m.out, consumed=consumed, fwd_beats=m.fwd, drop_beats=m.drop, filled=m.filled,
                len_error=m.len_error, flushes=m.flushes, decide_at=decide_n, held=held)


class Harness:
    """Drives s_axis (random tvalid, TLAST), the fetchers' m_tready (random, per fetcher) and the
    decision (after a planned number of beats); the monitor checks the demux and flush rules every
    cycle and collects each fetcher's words since the last flush."""

    def __init__(self, dut, seed: int, flush_cycles: int):
        self.dut = dut
        self.n = len(dut.m_tvalid)
        self.flush_cycles = flush_cycles
        self.rng = random.Random(seed)
        self.p_valid = 1.0
        self.p_ready = [1.0] * self.n
        self.got: list[list[int]] = [[] for _ in range(self.n)]
        self.taken = 0          # s_axis beats consumed
        self.hold = False       # while set, no beat may be offered or consumed
        self.abort = False      # the host stops the running transfer (no TLAST)
        self.cycle = 0
        self._new_inference()
        dut.s_axis_tvalid.value = 0
        dut.s_axis_tlast.value = 0
        dut.m_tready.value = 0
        dut.clear.value = 0
        dut.decision_valid.value = 0
        dut.decision.value = 0
        dut.speculate.value = 0
        dut.tag.value = 0

    def _new_inference(self):
        self.got = [[] for _ in range(self.n)]
        self.taken_inf = 0      # beats consumed in this inference
        self.plan = None        # [decision, after this many beats, then this many held cycles]
        self.decided_at = None  # cycle of the first decision_valid
        self.pulses: list[list[int]] = []   # flush pulses: [first cycle, length]
        self.prev_flush = False

    def plan_decision(self, decision: int, beats: int, delay: int = 0):
        """decision_valid from the cycle after the ``beats``-th beat of the inference was taken, or
        ``delay`` cycles later (the stream must be held meanwhile: checked)."""
        self.plan = [decision, beats, delay]

    async def fetchers(self):
        dut = self.dut
        while True:
            await RisingEdge(dut.ap_clk)
            self.cycle += 1
            r = sum(1 << k for k in range(self.n) if self.rng.random() < self.p_ready[k])
            dut.m_tready.value = r
            waiting = False
            if self.plan and self.decided_at is None and self.taken_inf >= self.plan[1]:
                if self.plan[2] > 0:
                    self.plan[2] -= 1
                    waiting = True
                else:
                    dut.decision.value = self.plan[0]
                    dut.decision_valid.value = 1
                    self.decided_at = self.cycle
            await ReadOnly()
            v = dut.m_tvalid.value.to_unsigned()
            s_fire = dut.s_axis_tvalid.value == 1 and dut.s_axis_tready.value == 1
            fl = dut.flush.value == 1
            assert v & (v - 1) == 0, f"one beat offered to several fetchers: m_tvalid={v:b}"
            assert not v or dut.s_axis_tvalid.value == 1, "m_tvalid without s_axis_tvalid"
            if self.hold or waiting:
                assert v == 0 and not s_fire, "a beat moved while the stream should be held"
            if fl:
                assert v == 0 and not s_fire, "a beat moved while flush is high"
                if not self.prev_flush:     # the fetchers are reset: their words so far are gone
                    self.pulses.append([self.cycle, 0])
                    self.got = [[] for _ in range(self.n)]
                self.pulses[-1][1] += 1
            self.prev_flush = fl
            if v:   # a fetcher's beat is taken exactly when that fetcher takes it
                assert s_fire == bool(v & r), "s_axis_tready differs from the addressed fetcher's m_tready"
            if v & r:
                self.got[(v & r).bit_length() - 1].append(dut.m_tdata.value.to_unsigned())
            self.taken += s_fire
            self.taken_inf += s_fire

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

    async def clear(self, speculate: bool = False):
        """New inference: one-cycle clear; the decision is withdrawn; ``speculate`` for this one."""
        await RisingEdge(self.dut.ap_clk)
        self.dut.clear.value = 1
        self.dut.decision_valid.value = 0
        self.dut.speculate.value = int(speculate)
        await RisingEdge(self.dut.ap_clk)
        self.dut.clear.value = 0
        self._new_inference()

    async def expect_held(self, cycles: int = 25):
        """Nothing moves for ``cycles`` (the source keeps offering its beat)."""
        self.hold = True
        await ClockCycles(self.dut.ap_clk, cycles)
        self.hold = False

    async def transfer(self, tag: int, words, tlast: bool, consumed: int, held_then_abort: bool = True):
        """Tag and send one transfer. If the model takes only ``consumed`` of its words, check the
        rest is held, then abort it (or, ``held_then_abort=False``, return its still-running task)."""
        self.dut.tag.value = tag
        start = self.taken
        self.abort = False
        task = cocotb.start_soon(self.send(words, tlast))
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
        dut = self.dut
        for _ in range(2000):
            if self.decided_at is not None:
                break
            await RisingEdge(dut.ap_clk)
        assert self.decided_at is not None, f"{what}: the model's {exp['decide_at']} beats before the " \
            f"decision never moved ({self.taken_inf} did)"
        await ClockCycles(dut.ap_clk, self.flush_cycles + 3)
        await ReadOnly()
        for k in range(self.n):
            assert self.got[k] == exp["out"][k], f"{what}: fetcher {k} got {len(self.got[k])} words " \
                f"{[hex(w) for w in self.got[k]]}, model {[hex(w) for w in exp['out'][k]]}"
        got = dict(fwd_beats=dut.fwd_beats.value.to_unsigned(), drop_beats=dut.drop_beats.value.to_unsigned(),
                   filled=bool(dut.filled.value), len_error=bool(dut.len_error.value))
        want = {k: exp[k] for k in got}
        assert got == want, f"{what}: status {got}, model {want}"
        # a wrong guess: one flush of FLUSH_CYCLES, from the cycle after the decision came
        want_pulses = [[self.decided_at + 1, self.flush_cycles]] * exp["flushes"]
        assert self.pulses == want_pulses, f"{what}: flush pulses [first cycle, length] {self.pulses}, " \
            f"model {want_pulses} (decision in cycle {self.decided_at})"
        await RisingEdge(dut.ap_clk)

    async def inference(self, decision, transfers, what, speculate=False, decide_at=0, delay=0, running=False):
        """clear, the transfers with the decision after ``decide_at`` of their beats (``delay``
        cycles later where the model's stream waits for it); then compare with the model.
        ``running``: leave the last transfer held and running (its task is returned)."""
        cfg = tb_config()
        exp = reference(cfg["lo"], cfg["hi"], cfg["region_beats"], decision, transfers, speculate, decide_at)
        await self.clear(speculate)
        self.plan_decision(decision, exp["decide_at"], delay if exp["held"] else 0)
        task = None
        for n, ((tag, words, tlast), c) in enumerate(zip(transfers, exp["consumed"])):
            task = await self.transfer(tag, words, tlast, c, held_then_abort=not (running and n == len(transfers) - 1))
        await self.check(exp, what)
        return (exp, task) if running else exp


async def _setup(dut):
    cfg = tb_config()
    start_clock(dut)
    h = Harness(dut, cfg.get("seed", 0), cfg.get("flush_cycles", 4))
    await reset(dut)
    cocotb.start_soon(h.fetchers())
    return h, cfg


def _words(rng, n, width):
    return [rng.getrandbits(width) for _ in range(n)]


BACK_PRESSURE = [(1.0, 1.0), (0.6, 0.5), (0.3, 0.9), (0.9, 0.2)]


@cocotb.test()
async def scenarios(dut):
    """The block without speculation (speculate = 0): the decision is awaited."""
    h, cfg = await _setup(dut)
    rng = random.Random(cfg.get("seed", 0) + 1)
    r, w = cfg["region_beats"], len(dut.s_axis_tdata)
    region = lambda: _words(rng, r, w)  # noqa: E731
    for pv, pr in BACK_PRESSURE:
        h.p_valid, h.p_ready = pv, [pr * rng.uniform(0.5, 1.0) for _ in range(h.n)]
        tag = f" (p_valid {pv}, p_ready {pr})"
        # (1) matching transfer: padding beats (gaps between ranges, before and after) reach nobody
        exp = await h.inference(3, [(3, region(), True)], "matching" + tag)
        assert exp["filled"] and not exp["len_error"]
        # (2) the DMA starts before the decision: held, not a beat consumed, until decision_valid
        await h.inference(5, [(5, region(), True)], "decision late" + tag, delay=30)
        # a prefetch of the wrong branch, started before the decision, is dropped once decided
        await h.inference(6, [(1, region(), True), (6, region(), True)], "wrong prefetch" + tag, delay=20)
        # the same with speculate = 1 but the decision first: no guess, the same result
        await h.inference(6, [(1, region(), True), (6, region(), True)], "decided, speculate" + tag, speculate=True)
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
        await held_after_filled(h, cfg, region(), region(), False, tag)
        # (6) wrong lengths: TLAST early, TLAST late (the rest held), no TLAST at all
        if r > 1:
            exp = await h.inference(2, [(2, region()[:r - 1], True)], "short" + tag)
            assert exp["filled"] and exp["len_error"]
        exp = await h.inference(2, [(2, region() + _words(rng, 2, w), True)], "long" + tag)
        assert exp["filled"] and exp["len_error"] and exp["consumed"] == [r]
        exp = await h.inference(2, [(2, region(), False)], "no TLAST" + tag)
        assert exp["filled"] and exp["len_error"]


async def held_after_filled(h, cfg, first, second, speculate, tag):
    """A region delivered, a second transfer (same tag) held until clear, then taken by the next
    inference (with speculation: at once, before that inference's decision)."""
    r = cfg["region_beats"]
    exp, waiting = await h.inference(0, [(0, first, True), (0, second, True)], "held after filled" + tag,
                                     speculate=speculate, decide_at=NEVER, running=True)
    assert exp["consumed"] == [r, 0]
    await h.clear(speculate)
    exp = reference(cfg["lo"], cfg["hi"], r, 0, [(0, second, True)], speculate, NEVER)
    h.plan_decision(0, exp["decide_at"], 10)    # cleared, no decision yet: held (without speculation)
    await waiting
    await h.check(exp, "taken after clear" + tag)
    assert exp["decide_at"] == (r if speculate else 0)


@cocotb.test()
async def speculation(dut):
    """speculate = 1, transfers started before the decision: right and wrong guesses, delivered or
    in flight when the decision comes; the fetchers flushed after a wrong one."""
    h, cfg = await _setup(dut)
    rng = random.Random(cfg.get("seed", 0) + 3)
    r, w = cfg["region_beats"], len(dut.s_axis_tdata)
    region = lambda: _words(rng, r, w)  # noqa: E731
    mid = max(1, r // 2)
    for pv, pr in BACK_PRESSURE:
        h.p_valid, h.p_ready = pv, [pr * rng.uniform(0.5, 1.0) for _ in range(h.n)]
        tag = f" (p_valid {pv}, p_ready {pr})"
        # right guess, the whole region delivered before the decision: no flush, forwarded as usual
        exp = await h.inference(3, [(3, region(), True)], "right, delivered" + tag, True, NEVER, delay=20)
        assert exp["decide_at"] == r and exp["fwd_beats"] == r and exp["filled"] and not exp["flushes"]
        # right guess still in flight at the decision: it continues
        exp = await h.inference(3, [(3, region(), True)], "right, in flight" + tag, True, mid)
        assert exp["decide_at"] == mid and exp["fwd_beats"] == r and not exp["flushes"]
        # right guess over-long (no TLAST at its end): len_error kept, the rest held until clear
        exp = await h.inference(3, [(3, region() + region()[:2], True)], "right, long" + tag, True, NEVER, 5)
        assert exp["len_error"] and exp["consumed"] == [r] and not exp["flushes"]
        # wrong guess delivered before the decision: flush, its beats move to drop_beats; then the
        # tagged right transfer is forwarded from beat 0
        exp = await h.inference(6, [(1, region(), True), (6, region(), True)], "wrong, delivered" + tag,
                                True, NEVER, delay=10)
        assert exp["flushes"] == 1 and exp["fwd_beats"] == r and exp["drop_beats"] == r and exp["filled"]
        # wrong guess in flight at the decision: the rest is drained to TLAST
        exp = await h.inference(6, [(1, region(), True), (6, region(), True)], "wrong, in flight" + tag,
                                True, mid)
        assert exp["flushes"] == 1 and exp["decide_at"] == mid and exp["drop_beats"] == r
        # ... or the host aborts it (no TLAST) and re-tags: the right transfer is forwarded from beat 0
        if r > 1:
            for d in (max(1, mid - 1), r - 1):      # a few more beats after the decision, or none
                exp = await h.inference(6, [(1, region()[:r - 1], False), (6, region(), True)],
                                        f"wrong, aborted at {d}" + tag, True, d)
                assert exp["flushes"] == 1 and exp["drop_beats"] == r - 1 and exp["fwd_beats"] == r
            # a wrong guess ended early by TLAST (len_error), or too long: len_error not kept
            exp = await h.inference(6, [(1, region()[:r - 1], True), (6, region(), True)], "wrong, short" + tag,
                                    True, NEVER, 3)
            assert exp["flushes"] == 1 and not exp["len_error"]
        exp = await h.inference(6, [(1, region() + region()[:2], True), (6, region(), True)],
                                "wrong, long" + tag, True, NEVER, 3)
        assert exp["flushes"] == 1 and not exp["len_error"] and exp["drop_beats"] == r + 2
        # the host aborts its guess and re-tags BEFORE the decision: the block cannot see the abort,
        # the next beats continue the guessed region (still the first tag's): flushed when decided
        if r > 2:
            exp = await h.inference(6, [(1, region()[:2], False), (6, region(), True)], "re-tag early" + tag,
                                    True, NEVER, 3)
            assert exp["flushes"] == 1 and exp["consumed"] == [2, r] and exp["len_error"]
        # a wrong guess, and no right transfer yet (the check sees the flush and the counters)
        exp = await h.inference(6, [(1, region(), True)], "wrong only" + tag, True, NEVER)
        assert exp["flushes"] == 1 and exp["fwd_beats"] == 0 and not exp["filled"]
        # held after filled, with speculation: the next inference takes the waiting transfer at once
        await held_after_filled(h, cfg, region(), region(), True, tag)
    # clear in the middle of a flush ends it; the next inference is unaffected
    h.p_valid, h.p_ready = 1.0, [1.0] * h.n
    await h.clear(True)
    h.plan_decision(6, r)
    await h.transfer(1, region(), True, r)
    while not h.pulses:
        await RisingEdge(dut.ap_clk)
    await h.clear(True)
    await ReadOnly()
    assert dut.flush.value == 0, "flush still high after clear"
    await RisingEdge(dut.ap_clk)
    await h.inference(3, [(3, region(), True)], "after a flush cut by clear", True, mid)


@cocotb.test()
async def random_inferences(dut):
    """Random mixes: wrong-branch transfers (whole or aborted), then the right one (sometimes of a
    wrong length), with and without speculation, the decision after a random number of beats, random
    back-pressure; every inference against the model."""
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
        speculate = rng.random() < 0.6
        decide_at = rng.choice([0, rng.randrange(1, 2 * r + 2), NEVER])
        await h.inference(decision, transfers, f"random inference {n} (speculate {speculate}, decide_at "
                          f"{decide_at})", speculate, decide_at, delay=rng.choice([0, 0, 7]))
