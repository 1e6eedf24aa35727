"""Every vehicle gets exactly one honest decision: the portal's own alarm is kept, partial data says so."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from support import Running
from test_service import _collect, _config, _publisher

from lanewatch.edge.bus.driver import load_driver

SPEEDUP = 10.0
"""Time compression of the paced SRLS replays."""


def _serve_paced(lines: list[bytes], times_ms: list[int], speedup: float = SPEEDUP) -> int:
    """A TCP server on loopback that sends ``lines`` to its first client at ``times_ms`` / ``speedup``."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        with srv:
            conn, _ = srv.accept()
            with conn, contextlib.suppress(OSError):  # the client may leave once it has what it needs
                time.sleep(0.5)  # pyserial discards input that arrives while it is still opening the port
                t0 = time.monotonic()
                for line, t_ms in zip(lines, times_ms, strict=True):
                    delay = t0 + t_ms / 1000.0 / speedup - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    conn.sendall(line)
                time.sleep(0.5)

    threading.Thread(target=serve, daemon=True).start()
    return port


def _srls_alarms(shared_data: Path) -> tuple[list[bytes], list[int]]:
    raw = (shared_data / "rpm" / "srls_auto_alarms.txt").read_bytes()
    lines = raw.splitlines(keepends=True)
    times = [int(t) for t in (shared_data / "rpm" / "srls_auto_alarms.times").read_text().split()]
    assert len(lines) == len(times)
    return lines, times


def _flags_per_occupancy(lines: list[bytes]) -> list[tuple[bool, bool]]:
    """(GA seen, NA seen) for each occupancy ending in a GX line."""
    out, gamma, neutron = [], False, False
    for line in lines:
        gamma |= line.startswith(b"GA,")
        neutron |= line.startswith(b"NA,")
        if line.startswith(b"GX,"):
            out.append((gamma, neutron))
            gamma = neutron = False
    return out


@pytest.fixture
def srls_running(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    r = Running(_config(tmp_path, getattr(request, "param", "")))
    yield r
    r.close()


def _replay_srls(
    running: Running, ctx: zmq.Context, shared_data: Path, speedup: float = SPEEDUP
) -> tuple[list[dict], list[tuple[bool, bool]]]:
    config = running.service.config
    lines, times = _srls_alarms(shared_data)
    flags = _flags_per_occupancy(lines)
    port = _serve_paced(lines, times, speedup)
    driver = load_driver("rpm")(_publisher(ctx, config), f"socket://127.0.0.1:{port}", backoff_max_s=0.2)
    stop = threading.Event()
    t = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    t.start()
    try:
        decisions = _collect(ctx, config, len(flags), timeout_s=times[-1] / 1000.0 / speedup + 60.0)
    finally:
        stop.set()
        t.join(5)
    return decisions, flags


def test_every_portal_alarm_of_the_srls_capture_is_shown_and_alarms(
    srls_running: Running, ctx: zmq.Context, shared_data: Path
) -> None:
    decisions, flags = _replay_srls(srls_running, ctx, shared_data)
    assert len(decisions) == len(flags) == 21
    assert sum(g or n for g, n in flags) == 10
    for d, (gamma, neutron) in zip(decisions, flags, strict=True):
        device = [a for a in d["alarms"] if a["reason"] == "device"]
        assert d["device_alarm"] == (gamma or neutron)
        if not (gamma or neutron):
            assert device == []
            continue
        assert d["verdict"] == "ALARM", d
        assert len(device) == 1 and device[0]["alarm"] is True
        assert (device[0]["gamma"], device[0]["neutron"]) == (gamma, neutron)
        own = sorted({a["reason"] for a in d["alarms"] if a.get("alarm") and a["reason"] != "device"})
        assert device[0]["confirmed_by"] == own
        assert device[0]["lanewatch"] == ("alarm" if own else device[0]["lanewatch"])
        assert device[0]["lanewatch"] in ("alarm", "norm-consistent", "not-significant")


@pytest.mark.parametrize("srls_running", ['device_alarm = "report"'], indirect=True)
def test_device_alarm_report_shows_the_portal_alarm_without_alarming(
    srls_running: Running, ctx: zmq.Context, shared_data: Path
) -> None:
    decisions, flags = _replay_srls(srls_running, ctx, shared_data, speedup=4 * SPEEDUP)
    assert len(decisions) == 21
    for d, (gamma, neutron) in zip(decisions, flags, strict=True):
        device = [a for a in d["alarms"] if a["reason"] == "device"]
        assert len(device) == (1 if gamma or neutron else 0)
        assert all(a["alarm"] is False for a in device)
        own = any(a.get("alarm") for a in d["alarms"])
        assert (d["verdict"] == "ALARM") == own
