"""The alert bus: journaled decisions pushed to consoles, and the journal answering their questions.

Two sockets, both bound by the service and served from its poll loop:

**Alerts** (XPUB at ``bus.alerts``). Every message has two frames, a topic and one JSON object:

- ``[b"decision", decision]``: a decision, sent only after :meth:`Journal.append` returned,
  so every ``seq`` a console sees is already durable. A console subscribes to ``decision``.
- ``[b"provisional", alarm]``: an alarm raised mid-passage, before the occupancy ends; not
  journaled, no ``seq``, superseded by the occupancy's decision.
- ``[b"adjudication", act]``: an operator's act on a decision
  (:class:`~lanewatch.edge.decisions.adjudication.Adjudication`), published for the console that
  recorded it in the journal (the ``adjudicated`` request below), so every open console agrees at once.

Delivery is best effort (a slow or disconnected subscriber loses messages), which is why
``seq`` has no gaps in the journal's eyes: a subscriber that sees a jump asks the query
endpoint for what it missed (see :mod:`lanewatch.edge.decisions.subscriber`). The ``lanewatch_alert_subscribers``
gauge counts the open subscriptions that receive decisions (topic ``decision`` or a prefix of
it, such as ``""``), from the subscribe and unsubscribe messages the XPUB passes up.

**Query** (ROUTER at ``bus.query``). A request is one JSON frame (after the envelope: a DEALER
sends just that frame, a REQ adds its empty delimiter); the reply comes back with the same
envelope, one JSON frame. Requests:

- ``{"op": "since", "seq": N, "limit": L}``: decisions with seq > N, ascending (L optional,
  default and cap :data:`MAX_LIMIT`).
- ``{"op": "get", "seq": N}``: the decision numbered N (``records`` empty if there is none).
- ``{"op": "last"}``: the newest decision (``records`` empty for an empty journal).
- ``{"op": "query", "lane": s, "verdict": s, "since": t, "until": t, "limit": L}``: the newest
  L decisions matching every key given (all optional; ``since``/``until`` are ISO 8601 times
  bounding the decision's ``end``), ascending.

- ``{"op": "adjudicated", "adjudication": {...}}``: publish an act a console has just committed to
  the journal's ``adjudications`` table, as an :class:`~lanewatch.edge.decisions.adjudication.Adjudication`
  (checked against that contract; ``records`` is empty in the reply). The journal stays the truth: a
  console that receives the message reads the act from the journal by its ``id``, so a message that was
  lost, or that names an act the journal does not hold, changes nothing. On a CURVE bus only console
  keys reach this endpoint.

Reply: ``{"ok": true, "last_seq": N, "records": [...]}`` with N the journal's newest seq. A
reply holds at most about :data:`MAX_REPLY_BYTES` of records (always at least one when any
match): for ``since``, ask again from the last seq received until it reaches ``last_seq``.
A request that cannot be understood gets ``{"ok": false, "error": "..."}``, is counted as op
``invalid`` in ``lanewatch_journal_queries_total`` and logged at a bounded rate; one the journal
cannot answer gets ``ok: false`` too. The server goes on serving either way.

Queries cannot starve decisions. Each peer (its connection, under its key on a CURVE bus: consoles that share a
key do not share a budget) and all peers together have a budget (:data:`PEER_RATE`, :data:`TOTAL_RATE`: requests
a second, a request costing one more for each :data:`COST_BYTES` of its reply); a request over it is answered at once
with ``{"ok": false, "error": "rate limited", "retry_after_s": s}`` (op ``rate-limited``), which
:class:`~lanewatch.edge.decisions.subscriber.JournalClient` honours by waiting. Replies are the
journal's stored JSON, not decoded and encoded again. The service serves queries from a thread
of their own with a read-only SQLite connection of their own (:meth:`AlertBus.start_query_thread`):
a WAL reader never blocks the writer, and the decision loop does not wait for a query.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq

from lanewatch.edge.bus import security
from lanewatch.edge.bus.security import Keys
from lanewatch.edge.decisions.adjudication import Adjudication
from lanewatch.edge.decisions.journal import JSON_ENCODER, VERDICTS, Journal, JournalError, utc_text
from lanewatch.edge.ops.metrics import ServiceMetrics
from lanewatch.edge.ops.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

DECISION_TOPIC = b"decision"
PROVISIONAL_TOPIC = b"provisional"
ADJUDICATION_TOPIC = b"adjudication"

MAX_INT = (1 << 63) - 1
"""Largest integer a request may hold (SQLite's)."""
MAX_REQUEST_BYTES = 4096
"""Longest request frame (bytes); every valid request but ``adjudicated`` is far shorter."""
MAX_ADJUDICATED_BYTES = 32 * 1024
"""Longest ``adjudicated`` request frame (bytes): an act's notes are at most 4000 characters."""
MAX_LIMIT = 1000
"""Most records one query reply holds."""
MAX_REPLY_BYTES = 1 << 20
"""A query reply stops adding records past this many bytes of JSON (one record always fits)."""
MAX_REQUESTS_PER_CALL = 32
"""Requests :meth:`AlertBus.handle_query` answers per call, so queries cannot starve the loop that calls it."""
PEER_RATE = 20.0
"""Query budget of one peer (requests a second); it may save up :data:`BURST_S` seconds of it."""
TOTAL_RATE = 100.0
"""Query budget of all peers together (requests a second)."""
BURST_S = 2.0
COST_BYTES = 64 * 1024
"""A reply costs one request more per this many bytes (a full 1 MB page costs 17)."""
MAX_PEERS = 4096
"""Peers whose budget is remembered; past this the oldest are forgotten (they start with a full budget)."""
PUB_SNDHWM = 100
"""Messages queued per subscriber before the bus drops them for that subscriber (which refetches them
from the journal); bounds what a stalled console costs the service (decisions can be tens of kB)."""

_OPS: dict[str, dict[str, bool]] = {
    # op -> {key: required}
    "since": {"seq": True, "limit": False},
    "get": {"seq": True},
    "last": {},
    "query": {"lane": False, "verdict": False, "since": False, "until": False, "limit": False},
    "adjudicated": {"adjudication": True},
}
_RELAYS = itertools.count()


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at_s: float


class RateLimiter:
    """Token buckets: ``rate`` a second for each key, up to ``rate * burst_s`` saved; a cost may overdraw (a debt
    paid back before the next request), so a large reply is charged in full once it is known."""

    def __init__(self, rate: float, burst_s: float = BURST_S, max_keys: int = MAX_PEERS) -> None:
        self.rate = rate
        self.capacity = rate * burst_s
        self.max_keys = max_keys
        self._buckets: dict[bytes, _Bucket] = {}

    def wait_s(self, key: bytes, now_s: float) -> float:
        """0 when ``key`` may make a request now (one token is taken), else how long (s) until it may."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(self.capacity, now_s)
            while len(self._buckets) >= self.max_keys:
                del self._buckets[next(iter(self._buckets))]  # the least recently seen
        bucket.tokens = min(self.capacity, bucket.tokens + (now_s - bucket.at_s) * self.rate)
        bucket.at_s = now_s
        self._buckets[key] = bucket
        if bucket.tokens < 1.0:
            return (1.0 - bucket.tokens) / self.rate
        bucket.tokens -= 1.0
        return 0.0

    def charge(self, key: bytes, cost: float) -> None:
        """Take ``cost`` more tokens from ``key`` (may go below zero)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens -= cost


class AlertBusError(RuntimeError):
    """The alert bus could not start (an endpoint could not be bound)."""


class BadRequest(ValueError):
    """A query request that does not follow the protocol; the message says why."""


def _bind(sock: zmq.Socket, endpoint: str, what: str) -> str:
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise AlertBusError(f"bus.{what}: cannot bind the {what} endpoint {endpoint}: {exc}") from exc
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


class Request(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A request to the query endpoint (see the module's docstring for each op's keys); encoded without the keys
    left unset. :func:`parse_request` gives it checked, ``limit`` capped at :data:`MAX_LIMIT`."""

    op: str
    """since, get, last, query or adjudicated."""
    seq: int | None = None
    """For since: after this seq; for get: this one."""
    limit: int | None = None
    """For since and query: at most this many decisions."""
    lane: str | None = None
    verdict: str | None = None
    since: str | None = None
    """For query: decisions that ended at or after this ISO 8601 time."""
    until: str | None = None
    """For query: decisions that ended before this ISO 8601 time."""
    adjudication: Adjudication | None = None
    """For adjudicated: the act a console has just journaled."""


class Reply(msgspec.Struct, kw_only=True):
    """A reply of the query endpoint: ``ok`` with ``last_seq`` and ``records`` (each decision's JSON as journaled,
    for the reader to decode: :func:`lanewatch.edge.decisions.decision.decode`), or not ``ok`` with its ``error``
    (and ``retry_after_s`` when rate limited)."""

    ok: bool
    last_seq: int | None = None
    """The journal's newest seq (0 when empty)."""
    records: list[msgspec.Raw] | None = None
    """The decisions, oldest first, each as its JSON."""
    error: str | None = None
    retry_after_s: float | None = None
    """For ``rate limited``: when (s) to ask again."""


def _int(request: dict[str, Any], key: str, default: int | None = None, minimum: int = 0) -> int:
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_INT:
        raise BadRequest(f"{key!r} must be an integer from {minimum} to {MAX_INT}, got {str(value)[:40]}")
    return value


def _text(request: dict[str, Any], key: str) -> str | None:
    value = request.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{key!r} must be a string, got {value!r}")
    return value


def parse_request(payload: bytes) -> Request:
    """The checked request in one query frame; raises :class:`BadRequest` when it breaks the protocol (and nothing
    else, whatever the bytes)."""
    if len(payload) > MAX_ADJUDICATED_BYTES:
        raise BadRequest(f"request of {len(payload)} bytes, longer than {MAX_ADJUDICATED_BYTES}")
    try:
        request = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("request is nested too deeply") from None
    if not isinstance(request, dict):
        raise BadRequest(f"request must be a JSON object, got {type(request).__name__}")
    op = request.get("op")
    if not isinstance(op, str) or op not in _OPS:
        raise BadRequest(f"unknown op {op!r}; expected one of {', '.join(_OPS)}")
    if op != "adjudicated" and len(payload) > MAX_REQUEST_BYTES:
        raise BadRequest(f"request of {len(payload)} bytes, longer than {MAX_REQUEST_BYTES}")
    keys = _OPS[op]
    unknown = sorted(set(request) - set(keys) - {"op"})
    if unknown:
        raise BadRequest(f"unknown key {unknown[0]!r} for op {op!r}; expected {', '.join(keys) or 'none'}")
    missing = [key for key, required in keys.items() if required and key not in request]
    if missing:
        raise BadRequest(f"op {op!r} needs {', '.join(repr(k) for k in missing)}")
    if "seq" in keys:
        _int(request, "seq")
    if "limit" in keys:
        request["limit"] = min(_int(request, "limit", MAX_LIMIT, minimum=1), MAX_LIMIT)
    if op == "query":
        _text(request, "lane")
        verdict = _text(request, "verdict")
        if verdict is not None and verdict not in VERDICTS:
            raise BadRequest(f"'verdict' must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        for key in ("since", "until"):
            if _text(request, key) is not None:
                try:
                    utc_text(request[key])
                except ValueError as exc:
                    raise BadRequest(f"{key!r}: {exc}") from None
    if op == "adjudicated":
        try:
            request["adjudication"] = msgspec.convert(request["adjudication"], Adjudication)
        except msgspec.ValidationError as exc:
            raise BadRequest(f"'adjudication': {exc}") from None
    return Request(**request)


class AlertBus:
    """The service's alert publisher (XPUB) and journal query server (ROUTER).

    Register :attr:`pub` and :attr:`router` in the service's ``zmq.Poller`` and call
    :meth:`handle_pub` / :meth:`handle_query` when they are readable. ``alerts_endpoint``
    and ``query_endpoint`` may use port ``*``; :attr:`alerts_endpoint` and
    :attr:`query_endpoint` then hold the ports bound. ``sndhwm`` is how many messages may
    wait for one subscriber. With ``keys`` both sockets are CURVE servers that admit console keys only.
    Raises :class:`AlertBusError` when an endpoint cannot be bound.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        alerts_endpoint: str,
        query_endpoint: str,
        journal: Journal,
        metrics: ServiceMetrics | None = None,
        *,
        sndhwm: int = PUB_SNDHWM,
        keys: Keys | None = None,
    ) -> None:
        self.journal = journal
        self.reader = journal
        """The journal queries read (the service's own, or a read-only connection for the query thread)."""
        self.metrics = metrics
        self.keyed = keys is not None
        self.peers = RateLimiter(PEER_RATE)
        self.total = RateLimiter(TOTAL_RATE)
        self._ratelog = RateLimitedLog(log)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.subscriptions = 0
        """Open subscriptions that receive decisions."""
        self.pub = ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.XPUB_VERBOSER, 1)  # every subscribe and unsubscribe, so the count stays right
        self.pub.setsockopt(zmq.SNDHWM, sndhwm)
        self.pub.setsockopt(zmq.LINGER, 200)
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        security.serve(self.pub, keys, "alerts")
        security.serve(self.router, keys, "query")
        try:
            self.alerts_endpoint = _bind(self.pub, alerts_endpoint, "alerts")
            self.query_endpoint = _bind(self.router, query_endpoint, "query")
        except AlertBusError:
            self.pub.close(linger=0)
            self.router.close()
            raise
        # Acts to publish, from whichever thread answers queries to the one that owns the XPUB.
        relay = f"inproc://lanewatch-adjudications-{next(_RELAYS)}"
        self.relay = ctx.socket(zmq.PULL)
        """Register in the loop's poller and call :meth:`handle_relay` when readable."""
        self.relay.bind(relay)
        self._relay_in = ctx.socket(zmq.PUSH)
        self._relay_in.setsockopt(zmq.LINGER, 0)
        self._relay_in.connect(relay)
        self._set_gauge()

    def _set_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.subscribers.set(self.subscriptions)

    def handle_pub(self) -> None:
        """Take the subscribe/unsubscribe messages waiting on the XPUB and update the subscriber count."""
        while True:
            try:
                frame = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if not frame or frame[0] not in (0, 1):
                log.warning("alerts: unexpected message from a subscriber: %r", frame[:64])
                continue
            topic = frame[1:]
            if DECISION_TOPIC.startswith(topic):
                self.subscriptions = max(0, self.subscriptions + (1 if frame[0] == 1 else -1))
        self._set_gauge()

    def _send(self, topic: bytes, message: dict[str, Any]) -> None:
        try:
            # msgspec: a tenth of json.dumps' time for a decision, on the decision path
            self.pub.send_multipart([topic, JSON_ENCODER.encode(message)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.error("alerts: cannot publish %s: %s", topic.decode(), exc)

    def publish(self, decision: dict[str, Any]) -> None:
        """Send a decision to every subscriber; call with what :meth:`Journal.append` returned."""
        self._send(DECISION_TOPIC, decision)

    def publish_provisional(self, alarm: dict[str, Any]) -> None:
        """Send a mid-passage alarm (not journaled) to subscribers of ``provisional``."""
        self._send(PROVISIONAL_TOPIC, alarm)

    def handle_relay(self) -> None:
        """Publish the acts the query server took (``adjudicated`` requests) since the last call."""
        while True:
            try:
                body = self.relay.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.pub.send_multipart([ADJUDICATION_TOPIC, body], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.error("alerts: cannot publish an adjudication: %s", exc)

    def start_query_thread(self) -> None:
        """Serve queries from a thread of their own, reading the journal over a read-only connection of their own,
        until :meth:`close`; from then on only that thread uses :attr:`router`."""
        self.reader = Journal(self.journal.path, readonly=True)
        self._thread = threading.Thread(target=self._serve_queries, name="journal-queries", daemon=True)
        self._thread.start()

    def _serve_queries(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            try:
                self.handle_query()
            except Exception as exc:  # a bug: counted and logged at a bounded rate, and serving goes on
                if self.metrics is not None:
                    self.metrics.handler_errors.labels("query").inc()
                self._ratelog.log(logging.ERROR, "query bug", "bug in the query server: %r", exc, exc_info=exc)

    def handle_query(self) -> None:
        """Answer the query requests waiting on the ROUTER (at most :data:`MAX_REQUESTS_PER_CALL`)."""
        for _ in range(MAX_REQUESTS_PER_CALL):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            peer = frames[0].bytes
            rest = [frame.bytes for frame in frames[1:]]
            # A REQ peer puts an empty delimiter before its request; the reply goes back behind it.
            cut = len(rest) - rest[::-1].index(b"") if b"" in rest else 0
            envelope, body = [peer, *rest[:cut]], rest[cut:]
            # A key may be shared (every console of a site may hold the console key): the budget is the connection's
            # under its key, so a client flooding with a shared key spends its own budget, not the other consoles'.
            who = (security.user_id(frames[0]) or "").encode() + b"/" + peer if self.keyed else peer
            reply = self.answer(body[0] if len(body) == 1 else None, peer, who)
            try:
                self.router.send_multipart([*envelope, reply], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                self._ratelog.log(logging.WARNING, "reply", "query: cannot reply to %s: %s", peer.hex(), exc)

    def answer(self, payload: bytes | None, peer: bytes = b"", who: bytes | None = None) -> bytes:
        """The JSON reply to one request frame (None: the message did not hold exactly one frame) from ``peer``,
        charged to the budget of ``who`` (default: ``peer``)."""
        who = peer if who is None else who
        now_s = time.monotonic()
        wait_s = self.peers.wait_s(who, now_s) or self.total.wait_s(b"", now_s)
        if wait_s:
            if self.metrics is not None:
                self.metrics.queries.labels("rate-limited").inc()
            # Rounded up to the millisecond: a wait of a few microseconds must not read as 0.000.
            return b'{"ok":false,"error":"rate limited","retry_after_s":%.3f}' % (math.ceil(wait_s * 1000.0) / 1000.0)
        op = "invalid"
        try:
            if payload is None:
                raise BadRequest("expected exactly one JSON frame after the envelope")
            request = parse_request(payload)
            op = request.op
            if request.adjudication is not None:
                self._relay(request.adjudication)
            records, newest_first = self._records(request)
            last_seq = self.reader.last_seq()
        except BadRequest as exc:
            self._ratelog.log(
                logging.WARNING, "bad request", "query from %s: %s; request %r", peer.hex(), exc, (payload or b"")[:200]
            )
            return self._error(op, str(exc))
        except JournalError as exc:
            self._ratelog.log(logging.ERROR, "journal", "query from %s: %s", peer.hex(), exc)
            return self._error(op, str(exc))
        if self.metrics is not None:
            self.metrics.queries.labels(op).inc()
        kept: list[bytes] = []
        size = 0
        for part in reversed(records) if newest_first else records:
            if kept and size + len(part) > MAX_REPLY_BYTES:
                break
            kept.append(part)
            size += len(part)
        if newest_first:
            kept.reverse()
        cost = size / COST_BYTES
        self.peers.charge(who, cost)
        self.total.charge(b"", cost)
        return b'{"ok":true,"last_seq":%d,"records":[%s]}' % (last_seq, b",".join(kept))

    def _error(self, op: str, message: str) -> bytes:
        if self.metrics is not None:
            self.metrics.queries.labels(op).inc()
        return json.dumps({"ok": False, "error": message}).encode()

    def _relay(self, act: Adjudication) -> None:
        try:
            self._relay_in.send(JSON_ENCODER.encode(act), zmq.NOBLOCK)
        except zmq.Again:
            raise JournalError("the alert bus is not keeping up: the adjudication was not published") from None

    def _records(self, request: Request) -> tuple[list[bytes], bool]:
        """The records (JSON) a checked request asks for, and whether the newest ones matter most when trimming."""
        op, reader, limit = request.op, self.reader, request.limit or MAX_LIMIT
        if op == "adjudicated":
            return [], False
        if op == "since":
            return reader.since_json(request.seq or 0, limit, max_bytes=MAX_REPLY_BYTES), False
        if op in ("get", "last"):
            raw = reader.get_json(reader.last_seq() if op == "last" else request.seq or 0)
            return ([] if raw is None else [raw]), False
        return reader.query_json(request.lane, request.verdict, request.since, request.until, limit), True

    def stop_query_thread(self) -> None:
        """Stop the query thread (if it runs) and close its connection; the router is this thread's again."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.reader.close()
            self.reader = self.journal

    def close(self) -> None:
        """Stop the query thread, close both sockets (decisions still queued get up to 0.2 s to leave)."""
        self.stop_query_thread()
        self.pub.close()
        self.router.close()
        self._relay_in.close()
        self.relay.close(linger=0)
        self.subscriptions = 0
        self._set_gauge()
