"""The decision record: exactly one per occupancy, JSON-serializable, journaled then published.

Fields (the journal assigns ``seq``):

- ``lane``, ``occupancy_id`` (unique: lane, start time in ns and the source and sequence
  number of the record that opened it, since records read together share one stamp), ``device_occupancy`` (the
  portal's own GX counter, or None; SRLS in auto mode always sends 0, so it is not an id), ``counter_inferred``
  (true when the occupancy was cut before its GX and the counter is the one the next GX implies),
- ``start``, ``end``: ISO 8601 UTC of the first sample and of the end of the occupancy, and
  ``start_ns``, ``end_ns`` the same instants in ns since the epoch, as the driver stamped them,
- ``verdict``: ``ALARM`` when any test alarmed, else ``INCOMPLETE`` when the occupancy did not
  end with its end-of-occupancy line (timeout, stalled samples, link lost), else ``CLEAR``,
- ``alarms``: every test that crossed its threshold, with statistic, threshold and location
  (``alarm`` false on entries released as NORM-consistent, with the reason explained),
- ``baseline_verdict``: what the fielded n-sigma rule said, and ``baseline`` its numbers,
- ``incomplete``: why the occupancy's data is not whole whatever its end: ``partial`` (its start was not seen:
  the driver or the service joined mid-vehicle), ``no-background`` (no background reading before it: the
  radiation tests' entries are kept as evidence with ``alarm`` false and ``withheld`` "no-background", since
  an occupancy is never tested against itself),
- ``end_reason``: ``gx``, ``background`` (the next background line, GX lost), ``counter-jump`` (a GX whose counter
  jumped: end lines went missing, so the data may hold more than one vehicle), ``driver-restart`` (the driver
  started a new run), ``link-lost``, ``stalled``, ``timeout``, ``error``, ``missed`` (a vehicle the portal counted
  and lanewatch never saw, from a jump of k > 1 in its counter: k - 1 such decisions, see :func:`build_missed`),
  ``no-occupancy`` (a scan alone); an occupancy cut before its GX whose vehicle's tail came after the driver or
  link returned is one decision with the tail's end and the cut's reason among ``incomplete``,
- ``samples``, ``device_alarm`` (the portal's own GA/NA flag), ``tamper``,
  ``link_interruptions``, ``speed_kmh``, ``background``, ``profile`` (arrays to draw evidence),
- ``xray`` (only at a lane with an X-ray scanner, or when a scan was fused): the scan's id, source,
  status (``complete``, ``incomplete``, or ``missing`` when no scan came), registration, image objects
  and dense regions on the metres axis, image profile and a preview PNG (base64); see :mod:`lanewatch.edge.xray.fusion`.

Verdict rules, in order:

1. ``ALARM`` when any ``alarms`` entry has ``alarm`` true: a radiation test, ``tamper``, ``device`` (the
   portal's own alarm from its GA/NA lines, with ``gamma``/``neutron`` saying which and ``lanewatch`` the
   reading of lanewatch's own tests beside it; shown without alarming when ``[detection] device_alarm`` is
   "report", see :func:`lanewatch.edge.lane.detect.device_alarm_entry`), or a fused
   finding: ``shielded-source-suspected`` (high-Z object where the radiation alarms or a weak hotspot
   lies) or ``image-review`` (high-Z object large enough to shield a source, no radiation excess).
   ``norm-consistent`` (with ``release_recommended`` when the image agrees) and ``image-too-dark``
   never alarm: they explain, and the second says the image cannot clear the load.
2. else ``INCOMPLETE`` when the occupancy's data is not whole (no end line, or ``incomplete``) and for a scan decided
   without an occupancy (no radiation measurement at all);
3. else ``CLEAR``. An occupancy whose scan never came is decided on its radiation alone.

A scan without an occupancy gets its own decision (:func:`build_scan_only`): ``occupancy_id``
``<lane>-xray-<start ns>-<source><scan id>``, its start and end, ``end_reason`` ``no-occupancy``, no
radiation fields (``samples`` 0, ``profile`` empty) and the image findings as ``alarms``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lanewatch.edge.bus.records import Record, iso_utc

if TYPE_CHECKING:
    from lanewatch.edge.xray.scan import Scan

VERDICTS = ("CLEAR", "ALARM", "INCOMPLETE")
COMPLETE_ENDS = ("gx", "background")
"""End reasons after which the occupancy's data is whole: its end line, or (GX lost) the next background line."""


def verdict_of(analysis: dict[str, Any], end_reason: str, tamper: bool, incomplete: list[str] | None = None) -> str:
    """The verdict from the alarms (fused findings included), the end reason, the tamper flag and what made the
    occupancy's data incomplete."""
    if tamper or any(a.get("alarm") for a in analysis["alarms"]):
        return "ALARM"
    return "CLEAR" if end_reason in COMPLETE_ENDS and not incomplete else "INCOMPLETE"


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
    incomplete: list[str] | None = None,
    counter_inferred: bool = False,
    xray: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The decision for one occupancy from its analysis (see :mod:`lanewatch.edge.lane.detect`), with its fused
    findings among the analysis' alarms and its ``xray`` section when the lane has a scanner."""
    alarms = list(analysis["alarms"])
    if tamper:
        alarms.append({"reason": "tamper", "alarm": True, "statistic": None, "threshold": None, "location_m": None})
    record = {
        "lane": lane,
        "occupancy_id": occupancy_id,
        "device_occupancy": device_occupancy,
        "counter_inferred": counter_inferred,
        "start": iso_utc(start_wall_ns),
        "end": iso_utc(end_wall_ns),
        "start_ns": start_wall_ns,
        "end_ns": end_wall_ns,
        "verdict": verdict_of(analysis, end_reason, tamper, incomplete),
        "alarms": alarms,
        "baseline_verdict": analysis["baseline_verdict"],
        "baseline": analysis.get("baseline"),
        "end_reason": end_reason,
        "incomplete": list(incomplete or []),
        "samples": samples,
        "device_alarm": device_alarm,
        "tamper": tamper,
        "link_interruptions": link_interruptions,
        "speed_kmh": analysis["profile"].get("speed_kmh"),
        "background": analysis.get("background"),
        "profile": analysis["profile"],
    }
    if xray is not None:
        record["xray"] = xray
    return record


def build_missed(lane: str, end: Record, counter: int, since_wall_ns: int) -> dict[str, Any]:
    """The decision for a vehicle the portal counted and lanewatch never saw: its counter ``counter`` fell in a
    jump of the counter on the end line ``end``; it went by between ``since_wall_ns`` and that line."""
    start_ns = min(since_wall_ns or end.t_wall_ns, end.t_wall_ns)
    return {
        "lane": lane,
        "occupancy_id": f"{lane}-{end.t_wall_ns}-{end.source}{end.seq}-missed{counter}",
        "device_occupancy": counter,
        "counter_inferred": False,
        "start": iso_utc(start_ns),
        "end": iso_utc(end.t_wall_ns),
        "start_ns": start_ns,
        "end_ns": end.t_wall_ns,
        "verdict": "INCOMPLETE",
        "alarms": [],
        "baseline_verdict": None,
        "baseline": None,
        "end_reason": "missed",
        "incomplete": ["missed"],
        "samples": 0,
        "device_alarm": False,
        "tamper": False,
        "link_interruptions": 0,
        "speed_kmh": None,
        "background": None,
        "profile": {},
    }


def build_scan_only(scan: Scan, alarms: list[dict[str, Any]], xray: dict[str, Any]) -> dict[str, Any]:
    """The decision for an X-ray scan that matched no occupancy: its image findings and ``xray`` section alone."""
    alarming = any(a.get("alarm") for a in alarms)
    return {
        "lane": scan.lane,
        "occupancy_id": f"{scan.lane}-xray-{scan.start_wall_ns}-{scan.source}{scan.scan_id}",
        "device_occupancy": None,
        "counter_inferred": False,
        "start": iso_utc(scan.start_wall_ns),
        "end": iso_utc(scan.end_wall_ns),
        "start_ns": scan.start_wall_ns,
        "end_ns": scan.end_wall_ns,
        "verdict": "ALARM" if alarming else "INCOMPLETE",
        "alarms": alarms,
        "baseline_verdict": None,
        "baseline": None,
        "end_reason": "no-occupancy",
        "incomplete": ["no-occupancy"],
        "samples": 0,
        "device_alarm": False,
        "tamper": False,
        "link_interruptions": 0,
        "speed_kmh": None,
        "background": None,
        "profile": {},
        "xray": xray,
    }
