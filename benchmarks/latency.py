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
import multiprocessing
import os
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np
import zmq

from benchmarks.harness import Deployment, percentiles
from lanewatch.edge.decisions.decision import Decision
from lanewatch.edge.decisions.subscriber import AlertSubscriber, Item

SAMPLES = 25
"""Gamma samples per occupancy (5 s at 0.2 s)."""
SAMPLE_S = 0.2
"""The portal's sample interval (s): the benchmark sends an occupancy's lines at this pace."""


def occupancy_lines(rng: np.random.Generator, samples: int = SAMPLES) -> list[bytes]:
    """The lines of one occupancy as the portal sends them, one item per sample interval: a gamma sample
    (with a neutron sample every fifth, the speed after the sixth), and the end line one interval after the
    last sample."""
    ticks = []
    for i in range(samples):
        lines = ["GS," + ",".join(f"{v:06d}" for v in rng.poisson(48, 4))]
        if i % 5 == 4:
            lines.append("NS," + ",".join(f"{v:06d}" for v in rng.poisson(3, 4)))
        if i == 5:
            lines.append("SP,0.2249,03.032,004.88,000000")
        ticks.append(("\r\n".join(lines) + "\r\n").encode())
    ticks.append(b"GX,000000,003000,000000,000000\r\n")
    return ticks


def background_lines(rng: np.random.Generator) -> bytes:
    """One gamma and one neutron background reading (cps per channel), as an idle portal sends."""
    gb = "GB," + ",".join(f"{v:06d}" for v in rng.poisson(240, 4))
    nb = "NB," + ",".join(f"{v:06d}" for v in rng.poisson(3, 4))
    return f"{gb}\r\n{nb}\r\n".encode()


class Floor:
    """The path without lanewatch's work, measured beside every occupancy so both see the same machine: one
    ZeroMQ PUB->SUB hop on loopback plus one SQLite commit with fsync (WAL, ``synchronous=FULL``, as the journal)
    of a decision-sized body."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.pub, self.sub = self.ctx.socket(zmq.PUB), self.ctx.socket(zmq.SUB)
        port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.sub.connect(f"tcp://127.0.0.1:{port}")
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.tmp = tempfile.TemporaryDirectory()
        self.db = sqlite3.connect(Path(self.tmp.name) / "floor.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB)")
        while True:  # the subscription settled
            self.pub.send(b"")
            if self.sub.poll(100):
                self.sub.recv()
                break

    def sample(self, body_bytes: int) -> float:
        """One hop and one commit of ``body_bytes`` (s)."""
        body = b"x" * body_bytes
        t0 = time.perf_counter()
        self.db.execute("BEGIN")
        self.db.execute("INSERT INTO t (body) VALUES (?)", (body,))
        self.db.execute("COMMIT")
        self.pub.send(body)
        self.sub.recv()
        return time.perf_counter() - t0

    def close(self) -> None:
        self.db.close()
        self.tmp.cleanup()
        self.pub.close(0)
        self.sub.close(0)
        self.ctx.term()


def floor(samples: int, body_bytes: int) -> list[float]:
    """``samples`` floor measurements in a row (s), see :class:`Floor`."""
    base = Floor()
    try:
        return [base.sample(body_bytes) for _ in range(samples)]
    finally:
        base.close()


def load() -> str:
    """The machine's 1-minute load average and core count, printed beside every figure."""
    return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def flood(endpoint: str, rps: float, peers: int, active: Event, stop: Event, counts: multiprocessing.Queue) -> None:
    """In its own process: while ``active`` is set, ``rps`` requests a second of ``since 0, limit 1000`` spread over
    ``peers`` DEALER sockets, never waiting for answers; puts (sent, answered, rate limited) on ``counts`` when
    ``stop`` is set."""
    ctx = zmq.Context()
    socks = [ctx.socket(zmq.DEALER) for _ in range(peers)]
    poller = zmq.Poller()
    for sock in socks:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        poller.register(sock, zmq.POLLIN)
    request = b'{"op": "since", "seq": 0, "limit": 1000}'
    sent = answered = limited = 0
    start, base = time.monotonic(), 0
    while not stop.is_set():
        if not active.is_set():
            start, base = time.monotonic(), sent  # paused: no backlog of requests to send on resuming
        else:
            due = base + int((time.monotonic() - start) * rps)
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


def send_paced(conn: socket.socket, ticks: list[bytes], interval_s: float) -> None:
    """Send one item of ``ticks`` every ``interval_s`` (0: all at once, as one burst)."""
    if interval_s <= 0:
        conn.sendall(b"".join(ticks))
        return
    due = time.monotonic()
    for tick in ticks:
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        conn.sendall(tick)
        due += interval_s


@dataclass
class Phase:
    """What one phase (alone, or during the flood) measured: per occupancy the latency and the floor beside it (s),
    and the service's own stage timings (sums and counts of its histograms)."""

    latencies: list[float] = field(default_factory=list)
    floors: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def add_metrics(self, before: dict[str, float], after: dict[str, float]) -> None:
        for name in STAGE_METRICS.values():
            for suffix in ("_sum", "_count"):
                key = name + suffix
                self.metrics[key] = self.metrics.get(key, 0.0) + after.get(key, 0.0) - before.get(key, 0.0)


def measure(
    sub: AlertSubscriber,
    stream: Iterator[Item],
    conn: socket.socket,
    rng: np.random.Generator,
    phase: Phase,
    base: Floor | None,
    n: int,
    samples: int = SAMPLES,
    interval_s: float = SAMPLE_S,
) -> None:
    """``n`` occupancies of ``samples`` samples sent one after another, their lines paced at ``interval_s``, each
    followed by the portal's idle background lines; their latencies, sizes and (with ``base``) the floor measured
    right after each, into ``phase``."""
    for i in range(n):
        send_paced(conn, occupancy_lines(rng, samples), interval_s)
        decision = next(stream)
        received_ns = time.time_ns()
        if not isinstance(decision, Decision):
            raise RuntimeError(f"no decision for occupancy {i}")
        phase.latencies.append((received_ns - decision.end_ns) / 1e9)
        phase.sizes.append(len(sub.journaled))
        if base is not None:
            phase.floors.append(base.sample(phase.sizes[-1]))
        conn.sendall(background_lines(rng))


class _Stages:
    """Wall time (s) per labelled stage, recorded per GX by wrapping the functions of each stage (no profiler:
    only the calls named below pay a ``perf_counter`` pair)."""

    def __init__(self) -> None:
        self.current: dict[str, float] | None = None
        """Time per label of the GX being handled (None: not recording)."""
        self.per_gx: list[dict[str, float]] = []

    def add(self, label: str, seconds: float) -> None:
        if self.current is not None:
            self.current[label] = self.current.get(label, 0.0) + seconds

    def wrap(self, owner: object, name: str, label: str) -> None:
        """Replace ``owner.name`` (a function of a class or module) by a timed twin."""
        original = getattr(owner, name)

        def timed(*args: object, **kwargs: object) -> object:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - t0)

        setattr(owner, name, timed)


class _TimedConnection:
    """An SQLite connection whose ``execute`` is timed by statement (COMMIT, INSERT, the rest)."""

    def __init__(self, conn: sqlite3.Connection, stages: _Stages) -> None:
        self._conn = conn
        self._stages = stages

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        word = sql.split(None, 1)[0].upper()
        label = {"COMMIT": SQL_COMMIT, "INSERT": SQL_INSERT}.get(word, SQL_OTHER)
        t0 = time.perf_counter()
        try:
            return self._conn.execute(sql, *args)
        finally:
            self._stages.add(label, time.perf_counter() - t0)

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)


class _TimedEncoder:
    """The journal's JSON encoder, timed."""

    def __init__(self, encoder: object, stages: _Stages, label: str) -> None:
        self._encoder = encoder
        self._stages = stages
        self._label = label

    def encode(self, obj: object) -> bytes:
        t0 = time.perf_counter()
        try:
            return self._encoder.encode(obj)  # type: ignore[attr-defined]
        finally:
            self._stages.add(self._label, time.perf_counter() - t0)


SQL_COMMIT = "  SQLite COMMIT (WAL write + fsync)"
SQL_INSERT = "  SQLite INSERT"
SQL_OTHER = "  SQLite BEGIN, duplicate check, seq"


STAGE_METRICS = {
    "driver stamp -> published (service's decision latency)": "lanewatch_decision_latency_seconds",
    "journal append (commit with fsync)": "lanewatch_journal_write_seconds",
    "detection statistics (finish)": "lanewatch_kernel_seconds",
    "anomaly model (features + inference)": "lanewatch_model_inference_seconds",
}
"""Stages the service times itself (histograms whose mean per decision the benchmark prints)."""


def stage_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean (s) per observation of each of :data:`STAGE_METRICS` between two scrapes of the service's metrics."""
    means = {}
    for label, name in STAGE_METRICS.items():
        count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
        total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
        if count > 0:
            means[label] = total / count
    return means


def slowest(latencies_s: list[float], k: int = 3) -> str:
    """The ``k`` slowest latencies (ms), each with the occupancy's position in the phase."""
    order = sorted(range(len(latencies_s)), key=lambda i: -latencies_s[i])[:k]
    return ", ".join(f"#{i} {latencies_s[i] * 1e3:.1f} ms" for i in order)


def print_inside(means: dict[str, float], end_to_end_s: float) -> None:
    """The service's own timings (means) beside the measured end-to-end mean."""
    print(f"  {'':14s} mean {end_to_end_s * 1e3:.3f} ms end to end; the service's own metrics, mean per decision:")
    for label, value in means.items():
        print(f"  {'':16s}{label:56s} {value * 1e3:7.3f} ms")


def profile(occupancies: int) -> None:
    """Where the GX -> decision time goes inside the service (module docstring)."""
    from prometheus_client import CollectorRegistry

    from lanewatch.edge import service as service_module
    from lanewatch.edge.bus.records import Kind, Record
    from lanewatch.edge.config import parse
    from lanewatch.edge.decisions import alertbus, decision, journal
    from lanewatch.edge.lane import detect, occupancy
    from lanewatch.edge.model import runtime

    stages = _Stages()
    wrapped = [
        (service_module, "decode", "decode the GX record"),
        (occupancy.Lane, "on_record", "lane: the end line (occupancy end, detection, decision)"),
        (detect.OccupancyAnalyzer, "finish", "  detection statistics (finish)"),
        (occupancy.Lane, "_calibrate", "  background calibration"),
        (decision, "build", "  decision record (build)"),
        (runtime.ModelRunner, "review", "anomaly model: features and ONNX inference"),
        (journal.Journal, "append", "journal append"),
        (decision, "problems", "  decision schema check"),
        (journal, "_encode", "  compression (zlib)"),
        (journal.Journal, "_set_hwm", "  seq side file"),
        (journal.Journal, "_check_identity", "  journal file identity (stat)"),
        (journal.Journal, "_update_size", "  journal size metric (stat)"),
        (alertbus.AlertBus, "publish", "publish on the alert bus (encode + send)"),
    ]
    for owner, name, label in wrapped:
        stages.wrap(owner, name, label)
    encode_label = "  JSON encode"
    journal.JSON_ENCODER = _TimedEncoder(journal.JSON_ENCODER, stages, encode_label)  # type: ignore[assignment]

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
    service = service_module.Service(parse(text, str(tmp / "lanewatch.toml")), CollectorRegistry(), http=False)
    service.start()
    service.journal._conn = _TimedConnection(service.journal._conn, stages)  # type: ignore[assignment]
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
    sample_s: list[float] = []
    sizes: list[int] = []
    for i in range(occupancies + 20):
        for _ in range(SAMPLES):
            frames = send(Kind.GAMMA_SCAN, dt_s=0.2, counts=rng.poisson(48, (4, 1)).astype("u4"))
            t0 = time.perf_counter()
            service.handle_frames(frames)
            if i >= 20:
                sample_s.append(time.perf_counter() - t0)
        gx = send(Kind.OCCUPANCY_END, values={"device_occupancy": i + 1, "neutron_background_cps": 3.0})
        stages.current = {} if i >= 20 else None
        t0 = time.perf_counter()
        service.handle_frames(gx)
        if stages.current is not None:
            stages.current["handling the GX record (all)"] = time.perf_counter() - t0
            stages.per_gx.append(stages.current)
            sizes.append(len(service.journal.get_json(service.last_seq) or b""))
        stages.current = None
        background()
    service.close()
    labels = ["handling the GX record (all)", *(label for _, _, label in wrapped)]
    labels.insert(labels.index("  decision schema check"), encode_label)
    for label in (SQL_OTHER, SQL_INSERT, SQL_COMMIT):
        labels.insert(labels.index("  seq side file"), label)
    rows = {label: [gx.get(label, 0.0) for gx in stages.per_gx] for label in labels}
    journal_parts = [label for label in labels[labels.index("journal append") + 1 :] if label.startswith("  ")]
    other = "  other (decode of the stored body, bookkeeping)"
    rows[other] = [
        gx.get("journal append", 0.0) - sum(gx.get(label, 0.0) for label in journal_parts) for gx in stages.per_gx
    ]
    labels.insert(labels.index("publish on the alert bus (encode + send)"), other)
    top = [label for label in labels[1:] if not label.startswith(" ")]
    rows["service loop: sequence check, routing, dispatch"] = [
        gx["handling the GX record (all)"] - sum(gx.get(label, 0.0) for label in top) for gx in stages.per_gx
    ]
    labels.append("service loop: sequence check, routing, dispatch")
    total_mean = float(np.mean(rows["handling the GX record (all)"]))
    body = int(np.median(sizes))
    base = percentiles(floor(len(stages.per_gx), body))
    print(f"GX -> decision inside the service, {len(stages.per_gx)} occupancies, {load()}")
    print(f"  {'stage':58s} {'p50 ms':>8s} {'mean ms':>8s} {'share':>6s}")
    for label in labels:
        values = np.asarray(rows[label]) * 1e3
        share = values.mean() / total_mean / 1e3
        print(f"  {label:58s} {np.percentile(values, 50):8.3f} {values.mean():8.3f} {share:6.1%}")
    per_sample = percentiles(sample_s)
    print(
        f"  each gamma sample before the GX (handled as it arrives): p50 {per_sample['p50_ms'] * 1e3:.0f} us, "
        f"p99 {per_sample['p99_ms'] * 1e3:.0f} us; {SAMPLES} of them {per_sample['p50_ms'] * SAMPLES:.2f} ms"
    )
    print(
        f"  baseline, same run: floor (1 bus hop + 1 fsync'd commit of {body} B) p50 {base['p50_ms']:.3f} ms, "
        f"p99 {base['p99_ms']:.3f} ms; GX handling p50 / floor p50 "
        f"{np.percentile(rows['handling the GX record (all)'], 50) * 1e3 / base['p50_ms']:.1f}x"
    )
    print(f"  {load()} at the end")


def report(name: str, phase: Phase) -> dict[str, float]:
    """Print one phase's latency, the floor beside it and the service's own stage means; its percentiles."""
    measured, base = percentiles(phase.latencies), percentiles(phase.floors)
    print(
        f"  {name:14s} p50 {measured['p50_ms']:7.3f} ms   p99 {measured['p99_ms']:7.3f} ms   "
        f"max {measured['max_ms']:7.3f} ms   ({measured['n']} occupancies)"
    )
    print(
        f"  {'floor beside':14s} p50 {base['p50_ms']:7.3f} ms   p99 {base['p99_ms']:7.3f} ms   "
        f"(1 bus hop + 1 fsync'd commit of {int(np.median(phase.sizes))} B after each occupancy)"
    )
    print(
        f"  {'':14s} ratio to floor p50 {measured['p50_ms'] / base['p50_ms']:.1f}x   p99 "
        f"{measured['p99_ms'] / base['p99_ms']:.1f}x;   slowest {slowest(phase.latencies)}"
    )
    print_inside(stage_means({}, phase.metrics), float(np.mean(phase.latencies)))
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--occupancies", type=int, default=300, help="per phase (alone, and during the flood)")
    parser.add_argument("--samples", type=int, default=10, help="gamma samples per occupancy (10: a 2 s passage)")
    parser.add_argument(
        "--interval", type=float, default=SAMPLE_S, help="s between the portal's samples (0: each occupancy at once)"
    )
    parser.add_argument("--flood", type=float, default=1000.0, help="query requests a second (0: no flood phase)")
    parser.add_argument("--flood-peers", type=int, default=10, help="query peers the flood is spread over")
    parser.add_argument("--block", type=int, default=10, help="occupancies per block; the phases alternate by block")
    parser.add_argument("--profile", action="store_true", help="profile the decision path in this process")
    args = parser.parse_args()
    if args.profile:
        profile(args.occupancies)
        return

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    dep = Deployment(1, [f"socket://127.0.0.1:{port}"])
    load_before = load()
    alone, flooded = Phase(), Phase()
    counts: tuple[int, int, int] = (0, 0, 0)
    mp = multiprocessing.get_context("spawn")
    active, stop, queue = mp.Event(), mp.Event(), mp.Queue()
    flooder = None
    base = Floor()
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
        pace = {"samples": args.samples, "interval_s": args.interval}
        measure(sub, stream, conn, rng, Phase(), None, 20, **pace)  # the first ones warm caches and connections
        if args.flood:
            flooder = mp.Process(
                target=flood, args=(dep.config.bus.query, args.flood, args.flood_peers, active, stop, queue)
            )
            flooder.start()
        # The phases alternate block by block, so both see the same machine (its load drifts over minutes).
        while len(alone.latencies) < args.occupancies or (args.flood and len(flooded.latencies) < args.occupancies):
            flooding = bool(args.flood) and (
                len(alone.latencies) >= args.occupancies or len(flooded.latencies) < len(alone.latencies)
            )
            phase = flooded if flooding else alone
            if flooding and not active.is_set():
                active.set()
                time.sleep(1.0)  # the flood under way
            elif not flooding and active.is_set():
                active.clear()
                time.sleep(1.0)  # its backlog answered
            before = dep.metric_sums()
            n = min(args.block, args.occupancies - len(phase.latencies))
            measure(sub, stream, conn, rng, phase, base, n, **pace)
            phase.add_metrics(before, dep.metric_sums())
        if flooder is not None:
            stop.set()
            counts = queue.get(timeout=30)
            flooder.join(30)
        sub.close()
        ctx.term()
        conn.close()
    finally:
        stop.set()
        base.close()
        dep.close()
        srv.close()
    pacing = f"one every {args.interval:g} s" if args.interval > 0 else "each sent at once"
    print(f"decision latency, GX at driver -> journaled -> subscriber: occupancies of {args.samples} samples, {pacing}")
    print(f"  machine: {load_before} at the start, {load()} at the end;   target p99 <= 5 ms")
    measured = report("lanewatch", alone)
    if args.flood:
        sent, answered, limited = counts
        print(
            f"  during a query flood ({args.flood:g} req/s 'since 0, limit 1000' from {args.flood_peers} peers, in "
            f"blocks of {args.block} occupancies alternating with the above: {sent} sent, {answered} answered, "
            f"{limited} of them 'rate limited')"
        )
        during = report("lanewatch", flooded)
        print(
            f"  p99 ratio flood/alone {during['p99_ms'] / measured['p99_ms']:.2f}x (target <= 2x);   p50 ratio "
            f"{during['p50_ms'] / measured['p50_ms']:.2f}x"
        )


if __name__ == "__main__":
    main()
