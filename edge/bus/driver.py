"""The driver contract: what a device driver implements, and how drivers are found by name.

A driver reads one device of one lane and turns what it reads into :class:`Record`\\ s
through a :class:`RecordPublisher`, which numbers, stamps, publishes and counts them.
Drivers are registered in the ``lanewatch.drivers`` entry-point group (see
``pyproject.toml``) and looked up with :func:`load_driver`; nothing in ``edge`` imports a
concrete driver.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from importlib.metadata import entry_points
from typing import Any, ClassVar

import msgspec
import numpy as np
import zmq

from lanewatch.edge.bus import ingest
from lanewatch.edge.bus.records import STATUS_INTERVAL_S, Kind, Record, StatusValues, Values
from lanewatch.edge.config import Config
from lanewatch.edge.ops.metrics import DriverMetrics

log = logging.getLogger("lanewatch.driver")

IDLE_KINDS = frozenset({Kind.GAMMA_BACKGROUND, Kind.NEUTRON_BACKGROUND, Kind.OCCUPANCY_END})
"""Records that say the lane is not occupied after them: a replay that lost its oldest records starts at one."""

DRIVER_GROUP = "lanewatch.drivers"
SIMULATOR_GROUP = "lanewatch.simulators"


class RecordPublisher:
    """Numbers, stamps and publishes one source's records; counts what it publishes and drops.

    ``seq`` starts at 0 and grows by one per record handed to the bus, so a consumer that
    sees a jump knows exactly how many records it missed; ``run_id`` is random per publisher
    (per driver start), so a consumer tells a restarted or second driver from the first.
    :meth:`emit` may be called from several threads (the driver's and its status thread): a lock
    keeps ``seq`` in order and hands the socket from one to the other.
    """

    def __init__(self, sock: zmq.Socket, lane: str, source: str, metrics: DriverMetrics, keep: int = 0) -> None:
        self.sock = sock
        self.lane = lane
        self.source = source
        self.metrics = metrics
        self.seq = 0
        self.run_id = secrets.token_hex(8)
        """Random per start of the driver: the service tells a restart from a jump in ``seq`` by it."""
        self.invalid = 0
        """Records refused because their values did not fit their kind (counted, logged, never sent)."""
        self.kept: deque[Record] = deque(maxlen=keep)
        """The latest ``keep`` records, published again when a (re)started service asks
        (:class:`lanewatch.edge.bus.ingest.ReplayRequest`), so what reached the driver while the service was
        down, or was on its way when it stopped, is still decided."""
        self._served: set[bytes] = set()
        """Tokens of the replay requests already served."""
        self._lock = threading.RLock()

    def emit(
        self,
        kind: Kind,
        *,
        t_wall_ns: int | None = None,
        t_mono_ns: int | None = None,
        dt_s: float = 0.0,
        counts: np.ndarray | None = None,
        spectra: np.ndarray | None = None,
        values: Values | dict[str, Any] | None = None,
        flags: tuple[str, ...] = (),
    ) -> Record | None:
        """Publish one record stamped now (or with the given arrival times, ns) and return it.

        ``values`` are the kind's :class:`~lanewatch.edge.bus.records.Values` (a dict is checked against them);
        values that do not fit are counted as a parse error (kind ``invalid-record``), logged, and not sent (None).
        A record the bus refuses because the service's queue is full is dropped and counted
        (``publish_drops``); its ``seq`` is spent, so the service counts the gap too.
        """
        with self._lock:
            try:
                record = Record(
                    kind=kind,
                    lane=self.lane,
                    source=self.source,
                    seq=self.seq,
                    t_wall_ns=time.time_ns() if t_wall_ns is None else t_wall_ns,
                    t_mono_ns=time.monotonic_ns() if t_mono_ns is None else t_mono_ns,
                    dt_s=dt_s,
                    counts=counts,
                    spectra=spectra,
                    values=values,
                    flags=flags,
                    run_id=self.run_id,
                )
            except msgspec.ValidationError as exc:
                self.invalid += 1
                self.metrics.parse_errors.labels(self.lane, "invalid-record").inc()
                if self.invalid & (self.invalid - 1) == 0:  # the 1st, 2nd, 4th, 8th, ...: bounded logging
                    log.error("lane %s: %s record not sent (%d so far): %s", self.lane, kind.value, self.invalid, exc)
                return None
            self.seq += 1
            if self.kept.maxlen:
                self.serve_replays()
                self.kept.append(record)
            try:
                ingest.publish(self.sock, record)
                self.metrics.published.labels(self.lane).inc()
            except zmq.Again:
                self.metrics.publish_drops.labels(self.lane).inc()
        return record

    def serve_replays(self) -> None:
        """Publish again, oldest first, the kept records each replay request for this source's run asks for; when
        the run's first records are not among them, from an idle record on, so no occupancy comes without its
        start. Called before each record is published; a driver calls it also while its device is silent."""
        if not self.kept.maxlen:
            return
        with self._lock:
            for request in ingest.replay_requests(self.sock):
                ours = (request.lane, request.source, request.run_id) == (self.lane, self.source, self.run_id)
                if not ours or request.token in self._served:
                    continue
                self._served.add(request.token)
                oldest_ns = time.time_ns() - request.max_age_s * 1e9
                records = [r for r in self.kept if r.seq < request.before and r.t_wall_ns >= oldest_ns]
                if records and records[0].seq > 0:
                    first = next((i for i, r in enumerate(records) if r.kind in IDLE_KINDS), len(records))
                    records = records[first:]
                for record in records:
                    try:
                        ingest.publish(self.sock, record)
                    except zmq.Again:
                        self.metrics.publish_drops.labels(self.lane).inc()
                self.metrics.replayed.labels(self.lane).inc(len(records))

    def emit_status(self) -> Record | None:
        """Publish the driver's ``STATUS`` record, read from its metrics (link, last line, lines, errors)."""
        status = self.metrics.status(self.lane)
        with self._lock:  # ``published`` is this record's own seq
            values = StatusValues(
                link_up=status.connected,
                last_line_age_s=status.last_line_age_s,
                lines=status.lines,
                errors=status.errors,
                published=self.seq,
            )
            return self.emit(Kind.STATUS, values=values)


class Driver(ABC):
    """One device of one lane. Subclasses parse a protocol; the base gives them a publisher."""

    name: ClassVar[str]
    """Registry name, as in ``lanewatch driver NAME``."""
    keep_records: ClassVar[int] = 0
    """Records the driver's publisher keeps to publish again for a service that (re)started (see
    :class:`RecordPublisher`); 0 for drivers whose records are too large to keep (X-ray lines)."""

    def __init__(self, publisher: RecordPublisher) -> None:
        self.publisher = publisher

    @classmethod
    @abstractmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this driver's command-line options (``--lane``, ``--config`` and ``--ingest`` are common)."""

    @classmethod
    @abstractmethod
    def from_args(cls, args: argparse.Namespace, config: Config, publisher: RecordPublisher) -> Driver:
        """Build the driver from parsed options and the configuration."""

    @abstractmethod
    def run(self, stop: threading.Event) -> None:
        """Read the device and publish until ``stop`` is set (or, for a finite source, until it ends)."""

    def serve(self, stop: threading.Event, status_interval_s: float = STATUS_INTERVAL_S) -> None:
        """:meth:`run`, with a ``STATUS`` record published at start, every ``status_interval_s`` and at the end.

        The status is level-triggered device state: a service that missed a ``LINK`` edge, or
        started after the driver, knows the link within one interval, and one that hears
        nothing knows the driver is gone.
        """
        finished = threading.Event()

        def beacon() -> None:
            while True:
                self.publisher.emit_status()
                if finished.wait(status_interval_s):
                    return

        thread = threading.Thread(target=beacon, name=f"status-{self.publisher.lane}", daemon=True)
        thread.start()
        try:
            self.run(stop)
        finally:
            finished.set()
            thread.join()
            self.publisher.emit_status()

    def health(self) -> dict[str, Any]:
        """What the driver's ``/healthz`` reports; ``ok`` is false when the device link is unusable."""
        return {"ok": True, "lane": self.publisher.lane, "source": self.publisher.source}


def available(group: str = DRIVER_GROUP) -> list[str]:
    """Names registered in an entry-point group, sorted."""
    return sorted(ep.name for ep in entry_points(group=group))


def load_driver(name: str, group: str = DRIVER_GROUP) -> Any:
    """The object registered as ``name`` in ``group``; ``KeyError`` lists the known names."""
    for ep in entry_points(group=group):
        if ep.name == name:
            return ep.load()
    raise KeyError(f"no {group} entry named {name!r} (known: {', '.join(available(group)) or 'none'})")
