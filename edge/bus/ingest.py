"""The ZeroMQ ingest bus between drivers and the service, and gap accounting.

Drivers ``connect`` a PUB socket to the service's ingest endpoint, which the service
``bind``s as SUB, so any number of drivers join one endpoint and the service may restart
without the drivers. Every record carries its source's sequence number; a
:class:`SequenceTracker` turns those into counts of missed, duplicate and late records.
"""

from __future__ import annotations

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


MAX_SEQ_JUMP = 1_000_000
"""A forward jump in ``seq`` larger than this is a restart of the source's numbering (or a bad number), not that many
records missed: a running service cannot plausibly have missed a million records of one source."""


@dataclass(slots=True)
class SeqVerdict:
    """What one sequence number means against what came before from the same source."""

    missed: int = 0
    """Records skipped between the previous one and this one (0 when contiguous)."""
    stale: bool = False
    """True when this number repeats the previous one: a duplicate, dropped."""
    restarted: str = ""
    """Why this record starts a new numbering of its source ("" when it does not): ``run_id`` (the driver started
    again), ``seq-back`` (its seq went backwards) or ``seq-jump`` (its seq jumped more than :data:`MAX_SEQ_JUMP`)."""
    joined: int = 0
    """For the first number seen from a source: the records it numbered before it (its seq, 0 past
    :data:`MAX_SEQ_JUMP`). Whether those were missed or sent before anyone listened is for the caller to judge."""


@dataclass
class SequenceTracker:
    """Per-key last ``(run_id, seq)``; the first number seen from a key reports what came before it as ``joined``.

    A source restart is followed, not fought: a record of a new run, or one whose ``seq`` went
    backwards or leapt forward, starts a new numbering (counted by the caller), so one bad number
    (``seq`` 10**15) costs at most that one record's worth of trust, never the real stream that follows.
    Within one run ZeroMQ delivers in order, so the only stale record is a repeat of the last ``seq``.
    """

    last: dict[tuple[str, ...], tuple[str, int]] = field(default_factory=dict)

    def observe(self, key: tuple[str, ...], seq: int, run_id: str = "") -> SeqVerdict:
        prev = self.last.get(key)
        self.last[key] = (run_id, seq)
        before = seq if seq <= MAX_SEQ_JUMP else 0
        if prev is None:
            return SeqVerdict(joined=before)
        prev_run, prev_seq = prev
        if run_id != prev_run:  # a run numbers from 0 and this one began while we listened: what came before is lost
            return SeqVerdict(restarted="run_id", missed=before)
        if seq == prev_seq:
            return SeqVerdict(stale=True)
        if seq < prev_seq:
            return SeqVerdict(restarted="seq-back")
        if seq - prev_seq - 1 > MAX_SEQ_JUMP:
            return SeqVerdict(restarted="seq-jump")
        return SeqVerdict(missed=seq - prev_seq - 1)
