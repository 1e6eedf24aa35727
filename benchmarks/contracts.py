"""Encoding and decoding of the typed contracts against plain ``json`` with dicts, measured in the same run.

``python -m benchmarks.contracts [--seconds S]``

Bus records: :meth:`Record.encode` and :func:`decode` (msgspec Structs, every field checked on decode) against
the json + dict encoding of the same records that the bus used before, which checked only the array sizes.

Decisions: what the journal does with each one now (check it against the decision contract, encode it with
msgspec; read it back as a typed :class:`~lanewatch.edge.decisions.decision.Decision`, as every reader gets it)
against what it did before (``json.dumps``, ``json.loads``), on a decision of a vehicle with a scanner (count
profiles, X-ray section with its preview) made by the lane itself; msgspec's untyped decode (the journal's read
before its readers were typed) beside.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
from prometheus_client import CollectorRegistry

from benchmarks.fusion import WINDOWS_KEV, LaneFeed, passage_records
from lanewatch.drivers.sim.physics import HOLD_IN_S, Traffic
from lanewatch.drivers.sim.xray import XrayScanner
from lanewatch.edge.bus.records import Kind, Record, decode
from lanewatch.edge.config import DetectionConfig, LaneConfig
from lanewatch.edge.decisions import decision, journal
from lanewatch.edge.lane.occupancy import Lane
from lanewatch.edge.ops.metrics import ServiceMetrics


def _records() -> dict[str, Record]:
    rng = np.random.default_rng(1)
    lines = 64
    stamp = 1_764_000_000_000_000_000
    base: dict[str, Any] = dict(lane="lane1", source="rpm", seq=123456, t_wall_ns=stamp, t_mono_ns=987654321)
    return {
        "gamma_scan (4 x 2 counts)": Record(
            kind=Kind.GAMMA_SCAN, dt_s=0.2, counts=rng.poisson(50, (4, 2)).astype(np.uint32), **base
        ),
        "speed": Record(kind=Kind.SPEED, values={"speed_kmh": 7.2, "speed_mph": 4.47, "crossing_s": 0.15}, **base),
        "xray_lines (64 x 2 x 1024)": Record(
            kind=Kind.XRAY_LINES,
            counts=rng.integers(0, 65535, (lines, 2, 1024), dtype=np.uint16),
            values={
                "scan_id": 7,
                "first_line": 128,
                "line_count": lines,
                "encoder_mm": [5.0 * i for i in range(lines)],
                "t_ns": [stamp + 6_000_000 * i for i in range(lines)],
                "flags": [0] * lines,
            },
            **base,
        ),
    }


# ---- the baseline: the json + dict wire code the records used before ------------------------------------------
def json_encode(rec: Record, values: dict[str, Any]) -> list[bytes | memoryview]:
    arrays, frames = [], []
    for name in ("counts", "spectra"):
        arr = getattr(rec, name)
        if arr is None:
            continue
        arr = np.ascontiguousarray(arr)
        arrays.append({"name": name, "dtype": arr.dtype.newbyteorder("<").str, "shape": list(arr.shape)})
        frames.append(memoryview(arr.astype(arr.dtype.newbyteorder("<"), copy=False)).cast("B"))
    header = {
        "v": 1,
        "kind": rec.kind.value,
        "lane": rec.lane,
        "source": rec.source,
        "seq": rec.seq,
        "t_wall_ns": rec.t_wall_ns,
        "t_mono_ns": rec.t_mono_ns,
        "dt_s": rec.dt_s,
        "values": values,
        "flags": list(rec.flags),
        "arrays": arrays,
    }
    return [rec.topic, json.dumps(header, separators=(",", ":")).encode(), *frames]


def json_decode(frames: list[bytes]) -> dict[str, Any]:
    header = json.loads(frames[1])
    if not isinstance(header, dict) or header.get("v") != 1:
        raise ValueError("version")
    kind = Kind(header["kind"])
    arrays = {}
    for spec, buf in zip(header["arrays"], frames[2:], strict=True):
        dtype = np.dtype(spec["dtype"])
        shape = tuple(int(n) for n in spec["shape"])
        if int(np.prod(shape)) * dtype.itemsize != len(buf):
            raise ValueError("array")
        arrays[spec["name"]] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return dict(
        kind=kind,
        lane=str(header["lane"]),
        source=str(header["source"]),
        seq=int(header["seq"]),
        t_wall_ns=int(header["t_wall_ns"]),
        t_mono_ns=int(header["t_mono_ns"]),
        dt_s=float(header["dt_s"]),
        counts=arrays.get("counts"),
        spectra=arrays.get("spectra"),
        values=dict(header["values"]),
        flags=tuple(header["flags"]),
    )


def _fused_decision() -> dict[str, Any]:
    """A real decision of a lane with a scanner: one simulated vehicle (a shielded source) through a lane."""
    detection = DetectionConfig(energy_windows_kev=WINDOWS_KEV, occupancy_hold_in_s=HOLD_IN_S)
    feed = LaneFeed(Lane(LaneConfig(id="lane1", xray="scanner:1"), detection, ServiceMetrics(CollectorRegistry())))
    traffic = Traffic(2007, WINDOWS_KEV, {"shielded-cs137": 1.0})
    t = feed.background(traffic, 1_800_000_000 * 10**9, 15.0)
    passage = traffic.next_passage()
    for when, kind, source, fields in passage_records(passage, XrayScanner(2007, pixels=256).scan(passage), t):
        feed(when, kind, source, fields)
    return feed.decided[0]


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    """Best of 5 runs of the mean time per call (us), each run about ``seconds`` / 5 long."""
    n = 1
    while True:  # calibrate: enough calls for 20 ms
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 > 0.02:
            break
        n *= 2
    per_run = max(1, int(n * seconds / 5 / 0.02))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(per_run):
            fn()
        best = min(best, (time.perf_counter() - t0) / per_run)
    return best * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time per figure (default 1 s)")
    args = parser.parse_args(argv)
    print("bus records: us per record, lanewatch (msgspec, checked) vs json + dict, same run")
    print(f"{'record':28s} {'encode':>8s} {'json':>8s} {'ratio':>6s}   {'decode':>8s} {'json':>8s} {'ratio':>6s}")
    for name, rec in _records().items():
        frames = [bytes(f) for f in rec.encode()]
        assert decode(frames).values == rec.values and json_decode(frames)["seq"] == rec.seq
        enc = per_call_us(rec.encode, args.seconds)
        values = msgspec.to_builtins(rec.values)  # the baseline's records hold their values as a dict already
        enc_json = per_call_us(lambda rec=rec, values=values: json_encode(rec, values), args.seconds)
        dec = per_call_us(lambda frames=frames: decode(frames), args.seconds)
        dec_json = per_call_us(lambda frames=frames: json_decode(frames), args.seconds)
        print(
            f"{name:28s} {enc:8.2f} {enc_json:8.2f} {enc_json / enc:5.2f}x   "
            f"{dec:8.2f} {dec_json:8.2f} {dec_json / dec:5.2f}x"
        )
    print("ratio > 1: lanewatch is faster than the json + dict baseline")
    stored = {"seq": 1, **_fused_decision()}
    assert decision.problems(stored) is None
    body = journal.JSON_ENCODER.encode(stored)
    print(f"\ndecision of a vehicle with a scanner ({len(body)} bytes of JSON): us per decision, same run")
    write = per_call_us(lambda: (decision.problems(stored), journal.JSON_ENCODER.encode(stored)), args.seconds)
    write_json = per_call_us(lambda: json.dumps(stored, separators=(",", ":")).encode(), args.seconds)
    read = per_call_us(lambda: decision.decode(body), args.seconds)
    untyped = per_call_us(lambda: msgspec.json.decode(body), args.seconds)
    read_json = per_call_us(lambda: json.loads(body), args.seconds)
    print(f"journal write: check+msgspec encode {write:8.1f}  json.dumps {write_json:7.1f}  {write_json / write:.1f}x")
    print(f"journal read:  msgspec decode {read:15.1f}  json.loads {read_json:7.1f}  {read_json / read:.1f}x")
    print(f"  (typed Decision; msgspec untyped {untyped:.1f}, {untyped / read:.1f}x the typed time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
