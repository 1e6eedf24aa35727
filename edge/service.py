"""The fusion service: one process, one event loop, every lane.

Loop: records arrive on the ingest SUB socket, are decoded and checked against their
source's sequence, and go to their :class:`~lanewatch.edge.lane.occupancy.Lane`. What a lane decides is written
to the journal (durable, fsync'd, or its fallback file) and only then published on the alert bus; a decision
neither could take is kept and retried, never published unjournaled and never dropped. The same loop ends
overdue occupancies and feeds the systemd watchdog, so a stuck loop stops the pings; journal queries are
answered from a thread of their own.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from prometheus_client import CollectorRegistry

from lanewatch.edge.bus import ingest, security
from lanewatch.edge.bus.records import STATUS_INTERVAL_S, DecodeError, Record, decode
from lanewatch.edge.bus.security import Gatekeeper, HandshakeMonitor, Keys
from lanewatch.edge.config import Config, ConfigError
from lanewatch.edge.decisions.alertbus import AlertBus, AlertBusError
from lanewatch.edge.decisions.journal import Journal, JournalError
from lanewatch.edge.lane import detect
from lanewatch.edge.lane.devices import LinkState, lane_link
from lanewatch.edge.lane.occupancy import Decided, Lane, Provisional
from lanewatch.edge.model.runtime import ModelRunner
from lanewatch.edge.ops import keyfiles
from lanewatch.edge.ops.keyfiles import KeyInfo
from lanewatch.edge.ops.metrics import ServiceMetrics, serve_http
from lanewatch.edge.ops.ratelog import RateLimitedLog
from lanewatch.edge.ops.sdnotify import Notifier

log = logging.getLogger("lanewatch.service")

TICK_S = 0.1
"""Longest the loop sleeps (s): bounds timeout checks, retries and watchdog pings."""
JOURNAL_CHECK_S = 0.5
"""How often (s) the loop checks that the journal is still writable and still the file at its path, for /healthz
(a stat and a statvfs: a journal deleted or replaced is reported within a second)."""
RETRY_S = 1.0
"""How long (s) the loop waits before it tries again to journal a decision that neither the journal nor its
fallback file could take."""
MAX_PENDING = 1000
"""Most decisions held in memory while neither the journal nor its fallback file takes them (a decision is up to tens
of kB, so tens of MB at most). Past it one is dropped, the least important (:data:`KEEP_FIRST`), oldest first;
each drop is counted (``lanewatch_decisions_dropped_total``) and logged at CRITICAL, and /healthz fails while any
decision is held."""
KEEP_FIRST = {"ALARM": 2, "INCOMPLETE": 1, "CLEAR": 0}
"""Which held decisions are dropped last when :data:`MAX_PENDING` is reached: an ALARM after an INCOMPLETE (a vehicle
not screened) after a CLEAR."""
MAX_RESUME_LOOKBACK = 50
"""Latest decisions of a lane searched at start for the portal's occupancy counter to resume from."""
REPLAY_WAIT_S = 2.0
"""Longest wait (s) for the records a driver kept before the first one a (re)started service received from it."""
SWITCH_INTERVAL_S = 0.0005
"""The interpreter's thread switch interval in the service process (s; Python's default is 0.005). Each time the
decision loop comes back from waiting (a socket, an fsync, the model) while the query thread runs Python code, it
waits up to this long for the interpreter: at the default, a query flood added milliseconds at each of the decision
path's dozen waits."""
MAX_BATCH = 2000
"""Most ingest messages handled before the loop looks at its other sockets."""
JOIN_GRACE_S = 5 * STATUS_INTERVAL_S
"""After the service starts, how long (s) a source's first record may carry any seq (the driver ran before the
service); later, a source's first seq above 0 counts the records before it as missed."""


@dataclass
class _Replay:
    request: ingest.ReplayRequest
    deadline_s: float
    """Monotonic time (s) after which the service stops waiting."""
    held: list[Record]
    """The source's records that came meanwhile, to route after the replay."""


class Service:
    """Owns the sockets, the journal, the lanes and the HTTP endpoint of one lanewatch process."""

    def __init__(self, config: Config, registry: CollectorRegistry | None = None, http: bool = True) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = ServiceMetrics(self.registry)
        stale_s = config.service.stale_after_s
        self.lanes = {
            lane.id: Lane(lane, config.detection, self.metrics, config.fusion, stale_s) for lane in config.lanes
        }
        self.model = ModelRunner(config.model, self.registry, Path(config.service.journal).parent / config.model.state)
        self.sequences = ingest.SequenceTracker()
        self.pending: deque[Decided] = deque()
        """Decisions to journal then publish, oldest first; at most :attr:`max_pending` (:data:`MAX_PENDING`)."""
        self.max_pending = MAX_PENDING
        self.dropped = 0
        """Decisions dropped since the start because :attr:`pending` was full."""
        self.notifier = Notifier.from_env(self.metrics)
        self._http = http
        self._ctx: zmq.Context | None = None
        self._unknown_lanes: set[str] = set()
        self.replays: dict[tuple[str, str], _Replay] = {}
        """Sources (lane, source) whose kept records the service asked for, with what it holds meanwhile."""
        self._started_mono = time.monotonic()
        self.keys: Keys | None = None
        self._senders: dict[str, KeyInfo] = {}
        """Admitted client keys by name (the User-Id the ZAP handler gives their connections)."""
        self.gatekeeper: Gatekeeper | None = None
        self.rejected: dict[str, tuple[float, str]] = {}
        """Lane -> (monotonic time (s) of the last record of it rejected, why): the lane is not ok meanwhile."""
        self._bugs: set[tuple[str, str]] = set()
        """(where, exception site) of the bugs whose traceback was logged, so each is logged once."""
        self._ratelog = RateLimitedLog(log)
        self.started = False
        self.last_seq = 0
        self.journal_problem = "not started"
        """What keeps the journal from taking decisions ("" when nothing does), for /healthz."""
        self._next_journal_check = 0.0
        self._retry_at = 0.0
        self._failed: set[str] = set()
        """Occupancies whose decision failed to be journaled at least once (their retries are not counted)."""

    # ---- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Open the journal, bind ingest, compile kernels, load the anomaly model, bind the other sockets and the
        HTTP endpoint, then tell systemd READY. A model file that cannot be used raises
        :class:`lanewatch.edge.model.runtime.ModelError`.

        Ingest is bound first, so drivers see the subscription (and send nothing in vain) while the
        kernels compile; what they send meanwhile waits in the socket and is handled once the loop runs.
        """
        self.keys = Keys.load(self.config.bus, keyfiles.SERVICE)
        if self.keys is not None:
            self._senders = {info.name: info for info in self.keys.clients.values()}
        self.journal = Journal(self.config.service.journal, self.metrics, checkpoint_in_background=True)
        self.last_seq = self.journal.last_seq()
        self.journal_problem = self.journal.problem()
        for lane_id, lane in self.lanes.items():
            counters = [d.device_occupancy for d in self.journal.query(lane=lane_id, limit=MAX_RESUME_LOOKBACK)]
            lane.resume(next((c for c in reversed(counters) if isinstance(c, int)), None))
        self._ctx = zmq.Context()
        if self.keys is not None:
            self.gatekeeper = Gatekeeper(self._ctx, self.keys)
        try:
            self.ingest = ingest.service_ingest(self._ctx, self.config.bus.ingest, self.keys)
        except zmq.ZMQError as exc:
            raise ConfigError(f"{self.config.source}: bus.ingest: cannot bind {self.config.bus.ingest}: {exc}") from exc
        self._started_mono = time.monotonic()
        try:
            t0 = time.perf_counter()
            detect.warm_up()
            log.info("kernels ready in %.1f s", time.perf_counter() - t0)
            self.model.start(self.lanes)
        except BaseException:
            self.ingest.close(linger=0)
            if self.gatekeeper is not None:
                self.gatekeeper.stop()
            self._ctx.term()
            self.journal.close()
            raise
        try:
            self.alerts = AlertBus(
                self._ctx, self.config.bus.alerts, self.config.bus.query, self.journal, self.metrics, keys=self.keys
            )
        except AlertBusError as exc:
            raise ConfigError(f"{self.config.source}: {exc}") from exc
        self.poller = zmq.Poller()
        self.poller.register(self.ingest, zmq.POLLIN)
        self.poller.register(self.alerts.pub, zmq.POLLIN)
        self.poller.register(self.alerts.relay, zmq.POLLIN)
        self.handshakes = HandshakeMonitor(self.metrics.auth_failures)
        for sock, endpoint in ((self.ingest, "ingest"), (self.alerts.pub, "alerts"), (self.alerts.router, "query")):
            self.poller.register(self.handshakes.watch(sock, endpoint), zmq.POLLIN)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.alerts.start_query_thread()
        if self._http:
            try:
                self.http_server, _ = serve_http(self.config.service.http, self.registry, self.health)
            except OSError as exc:
                raise ConfigError(
                    f"{self.config.source}: service.http: cannot bind {self.config.service.http}: {exc.strerror}"
                ) from exc
        self.started = True
        # What start-up made (modules, compiled kernels, the model: some 130,000 objects) lives as long as the process;
        # moved out of the collector's sight, a full collection no longer walks it (80-90 ms on a busy 2-core machine,
        # inside whichever decision's handling triggered it) but only what was made since.
        gc.collect()
        gc.freeze()
        self.notifier.ready(f"{len(self.lanes)} lanes, journal seq {self.last_seq}")
        log.info(
            "lanewatch service ready: %d lanes, %s bus, ingest %s, alerts %s, query %s, http %s",
            len(self.lanes),
            "plaintext" if self.keys is None else f"CURVE ({len(self._senders)} client keys)",
            self.config.bus.ingest,
            self.config.bus.alerts,
            self.config.bus.query,
            self.config.service.http if self._http else "off",
        )

    def close(self) -> None:
        """Decide nothing more, flush what is pending to the journal, close everything."""
        self.notifier.stopping()
        self._flush_pending()
        self.alerts.stop_query_thread()
        if self._http:
            self.http_server.shutdown()
            self.http_server.server_close()
        self.handshakes.close()
        self.alerts.close()
        self.ingest.close(linger=0)
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        self.journal.close()
        self.model.close()
        if self._ctx is not None:
            self._ctx.term()

    def run(self, stop: threading.Event) -> None:
        """The event loop, until ``stop`` is set."""
        while not stop.is_set():
            self._barrier("loop", self.step, TICK_S)

    def step(self, timeout_s: float) -> None:
        """One loop iteration: swap in a reloaded model if asked, wait up to ``timeout_s`` for input, handle it,
        then do timed work."""
        self.model.maybe_reload()
        events = dict(self.poller.poll(timeout_s * 1000))
        if self.ingest in events:
            self._drain_ingest()
        if self.alerts.pub in events:
            self._barrier("alerts", self.alerts.handle_pub)
        if self.alerts.relay in events:
            self._barrier("alerts", self.alerts.handle_relay)
        for monitor in self.handshakes.sockets:
            if monitor in events:
                self.handshakes.handle(monitor)
        for key in [k for k, r in self.replays.items() if time.monotonic() > r.deadline_s]:
            self._end_replay(key, "timeout")
        now = time.monotonic_ns()
        for lane in self.lanes.values():
            self._dispatch(self._lane_barrier(lane, lane.on_tick, now))
        self._flush_pending()
        now_s = time.monotonic()
        if now_s >= self._next_journal_check:
            self._next_journal_check = now_s + JOURNAL_CHECK_S
            self.journal_problem = self.journal.problem()
        self.notifier.maybe_ping(now_s)

    # ---- ingest --------------------------------------------------------------------------
    def _drain_ingest(self) -> None:
        for _ in range(MAX_BATCH):
            try:
                frames = self.ingest.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            sender = security.user_id(frames[0]) if self.keys is not None else None
            self._barrier("ingest", self.handle_frames, [frame.bytes for frame in frames], sender)

    def _barrier(self, where: str, handler: Callable[..., object], *args: object) -> None:
        """Run ``handler``; a bug it hits is counted and its traceback logged once, and the loop goes on."""
        try:
            handler(*args)
        except Exception as exc:
            self._bug(where, exc)

    def _bug(self, where: str, exc: Exception) -> None:
        self.metrics.handler_errors.labels(where).inc()
        frame = traceback.extract_tb(exc.__traceback__)[-1:] or [None]
        site = f"{type(exc).__name__} at {frame[0].filename}:{frame[0].lineno}" if frame[0] else type(exc).__name__
        if (where, site) not in self._bugs and len(self._bugs) < 1000:
            self._bugs.add((where, site))
            log.error("bug in the %s handler (logged once, counted each time): %r", where, exc, exc_info=exc)

    def _lane_barrier(
        self, lane: Lane, handler: Callable[..., list[Provisional | Decided]], *args: object
    ) -> list[Provisional | Decided]:
        """What ``handler`` (one of ``lane``'s) returns; when it hits a bug, the lane's open occupancy is ended
        INCOMPLETE (end reason ``error``) and the lane starts afresh, while the other lanes go on."""
        try:
            return handler(*args)
        except Exception as exc:
            self._bug(f"lane {lane.id}", exc)
        try:
            return lane.abort(time.monotonic_ns())
        except Exception as exc:
            self._bug(f"lane {lane.id}", exc)
            return []

    def handle_frames(self, frames: list[bytes], sender: str | None = None) -> None:
        """Decode, authorize, time-check, sequence-check and route one bus message from the key named ``sender``
        (None on a plaintext bus); bad input is counted and logged at a bounded rate."""
        try:
            rec = decode(frames)
        except DecodeError as exc:
            self.metrics.decode_errors.labels(exc.kind).inc()
            self._ratelog.log(
                logging.WARNING,
                f"decode {exc.kind}",
                "undecodable bus message (%s): %s; topic %r",
                exc.kind,
                exc,
                frames[0][:64] if frames else b"",
            )
            return
        if self.keys is not None and not self._authorized(rec, sender):
            return
        lane = self.lanes.get(rec.lane)
        if lane is None:
            self.metrics.unknown_lane.inc()
            if rec.lane not in self._unknown_lanes and len(self._unknown_lanes) < 100:
                self._unknown_lanes.add(rec.lane)
                log.warning("records for lane %r, which is not configured in %s", rec.lane, self.config.source)
            return
        self.metrics.records.labels(rec.lane, rec.source).inc()
        if not self._in_time(rec):
            return
        key = (rec.lane, rec.source)
        replay = self.replays.get(key)
        if replay is not None:
            if rec.run_id == replay.request.run_id and rec.seq < replay.request.before:
                self._sequence_and_route(lane, rec)  # what the driver kept, in its order, before what was held
                if rec.seq == replay.request.before - 1:
                    self._end_replay(key, "complete")
            else:
                replay.held.append(rec)
            return
        last = self.sequences.last.get(key)
        if rec.seq > 0 and (last is None or last[0] != rec.run_id):  # a run whose first records did not come
            self._start_replay(rec)
            return
        self._sequence_and_route(lane, rec)

    def _start_replay(self, rec: Record) -> None:
        """The first record of a source's run that the service received is not the run's first (the service
        started late, or the driver published before its subscription arrived): ask the driver for what it kept
        before it (what came while the service was away, or was on its way when it stopped) and hold the
        source's records until that came, or :data:`REPLAY_WAIT_S` passed (a driver that keeps nothing)."""
        max_age_s = self.config.service.max_record_age_s
        request = ingest.ReplayRequest(rec.lane, rec.source, rec.run_id, rec.seq, max_age_s, secrets.token_hex(8))
        self.replays[(rec.lane, rec.source)] = _Replay(request, time.monotonic() + REPLAY_WAIT_S, [rec])
        self.ingest.setsockopt(zmq.SUBSCRIBE, request.topic)

    def _end_replay(self, key: tuple[str, str], outcome: str) -> None:
        """Stop asking, then go on with the records held meanwhile."""
        replay = self.replays.pop(key)
        self.ingest.setsockopt(zmq.UNSUBSCRIBE, replay.request.topic)
        self.metrics.replays.labels(key[0], key[1], outcome).inc()
        if outcome != "complete":
            log.warning("lane %s source %s: no replay of what came before seq %d", *key, replay.request.before)
        for rec in replay.held:
            self._sequence_and_route(self.lanes[rec.lane], rec)

    def _route(self, lane: Lane, rec: Record) -> None:
        self._dispatch(self._lane_barrier(lane, lane.on_record, rec, time.monotonic_ns()))

    def _sequence_and_route(self, lane: Lane, rec: Record) -> None:
        """Check ``rec`` against its source's sequence (gaps and restarts counted, repeats dropped), then route it."""
        verdict = self.sequences.observe((rec.lane, rec.source), rec.seq, rec.run_id)
        if verdict.joined and time.monotonic() - self._started_mono > JOIN_GRACE_S:
            # A source that starts while the service runs begins at seq 0: a higher first seq means its first
            # records were lost. Shortly after the service starts, a source that ran before it joins mid-stream.
            verdict.missed = verdict.joined
        if verdict.stale:
            self.metrics.stale.labels(rec.lane, rec.source).inc()
            return
        if verdict.restarted:
            self.metrics.source_restarts.labels(rec.lane, rec.source, verdict.restarted).inc()
            self._ratelog.log(
                logging.WARNING,
                f"restart {rec.lane} {rec.source}",
                "lane %s source %s: new numbering (%s) at seq %d, run %s",
                rec.lane,
                rec.source,
                verdict.restarted,
                rec.seq,
                rec.run_id[:32] or "?",
            )
        if verdict.missed:
            self.metrics.gaps.labels(rec.lane, rec.source).inc()
            self.metrics.missed.labels(rec.lane, rec.source).inc(verdict.missed)
            log.warning(
                "lane %s source %s: %d records missed before seq %d", rec.lane, rec.source, verdict.missed, rec.seq
            )
        self._route(lane, rec)

    def _authorized(self, rec: Record, sender: str | None) -> bool:
        """Whether the key that sent ``rec`` may publish for its lane as its source; counted and logged if not."""
        info = self._senders.get(sender or "")
        if info is not None and info.may_publish(rec.lane, rec.source):
            return True
        key = sender if info is not None else "unknown"
        self.metrics.unauthorized.labels(key).inc()
        self._ratelog.log(
            logging.WARNING,
            f"unauthorized {key}",
            "key %s may not publish for lane %r as source %r; record dropped",
            key,
            rec.lane[:64],
            rec.source[:64],
        )
        return False

    def _in_time(self, rec: Record) -> bool:
        """Whether ``rec``'s stamp lies within the configured skew of the service's clock; if not it is counted,
        logged, and its lane reported not ok for ``rejected_health_s``."""
        ahead_s = (rec.t_wall_ns - time.time_ns()) / 1e9
        cfg = self.config.service
        if -cfg.max_record_age_s <= ahead_s <= cfg.clock_skew_s:
            return True
        side = "ahead" if ahead_s > 0 else "behind"
        where = "ahead of" if ahead_s > 0 else "behind"
        why = f"records from {rec.source} stamped {abs(ahead_s):.1f} s {where} the service clock"
        self.rejected[rec.lane] = (time.monotonic(), why)
        self.metrics.rejected.labels(rec.lane, rec.source, f"clock-{side}").inc()
        self._ratelog.log(logging.WARNING, f"clock {rec.lane} {rec.source}", "lane %s: %s; rejected", rec.lane, why)
        return False

    # ---- decisions -----------------------------------------------------------------------
    def _dispatch(self, events: list[Provisional | Decided]) -> None:
        for event in events:
            if isinstance(event, Provisional):
                self._barrier("alerts", self.alerts.publish_provisional, event.alarm)
            else:
                self._barrier("model", self.model.review, event.decision)
                self._hold(event)
        self._flush_pending()
        self.model.save()

    def _hold(self, event: Decided) -> None:
        """Queue ``event`` for the journal; when :attr:`max_pending` are held already, drop the least important."""
        self.pending.append(event)
        if len(self.pending) <= self.max_pending:
            return
        victim = shed(self.pending)
        decision = victim.decision
        lane, verdict, occupancy = str(decision.get("lane")), str(decision.get("verdict")), decision.get("occupancy_id")
        self._failed.discard(str(occupancy))
        self.dropped += 1
        self.metrics.dropped.labels(lane, verdict).inc()
        self._ratelog.log(
            logging.CRITICAL,
            "dropped",
            "decision DROPPED (%d since the start): neither the journal nor its fallback file takes decisions and %d "
            "are held, the most kept; lane %s occupancy %s verdict %s lost",
            self.dropped,
            len(self.pending),
            lane,
            occupancy,
            verdict,
        )

    def _flush_pending(self) -> None:
        """Journal then publish each pending decision, oldest first; at the first that neither the journal nor its
        fallback file takes, stop and try again after :data:`RETRY_S`."""
        if self.pending and time.monotonic() < self._retry_at:
            return
        while self.pending:
            event = self.pending[0]
            occupancy = str(event.decision.get("occupancy_id"))
            try:
                stored = self.journal.append(event.decision, retry=occupancy in self._failed)
            except JournalError as exc:
                self._failed.add(occupancy)
                self._retry_at = time.monotonic() + RETRY_S
                self.journal_problem = self.journal.problem() or str(exc)
                log.error("journal write failed, %d decisions held for retry: %s", len(self.pending), exc)
                return
            self.pending.popleft()
            self._failed.discard(occupancy)
            if stored["seq"] <= self.last_seq:  # decided again from records a driver replayed: journaled before
                self.metrics.redecided.labels(stored["lane"]).inc()
                continue
            self.last_seq = stored["seq"]
            self.alerts.publish(stored)
            self.metrics.decisions.labels(stored["lane"], stored["verdict"]).inc()
            for alarm in stored["alarms"]:
                if alarm.get("alarm"):
                    self.metrics.alarm_reasons.labels(stored["lane"], alarm["reason"]).inc()
            self.metrics.decision_latency.observe(max(0.0, (time.time_ns() - event.end_t_wall_ns) / 1e9))

    # ---- health --------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """What /healthz and ``lanewatch status`` report; ``ok`` only when every part is.

        Called from the HTTP thread: it reads only plain attributes the loop keeps up to date.
        """
        now_mono_ns = time.monotonic_ns()
        lanes = {}
        now_s = time.monotonic()
        for lane_id, lane in self.lanes.items():
            when, why = self.rejected.get(lane_id, (None, ""))
            sensors = lane.devices.sensor_states(now_mono_ns)
            link, link_problems = lane_link(sensors)
            ages = [s.age_s for s in sensors if s.age_s is not None]
            lanes[lane_id] = {
                "link": link.value,
                "link_up": link.up,
                "link_problems": link_problems,
                # the lane's, as old as its stalest sensor's: a lane is fresh only while every sensor of it is
                "last_record_age_s": round(max(ages), 3) if len(ages) == len(sensors) else None,
                "fresh": all(s.fresh for s in sensors),
                "sensors": {
                    s.sensor.value: {
                        "link": s.link.value,
                        "link_up": s.link.up,
                        "link_problems": s.problems,
                        "last_record_age_s": None if s.age_s is None else round(s.age_s, 3),
                        "fresh": s.fresh,
                        "problem": s.words,
                    }
                    for s in sensors
                },
                "occupied": lane.occupancy is not None,
                "faults": sorted(lane.faults | self.model.faults(lane_id)),
                "rejected": why if when is not None and now_s - when < self.config.service.rejected_health_s else "",
            }
        writable = self.started and not self.journal_problem
        watchdog = self.notifier.health()
        ok = (
            writable
            and not self.pending
            and all(v["fresh"] and v["link"] == LinkState.UP and not v["rejected"] for v in lanes.values())
            and watchdog.get("fed", True)
        )
        return {
            "ok": bool(ok),
            "pid": os.getpid(),
            "lanes": lanes,
            "journal": {
                "path": self.config.service.journal,
                "writable": bool(writable),
                "problem": self.journal_problem,
                "last_seq": self.last_seq,
                "pending": len(self.pending),
                "dropped": self.dropped,
            },
            "watchdog": watchdog,
            "model": self.model.health(),
        }


def shed(pending: deque[Decided]) -> Decided:
    """Remove and return the held decision to drop: the oldest of the least important verdict (:data:`KEEP_FIRST`;
    an unknown verdict counts as an ALARM)."""
    rank = [KEEP_FIRST.get(str(event.decision.get("verdict")), KEEP_FIRST["ALARM"]) for event in pending]
    victim = pending[rank.index(min(rank))]
    pending.remove(victim)
    return victim
