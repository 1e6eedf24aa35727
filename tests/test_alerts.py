"""The alert bus, its subscribers and the console, over real ZeroMQ sockets on loopback and real journals."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import queue
import re
import threading
import time
import zoneinfo
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from prometheus_client import CollectorRegistry
from support import flood_replies, typed
from test_journal import make_decision

from lanewatch.edge.commands import alerts
from lanewatch.edge.config import BusConfig, Config, LaneConfig
from lanewatch.edge.decisions.alertbus import MAX_REPLY_BYTES, AlertBus, AlertBusError, RateLimiter, Reply, Request
from lanewatch.edge.decisions.decision import Decision, ProvisionalAlarm, decode, seq_of
from lanewatch.edge.decisions.journal import Journal
from lanewatch.edge.decisions.subscriber import AlertSubscriber, Item, JournalClient, QueryError, ServiceUnreachable
from lanewatch.edge.ops.metrics import ServiceMetrics

WAIT_S = 30.0
"""Upper bound of every wait in these tests; reaching it is a failure, never a pass."""


class ServiceLoop:
    """The alert bus served from its own thread, as the service's poll loop serves it.

    Owns its context, journal and bus; the test hands it work through a queue, the way the
    service's loop would journal then publish each decision.
    """

    def __init__(
        self,
        journal_path: Path,
        alerts: str = "tcp://127.0.0.1:*",
        query: str = "tcp://127.0.0.1:*",
        **bus_options: Any,
    ) -> None:
        self.metrics = ServiceMetrics(CollectorRegistry())
        self.ctx = zmq.Context()
        self.journal = Journal(journal_path, self.metrics)
        self.bus = AlertBus(self.ctx, alerts, query, self.journal, self.metrics, **bus_options)
        self.alerts, self.query = self.bus.alerts_endpoint, self.bus.query_endpoint
        self._work: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="service-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.bus.pub, zmq.POLLIN)
        poller.register(self.bus.router, zmq.POLLIN)
        while not self._stop.is_set():
            ready = dict(poller.poll(5))
            if self.bus.pub in ready:
                self.bus.handle_pub()
            if self.bus.router in ready:
                self.bus.handle_query()
            while True:
                try:
                    job, future = self._work.get_nowait()
                except queue.Empty:
                    break
                try:
                    future.set_result(job())
                except Exception as exc:
                    future.set_exception(exc)

    def call(self, job: Callable[[], Any]) -> Any:
        future: Future[Any] = Future()
        self._work.put((job, future))
        return future.result(timeout=WAIT_S)

    def append(self, decision: dict[str, Any], publish: bool = True) -> dict[str, Any]:
        """Journal then (unless told not to, as if the message were lost) publish one decision."""

        def job() -> dict[str, Any]:
            stored = self.journal.append(decision)
            if publish:
                self.bus.publish(stored)
            return stored

        return self.call(job)

    def provisional(self, alarm: dict[str, Any]) -> None:
        self.call(lambda: self.bus.publish_provisional(alarm))

    def gauge(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_S)
        self.bus.close()
        self.journal.close()
        self.ctx.term()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceLoop]:
    loop = ServiceLoop(tmp_path / "journal.db")
    yield loop
    loop.stop()


@contextlib.contextmanager
def subscriber(ctx: zmq.Context, loop: ServiceLoop, since: int | None, **kwargs: Any) -> Iterator[AlertSubscriber]:
    sub = AlertSubscriber(ctx, loop.alerts, loop.query, since, **kwargs)
    try:
        yield sub
    finally:
        sub.close()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until true; fail after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def take(items: Iterator[Item], n: int) -> list[Decision | ProvisionalAlarm]:
    """The next ``n`` decisions or provisional alarms of a ``decisions(timeout_s=...)`` iterator; fail after
    WAIT_S."""
    out: list[Decision | ProvisionalAlarm] = []
    deadline = time.monotonic() + WAIT_S
    while len(out) < n:
        item = next(items)
        if isinstance(item, Decision | ProvisionalAlarm):
            out.append(item)
        if time.monotonic() > deadline:
            raise AssertionError(f"got {len(out)} of {n} items: {out}")
    return out


def seqs(items: list[Decision | ProvisionalAlarm]) -> list[int]:
    return [item.seq for item in items if isinstance(item, Decision)]


def records(reply: Reply) -> list[dict[str, Any]]:
    """A query reply's decisions as journaled."""
    return [json.loads(bytes(raw)) for raw in reply.records or []]


def as_read(stored: list[dict[str, Any]]) -> list[Decision]:
    """Decisions as :meth:`ServiceLoop.append` returned them, as a subscriber yields them."""
    return [typed(d) for d in stored]


# ---- subscribers -------------------------------------------------------------------------------


def test_late_subscriber_gets_the_backlog_then_live_decisions(ctx: zmq.Context, service: ServiceLoop) -> None:
    stored = [service.append(make_decision(i)) for i in range(5)]
    with subscriber(ctx, service, since=0, resync_s=60) as sub:
        items = sub.decisions(follow=True, timeout_s=0.05)
        assert take(items, 5) == as_read(stored)
        wait_until(lambda: service.gauge("lanewatch_alert_subscribers") == 1, "the subscription")
        stored += [service.append(make_decision(i)) for i in range(5, 10)]
        assert take(items, 5) == as_read(stored[5:])
        assert sub.journaled == json.dumps(stored[-1], separators=(",", ":")).encode(), "its JSON as journaled"
        assert dataclasses.astuple(sub.stats)[:3] == (5, 5, 0), sub.stats
        assert sub.stats.duplicates == sub.stats.malformed == 0


def test_since_none_starts_from_now_and_since_n_skips_older(ctx: zmq.Context, service: ServiceLoop) -> None:
    for i in range(3):
        service.append(make_decision(i))
    with subscriber(ctx, service, since=None, resync_s=0.2) as now_sub, subscriber(ctx, service, since=1) as n_sub:
        service.append(make_decision(3))  # after the subscriber was created, before it is read
        now_items = now_sub.decisions(follow=True, timeout_s=0.05)
        assert seqs(take(now_items, 1)) == [4]
        assert next(now_items) is None
        assert seqs(list(n_sub.decisions(follow=False))) == [2, 3, 4]
        service.append(make_decision(4))
        assert seqs(take(now_items, 1)) == [5]
        assert seqs(list(n_sub.decisions(follow=False))) == [5], "a second iteration goes on from where it stopped"
    with subscriber(ctx, service, since=None) as later:
        assert list(later.decisions(follow=False)) == []


def test_decisions_missed_on_the_wire_are_filled_from_the_journal(ctx: zmq.Context, service: ServiceLoop) -> None:
    with subscriber(ctx, service, since=0, resync_s=60) as sub:
        items = sub.decisions(follow=True, timeout_s=0.05)
        assert next(items) is None
        wait_until(lambda: service.gauge("lanewatch_alert_subscribers") == 1, "the subscription")
        # only odd seqs reach the wire; the jumps must be filled from the journal, in order
        stored = [service.append(make_decision(i), publish=i % 2 == 0) for i in range(10)]
        got = take(items, 10)
        assert got == as_read(stored)
        assert sub.stats.filled >= 4 and sub.stats.gaps >= 1, sub.stats
        assert sub.stats.live + sub.stats.filled == 10


def test_a_lost_last_decision_arrives_by_resync(ctx: zmq.Context, service: ServiceLoop) -> None:
    with subscriber(ctx, service, since=0, resync_s=0.1) as sub:
        items = sub.decisions(follow=True, timeout_s=0.05)
        assert next(items) is None
        wait_until(lambda: service.gauge("lanewatch_alert_subscribers") == 1, "the subscription")
        sent = service.append(make_decision(0))
        lost = service.append(make_decision(1), publish=False)
        assert take(items, 2) == as_read([sent, lost])
        assert (sub.stats.live, sub.stats.filled, sub.stats.gaps) == (1, 1, 1)


def test_a_periodic_resync_over_the_query_budget_does_not_wait_and_live_decisions_go_on(
    ctx: zmq.Context, service: ServiceLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """All peers together over the query budget (a flood elsewhere): the subscriber's periodic resync is refused and
    deferred to the next one instead of being waited out, so live decisions are yielded meanwhile, and the service is
    not reported unreachable. A live gap is still filled."""
    with subscriber(ctx, service, since=0, resync_s=0.05) as sub:
        items = sub.decisions(follow=True, timeout_s=0.05)
        assert next(items) is None
        wait_until(lambda: service.gauge("lanewatch_alert_subscribers") == 1, "the subscription")
        service.call(lambda: setattr(service.bus, "total", RateLimiter(2.0, burst_s=0.5)))
        wait_until(lambda: next(items) is None and sub.stats.resyncs_deferred >= 3, "resyncs refused as over budget")
        stored = [service.append(make_decision(i)) for i in range(5)]
        assert take(items, 5) == as_read(stored)
        # a resync the budget lets through (a token every 0.5 s) may fetch some before their live message is read
        assert sub.stats.live + sub.stats.filled == 5, sub.stats
        assert sub.client.rate_limited >= sub.stats.resyncs_deferred >= 3, sub.stats
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "rate limited" in r.getMessage()]


def test_overflowing_queues_lose_nothing(ctx: zmq.Context, tmp_path: Path) -> None:
    # Queues of one message at both ends; the subscriber reads nothing while 300 decisions of
    # about 30 kB are published, so the bus must drop most of them for it. (ipc:// here: loopback
    # TCP buffers grow to tens of MB, while a Unix socket's hold about 200 kB.)
    alerts, query = f"ipc://{tmp_path}/alerts", f"ipc://{tmp_path}/query"
    loop = ServiceLoop(tmp_path / "j.db", alerts, query, sndhwm=1)
    try:
        with subscriber(ctx, loop, since=None, rcvhwm=1, resync_s=0.2) as sub:
            items = sub.decisions(follow=True, timeout_s=0.05)
            assert next(items) is None
            wait_until(lambda: loop.gauge("lanewatch_alert_subscribers") == 1, "the subscription")
            for i in range(300):
                loop.append(make_decision(i, profile_len=2000))
            got = take(items, 300)
            assert seqs(got) == list(range(1, 301))
            assert sub.stats.filled > 0, sub.stats
            assert sub.stats.live + sub.stats.filled == 300
    finally:
        loop.stop()


def test_subscriber_survives_a_service_restart(ctx: zmq.Context, tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    first = ServiceLoop(path)
    alerts, query = first.alerts, first.query
    with subscriber(ctx, first, since=0, resync_s=0.2) as sub:
        items = sub.decisions(follow=True, timeout_s=0.05)
        try:
            before = [first.append(make_decision(i)) for i in range(3)]
            assert take(items, 3) == as_read(before)
        finally:
            first.stop()
        # While the bus is down the subscriber keeps waiting (its queries time out and are retried).
        deadline = time.monotonic() + WAIT_S
        while sub.client.timeouts == 0 and time.monotonic() < deadline:
            assert next(items) is None
        # Decisions journaled by the old process that never went out on the wire:
        with Journal(path) as journal:
            unsent = [journal.append(make_decision(i)) for i in range(3, 6)]
        second = ServiceLoop(path, alerts, query)
        try:
            after = [second.append(make_decision(i)) for i in range(6, 8)]
            assert take(items, 5) == as_read(unsent + after)
            assert sub.stats.filled >= 3
            assert sub.client.timeouts >= 1, "it queried a service that was gone"
        finally:
            second.stop()


def test_subscriber_pages_through_a_large_backlog(ctx: zmq.Context, service: ServiceLoop) -> None:
    stored = [service.append(make_decision(i, profile_len=2000)) for i in range(60)]
    client = JournalClient(ctx, service.query)
    try:
        page = client.since(0)
        assert 1 < len(records(page)) < 60
        assert records(page) == stored[: len(records(page))]
        assert sum(len(raw) for raw in page.records or []) <= MAX_REPLY_BYTES
        assert page.last_seq == 60
    finally:
        client.close()
    with subscriber(ctx, service, since=0) as sub:
        assert list(sub.decisions(follow=False)) == as_read(stored)
        assert sub.stats.backlog == 60


def test_provisional_alarms_are_yielded_only_when_asked(ctx: zmq.Context, service: ServiceLoop) -> None:
    alarm = {"lane": "L1", "occupancy_id": "L1-7", "reason": "gamma", "statistic": 6.2, "threshold": 4.8}
    with subscriber(ctx, service, since=None) as plain, subscriber(ctx, service, since=None) as eager:
        plain_items = plain.decisions(follow=True, timeout_s=0.05)
        eager_items = eager.decisions(follow=True, timeout_s=0.05, provisional=True)
        assert next(plain_items) is None and next(eager_items) is None
        wait_until(lambda: service.gauge("lanewatch_alert_subscribers") == 2, "both subscriptions")
        # the provisional subscription is sent after the decision one: wait until the bus has it
        wait_until(lambda: (service.provisional(alarm), next(eager_items))[1] is not None, "a provisional alarm")
        decision = service.append(make_decision(0, verdict="ALARM"))
        rest = take(eager_items, 1)
        while isinstance(rest[-1], ProvisionalAlarm):
            assert rest[-1] == ProvisionalAlarm(**alarm)
            rest = take(eager_items, 1)
        assert rest == as_read([decision])
        assert eager.stats.provisional >= 1
        assert take(plain_items, 1) == as_read([decision])
        assert plain.stats.provisional == 0


def test_an_unreachable_service_fails_fast(ctx: zmq.Context) -> None:
    with socket_on_free_port(ctx) as (alerts, query):
        sub = AlertSubscriber(ctx, alerts, query, since=0, connect_timeout_s=0.3)
        try:
            with pytest.raises(ServiceUnreachable, match=query):
                next(sub.decisions(follow=True))
        finally:
            sub.close()
        # from now on: "now" is asked for when the subscriber is created
        with pytest.raises(ServiceUnreachable, match=query):
            AlertSubscriber(ctx, alerts, query, since=None, connect_timeout_s=0.3)


@contextlib.contextmanager
def socket_on_free_port(ctx: zmq.Context) -> Iterator[tuple[str, str]]:
    """Two loopback endpoints with nothing listening (ports picked free by binding and releasing)."""
    endpoints = []
    for _ in range(2):
        sock = ctx.socket(zmq.PULL)
        sock.bind("tcp://127.0.0.1:*")
        endpoints.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        sock.close(linger=0)
    yield endpoints[0], endpoints[1]


# ---- the bus -----------------------------------------------------------------------------------


def test_subscriber_count_follows_connects_and_disconnects(ctx: zmq.Context, service: ServiceLoop) -> None:
    def count() -> float:
        return service.gauge("lanewatch_alert_subscribers")

    assert count() == 0
    socks = []
    for topic in (b"decision", b"", b"provisional"):
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(service.alerts)
        socks.append(sock)
    # "provisional" does not receive decisions: two subscriptions count
    wait_until(lambda: count() == 2, "two subscriptions")
    sub = AlertSubscriber(ctx, service.alerts, service.query, since=None)
    wait_until(lambda: count() == 3, "three subscriptions")
    socks[1].setsockopt(zmq.UNSUBSCRIBE, b"")
    wait_until(lambda: count() == 2, "an unsubscribe")
    sub.close()
    wait_until(lambda: count() == 1, "a closed subscriber")
    for sock in socks:
        sock.close(linger=0)
    wait_until(lambda: count() == 0, "no subscriptions")
    assert service.bus.subscriptions == 0


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        ([b"not json"], "not JSON"),
        ([b"\xff\xfe"], "not JSON"),
        ([b"[1, 2]"], "JSON object"),
        ([b'{"op": "drop table"}'], "unknown op"),
        ([b'{"seq": 1}'], "unknown op"),
        ([b'{"op": "since"}'], "needs 'seq'"),
        ([b'{"op": "since", "seq": "5"}'], "'seq' must be an integer"),
        ([b'{"op": "since", "seq": true}'], "'seq' must be an integer"),
        ([b'{"op": "get", "seq": -1}'], "'seq' must be an integer from 0 to"),
        ([b'{"op": "since", "seq": 0, "limit": 0}'], "'limit' must be an integer from 1 to"),
        ([b'{"op": "last", "seq": 3}'], "unknown key 'seq'"),
        ([b'{"op": "query", "verdict": "maybe"}'], "'verdict' must be one of"),
        ([b'{"op": "query", "since": "last tuesday"}'], "ISO 8601"),
        ([b'{"op": "query", "lane": 7}'], "'lane' must be a string"),
        ([b'{"op": "last"}', b'{"op": "last"}'], "exactly one JSON frame"),
        ([b""], "exactly one JSON frame"),
        ([b"[" * 100_000], "longer than"),
        ([b"[" * 4000], "nested too deeply"),
        ([b'{"op": "since", "seq": ' + b"9" * 40 + b"}"], "'seq' must be an integer from 0 to"),
        ([b'{"op": "since", "seq": 1e400}'], "'seq' must be an integer"),
    ],
)
def test_malformed_queries_get_an_error_and_the_server_goes_on(
    ctx: zmq.Context, service: ServiceLoop, frames: list[bytes], error: str, caplog: pytest.LogCaptureFixture
) -> None:
    service.append(make_decision(0))
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(service.query)
    try:
        sock.send_multipart(frames)
        assert sock.poll(int(WAIT_S * 1000)), "no reply"
        reply = sock.recv_multipart()
        answer = json.loads(reply[-1])
        assert answer["ok"] is False and error in answer["error"], answer
        assert service.gauge("lanewatch_journal_queries_total", {"op": "invalid"}) == 1
        assert any(error in r.getMessage() and r.name == "lanewatch.edge.decisions.alertbus" for r in caplog.records), (
            "logged"
        )
        sock.send(b'{"op": "last"}')
        assert sock.poll(int(WAIT_S * 1000)), "the server stopped answering"
        answer = json.loads(sock.recv())
        assert answer["ok"] is True and answer["last_seq"] == 1
        assert service.gauge("lanewatch_journal_queries_total", {"op": "last"}) == 1
    finally:
        sock.close()


def test_query_ops_for_dealer_and_req_clients(ctx: zmq.Context, service: ServiceLoop) -> None:
    stored = [
        service.append(make_decision(i, lane=f"L{i % 2}", verdict=("ALARM", "CLEAR")[i % 3 > 0])) for i in range(6)
    ]
    client = JournalClient(ctx, service.query)
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(service.query)
    try:
        assert client.last_seq() == 6
        assert json.loads(client.get_json(3) or b"") == stored[2]
        assert client.get_json(99) is None
        assert records(client.since(4)) == stored[4:]
        assert [decode(raw) for raw in client.since(4).records or []] == as_read(stored[4:])
        assert records(client.since(0, limit=2)) == stored[:2]
        alarms = client.query(lane="L0", verdict="ALARM")
        assert records(alarms) == [stored[0]] and alarms.last_seq == 6
        assert records(client.query(limit=2)) == stored[4:]
        assert records(client.request(Request(op="last"))) == [stored[-1]]
        with pytest.raises(QueryError, match="unknown op"):
            client.request(Request(op="nope"))
        req.send_json({"op": "get", "seq": 2})
        assert req.poll(int(WAIT_S * 1000))
        assert req.recv_json() == {"ok": True, "last_seq": 6, "records": [stored[1]]}
        assert service.gauge("lanewatch_journal_queries_total", {"op": "get"}) == 3
    finally:
        client.close()
        req.close()


def test_binding_a_taken_endpoint_fails_clearly(ctx: zmq.Context, service: ServiceLoop, tmp_path: Path) -> None:
    with Journal(tmp_path / "other.db") as journal, pytest.raises(AlertBusError, match="cannot bind the alerts"):
        AlertBus(ctx, service.alerts, "tcp://127.0.0.1:*", journal)


# ---- the console -------------------------------------------------------------------------------


def alarm_decision() -> dict[str, Any]:
    decision = make_decision(42, lane="lane-3", verdict="ALARM")
    decision["seq"] = 17
    decision["end"] = "2024-05-01T12:03:04.500Z"
    decision["alarms"] = [
        {
            "reason": "gamma-shape",
            "statistic": -5.2,
            "threshold": 4.9,
            "direction": "harder",
            "location_m": 1.0,
            "location_sd_m": 1.12,
            "alarm": False,
            "released_as": "norm-consistent",
        },
        {
            "reason": "gamma",
            "statistic": 7.2104,
            "threshold": 4.81,
            "location_m": 3.46,
            "location_sd_m": 0.31,
            "alarm": True,
        },
        {"reason": "tamper", "statistic": None, "threshold": None, "location_m": None, "alarm": True},
    ]
    decision["baseline_verdict"] = "CLEAR"
    return decision


def test_format_row_shows_the_evidence() -> None:
    row = alerts.format_row(typed(alarm_decision()), color=False)
    assert row.split()[:5] == ["17", "2024-05-01", "12:03:04", "lane-3", "ALARM"]
    assert "CLEAR" in row and "\x1b[" not in row
    reasons = row[alerts.header().index("REASONS") :]
    assert reasons == (
        "Gamma excess 7.2 sigma (threshold 4.8) 3.5 m behind the front, ± 0.3 m; "
        "Tamper: the portal reports its cabinet opened or a detector fault; "
        "Gamma spectrum shape harder than background 5.2 sigma (threshold 4.9) 1.0 m behind the front, ± 1.1 m; "
        "consistent with NORM, so it does not alarm on its own"
    )
    assert len(alerts.header()) <= len(row)
    assert alerts.header().index("REASONS") == row.index("Gamma excess")
    colored = alerts.format_row(typed(alarm_decision()), color=True)
    assert alerts.COLORS["ALARM"] in colored and alerts.COLORS["CLEAR"] in colored
    assert (
        colored.replace(alerts.COLORS["ALARM"], "").replace(alerts.COLORS["CLEAR"], "").replace(alerts.RESET, "") == row
    ), "colour adds escapes only"
    incomplete = typed(dict(make_decision(1, verdict="INCOMPLETE"), seq=2, end_reason="timeout"))
    line = alerts.format_row(incomplete, color=False)
    assert line[alerts.header().index("REASONS") :] == (
        "Screened only in part: it lasted longer than the occupancy timeout (1 s). Re-scan the vehicle or send it to "
        "secondary inspection; "
        "Gamma excess below its threshold: 3.5 sigma (threshold 4.8) 3.1 m behind the front (its uncertainty was not "
        "recorded); "
        "Neutron excess below its threshold: 1 counts in its window (threshold 7)"
    )
    at_threshold = {"reason": "neutron", "statistic": 7.0, "threshold": 7.0, "location_m": None, "alarm": True}
    neutron = typed(dict(make_decision(1), seq=4, alarms=[at_threshold]))
    assert alerts.format_row(neutron, color=False).endswith("Neutron excess 7 counts in its window (threshold 7)")
    clear = typed(dict(make_decision(1), seq=3, alarms=[]))
    assert alerts.format_row(clear, color=False).split()[-7:] == ["CLEAR", "-", "-", "-", "-", "-", "-"]


def test_format_row_shows_portal_alarm_model_norm_release_state_and_local_time() -> None:
    model = {"version": "m1", "score": 4.04, "finding": True, "finding_threshold": 3.0, "alarm_threshold": 0.0,
             "release_threshold": 2.0}  # fmt: skip
    decision = typed(
        {
            **alarm_decision(),
            "device_alarm": True,
            "model": model,
            "alarms": [{"reason": "norm-consistent", "alarm": False, "extent": 0.7, "release_recommended": True}],
        }
    )
    zone = zoneinfo.ZoneInfo("Europe/Amsterdam")
    row = alerts.format_row(decision, zone=zone, state="acknowledged")
    head = alerts.header(zone=zone)
    assert head.split()[:6] == ["SEQ", "END", "(Europe/Amsterdam)", "LANE", "VERDICT", "FIELDED"]
    assert row.split()[:3] == ["17", "2024-05-01", "14:03:04"], "12:03 UTC is 14:03 in Amsterdam in May"
    cells = row[head.index("PORTAL") : head.index("REASONS")].split()
    assert cells == ["ALARM", "4.04", "find", "release", "acknowledged", "-"]
    # the widest values keep every column under its title: NORM unconfirmed, a disposition in words
    unconfirmed = typed({**alarm_decision(), "verdict": "CLEAR", "alarms": [
        {"reason": "norm-consistent", "alarm": False, "extent": 0.7, "release_recommended": False}]})  # fmt: skip
    disposed = alerts.format_row(unconfirmed, zone=zone, state="disposed", disposition="innocent")
    assert disposed[head.index("NORM") :].split()[:3] == ["unconfirmed", "disposed", "innocent"]
    assert disposed[head.index("ADJUDICATION") :].startswith("disposed ")
    assert disposed[head.index("DISPOSITION") :].startswith("innocent source ")
    assert disposed[head.index("REASONS") - 2 : head.index("REASONS")] == "  "
    assert row[head.index("REASONS") :] == (
        "The portal's own alarm; Consistent with NORM, spread over 70% of the load: release recommended; the ALARM "
        "stands on its other reasons"
    )


def test_format_provisional_is_distinct() -> None:
    alarm = ProvisionalAlarm(lane="lane-3", occupancy_id="lane-3-99", reason="neutron", statistic=15, threshold=7)
    line = alerts.format_provisional(alarm, color=False)
    assert line.split()[0] == "~" and line.split()[3:5] == ["lane-3", "PROVISIONAL"], "shown as it arrives"
    assert line.endswith("Neutron excess 15 counts in its window (threshold 7)  (occupancy lane-3-99)")
    assert alerts.COLORS["PROVISIONAL"] in alerts.format_provisional(alarm, color=True)


def console_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    alerts.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_bad_numbers_are_refused_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, words in (
        (["--since", "abc"], "argument --since: expected a seq >= 0, got 'abc'"),
        (["--since", "-1"], "argument --since: expected a seq >= 0, got '-1'"),
        (["--last", "0"], "argument --last: expected a count >= 1, got '0'"),
        (["--last", "1.5"], "argument --last: expected a count >= 1, got '1.5'"),
    ):
        with pytest.raises(SystemExit) as exit_:
            console_args(*argv)
        assert exit_.value.code == 2 and words in capsys.readouterr().err


def bus_config(loop: ServiceLoop) -> Config:
    return Config(bus=BusConfig(alerts=loop.alerts, query=loop.query, plaintext=True), source="test.toml")


def test_console_jsonl_round_trips(service: ServiceLoop, capsys: pytest.CaptureFixture[str]) -> None:
    stored = [service.append(make_decision(i, lane=f"L{i % 2}")) for i in range(5)]
    assert alerts.run(console_args("--since", "0", "--format", "jsonl"), bus_config(service)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == stored
    assert alerts.run(console_args("--format", "jsonl", "--lane", "L1", "--last", "1"), bus_config(service)) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [stored[3]]


def test_console_table_with_filters(service: ServiceLoop, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(6):
        service.append(make_decision(i, verdict="ALARM" if i in (1, 4) else "CLEAR"))
    assert alerts.run(console_args("--since", "0", "--verdict", "alarm"), bus_config(service)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == alerts.header(color=False)
    assert [line.split()[0] for line in out[1:]] == ["2", "5"]
    assert all("ALARM" in line and "\x1b[" not in line for line in out[1:])
    assert alerts.run(console_args("--last", "2"), bus_config(service)) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["5", "6"]


def test_console_follow_prints_new_decisions(service: ServiceLoop, tmp_path: Path) -> None:
    """``--follow`` in a real process: the newest decision, then one journaled later, line by line."""
    import subprocess
    import sys

    service.append(make_decision(0))
    config = tmp_path / "lanewatch.toml"
    config.write_text(f'[bus]\nalerts = "{service.alerts}"\nquery = "{service.query}"\nplaintext = true\n')
    script = (
        "import argparse, sys\n"
        "from lanewatch.edge import config\n"
        "from lanewatch.edge.commands import alerts\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--config')\n"
        "alerts.add_arguments(parser)\n"
        "args = parser.parse_args()\n"
        "sys.exit(alerts.run(args, config.load(args.config)))\n"
    )
    argv = ["--config", str(config), "--follow", "--format", "jsonl", "--last", "1"]
    proc = subprocess.Popen([sys.executable, "-c", script, *argv], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["seq"] == 1
        wait_until(lambda: service.gauge("lanewatch_alert_subscribers") == 1, "the console's subscription")
        later = service.append(make_decision(1))
        assert json.loads(proc.stdout.readline()) == later
    finally:
        proc.terminate()
        proc.wait(timeout=WAIT_S)
        if proc.stdout:
            proc.stdout.close()


def test_the_demos_live_view_prints_the_alerts_table(service: ServiceLoop, tmp_path: Path) -> None:
    """The demo's live view and ``lanewatch alerts`` print one table for the same decisions: the adjudication state
    (an ALARM nobody touched is unacknowledged), the portal's alarm, the model, NORM release and local time."""
    import io
    import subprocess
    import sys

    from lanewatch.edge.commands import demo
    from lanewatch.edge.config import ConsoleConfig, ServiceConfig
    from lanewatch.edge.console.adjudication import Adjudications

    portal = {**make_decision(1, verdict="ALARM"), "device_alarm": True}
    for decision in (make_decision(0), portal, make_decision(2, verdict="ALARM")):
        service.append(decision)
    store = Adjudications(service.journal.path)
    store.record(3, "acknowledge", "olga", "operator")
    store.close()
    config = msgspec.structs.replace(
        bus_config(service),
        service=ServiceConfig(journal=str(service.journal.path)),
        console=ConsoleConfig(timezone="Europe/Amsterdam"),
    )
    part = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    shown = io.StringIO()

    def stop_once_shown() -> None:
        try:
            wait_until(lambda: len(shown.getvalue().splitlines()) >= 4, "the live view's rows")
        finally:
            assert part.stdin is not None
            part.stdin.close()  # a part of the demo exits: the live view ends

    stopper = threading.Thread(target=stop_once_shown)
    stopper.start()
    with contextlib.redirect_stdout(shown), contextlib.redirect_stderr(io.StringIO()):
        assert demo._follow(config, 0.0, {"part": part}) == 1
    stopper.join(WAIT_S)
    part.wait(WAIT_S)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert alerts.run(console_args("--since", "0"), config) == 0
    live = shown.getvalue().splitlines()
    assert live == printed.getvalue().splitlines()
    head = live[0]
    assert "END (Europe/Amsterdam)" in head
    states = [line[head.index("ADJUDICATION") :].split()[0] for line in live[1:]]
    assert states == ["-", "unacknowledged", "acknowledged"]
    assert [line[head.index("PORTAL") :].split()[0] for line in live[1:]] == ["-", "ALARM", "-"]
    assert live[1].split()[1:3] == ["2024-05-01", "14:00:00"], "12:00 UTC is 14:00 in Amsterdam in May"


def test_the_demo_shows_times_in_this_machines_time_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's site is this machine: its configuration names the machine's zone, so its live view, ``alerts`` and
    the console show the times of the clock on the wall."""
    from lanewatch.edge.commands import demo
    from lanewatch.edge.config import load

    path = tmp_path / "lanewatch.toml"
    monkeypatch.setenv("TZ", ":Europe/Amsterdam")
    demo.write_config(path, 1, 40000, 40001)
    assert load(path).console.timezone == "Europe/Amsterdam"
    assert alerts.Table.of(load(path)).header().split()[1:3] == ["END", "(Europe/Amsterdam)"]
    monkeypatch.setenv("TZ", "no/such/zone")
    demo.write_config(path, 1, 40000, 40001)
    zoneinfo.ZoneInfo(load(path).console.timezone)  # /etc/localtime's zone, else UTC: always a zone


def test_console_says_when_the_service_is_not_running(ctx: zmq.Context, capsys: pytest.CaptureFixture[str]) -> None:
    with socket_on_free_port(ctx) as (alerts_endpoint, query):
        config = Config(bus=BusConfig(alerts=alerts_endpoint, query=query, plaintext=True), source="site.toml")
        assert alerts.run(console_args("--follow", "--timeout", "0.3"), config) == 1
        out, err = capsys.readouterr()
        assert query in err and "is the service running" in err and "site.toml" in err
        assert out == "", "no table header for a table that cannot come"
        assert alerts.run(console_args("--since", "0", "--timeout", "0.3"), config) == 1


def row_of(**fields: Any) -> Decision:
    """A journaled decision with ``fields`` changed."""
    return typed({**make_decision(0), **fields})


def test_reasons_read_as_an_operator_would() -> None:
    """The table's reasons are the console's plain words, numbers rounded to what they mean, no operators."""
    shape = {"reason": "gamma-shape", "statistic": -9.75, "threshold": 4.89, "direction": "softer", "location_m": 5.8,
             "location_sd_m": 0.25, "alarm": True}  # fmt: skip
    assert alerts.format_row(row_of(seq=1, verdict="ALARM", alarms=[shape])).endswith(
        "Gamma spectrum shape softer than background 9.8 sigma (threshold 4.9) 5.8 m behind the front, ± 0.2 m"
    )
    withheld = {"reason": "gamma", "statistic": 23.1, "threshold": 4.79, "alarm": False, "withheld": "no-background"}
    review = {"reason": "image-review", "statistic": 48.3, "threshold": 8.0, "location_m": 5.58,
              "location_sd_m": 0.1, "alarm": True}  # fmt: skip
    row = alerts.format_row(row_of(seq=2, verdict="ALARM", device_alarm=True, alarms=[withheld, review]))
    assert row.endswith(
        "Dense object, 48 mm lead equivalent 5.6 m behind the front, ± 0.1 m: large enough to hide a source, image "
        "review needed (above 8 mm lead equivalent); The portal's own alarm; Gamma excess 23.1 sigma (threshold 4.8); "
        "withheld: no background reading before the vehicle to test against"
    )
    assert not re.search(r"[<>|]", row), "no comparison operators or bars: words"
    # the fusion copies the evidence's signed statistic: the side test's z is below 0 when the second column rose
    side = {"reason": "gamma-side", "statistic": -14.2, "threshold": 5.09, "side": "second", "location_m": 4.8,
            "location_sd_m": 0.2, "alarm": True}  # fmt: skip
    evidence = {key: side[key] for key in ("reason", "statistic", "threshold", "location_m", "location_sd_m")}
    fused = {"reason": "shielded-source-suspected", "statistic": -14.2, "threshold": 5.09, "location_m": 4.91,
             "location_sd_m": 0.104, "object": {"lead_mm": 42.2}, "radiation": evidence, "alarm": True}  # fmt: skip
    row = alerts.format_row(row_of(seq=3, verdict="ALARM", alarms=[side, fused]))
    assert row.endswith(
        "Gamma share of one portal column (the second half of the channels) 14.2 sigma (threshold 5.1) 4.8 m behind "
        "the front, ± 0.2 m; Shielded source suspected: dense object, 42 mm lead equivalent 4.9 m behind the front, "
        "± 0.1 m, where the radiation alarms: Gamma share of one portal column 14.2 sigma (threshold 5.1)"
    ), "the place rounded to what its uncertainty supports; the size of the z, its side said by the test's words"
    assert "-14.2" not in row
    column = {"reason": "neutron", "statistic": 49.0, "threshold": 47.0, "expected": 19.5, "side": "first",
              "location_m": 7.2, "location_sd_m": 1.9, "alarm": True}  # fmt: skip
    assert "Neutron excess (the first column's tubes)" in alerts.format_row(row_of(seq=5, alarms=[column]))
    hotspot = {**evidence, "reason": "gamma-shape (below threshold)", "statistic": -3.46, "threshold": 3.0}
    weak = alerts.format_row(row_of(seq=4, verdict="ALARM", alarms=[{**fused, "radiation": hotspot}]))
    assert weak.endswith(
        "where the radiation rises below the alarm thresholds: Gamma spectrum shape 3.5 sigma (a hotspot from 3.0)"
    )


def test_alerts_reads_a_journal_offline_and_refuses_an_unknown_lane(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lanewatch.edge.console.adjudication import Adjudications

    path = tmp_path / "journal.db"
    with Journal(path) as journal:
        for i in range(4):
            journal.append(make_decision(i, lane=f"L{i % 2}", verdict="ALARM" if i == 2 else "CLEAR"))
    store = Adjudications(path)
    store.record(3, "acknowledge", "olga", "operator")
    store.close()
    config = Config(source="test.toml")
    assert alerts.run(console_args("--journal", str(path), "--since", "0"), config) == 0
    out = capsys.readouterr().out.splitlines()
    head = out[0]
    assert [line.split()[0] for line in out[1:]] == ["1", "2", "3", "4"]
    assert out[3][head.index("ADJUDICATION") :].split()[0] == "acknowledged"
    assert alerts.run(console_args("--journal", str(path), "--lane", "L1", "--last", "1"), config) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["4"]
    assert alerts.run(console_args("--journal", str(path), "--lane", "nosuch"), config) == 2
    assert "no decision of lane 'nosuch' in the journal" in capsys.readouterr().err
    configured = Config(lanes=[LaneConfig(id="L0"), LaneConfig(id="L1")], source="site.toml")
    assert alerts.run(console_args("--journal", str(path), "--lane", "L9"), configured) == 2
    assert "no lane 'L9' in site.toml (lanes: L0, L1)" in capsys.readouterr().err
    assert alerts.run(console_args("--journal", str(tmp_path / "missing.db")), config) == 1


def test_query_thread_budgets_each_peer_and_counts_bad_requests(
    ctx: zmq.Context, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Served from its own thread and connection (nobody calls handle_query here): a flooding peer gets 'rate
    limited' replies at once, counted, while another peer is answered; bad requests are counted each time and
    logged a few times only; a JournalClient over its budget waits as told and gets its answer."""
    metrics = ServiceMetrics(CollectorRegistry())
    journal = Journal(tmp_path / "journal.db", metrics)
    for i in range(5):
        journal.append(make_decision(i))
    bus = AlertBus(ctx, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", journal, metrics)
    bus.start_query_thread()
    flood, other = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    try:
        for sock in (flood, other):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(bus.query_endpoint)
        replies = flood_replies(flood, b'{"op": "since", "seq": 0}', 300, WAIT_S)
        limited = [r for r in replies if not r["ok"]]
        assert limited and all(r["error"] == "rate limited" and r["retry_after_s"] > 0 for r in limited)
        assert all(r["ok"] and len(r["records"]) == 5 for r in replies if r not in limited)
        assert metrics.registry.get_sample_value("lanewatch_journal_queries_total", {"op": "rate-limited"}) == len(
            limited
        )
        other.send(b'{"op": "last"}')
        assert other.poll(int(WAIT_S * 1000)) and json.loads(other.recv())["last_seq"] == 5, "the other peer waits"

        caplog.clear()
        for _ in range(30):  # within the peer's burst
            other.send(b'{"op": "nonsense"}')
        for _ in range(30):
            assert other.poll(int(WAIT_S * 1000))
            other.recv()
        wait_until(
            lambda: metrics.registry.get_sample_value("lanewatch_journal_queries_total", {"op": "invalid"}) == 30,
            "30 bad requests counted",
        )
        logged = [r for r in caplog.records if "unknown op" in r.getMessage()]
        assert 1 <= len(logged) <= 5, len(logged)

        client = JournalClient(ctx, bus.query_endpoint, attempt_s=WAIT_S)
        try:
            pages = [client.since(0, timeout_s=WAIT_S) for _ in range(60)]  # more than one peer's burst of 40
        finally:
            client.close()
        assert all([seq_of(raw) for raw in page.records or []] == [1, 2, 3, 4, 5] for page in pages)
        assert client.rate_limited > 0
    finally:
        flood.close()
        other.close()
        bus.close()
        journal.close()
