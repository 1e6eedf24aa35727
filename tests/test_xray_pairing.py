"""X-ray pairing: a scan goes only to the occupancy it overlaps, and pairing recovers after the X-ray driver dies."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq
from support import Running, service_toml
from test_service import _publisher

from lanewatch.drivers.sim.lane import LaneSimulator
from lanewatch.drivers.sim.xray import XraySimulator
from lanewatch.edge.bus.driver import load_driver
from lanewatch.edge.config import parse

VEHICLES = 300
KILL_EVERY = 50
SPEEDUP = 15.0
SEED = 5
TOLERANCE_S = 2.8 / SPEEDUP
"""0.7 of the 4 s gap between vehicles, compressed: the next vehicle's scan starts within two tolerances of an
occupancy's end (a pairing that widened both spans would take it) but not within one."""
STARTUP_S = 60.0


def _config_text(tmp_path: Path, xray_port: int) -> str:
    return (
        service_toml(tmp_path / "journal.db")
        + f"""
        [fusion]
        scan_wait_s = 2.0
        match_tolerance_s = {TOLERANCE_S}
        [model]
        path = ""
        [[lanes]]
        id = "lane1"
        xray = "127.0.0.1:{xray_port}"
    """
    )


def _xray_driver(config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    args = ["driver", "xray", "--config", str(config_path), "--lane", "lane1", "--backoff-max", "0.1"]
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen([sys.executable, "-m", "lanewatch.edge", *args, "--batch-ms", "10"], stdout=out, stderr=out)


def _wait(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_killed_xray_driver_never_lends_one_vehicle_another_vehicles_scan(tmp_path: Path, ctx: zmq.Context) -> None:
    lane_sim = LaneSimulator(seed=SEED, speedup=SPEEDUP, count=VEHICLES)
    xray_sim = XraySimulator(seed=SEED, speedup=SPEEDUP, count=VEHICLES, pixels=32, lane="lane1")
    rpm_port, xray_port = lane_sim.serve_tcp(), xray_sim.serve_tcp()
    config_path = tmp_path / "lanewatch.toml"
    config_path.write_text(_config_text(tmp_path, xray_port))
    config = parse(config_path.read_text(), str(config_path))
    running = Running(config)
    stop = threading.Event()
    xray = _xray_driver(config_path, tmp_path / "xray.log")
    try:
        rpm = load_driver("rpm")(_publisher(ctx, config), f"socket://127.0.0.1:{rpm_port}", backoff_max_s=0.1)
        threading.Thread(target=rpm.run, args=(stop,), daemon=True).start()
        _wait(lambda: lane_sim.clients() and xray_sim.clients(), STARTUP_S)
        time.sleep(0.5)  # pyserial discards what arrives while it opens the port
        lane_sim.start()
        xray_sim.start()
        kills = []
        for k in range(KILL_EVERY, VEHICLES, KILL_EVERY):
            _wait(lambda k=k: xray_sim.scans_sent >= k, 600.0)
            xray.send_signal(signal.SIGKILL)
            xray.wait(10)
            kills.append(lane_sim.occupancies_sent)
            xray = _xray_driver(config_path, tmp_path / "xray.log")
        _wait(lambda: lane_sim.occupancies_sent >= VEHICLES, 600.0)
        journal = running.service.journal
        _wait(lambda: sum(d.end_reason != "no-occupancy" for d in journal.since(0, 100_000)) >= VEHICLES, 60.0)
        time.sleep(2 * config.fusion.scan_wait_s)  # a scan left over would be journaled on its own by now
        decisions = [json.loads(raw) for raw in journal.since_json(0, 100_000)]
    finally:
        stop.set()
        xray.send_signal(signal.SIGKILL)
        xray.wait(10)
        lane_sim.stop()
        xray_sim.stop()
        running.close()
    occupancies = [d for d in decisions if d["end_reason"] != "no-occupancy"]
    lone = [d["xray"]["scan_id"] for d in decisions if d["end_reason"] == "no-occupancy"]
    assert len(occupancies) == VEHICLES
    assert sorted(d["device_occupancy"] for d in occupancies) == list(range(1, VEHICLES + 1))
    affected = []
    for d in occupancies:
        scan = d["xray"]
        if scan.get("scan_id") is not None:  # the simulators number a vehicle's scan as its occupancy
            assert scan["scan_id"] == d["device_occupancy"], (d["device_occupancy"], scan)
        if scan["status"] != "complete":
            assert scan["status"] in ("missing", "incomplete")
            affected.append(d["device_occupancy"])
    assert affected, "the kills left every scan whole"
    # a scan that came without its occupancy's decision still waiting is journaled on its own, never lent
    assert all(scan_id not in [d["xray"].get("scan_id") for d in occupancies] for scan_id in lone)
    # pairing recovers: every vehicle that passed well after a restart has its own, whole scan
    for killed_at in kills:
        later = [d for d in occupancies if killed_at + 15 <= d["device_occupancy"] < killed_at + KILL_EVERY - 5]
        assert all(d["xray"]["status"] == "complete" for d in later), [
            (d["device_occupancy"], d["xray"]["status"], d["xray"].get("end_reason")) for d in later
        ]
