"""The decision record: exactly one per occupancy, JSON-serializable, journaled then published.

Fields (the journal assigns ``seq``):

- ``lane``, ``occupancy_id`` (unique: lane, start time in ns and the source and sequence
  number of the record that opened it, since records read together share one stamp), ``device_occupancy`` (the
  portal's own GX counter, or None; SRLS in auto mode always sends 0, so it is not an id),
- ``start``, ``end``: ISO 8601 UTC of the first sample and of the end of the occupancy, and
  ``start_ns``, ``end_ns`` the same instants in ns since the epoch, as the driver stamped them,
- ``verdict``: ``ALARM`` when any test alarmed, else ``INCOMPLETE`` when the occupancy did not
  end with its end-of-occupancy line (timeout, stalled samples, link lost), else ``CLEAR``,
- ``alarms``: every test that crossed its threshold, with statistic, threshold and location
  (``alarm`` false on entries released as NORM-consistent, with the reason explained),
- ``baseline_verdict``: what the fielded n-sigma rule said, and ``baseline`` its numbers,
- ``end_reason``, ``samples``, ``device_alarm`` (the portal's own GA/NA flag), ``tamper``,
  ``link_interruptions``, ``speed_kmh``, ``background``, ``profile`` (arrays to draw evidence).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

VERDICTS = ("CLEAR", "ALARM", "INCOMPLETE")
COMPLETE_ENDS = ("gx", "background")
"""End reasons after which the occupancy's data is whole: its end line, or (GX lost) the next background line."""


def iso_utc(t_wall_ns: int) -> str:
    """ISO 8601 UTC with millisecond precision, e.g. ``2026-11-28T03:30:16.123Z``."""
    return datetime.fromtimestamp(t_wall_ns / 1e9, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def verdict_of(analysis: dict[str, Any], end_reason: str, tamper: bool) -> str:
    if tamper or any(a.get("alarm") for a in analysis["alarms"]):
        return "ALARM"
    return "CLEAR" if end_reason in COMPLETE_ENDS else "INCOMPLETE"


def build(
    *,
    lane: str,
    occupancy_id: str,
    start_wall_ns: int,
    end_wall_ns: int,
    end_reason: str,
    device_occupancy: int | None,
    analysis: dict[str, Any],
    samples: int,
    device_alarm: bool,
    tamper: bool,
    link_interruptions: int,
) -> dict[str, Any]:
    """The decision for one occupancy from its analysis (see :mod:`edge.detect`)."""
    alarms = list(analysis["alarms"])
    if tamper:
        alarms.append({"reason": "tamper", "alarm": True, "statistic": None, "threshold": None, "location_m": None})
    return {
        "lane": lane,
        "occupancy_id": occupancy_id,
        "device_occupancy": device_occupancy,
        "start": iso_utc(start_wall_ns),
        "end": iso_utc(end_wall_ns),
        "start_ns": start_wall_ns,
        "end_ns": end_wall_ns,
        "verdict": verdict_of(analysis, end_reason, tamper),
        "alarms": alarms,
        "baseline_verdict": analysis["baseline_verdict"],
        "baseline": analysis.get("baseline"),
        "end_reason": end_reason,
        "samples": samples,
        "device_alarm": device_alarm,
        "tamper": tamper,
        "link_interruptions": link_interruptions,
        "speed_kmh": analysis["profile"].get("speed_kmh"),
        "background": analysis.get("background"),
        "profile": analysis["profile"],
    }
