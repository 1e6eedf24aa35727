"""The ZeroMQ ingest bus between drivers and the service, and gap accounting.

Drivers ``connect`` a PUB socket to the service's ingest endpoint, which the service
``bind``s as SUB, so any number of drivers join one endpoint and the service may restart
without the drivers. Every record carries its source's sequence number; a
:class:`SequenceTracker` turns those into counts of missed, duplicate and late records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import zmq

from lanewatch.edge.bus import security
from lanewatch.edge.bus.records import Record
from lanewatch.edge.bus.security import Keys

# Records a driver buffers while the service is away before it drops (and counts) them.
DRIVER_SNDHWM = 100_000


def driver_publisher(
    ctx: zmq.Context, endpoint: str, keys: Keys | None = None, sndhwm: int = DRIVER_SNDHWM
) -> zmq.Socket:
    """A publisher connected to the service's ingest endpoint (``tcp://host:port`` or ``ipc://``), as the CURVE
    client ``keys`` (None: plaintext).

    It is an XPUB: it publishes like a PUB, and it also receives the subscriptions of the
    service, so :func:`wait_for_subscriber` can tell when records will really be delivered.
    With ``XPUB_NODROP`` a send to a subscribed service whose queue holds ``sndhwm`` records
    raises ``zmq.Again`` (so the driver counts the drop) instead of dropping silently.
    """
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription reaches the driver (replay requests, reconnects)
    sock.setsockopt(zmq.XPUB_NODROP, 1)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.LINGER, 1000)
    security.join(sock, keys)
    sock.connect(endpoint)
    return sock


def wait_for_subscriber(sock: zmq.Socket, timeout_s: float) -> bool:
    """Wait until a subscriber (the service) has subscribed on ``sock``; False after ``timeout_s``.

    Records published before the service's subscription arrives are dropped by ZeroMQ, so a
    driver calls this once before it starts reading its device.
    """
    if sock.poll(timeout_s * 1000, zmq.POLLIN):
        sock.recv()
        return True
    return False


REPLAY_TOPIC = b"\xffreplay/"
"""Prefix of the subscription by which a service asks a driver for records it kept (see :class:`ReplayRequest`).
No record topic starts with this byte, so the subscription filters nothing."""


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """A (re)started service's request to the driver of ``lane``/``source`` for the records of run ``run_id`` it
    kept with a ``seq`` below ``before`` and at most ``max_age_s`` old: those that reached the driver while the
    service was away, or were on their way when it stopped. ``token`` is new per request, so a reconnect (which
    repeats every subscription) does not ask again."""

    lane: str
    source: str
    run_id: str
    before: int
    max_age_s: float
    token: str

    @property
    def topic(self) -> bytes:
        fields = (self.lane, self.source, self.run_id, str(self.before), f"{self.max_age_s:g}", self.token)
        return REPLAY_TOPIC + "/".join(fields).encode()

    @classmethod
    def parse(cls, topic: bytes) -> ReplayRequest | None:
        """The request a subscription ``topic`` carries, or None (not a request, or malformed)."""
        if not topic.startswith(REPLAY_TOPIC):
            return None
        try:
            lane, source, run_id, before, age, token = topic[len(REPLAY_TOPIC) :].decode().split("/")
            request = cls(lane, source, run_id, int(before), float(age), token)
        except (UnicodeDecodeError, ValueError):
            return None
        return request if request.before > 0 and request.max_age_s >= 0 else None


def replay_requests(sock: zmq.Socket) -> list[ReplayRequest]:
    """The replay requests among the subscriptions waiting on a driver's XPUB ``sock`` (reads them all, never
    blocks)."""
    requests = []
    while sock.poll(0, zmq.POLLIN):
        message = sock.recv()
        request = ReplayRequest.parse(message[1:]) if message[:1] == b"\x01" else None
        if request is not None:
            requests.append(request)
    return requests


def publish(sock: zmq.Socket, record: Record) -> None:
    """Send one record; never blocks: a full queue raises ``zmq.Again`` (the caller counts the drop; the gap
    shows in ``seq``)."""
    sock.send_multipart(record.encode(), flags=zmq.NOBLOCK, copy=False)


def service_ingest(ctx: zmq.Context, endpoint: str, keys: Keys | None = None) -> zmq.Socket:
    """The service's SUB socket, bound at ``endpoint`` and subscribed to every topic; with ``keys``, a CURVE server
    that admits driver keys only."""
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    security.serve(sock, keys, "ingest")
    sock.bind(endpoint)
    return sock


MAX_RECORD_RATE_HZ = 1000.0
"""Most records a second one source can publish (a portal's driver sends about ten, an X-ray driver tens of line
batches): more records missed than this rate allows for the time since the source's previous record (plus
:data:`MAX_SEQ_SLACK`) is not a gap but a restart of the source's numbering, or a bad number."""
MAX_SEQ_SLACK = 256
"""Records a gap may hold beyond what :data:`MAX_RECORD_RATE_HZ` allows for the time it spans (records queued
together arrive together)."""


def plausible_gap(elapsed_s: float) -> int:
    """Most records a source can have numbered in ``elapsed_s`` seconds that the service did not receive."""
    return MAX_SEQ_SLACK + int(MAX_RECORD_RATE_HZ * max(0.0, elapsed_s))


@dataclass(slots=True)
class SeqVerdict:
    """What one sequence number means against what came before from the same source."""

    missed: int = 0
    """Records skipped between the previous one and this one (0 when contiguous)."""
    stale: bool = False
    """True when this number repeats the previous one: a duplicate, dropped."""
    restarted: str = ""
    """Why this record starts a new numbering of its source ("" when it does not): ``run_id`` (the driver started
    again), ``seq-back`` (its seq went backwards) or ``seq-jump`` (its seq jumped further than the source could
    have numbered since its previous record, :func:`plausible_gap`)."""
    joined: int = 0
    """For the first number seen from a source: the records it numbered before it (its seq; 0 when more than it
    could have numbered since the tracker started). Whether those were missed or sent before anyone listened is
    for the caller to judge."""


@dataclass
class SequenceTracker:
    """Per-key last ``(run_id, seq, when)``; the first number seen from a key reports what came before it as
    ``joined``.

    A source restart is followed, not fought: a record of a new run, or one whose ``seq`` went
    backwards or leapt forward, starts a new numbering (counted by the caller), so one bad number
    (``seq`` 10**15) costs at most that one record's worth of trust, never the real stream that follows.
    Records are counted missed only as many as the source could have numbered in the time (the service's
    monotonic clock, s) since its previous record: a key that may publish cannot inflate the missed count by
    sending a large ``seq``, and a new run's first records are judged the same way.
    Within one run ZeroMQ delivers in order, so the only stale record is a repeat of the last ``seq``.
    """

    last: dict[tuple[str, ...], tuple[str, int, float]] = field(default_factory=dict)
    started_s: float = field(default_factory=time.monotonic)
    """When the tracker started (monotonic s): a source first seen can have numbered only so much since."""

    def observe(self, key: tuple[str, ...], seq: int, run_id: str = "", now_s: float | None = None) -> SeqVerdict:
        """The verdict on ``seq`` of ``key``'s run ``run_id``, received at ``now_s`` (monotonic s; default now)."""
        now_s = time.monotonic() if now_s is None else now_s
        prev = self.last.get(key)
        self.last[key] = (run_id, seq, now_s)
        if prev is None:
            return SeqVerdict(joined=seq if seq <= plausible_gap(now_s - self.started_s) else 0)
        prev_run, prev_seq, prev_s = prev
        bound = plausible_gap(now_s - prev_s)
        if run_id != prev_run:  # a run numbers from 0 and this one began while we listened: what came before is lost
            return SeqVerdict(restarted="run_id", missed=seq if seq <= bound else 0)
        if seq == prev_seq:
            return SeqVerdict(stale=True)
        if seq < prev_seq:
            return SeqVerdict(restarted="seq-back")
        if seq - prev_seq - 1 > bound:
            return SeqVerdict(restarted="seq-jump")
        return SeqVerdict(missed=seq - prev_seq - 1)
