"""``lanewatch status``: is the installation healthy, lane by lane?

Reads the service's ``/healthz`` (``[service].http``) and, for each lane with a
``driver_http``, that driver's ``/healthz`` (and its X-ray driver's at ``xray_http`` for a lane
with a scanner), then prints per lane whether the driver is
connected, samples are fresh, the lane is occupied and which detector faults are active;
and whether the journal is writable and the systemd watchdog fed.

Exit status: 0 when everything is healthy, 1 when something is not (a driver down or
unreachable, stale samples, a detector fault, the journal not writable, the watchdog
starved), 2 when the service itself cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from lanewatch.edge.config import Config, LaneConfig

EXIT_OK, EXIT_UNHEALTHY, EXIT_UNREACHABLE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lanewatch status`` (``--config`` is added by the command line)."""
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument(
        "--timeout", type=float, default=2.0, metavar="S", help="HTTP timeout per endpoint, s (default 2)"
    )


def fetch_health(address: str, timeout_s: float) -> tuple[dict[str, Any] | None, str]:
    """GET ``http://address/healthz``: the JSON report (answered with 200 or 503), or None and why not."""
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
        report = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{url}: not JSON: {exc}"
    if not isinstance(report, dict):
        return None, f"{url}: expected a JSON object, got {type(report).__name__}"
    return report, ""


def _xray(lane: LaneConfig, timeout_s: float) -> tuple[bool | None, list[str], dict[str, Any] | None]:
    """A scanner lane's X-ray driver: connected to its scanner (None: unknown), its problems, its report."""
    if not lane.xray:
        return None, [], None
    if not lane.xray_http:
        return None, [], None  # no endpoint configured: nothing to ask
    report, error = fetch_health(lane.xray_http, timeout_s)
    if report is None:
        return None, [f"X-ray driver unreachable: {error}"], None
    connected = bool(report.get("connected"))
    problems = [] if connected else ["X-ray driver not connected to its scanner"]
    if not report.get("ok"):
        problems.append("X-ray driver reports not ok")
    return connected, problems, report


def _lane_summary(lane: LaneConfig, service_lane: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One lane's health from the service's view and, when they have an endpoint, its drivers'."""
    driver_http = lane.driver_http
    problems = []
    driver: dict[str, Any] | None = None
    if driver_http:
        driver, error = fetch_health(driver_http, timeout_s)
        if driver is None:
            problems.append(f"driver unreachable: {error}")
            connected = None
        else:
            connected = bool(driver.get("connected"))
            if not driver.get("ok"):
                problems.append("driver reports not ok")
    else:
        connected = service_lane.get("link_up")
    if connected is False:
        problems.append("driver not connected to its device")
    if service_lane.get("link") in ("unknown", "stale"):
        reasons = "; ".join(str(r) for r in service_lane.get("link_problems") or [])
        problems.append(f"link {service_lane['link']} at the service: {reasons}")
    fresh = bool(service_lane.get("fresh"))
    if not fresh:
        problems.append("no fresh samples at the service")
    if service_lane.get("rejected"):
        problems.append(f"records rejected: {service_lane['rejected']}")
    faults = [str(f) for f in service_lane.get("faults") or []]
    if faults:
        problems.append("detector faults: " + ", ".join(faults))
    xray_connected, xray_problems, xray = _xray(lane, timeout_s)
    problems += xray_problems
    return {
        "ok": not problems,
        "driver_connected": connected,
        "xray": lane.xray or None,
        "xray_connected": xray_connected,
        "xray_driver": xray,
        "samples_fresh": fresh,
        "last_record_age_s": service_lane.get("last_record_age_s"),
        "occupied": bool(service_lane.get("occupied")),
        "faults": faults,
        "problems": problems,
        "driver": driver,
    }


def check(config: Config, timeout_s: float) -> dict[str, Any]:
    """The whole report: service, journal, watchdog, lanes; ``exit`` is the command's exit status."""
    service, error = fetch_health(config.service.http, timeout_s)
    if service is None:
        return {"ok": False, "exit": EXIT_UNREACHABLE, "service": {"address": config.service.http, "error": error}}
    service_lanes = service.get("lanes") or {}
    lanes = {lane.id: _lane_summary(lane, service_lanes.get(lane.id) or {}, timeout_s) for lane in config.lanes}
    journal = service.get("journal") or {}
    watchdog = service.get("watchdog") or {}
    fed = bool(watchdog.get("fed", not watchdog.get("enabled")))
    problems = [
        text
        for bad, text in (
            (not service.get("ok"), "the service reports not ok"),
            (not journal.get("writable"), f"the journal is not writable: {journal.get('problem') or '?'}"),
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
        "service": {"address": config.service.http, "ok": bool(service.get("ok"))},
        "journal": journal,
        "watchdog": {**watchdog, "fed": fed},
        "lanes": lanes,
    }


def _yes_no(value: bool | None, yes: str, no: str) -> str:
    return "?" if value is None else (yes if value else no)


def format_report(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    service = report["service"]
    if "error" in service:
        return f"service {service['address']}: UNREACHABLE ({service['error']})"
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
        age = lane["last_record_age_s"]
        samples = "fresh" if lane["samples_fresh"] else "STALE"
        rows.append(
            (
                lane_id,
                _yes_no(lane["driver_connected"], "connected", "DISCONNECTED"),
                samples if age is None else f"{samples} ({age:.1f} s)",
                "yes" if lane["occupied"] else "no",
                ", ".join(lane["faults"]).upper() or "-",
                "-" if not lane["xray"] else _yes_no(lane["xray_connected"], "connected", "DISCONNECTED"),
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
