"""Shift and day reports per lane: vehicles, verdicts, alarms by reason, dispositions, time to disposition,
uptime and faults.

Counted from the journal (decisions and their adjudications) and the lane health history the consoles keep
in it (:mod:`lanewatch.edge.console.health`) over a span of time in the site's time zone.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import Counter
from dataclasses import dataclass, field

from lanewatch.edge.console.adjudication import DISPOSITIONS, NEEDS_ADJUDICATION, Adjudications
from lanewatch.edge.console.health import HealthHistory, Uptime
from lanewatch.edge.console.present import incomplete_causes, parse_utc
from lanewatch.edge.decisions.journal import Journal

SHIFTS = {"day": (0, 24), "early": (6, 14), "late": (14, 22), "night": (22, 30)}
"""Report spans: hours of the local day they start and end (night ends at 06:00 the next day)."""


@dataclass
class LaneReport:
    lane: str
    vehicles: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    """Alarming entries of ALARM decisions, by reason."""
    portal_alarms: int = 0
    dispositions: Counter[str] = field(default_factory=Counter)
    awaiting: int = 0
    """Decisions that need adjudication (ALARM, INCOMPLETE) not disposed yet."""
    minutes_to_disposition: list[float] = field(default_factory=list)
    link_interruptions: int = 0
    incomplete_reasons: Counter[str] = field(default_factory=Counter)
    """INCOMPLETE decisions by cause (:func:`lanewatch.edge.console.present.incomplete_causes`)."""
    health: Uptime = field(default_factory=Uptime)

    @property
    def faults_text(self) -> str:
        """Each fault with how often it began and for how long it was active, most frequent first."""
        return "; ".join(
            f"{fault} {n}x {self.health.fault_s[fault] / 60:.1f} min" for fault, n in self.health.faults.most_common()
        )

    @property
    def median_minutes(self) -> float | None:
        return statistics.median(self.minutes_to_disposition) if self.minutes_to_disposition else None

    @property
    def max_minutes(self) -> float | None:
        return max(self.minutes_to_disposition) if self.minutes_to_disposition else None


def lane_reports(
    adjudications: Adjudications, journal: Journal, history: HealthHistory, lanes: list[str], since: str, until: str
) -> list[LaneReport]:
    """One report per lane (configured lanes first, then any other in the journal) for ends in [since, until)."""
    reports = {lane: LaneReport(lane, health=history.uptime(lane, since, until)) for lane in lanes}
    rows = adjudications.span(since, until)
    for seq, lane, verdict, state, disposition in rows:
        report = reports.setdefault(lane, LaneReport(lane))
        report.vehicles += 1
        report.verdicts[verdict] += 1
        if verdict in NEEDS_ADJUDICATION and state != "disposed":
            report.awaiting += 1
        if state == "disposed" and disposition:
            report.dispositions[disposition] += 1
        if verdict == "CLEAR" and state != "disposed":
            continue
        decision = journal.get(seq)
        if decision is None:  # not after the span read its seq from the same table
            continue
        report.link_interruptions += decision.link_interruptions
        if verdict == "INCOMPLETE":
            report.incomplete_reasons.update(incomplete_causes(decision))
        if verdict == "ALARM":
            report.portal_alarms += decision.device_alarm
            for alarm in decision.alarms:
                if alarm.alarm:
                    report.reasons[alarm.reason] += 1
        if state == "disposed":
            first = next((h for h in adjudications.history(seq) if h.kind == "adjudicate"), None)
            ended, disposed = parse_utc(decision.end), parse_utc(first.time if first else None)
            if ended and disposed:
                report.minutes_to_disposition.append(max(0.0, (disposed - ended).total_seconds() / 60))
    return list(reports.values())


def reports_csv(reports: list[LaneReport], span: str) -> str:
    """The reports as CSV, one row per lane."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["span", "lane", "vehicles", "clear", "alarm", "incomplete", "portal_alarms", "alarms_by_reason", "awaiting",
         *[f"disposed_{code}" for code in DISPOSITIONS], "median_minutes_to_disposition",
         "max_minutes_to_disposition", "link_interruptions", "incomplete_by_end_reason", "uptime_percent",
         "down_minutes", "unobserved_minutes", "faults"]
    )  # fmt: skip
    for r in reports:
        writer.writerow(
            [span, r.lane, r.vehicles, r.verdicts["CLEAR"], r.verdicts["ALARM"], r.verdicts["INCOMPLETE"],
             r.portal_alarms, "; ".join(f"{k} {v}" for k, v in r.reasons.most_common()), r.awaiting,
             *[r.dispositions[code] for code in DISPOSITIONS],
             "" if r.median_minutes is None else f"{r.median_minutes:.1f}",
             "" if r.max_minutes is None else f"{r.max_minutes:.1f}", r.link_interruptions,
             "; ".join(f"{k} {v}" for k, v in r.incomplete_reasons.most_common()),
             "" if r.health.uptime is None else f"{100 * r.health.uptime:.1f}", f"{r.health.down_s / 60:.1f}",
             f"{r.health.unobserved_s / 60:.1f}", r.faults_text]
        )  # fmt: skip
    return out.getvalue()
