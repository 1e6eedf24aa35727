"""One inspection lane: background tracking, occupancy segmentation, one decision per occupancy.

State machine per lane::

    IDLE --first gamma/neutron scan sample--> OCCUPIED
    OCCUPIED --end-of-occupancy (GX)----------> IDLE   end_reason "gx"
    OCCUPIED --background line (GX lost)------> IDLE   end_reason "background"
    OCCUPIED --no GX after occupancy_timeout_s-> IDLE   end_reason "timeout"   (INCOMPLETE)
    OCCUPIED --samples stop for sample_timeout_s> IDLE  end_reason "stalled"   (INCOMPLETE)

X-ray records go to the lane's :class:`~lanewatch.edge.xray.scan.ScanAssembler`. A scan belongs to the
occupancy whose time span (first sample to end line, by the drivers' stamps), widened by
``match_tolerance_s`` at both ends, it overlaps; of several, the one overlapping most. A scan that starts
after the occupancy ended (plus the tolerance) is never its scan, so a lost scan never pulls the next
vehicle's in. A restarted X-ray driver, or one that lost its scanner, ends its open scan incomplete
(``driver-restart``, ``link-lost``), and its next scan pairs afresh. At a lane with a scanner
(``xray`` configured) an ended occupancy waits for its scan to end, at most ``scan_wait_s``: then an
open scan is cut and fused as it is, and without any scan the decision is made on radiation alone
(``xray.status`` ``missing``, anomaly ``xray-scan-missing``). A finished scan that no occupancy
claims within ``scan_wait_s`` (plus the tolerance) of its end, and that overlaps no open occupancy,
is a scan without an occupancy: counted (anomaly ``xray-no-occupancy``), logged, and journaled as an
image-only decision (:func:`lanewatch.edge.decisions.decision.build_scan_only`). A lane without a scanner decides at
once, as before, fusing a scan only if one has already ended.

A GX while IDLE is a duplicate end and is counted, not decided. A scan sample stamped earlier than
the end of the occupancy just decided is late and is counted and dropped. Tamper lines set a
fault and mark the occupancy. The lane learns its channel layout from the records: a portal
with 8 spectroscopic detectors and one with 4 PVT panels are handled alike.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lanewatch.edge.bus.records import Kind, Record, iso_utc
from lanewatch.edge.config import DetectionConfig, FusionConfig, LaneConfig, ServiceConfig
from lanewatch.edge.decisions import decision
from lanewatch.edge.lane.background import BackgroundEstimator
from lanewatch.edge.lane.calibration import LaneCalibration
from lanewatch.edge.lane.detect import OccupancyAnalyzer, device_alarm_entry
from lanewatch.edge.lane.devices import DeviceStates, LinkState, Sensor, lane_link
from lanewatch.edge.ops.metrics import ServiceMetrics
from lanewatch.edge.xray import fusion
from lanewatch.edge.xray.fusion import warm_up
from lanewatch.edge.xray.scan import Scan, ScanAssembler

log = logging.getLogger("lanewatch.lane")

COUNTER_MODULUS = 1_000_000
"""The portal's occupancy counter (GX field 1) has 6 digits and wraps."""
MAX_MISSED = 1000
"""Largest forward jump of the portal's occupancy counter taken as vehicles missed; a larger one is a reset."""
QUIET_START_S = 1.0
"""A portal's link up this long (s) before its first scan sample was idle when it came up: it sends a gamma sample
every 0.2 s while occupied (the line protocol), so a vehicle it was in the middle of shows within 0.2 s."""
CUT_ENDS = ("driver-restart", "link-lost", "stalled", "timeout")
"""End reasons of an occupancy cut before its end line: the portal's next counter tells which vehicle it was."""

_FAULTS = {
    (Kind.GAMMA_BACKGROUND, "fault_low"): "gamma-low",
    (Kind.GAMMA_BACKGROUND, "fault_high"): "gamma-high",
    (Kind.NEUTRON_BACKGROUND, "fault_high"): "neutron-high",
}


@dataclass
class Provisional:
    """An alarm raised mid-passage, before the occupancy is decided."""

    alarm: dict[str, Any]


@dataclass
class Decided:
    """The decision of an occupancy, ready for the journal; ``end_t_wall_ns`` stamps its end line."""

    decision: dict[str, Any]
    end_t_wall_ns: int


@dataclass
class _Ended:
    """An ended occupancy's analysis and facts, waiting (at a lane with a scanner) for its scan."""

    facts: dict[str, Any]
    """Keyword arguments of :func:`lanewatch.edge.decisions.decision.build` but the analysis."""
    analysis: dict[str, Any]
    deadline_mono_ns: int

    @property
    def span_ns(self) -> tuple[int, int]:
        return self.facts["start_wall_ns"], self.facts["end_wall_ns"]


@dataclass
class _Occupancy:
    analyzer: OccupancyAnalyzer
    start_wall_ns: int
    started_mono_ns: int
    last_sample_mono_ns: int
    gamma_shape: tuple[int, ...]
    id: str
    """Unique occupancy id: lane, start stamp (ns), and the source and seq of the opening record."""
    source: str
    """The source (driver) whose samples make the occupancy."""
    last_wall_ns: int
    """Stamp (ns) of its latest sample."""
    samples: int = 0
    device_gamma: bool = False
    """The portal alarmed on gamma (a GA line) during the occupancy."""
    device_neutron: bool = False
    """The portal alarmed on neutrons (an NA line) during the occupancy."""
    tamper: bool = False
    link_interruptions: int = 0
    provisional_reasons: set[str] = field(default_factory=set)
    incomplete: list[str] = field(default_factory=list)
    """Why the occupancy's data is not whole, whatever its end: ``partial`` (its start was not seen),
    ``no-background`` (no background reading before it)."""


class Lane:
    """Turns one lane's records into provisional alarms and decisions."""

    def __init__(
        self,
        lane: LaneConfig,
        detection: DetectionConfig,
        metrics: ServiceMetrics,
        fusion_cfg: FusionConfig | None = None,
        stale_after_s: float | None = None,
    ) -> None:
        """``stale_after_s``: a driver silent this long (s) leaves the link stale (default: the service's)."""
        self.id = lane.id
        self.detection = detection
        self.metrics = metrics
        self.fusion = fusion_cfg or FusionConfig()
        self.has_scanner = bool(lane.xray)
        self.scans = ScanAssembler(lane, detection, self.fusion, metrics)
        if self.has_scanner:
            warm_up()
        self.finished_scans: list[Scan] = []
        """Scans that ended and await their occupancy (or, after a while, an image-only decision)."""
        self.waiting: list[_Ended] = []
        """Ended occupancies waiting for their scan."""
        self.background: BackgroundEstimator | None = None
        self.calibration = LaneCalibration()
        """What the lane's background lines really count, checked against its occupancies."""
        self.occupancy: _Occupancy | None = None
        self.faults: set[str] = set()
        self.devices = DeviceStates(
            ServiceConfig().stale_after_s if stale_after_s is None else stale_after_s,
            (Sensor.RPM, Sensor.XRAY) if self.has_scanner else (Sensor.RPM,),
        )
        """Device link state reported by each source (driver) of the lane, and the age of each sensor's data."""
        self.link_state = LinkState.UNKNOWN
        self._publish_link(LinkState.UNKNOWN)
        self._update_link(0)
        self.idle_seen: set[str] = set()
        """Sources seen unoccupied (a background or end line) since the service or their link or run started: an
        occupancy that opens with a sample from another source may have begun before we saw it (``partial``)."""
        self.linked_quiet: dict[str, int] = {}
        """Stamp (ns) of each source's link coming up, until its first scan sample: a portal sends a gamma sample every
        0.2 s while occupied, so a first sample ``QUIET_START_S`` or more after the link came up began a vehicle whose
        start was seen, background line or not."""
        self.runs: dict[str, str] = {}
        """The run id each source (driver) last published under: a new one is a restart of that driver."""
        self.last_counter: int | None = None
        """The portal's occupancy counter on its latest end line (or the journal's latest, after a restart)."""
        self.held: _Ended | None = None
        """An occupancy cut before its end line (``CUT_ENDS``) at a portal whose counter can be trusted, held until
        the next end line says whether the vehicle's tail followed (one decision for both) or not."""
        self.held_since_mono_ns = 0
        self.last_end_wall_ns = 0
        self.setup: dict[str, list[str]] = {}
        self.speed_kmh: float | None = None
        windows = max(1, len(detection.energy_windows_kev) - 1)
        self._gamma_shape: tuple[int, int] = (lane.gamma_channels, windows)
        """(channels, K) of gamma records; learnt from the device, configured until then."""
        self._neutron_channels = lane.neutron_channels

    # ---- records -------------------------------------------------------------------------
    def on_record(self, rec: Record, now_mono_ns: int) -> list[Provisional | Decided]:
        """Apply one record; returns what it caused (provisional alarms, a decision)."""
        before = self.devices.sources.get(rec.source)
        data_before = None if before is None else before.data_mono_ns
        self.devices.heard(rec, now_mono_ns)
        heard = self.devices.sources[rec.source]
        if heard.data_mono_ns != data_before:  # the sensor's data, not a portal driver's heartbeat
            self.metrics.last_record.labels(self.id, heard.sensor.value).set(rec.t_wall_ns / 1e9)
        events = self._check_run(rec, now_mono_ns)
        return events + _HANDLERS.get(rec.kind, Lane._ignore)(self, rec, now_mono_ns)

    def resume(self, counter: int | None) -> None:
        """Start from the portal's occupancy counter of the lane's latest journaled decision (after a restart)."""
        self.last_counter = counter

    def _check_run(self, rec: Record, now_mono_ns: int) -> list[Provisional | Decided]:
        """A new run id from a source is a restart of its driver: what it had open is cut (``driver-restart``)."""
        prev = self.runs.get(rec.source)
        self.runs[rec.source] = rec.run_id
        if prev is None or prev == rec.run_id:
            return []
        self._anomaly("source-restart")
        self.idle_seen.discard(rec.source)
        self.linked_quiet.pop(rec.source, None)
        occ = self.occupancy
        log.warning("lane %s: source %s restarted (run %s, was %s)", self.id, rec.source, rec.run_id, prev)
        events = self._close_scan(rec.source, "driver-restart", now_mono_ns)
        if occ is not None and occ.source == rec.source:
            events += self._end(occ.last_wall_ns, "driver-restart", None, now_mono_ns)
        return events

    def _close_scan(self, source: str, reason: str, now_mono_ns: int) -> list[Provisional | Decided]:
        """End the open scan of ``source`` incomplete (its driver restarted or lost its link): it pairs with the
        occupancy it overlaps, and the next scan of the source starts afresh."""
        scan = self.scans.cut(source, now_mono_ns, reason)
        if scan is None:
            return []
        self.finished_scans.append(scan)
        return self._match(now_mono_ns)

    @property
    def link_up(self) -> bool | None:
        """True while the link is up, False while a source reports it down, None while unknown or stale."""
        return self.link_state.up

    def _on_link(self, rec: Record, now_mono_ns: int) -> list[Provisional | Decided]:
        """A ``LINK`` edge or a ``STATUS`` level from one of the lane's drivers."""
        was_up = self.devices.observe(rec, now_mono_ns)
        up = self.devices.sources[rec.source].link_up
        if rec.kind is Kind.LINK or was_up is not up:  # the link (re)started: the source's idle state is unknown
            self.idle_seen.discard(rec.source)
            self.linked_quiet.pop(rec.source, None)
            if rec.kind is Kind.LINK and up:
                self.linked_quiet[rec.source] = rec.t_wall_ns
        self._update_link(now_mono_ns)
        occ = self.occupancy
        lost = not up and (rec.kind is Kind.LINK or bool(was_up))
        events = self._close_scan(rec.source, "link-lost", now_mono_ns) if lost else []
        if lost and occ is not None:
            if occ.source == rec.source:  # what follows the link's return may be another vehicle
                return events + self._end(rec.t_wall_ns, "link-lost", None, now_mono_ns)
            occ.link_interruptions += 1
        return events

    def _update_link(self, now_mono_ns: int) -> None:
        sensors = self.devices.sensor_states(now_mono_ns)
        for sensor in sensors:
            for each in LinkState:
                self.metrics.sensor_link_state.labels(self.id, sensor.sensor.value, each.value).set(each is sensor.link)
        state, _ = lane_link(sensors)
        if state is not self.link_state:
            self.link_state = state
            self._publish_link(state)

    def _publish_link(self, state: LinkState) -> None:
        self.metrics.link_up.labels(self.id).set(1 if state is LinkState.UP else 0)
        for each in LinkState:
            self.metrics.link_state.labels(self.id, each.value).set(1 if each is state else 0)

    def _on_background(self, rec: Record, now_mono_ns: int) -> list[Provisional | Decided]:
        events = self._end(rec.t_wall_ns, "background", None, now_mono_ns) if self.occupancy is not None else []
        events += self._release_held(now_mono_ns)
        self.idle_seen.add(rec.source)
        for flag in ("fault_low", "fault_high"):
            name = _FAULTS.get((rec.kind, flag))
            if name:
                self._set_fault(name, flag in rec.flags)
        if rec.counts is None:
            self._anomaly("missing-counts")
            return events
        estimator = self._estimator(rec)
        if rec.kind is Kind.GAMMA_BACKGROUND:
            self.calibration.on_background_line(rec.t_mono_ns / 1e9)
            accepted = estimator.update_gamma(rec.counts.astype(np.float64), rec.t_mono_ns, rec.flags)
            if estimator.gamma_cps is not None:
                for ch, cps in enumerate(estimator.gamma_cps.sum(axis=1)):
                    self.metrics.background.labels(self.id, str(ch + 1)).set(float(cps))
        else:
            accepted = estimator.update_neutron(rec.counts.reshape(-1).astype(np.float64), rec.t_mono_ns, rec.flags)
            if estimator.neutron_cps is not None:
                for ch, cps in enumerate(estimator.neutron_cps):
                    self.metrics.neutron_background.labels(self.id, str(ch + 1)).set(float(cps))
        if not accepted:
            self._anomaly("background-rejected")
        return events

    def _on_scan(self, rec: Record, now_mono_ns: int) -> list[Provisional | Decided]:
        if rec.counts is None or rec.dt_s <= 0:
            self._anomaly("bad-sample")
            return []
        if rec.t_wall_ns < self.last_end_wall_ns:
            self._anomaly("late-sample")
            return []
        events: list[Provisional | Decided] = []
        self._update_link(now_mono_ns)
        occ = self.occupancy
        if occ is not None and (
            (rec.kind is Kind.GAMMA_SCAN and rec.counts.shape != occ.gamma_shape)
            or (rec.kind is Kind.NEUTRON_SCAN and rec.counts.size != self._neutron_channels)
        ):
            self._anomaly("channel-mismatch")
            return []
        if occ is None:
            occ = self._begin(rec, now_mono_ns)
            if "partial" not in occ.incomplete:
                events += self._release_held(now_mono_ns)
        occ.last_sample_mono_ns = now_mono_ns
        occ.last_wall_ns = rec.t_wall_ns
        occ.samples += 1
        if rec.kind is Kind.GAMMA_SCAN:
            occ.device_gamma |= "device_alarm" in rec.flags
            raised = occ.analyzer.add_gamma(rec.counts, rec.dt_s)
        else:
            occ.device_neutron |= "device_alarm" in rec.flags
            raised = occ.analyzer.add_neutron(rec.counts.reshape(-1), rec.dt_s)
        for alarm in raised:
            if alarm["reason"] in occ.provisional_reasons:
                continue
            occ.provisional_reasons.add(alarm["reason"])
            self.metrics.provisional.labels(self.id).inc()
            events.append(Provisional({"lane": self.id, "occupancy_id": occ.id, **alarm}))
        return events

    def _on_speed(self, rec: Record, now_mono_ns: int) -> list[Provisional | Decided]:
        speed = rec.values.speed_kmh
        if not isinstance(speed, int | float) or not 0 < speed < 200:
            self._anomaly("bad-speed")
            return []
        self.speed_kmh = float(speed)
        if self.occupancy is not None:
            self.occupancy.analyzer.set_speed(self.speed_kmh)
        return []

    def _on_end(self, rec: Record, now_mono_ns: int) -> list[Provisional | Decided]:
        """An end line: decides the open occupancy; the portal's counter tells which vehicles went by unseen.

        The counter is trusted only while it is not 0 (SRLS's auto mode sends 0 on every GX). A held occupancy
        (cut before its end line) is the vehicle after the last counter: with the open occupancy, when that was
        joined mid-vehicle and its counter is the held one's, it is one decision; else it is decided on its own.
        A jump of k > 1 gives k - 1 decisions ``missed``, and an occupancy whose start was seen that ends with
        a jump ends ``counter-jump`` (its end lines went missing: it may hold more than one vehicle).
        """
        self.idle_seen.add(rec.source)
        counter = rec.values.device_occupancy
        device_neutron = rec.values.neutron_background_cps
        if device_neutron is not None and self.background is not None:
            self.calibration.on_device_background(float(device_neutron), self.background.neutron_cps)
        trusted = counter is not None and counter > 0 and self.last_counter is not None and self.last_counter > 0
        expected = (self.last_counter + 1) % COUNTER_MODULUS if trusted and self.last_counter is not None else None
        occ = self.occupancy
        events: list[Provisional | Decided] = []
        if self.held is not None:
            if occ is not None and "partial" in occ.incomplete and counter is not None and counter == expected:
                held, self.held = self.held, None
                self.last_counter = counter
                return self._end(rec.t_wall_ns, "gx", counter, now_mono_ns, head=held)
            events += self._release_held(now_mono_ns)
        missed = self._advance(counter)
        since_ns = self.last_end_wall_ns
        for m in missed:
            events.append(Decided(decision.build_missed(self.id, rec, m, since_ns), rec.t_wall_ns))
        if occ is None:
            self._anomaly("duplicate-end")
            return events
        reason = "counter-jump" if missed and "partial" not in occ.incomplete else "gx"
        return events + self._end(rec.t_wall_ns, reason, counter, now_mono_ns)

    def _advance(self, counter: int | None) -> list[int]:
        """Take the portal's counter of an end line; the counters of the vehicles it says went by unseen."""
        last, self.last_counter = self.last_counter, counter if counter is not None else self.last_counter
        if counter is None or last is None or counter == 0 or last == 0:
            return []
        step = (counter - last) % COUNTER_MODULUS
        if step == 1:
            return []
        if step == 0 or step > COUNTER_MODULUS // 2:
            self._anomaly("counter-repeat" if step == 0 else "counter-backwards")  # replayed, or the portal reset it
            return []
        if step > MAX_MISSED + 1:
            self._anomaly("counter-reset")
            log.warning(
                "lane %s: portal occupancy counter jumped from %d to %d; taken as a reset", self.id, last, counter
            )
            return []
        self._anomaly("counter-jump")
        self.metrics.missed_occupancies.labels(self.id).inc(step - 1)
        log.warning(
            "lane %s: portal occupancy counter jumped from %d to %d: %d vehicles missed",
            self.id,
            last,
            counter,
            step - 1,
        )
        return [(last + i) % COUNTER_MODULUS for i in range(1, step)]

    def _on_tamper(self, rec: Record, now_mono_ns: int) -> list[Provisional | Decided]:
        active = rec.values.active
        self._set_fault("tamper", active)
        if active:
            self._anomaly("tamper")
            if self.occupancy is not None:
                self.occupancy.tamper = True
        return []

    def _on_setup(self, rec: Record, now_mono_ns: int) -> list[Provisional | Decided]:
        self.setup[rec.values.line] = list(rec.values.fields)
        return []

    def _ignore(self, rec: Record, now_mono_ns: int) -> list[Provisional | Decided]:
        return []

    # ---- time ----------------------------------------------------------------------------
    def on_tick(self, now_mono_ns: int) -> list[Provisional | Decided]:
        """End an occupancy that overstayed its timeouts (verdict INCOMPLETE unless it alarmed), close scans
        that overstayed theirs, and decide what waited long enough for a scan."""
        events: list[Provisional | Decided] = []
        self._update_link(now_mono_ns)
        occ = self.occupancy
        if occ is not None:
            if now_mono_ns - occ.last_sample_mono_ns > self.detection.sample_timeout_s * 1e9:
                events = self._end(time.time_ns(), "stalled", None, now_mono_ns)
            elif now_mono_ns - occ.started_mono_ns > self.detection.occupancy_timeout_s * 1e9:
                events = self._end(time.time_ns(), "timeout", None, now_mono_ns)
        if self.held is not None:
            tail = self.occupancy is not None and "partial" in self.occupancy.incomplete
            wait_s = self.detection.occupancy_timeout_s if tail else self.detection.sample_timeout_s
            if now_mono_ns - self.held_since_mono_ns > wait_s * 1e9:
                events += self._release_held(now_mono_ns)
        self.finished_scans += self.scans.on_tick(now_mono_ns)
        if self.waiting or self.finished_scans:
            events += self._match(now_mono_ns)
        return events

    # ---- internals -----------------------------------------------------------------------
    def _estimator(self, rec: Record) -> BackgroundEstimator:
        """The background estimator, rebuilt when the device's channel layout changes."""
        assert rec.counts is not None
        gamma_shape, neutron_channels = self._gamma_shape, self._neutron_channels
        if rec.kind is Kind.GAMMA_BACKGROUND and rec.counts.ndim == 2:
            gamma_shape = (rec.counts.shape[0], rec.counts.shape[1])
        elif rec.kind is Kind.NEUTRON_BACKGROUND:
            neutron_channels = rec.counts.size
        return self._layout(gamma_shape, neutron_channels)

    def _layout(self, gamma_shape: tuple[int, int], neutron_channels: int) -> BackgroundEstimator:
        """The estimator for this channel layout; a change of layout starts a fresh one."""
        if self.background is None or (gamma_shape, neutron_channels) != (self._gamma_shape, self._neutron_channels):
            if self.background is not None:
                self._anomaly("channel-layout-change")
            self._gamma_shape, self._neutron_channels = gamma_shape, neutron_channels
            self.background = BackgroundEstimator(
                gamma_shape[0], gamma_shape[1], neutron_channels, self.detection.background_halflife_s
            )
        return self.background

    def _begin(self, rec: Record, now_mono_ns: int) -> _Occupancy:
        assert rec.counts is not None
        gamma_shape, neutron_channels = self._gamma_shape, self._neutron_channels
        if rec.kind is Kind.GAMMA_SCAN and rec.counts.ndim == 2:
            gamma_shape = (rec.counts.shape[0], rec.counts.shape[1])
        elif rec.kind is Kind.NEUTRON_SCAN:
            neutron_channels = rec.counts.size
        est = self._layout(gamma_shape, neutron_channels)
        background = self.calibration.background(est.snapshot())
        self.calibration.on_occupancy_start()
        analyzer = OccupancyAnalyzer(self.detection, background, gamma_shape[0], neutron_channels)
        analyzer.set_speed(self.speed_kmh or self.detection.default_speed_kmh)
        occ = _Occupancy(
            analyzer=analyzer,
            start_wall_ns=rec.t_wall_ns,
            started_mono_ns=now_mono_ns,
            last_sample_mono_ns=now_mono_ns,
            gamma_shape=gamma_shape,
            id=f"{self.id}-{rec.t_wall_ns}-{rec.source}{rec.seq}",
            source=rec.source,
            last_wall_ns=rec.t_wall_ns,
        )
        linked = self.linked_quiet.pop(rec.source, None)
        quiet = linked is not None and rec.t_wall_ns - linked >= QUIET_START_S * 1e9
        if rec.source not in self.idle_seen and "occupancy_start" not in rec.flags and not quiet:
            occ.incomplete.append("partial")
        if background.gamma_cps is None:
            occ.incomplete.append("no-background")
        self.occupancy = occ
        self.metrics.occupied.labels(self.id).set(1)
        return occ

    def _end(
        self,
        end_wall_ns: int,
        end_reason: str,
        device_occupancy: int | None,
        now_mono_ns: int,
        head: _Ended | None = None,
    ) -> list[Provisional | Decided]:
        """End the open occupancy: decide it (with ``head``, the held first piece of the same vehicle), or hold it
        when it was cut before its end line at a portal whose counter can tell which vehicle it was."""
        occ = self.occupancy
        assert occ is not None
        self.occupancy = None
        self.last_end_wall_ns = end_wall_ns
        self.metrics.occupied.labels(self.id).set(0)
        self.metrics.occupancies.labels(self.id, end_reason).inc()
        t0 = time.perf_counter()
        analysis = occ.analyzer.finish()
        self.metrics.kernel_time.labels("finish").observe(time.perf_counter() - t0)
        self._calibrate(occ.analyzer, analysis, evidence=not (occ.device_gamma or occ.device_neutron))
        if "no-background" in occ.incomplete:
            # Never an occupancy tested against itself: what the tests found stays as evidence, not as an alarm.
            analysis["alarms"] = [{**a, "alarm": False, "withheld": "no-background"} for a in analysis["alarms"]]
        if occ.device_gamma or occ.device_neutron:
            device = device_alarm_entry(
                occ.device_gamma,
                occ.device_neutron,
                analysis["alarms"],
                self.detection,
                no_background="no-background" in occ.incomplete,
            )
            analysis["alarms"].append(device)
        if end_reason not in decision.COMPLETE_ENDS or occ.incomplete:
            log.warning(
                "lane %s: occupancy %s ended by %s, data %s", self.id, occ.id, end_reason, occ.incomplete or "whole"
            )
        facts = self._facts(occ, end_wall_ns, end_reason, device_occupancy)
        ended = _Ended(facts, analysis, now_mono_ns)
        if head is not None:
            ended = _combine(head, ended)
        elif end_reason in CUT_ENDS and self.last_counter:
            events: list[Provisional | Decided] = []
            if self.held is not None and "partial" in occ.incomplete:
                self.held = _combine(self.held, ended)  # another piece of the vehicle held
                return []
            events = self._release_held(now_mono_ns)
            self.held, self.held_since_mono_ns = ended, now_mono_ns
            return events
        return self._release(ended, now_mono_ns, None)

    def _release_held(self, now_mono_ns: int) -> list[Provisional | Decided]:
        """Decide the held occupancy on its own: no tail of it came (the lane went idle, or a vehicle whose start
        was seen began, or the wait ran out), so it was the vehicle after the last counter."""
        held, self.held = self.held, None
        if held is None:
            return []
        expected = None if self.last_counter is None else (self.last_counter + 1) % COUNTER_MODULUS
        self.last_counter = expected
        return self._release(held, now_mono_ns, expected)

    def _release(self, ended: _Ended, now_mono_ns: int, counter: int | None) -> list[Provisional | Decided]:
        """Decide an ended occupancy now, or (at a lane with a scanner) once its scan came or ``scan_wait_s`` passed;
        ``counter``: the portal's counter it is inferred to have (a held occupancy whose end line never came)."""
        if counter is not None:
            ended.facts.update(device_occupancy=counter, counter_inferred=True)
        ended.deadline_mono_ns = now_mono_ns + round(self.fusion.scan_wait_s * 1e9)
        if not self.has_scanner and not self.finished_scans:
            return [self._decide(ended, None)]
        self.waiting.append(ended)
        return self._match(now_mono_ns)

    def _calibrate(self, analyzer: OccupancyAnalyzer, analysis: dict[str, Any], evidence: bool = True) -> None:
        """Check the background conventions against the ended occupancy (:mod:`lanewatch.edge.lane.calibration`):
        report them in its analysis, log a change, and raise or clear the ``calibration-mismatch`` fault.

        An occupancy the portal alarmed on is no ``evidence``: its source raises its rates over the background
        whatever the lines' convention, and where sources are most of the traffic their median would call the lines
        a mismatch (the portal's own alarm runs on its own background, so it says nothing against the lines)."""
        before = self.calibration.as_dict()
        if evidence:
            self.calibration.observe(*analyzer.counts())
        state = self.calibration.as_dict()
        analysis["background"]["calibration"] = state
        for sensor in ("gamma", "neutron"):
            now = state[sensor]
            if now["ratio"] is not None:
                self.metrics.calibration_ratio.labels(self.id, sensor).set(now["ratio"])
            if now["status"] != before[sensor]["status"]:
                (log.warning if now["status"] == "mismatch" else log.info)(
                    "lane %s: %s background lines %s: occupancies count %.3g times what they predict (factor %.3g)",
                    self.id,
                    sensor,
                    now["status"],
                    now["ratio"],
                    now["factor"],
                )
        self._set_fault("calibration-mismatch", bool(self.calibration.mismatch))

    def _facts(
        self, occ: _Occupancy, end_wall_ns: int, end_reason: str, device_occupancy: int | None
    ) -> dict[str, Any]:
        """Keyword arguments of :func:`lanewatch.edge.decisions.decision.build` but the analysis."""
        return {
            "lane": self.id,
            "occupancy_id": occ.id,
            "start_wall_ns": occ.start_wall_ns,
            "end_wall_ns": end_wall_ns,
            "end_reason": end_reason,
            "device_occupancy": device_occupancy,
            "samples": occ.samples,
            "device_alarm": occ.device_gamma or occ.device_neutron,
            "tamper": occ.tamper,
            "link_interruptions": occ.link_interruptions,
            "incomplete": occ.incomplete,
        }

    def abort(self, now_mono_ns: int) -> list[Provisional | Decided]:
        """Handling this lane's input hit a bug: decide what is open (the occupancy, with end reason ``error``, so
        INCOMPLETE unless it alarmed; ended occupancies waiting for a scan, without it) and start afresh.

        Each decision keeps its analysis when that can still be computed, and is built without one otherwise,
        so the vehicle still gets exactly one decision."""
        events: list[Provisional | Decided] = []
        occ, self.occupancy = self.occupancy, None
        if occ is not None:
            end_wall_ns = time.time_ns()
            self.last_end_wall_ns = end_wall_ns
            self.metrics.occupied.labels(self.id).set(0)
            self.metrics.occupancies.labels(self.id, "error").inc()
            try:
                analysis = occ.analyzer.finish()
            except Exception:
                analysis = _NO_ANALYSIS
            self.waiting.append(_Ended(self._facts(occ, end_wall_ns, "error", None), analysis, now_mono_ns))
        events += [self._decide(ended, None) for ended in self.waiting]
        self.waiting = []
        self.finished_scans = []
        self.scans = ScanAssembler(self.scans.lane, self.detection, self.fusion, self.metrics)
        return events

    # ---- scans ---------------------------------------------------------------------------
    def _on_xray(self, rec: Record, now_mono_ns: int) -> list[Provisional | Decided]:
        ended = self.scans.on_record(rec, now_mono_ns)
        if not ended:
            return []
        self.finished_scans += ended
        return self._match(now_mono_ns)

    def _overlap_ns(self, occupancy: tuple[int, int], scan: tuple[int, int]) -> int | None:
        """Overlap (ns; negative: the gap) of an occupancy's span and a scan's; None unless the scan overlaps the
        occupancy widened by ``match_tolerance_s`` at both ends: a scan that starts after the occupancy ended (plus
        the tolerance), or ended before it started, is never its scan."""
        tolerance = self.fusion.match_tolerance_s * 1e9
        if scan[0] > occupancy[1] + tolerance or scan[1] < occupancy[0] - tolerance:
            return None
        return min(occupancy[1], scan[1]) - max(occupancy[0], scan[0])

    def _match(self, now_mono_ns: int) -> list[Provisional | Decided]:
        """Pair ended occupancies with scans, decide what is ready, and journal lone scans that waited long enough."""
        events: list[Provisional | Decided] = []
        for ended in list(self.waiting):
            best: tuple[int, Scan | None, str] | None = None
            for scan in self.finished_scans:
                overlap = self._overlap_ns(ended.span_ns, scan.span_ns())
                if overlap is not None and (best is None or overlap > best[0]):
                    best = (overlap, scan, scan.source)
            for source, start_ns, last_ns in self.scans.open_spans():
                overlap = self._overlap_ns(ended.span_ns, (start_ns, last_ns))
                if overlap is not None and (best is None or overlap > best[0]):
                    best = (overlap, None, source)
            expired = now_mono_ns >= ended.deadline_mono_ns or not self.has_scanner
            scan: Scan | None = None
            if best is not None and best[1] is not None:
                scan = best[1]
                self.finished_scans.remove(scan)
            elif best is not None and expired:
                scan = self.scans.cut(best[2], now_mono_ns)
            elif expired and self.has_scanner:
                self._anomaly("xray-scan-missing")
                log.warning(
                    "lane %s: no X-ray scan for occupancy %s within %.1f s of its end",
                    self.id,
                    ended.facts["occupancy_id"],
                    self.fusion.scan_wait_s,
                )
            elif not expired:
                continue
            self.waiting.remove(ended)
            events.append(self._decide(ended, scan))
        return events + self._lone_scans(now_mono_ns)

    def _lone_scans(self, now_mono_ns: int) -> list[Provisional | Decided]:
        """Image-only decisions for finished scans that no occupancy claimed in time."""
        grace = (self.fusion.scan_wait_s + self.fusion.match_tolerance_s) * 1e9
        occ = self.occupancy
        events: list[Provisional | Decided] = []
        for scan in list(self.finished_scans):
            if now_mono_ns - scan.end_mono_ns < grace:
                continue
            if occ is not None and self._overlap_ns((occ.start_wall_ns, time.time_ns()), scan.span_ns()) is not None:
                continue
            self.finished_scans.remove(scan)
            self._anomaly("xray-no-occupancy")
            log.warning(
                "lane %s: X-ray scan %s from %s (%s to %s) matches no occupancy; journaled on its own",
                self.id,
                scan.scan_id,
                scan.source,
                iso_utc(scan.start_wall_ns),
                iso_utc(scan.end_wall_ns),
            )
            fused = fusion.fuse(None, scan, self.fusion, self.detection)
            events.append(Decided(decision.build_scan_only(scan, fused.alarms, fused.xray), scan.end_wall_ns))
        return events

    def _decide(self, ended: _Ended, scan: Scan | None) -> Decided:
        """The decision of an ended occupancy, fused with ``scan`` when there is one; its stamp is the later end."""
        analysis, xray = ended.analysis, None
        stamp = ended.facts["end_wall_ns"]
        if scan is not None:
            t0 = time.perf_counter()
            fused = fusion.fuse(analysis, scan, self.fusion, self.detection)
            self.metrics.kernel_time.labels("fusion").observe(time.perf_counter() - t0)
            analysis, xray = {**analysis, "alarms": fused.alarms}, fused.xray
            stamp = max(stamp, scan.end_wall_ns)
        elif self.has_scanner:
            xray = {"status": "missing"}
        return Decided(decision.build(**ended.facts, analysis=analysis, xray=xray), stamp)

    def _set_fault(self, name: str, active: bool) -> None:
        if active:
            self.faults.add(name)
        else:
            self.faults.discard(name)
        self.metrics.fault.labels(self.id, name).set(1 if active else 0)

    def _anomaly(self, kind: str) -> None:
        self.metrics.lane_anomalies.labels(self.id, kind).inc()


def _combine(head: _Ended, tail: _Ended) -> _Ended:
    """One vehicle seen in two pieces (its occupancy cut, then joined again mid-vehicle): one decision with the
    tail's id, analysis and end, the head's start, both pieces' alarms (``part`` "head" or "tail"), the fielded rule's
    verdict of the piece that says most (an ALARM of either, else either's "not evaluated", else the tail's CLEAR), and
    why the data between them is missing among ``incomplete``. The id is the tail's: a restarted service that is
    replayed the tail (the head went with the driver's previous run) decides it under the id already journaled."""
    h, facts = head.facts, dict(tail.facts)
    facts.update(
        start_wall_ns=h["start_wall_ns"],
        samples=h["samples"] + facts["samples"],
        device_alarm=h["device_alarm"] or facts["device_alarm"],
        tamper=h["tamper"] or facts["tamper"],
        link_interruptions=h["link_interruptions"] + facts["link_interruptions"],
        incomplete=list(dict.fromkeys([*h["incomplete"], h["end_reason"], *facts["incomplete"]])),
    )
    alarms = [{**a, "part": "head"} for a in head.analysis["alarms"]]
    alarms += [{**a, "part": "tail"} for a in tail.analysis["alarms"]]
    fielded = max((tail.analysis, head.analysis), key=lambda a: _FIELDED_RANK.get(a.get("baseline_verdict"), 0))
    analysis = {**tail.analysis, "alarms": alarms}
    analysis.update(baseline_verdict=fielded["baseline_verdict"], baseline=fielded.get("baseline"))
    return _Ended(facts, analysis, tail.deadline_mono_ns)


_FIELDED_RANK = {"ALARM": 2, None: 1}
"""How much a piece's fielded verdict says about the whole vehicle (CLEAR: 0, the least)."""


_NO_ANALYSIS: dict[str, Any] = {"alarms": [], "baseline_verdict": None, "profile": {}}
"""The analysis of an occupancy whose own analysis failed: no finding, so its verdict is INCOMPLETE."""

_HANDLERS = {
    Kind.LINK: Lane._on_link,
    Kind.STATUS: Lane._on_link,
    Kind.GAMMA_BACKGROUND: Lane._on_background,
    Kind.NEUTRON_BACKGROUND: Lane._on_background,
    Kind.GAMMA_SCAN: Lane._on_scan,
    Kind.NEUTRON_SCAN: Lane._on_scan,
    Kind.SPEED: Lane._on_speed,
    Kind.OCCUPANCY_END: Lane._on_end,
    Kind.TAMPER: Lane._on_tamper,
    Kind.SETUP: Lane._on_setup,
    Kind.XRAY_SCAN_START: Lane._on_xray,
    Kind.XRAY_CALIBRATION: Lane._on_xray,
    Kind.XRAY_LINES: Lane._on_xray,
    Kind.XRAY_SCAN_END: Lane._on_xray,
}
