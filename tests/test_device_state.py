"""Level-triggered device state: drivers' STATUS records, the lane's link as the service knows it, /healthz."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import zmq
from prometheus_client import CollectorRegistry
from support import TIMEOUT_S, Running, free_port

from lanewatch.edge.bus import ingest
from lanewatch.edge.bus.driver import RecordPublisher
from lanewatch.edge.bus.records import Kind, Record, StatusValues
from lanewatch.edge.config import Config, DetectionConfig, LaneConfig, parse
from lanewatch.edge.console.live import read_health
from lanewatch.edge.lane.devices import UNKNOWN_AFTER_S, LinkState
from lanewatch.edge.lane.occupancy import Lane
from lanewatch.edge.ops import status
from lanewatch.edge.ops.metrics import DriverMetrics, ServiceMetrics
from lanewatch.edge.service import JOIN_GRACE_S

S = 1_000_000_000


def _status(source: str, seq: int, up: bool) -> Record:
    values = StatusValues(link_up=up, last_line_age_s=0.5, lines=seq, published=seq)
    return Record(Kind.STATUS, "lane1", source, seq, time.time_ns(), time.monotonic_ns(), values=values, run_id="ab")


def test_lane_link_follows_status_and_goes_unknown_then_stale_when_it_stops() -> None:
    registry = CollectorRegistry()
    lane = Lane(LaneConfig(id="lane1"), DetectionConfig(), ServiceMetrics(registry), stale_after_s=10.0)

    def state(now_ns: int) -> tuple[LinkState, float, float]:
        lane.on_tick(now_ns)
        return (
            lane.link_state,
            registry.get_sample_value("lanewatch_lane_link_up", {"lane": "lane1"}),
            registry.get_sample_value("lanewatch_lane_link_state", {"lane": "lane1", "state": lane.link_state.value}),
        )

    assert state(0) == (LinkState.UNKNOWN, 0.0, 1.0)
    assert lane.devices.state(0)[1] == ["no status from the RPM driver yet"]
    lane.on_record(_status("rpm", 7, up=True), 1 * S)
    assert state(1 * S) == (LinkState.UP, 1.0, 1.0) and lane.link_up is True
    rpm = lane.devices.sensor_states(1 * S)[0]
    assert rpm.age_s is None and not rpm.fresh, "a status record is no sample: it must not make the RPM fresh"
    lane.on_record(_status("rpm", 8, up=False), 2 * S)
    assert state(2 * S)[:2] == (LinkState.DOWN, 0.0) and lane.link_up is False
    lane.on_record(_status("rpm", 9, up=True), 3 * S)
    assert state(3 * S + int(UNKNOWN_AFTER_S * S) - 1)[:2] == (LinkState.UP, 1.0)
    assert state(3 * S + int(UNKNOWN_AFTER_S * S) + 1)[:2] == (LinkState.UNKNOWN, 0.0) and lane.link_up is None
    assert state(14 * S)[:2] == (LinkState.STALE, 0.0)
    assert lane.devices.state(14 * S)[1] == ["rpm driver: no status for 11.0 s (stale)"]
    # A LINK edge counts as word from the driver too; a second source that is down makes the lane down.
    lane.on_record(Record(Kind.LINK, "lane1", "rpm", 10, 0, 0, values={"up": True}), 15 * S)
    lane.on_record(_status("xray", 0, up=False), 15 * S)
    assert state(15 * S)[0] == LinkState.DOWN
    assert lane.devices.state(15 * S)[1] == ["xray driver: device link down"]


def service_config(tmp_path: Path, service: str = "", lane: str = "") -> Config:
    """A service of one lane (lane1) on free loopback ports, journal in ``tmp_path``; ``service`` and ``lane`` are
    extra lines of its [service] and [[lanes]] sections."""
    ports = [free_port() for _ in range(4)]
    text = f"""
        [service]
        journal = "{tmp_path / "journal.db"}"
        http = "127.0.0.1:{ports[3]}"
        {service}
        [bus]
        plaintext = true
        ingest = "tcp://127.0.0.1:{ports[0]}"
        alerts = "tcp://127.0.0.1:{ports[1]}"
        query = "tcp://127.0.0.1:{ports[2]}"
        [[lanes]]
        id = "lane1"
        {lane}
    """
    return parse(text, str(tmp_path / "lanewatch.toml"))


def test_the_service_learns_the_link_from_status_and_reports_silence(tmp_path: Path, ctx: zmq.Context) -> None:
    """No LINK edge at all: the status alone sets the link; when it stops, /healthz is not ok and says why."""
    running = Running(service_config(tmp_path))
    try:
        health = running.service.health
        assert health()["lanes"]["lane1"]["link"] == "unknown" and not health()["ok"]
        sock = ingest.driver_publisher(ctx, running.service.config.bus.ingest)
        assert ingest.wait_for_subscriber(sock, TIMEOUT_S)
        metrics = DriverMetrics(CollectorRegistry())
        publisher = RecordPublisher(sock, "lane1", "rpm", metrics)
        metrics.connected.labels("lane1").set(1)
        publisher.emit_status()
        publisher.emit(Kind.GAMMA_BACKGROUND, dt_s=1.0, counts=np.full((4, 1), 100.0))
        _wait(lambda: health()["ok"], "the lane up and fresh")
        lane = health()["lanes"]["lane1"]
        assert lane["link"] == "up" and lane["link_up"] is True and lane["link_problems"] == []
        assert running.value("lanewatch_lane_link_up", lane="lane1") == 1

        _wait(lambda: health()["lanes"]["lane1"]["link"] == "unknown", "the link unknown once the status stops")
        lane = health()["lanes"]["lane1"]
        assert not health()["ok"] and lane["link_up"] is None
        assert lane["link_problems"][0].startswith("rpm driver: no status for ")
        _wait(lambda: running.value("lanewatch_lane_link_state", lane="lane1", state="unknown") == 1, "the gauge")
        assert running.value("lanewatch_lane_link_up", lane="lane1") == 0

        # A source that first appears after the start-up grace with seq 3 and keeps nothing to replay: records 0-2
        # were lost, and counted once the service gave up waiting for them.
        _wait(lambda: time.monotonic() - running.service._started_mono > JOIN_GRACE_S, "the start-up grace")
        late = RecordPublisher(sock, "lane1", "xray", DriverMetrics(CollectorRegistry()))
        late.seq = 3
        late.emit_status()
        missed = lambda: running.value("lanewatch_bus_records_missed_total", lane="lane1", source="xray")  # noqa: E731
        _wait(lambda: missed() > 0, "the gap counted")
        assert missed() == 3 and running.value("lanewatch_bus_sequence_gaps_total", lane="lane1", source="xray") == 1
        assert running.value("lanewatch_bus_records_missed_total", lane="lane1", source="rpm") == 0
    finally:
        running.close()


def test_each_sensor_is_judged_by_its_own_drivers_records(tmp_path: Path, ctx: zmq.Context) -> None:
    """A lane with a portal (RPM) and a scanner: the RPM driver dies while the X-ray driver goes on talking. The RPM
    is then stale, in words and with its age, in /healthz, the metrics, ``lanewatch status`` and the console's wall,
    and the lane is not fresh; the X-ray stays up and fresh."""
    config = service_config(tmp_path, service="stale_after_s = 4.0", lane=f'xray = "127.0.0.1:{free_port()}"')
    running = Running(config)
    rpm_alive, done = threading.Event(), threading.Event()
    rpm_alive.set()
    sock = ingest.driver_publisher(ctx, config.bus.ingest)

    def drivers() -> None:  # one thread: a ZeroMQ socket is not shared between threads
        rpm = RecordPublisher(sock, "lane1", "rpm", DriverMetrics(CollectorRegistry()))
        xray = RecordPublisher(sock, "lane1", "xray", DriverMetrics(CollectorRegistry()))
        for publisher in (rpm, xray):
            publisher.metrics.connected.labels("lane1").set(1)
        while not done.wait(0.3):
            if rpm_alive.is_set():
                rpm.emit_status()
                rpm.emit(Kind.GAMMA_BACKGROUND, dt_s=1.0, counts=np.full((4, 1), 100.0))
            xray.emit_status()  # the scanner is idle; its driver still speaks, and says its link is up
            xray.emit(Kind.LINK, values={"up": True, "url": "tcp://scanner"})

    thread = threading.Thread(target=drivers, daemon=True)
    try:
        assert ingest.wait_for_subscriber(sock, TIMEOUT_S)
        thread.start()
        health = running.service.health
        _wait(lambda: health()["ok"], "both sensors up and fresh")
        sensors = health()["lanes"]["lane1"]["sensors"]
        assert sensors["rpm"]["fresh"] and sensors["xray"]["fresh"] and sensors["rpm"]["problem"] == ""
        for sensor in ("rpm", "xray"):
            assert running.value("lanewatch_lane_last_record_timestamp_seconds", lane="lane1", sensor=sensor) > 0

        rpm_alive.clear()  # the RPM driver is killed
        _wait(lambda: not health()["lanes"]["lane1"]["sensors"]["rpm"]["fresh"], "the RPM stale")
        lane = health()["lanes"]["lane1"]
        rpm, xray = lane["sensors"]["rpm"], lane["sensors"]["xray"]
        assert not health()["ok"] and not lane["fresh"] and lane["last_record_age_s"] > 4.0
        assert re.fullmatch(r"no data for \d+ s", rpm["problem"]), rpm
        assert rpm["link"] == "stale" and rpm["link_problems"][0].startswith("rpm driver: no status for ")
        assert xray["fresh"] and xray["link"] == "up" and xray["problem"] == "" and xray["last_record_age_s"] < 4.0
        _wait(lambda: running.value("lanewatch_sensor_link_state", lane="lane1", sensor="rpm", state="stale"), "gauge")
        assert running.value("lanewatch_sensor_link_state", lane="lane1", sensor="xray", state="up") == 1

        report = status.check(config, TIMEOUT_S)
        assert report["exit"] == status.EXIT_UNHEALTHY
        assert any(re.match(r"RPM no data for \d+ s at the service", p) for p in report["lanes"]["lane1"]["problems"])
        row = r"^lane1\s+\?\s+NO DATA FOR \d+ s\s+no\s+-\s+connected, fresh"
        assert re.search(row, status.format_report(report), re.M)

        tile = read_health(config).lanes["lane1"].sensors
        assert [s.name for s in tile] == ["RPM", "X-ray"]
        assert re.fullmatch(r"no data for \d+ s", tile[0].words) and not tile[0].ok, tile[0]
        assert tile[1].ok and tile[1].words == "" and tile[1].fresh, tile[1]
    finally:
        done.set()
        thread.join(10)
        running.close()


def test_publish_drops_counts_what_a_full_queue_refuses(ctx: zmq.Context) -> None:
    """XPUB_NODROP: a service that does not read fills the queue; each refused record is counted and spends a seq."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 4)
    sub.setsockopt(zmq.RCVBUF, 65536)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.bind(endpoint)
    sock = ingest.driver_publisher(ctx, endpoint, sndhwm=4)
    deadline = time.monotonic() + TIMEOUT_S
    while not ingest.wait_for_subscriber(sock, 0.02):  # a bound SUB attaches a peer only when used
        assert sub.poll(0) == 0 and time.monotonic() < deadline, "the SUB never subscribed"
    registry = CollectorRegistry()
    publisher = RecordPublisher(sock, "lane1", "rpm", DriverMetrics(registry))
    counts = np.zeros((64, 1024), dtype=np.uint32)  # 256 KiB a record: the socket buffers fill within a few
    sent = 0
    while (registry.get_sample_value("lanewatch_driver_publish_drops_total", {"lane": "lane1"}) or 0) < 10:
        assert sent < 10_000, "the full queue never refused a record"
        publisher.emit(Kind.GAMMA_SCAN, dt_s=0.2, counts=counts)
        sent += 1
    published = registry.get_sample_value("lanewatch_driver_records_published_total", {"lane": "lane1"})
    assert published + 10 == sent == publisher.seq


def _wait(check: object, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
