"""The service end to end over real sockets: driver -> bus -> lane -> kernels -> journal -> subscriber."""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry
from support import Running, service_toml

from lanewatch.edge.bus import ingest
from lanewatch.edge.bus.driver import RecordPublisher, load_driver
from lanewatch.edge.bus.records import Kind, Record
from lanewatch.edge.config import Config, parse
from lanewatch.edge.decisions.decision import Decision, ProvisionalAlarm
from lanewatch.edge.decisions.journal import Journal
from lanewatch.edge.decisions.subscriber import AlertSubscriber
from lanewatch.edge.lane.occupancy import Decided
from lanewatch.edge.ops.metrics import DriverMetrics
from lanewatch.edge.service import SWITCH_INTERVAL_S, shed


def _config(tmp_path: Path, extra: str = "") -> Config:
    text = (
        service_toml(tmp_path / "journal.db")
        + f"""
        [detection]
        sample_timeout_s = 1.0
        {extra}
        [[lanes]]
        id = "lane1"
    """
    )
    path = tmp_path / "lanewatch.toml"
    path.write_text(text)
    return parse(text, str(path))


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = Running(_config(tmp_path))
    yield r
    r.close()


def _publisher(ctx: zmq.Context, config: Config, source: str = "rpm", wait_s: float = 5.0) -> RecordPublisher:
    sock = ingest.driver_publisher(ctx, config.bus.ingest)
    assert ingest.wait_for_subscriber(sock, wait_s), "the service did not subscribe"
    return RecordPublisher(sock, "lane1", source, DriverMetrics(CollectorRegistry()))


def _collect(ctx: zmq.Context, config: Config, count: int, since: int = 0, timeout_s: float = 30.0) -> list[dict]:
    sub = AlertSubscriber(ctx, config.bus.alerts, config.bus.query, since=since, connect_timeout_s=timeout_s)
    got: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        for item in sub.decisions(follow=True, timeout_s=0.5):
            if item is not None:
                got.append(json.loads(sub.journaled))  # as published
            if len(got) >= count or time.monotonic() > deadline:
                break
    finally:
        sub.close()
    return got


def _serve_once(payload: bytes) -> int:
    """A TCP server on loopback that sends ``payload`` to its first client, then closes."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        with srv:
            conn, _ = srv.accept()
            with conn:
                time.sleep(0.5)  # pyserial discards input that arrives while it is still opening the port
                for i in range(0, len(payload), 997):
                    conn.sendall(payload[i : i + 997])
                    time.sleep(0.0005)
                time.sleep(0.5)

    threading.Thread(target=serve, daemon=True).start()
    return port


def test_srls_capture_gives_one_decision_per_gx(running: Running, ctx: zmq.Context, shared_data: Path) -> None:
    config = running.service.config
    payload = (shared_data / "rpm" / "srls_auto_capture.txt").read_bytes()
    port = _serve_once(payload)
    rpm = load_driver("rpm")
    driver = rpm(_publisher(ctx, config), f"socket://127.0.0.1:{port}", backoff_max_s=0.2)
    stop = threading.Event()
    t = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    t.start()
    decisions = _collect(ctx, config, 7)
    stop.set()
    t.join(5)
    assert len(decisions) == 7
    assert [d["seq"] for d in decisions] == sorted({d["seq"] for d in decisions})
    assert all(d["device_occupancy"] == 0 for d in decisions)  # SRLS auto mode: counter always 0
    assert len({d["occupancy_id"] for d in decisions}) == 7
    assert all(d["verdict"] in ("CLEAR", "ALARM") and d["end_reason"] == "gx" for d in decisions)
    # SRLS raises its gamma alarms (GA lines) with a strong excess: lanewatch's own gamma test alarms on
    # exactly those occupancies. Its neutron alarm flags (NA) come with background-level counts: lanewatch
    # does not confirm them, and the portal's alarm stands as the ``device`` entry.
    occupancies = payload.decode().split("GX,")
    gamma_flagged = ["\nGA," in "\n" + occ for occ in occupancies[:7]]
    flagged = ["\nGA," in "\n" + occ or "\nNA," in "\n" + occ for occ in occupancies[:7]]
    assert gamma_flagged.count(True) == 3
    assert [d["verdict"] == "ALARM" for d in decisions] == flagged
    # The capture begins in the middle of its first occupancy, with no background yet: 5 s of counts whose
    # start was not seen cannot tell a source from the vehicle's own shadow, so there the portal's alarm stands
    # alone; on every occupancy seen whole, lanewatch's gamma test agrees with the portal's.
    assert [any(a["reason"] == "gamma" for a in d["alarms"]) for d in decisions[1:]] == gamma_flagged[1:]
    assert all(a["reason"] in ("gamma", "device") for d in decisions for a in d["alarms"])
    assert running.value("lanewatch_decisions_total", lane="lane1", verdict="ALARM") == sum(
        d["verdict"] == "ALARM" for d in decisions
    )
    for d in decisions:
        assert len(d["profile"]["gross"]) == d["samples"] - len(d["profile"].get("neutron", []))
        assert d["start"] < d["end"] or d["start"] == d["end"]


def _occupancy(pub: RecordPublisher, samples: int, rate: float = 48.0, gx: bool = True, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(samples):
        pub.emit(Kind.GAMMA_SCAN, dt_s=0.2, counts=rng.poisson(rate, (4, 1)).astype(np.uint32))
    if gx:
        pub.emit(Kind.OCCUPANCY_END, values={"device_occupancy": 42, "neutron_background_cps": 3.0})


def _background(pub: RecordPublisher, seed: int = 2, count: int = 12) -> None:
    """``count`` 1 s background readings (cps), stamped 5 s apart in the past as an idle portal sends them."""
    rng = np.random.default_rng(seed)
    start_ns = time.monotonic_ns() - count * 5_000_000_000
    for i in range(count):
        t = start_ns + i * 5_000_000_000
        pub.emit(Kind.GAMMA_BACKGROUND, t_mono_ns=t, counts=rng.poisson(240.0, (4, 1)).astype(np.uint32))
        pub.emit(Kind.NEUTRON_BACKGROUND, t_mono_ns=t, counts=rng.poisson(3.0, (4, 1)).astype(np.uint32))


def test_timeout_gives_incomplete_and_anomalies_are_counted(running: Running, ctx: zmq.Context) -> None:
    config = running.service.config
    pub = _publisher(ctx, config)
    _background(pub)
    pub.emit(Kind.OCCUPANCY_END, values={"device_occupancy": 1})  # GX while idle: a duplicate end
    _occupancy(pub, 20, gx=False)  # samples stop: stalled after sample_timeout_s
    decisions = _collect(ctx, config, 1)
    assert decisions[0]["verdict"] == "INCOMPLETE"
    assert decisions[0]["end_reason"] == "stalled"
    assert running.value("lanewatch_lane_anomalies_total", lane="lane1", kind="duplicate-end") == 1
    assert running.value("lanewatch_occupancies_total", lane="lane1", end="stalled") == 1


def test_bad_bus_input_is_counted_and_the_service_goes_on(running: Running, ctx: zmq.Context) -> None:
    config = running.service.config
    raw = ingest.driver_publisher(ctx, config.bus.ingest)
    assert ingest.wait_for_subscriber(raw, 5.0)
    raw.send_multipart([b"rpm/lane1", b"\x00garbage"])
    raw.send_multipart([b"junk"])
    raw.send_multipart([b"rpm/lane9", b'{"v": 1, "kind": "nope"}'])
    pub = _publisher(ctx, config)
    pub.emit(Kind.GAMMA_SCAN, dt_s=0.2, counts=np.zeros((4, 1), np.uint32))
    pub.seq += 5  # five records lost on the way
    _occupancy(pub, 10)
    decisions = _collect(ctx, config, 1)
    # decided, and honestly: no background line and no idle line seen before it
    assert decisions[0]["verdict"] == "INCOMPLETE"
    assert decisions[0]["incomplete"] == ["partial", "no-background"]
    assert (decisions[0]["baseline_verdict"], decisions[0]["baseline"]["not_evaluated"]) == (None, "no-background")
    assert running.value("lanewatch_bus_decode_errors_total", kind="header") == 1
    assert running.value("lanewatch_bus_decode_errors_total", kind="frames") == 1
    assert running.value("lanewatch_bus_decode_errors_total", kind="field") == 1
    assert running.value("lanewatch_bus_records_missed_total", lane="lane1", source="rpm") == 5
    assert running.value("lanewatch_bus_sequence_gaps_total", lane="lane1", source="rpm") == 1


def test_strong_source_alarms_mid_passage_and_is_located(running: Running, ctx: zmq.Context) -> None:
    config = running.service.config
    pub = _publisher(ctx, config)
    _background(pub)
    sub = AlertSubscriber(ctx, config.bus.alerts, config.bus.query, since=None)
    stream = sub.decisions(follow=True, timeout_s=0.2, provisional=True)
    assert next(stream) is None  # following live now: what comes next arrives in bus order
    rng = np.random.default_rng(5)
    pub.emit(Kind.SPEED, values={"speed_kmh": 7.2, "speed_mph": 4.47, "crossing_s": 0.15})
    t = np.arange(60) * 0.2
    excess = 120.0 / (1.0 + ((t - 6.0) * 2.0 / 2.0) ** 2)  # 2 m/s, source 12 m from the front
    for e in excess:
        pub.emit(Kind.GAMMA_SCAN, dt_s=0.2, counts=rng.poisson(48.0 + e / 4, (4, 1)).astype(np.uint32))
    pub.emit(Kind.OCCUPANCY_END, values={"device_occupancy": 7})
    provisional: list[ProvisionalAlarm] = []
    final: list[Decision] = []
    deadline = time.monotonic() + 30
    for item in stream:
        if isinstance(item, ProvisionalAlarm):
            provisional.append(item)
        elif isinstance(item, Decision):
            final.append(item)
        if final or time.monotonic() > deadline:
            break
    sub.close()
    assert provisional and provisional[0].reason == "gamma"
    assert final[0].verdict == "ALARM"
    gamma = next(a for a in final[0].alarms if a.reason == "gamma")
    assert gamma.statistic is not None and gamma.threshold is not None and gamma.statistic > gamma.threshold
    assert gamma.location_m is not None and abs(gamma.location_m - 12.0) < 3.0
    assert final[0].baseline_verdict == "ALARM"


STARTUP_S = 120.0
"""Longest a service process may take to start (it compiles its kernels unless they are cached)."""


def _lanewatch(*args: str, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen([sys.executable, "-m", "lanewatch.edge", *args], stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sigkill_mid_stream_loses_no_journaled_decision(tmp_path: Path, ctx: zmq.Context) -> None:
    config = _config(tmp_path)
    cfg_path = Path(config.source)
    service = _lanewatch("run", "--config", str(cfg_path), log=tmp_path / "service.log")
    try:
        pub = _publisher(ctx, config, wait_s=STARTUP_S)
        _background(pub)
        for i in range(5):
            _occupancy(pub, 10, seed=i)
        before = _collect(ctx, config, 5)
        assert len(before) == 5
        _occupancy(pub, 10, gx=False, seed=9)  # mid-occupancy when killed
        service.send_signal(signal.SIGKILL)
        service.wait(10)
        with Journal(config.service.journal) as journal:
            stored = journal.since(0)
        assert [d.seq for d in stored] == [d["seq"] for d in before]
        service = _lanewatch("run", "--config", str(cfg_path), log=tmp_path / "service.log")
        pub2 = _publisher(ctx, config, wait_s=STARTUP_S)
        _background(pub2)
        _occupancy(pub2, 10, seed=11)
        # a subscriber that starts late, from 0, sees the old and the new ones, in order, without gaps
        after = _collect(ctx, config, 6, since=0)
        seqs = [d["seq"] for d in after]
        assert seqs[:5] == [d["seq"] for d in before]
        assert len(seqs) == 6 and seqs[5] > seqs[4]
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            service.wait(20)
    assert service.returncode == 0, (tmp_path / "service.log").read_text()[-2000:]
    assert os.path.exists(config.service.journal)


def test_a_bug_in_one_lane_ends_its_occupancy_incomplete_and_the_other_lanes_go_on(
    tmp_path: Path, ctx: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault injection: lane1's record handler raises on speed records. Its open occupancy is decided INCOMPLETE
    (end reason error), the bug is counted each time and its traceback logged once; lane2, mid-passage at the same
    moment, is decided as if nothing happened, and lane1 decides its next vehicle normally."""
    running = Running(_config(tmp_path, '[[lanes]]\nid = "lane2"'))
    try:
        lane1 = running.service.lanes["lane1"]
        handle = lane1.on_record

        def buggy(rec: Record, now_mono_ns: int) -> list:
            if rec.kind is Kind.SPEED:
                raise ZeroDivisionError("a bug in the lane")
            return handle(rec, now_mono_ns)

        lane1.on_record = buggy  # type: ignore[method-assign]
        config = running.service.config
        one, two = _publisher(ctx, config), _publisher(ctx, config)
        two.lane = "lane2"
        for pub in (one, two):
            _background(pub)
            _occupancy(pub, 15, gx=False)
        with caplog.at_level("ERROR", logger="lanewatch.service"):
            one.emit(Kind.SPEED, values={"speed_kmh": 8.0})
            two.emit(Kind.OCCUPANCY_END, values={"device_occupancy": 7, "neutron_background_cps": 3.0})
            first = _collect(ctx, config, 2)
            one.emit(Kind.SPEED, values={"speed_kmh": 9.0})  # the same bug, with no occupancy open
            _occupancy(one, 15)
            later = _collect(ctx, config, 1, since=first[-1]["seq"])
        by_lane = {d["lane"]: d for d in first}
        assert by_lane["lane1"]["verdict"] == "INCOMPLETE" and by_lane["lane1"]["end_reason"] == "error"
        assert by_lane["lane1"]["samples"] == 15, "the occupancy keeps what it had"
        assert by_lane["lane2"]["end_reason"] == "gx" and by_lane["lane2"]["verdict"] == "CLEAR"
        assert later[0]["lane"] == "lane1" and later[0]["end_reason"] == "gx"
        assert running.value("lanewatch_handler_errors_total", where="lane lane1") == 2
        assert running.value("lanewatch_occupancies_total", lane="lane1", end="error") == 1
        assert sum("bug in the lane lane1 handler" in r.getMessage() for r in caplog.records) == 1
    finally:
        running.close()


def test_journal_deleted_while_running_fails_health_and_loses_nothing(tmp_path: Path, ctx: zmq.Context) -> None:
    """The journal file deleted under a running service: /healthz says so, decisions go on (to the fallback file, seq
    continuing), and the restarted service has every decision made after the deletion, numbered on."""
    config = _config(tmp_path)
    running = Running(config)
    try:
        pub = _publisher(ctx, config)
        _background(pub)
        _occupancy(pub, 10, seed=1)
        assert len(_collect(ctx, config, 1)) == 1
        # A query can read decision 1 as soon as it is committed; the journal looks at its file once more after
        # that, and would rightly keep a copy of a decision whose file went meanwhile. Delete after that look.
        deadline = time.monotonic() + 30
        while running.value("lanewatch_journal_last_seq") < 1:
            assert time.monotonic() < deadline, "decision 1 never finished journaling"
            time.sleep(0.01)
        assert running.service.health()["journal"]["problem"] == ""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{config.service.journal}{suffix}").unlink(missing_ok=True)
        deadline = time.monotonic() + 30
        while running.service.health()["journal"]["writable"]:
            assert time.monotonic() < deadline, "a deleted journal was never noticed"
            time.sleep(0.05)
        health = running.service.health()
        assert not health["ok"] and "deleted while open" in health["journal"]["problem"]
        assert running.value("lanewatch_journal_detached") == 1
        for seed in (2, 3):
            _occupancy(pub, 10, seed=seed)
        after = _collect(ctx, config, 2, since=1)
        assert [d["seq"] for d in after] == [2, 3]
        assert not os.path.exists(config.service.journal), "nothing was written into the void"
    finally:
        running.close()
    with Journal(config.service.journal) as journal:  # what a restarted service opens: the fallback imported
        assert [d.seq for d in journal.since(0)] == [2, 3]
        assert [d.occupancy_id for d in journal.since(0)] == [d["occupancy_id"] for d in after]
        assert journal.last_seq() == 3


def test_decisions_held_while_nothing_takes_them_are_bounded_and_each_drop_is_counted(
    tmp_path: Path, ctx: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    """The journal deleted (so decisions go to its fallback file) and a directory where the fallback file goes: the
    decisions are held in memory, at most ``max_pending``; past that each one dropped is counted, logged at CRITICAL
    and shown by /healthz, which fails. Once the fallback file can be written, the held ones are journaled and
    published, numbered on."""
    config = _config(tmp_path)
    running = Running(config)
    try:
        running.service.max_pending = 2
        pub = _publisher(ctx, config)
        _background(pub)
        _occupancy(pub, 10, seed=1)
        assert len(_collect(ctx, config, 1)) == 1
        for suffix in ("", "-wal", "-shm"):
            Path(f"{config.service.journal}{suffix}").unlink(missing_ok=True)
        blocker = Path(f"{config.service.journal}.fallback.jsonl")
        blocker.mkdir()
        for seed in (2, 3, 4, 5):
            _occupancy(pub, 10, seed=seed)
        deadline = time.monotonic() + 60
        while running.service.health()["journal"]["dropped"] < 2:
            assert time.monotonic() < deadline, f"no drops: {running.service.health()['journal']}"
            time.sleep(0.05)
        health = running.service.health()
        assert not health["ok"] and health["journal"]["pending"] == 2 and health["journal"]["dropped"] == 2
        dropped = sum(
            running.value("lanewatch_decisions_dropped_total", lane="lane1", verdict=v)
            for v in ("CLEAR", "ALARM", "INCOMPLETE")
        )
        assert dropped == 2
        assert [r for r in caplog.records if r.levelname == "CRITICAL" and "decision DROPPED" in r.getMessage()]
        blocker.rmdir()
        after = _collect(ctx, config, 2, since=1)
        assert [d["seq"] for d in after] == [2, 3]
        deadline = time.monotonic() + 30
        while running.service.health()["journal"]["pending"]:
            assert time.monotonic() < deadline, "the held decisions were never journaled"
            time.sleep(0.05)
    finally:
        running.close()


def test_the_least_important_held_decision_is_dropped_first() -> None:
    def held(verdict: str, n: int) -> Decided:
        return Decided({"lane": "lane1", "occupancy_id": f"o{n}", "verdict": verdict}, n)

    pending = deque([held("ALARM", 1), held("INCOMPLETE", 2), held("CLEAR", 3), held("CLEAR", 4), held("ALARM", 5)])
    order = [shed(pending).decision["occupancy_id"] for _ in range(5)]
    assert order == ["o3", "o4", "o2", "o1", "o5"], "CLEARs first, then the vehicle not screened, ALARMs last"


def test_the_service_shortens_the_thread_switch_interval(running: Running) -> None:
    """The decision loop shares the interpreter with the query thread: each time it comes back from a socket, an fsync
    or the model it waits for the interpreter at most the switch interval, which the service shortens."""
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S) and SWITCH_INTERVAL_S < 0.005


def test_what_start_up_made_is_out_of_the_collectors_sight(running: Running) -> None:
    """A full collection walking the objects start-up made took 80-90 ms inside some decision's handling: the service
    freezes them once started, so the collector walks only what came since."""
    assert gc.get_freeze_count() > 10_000
