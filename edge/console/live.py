"""What the lane wall shows, kept up to date from the alert bus, the adjudications and the health endpoints.

Four threads feed one :class:`Wall`:

- the alert thread follows the alert bus with :class:`~lanewatch.edge.decisions.subscriber.AlertSubscriber`
  (live decisions, gaps filled from the journal, provisional mid-passage alarms, and the acts on decisions
  any console announced), and retries while the service is unreachable;
- the announce thread asks the service to publish each act this console journaled (the ``adjudicated``
  request of :mod:`lanewatch.edge.decisions.alertbus`), so every other console learns it at once;
- the journal thread reads the acts from the journal's append-only ``adjudications`` table (the truth) as soon
  as one is announced or recorded here, and every ``[console].adjudication_resync_s`` for any whose announcement was
  lost (service down, console reconnecting), and reads the health of the service and of each lane's drivers
  (every :data:`HEALTH_POLL_S`), kept in the lane health history (:mod:`lanewatch.edge.console.health`);
- the wall thread sends the wall to the browsers, at most every :data:`WALL_INTERVAL_S`.

Every change is put to :class:`Hub`, which hands it to each open browser's queue on the event
loop; a browser whose queue is full is told to reload its state rather than silently lose events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq

from lanewatch.edge.bus.security import Keys
from lanewatch.edge.config import Config
from lanewatch.edge.console.adjudication import NEEDS_ADJUDICATION, Adjudications
from lanewatch.edge.console.health import Health, HealthHistory, LaneHealth, SensorHealth
from lanewatch.edge.console.present import Clock, Summary, background_cps, parse_utc, reason_text, summary
from lanewatch.edge.decisions.adjudication import Adjudication
from lanewatch.edge.decisions.alertbus import Request
from lanewatch.edge.decisions.decision import Decision, ProvisionalAlarm
from lanewatch.edge.decisions.journal import Journal, JournalError
from lanewatch.edge.decisions.subscriber import AlertSubscriber, JournalClient, QueryError, ServiceUnreachable
from lanewatch.edge.ops.metrics import ConsoleMetrics
from lanewatch.edge.ops.ratelog import RateLimitedLog
from lanewatch.edge.ops.status import DriverHealth, ServiceHealth, fetch_health
from lanewatch.edge.ops.status import SensorHealth as ServiceSensor

log = logging.getLogger(__name__)

ANNOUNCE_TIMEOUT_S = 2.0
"""Longest wait (s) for the service to take an act to publish; the act is journaled either way."""
HEALTH_POLL_S = 2.0
"""How often (s) the service's and the drivers' /healthz are read."""
PROVISIONAL_HOLD_S = 180.0
"""A provisional alarm is shown until its lane's next decision, or at most this long (s)."""
QUEUE_SIZE = 2000
"""Events that may wait for one browser; beyond, it is told to reload its state."""
WALL_INTERVAL_S = 0.1
"""Shortest time (s) between two wall snapshots sent to the browsers: changes in between are sent together (the
decisions themselves go out at once, each as its own event)."""
WALL_ALARMS = 5
"""Alarms awaiting adjudication the wall carries for the banner and for each tile (the oldest, which must never drop out
of sight, first come first served; the rest are counted and linked):
it is sent to every browser several times a second, and a site with a thousand alarms not yet disposed made it
0.7 MB and 30 ms of the console's time each."""
SPARKLINE = 40
"""Background values (one per decision) a lane's tile draws."""
RETRY_S = 2.0
"""Wait (s) before following the alert bus again after the service did not answer."""


@dataclass(frozen=True)
class Event:
    """One server-sent event: its name, id (a decision's journal seq, or None) and JSON data."""

    name: str
    id: int | None
    data: str

    def encode(self) -> bytes:
        head = f"event: {self.name}\n" + (f"id: {self.id}\n" if self.id is not None else "")
        return (head + "".join(f"data: {line}\n" for line in self.data.splitlines()) + "\n").encode()


HEARTBEAT = Event("heartbeat", None, "{}")
"""Sent on a stream with nothing else to send (see :data:`~lanewatch.edge.console.app.HEARTBEAT_S`)."""
CLOSING = Event("closing", None, "{}")
"""The last event of every stream when the console shuts down (the browser shows it is not live and reconnects)."""


class Hub:
    """Fans events out to the browsers' queues on the event loop; :meth:`publish` may be called from any thread."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queues: set[asyncio.Queue[Event]] = set()
        self.closing = False
        """Set by :meth:`close`: the server is shutting down, every stream ends."""

    def subscribe(self) -> asyncio.Queue[Event]:
        self.loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        self.queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self.queues.discard(queue)

    def publish(self, event: Event) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._fan_out, event)

    def close(self) -> None:
        """End every open stream: the server is shutting down and waits for its open responses (systemd's stop would
        wait its whole timeout for the walls open). Each stream is sent a ``closing`` event, then ends; one opened
        after this ends at once. May be called from a signal handler on the event loop's thread."""
        self.closing = True
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._close_all)

    def _close_all(self) -> None:
        for waiting in list(self.queues):
            while not waiting.empty():
                waiting.get_nowait()
            waiting.put_nowait(CLOSING)

    def _fan_out(self, event: Event) -> None:
        for waiting in list(self.queues):
            if waiting.full():
                while not waiting.empty():
                    waiting.get_nowait()
                waiting.put_nowait(Event("reload", None, "{}"))
            else:
                waiting.put_nowait(event)


class Wall:
    """The lanes' state: last decision, alarms awaiting adjudication, provisional alarm, sensor health."""

    def __init__(self, config: Config, adjudications: Adjudications, journal: Journal, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.adjudications = adjudications
        self.journal = journal
        self._lock = threading.Lock()
        self.lanes = [lane.id for lane in config.lanes]
        self.last: dict[str, Summary] = {}
        self.awaiting: dict[int, Summary] = {}
        self.provisional: dict[str, tuple[float, str]] = {}
        self.background: dict[str, deque[float]] = {lane: deque(maxlen=SPARKLINE) for lane in self.lanes}
        self.health = Health()
        self.load()

    def load(self) -> None:
        """Awaiting alarms and each lane's last decision, from the journal."""
        awaiting = {}
        for row in self.adjudications.awaiting():
            decision = self.journal.get(row.seq)
            if decision is not None:
                awaiting[row.seq] = summary(decision, row.state, self.clock)
        last = {}
        for lane in self.lanes:
            found = self.journal.query(lane=lane, limit=SPARKLINE)
            for decision in found:
                cps = background_cps(decision)
                if cps is not None:
                    self.background[lane].append(cps)
            if found:
                last[lane] = summary(found[-1], self.adjudications.state(found[-1].seq, found[-1].verdict), self.clock)
        with self._lock:
            self.awaiting, self.last = awaiting, last

    def on_decision(self, decision: Decision) -> Summary:
        state = self.adjudications.state(decision.seq, decision.verdict)
        item = summary(decision, state, self.clock)
        with self._lock:
            lane = decision.lane
            self.provisional.pop(lane, None)
            current = self.last.get(lane)
            if current is None or current.seq < item.seq:
                self.last[lane] = item
                if item.background_cps is not None:
                    self.background.setdefault(lane, deque(maxlen=SPARKLINE)).append(item.background_cps)
            if item.verdict in NEEDS_ADJUDICATION and state != "disposed":
                self.awaiting[item.seq] = item
        return item

    def on_provisional(self, alarm: ProvisionalAlarm, text: str) -> None:
        with self._lock:
            self.provisional[alarm.lane] = (time.monotonic(), text)

    def on_adjudication(self, act: Adjudication) -> None:
        with self._lock:
            for items in (self.awaiting, {i.seq: i for i in self.last.values()}):
                item = items.get(act.seq)
                if item is not None:
                    item.state = "acknowledged" if act.kind == "acknowledge" else "disposed"
            if act.kind != "acknowledge":
                self.awaiting.pop(act.seq, None)

    def on_health(self, health: Health) -> None:
        with self._lock:
            self.health = health

    def snapshot(self) -> dict[str, Any]:
        """The whole wall as JSON-ready data (what the browser draws): per lane and in the banner, the oldest
        :data:`WALL_ALARMS` alarms awaiting adjudication, oldest first, and how many there are; the seq of the newest
        unacknowledged alarm (0: none; a user's mute covers the alarms up to the newest when it was pressed)."""
        now = time.monotonic()
        with self._lock:
            self.provisional = {k: v for k, v in self.provisional.items() if now - v[0] < PROVISIONAL_HOLD_S}
            awaiting: dict[str, list[Summary]] = {lane: [] for lane in self.lanes}
            unacknowledged: dict[str, int] = dict.fromkeys(self.lanes, 0)
            banner: list[Summary] = []
            newest = 0
            for item in sorted(self.awaiting.values(), key=lambda i: (i.end_utc, i.seq)):  # as the queue's order
                mine = awaiting.setdefault(item.lane, [])
                mine.append(item)
                if item.state == "unacknowledged":
                    newest = max(newest, item.seq)
                    unacknowledged[item.lane] = unacknowledged.get(item.lane, 0) + 1
                    if len(banner) < WALL_ALARMS:
                        banner.append(item)
            lanes = []
            for lane in self.lanes:
                health = self.health.lanes.get(lane) or LaneHealth()
                mine = awaiting[lane]
                # An alarm is the headline until it is adjudicated: a provisional alarm of the vehicle in the lane
                # now, else the alarms of earlier vehicles awaiting adjudication; that the next vehicle is in the
                # lane is shown beside them ("occupied"), never instead of them.
                if lane in self.provisional:
                    status = "provisional"
                elif any(item.verdict == "ALARM" for item in mine):
                    status = "alarm"
                elif mine:
                    status = "incomplete"  # vehicles that crossed unscreened wait for an officer
                elif health.occupied:
                    status = "occupied"
                else:
                    status = "idle"
                lanes.append(
                    {
                        "id": lane,
                        "status": status,
                        "occupied": health.occupied,
                        "awaiting": mine[:WALL_ALARMS],
                        "awaiting_count": len(mine),
                        "unacknowledged": unacknowledged[lane],
                        "provisional": self.provisional.get(lane, (0, ""))[1],
                        "last": self.last.get(lane),
                        "background_cps": [round(v, 1) for v in self.background.get(lane, ())],
                        "sensors": health.sensors,
                        # a sensor that is down or silent is a fault of the lane, said in words
                        "faults": health.faults + [f"{s.name} {s.words}" for s in health.sensors if s.words],
                    }
                )
            return msgspec.to_builtins(
                {
                    "lanes": lanes,
                    "unacknowledged": banner,
                    "unacknowledged_count": sum(unacknowledged.values()),
                    "newest_unacknowledged": newest,
                    "service": {"reachable": self.health.reachable, "ok": self.health.ok},
                }
            )


def _sensor(name: str, seen: ServiceSensor | None, http: str, timeout_s: float) -> SensorHealth:
    """One sensor from the service's view of its own driver's records and, when it has one, its driver's /healthz."""
    connected, fresh, age_s = (seen.link_up, seen.fresh, seen.last_record_age_s) if seen else (None, None, None)
    words = seen.problem if seen else "not reported by the service"
    problems = list(seen.link_problems) if seen else []
    if http:
        driver, error = fetch_health(http, timeout_s, DriverHealth)
        if driver is None:
            problems.append(f"its driver does not answer: {error}")
            words = words or "driver not answering"
        else:
            connected = driver.connected if connected is not False else False
            words = words or ("" if driver.connected else "link down")
    return SensorHealth(
        name=name, connected=connected, fresh=fresh, age_s=age_s, ok=not words, words=words, problem="; ".join(problems)
    )


def read_health(config: Config, timeout_s: float = 1.0) -> Health:
    """Per lane: occupied, faults, and each sensor's link and freshness, from the service's view of that sensor's own
    driver and from the driver's /healthz."""
    service, error = fetch_health(config.service.http, timeout_s, ServiceHealth)
    if service is None:
        return Health(reachable=False, error=error)
    lanes = {}
    for lane in config.lanes:
        seen = service.lanes.get(lane.id)
        reported = seen.sensors if seen else {}
        sensors = [_sensor("RPM", reported.get("rpm"), lane.driver_http, timeout_s)]
        if lane.xray:
            sensors.append(_sensor("X-ray", reported.get("xray"), lane.xray_http, timeout_s))
        lanes[lane.id] = LaneHealth(
            occupied=seen.occupied if seen else False, faults=list(seen.faults) if seen else [], sensors=sensors
        )
    return Health(reachable=True, ok=service.ok, lanes=lanes)


class Feeds:
    """The threads of one console (see the module's docstring); :meth:`stop` ends them."""

    def __init__(
        self,
        config: Config,
        wall: Wall,
        hub: Hub,
        metrics: ConsoleMetrics,
        history: HealthHistory,
        health: Callable[[Config], Health] = read_health,
        keys: Keys | None = None,
    ) -> None:
        self.config = config
        self.keys = keys
        """The console's CURVE keys on the alert bus (None on a plaintext bus)."""
        self.wall = wall
        self.hub = hub
        self.metrics = metrics
        self.history = history
        self.health = health
        self.stopping = threading.Event()
        self.adjudication_cursor = wall.adjudications.last_id()
        self.decision_cursor = wall.journal.last_seq()
        self.threads = [
            threading.Thread(target=self._follow, name="console-alerts", daemon=True),
            threading.Thread(target=self._announce, name="console-announce", daemon=True),
            threading.Thread(target=self._read_journal, name="console-journal", daemon=True),
            threading.Thread(target=self._send_wall, name="console-wall", daemon=True),
        ]
        self.wall_changed = threading.Event()
        self.poke = threading.Event()
        """Set to read the adjudications table now (an act was recorded here or announced on the bus)."""
        self.outbox: queue.Queue[Adjudication | None] = queue.Queue()
        """Acts recorded here, for the service to publish."""
        self.recorded_here: set[int] = set()
        self.announced: set[int] = set()
        """Ids of acts announced on the bus and not yet read from the journal."""
        self._ratelog = RateLimitedLog(log)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.poke.set()
        self.wall_changed.set()
        self.outbox.put(None)
        for thread in self.threads:
            thread.join(5)

    def recorded(self, act: Adjudication) -> None:
        """Take an act this console has just committed to the journal: show it, and have it published."""
        self.recorded_here.add(act.id)
        self.outbox.put(act)
        self.poke.set()

    def publish_wall(self) -> None:
        """Have the wall sent to the browsers (within :data:`WALL_INTERVAL_S`)."""
        self.wall_changed.set()

    def _send_wall(self) -> None:
        while not self.stopping.is_set():
            self.wall_changed.wait()
            self.wall_changed.clear()
            if self.stopping.is_set():
                return
            self.hub.publish(Event("wall", None, json.dumps(self.wall.snapshot(), separators=(",", ":"))))
            self.stopping.wait(WALL_INTERVAL_S)

    def _follow(self) -> None:
        ctx = zmq.Context()
        try:
            while not self.stopping.is_set():
                try:
                    with AlertSubscriber(
                        ctx,
                        self.config.bus.alerts,
                        self.config.bus.query,
                        self.decision_cursor,
                        resync_s=1.0,
                        keys=self.keys,
                        adjudications=True,
                    ) as subscriber:
                        self.poke.set()  # (re)connected: read what the journal has that no message announced
                        live = subscriber.stats.live
                        for item in subscriber.decisions(follow=True, timeout_s=0.5, provisional=True):
                            if self.stopping.is_set():
                                return
                            if item is None:
                                continue
                            if isinstance(item, Adjudication):
                                self._on_announced(item)
                                continue
                            if isinstance(item, ProvisionalAlarm):
                                self.wall.on_provisional(item, reason_text(item))
                            else:
                                via = "bus" if subscriber.stats.live > live else "journal"
                                live = subscriber.stats.live
                                self.metrics.decisions.labels(via).inc()
                                self.decision_cursor = item.seq
                                data = self.wall.on_decision(item)
                                self.hub.publish(Event("decision", item.seq, msgspec.json.encode(data).decode()))
                            self.publish_wall()
                except (ServiceUnreachable, QueryError, JournalError) as exc:
                    log.warning("console: alert bus: %s; retrying in %g s", exc, RETRY_S)
                    self.stopping.wait(RETRY_S)
        finally:
            ctx.destroy(linger=0)

    def _on_announced(self, act: Adjudication) -> None:
        recorded = parse_utc(act.time)
        if recorded is not None:
            self.metrics.bus_lag.observe(max(0.0, time.time() - recorded.timestamp()))
        if act.id > self.adjudication_cursor:
            self.announced.add(act.id)
            self.poke.set()

    def _announce(self) -> None:
        ctx = zmq.Context()
        client = JournalClient(ctx, self.config.bus.query, keys=self.keys)
        try:
            while (act := self.outbox.get()) is not None:
                try:
                    client.request(Request(op="adjudicated", adjudication=act), ANNOUNCE_TIMEOUT_S)
                except (ServiceUnreachable, QueryError) as exc:
                    self.metrics.announce_failures.inc()
                    self._ratelog.log(
                        logging.WARNING, "announce", "console: act %d on decision %d journaled but not published "
                        "(other consoles read it from the journal within %g s): %s",
                        act.id, act.seq, self.config.console.adjudication_resync_s, exc,
                    )  # fmt: skip
        finally:
            client.close()
            ctx.destroy(linger=0)

    def _read_journal(self) -> None:
        next_health = next_resync = 0.0
        while not self.stopping.is_set():
            changed = False
            now = time.monotonic()
            if self.poke.is_set() or now >= next_resync:
                self.poke.clear()
                next_resync = now + self.config.console.adjudication_resync_s
                changed = self._read_acts()
            if time.monotonic() >= next_health:
                health = self.health(self.config)
                self.metrics.service_reachable.set(bool(health.reachable))
                self.wall.on_health(health)
                try:
                    self.history.record(health, self.wall.lanes)
                except Exception as exc:  # a locked or unwritable database must not stop the wall
                    self._ratelog.log(logging.WARNING, "history", "console: cannot record lane health: %s", exc)
                next_health = time.monotonic() + HEALTH_POLL_S
                changed = True
            if changed:
                self.publish_wall()
            self.poke.wait(max(0.0, min(next_health, next_resync) - time.monotonic()))

    def _read_acts(self) -> bool:
        """Show the acts the journal holds after the cursor; whether there were any."""
        try:
            acts = self.wall.adjudications.after(self.adjudication_cursor)
        except Exception as exc:  # a locked or unreadable database must not stop the wall
            self._ratelog.log(logging.WARNING, "read", "console: cannot read adjudications: %s", exc)
            return False
        for act in acts:
            self.adjudication_cursor = act.id
            if act.id in self.recorded_here:
                via = "local"
            elif act.id in self.announced:
                via = "bus"
            else:
                via = "journal"
            self.recorded_here.discard(act.id)
            self.announced.discard(act.id)
            self.metrics.adjudications.labels(act.kind, via).inc()
            self.wall.on_adjudication(act)
            data = {"id": act.id, "seq": act.seq, "kind": act.kind, "user": act.user, "via": via}
            self.hub.publish(Event("adjudication", None, json.dumps(data)))
        for seen in [i for i in list(self.announced) if i <= self.adjudication_cursor]:
            self.announced.discard(seen)  # announced, but read from the journal before the message came
        return bool(acts)
