"""Prometheus metrics of the drivers and the service, and the small HTTP server for them.

Names follow Prometheus practice: the ``lanewatch_`` prefix, base units (seconds, bytes,
cps), ``_total`` on counters, and bounded label sets (lane, source, channel, kind, type,
verdict, reason). Each process builds its own set on its own registry, with the standard
``process_*`` metrics (start time, CPU, memory, open files) beside them.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, make_wsgi_app

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)
"""Anomaly score buckets: -log10 of the fraction of ordinary vehicles at least as unusual."""
INFERENCE_BUCKETS_S = (2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)
FAST_BUCKETS_S = (1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2)


def _add_process_metrics(registry: CollectorRegistry) -> None:
    """Register the ``process_*`` collector once per registry (a registry may hold both metric sets)."""
    with contextlib.suppress(ValueError):
        ProcessCollector(registry=registry)


@dataclass(frozen=True, slots=True)
class DriverStatus:
    """A driver's state as its metrics hold it, for its ``STATUS`` record."""

    connected: bool
    last_line_age_s: float | None
    """s since the last line was read from the device; None before the first."""
    lines: int
    errors: int


def _lane_total(metric: Counter, lane: str) -> int:
    """Sum of a counter's ``_total`` samples over every label value, for one lane."""
    return int(
        sum(
            sample.value
            for family in metric.collect()
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels.get("lane") == lane
        )
    )


class DriverMetrics:
    """Metrics of one driver process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        _add_process_metrics(registry)
        self.lines = Counter(
            "lanewatch_driver_lines_total", "Protocol lines read, by line type.", ["lane", "type"], registry=registry
        )
        self.parse_errors = Counter(
            "lanewatch_driver_parse_errors_total",
            "Input the driver could not parse, by kind of error.",
            ["lane", "kind"],
            registry=registry,
        )
        self.bytes_read = Counter(
            "lanewatch_driver_read_bytes_total", "Bytes read from the device.", ["lane"], registry=registry
        )
        self.reconnects = Counter(
            "lanewatch_driver_reconnects_total", "Attempts to reopen the device link.", ["lane"], registry=registry
        )
        self.connected = Gauge(
            "lanewatch_driver_connected", "1 while the device link is open, else 0.", ["lane"], registry=registry
        )
        self.last_line = Gauge(
            "lanewatch_driver_last_line_timestamp_seconds",
            "Wall-clock time of the last line read (s since the epoch).",
            ["lane"],
            registry=registry,
        )
        self.published = Counter(
            "lanewatch_driver_records_published_total", "Records published on the bus.", ["lane"], registry=registry
        )
        self.publish_drops = Counter(
            "lanewatch_driver_publish_drops_total",
            "Records dropped because the queue to the service was full (records sent while no service is "
            "subscribed are not counted here; the service counts them from seq).",
            ["lane"],
            registry=registry,
        )
        self.replayed = Counter(
            "lanewatch_driver_records_replayed_total",
            "Kept records published again because a (re)started service asked for them.",
            ["lane"],
            registry=registry,
        )

    def status(self, lane: str) -> DriverStatus:
        """What these metrics say about ``lane``'s device: link, age of the last line, lines and errors."""
        connected = self.registry.get_sample_value("lanewatch_driver_connected", {"lane": lane})
        last_line = self.registry.get_sample_value("lanewatch_driver_last_line_timestamp_seconds", {"lane": lane})
        return DriverStatus(
            connected=bool(connected),
            last_line_age_s=round(max(0.0, time.time() - last_line), 3) if last_line else None,
            lines=_lane_total(self.lines, lane),
            errors=_lane_total(self.parse_errors, lane),
        )


class ServiceMetrics:
    """Metrics of the fusion service process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        _add_process_metrics(registry)
        r = registry
        self.records = Counter(
            "lanewatch_bus_records_total", "Records received from drivers.", ["lane", "source"], registry=r
        )
        self.decode_errors = Counter(
            "lanewatch_bus_decode_errors_total", "Bus messages that were not valid records.", ["kind"], registry=r
        )
        self.gaps = Counter(
            "lanewatch_bus_sequence_gaps_total",
            "Breaks in a source's sequence numbers (one per break).",
            ["lane", "source"],
            registry=r,
        )
        self.missed = Counter(
            "lanewatch_bus_records_missed_total",
            "Records never received, counted from sequence gaps.",
            ["lane", "source"],
            registry=r,
        )
        self.stale = Counter(
            "lanewatch_bus_stale_records_total",
            "Duplicate or late records (sequence number already passed), dropped.",
            ["lane", "source"],
            registry=r,
        )
        self.auth_failures = Counter(
            "lanewatch_bus_auth_failures_total",
            "Handshakes refused on a bus endpoint (no key, a key not admitted there, not CURVE).",
            ["endpoint"],
            registry=r,
        )
        self.unauthorized = Counter(
            "lanewatch_bus_unauthorized_records_total",
            "Records dropped because the key that sent them may not publish for their lane or source.",
            ["key"],
            registry=r,
        )
        self.rejected = Counter(
            "lanewatch_bus_rejected_records_total",
            "Records of an admitted source rejected, by reason (clock-ahead, clock-behind).",
            ["lane", "source", "reason"],
            registry=r,
        )
        self.handler_errors = Counter(
            "lanewatch_handler_errors_total",
            "Bugs hit handling input (a lane's, ingest, query, alerts), each caught so the loop goes on.",
            ["where"],
            registry=r,
        )
        self.source_restarts = Counter(
            "lanewatch_bus_source_restarts_total",
            "Sources that started a new numbering: a new run_id, or seq going backwards or jumping ahead.",
            ["lane", "source", "reason"],
            registry=r,
        )
        self.unknown_lane = Counter(
            "lanewatch_bus_unknown_lane_records_total", "Records for a lane not in the configuration.", registry=r
        )
        self.last_record = Gauge(
            "lanewatch_lane_last_record_timestamp_seconds",
            "Wall-clock time the newest data of a lane's sensor (rpm: a sample, not the driver's heartbeat; xray: any "
            "record of its driver, as the scanner is silent between vehicles) was stamped by its driver (s since the "
            "epoch).",
            ["lane", "sensor"],
            registry=r,
        )
        self.link_up = Gauge(
            "lanewatch_lane_link_up", "1 while the lane's driver reports its device link up.", ["lane"], registry=r
        )
        self.link_state = Gauge(
            "lanewatch_lane_link_state",
            "1 for the lane's device link state (up, down, unknown: driver status late, stale: driver silent).",
            ["lane", "state"],
            registry=r,
        )
        self.sensor_link_state = Gauge(
            "lanewatch_sensor_link_state",
            "1 for the link state of each sensor (rpm, xray) of a lane, from its own driver's status.",
            ["lane", "sensor", "state"],
            registry=r,
        )
        self.occupied = Gauge("lanewatch_lane_occupied", "1 while the lane is occupied.", ["lane"], registry=r)
        self.occupancies = Counter(
            "lanewatch_occupancies_total", "Occupancies ended, by how they ended.", ["lane", "end"], registry=r
        )
        self.replays = Counter(
            "lanewatch_bus_replays_total",
            "Requests to a driver for the records it kept before the first one a (re)started service received, by "
            "outcome (complete, or timeout: the driver kept none of them).",
            ["lane", "source", "outcome"],
            registry=r,
        )
        self.redecided = Counter(
            "lanewatch_decisions_redecided_total",
            "Occupancies decided again from records a driver replayed to a restarted service; journaled before, "
            "so not journaled or published again.",
            ["lane"],
            registry=r,
        )
        self.missed_occupancies = Counter(
            "lanewatch_occupancies_missed_total",
            "Vehicles the portal counted that lanewatch never saw (jumps of the portal's occupancy counter).",
            ["lane"],
            registry=r,
        )
        self.lane_anomalies = Counter(
            "lanewatch_lane_anomalies_total",
            "Protocol sequence anomalies at a lane (duplicate end, late sample, tamper...).",
            ["lane", "kind"],
            registry=r,
        )
        self.decisions = Counter(
            "lanewatch_decisions_total", "Decisions journaled, by verdict.", ["lane", "verdict"], registry=r
        )
        self.alarm_reasons = Counter(
            "lanewatch_alarm_reasons_total", "Alarm reasons in journaled decisions.", ["lane", "reason"], registry=r
        )
        self.provisional = Counter(
            "lanewatch_provisional_alarms_total", "Alarms raised mid-passage.", ["lane"], registry=r
        )
        self.background = Gauge(
            "lanewatch_gamma_background_cps", "Gamma background estimate (cps).", ["lane", "channel"], registry=r
        )
        self.neutron_background = Gauge(
            "lanewatch_neutron_background_cps", "Neutron background estimate (cps).", ["lane", "channel"], registry=r
        )
        self.fault = Gauge(
            "lanewatch_detector_fault",
            "1 while the portal reports a fault: gamma-low, gamma-high, neutron-high, tamper; or the lane finds one: "
            "calibration-mismatch (background lines that disagree with what occupancies count).",
            ["lane", "fault"],
            registry=r,
        )
        self.calibration_ratio = Gauge(
            "lanewatch_calibration_ratio",
            "What the lane's occupancies count over what its background lines predict (median of recent occupancies; "
            "about 1 when the conventions agree).",
            ["lane", "sensor"],
            registry=r,
        )
        self.decision_latency = Histogram(
            "lanewatch_decision_latency_seconds",
            "From the end-of-occupancy line at the driver to the decision journaled and published (s).",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.kernel_time = Histogram(
            "lanewatch_kernel_seconds",
            "Time in detection kernels per call (s).",
            ["kernel"],
            buckets=FAST_BUCKETS_S,
            registry=r,
        )
        self.journal_write = Histogram(
            "lanewatch_journal_write_seconds",
            "Journal commit time including fsync (s).",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.journal_size = Gauge("lanewatch_journal_size_bytes", "Journal database size on disk.", registry=r)
        self.journal_errors = Counter(
            "lanewatch_journal_errors_total",
            "Journal writes that failed (each decision once, not its retries).",
            registry=r,
        )
        self.journal_detached = Gauge(
            "lanewatch_journal_detached",
            "1 while the journal file was deleted or replaced under the service (decisions go to the fallback file).",
            registry=r,
        )
        self.journal_fallback = Counter(
            "lanewatch_journal_fallback_decisions_total",
            "Decisions written to the fallback file because the journal could not take them.",
            registry=r,
        )
        self.dropped = Counter(
            "lanewatch_decisions_dropped_total",
            "Decisions lost because neither the journal nor its fallback file took them and the most held in memory "
            "were held (the least important dropped first).",
            ["lane", "verdict"],
            registry=r,
        )
        self.journal_seq = Gauge("lanewatch_journal_last_seq", "Sequence number of the newest decision.", registry=r)
        self.subscribers = Gauge("lanewatch_alert_subscribers", "Subscriptions open on the alert bus.", registry=r)
        self.queries = Counter(
            "lanewatch_journal_queries_total", "Queries answered by the journal endpoint.", ["op"], registry=r
        )
        self.watchdog_pings = Counter(
            "lanewatch_watchdog_pings_total", "Watchdog keep-alives sent to systemd.", registry=r
        )


class ModelMetrics:
    """Prometheus metrics of the anomaly model, on the service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.scores = Histogram(
            "lanewatch_model_score", "Anomaly scores of decisions.", ["lane"], buckets=SCORE_BUCKETS, registry=registry
        )
        self.inference = Histogram(
            "lanewatch_model_inference_seconds",
            "Time to extract features and score one decision.",
            buckets=INFERENCE_BUCKETS_S,
            registry=registry,
        )
        self.unscored = Counter(
            "lanewatch_model_unscored_total",
            "Decisions left without an anomaly score, by reason.",
            ["lane", "reason"],
            registry=registry,
        )
        self.findings = Counter(
            "lanewatch_model_findings_total",
            "Decisions with a model-anomaly finding, by whether it alarmed.",
            ["lane", "alarm"],
            registry=registry,
        )
        self.reloads = Counter(
            "lanewatch_model_reloads_total",
            "Requests to reload the model file, by result (loaded, refused).",
            ["result"],
            registry=registry,
        )
        self.loaded = Gauge(
            "lanewatch_model_info", "1 for the model version in use.", ["version", "schema"], registry=registry
        )
        self.calibration_occupancies = Gauge(
            "lanewatch_model_calibration_occupancies",
            "Ordinary occupancies in the lane's calibration window (the model warms up until min_occupancies).",
            ["lane"],
            registry=registry,
        )
        self.finding_rate = Gauge(
            "lanewatch_model_finding_rate",
            "Findings per ordinary occupancy over the lane's calibration window (nominal: 10^-finding_threshold).",
            ["lane"],
            registry=registry,
        )
        self.drift_ratio = Gauge(
            "lanewatch_model_drift_ratio",
            "Share of the lane's calibration window with a raw model score of 2 or more, over the 1 in 100 of the "
            "model's training traffic (about 1 in the training domain).",
            ["lane"],
            registry=registry,
        )
        self.drift = Gauge(
            "lanewatch_model_drift",
            "1 while the lane's traffic has left the model's training domain (drift ratio at least [model] "
            "drift_ratio): fault model-drift.",
            ["lane"],
            registry=registry,
        )
        self.state_errors = Counter(
            "lanewatch_model_state_errors_total",
            "Failures of the model's calibration state file, by operation (open, read, write).",
            ["op"],
            registry=registry,
        )


class ConsoleMetrics:
    """Metrics of the operators' console process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        _add_process_metrics(registry)
        r = registry
        self.requests = Counter(
            "lanewatch_console_requests_total",
            "HTTP requests answered, by route (its path template) and status code.",
            ["route", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "lanewatch_console_request_duration_seconds",
            "Time to answer an HTTP request (to the start of its response), by route.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.sse_clients = Gauge(
            "lanewatch_console_sse_clients", "Browsers following the console's event stream now.", registry=r
        )
        self.login_failures = Counter(
            "lanewatch_console_login_failures_total",
            "Logins not granted: a wrong name or password (failed), or refused unchecked while its account backs "
            "off or its account and address are over their limit (refused).",
            ["outcome"],
            registry=r,
        )
        self.adjudications = Counter(
            "lanewatch_console_adjudications_total",
            "Acts on decisions this console learned, by kind and by how: recorded here (local), announced on the "
            "alert bus (bus), or found in the journal without an announcement (journal).",
            ["kind", "via"],
            registry=r,
        )
        self.announce_failures = Counter(
            "lanewatch_console_announce_failures_total",
            "Acts recorded here that the service could not be asked to publish on the alert bus (the other "
            "consoles find them in the journal).",
            registry=r,
        )
        self.bus_lag = Histogram(
            "lanewatch_console_bus_lag_seconds",
            "Time from an act being journaled (by any console) to this console receiving it on the alert bus.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.decisions = Counter(
            "lanewatch_console_decisions_total",
            "Decisions this console received: live on the alert bus (bus) or fetched from the journal (journal).",
            ["via"],
            registry=r,
        )
        self.service_reachable = Gauge(
            "lanewatch_console_service_reachable",
            "1 while the service's /healthz answers the console, else 0.",
            registry=r,
        )


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve_http(
    address: str, registry: CollectorRegistry, health: Callable[[], dict[str, Any]]
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` from ``registry`` and ``/healthz`` from ``health()`` at ``host:port``.

    ``/healthz`` answers 200 when ``health()["ok"]`` is true, else 503, with the JSON body.
    Port 0 picks a free port (read it from ``server.server_port``).
    """
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            report = health()
            body = json.dumps(report, indent=1).encode()
            status = "200 OK" if report.get("ok") else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/metrics":
            return metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"lanewatch: /metrics and /healthz\n"]

    host, _, port = address.rpartition(":")
    server = make_server(
        host or "127.0.0.1", int(port), app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name=f"http-{address}", daemon=True)
    thread.start()
    return server, thread
