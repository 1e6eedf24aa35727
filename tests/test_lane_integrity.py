"""Every vehicle gets exactly one honest decision: the portal's own alarm is kept, partial data says so."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from support import Running
from test_service import _background, _collect, _config, _occupancy, _publisher

from benchmarks.kills import kill_run
from lanewatch.edge.bus.driver import RecordPublisher, load_driver
from lanewatch.edge.bus.records import Kind
from lanewatch.edge.commands import alerts
from lanewatch.edge.console.present import fielded_text, reasons
from lanewatch.edge.decisions.decision import decode

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


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = Running(_config(tmp_path))
    yield r
    r.close()


def _source_passes(
    pub: RecordPublisher, samples: int = 30, seed: int = 3, counter: int | None = 0, flags: tuple[str, ...] = ()
) -> None:
    """A vehicle with a strong source in the middle, ended by its GX line with ``counter`` (no GX when None);
    ``flags`` on its samples (``device_alarm``: the portal alarmed)."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) * 0.2
    excess = 200.0 / (1.0 + ((t - t[-1] / 2) * 2.0 / 2.0) ** 2)
    for e in excess:
        counts = rng.poisson(48.0 + e / 4, (4, 1)).astype(np.uint32)
        pub.emit(Kind.GAMMA_SCAN, dt_s=0.2, counts=counts, flags=flags)
    if counter is not None:
        pub.emit(Kind.OCCUPANCY_END, values={"device_occupancy": counter, "neutron_background_cps": 3.0})


def test_no_background_yet_is_incomplete_and_never_tested_against_itself(running: Running, ctx: zmq.Context) -> None:
    config = running.service.config
    pub = _publisher(ctx, config)
    pub.emit(Kind.NEUTRON_BACKGROUND, counts=np.full((4, 1), 3, np.uint32))  # idle seen, but no gamma background
    _source_passes(pub)
    _background(pub)
    _source_passes(pub, seed=4)
    first, second = _collect(ctx, config, 2)
    assert first["verdict"] == "INCOMPLETE" and first["incomplete"] == ["no-background"]
    assert first["end_reason"] == "gx"
    assert first["alarms"] and all(a["alarm"] is False and a["withheld"] == "no-background" for a in first["alarms"])
    assert first["baseline_verdict"] is None, "the fielded rule, too, is never evaluated against the vehicle itself"
    assert first["baseline"]["not_evaluated"] == "no-background" and first["baseline"]["max_sigma"] is None
    assert second["verdict"] == "ALARM" and second["incomplete"] == []
    assert second["baseline_verdict"] == "ALARM" and "not_evaluated" not in second["baseline"]
    shown = decode(json.dumps(first))
    assert fielded_text(shown).startswith("not evaluated: no background reading before the vehicle")
    head = alerts.header()
    assert alerts.format_row(shown)[head.index("FIELDED") :].split()[:2] == ["not", "eval."]


def test_the_portals_alarm_with_no_background_yet_says_lanewatch_could_not_test(
    running: Running, ctx: zmq.Context
) -> None:
    """The portal alarms on the first vehicle after start: lanewatch's reading beside it is that it had no
    background to test against (its gamma test's excess withheld), not "no significant excess"."""
    config = running.service.config
    pub = _publisher(ctx, config)
    pub.emit(Kind.NEUTRON_BACKGROUND, counts=np.full((4, 1), 3, np.uint32))  # idle seen, but no gamma background
    _source_passes(pub, flags=("device_alarm",))
    (first,) = _collect(ctx, config, 1)
    assert first["verdict"] == "ALARM" and first["incomplete"] == ["no-background"]
    device = next(a for a in first["alarms"] if a["reason"] == "device")
    assert device["lanewatch"] == "no-background" and device["confirmed_by"] == []
    assert any(a["reason"] == "gamma" and a["withheld"] == "no-background" for a in first["alarms"])
    said = reasons(decode(json.dumps(first)))
    assert "The portal's own alarm (gamma); lanewatch had no background before the vehicle to test against" in said
    assert not any("no significant excess" in r for r in said)


def test_an_occupancy_whose_start_was_not_seen_is_partial(running: Running, ctx: zmq.Context) -> None:
    config = running.service.config
    pub = _publisher(ctx, config)
    _background(pub)
    _occupancy(pub, 20)
    pub.emit(Kind.LINK, values={"up": False, "url": "socket://portal"})
    pub.emit(Kind.LINK, values={"up": True, "url": "socket://portal"})
    _occupancy(pub, 11, seed=5)  # the tail of a vehicle: the driver joined mid-vehicle
    _occupancy(pub, 20, seed=6)  # the next one began after a GX: its start was seen
    whole, tail, after = _collect(ctx, config, 3)
    assert (whole["verdict"], whole["incomplete"]) == ("CLEAR", [])
    assert (tail["verdict"], tail["incomplete"]) == ("INCOMPLETE", ["partial"])
    # the fielded rule on the part seen, against the portal's background as lanewatch's own tests
    assert tail["background"]["origin"] == "tracked" and tail["baseline_verdict"] == "CLEAR"
    assert tail["baseline"]["max_sigma"] is not None and "not_evaluated" not in tail["baseline"]
    assert (after["verdict"], after["incomplete"]) == ("CLEAR", [])


def test_a_vehicle_that_begins_after_the_link_came_up_quiet_is_whole(running: Running, ctx: zmq.Context) -> None:
    """Real TCP, driver and service: the portal's link drops between vehicles and comes back; the portal is quiet (no
    vehicle: it sends a gamma sample every 0.2 s while occupied) and the next vehicle arrives before its next
    background line. Its start was seen and the lane's background is known: decided whole, not ``partial``."""
    from test_rpm_driver import LineServer

    rng = np.random.default_rng(4)

    def line(kind: str, mean: float) -> bytes:
        return (kind + "," + ",".join(f"{c:06d}" for c in rng.poisson(mean, 4)) + "\r\n").encode()

    def link_up() -> float:
        return running.value("lanewatch_lane_link_up", lane="lane1")

    def wait(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30.0
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    config = running.service.config
    server = LineServer()
    driver = load_driver("rpm")(_publisher(ctx, config), server.url, backoff_max_s=0.2)
    stop = threading.Event()
    t = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    t.start()
    try:
        wait(lambda: link_up() == 1, "the driver's link never came up")
        server.serve([line("GB", 240.0) + line("NB", 1.0) for _ in range(6)])
        wait(lambda: running.value("lanewatch_gamma_background_cps", lane="lane1", channel="1") > 0, "no background")
        server.drop()
        wait(lambda: link_up() == 0, "the link never went down")
        server.listen()
        wait(lambda: link_up() == 1, "the driver never reconnected")
        time.sleep(1.5)  # the portal is idle: nothing to send
        vehicle = [line("GS", 46.0) for _ in range(30)] + [b"GX,000007,000000,000000,000000\r\n"]
        server.serve(vehicle)
        (decision,) = _collect(ctx, config, 1)
    finally:
        stop.set()
        t.join(5)
        server.drop()
    assert (decision["verdict"], decision["incomplete"], decision["samples"]) == ("CLEAR", [], 30)


def test_a_driver_joining_mid_vehicle_decides_the_tail_partial(
    running: Running, ctx: zmq.Context, shared_data: Path
) -> None:
    """The SRLS capture begins mid-occupancy, as a driver connecting to a running lane sees it."""
    config = running.service.config
    lines = (shared_data / "rpm" / "srls_auto_capture.txt").read_bytes().splitlines(keepends=True)
    port = _serve_paced(lines, [0] * len(lines))
    driver = load_driver("rpm")(_publisher(ctx, config), f"socket://127.0.0.1:{port}", backoff_max_s=0.2)
    stop = threading.Event()
    t = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    t.start()
    try:
        decisions = _collect(ctx, config, 7)
    finally:
        stop.set()
        t.join(5)
    assert "partial" in decisions[0]["incomplete"]
    assert decisions[0]["verdict"] == ("ALARM" if decisions[0]["device_alarm"] else "INCOMPLETE")
    assert all("partial" not in d["incomplete"] for d in decisions[1:])


def _vehicle(pub: RecordPublisher, samples: int, counter: int | None, seed: int = 7) -> None:
    """``samples`` benign gamma samples, then a GX with ``counter`` (none when None)."""
    rng = np.random.default_rng(seed)
    for _ in range(samples):
        pub.emit(Kind.GAMMA_SCAN, dt_s=0.2, counts=rng.poisson(48.0, (4, 1)).astype(np.uint32))
    if counter is not None:
        pub.emit(Kind.OCCUPANCY_END, values={"device_occupancy": counter, "neutron_background_cps": 3.0})


def _restarted(pub: RecordPublisher) -> RecordPublisher:
    """The same driver started again: a new run on the same bus, numbered from 0."""
    return RecordPublisher(pub.sock, pub.lane, pub.source, pub.metrics)


def test_a_jump_of_the_portal_counter_journals_the_missed_vehicles(running: Running, ctx: zmq.Context) -> None:
    config = running.service.config
    pub = _publisher(ctx, config)
    _background(pub)
    for counter in (11, 12, 15):  # 13 and 14 went by while their lines were lost
        _vehicle(pub, 15, counter)
    decisions = _collect(ctx, config, 5)
    assert [d["device_occupancy"] for d in decisions] == [11, 12, 13, 14, 15]
    assert [d["end_reason"] for d in decisions] == ["gx", "gx", "missed", "missed", "counter-jump"]
    assert [d["verdict"] for d in decisions] == ["CLEAR", "CLEAR", "INCOMPLETE", "INCOMPLETE", "INCOMPLETE"]
    assert decisions[2]["incomplete"] == ["missed"] and decisions[2]["samples"] == 0
    assert running.value("lanewatch_occupancies_missed_total", lane="lane1") == 2


def test_srls_zero_counters_are_not_trusted(running: Running, ctx: zmq.Context) -> None:
    config = running.service.config
    pub = _publisher(ctx, config)
    _background(pub)
    _vehicle(pub, 15, 0)
    _vehicle(pub, 15, 0)
    pub = _restarted(pub)
    _background(pub)
    _vehicle(pub, 15, 0)
    decisions = _collect(ctx, config, 3)
    assert [d["end_reason"] for d in decisions] == ["gx", "gx", "gx"]
    assert running.value("lanewatch_occupancies_missed_total", lane="lane1") == 0


def test_a_vehicle_cut_by_a_driver_restart_gets_one_decision(running: Running, ctx: zmq.Context) -> None:
    config = running.service.config
    pub = _publisher(ctx, config)
    _background(pub)
    _vehicle(pub, 15, 21)
    _vehicle(pub, 10, None)  # the driver dies mid-vehicle ...
    pub = _restarted(pub)
    _vehicle(pub, 8, 22)  # ... and comes back for its tail
    _vehicle(pub, 10, None, seed=8)  # dies again
    pub = _restarted(pub)
    _vehicle(pub, 9, 25, seed=9)  # and comes back two vehicles later, mid-vehicle
    _background(pub)
    first, joined, head, missed, tail = _collect(ctx, config, 5)
    assert (first["end_reason"], first["verdict"]) == ("gx", "CLEAR")
    assert joined["device_occupancy"] == 22 and joined["samples"] == 18 and joined["counter_inferred"] is False
    assert joined["verdict"] == "INCOMPLETE" and {"driver-restart", "partial"} <= set(joined["incomplete"])
    assert (head["device_occupancy"], head["counter_inferred"], head["end_reason"]) == (23, True, "driver-restart")
    assert (missed["device_occupancy"], missed["end_reason"]) == (24, "missed")
    assert (tail["device_occupancy"], tail["incomplete"], tail["end_reason"]) == (25, ["partial"], "gx")


def test_a_vehicle_seen_in_two_pieces_keeps_the_fielded_alarm_of_its_head(running: Running, ctx: zmq.Context) -> None:
    """The source passed before the driver died: the one decision of the vehicle keeps the fielded rule's ALARM of its
    head, not the CLEAR of its tail alone."""
    config = running.service.config
    pub = _publisher(ctx, config)
    _background(pub)
    _vehicle(pub, 15, 31)
    _source_passes(pub, counter=None)  # the driver dies after the source went by ...
    pub = _restarted(pub)
    _vehicle(pub, 8, 32)  # ... and comes back for the vehicle's tail
    _background(pub)
    first, joined = _collect(ctx, config, 2)
    assert first["baseline_verdict"] == "CLEAR"
    assert joined["device_occupancy"] == 32 and "partial" in joined["incomplete"]
    assert any(a["part"] == "head" and a["reason"] == "gamma" for a in joined["alarms"])
    assert joined["baseline_verdict"] == "ALARM" and joined["baseline"]["max_sigma"] > joined["baseline"]["n_sigma"]


def test_a_lost_link_ends_the_occupancy(running: Running, ctx: zmq.Context) -> None:
    config = running.service.config
    pub = _publisher(ctx, config)
    _background(pub)
    _vehicle(pub, 12, None)
    pub.emit(Kind.LINK, values={"up": False, "url": "socket://portal"})
    decisions = _collect(ctx, config, 1)
    assert (decisions[0]["end_reason"], decisions[0]["verdict"]) == ("link-lost", "INCOMPLETE")


@pytest.mark.slow
def test_kills_of_the_driver_and_the_service_lose_and_merge_no_vehicle() -> None:
    """Real processes, seeded, against the simulator's truth (benchmarks/kills.py runs the full count)."""
    run = kill_run(vehicles=30, driver_kills=3, service_kills=3, speedup=8.0, seed=11, timeout_s=300.0)
    assert run.vehicles == 30
    assert (run.lost, run.duplicated, run.merged, run.unmatched) == (0, 0, 0, 0), run
    assert run.decided_once == 30 and run.seq_contiguous and run.integrity == "ok", run
    assert run.decisions == 30
    assert set(run.reasons) <= {"missed", "partial", "no-background", "driver-restart", "counter-jump"}, run
