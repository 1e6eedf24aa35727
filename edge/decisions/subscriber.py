"""Following the alert bus without missing a decision: live messages, gaps filled from the journal.

:class:`AlertSubscriber` subscribes to the service's alerts endpoint first, then asks the
query endpoint for the backlog, and from then on yields decisions in strictly increasing
``seq`` order, each once. Live delivery is only the fast path: whenever a live decision's
``seq`` jumps past the next expected one, and every ``resync_s`` (a query of a few bytes
when nothing is missing), it asks the journal for everything after the last ``seq`` it yielded, so
decisions dropped by a full queue, sent while the link was down or published while the
service restarted still arrive, in order, within about ``resync_s``. ``seq`` values the
journal never gave out (none in normal operation) are simply not there to wait for.

When the service stops, ZeroMQ reconnects the SUB socket by itself; a query that gets no
answer within ``query_timeout_s`` closes its DEALER socket (so a late answer can never be
taken for the next one) and the next try uses a new one. Only the first contact is bounded
by ``connect_timeout_s`` and raises :class:`ServiceUnreachable`; after it, the subscriber
waits for the service as long as its caller keeps iterating.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
import zmq

from lanewatch.edge.bus import security
from lanewatch.edge.bus.security import Keys
from lanewatch.edge.decisions.adjudication import Adjudication
from lanewatch.edge.decisions.alertbus import (
    ADJUDICATION_TOPIC,
    DECISION_TOPIC,
    MAX_LIMIT,
    PROVISIONAL_TOPIC,
    Reply,
    Request,
)
from lanewatch.edge.decisions.decision import Decision, ProvisionalAlarm, decode, seq_of

log = logging.getLogger(__name__)


Item = Decision | ProvisionalAlarm | Adjudication | None
"""What :meth:`AlertSubscriber.decisions` yields."""


class ServiceUnreachable(ConnectionError):
    """The service's query endpoint did not answer in time."""


class QueryError(RuntimeError):
    """The query endpoint answered ``ok: false``; the message is its error."""


class RateLimited(QueryError):
    """The query endpoint refused the request as over its query budget, and the caller chose not to wait."""


def _retry_after_s(frame: bytes) -> float | None:
    """The wait (s) a ``rate limited`` reply asks for; None for any other reply."""
    if not frame.startswith(b'{"ok":false,"error":"rate limited"'):
        return None
    try:
        wait_s = msgspec.json.decode(frame, type=Reply).retry_after_s
    except msgspec.MsgspecError:
        return None
    return None if wait_s is None else max(0.0, wait_s)


class JournalClient:
    """Requests to the journal query endpoint (see :mod:`lanewatch.edge.decisions.alertbus` for the protocol).

    Each request waits at most ``attempt_s`` for its reply; after a timeout the DEALER socket
    is replaced, so replies can never be mismatched.
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, attempt_s: float = 1.0, keys: Keys | None = None) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.keys = keys
        self.attempt_s = attempt_s
        self.timeouts = 0
        """Requests that got no reply in time."""
        self.rate_limited = 0
        """Requests the server refused as over its query budget (and that were asked again)."""
        self._sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            self._sock = self.ctx.socket(zmq.DEALER)
            self._sock.setsockopt(zmq.LINGER, 0)
            security.join(self._sock, self.keys)
            self._sock.connect(self.endpoint)
        return self._sock

    def request(self, request: Request, timeout_s: float | None = None, patient: bool = True) -> Reply:
        """Send ``request`` and return the ``ok`` reply, retrying for up to ``timeout_s`` (default: one attempt).

        Raises :class:`ServiceUnreachable` when no reply came in time and :class:`QueryError`
        when the endpoint refused the request. A ``rate limited`` reply is waited out and asked again while
        ``patient`` (and the wait fits before the deadline); else it raises :class:`RateLimited` at once.
        """
        deadline = time.monotonic() + (self.attempt_s if timeout_s is None else timeout_s)
        payload = msgspec.json.encode(request)
        while True:
            wait_s = min(self.attempt_s, deadline - time.monotonic())
            sock = self._socket()
            sock.send(payload)
            if sock.poll(max(1, int(wait_s * 1000))):
                frame = sock.recv_multipart()[-1]
                retry_s = _retry_after_s(frame)
                if retry_s is not None and not patient:
                    self.rate_limited += 1
                    raise RateLimited(f"{self.endpoint}: rate limited, retry after {retry_s:g} s")
                if retry_s is None or time.monotonic() + retry_s >= deadline:
                    return self._check(frame)
                self.rate_limited += 1
                time.sleep(retry_s)  # over the server's query budget: ask again when it says
                continue
            self.timeouts += 1
            self.close()
            if time.monotonic() >= deadline:
                raise ServiceUnreachable(
                    f"no answer from the journal query endpoint {self.endpoint} "
                    f"within {self.attempt_s if timeout_s is None else timeout_s:g} s"
                )

    def _check(self, frame: bytes) -> Reply:
        try:
            reply = msgspec.json.decode(frame, type=Reply)
        except msgspec.DecodeError:
            raise QueryError(f"{self.endpoint}: the reply is not JSON: {frame[:80]!r}") from None
        except msgspec.ValidationError as exc:
            raise QueryError(f"{self.endpoint}: the reply is not a query reply: {exc}") from None
        if not reply.ok:
            raise QueryError(f"{self.endpoint}: {reply.error or 'request refused'}")
        if reply.records is None or reply.last_seq is None:
            raise QueryError(f"{self.endpoint}: the reply lacks records or last_seq")
        return reply

    def since(
        self, seq: int, limit: int = MAX_LIMIT, timeout_s: float | None = None, patient: bool = True
    ) -> Reply:
        """Reply to ``{"op": "since"}``: decisions after ``seq`` (one page) and ``last_seq``."""
        return self.request(Request(op="since", seq=seq, limit=limit), timeout_s, patient)

    def get_json(self, seq: int, timeout_s: float | None = None) -> bytes | None:
        """The decision numbered ``seq`` as its JSON (as journaled), or None."""
        records = self.request(Request(op="get", seq=seq), timeout_s).records
        return bytes(records[0]) if records else None

    def last_seq(self, timeout_s: float | None = None) -> int:
        """The journal's newest seq (0 when empty)."""
        return int(self.request(Request(op="last"), timeout_s).last_seq or 0)

    def query(
        self,
        timeout_s: float | None = None,
        *,
        lane: str | None = None,
        verdict: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
    ) -> Reply:
        """Reply to ``{"op": "query", ...}``: the newest ``limit`` decisions of ``lane`` with ``verdict`` that ended
        in [since, until) (each filter optional)."""
        request = Request(op="query", lane=lane, verdict=verdict, since=since, until=until, limit=limit)
        return self.request(request, timeout_s)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None


@dataclass
class SubscriberStats:
    """What an :class:`AlertSubscriber` has seen, in decisions unless stated."""

    backlog: int = 0
    """Fetched from the journal when iteration started."""
    live: int = 0
    """Yielded as they arrived on the bus."""
    filled: int = 0
    """Fetched from the journal because live delivery missed them (gaps filled)."""
    gaps: int = 0
    """Times a gap was found: a jump in live seq, or a periodic resync that found decisions missing."""
    duplicates: int = 0
    """Live messages dropped because their seq was already yielded."""
    resyncs_deferred: int = 0
    """Periodic resyncs the query endpoint refused as over its budget (tried again at the next one)."""
    provisional: int = 0
    """Provisional alarms received."""
    adjudications: int = 0
    """Adjudications received (acts on decisions, see :class:`~lanewatch.edge.decisions.adjudication.Adjudication`)."""
    malformed: int = 0
    """Bus messages that were not a decision or alarm (logged and dropped), and journaled decisions that do not fit
    the decision contract (logged and passed over)."""


class AlertSubscriber:
    """Every decision after ``since``, once each, in seq order, live and across service restarts.

    ``since``: ``None`` yields the decisions journaled after the subscriber was created (it
    asks the service for its newest seq right away, and raises :class:`ServiceUnreachable`
    when there is no answer); ``N`` yields those with seq > N (``0``: the whole journal, then
    live ones). ``connect_timeout_s`` bounds the wait for the first answer of the service;
    ``resync_s`` is how often the journal is asked whether anything was missed; ``rcvhwm`` is how many live
    messages may wait unread (more are dropped and fetched again from the journal); ``adjudications`` also yields
    the acts on decisions published on the bus, as they arrive (a lost one is not fetched again here: the
    journal's ``adjudications`` table holds them all).
    """

    def __init__(
        self,
        ctx: zmq.Context,
        alerts_endpoint: str,
        query_endpoint: str,
        since: int | None = None,
        *,
        connect_timeout_s: float = 5.0,
        resync_s: float = 1.0,
        rcvhwm: int = 1000,
        keys: Keys | None = None,
        adjudications: bool = False,
    ) -> None:
        if since is not None and since < 0:
            raise ValueError(f"since must be None or a seq >= 0, got {since}")
        self.cursor = since or 0
        """The seq of the last decision yielded, or where to start."""
        self.connect_timeout_s = connect_timeout_s
        self.resync_s = resync_s
        self.stats = SubscriberStats()
        self.client = JournalClient(ctx, query_endpoint, keys=keys)
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, DECISION_TOPIC)
        # provisional alarms too, from the start, so none is lost before decisions() asks for them
        self.sub.setsockopt(zmq.SUBSCRIBE, PROVISIONAL_TOPIC)
        if adjudications:
            self.sub.setsockopt(zmq.SUBSCRIBE, ADJUDICATION_TOPIC)
        security.join(self.sub, keys)
        self.sub.connect(alerts_endpoint)
        self._provisional = False
        self._reachable = True
        self._behind_warned = False
        self._contacted = since is None
        self.journaled = b""
        """The JSON (as journaled and published) of the decision :meth:`decisions` yielded last."""
        if since is None:
            try:
                self.cursor = self.client.last_seq(connect_timeout_s)
            except BaseException:
                self.close()
                raise

    def decisions(
        self, follow: bool = True, timeout_s: float | None = None, provisional: bool = False
    ) -> Iterator[Item]:
        """Yield decisions in seq order: the backlog, then (``follow``) live ones until the caller stops.

        ``follow=False`` stops once the journal's decisions up to now are yielded. While
        following, ``timeout_s`` yields ``None`` after every ``timeout_s`` seconds in which
        nothing else was yielded, so the caller can do other work (``None``: never).
        ``provisional`` also yields live mid-passage alarms (:class:`ProvisionalAlarm`),
        as they arrive (they carry no seq). Raises :class:`ServiceUnreachable` when the service
        does not answer the first request within ``connect_timeout_s``. After a decision is yielded,
        :attr:`journaled` holds its JSON exactly as journaled and published.
        """
        self._provisional = provisional
        for decision in self._catch_up(None if self._contacted else self.connect_timeout_s):
            self.stats.backlog += 1
            yield decision
        self._contacted = True
        if not follow:
            return
        now = time.monotonic()
        next_resync, next_tick = now + self.resync_s, now + (timeout_s or 0)
        while True:
            wake = min(next_resync, next_tick) if timeout_s is not None else next_resync
            yielded = False
            if self.sub.poll(max(0, int((wake - time.monotonic()) * 1000)) + 1):
                for item in self._on_message(self.sub.recv_multipart()):
                    yielded = True
                    yield item
            if time.monotonic() >= next_resync:
                for item in self._fill(periodic=True):
                    yielded = True
                    yield item
                next_resync = time.monotonic() + self.resync_s
            now = time.monotonic()
            if timeout_s is not None:
                if yielded:
                    next_tick = now + timeout_s
                elif now >= next_tick:
                    next_tick = now + timeout_s
                    yield None

    def _on_message(self, frames: list[bytes]) -> Iterator[Decision | ProvisionalAlarm | Adjudication]:
        """What one bus message yields: a provisional alarm, an act, the decision, or the decisions up to it."""
        try:
            topic, body = frames
            if topic == ADJUDICATION_TOPIC:
                act = msgspec.json.decode(body, type=Adjudication)
                self.stats.adjudications += 1
                yield act
                return
            if topic == PROVISIONAL_TOPIC:
                alarm = msgspec.json.decode(body, type=ProvisionalAlarm)
                if self._provisional:
                    self.stats.provisional += 1
                    yield alarm
                return
            if topic != DECISION_TOPIC:
                raise ValueError(f"unknown topic {topic[:40]!r}")
            seq = seq_of(body)
        except (ValueError, msgspec.MsgspecError) as exc:
            self.stats.malformed += 1
            log.warning("alerts: dropped a malformed message (%s): %r", exc, frames[:2])
            return
        if seq <= self.cursor:
            self.stats.duplicates += 1
            return
        if seq > self.cursor + 1:
            yield from self._fill()
            if not self._reachable or seq <= self.cursor:
                return  # filled from the journal (it has it, being journaled before sent), or to be fetched later
        decision = self._decision(body, seq)
        self.cursor = seq
        if decision is not None:
            self.stats.live += 1
            yield decision

    def _decision(self, body: bytes, seq: int) -> Decision | None:
        """Decision ``seq``'s JSON ``body`` typed (and kept as :attr:`journaled`); None (counted as malformed, logged)
        when it does not fit the decision contract: it is passed over, as the journal keeps it."""
        try:
            decision = decode(body)
        except msgspec.MsgspecError as exc:
            self.stats.malformed += 1
            log.error("alerts: decision %d does not fit the decision contract, passed over: %s", seq, exc)
            return None
        self.journaled = bytes(body)
        return decision

    def _fill(self, periodic: bool = False) -> Iterator[Decision]:
        """The decisions the journal has after the cursor, counted as gap fills; quiet while unreachable.

        A ``periodic`` resync (nothing known to be missing) does not wait when the query endpoint says it is over its
        budget: it is tried again at the next one, and live decisions are not held up meanwhile."""
        found = 0
        try:
            for decision in self._catch_up(None, patient=not periodic):
                if not found:
                    self.stats.gaps += 1
                found += 1
                self.stats.filled += 1
                yield decision
        except RateLimited:
            self.stats.resyncs_deferred += 1
            return
        except (ServiceUnreachable, QueryError) as exc:
            if self._reachable:
                log.warning("%s; retrying every %g s", exc, self.resync_s)
            self._reachable = False
            return
        if not self._reachable:
            log.info("journal query endpoint %s answers again", self.client.endpoint)
        self._reachable = True

    def _catch_up(self, timeout_s: float | None, patient: bool = True) -> Iterator[Decision]:
        """Every decision the journal has after the cursor, page by page, advancing the cursor (``patient``: see
        :meth:`JournalClient.request`)."""
        while True:
            reply = self.client.since(self.cursor, timeout_s=timeout_s, patient=patient)
            last_seq = reply.last_seq or 0
            if last_seq < self.cursor and not self._behind_warned:
                self._behind_warned = True
                log.warning(
                    "journal's newest seq %d is below %d, the last one seen: was the journal replaced?",
                    last_seq,
                    self.cursor,
                )
            start = self.cursor
            for raw in reply.records or []:
                try:
                    seq = seq_of(raw)
                except msgspec.MsgspecError as exc:
                    raise QueryError(f"{self.client.endpoint}: a record without its seq: {exc}") from None
                if seq > self.cursor:
                    decision = self._decision(raw, seq)
                    self.cursor = seq
                    if decision is not None:
                        yield decision
            if self.cursor == start or self.cursor >= last_seq:
                return

    def close(self) -> None:
        """Close both sockets (the context is the caller's)."""
        self.sub.close(linger=0)
        self.client.close()

    def __enter__(self) -> AlertSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
