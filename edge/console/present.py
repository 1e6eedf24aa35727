"""What a person reads about a decision: reasons in plain words with their numbers, local times, a summary.

Used by the console's pages and by ``lanewatch alerts``; nothing here reads files or sockets.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Decision = dict[str, Any]
"""A journaled decision as decoded from the journal (see :mod:`lanewatch.edge.decisions.decision`)."""

TEST_NAMES = {
    "gamma": "Gamma excess",
    "gamma-shape": "Gamma spectrum shape",
    "gamma-side": "Gamma share of one portal column",
    "neutron": "Neutron excess",
    "neutron-gamma": "Neutrons with gamma evidence (plutonium-like)",
}
"""The radiation tests, by reason, in words."""
FINDING_LABELS = {
    **TEST_NAMES,
    "neutron-gamma": "Neutrons with gamma",
    "norm-consistent": "NORM-consistent load",
    "shielded-source-suspected": "Shielded source suspected",
    "image-review": "Dense object: image review",
}
"""Short names of located findings, for labels on a figure."""
REASON_NAMES = {
    **FINDING_LABELS,
    "device": "Portal's own alarm",
    "tamper": "Tamper",
    "model-anomaly": "Anomaly model",
    "image-too-dark": "X-ray image too dark",
}
"""Every alarm reason by a short name, for counts in a report."""


INCOMPLETE_WORDS = {
    "partial": "its start was not seen (the driver or the service joined mid-vehicle)",
    "no-background": "no background reading before it, so its tests are withheld",
}
"""Why an occupancy's data is not whole (``incomplete`` entries), in words."""
WITHHELD_WORDS = {"no-background": "no background reading before the vehicle to test against"}
"""Why a radiation test that crossed its threshold does not alarm (``withheld``), in words."""
END_WORDS = {
    "gx": "it ended with the portal's end-of-occupancy line",
    "background": "its end line was lost (ended by the next background line)",
    "counter-jump": "the portal's occupancy counter jumped: end lines went missing",
    "driver-restart": "the driver restarted during it",
    "link-lost": "the link to the portal was lost during it",
    "stalled": "the samples stopped during it",
    "timeout": "it lasted longer than the occupancy timeout",
    "error": "an error in its handling ended it",
    "missed": "the portal counted a vehicle lanewatch never saw",
    "no-occupancy": "an X-ray scan with no occupancy at the portal",
}
"""How an occupancy ended (``end_reason``), in words."""
INCOMPLETE_NAMES = {
    "partial": "start not seen",
    "no-background": "no background before it",
    "background": "end line lost",
    "counter-jump": "occupancy counter jumped",
    "driver-restart": "driver restarted",
    "link-lost": "link to the portal lost",
    "stalled": "samples stopped",
    "timeout": "occupancy timeout",
    "error": "error in its handling",
    "missed": "vehicle lanewatch never saw",
    "no-occupancy": "scan without an occupancy",
}
"""Why a decision is INCOMPLETE (an ``incomplete`` entry or its ``end_reason``) by a short name, for a report."""


def incomplete_causes(decision: Decision) -> list[str]:
    """The codes that make ``decision`` INCOMPLETE: its ``incomplete`` entries when it ended normally (the portal's
    end line), else how it ended (as :func:`reasons` words them)."""
    why = [str(w) for w in decision.get("incomplete") or []]
    end = str(decision.get("end_reason") or "?")
    return why if why and end in ("gx", "background") else [*why, end]


def _num(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else "?"


def _where(alarm: dict[str, Any]) -> str:
    """`` 5.2 m behind the front, ± 0.3 m``, or "" for an entry without a location."""
    location = alarm.get("location_m")
    if not isinstance(location, int | float):
        return ""
    sd = alarm.get("location_sd_m")
    if not isinstance(sd, int | float) or sd <= 0:
        return f" {location:.1f} m behind the front"
    digits = 1 if sd >= 0.1 else 2  # the place to the precision its uncertainty supports
    return f" {location:.{digits}f} m behind the front, ± {sd:.{digits}f} m"


def reason_text(alarm: dict[str, Any], decision: Decision | None = None) -> str:
    """One ``alarms`` entry in plain words with its numbers (``decision``: the one it belongs to, whose verdict and
    model explain a ``norm-consistent`` entry's release)."""
    reason = str(alarm.get("reason", "?"))
    stat, threshold = alarm.get("statistic"), alarm.get("threshold")
    if reason in TEST_NAMES:
        size = abs(stat) if isinstance(stat, int | float) else stat
        name = TEST_NAMES[reason]
        if reason == "gamma-shape" and alarm.get("direction"):
            name += f" {alarm['direction']} than background"
        if reason == "gamma-side" and alarm.get("side"):
            name += f" (the {alarm['side']} half of the channels)"
        if reason == "neutron":
            expected = alarm.get("expected")
            beside = f", {_num(expected, 0)} expected" if isinstance(expected, int | float) else ""
            measure = f" {_num(stat, 0)} counts in its window{beside} (threshold {_num(threshold, 0)})"
        else:
            measure = f" {_num(size)} sigma (threshold {_num(threshold)})"
        crossed = not isinstance(size, int | float) or not isinstance(threshold, int | float) or size > threshold
        if not crossed:
            return f"{name} below its threshold:{measure}{_where(alarm)}"
        text = f"{name}{measure}{_where(alarm)}"
        if alarm.get("withheld"):
            text += f"; withheld: {WITHHELD_WORDS.get(alarm['withheld'], alarm['withheld'])}"
        elif alarm.get("alarm") is False:
            text += "; consistent with NORM, so it does not alarm on its own"
        return text
    if reason.endswith("(below threshold)"):
        test = reason.removesuffix(" (below threshold)")
        return f"{TEST_NAMES.get(test, test)} below its threshold: {_num(stat)} sigma (threshold {_num(threshold)})" + (
            _where(alarm)
        )
    if reason == "norm-consistent":
        extent = alarm.get("extent")
        spread = f", spread over {extent:.0%} of the load" if isinstance(extent, int | float) else ""
        return f"Consistent with NORM{spread}: {norm_release_text(alarm, decision or {})}"
    if reason == "device":
        which = " and ".join(k for k in ("gamma", "neutron") if alarm.get(k)) or "unspecified"
        reading = alarm.get("lanewatch")
        if reading == "alarm":
            own = f"lanewatch's own tests confirm it ({', '.join(alarm.get('confirmed_by') or [])})"
        elif reading == "norm-consistent":
            own = "lanewatch finds the excess consistent with NORM"
        else:
            own = "lanewatch's own tests find no significant excess"
        return f"The portal's own alarm ({which}); {own}" + ("" if alarm.get("alarm") else ", reported only")
    if reason == "tamper":
        return "Tamper: the portal reports its cabinet opened or a detector fault"
    if reason == "shielded-source-suspected":
        lead = (alarm.get("object") or {}).get("lead_mm")
        return (
            f"Shielded source suspected: dense object, {_num(lead, 0)} mm lead equivalent{_where(alarm)}, where the "
            f"radiation rises ({_num(stat)} sigma, threshold {_num(threshold)})"
        )
    if reason == "image-review":
        return (
            f"Dense object, {_num(stat, 0)} mm lead equivalent{_where(alarm)}: large enough to hide a source, image "
            f"review needed (above {_num(threshold, 0)} mm lead equivalent)"
        )
    if reason == "image-too-dark":
        fraction = f"{stat:.0%}" if isinstance(stat, int | float) else "?"
        limit = f"{threshold:.0%}" if isinstance(threshold, int | float) else "?"
        return f"X-ray image too dark over {fraction} of the load (limit {limit}): the image cannot clear it"
    if reason == "model-anomaly":
        return f"Anomaly model score {_num(stat, 2)} (alarm from {_num(threshold, 2)})"
    numbers = f" {_num(stat)} (threshold {_num(threshold)})" if isinstance(stat, int | float) else ""
    return f"{reason}{numbers}{_where(alarm)}"


def finding_label(finding: dict[str, Any]) -> str:
    """A located finding's short label with its place: ``Gamma excess 8.0 m``."""
    reason = str(finding.get("reason", "?"))
    test = reason.removesuffix(" (below threshold)")
    label = FINDING_LABELS.get(test, test) + (" (below threshold)" if test != reason else "")
    location = finding.get("location_m")
    return f"{label} {location:.1f} m" if isinstance(location, int | float) else label


def reasons(decision: Decision) -> list[str]:
    """Every reason of ``decision`` in plain words: alarming ones first, then the portal's own alarm, the NORM release
    and the rest."""
    alarms = [a for a in decision.get("alarms") or [] if isinstance(a, dict)]
    out = [reason_text(a, decision) for a in alarms if a.get("alarm")]
    if decision.get("device_alarm") and not any(a.get("reason") == "device" for a in alarms):
        out.append("The portal's own alarm")
    # the NORM release (or why there is none) next, so a short summary never shows a released excess without it
    out += [reason_text(a, decision) for a in alarms if not a.get("alarm") and a.get("reason") == "norm-consistent"]
    out += [reason_text(a, decision) for a in alarms if not a.get("alarm") and a.get("reason") != "norm-consistent"]
    if decision.get("verdict") == "INCOMPLETE":
        flags = {str(w) for w in decision.get("incomplete") or []}
        why = [
            INCOMPLETE_WORDS.get(c, c) if c in flags else END_WORDS.get(c, f"it ended by {c}")
            for c in incomplete_causes(decision)
        ]
        out.append("Incomplete: " + "; ".join(why))
    return out


def model_text(decision: Decision) -> str:
    """The anomaly model's finding in words, or "" when the decision was not scored."""
    model = decision.get("model")
    if not isinstance(model, dict):
        return ""
    if model.get("unscored"):
        return f"not scored: {model['unscored']}"
    if model.get("calibration") == "warming-up":
        seen, needed = model.get("calibration_occupancies"), model.get("min_occupancies")
        return f"warming up: {seen} of {needed} ordinary vehicles seen at this lane, no score yet"
    score = _num(model.get("score"), 2)
    return f"{'finding' if model.get('finding') else 'no finding'}, score {score}"


def model_short(decision: Decision) -> str:
    """:func:`model_text` short enough for a table cell."""
    model = decision.get("model")
    if isinstance(model, dict) and not model.get("unscored") and model.get("calibration") == "warming-up":
        return "model warming up"
    return model_text(decision)


def _norm_entries(decision: Decision) -> list[dict[str, Any]]:
    alarms = decision.get("alarms") or []
    return [a for a in alarms if isinstance(a, dict) and a.get("reason") == "norm-consistent"]


def release_recommended(decision: Decision) -> bool:
    return any(a.get("release_recommended") for a in _norm_entries(decision))


def norm_state(decision: Decision) -> str:
    """``release`` (NORM-consistent, release recommended), ``held`` (NORM-consistent but the verdict is ALARM, no
    release recommended), ``unconfirmed`` (cleared as NORM-consistent by the radiation tests, but the model or the
    image did not confirm the release) or "" (no NORM-consistent excess)."""
    if not _norm_entries(decision):
        return ""
    if release_recommended(decision):
        return "release"
    return "held" if decision.get("verdict") == "ALARM" else "unconfirmed"


def _no_release_causes(alarm: dict[str, Any], decision: Decision) -> str:
    """Why a ``norm-consistent`` entry carries no release recommendation, in words (the image's and the model's)."""
    image = alarm.get("image")
    causes = ["the X-ray image does not agree"] if isinstance(image, dict) and image.get("agrees") is False else []
    model = decision.get("model")
    if not isinstance(model, dict):
        causes.append("the anomaly model disagrees" if alarm.get("model_agrees") is False else "no model judged it")
    elif model.get("calibration") == "warming-up" and not isinstance(model.get("score"), int | float):
        needed = model.get("min_occupancies")
        causes.append(
            f"the anomaly model is still warming up ({model.get('calibration_occupancies')} of {needed} ordinary "
            f"vehicles scored at this lane; no release is recommended before it has scored {needed})"
        )
    elif model.get("unscored"):
        causes.append(f"the anomaly model gave no score ({model['unscored']})")
    elif not isinstance(model.get("score"), int | float):
        causes.append("the anomaly model gave no score")
    elif alarm.get("model_agrees") is False:
        score, limit = _num(model.get("score"), 2), _num(model.get("release_threshold"), 2)
        causes.append(f"the anomaly model finds the load unusual (score {score}, release below {limit})")
    return "; ".join(causes) or "no anomaly model or X-ray image confirmed it"


def norm_release_text(alarm: dict[str, Any], decision: Decision) -> str:
    """What a ``norm-consistent`` entry means for release, consistent with the decision's verdict."""
    alarm_stands = decision.get("verdict") == "ALARM"
    if alarm.get("release_recommended"):
        return "release recommended" + ("; the ALARM stands on its other reasons" if alarm_stands else "")
    cause = _no_release_causes(alarm, decision)
    if alarm_stands:
        return f"no release recommended: {cause}"
    return f"cleared by the radiation tests, release not confirmed: {cause}"


@dataclass(frozen=True)
class Clock:
    """The site's time zone: journal UTC text shown as local time."""

    zone: zoneinfo.ZoneInfo

    @classmethod
    def named(cls, name: str) -> Clock:
        return cls(zoneinfo.ZoneInfo(name))

    def local(self, utc_text: str | None, seconds: bool = True) -> str:
        """``2024-05-01 14:00:00`` in the site's zone; the text itself when it is no time."""
        when = parse_utc(utc_text)
        if when is None:
            return str(utc_text or "")
        return when.astimezone(self.zone).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")

    def utc_of_local(self, text: str) -> str:
        """A local date or date-time (``2024-05-01`` or ``2024-05-01T14:00``) as journal UTC text."""
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=self.zone)
        return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str | None) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(text))
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def utc_label(text: str | None) -> str:
    """``2024-05-01 12:00:00 UTC`` (for the hover text of a local time)."""
    when = parse_utc(text)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""


def summary(decision: Decision, state: str, clock: Clock) -> dict[str, Any]:
    """What the wall and the live feed show of a decision (small enough to push to every browser)."""
    return {
        "seq": decision.get("seq"),
        "lane": decision.get("lane"),
        "verdict": decision.get("verdict"),
        "end": decision.get("end"),
        "end_local": clock.local(decision.get("end")),
        "end_utc": utc_label(decision.get("end")),
        "reasons": reasons(decision)[:3],
        "device_alarm": bool(decision.get("device_alarm")),
        "model": model_text(decision),
        "release_recommended": release_recommended(decision),
        "norm": norm_state(decision),
        "state": state,
        "background_cps": background_cps(decision),
    }


def background_cps(decision: Decision) -> float | None:
    """The gamma background (cps, all channels) the decision was judged against, or None."""
    value = (decision.get("background") or {}).get("gamma_total_cps")
    return float(value) if isinstance(value, int | float) else None
