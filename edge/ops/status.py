"""``lanewatch status``: is the installation healthy, lane by lane?

Reads the service's ``/healthz`` (``[service].http``) and, for each lane with a
``driver_http``, that driver's ``/healthz`` (and its X-ray driver's at ``xray_http`` for a lane
with a scanner), then prints per lane whether each driver is
connected, each sensor's data is fresh at the service (the portal's from its own driver's samples, the scanner's from
its own driver), the lane is occupied and which detector faults are active;
and whether the journal is writable and the systemd watchdog fed.

Exit status: 0 when everything is healthy, 1 when something is not (a driver down or
unreachable, stale samples, a detector fault, the journal not writable, the watchdog
starved), 2 when the service itself cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from typing import Any, TypeVar

import msgspec

from lanewatch.edge.config import Config, LaneConfig

EXIT_OK, EXIT_UNHEALTHY, EXIT_UNREACHABLE = 0, 1, 2
T = TypeVar("T")


class SensorHealth(msgspec.Struct, kw_only=True):
    """One sensor (``rpm``, ``xray``) of a lane in the service's ``/healthz``, from its own driver's records."""

    link: str | None = None
    """Its device link as the service sees it: up, down, unknown or stale."""
    link_up: bool | None = None
    """Whether the link is up (None: unknown)."""
    link_problems: list[str] = []
    """Why the link is not up, in words."""
    last_record_age_s: float | None = None
    """Age (s) of its newest data (the portal's: a sample; the scanner's: any word of its driver)."""
    fresh: bool = False
    """Its newest data is within ``[service] stale_after_s``."""
    problem: str = ""
    """What is wrong with it, for an operator ("link down", "no data for 35 s"); "" when it is ok."""


SENSOR_TITLES = {"rpm": "RPM", "xray": "X-ray"}


class LaneHealth(msgspec.Struct, kw_only=True):
    """One lane in the service's ``/healthz`` (what this module and the console read of it)."""

    link: str | None = None
    """The device link as the service sees it: its worst sensor's, up, down, unknown or stale."""
    link_up: bool | None = None
    """Whether the link is up (None: unknown)."""
    link_problems: list[str] = []
    """Why the link is not up, in words."""
    last_record_age_s: float | None = None
    """Age (s) of its stalest sensor's newest data."""
    fresh: bool = False
    """Every sensor's newest data is within ``[service] stale_after_s``."""
    sensors: dict[str, SensorHealth] = {}
    """Each sensor, by ``rpm`` and ``xray``."""
    occupied: bool = False
    faults: list[str] = []
    """Active detector (and model) faults."""
    rejected: str = ""
    """Why records of the lane were rejected lately ("" when none were)."""


class JournalHealth(msgspec.Struct, kw_only=True):
    """The journal in the service's ``/healthz``."""

    path: str = "?"
    writable: bool = False
    problem: str = ""
    last_seq: int | None = None
    pending: int = 0
    """Decisions held while the journal does not take them."""
    dropped: int = 0
    """Held decisions dropped over the cap."""


class WatchdogHealth(msgspec.Struct, kw_only=True):
    """The systemd watchdog in the service's ``/healthz``."""

    enabled: bool = False
    last_ping_age_s: float | None = None
    """Age (s) of the last keep-alive (None before the first)."""
    fed: bool | None = None
    """The last keep-alive is within the watchdog interval (None: not said; fed unless enabled)."""


class ServiceHealth(msgspec.Struct, kw_only=True):
    """The service's ``/healthz`` as this module and the console read it (further fields are skipped)."""

    ok: bool = False
    lanes: dict[str, LaneHealth] = {}
    journal: JournalHealth = msgspec.field(default_factory=JournalHealth)
    watchdog: WatchdogHealth = msgspec.field(default_factory=WatchdogHealth)


class DriverHealth(msgspec.Struct, kw_only=True):
    """A driver's ``/healthz`` as the console reads it (each driver reports more)."""

    ok: bool = False
    connected: bool = False
    """Linked to its device."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lanewatch status`` (``--config`` is added by the command line)."""
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument(
        "--timeout", type=float, default=2.0, metavar="S", help="HTTP timeout per endpoint, s (default 2)"
    )


def fetch_health(address: str, timeout_s: float, tp: type[T]) -> tuple[T | None, str]:
    """GET ``http://address/healthz``: the JSON report (answered with 200 or 503) as ``tp``, or None and why not."""
    url = f"http://{address}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
        if exc.code != 503:
            return None, f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{url}: {reason}"
    try:
        return msgspec.json.decode(body, type=tp), ""
    except msgspec.ValidationError as exc:
        return None, f"{url}: not a health report: {exc}"
    except msgspec.DecodeError as exc:
        return None, f"{url}: not JSON: {exc}"


def _xray(lane: LaneConfig, timeout_s: float) -> tuple[bool | None, list[str], dict[str, Any] | None]:
    """A scanner lane's X-ray driver: connected to its scanner (None: unknown), its problems, its report (as it
    answered: the report passes it on)."""
    if not lane.xray:
        return None, [], None
    if not lane.xray_http:
        return None, [], None  # no endpoint configured: nothing to ask
    report, error = fetch_health(lane.xray_http, timeout_s, dict[str, Any])
    if report is None:
        return None, [f"X-ray driver unreachable: {error}"], None
    connected = bool(report.get("connected"))
    problems = [] if connected else ["X-ray driver not connected to its scanner"]
    if not report.get("ok"):
        problems.append("X-ray driver reports not ok")
    return connected, problems, report


def _lane_summary(lane: LaneConfig, service_lane: LaneHealth, timeout_s: float) -> dict[str, Any]:
    """One lane's health from the service's view (each sensor's link and data from its own driver's records) and,
    when they have an endpoint, its drivers' (their reports as they answered: the report passes them on)."""
    driver_http = lane.driver_http
    problems = []
    driver: dict[str, Any] | None = None
    rpm = service_lane.sensors.get("rpm") or SensorHealth(problem="not reported by the service")
    if driver_http:
        driver, error = fetch_health(driver_http, timeout_s, dict[str, Any])
        if driver is None:
            problems.append(f"driver unreachable: {error}")
            connected = None
        else:
            connected = bool(driver.get("connected"))
            if not driver.get("ok"):
                problems.append("driver reports not ok")
    else:
        connected = rpm.link_up
    if connected is False:
        problems.append("driver not connected to its device")
    for name in ("rpm", "xray") if lane.xray else ("rpm",):
        sensor = service_lane.sensors.get(name)
        if sensor is None:
            problems.append(f"{SENSOR_TITLES[name]}: not reported by the service")
        elif sensor.problem:
            why = f" ({'; '.join(sensor.link_problems)})" if sensor.link_problems else ""
            problems.append(f"{SENSOR_TITLES[name]} {sensor.problem} at the service{why}")
    if service_lane.rejected:
        problems.append(f"records rejected: {service_lane.rejected}")
    faults = list(service_lane.faults)
    if faults:
        problems.append("detector faults: " + ", ".join(faults))
    xray_connected, xray_problems, xray = _xray(lane, timeout_s)
    if lane.xray and not lane.xray_http and "xray" in service_lane.sensors:
        xray_connected = service_lane.sensors["xray"].link_up  # no endpoint: the service's word for it
    problems += xray_problems
    return {
        "ok": not problems,
        "driver_connected": connected,
        "xray": lane.xray or None,
        "xray_connected": xray_connected,
        "xray_driver": xray,
        "samples_fresh": rpm.fresh,
        "last_record_age_s": rpm.last_record_age_s,
        "sensors": {name: msgspec.to_builtins(sensor) for name, sensor in service_lane.sensors.items()},
        "occupied": service_lane.occupied,
        "faults": faults,
        "problems": problems,
        "driver": driver,
    }


def check(config: Config, timeout_s: float) -> dict[str, Any]:
    """The whole report: service, journal, watchdog, lanes; ``exit`` is the command's exit status."""
    service, error = fetch_health(config.service.http, timeout_s, ServiceHealth)
    if service is None:
        unreachable = {"address": config.service.http, "error": error, "configuration": config.source}
        return {"ok": False, "exit": EXIT_UNREACHABLE, "service": unreachable}
    lanes = {
        lane.id: _lane_summary(lane, service.lanes.get(lane.id) or LaneHealth(), timeout_s) for lane in config.lanes
    }
    journal, watchdog = service.journal, service.watchdog
    fed = watchdog.fed if watchdog.fed is not None else not watchdog.enabled
    problems = [
        text
        for bad, text in (
            (not service.ok, "the service reports not ok"),
            (not journal.writable, f"the journal is not writable: {journal.problem or '?'}"),
            (not fed, "the systemd watchdog is starved"),
        )
        if bad
    ]
    problems += [f"{lane_id}: {problem}" for lane_id, lane in lanes.items() for problem in lane["problems"]]
    ok = not problems
    return {
        "ok": ok,
        "problems": problems,
        "exit": EXIT_OK if ok else EXIT_UNHEALTHY,
        "service": {"address": config.service.http, "ok": service.ok},
        "journal": msgspec.to_builtins(journal),
        "watchdog": {**msgspec.to_builtins(watchdog), "fed": fed},
        "lanes": lanes,
    }


def _yes_no(value: bool | None, yes: str, no: str) -> str:
    return "?" if value is None else (yes if value else no)


def _data(sensor: dict[str, Any] | None) -> str:
    """A sensor's data at the service, for the table: "fresh (0.4 s)", or what is wrong ("NO DATA FOR 35 s")."""
    if sensor is None:
        return "?"
    if sensor["problem"]:
        return re.sub(r"(\d) S\b", r"\1 s", sensor["problem"].upper())
    age = sensor["last_record_age_s"]
    return "fresh" if age is None else f"fresh ({age:.1f} s)"


def format_report(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    service = report["service"]
    if "error" in service:
        where = service.get("configuration", "?")
        config = "no --config given: the embedded defaults" if where == "<defaults>" else f"configuration: {where}"
        return f"service {service['address']}: UNREACHABLE ({service['error']}); is the service running? ({config})"
    lines = [f"service {service['address']}: {'ok' if service['ok'] else 'NOT OK'}"]
    journal = report["journal"]
    lines.append(
        f"journal {journal.get('path', '?')}: {_yes_no(journal.get('writable'), 'writable', 'NOT WRITABLE')}, "
        f"last seq {journal.get('last_seq', '?')}"
    )
    watchdog = report["watchdog"]
    if watchdog.get("enabled"):
        age = watchdog.get("last_ping_age_s")
        age_text = "never pinged" if age is None else f"last ping {age:.1f} s ago"
        lines.append(f"watchdog: {'fed' if watchdog['fed'] else 'STARVED'} ({age_text})")
    else:
        lines.append("watchdog: off (not under systemd)")
    rows = [("lane", "driver", "samples", "occupied", "faults", "x-ray")]
    for lane_id, lane in report["lanes"].items():
        sensors = lane.get("sensors", {})
        rows.append(
            (
                lane_id,
                _yes_no(lane["driver_connected"], "connected", "DISCONNECTED"),
                _data(sensors.get("rpm")),
                "yes" if lane["occupied"] else "no",
                ", ".join(lane["faults"]).upper() or "-",
                "-"
                if not lane["xray"]
                else _yes_no(lane["xray_connected"], "connected", "DISCONNECTED")
                + (f", {_data(sensors['xray'])}" if "xray" in sensors else ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if report["problems"]:
        lines.append("NOT OK because:")
        lines += [f"  {problem}" for problem in report["problems"]]
    lines.append("status: ok" if report["ok"] else "status: NOT OK")
    return "\n".join(lines)


def run(args: argparse.Namespace, config: Config) -> int:
    """Print the health report; the exit status says whether all is well (0), not (1), or unknown (2)."""
    report = check(config, args.timeout)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report), file=sys.stdout if report["exit"] != EXIT_UNREACHABLE else sys.stderr)
    return int(report["exit"])
