"""Decision latency: from the GX line arriving at the RPM driver to the decision journaled and
received by a subscriber, over real processes and sockets.

A TCP server here plays the portal (RPM line protocol), ``lanewatch driver rpm`` reads it,
``lanewatch run`` decides, and an :class:`~lanewatch.edge.decisions.subscriber.AlertSubscriber` here receives. The
latency of a decision is its receipt time minus ``end_ns``, the driver's arrival stamp of GX.
Occupancies are sent one after another, each when the previous decision has arrived.

Baseline measured in the same run: the floor of the same path without lanewatch's work, i.e.
one ZeroMQ hop of a decision-sized message on loopback plus one SQLite commit with fsync of it.

    python -m benchmarks.latency [--occupancies 1000]
"""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import tempfile
import time
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--occupancies", type=int, default=1000)
    args = parser.parse_args()

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    dep = Deployment(1, [f"socket://127.0.0.1:{port}"])
    latencies: list[float] = []
    sizes: list[int] = []
    try:
        dep.start_service()
        dep.spawn("driver", "driver", "rpm", "--config", str(dep.config_path), "--lane", "lane1")
        conn, _ = srv.accept()
        ctx = zmq.Context()
        sub = AlertSubscriber(ctx, dep.config.bus.alerts, dep.config.bus.query, since=None)
        stream = sub.decisions(follow=True, timeout_s=5.0)
        rng = np.random.default_rng(1)
        for _ in range(3):
            conn.sendall(background_lines(rng))
        for i in range(args.occupancies + 20):
            conn.sendall(occupancy_lines(rng))
            decision = next(stream)
            if decision is None:
                raise RuntimeError(f"no decision for occupancy {i}; see {dep.dir}")
            received_ns = time.time_ns()
            if i >= 20:  # the first ones warm caches and connections
                latencies.append((received_ns - decision["end_ns"]) / 1e9)
                sizes.append(len(json.dumps(decision)))
        sub.close()
        ctx.term()
        conn.close()
    finally:
        dep.close()
        srv.close()
    measured = percentiles(latencies)
    base = percentiles(floor(len(latencies), int(np.median(sizes))))
    print(f"decision latency, GX at driver -> journaled -> subscriber, {measured['n']} occupancies")
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


if __name__ == "__main__":
    main()
