"""Decision latency: from the GX line arriving at the RPM driver to the decision journaled and
received by a subscriber, over real processes and sockets.

A TCP server here plays the portal (RPM line protocol), ``lanewatch driver rpm`` reads it,
``lanewatch run`` decides, and an :class:`~lanewatch.edge.decisions.subscriber.AlertSubscriber` here receives. The
latency of a decision is its receipt time minus ``end_ns``, the driver's arrival stamp of GX.
Occupancies are sent one after another, each when the previous decision has arrived.

Baseline measured in the same run: the floor of the same path without lanewatch's work, i.e.
one ZeroMQ hop of a decision-sized message on loopback plus one SQLite commit with fsync of it;
the machine's load average is printed beside both, since on a shared machine it moves them all.

Then the same number of occupancies again while another process floods the journal query
endpoint (``--flood`` requests a second of ``since 0, limit 1000`` from ``--flood-peers`` peers):
the decision latency during the flood against the latency without it (target p99 within 2x).

``--profile`` instead runs the service in this process, hands it the same records directly
(no sockets) and prints where the GX -> decision time goes, by stage (cProfile, cumulative).

    python -m benchmarks.latency [--occupancies 1000] [--flood 1000] [--flood-peers 10]
    python -m benchmarks.latency --profile [--occupancies 300]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import multiprocessing
import os
import pstats
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np
import zmq

from benchmarks.harness import Deployment, percentiles
from lanewatch.edge.decisions.subscriber import AlertSubscriber

SAMPLES = 25
"""Gamma samples per occupancy (5 s at 0.2 s)."""


def occupancy_lines(rng: np.random.Generator) -> bytes:
    lines = []
    for i in range(SAMPLES):
        c = rng.poisson(48, 4)
        lines.append("GS," + ",".join(f"{v:06d}" for v in c))
        if i % 5 == 4:
            lines.append("NS," + ",".join(f"{v:06d}" for v in rng.poisson(3, 4)))
        if i == 5:
            lines.append("SP,0.2249,03.032,004.88,000000")
    lines.append("GX,000000,003000,000000,000000")
    return ("\r\n".join(lines) + "\r\n").encode() + background_lines(rng)


def background_lines(rng: np.random.Generator) -> bytes:
    """One gamma and one neutron background reading (cps per channel), as an idle portal sends."""
    gb = "GB," + ",".join(f"{v:06d}" for v in rng.poisson(240, 4))
    nb = "NB," + ",".join(f"{v:06d}" for v in rng.poisson(3, 4))
    return f"{gb}\r\n{nb}\r\n".encode()


def floor(samples: int, body_bytes: int) -> list[float]:
    """One ZeroMQ PUB->SUB hop plus one fsync'd SQLite commit, per message (s)."""
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    time.sleep(0.3)
    body = b"x" * body_bytes
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "floor.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB)")
        out = []
        for _ in range(samples):
            t0 = time.perf_counter()
            db.execute("BEGIN")
            db.execute("INSERT INTO t (body) VALUES (?)", (body,))
            db.execute("COMMIT")
            pub.send(body)
            sub.recv()
            out.append(time.perf_counter() - t0)
        db.close()
    pub.close(0)
    sub.close(0)
    ctx.term()
    return out


def load() -> str:
    """The machine's 1-minute load average and core count, printed beside every figure."""
    return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def flood(endpoint: str, rps: float, peers: int, stop: Event, counts: multiprocessing.Queue) -> None:
    """In its own process: ``rps`` requests a second of ``since 0, limit 1000`` spread over ``peers`` DEALER
    sockets, never waiting for answers; puts (sent, answered, rate limited) on ``counts`` when ``stop`` is set."""
    ctx = zmq.Context()
    socks = [ctx.socket(zmq.DEALER) for _ in range(peers)]
    poller = zmq.Poller()
    for sock in socks:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        poller.register(sock, zmq.POLLIN)
    request = b'{"op": "since", "seq": 0, "limit": 1000}'
    sent = answered = limited = 0
    start = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - start) * rps)
        while sent < due:
            with contextlib.suppress(zmq.Again):  # a full queue: the request is not sent, as a flood would
                socks[sent % peers].send(request, zmq.NOBLOCK)
            sent += 1
        for sock, _ in poller.poll(1):
            while True:
                try:
                    reply = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                answered += 1
                limited += reply.startswith(b'{"ok":false,"error":"rate limited"')
    counts.put((sent, answered, limited))
    for sock in socks:
        sock.close()
    ctx.term()


def measure(stream: Iterator[dict | None], conn: socket.socket, rng: np.random.Generator, n: int) -> tuple:
    """Latencies (s) and decision sizes (bytes) of ``n`` occupancies sent one after another."""
    latencies: list[float] = []
    sizes: list[int] = []
    for i in range(n):
        conn.sendall(occupancy_lines(rng))
        decision = next(stream)
        if decision is None:
            raise RuntimeError(f"no decision for occupancy {i}")
        latencies.append((time.time_ns() - decision["end_ns"]) / 1e9)
        sizes.append(len(json.dumps(decision)))
    return latencies, sizes


def profile(occupancies: int) -> None:
    """Where the GX -> decision time goes inside the service (module docstring)."""
    from prometheus_client import CollectorRegistry

    from lanewatch.edge.bus.records import Kind, Record
    from lanewatch.edge.config import parse
    from lanewatch.edge.service import Service

    tmp = Path(tempfile.mkdtemp(prefix="lanewatch-profile-"))
    text = f"""
        [service]
        journal = "{tmp / "journal.db"}"
        http = "127.0.0.1:0"
        [bus]
        plaintext = true
        ingest = "tcp://127.0.0.1:*"
        alerts = "tcp://127.0.0.1:*"
        query = "tcp://127.0.0.1:*"
        [[lanes]]
        id = "lane1"
    """
    service = Service(parse(text, str(tmp / "lanewatch.toml")), CollectorRegistry(), http=False)
    service.start()
    rng = np.random.default_rng(1)
    seq = iter(range(1 << 62))

    def send(kind: Kind, **fields: object) -> list[bytes]:
        record = Record(kind, "lane1", "rpm", next(seq), time.time_ns(), time.monotonic_ns(), run_id="p", **fields)
        return [bytes(frame) for frame in record.encode()]

    def background() -> None:
        service.handle_frames(send(Kind.GAMMA_BACKGROUND, dt_s=1.0, counts=rng.poisson(240, (4, 1)).astype("u4")))
        service.handle_frames(send(Kind.NEUTRON_BACKGROUND, dt_s=1.0, counts=rng.poisson(3, (4, 1)).astype("u4")))

    for _ in range(12):
        background()
    profiler = cProfile.Profile()
    gx_s: list[float] = []
    for i in range(occupancies + 20):
        for _ in range(SAMPLES):
            service.handle_frames(send(Kind.GAMMA_SCAN, dt_s=0.2, counts=rng.poisson(48, (4, 1)).astype("u4")))
        gx = send(Kind.OCCUPANCY_END, values={"device_occupancy": i + 1, "neutron_background_cps": 3.0})
        t0 = time.perf_counter()
        if i >= 20:
            profiler.enable()
        service.handle_frames(gx)
        profiler.disable()
        if i >= 20:
            gx_s.append(time.perf_counter() - t0)
        background()
    service.close()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    stages = {
        "occupancy end: detection, fusion, decision record": ("occupancy.py", "_end"),
        "  detection kernels and statistics (finish)": ("detect.py", "finish"),
        "  background calibration": ("occupancy.py", "_calibrate"),
        "anomaly model: features and ONNX inference": ("runtime.py", "review"),
        "journal append (commit with fsync)": ("journal.py", "append"),
        "  of it in SQLite (execute, fsync)": ("~", "<method 'execute' of 'sqlite3.Connection' objects>"),
        "  decision schema check": ("journal.py", "_check"),
        "publish on the alert bus": ("alertbus.py", "publish"),
    }
    total = percentiles(gx_s)
    print(f"GX -> decision inside the service, {total['n']} occupancies, {load()}")
    print(f"  handling the GX record: p50 {total['p50_ms']:.3f} ms  p99 {total['p99_ms']:.3f} ms (profiled)")
    for label, (file, name) in stages.items():
        cum = sum(v[3] for (f, _, n), v in stats.items() if f.endswith(file) and n == name)
        print(f"  {label:52s} {cum / len(gx_s) * 1e3:7.3f} ms per decision ({cum / sum(gx_s):5.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--occupancies", type=int, default=1000)
    parser.add_argument("--flood", type=float, default=1000.0, help="query requests a second (0: no flood phase)")
    parser.add_argument("--flood-peers", type=int, default=10, help="query peers the flood is spread over")
    parser.add_argument("--profile", action="store_true", help="profile the decision path in this process")
    args = parser.parse_args()
    if args.profile:
        profile(args.occupancies)
        return

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    dep = Deployment(1, [f"socket://127.0.0.1:{port}"])
    load_before = load()
    flooded: tuple[list[float], list[int]] | None = None
    counts: tuple[int, int, int] = (0, 0, 0)
    try:
        dep.start_service()
        dep.spawn("driver", "driver", "rpm", "--config", str(dep.config_path), "--lane", "lane1")
        conn, _ = srv.accept()
        ctx = zmq.Context()
        sub = AlertSubscriber(ctx, dep.config.bus.alerts, dep.config.bus.query, since=None)
        stream = sub.decisions(follow=True, timeout_s=30.0)
        rng = np.random.default_rng(1)
        for _ in range(3):
            conn.sendall(background_lines(rng))
        measure(stream, conn, rng, 20)  # the first ones warm caches and connections
        latencies, sizes = measure(stream, conn, rng, args.occupancies)
        if args.flood:
            mp = multiprocessing.get_context("spawn")
            stop, queue = mp.Event(), mp.Queue()
            flooder = mp.Process(target=flood, args=(dep.config.bus.query, args.flood, args.flood_peers, stop, queue))
            flooder.start()
            time.sleep(1.0)  # the flood under way
            flooded = measure(stream, conn, rng, args.occupancies)
            stop.set()
            counts = queue.get(timeout=30)
            flooder.join(30)
        sub.close()
        ctx.term()
        conn.close()
    finally:
        dep.close()
        srv.close()
    measured = percentiles(latencies)
    base = percentiles(floor(len(latencies), int(np.median(sizes))))
    print(f"decision latency, GX at driver -> journaled -> subscriber, {measured['n']} occupancies")
    print(f"  machine: {load_before} at the start, {load()} at the end")
    print(
        f"  lanewatch      p50 {measured['p50_ms']:7.3f} ms   p99 {measured['p99_ms']:7.3f} ms   "
        f"max {measured['max_ms']:7.3f} ms   (target p99 <= 5 ms)"
    )
    print(
        f"  floor (1 bus hop + 1 fsync'd commit of {int(np.median(sizes))} B)  p50 {base['p50_ms']:7.3f} ms   "
        f"p99 {base['p99_ms']:7.3f} ms"
    )
    print(
        f"  ratio to floor p50 {measured['p50_ms'] / base['p50_ms']:.1f}x   p99 "
        f"{measured['p99_ms'] / base['p99_ms']:.1f}x"
    )
    if flooded is not None:
        during = percentiles(flooded[0])
        sent, answered, limited = counts
        print(
            f"  during a query flood ({args.flood:g} req/s 'since 0, limit 1000' from {args.flood_peers} peers: "
            f"{sent} sent, {answered} answered, {limited} of them 'rate limited')"
        )
        print(
            f"  lanewatch      p50 {during['p50_ms']:7.3f} ms   p99 {during['p99_ms']:7.3f} ms   "
            f"max {during['max_ms']:7.3f} ms   p99 ratio flood/alone {during['p99_ms'] / measured['p99_ms']:.2f}x "
            "(target <= 2x)"
        )


if __name__ == "__main__":
    main()
