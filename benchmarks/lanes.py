"""Lanes one service process sustains at 5 Hz per lane before it falls behind.

A generator process publishes, for every lane, what an RPM driver would: a gamma sample every
0.2 s during 10 s occupancies (neutron every 1 s, speed once, GX at the end) and background
readings in the 3 s gaps, with lanes out of phase. ``lanewatch run`` decides; a subscriber here
measures each decision's latency from its GX stamp. A lane count is sustained when every
occupancy was decided, no record was missed, and decision latency p99 stayed under 1 s (the
operator's budget); it falls behind otherwise.

Baseline measured in the same run: the ingest ceiling, i.e. the lanes' worth of records per
second that a bare loop (receive + decode only, no lanes, no kernels, no journal) keeps up with.

    python -m benchmarks.lanes [--lanes 50,100,200,400] [--seconds 30]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
import urllib.request

import numpy as np
import zmq
from prometheus_client import CollectorRegistry

from benchmarks.harness import Deployment, percentiles
from lanewatch.edge.bus import ingest
from lanewatch.edge.bus.driver import RecordPublisher
from lanewatch.edge.bus.records import Kind, decode
from lanewatch.edge.decisions.decision import Decision
from lanewatch.edge.decisions.subscriber import AlertSubscriber
from lanewatch.edge.ops.metrics import DriverMetrics

RATE_HZ = 5.0
OCCUPIED_S = 10.0
IDLE_S = 3.0
BUDGET_S = 1.0


def generate(endpoint: str, lanes: int, seconds: float, lag_out: mp.Queue) -> None:
    """Publish ``lanes`` lanes of portal records in real time for ``seconds``; report the worst lag (s)."""
    ctx = zmq.Context()
    sock = ingest.driver_publisher(ctx, endpoint)
    ingest.wait_for_subscriber(sock, 10.0)
    metrics = DriverMetrics(CollectorRegistry())
    pubs = [RecordPublisher(sock, f"lane{i + 1}", "rpm", metrics) for i in range(lanes)]
    rng = np.random.default_rng(3)
    period = OCCUPIED_S + IDLE_S
    phase = rng.uniform(0, period, lanes)
    ticks_per_cycle = int(period * RATE_HZ)
    occupied_ticks = int(OCCUPIED_S * RATE_HZ)
    start = time.monotonic()
    worst = 0.0
    tick = 0
    while tick / RATE_HZ < seconds:
        due = start + tick / RATE_HZ
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        else:
            worst = max(worst, now - due)
        for i, pub in enumerate(pubs):
            k = (tick + int(phase[i] * RATE_HZ)) % ticks_per_cycle
            if k < occupied_ticks:
                pub.emit(Kind.GAMMA_SCAN, dt_s=0.2, counts=rng.poisson(48, (4, 1)).astype(np.uint32))
                if k % 5 == 4:
                    pub.emit(Kind.NEUTRON_SCAN, dt_s=1.0, counts=rng.poisson(3, (4, 1)).astype(np.uint32))
                if k == 3:
                    pub.emit(Kind.SPEED, values={"speed_kmh": 6.0})
                if k == occupied_ticks - 1:
                    pub.emit(Kind.OCCUPANCY_END, values={"device_occupancy": tick})
            elif k % 5 == 0:
                pub.emit(Kind.GAMMA_BACKGROUND, counts=rng.poisson(240, (4, 1)).astype(np.uint32))
                pub.emit(Kind.NEUTRON_BACKGROUND, counts=rng.poisson(3, (4, 1)).astype(np.uint32))
        tick += 1
    lag_out.put(worst)
    sock.close(linger=5000)
    ctx.term()


def run_lanes(lanes: int, seconds: float) -> dict:
    dep = Deployment(lanes)
    try:
        dep.start_service()
        ctx = zmq.Context()
        sub = AlertSubscriber(ctx, dep.config.bus.alerts, dep.config.bus.query, since=None)
        stream = sub.decisions(follow=True, timeout_s=0.2)
        lag: mp.Queue = mp.Queue()
        gen = mp.Process(target=generate, args=(dep.config.bus.ingest, lanes, seconds, lag))
        gen.start()
        latencies: list[float] = []
        deadline = time.monotonic() + seconds + 30
        drain_until = None
        while drain_until is None or time.monotonic() < drain_until:
            d = next(stream)
            if isinstance(d, Decision):
                latencies.append((time.time_ns() - d.end_ns) / 1e9)
            if drain_until is None and (not gen.is_alive() or time.monotonic() > deadline):
                drain_until = time.monotonic() + 3.0  # what is still in flight
        gen.join()
        sub.close()
        ctx.term()
        text = urllib.request.urlopen(f"http://{dep.config.service.http}/metrics", timeout=5).read().decode()
        missed = sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("lanewatch_bus_records_missed_total{")
        )
        expected_min = int(lanes * (seconds // (OCCUPIED_S + IDLE_S)))
        stats = (
            percentiles(latencies)
            if latencies
            else {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
        )
        gen_lag = lag.get(timeout=5)
        ok = stats["n"] >= expected_min and missed == 0 and stats["p99_ms"] <= BUDGET_S * 1e3
        return {
            "lanes": lanes,
            "decisions": stats["n"],
            "expected_min": expected_min,
            "missed": missed,
            "p50_ms": stats["p50_ms"],
            "p99_ms": stats["p99_ms"],
            "generator_lag_s": gen_lag,
            "sustained": ok,
        }
    finally:
        dep.close()


def ingest_ceiling(seconds: float = 5.0) -> float:
    """Records per second a bare SUB + decode loop keeps up with (a generator pushing flat out)."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sock = ingest.driver_publisher(ctx, f"tcp://127.0.0.1:{port}")
    while not ingest.wait_for_subscriber(sock, 0.05):
        sub.poll(10)  # a bound SUB sends its subscription to a new peer only when it is used
    pub = RecordPublisher(sock, "lane1", "rpm", DriverMetrics(CollectorRegistry()))
    counts = np.full((4, 1), 48, np.uint32)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(100):
            pub.emit(Kind.GAMMA_SCAN, dt_s=0.2, counts=counts)
            decode(sub.recv_multipart())
            n += 1
    rate = n / (time.perf_counter() - t0)
    sub.close(0)
    sock.close(0)
    ctx.term()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lanes", default="50,100,200,400", help="lane counts to try, ascending")
    parser.add_argument("--seconds", type=float, default=30.0, help="run length per lane count (s)")
    args = parser.parse_args()
    records_per_lane_s = RATE_HZ * OCCUPIED_S / (OCCUPIED_S + IDLE_S) * 1.25
    best = 0
    print(f"lanes sustained at {RATE_HZ:g} Hz per lane by one service process ({args.seconds:g} s per step)")
    for lanes in [int(v) for v in args.lanes.split(",")]:
        r = run_lanes(lanes, args.seconds)
        print(
            f"  {lanes:4d} lanes: {r['decisions']:5d} decisions (>= {r['expected_min']}), missed records "
            f"{r['missed']:.0f}, latency p50 {r['p50_ms']:7.2f} ms p99 {r['p99_ms']:8.2f} ms, generator lag "
            f"{r['generator_lag_s'] * 1e3:6.1f} ms -> {'sustained' if r['sustained'] else 'FALLS BEHIND'}"
        )
        if not r["sustained"]:
            break
        best = lanes
    ceiling = ingest_ceiling()
    ceiling_lanes = ceiling / records_per_lane_s
    print(f"  sustained: {best} lanes (target >= 200)")
    print(
        f"  baseline, bare receive+decode loop: {ceiling:,.0f} records/s = {ceiling_lanes:,.0f} lanes; "
        f"lanewatch sustains {best / ceiling_lanes:.2f}x of that ceiling"
    )


if __name__ == "__main__":
    main()
