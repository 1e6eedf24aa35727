"""Radiation/X-ray fusion: detection quality against the simulators' truth, and decision latency from scan end.

Quality (``python -m benchmarks.fusion quality [--n 1200] [--seed 1] [--pixels 512]``)
    Vehicles from the lane simulator's physics (:class:`lanewatch.drivers.sim.physics.Traffic`) and their scans
    from the X-ray scanner simulator with the same seed go, as the drivers' records on a shared clock,
    through a :class:`lanewatch.edge.lane.occupancy.Lane` with a scanner, which keeps its background from readings every
    5 s between vehicles as at a lane. Side by side per truth category and shield material: the share
    of vehicles the radiation tests alone alarm on (the decision's radiation entries), and the share
    the fused decision alarms on; for shielded sources also how often a fused finding lies within
    0.5 m of the source; for benign vehicles the false image-review flags (``image-review`` and
    ``shielded-source-suspected``) per 1000 vehicles, split by whether a high-Z look-alike was loaded;
    for NORM loads how often the release is recommended by the image.

Latency (``python -m benchmarks.fusion latency [--vehicles 150] [--pixels 1024] [--rate 1000]``)
    Real processes on loopback: two TCP servers here play a portal (RPM lines) and a scanner (LWXR
    frames), ``lanewatch driver rpm`` and ``lanewatch driver xray`` read them, ``lanewatch run``
    decides, and a subscriber here receives. Each vehicle's occupancy is sent with its end line first,
    then its scan paced at ``--rate`` lines per second (a scanner sends 300; faster loads the two cores
    more than a lane would), so the decision waits for the scan. Latency is
    the decision's receipt here minus the X-ray driver's stamp of the scan's end (``xray.end_ns``).
    Baselines in the same run: the same deployment's lane without a scanner, from its end line
    (radiation alone), and the floor of one bus hop and one fsync'd commit of a decision-sized body.
    Gross counts (no energy windows): the radiation part is not what is measured here.
    Target: p99 <= 50 ms from scan end.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import zmq
from prometheus_client import CollectorRegistry

from benchmarks.harness import Deployment, percentiles
from benchmarks.latency import background_lines, floor
from lanewatch.drivers.sim.lane import counts_line, speed_line
from lanewatch.drivers.sim.physics import GAMMA_DT_S, HOLD_IN_S, NEUTRON_DT_S, Passage, Traffic
from lanewatch.drivers.sim.xray import LINE_RATE_HZ, XrayScan, XrayScanner
from lanewatch.edge.bus.records import Kind, Record
from lanewatch.edge.config import DetectionConfig, LaneConfig
from lanewatch.edge.decisions.decision import Decision
from lanewatch.edge.decisions.subscriber import AlertSubscriber
from lanewatch.edge.lane.detect import warm_up
from lanewatch.edge.lane.occupancy import Decided, Lane
from lanewatch.edge.ops.metrics import ServiceMetrics

WINDOWS_KEV = [30.0, 400.0, 3000.0]
QUALITY_MIX = {"none": 0.5, "shielded-cs137": 0.2, "shielded-co60": 0.2, "k40-fertilizer": 0.05, "ceramics": 0.05}
"""Benign vehicles for false flags, shielded sources for detection, a few NORM loads for release."""
READING_INTERVAL_S = 5.0
"""Background readings between vehicles, one every this many seconds (s), each a 1 s count."""
GAP_S = 20.0
"""Empty time between vehicles (s)."""
LOCATED_M = 0.5
"""A fused finding within this distance (m) of the true source is counted as locating it."""
FUSED = ("shielded-source-suspected", "image-review")

Event = tuple[int, Kind, str, dict[str, Any]]
"""(driver stamp ns, kind, source, record fields) of one record of a lane."""


def passage_records(passage: Passage, scan: XrayScan | None, t0_ns: int) -> list[Event]:
    """The records the RPM driver (and the X-ray driver, given ``scan``) publish for one vehicle, in time order.

    The vehicle front reaches the portal and the beam at ``t0_ns``: gamma samples every 0.2 s after, a
    neutron sample every 1 s and at the end, a speed every 6 samples, the end line after the last
    sample (as :mod:`lanewatch.drivers.sim.lane` sends them); the scan's calibration lines just before ``t0_ns``
    and its lines in batches of 64 at the line rate (as :mod:`lanewatch.drivers.xray` publishes them).
    """
    events: list[Event] = []
    step = round(GAMMA_DT_S * 1e9)
    n = len(passage.gamma)
    for j, sample in enumerate(passage.gamma):
        t = t0_ns + (j + 1) * step
        events.append((t, Kind.GAMMA_SCAN, "rpm", {"dt_s": GAMMA_DT_S, "counts": sample}))
        if (j + 1) % 5 == 0 or j == n - 1:
            counts = passage.neutron[min(j // 5, len(passage.neutron) - 1)].reshape(-1, 1)
            events.append((t, Kind.NEUTRON_SCAN, "rpm", {"dt_s": NEUTRON_DT_S, "counts": counts}))
        if (j + 1) % 6 == 0:
            events.append((t, Kind.SPEED, "rpm", {"values": {"speed_kmh": passage.speed_kmh}}))
    events.append((t0_ns + n * step, Kind.OCCUPANCY_END, "rpm", {"values": {"device_occupancy": passage.index}}))
    if scan is not None:
        line_ns = round(1e9 / LINE_RATE_HZ)
        sid = scan.scan_id
        start = {"scan_id": sid, "t_ns": t0_ns, "energies": scan.image.shape[1], "pixels": scan.image.shape[2]}
        events.append((t0_ns - 40 * line_ns, Kind.XRAY_SCAN_START, "xray", {"values": start}))
        for frame, lines in (("dark", scan.dark), ("air", scan.air)):
            values = {"scan_id": sid, "frame": frame, "t_ns": [t0_ns] * len(lines)}
            events.append((t0_ns - 20 * line_ns, Kind.XRAY_CALIBRATION, "xray", {"counts": lines, "values": values}))
        total = len(scan.image)
        for a in range(0, total, 64):
            b = min(a + 64, total)
            values = {
                "scan_id": sid,
                "first_line": a,
                "line_count": b - a,
                "encoder_mm": scan.encoder_mm[a:b].tolist(),
                "t_ns": [t0_ns + i * line_ns for i in range(a, b)],
                "flags": [0] * (b - a),
            }
            events.append((t0_ns + b * line_ns, Kind.XRAY_LINES, "xray", {"counts": scan.image[a:b], "values": values}))
        end = {"scan_id": sid, "lines": total, "missing": 0, "complete": True, "reason": "scan_end"}
        events.append((t0_ns + total * line_ns, Kind.XRAY_SCAN_END, "xray", {"values": end}))
    return sorted(events, key=lambda e: e[0])


class LaneFeed:
    """One :class:`Lane` fed records stamped on a simulated clock (ns), collecting its decisions."""

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.seq: dict[str, int] = defaultdict(int)
        self.decided: list[dict[str, Any]] = []

    def __call__(self, t_ns: int, kind: Kind, source: str, fields: dict[str, Any]) -> None:
        rec = Record(
            kind=kind, lane=self.lane.id, source=source, seq=self.seq[source], t_wall_ns=t_ns, t_mono_ns=t_ns, **fields
        )
        self.seq[source] += 1
        self.decided += [e.decision for e in self.lane.on_record(rec, t_ns) if isinstance(e, Decided)]

    def background(self, traffic: Traffic, t_ns: int, seconds: float) -> int:
        """Keep the lane empty for ``seconds`` with a reading every interval; returns the clock after."""
        for _ in range(max(1, round(seconds / READING_INTERVAL_S))):
            traffic.idle(READING_INTERVAL_S)
            gamma, neutron = traffic.background_reading(1.0)
            t_ns += round(READING_INTERVAL_S * 1e9)
            self(t_ns, Kind.GAMMA_BACKGROUND, "rpm", {"counts": gamma})
            self(t_ns, Kind.NEUTRON_BACKGROUND, "rpm", {"counts": neutron.reshape(-1, 1)})
        return t_ns


# ---- quality -------------------------------------------------------------------------------------
def _row(passage: Passage, scan: XrayScan) -> str:
    source = passage.truth["source"]
    if source.startswith("shielded-"):
        return f"{source} ({passage.truth['sources'][0]['shielding']['material']})"
    if source == "none":
        loaded = any(o["role"] == "benign_dense" and o["class"] == "high_z" for o in scan.truth["objects"])
        return "none, high-Z look-alike" if loaded else "none"
    return source


def quality(n: int, seed: int, pixels: int) -> dict[str, dict[str, float]]:
    """Run ``n`` vehicles through a lane with a scanner; per row: counts of each outcome."""
    detection = DetectionConfig(energy_windows_kev=WINDOWS_KEV, occupancy_hold_in_s=HOLD_IN_S)
    lane = Lane(LaneConfig(id="lane1", xray="scanner:1"), detection, ServiceMetrics(CollectorRegistry()))
    feed = LaneFeed(lane)
    traffic = Traffic(seed, WINDOWS_KEV, QUALITY_MIX)
    scanner = XrayScanner(seed, pixels=pixels)
    tally: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    t = feed.background(traffic, 1_800_000_000 * 10**9, 120.0)
    started = time.perf_counter()
    for _ in range(n):
        passage = traffic.next_passage()
        scan = scanner.scan(passage)
        before = len(feed.decided)
        for when, kind, source, fields in passage_records(passage, scan, t):
            feed(when, kind, source, fields)
        assert len(feed.decided) == before + 1, "one decision per vehicle"
        decision = feed.decided[-1]
        row = tally[_row(passage, scan)]
        row["n"] += 1
        alarms = decision["alarms"]
        radiation = [a for a in alarms if a.get("alarm") and a["reason"] not in FUSED]
        fused = [a for a in alarms if a["reason"] in FUSED]
        row["radiation"] += bool(radiation)
        row["fusion"] += decision["verdict"] == "ALARM"
        row["flags"] += bool(fused)
        row["shielded-source-suspected"] += any(a["reason"] == "shielded-source-suspected" for a in alarms)
        row["image-too-dark"] += any(a["reason"] == "image-too-dark" for a in alarms)
        sources = passage.truth["sources"]
        if fused and sources and "position_m" in sources[0]:
            row["located"] += any(abs(a["location_m"] - sources[0]["position_m"]) <= LOCATED_M for a in fused)
        for a in alarms:
            if a["reason"] == "norm-consistent":
                row["released"] += 1
                row["release recommended"] += bool(a.get("release_recommended"))
        t += round((float(passage.truth["duration_s"]) + 1.0) * 1e9)
        t = feed.background(traffic, t, GAP_S)
    tally["_time"]["s"] = time.perf_counter() - started
    return tally


def report_quality(n: int, seed: int, pixels: int, tally: dict[str, dict[str, float]]) -> None:
    print(f"fusion detection quality: seed {seed}, {n} vehicles, {pixels}-pixel scans, windows {WINDOWS_KEV} keV")
    header = (
        f"{'truth':30s} {'n':>5s} {'radiation':>10s} {'fusion':>8s} {'flagged':>8s} {'located':>8s}"
        f" {'suspected':>10s} {'too dark':>9s}"
    )
    print(header)
    print("-" * len(header))
    for name in sorted(k for k in tally if not k.startswith("_")):
        row = tally[name]
        k = row["n"]
        print(
            f"{name:30s} {k:5.0f} {row['radiation'] / k:10.3f} {row['fusion'] / k:8.3f} {row['flags'] / k:8.3f}"
            f" {row['located'] / k:8.3f} {row['shielded-source-suspected'] / k:10.3f} {row['image-too-dark'] / k:9.3f}"
        )
    shielded = [r for name, r in tally.items() if name.startswith("shielded-")]
    total = sum(r["n"] for r in shielded)
    if total:
        rad = sum(r["radiation"] for r in shielded) / total
        fus = sum(r["fusion"] for r in shielded) / total
        print(f"\nshielded sources ({total}): detected by radiation alone {rad:.3f}, with fusion {fus:.3f}", end="")
        print(f" ({fus / rad:.2f}x)" if rad else "")
    benign = [r for name, r in tally.items() if name.startswith("none")]
    total = sum(r["n"] for r in benign)
    if total:
        flags = 1000 * sum(r["flags"] for r in benign) / total
        rad = 1000 * sum(r["radiation"] for r in benign) / total
        fus = 1000 * sum(r["fusion"] for r in benign) / total
        print(
            f"benign vehicles ({total}): false image-review flags per 1000 {flags:.1f};"
            f" alarms per 1000: radiation alone {rad:.1f}, fused {fus:.1f}"
        )
    norm = [r for name, r in tally.items() if name in ("k40-fertilizer", "ceramics")]
    released = sum(r["released"] for r in norm)
    if released:
        recommended = sum(r["release recommended"] for r in norm)
        print(f"NORM loads released by radiation: {released:.0f}; the image recommends release for {recommended:.0f}")
    seconds = tally["_time"]["s"]
    print(
        f"time: {seconds:.1f} s for {n} vehicles (render, image, radiation and fusion), {seconds / n * 1e3:.0f} ms each"
    )


# ---- latency -------------------------------------------------------------------------------------
def occupancy_lines(passage: Passage) -> bytes:
    """The RPM line protocol of one occupancy (gamma, neutron, speed lines and its GX)."""
    lines = []
    n = len(passage.gamma)
    for j, sample in enumerate(passage.gamma):
        lines.append(counts_line("GS", sample))
        if (j + 1) % 5 == 0 or j == n - 1:
            lines.append(counts_line("NS", passage.neutron[min(j // 5, len(passage.neutron) - 1)]))
        if (j + 1) % 6 == 0:
            lines.append(speed_line(passage.speed_kmh))
    lines.append("GX,000001,003000,000000,000000")
    return ("\r\n".join(lines) + "\r\n").encode()


def _serve(server: socket.socket) -> socket.socket:
    conn, _ = server.accept()
    return conn


def _scans(pixels: int, count: int) -> Iterator[tuple[Passage, XrayScan]]:
    """Vehicles with their scans: ``count`` distinct ones rendered once, then reused with new scan ids."""
    traffic = Traffic(7, None, {"none": 1.0})
    scanner = XrayScanner(7, pixels=pixels)
    made = [(p, scanner.scan(p)) for p in (traffic.next_passage() for _ in range(count))]
    k = 0
    while True:
        passage, scan = made[k % count]
        k += 1
        yield passage, dataclasses.replace(scan, scan_id=k)


def _send_paced(conn: socket.socket, frames: list[bytes], rate: float) -> None:
    """Send frames at ``rate`` frames per second, 32 at a time."""
    t0 = time.perf_counter()
    for i in range(0, len(frames), 32):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        conn.sendall(b"".join(frames[i : i + 32]))


def latency(vehicles: int, pixels: int, rate: float) -> dict[str, Any]:
    """Fused decision latency from scan end, and radiation-only latency from GX, over real processes."""
    servers = {name: socket.create_server(("127.0.0.1", 0)) for name in ("rpm1", "xray1", "rpm2")}
    ports = {name: s.getsockname()[1] for name, s in servers.items()}
    dep = Deployment(2, [f"socket://127.0.0.1:{ports['rpm1']}", f"socket://127.0.0.1:{ports['rpm2']}"])
    text = dep.config_path.read_text()
    dep.config_path.write_text(text.replace('id = "lane1"', f'id = "lane1"\nxray = "127.0.0.1:{ports["xray1"]}"'))
    fused: list[float] = []
    plain: list[float] = []
    sizes: list[int] = []
    finish_ms: list[float] = []
    try:
        dep.start_service()
        args = ["--config", str(dep.config_path)]
        dep.spawn("driver-rpm1", "driver", "rpm", *args, "--lane", "lane1")
        dep.spawn("driver-rpm2", "driver", "rpm", *args, "--lane", "lane2")
        dep.spawn("driver-xray1", "driver", "xray", *args, "--lane", "lane1")
        conns = {name: _serve(server) for name, server in servers.items()}
        ctx = zmq.Context()
        sub = AlertSubscriber(ctx, dep.config.bus.alerts, dep.config.bus.query, since=None)
        stream = sub.decisions(follow=True, timeout_s=20.0)
        rng = np.random.default_rng(1)
        for conn in (conns["rpm1"], conns["rpm2"]):
            for _ in range(3):
                conn.sendall(background_lines(rng))
        time.sleep(1.0)
        warm = 5
        for i, (passage, scan) in enumerate(_scans(pixels, 8)):
            if i >= vehicles + warm:
                break
            conns["rpm2"].sendall(occupancy_lines(passage) + background_lines(rng))
            decision = next(stream)
            received = time.time_ns()
            if not isinstance(decision, Decision) or decision.lane != "lane2":
                raise RuntimeError(f"no radiation-only decision for vehicle {i}; see {dep.dir}")
            if i >= warm:
                plain.append((received - decision.end_ns) / 1e9)
            conns["rpm1"].sendall(occupancy_lines(passage) + background_lines(rng))
            _send_paced(conns["xray1"], list(scan.frames(time.time_ns())), rate)
            decision = next(stream)
            received = time.time_ns()
            xray = decision.xray if isinstance(decision, Decision) else None
            if xray is None or xray.scan_id != scan.scan_id or xray.end_ns is None:
                raise RuntimeError(f"no fused decision for scan {scan.scan_id}; see {dep.dir}")
            if i >= warm:
                fused.append((received - xray.end_ns) / 1e9)
                sizes.append(len(sub.journaled))
        sub.close()
        ctx.term()
        metrics = _scrape(dep.config.service.http)
        finish_ms = [metrics.get(f"xray-{k}", 0.0) for k in ("finish", "fusion")]
        for conn in conns.values():
            conn.close()
    finally:
        dep.close()
        for server in servers.values():
            server.close()
    return {
        "fused": fused,
        "plain": plain,
        "floor": floor(len(fused), int(np.median(sizes))),
        "size": int(np.median(sizes)),
        "stage_ms": finish_ms,
    }


def _scrape(http: str) -> dict[str, float]:
    """Mean time (ms) per call of the service's scan-end and fusion stages, from its /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://{http}/metrics", timeout=5) as r:
        text = r.read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for stage, key in (("xray-finish", "xray-finish"), ("fusion", "xray-fusion")):
            if line.startswith(f'lanewatch_kernel_seconds_sum{{kernel="{stage}"}}'):
                sums[key] = float(line.split()[-1])
            if line.startswith(f'lanewatch_kernel_seconds_count{{kernel="{stage}"}}'):
                counts[key] = float(line.split()[-1])
    return {k: 1e3 * sums[k] / counts[k] for k in sums if counts.get(k)}


def report_latency(vehicles: int, pixels: int, rate: float, out: dict[str, Any]) -> None:
    fused, plain, base = percentiles(out["fused"]), percentiles(out["plain"]), percentiles(out["floor"])
    print(
        f"fused decision latency, X-ray scan-end frame at driver -> journaled -> subscriber, {fused['n']} vehicles"
        f" ({pixels} pixels, scans sent at {rate:g} lines/s)"
    )
    print(
        f"  fused (from scan end)        p50 {fused['p50_ms']:7.2f} ms   p99 {fused['p99_ms']:7.2f} ms   "
        f"max {fused['max_ms']:7.2f} ms   (target p99 <= 50 ms)"
    )
    print(f"  radiation alone (from GX)    p50 {plain['p50_ms']:7.2f} ms   p99 {plain['p99_ms']:7.2f} ms")
    print(
        f"  floor (1 bus hop + 1 fsync'd commit of {out['size']} B)"
        f"  p50 {base['p50_ms']:7.2f} ms   p99 {base['p99_ms']:7.2f} ms"
    )
    print(
        f"  ratio fused / radiation alone p50 {fused['p50_ms'] / plain['p50_ms']:.1f}x; fused / floor p50"
        f" {fused['p50_ms'] / base['p50_ms']:.1f}x, p99 {fused['p99_ms'] / base['p99_ms']:.1f}x"
    )
    finish, fusion = out["stage_ms"]
    print(f"  service stages per scan: scan end (regions, objects, preview) {finish:.2f} ms, fusion {fusion:.2f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what")
    q = sub.add_parser("quality", help="detection quality against the simulators' truth")
    q.add_argument("--n", type=int, default=1200, help="vehicles (default 1200)")
    q.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    q.add_argument("--pixels", type=int, default=512, help="detector pixels of the scans (default 512)")
    lat = sub.add_parser("latency", help="decision latency from the scan-end frame over real processes")
    lat.add_argument("--vehicles", type=int, default=150, help="vehicles measured (default 150)")
    lat.add_argument("--pixels", type=int, default=1024, help="detector pixels of the scans (default 1024)")
    lat.add_argument("--rate", type=float, default=1000.0, help="lines per second sent to the driver (default 1000)")
    args = parser.parse_args(argv)
    warm_up()
    if args.what in (None, "quality"):
        n, seed, pixels = (args.n, args.seed, args.pixels) if args.what else (1200, 1, 512)
        report_quality(n, seed, pixels, quality(n, seed, pixels))
    if args.what in (None, "latency"):
        vehicles, pixels, rate = (args.vehicles, args.pixels, args.rate) if args.what else (150, 1024, 1000.0)
        report_latency(vehicles, pixels, rate, latency(vehicles, pixels, rate))


if __name__ == "__main__":
    main()
