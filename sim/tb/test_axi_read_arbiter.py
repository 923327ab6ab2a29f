"""cocotb test of hls/rtl/axi_read_arbiter.sv: N read masters onto one AXI4 read port.

The memory on the port is sim/tb/axi_ram.py's model (optionally a narrow port with first-word
latency). Each master reads its own list of INCR bursts (its AR held until taken, AXI's rule) and
takes R beats with its own random ready probability. Reference model (``reference``): every master
receives exactly its bursts' bytes, in its order, ``rlast`` on each burst's last beat and its own
``arid`` on ``rid``; whatever the other masters do. Buffered (``BUF_BEATS`` > 0) the port's
``rready`` is high whenever a burst is outstanding (the port never waits on a slow reader), at
most ``OUTSTANDING`` bursts are in flight and no master ever has more beats granted than its FIFO
holds; unbuffered, one burst at a time. With ``PRIORITY`` = 1 (buffered) every grant goes to the
lowest-numbered master that could take one (its request shown, its FIFO room, no request of its
own waiting in the arbiter's AR register).
"""
from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from sim.tb.axi_ram import AxiReadRam
from sim.tb.axis import Pin, reset, start_clock
from sim.verilator import tb_config

BEAT = 32   # DATA_W 256


def reference(image: bytes, bursts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """One master's expected R beats: (data, rlast) for its (address, beats) bursts."""
    out = []
    for addr, n in bursts:
        for b in range(n):
            a = addr + b * BEAT
            out.append((int.from_bytes(image[a:a + BEAT], "little"), int(b == n - 1)))
    return out


def _field(v: int, i: int, w: int) -> int:
    return (v >> (i * w)) & ((1 << w) - 1)


async def _run(dut, seed: int, p_ready: list[float], n_bursts: int, port_bytes: float | None = None,
               latency: int = 0, p_arvalid: float = 0.7):
    n = len(dut.s_arvalid)
    buf, outstanding = int(dut.BUF_BEATS.value), int(dut.OUTSTANDING.value)
    priority = bool(int(dut.PRIORITY.value)) and buf > 0
    rng = random.Random(seed)
    image = bytes(rng.getrandbits(8) for _ in range(64 * 1024))
    # each master: INCR bursts of 1-16 beats (fetch_weights issues up to 16), a fixed arid
    work = [[(rng.randrange(0, len(image) // BEAT - 16) * BEAT, rng.randint(1, 16)) for _ in range(n_bursts)]
            for _ in range(n)]
    ids = [rng.randrange(4) for _ in range(n)]
    ram = AxiReadRam(dut, "m", image, 0, 1.0 if port_bytes else 0.8, 1.0 if port_bytes else 0.9, seed + 1,
                     port_bytes=port_bytes, first_word_cycles=latency, period_ns=10.0)
    await reset(dut)
    mem_task = cocotb.start_soon(ram.run())
    pins = {s: Pin(getattr(dut, f"s_{s}"), 0) for s in ("araddr", "arlen", "arsize", "arburst", "arid", "arvalid",
                                                         "rready")}
    nxt = [0] * n                   # next burst to request per master
    got: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    ids_seen: list[set[int]] = [set() for _ in range(n)]
    expected = [reference(image, w) for w in work]
    total = sum(len(e) for e in expected)
    cycles = stalls = max_out = 0
    ar = [None] * n                 # the request a master shows (held until taken)
    granted = [0] * n               # beats granted and not yet taken, per master (buffered check)
    in_flight = 0
    ar_reg = None                   # the master whose granted request waits in the AR register
    while sum(len(g) for g in got) < total:
        await RisingEdge(dut.ap_clk)
        cycles += 1
        assert cycles < 200 * total + 1000, "the arbiter stopped moving beats"
        for i in range(n):
            if ar[i] is None and nxt[i] < n_bursts and rng.random() < p_arvalid:
                ar[i] = work[i][nxt[i]]
        addr = sum(a << (64 * i) for i, (a, _) in enumerate(r if r else (0, 1) for r in ar))
        pins["araddr"].set(addr)
        pins["arlen"].set(sum((r[1] - 1) << (8 * i) for i, r in enumerate(ar) if r))
        pins["arsize"].set(sum(5 << (3 * i) for i in range(n)))
        pins["arburst"].set(sum(1 << (2 * i) for i in range(n)))
        pins["arid"].set(sum(ids[i] << (2 * i) for i in range(n)))
        pins["arvalid"].set(sum(1 << i for i in range(n) if ar[i]))
        pins["rready"].set(sum(1 << i for i in range(n) if rng.random() < p_ready[i]))
        await ReadOnly()
        arready, rvalid = int(dut.s_arready.value), int(dut.s_rvalid.value)
        rready = int(dut.s_rready.value)
        rdata, rlast, rid = int(dut.s_rdata.value), int(dut.s_rlast.value), int(dut.s_rid.value)
        if int(dut.m_arvalid.value) and int(dut.m_arready.value):
            in_flight += 1
        if int(dut.m_rvalid.value) and int(dut.m_rready.value) and int(dut.m_rlast.value):
            in_flight -= 1
        max_out = max(max_out, in_flight)
        if priority and arready:
            j = (arready & -arready).bit_length() - 1
            could = [i for i in range(n) if ar[i] and ar_reg != i and granted[i] + ar[i][1] <= buf]
            assert could and j == could[0], f"granted master {j}, the first that could take one is {could}"
        if int(dut.m_arvalid.value) and int(dut.m_arready.value):
            ar_reg = None
        if arready:
            ar_reg = (arready & -arready).bit_length() - 1
        if buf and in_flight > 0 and int(dut.m_rvalid.value) and not int(dut.m_rready.value):
            stalls += 1
        for i in range(n):
            if (arready >> i) & 1:
                assert ar[i] is not None, f"master {i}: arready without arvalid"
                granted[i] += ar[i][1]
                ar[i], nxt[i] = None, nxt[i] + 1
            if (rvalid >> i) & 1 and (rready >> i) & 1:
                got[i].append((_field(rdata, i, 256), (rlast >> i) & 1))
                ids_seen[i].add(_field(rid, i, 2))
                granted[i] -= 1
            if buf:
                assert granted[i] <= buf, f"master {i}: {granted[i]} beats granted, its FIFO holds {buf}"
    for i in range(n):
        assert len(got[i]) == len(expected[i]), f"master {i}: {len(got[i])} beats, expected {len(expected[i])}"
        bad = next((k for k, (g, e) in enumerate(zip(got[i], expected[i])) if g != e), None)
        assert bad is None, f"master {i}: beat {bad} differs (data or rlast)"
        assert ids_seen[i] <= {ids[i]}, f"master {i}: rid {ids_seen[i]}, its arid is {ids[i]}"
    assert not ram.errors, ram.errors
    if buf:
        assert stalls == 0, f"the port waited {stalls} cycles on a reader"
        assert max_out <= outstanding, f"{max_out} bursts in flight, OUTSTANDING = {outstanding}"
    else:
        assert max_out <= 1, "the unbuffered arbiter had two bursts in flight"
    for _ in range(20):              # nothing more comes
        await RisingEdge(dut.ap_clk)
        await ReadOnly()
        assert int(dut.s_rvalid.value) == 0 and int(dut.m_arvalid.value) == 0, "a beat or burst after the last"
    assert ram.bytes == total * BEAT, f"the port served {ram.bytes} bytes, the masters asked {total * BEAT}"
    mem_task.cancel()
    await RisingEdge(dut.ap_clk)     # out of the read-only phase: the next run drives the pins
    return cycles, total


@cocotb.test()
async def random_masters(dut):
    """Random request and ready patterns, random memory stalls."""
    cfg = tb_config()
    start_clock(dut)
    n = len(dut.s_arvalid)
    for k in range(3):
        rng = random.Random(cfg.get("seed", 0) + k)
        await _run(dut, cfg.get("seed", 0) + 100 * k, [rng.uniform(0.1, 1.0) for _ in range(n)],
                   cfg.get("bursts", 12))


@cocotb.test()
async def slow_readers_narrow_port(dut):
    """Readers slower than the port (a fetcher's buffer fill), an 8-byte port with latency 15."""
    cfg = tb_config()
    start_clock(dut)
    n = len(dut.s_arvalid)
    cycles, beats = await _run(dut, cfg.get("seed", 0) + 7, [0.3] * n, cfg.get("bursts", 12),
                               port_bytes=8, latency=15, p_arvalid=1.0)
    dut._log.info(f"{beats} beats in {cycles} cycles ({beats * BEAT / cycles:.2f} B/cycle; port 8 B/cycle)")
