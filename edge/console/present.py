"""What a person reads about a decision: reasons in plain words with their numbers, local times, a summary.

Used by the console's pages and by ``lanewatch alerts``; nothing here reads files or sockets.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from lanewatch.edge.decisions.decision import COMPLETE_ENDS, Alarm, Baseline, Decision, ModelScore
from lanewatch.edge.decisions.profile import Located


class Told(Protocol):
    """The fields of a decision its reasons in words are made from: a
    :class:`~lanewatch.edge.decisions.decision.Decision`, or the event table's
    :class:`~lanewatch.edge.console.adjudication.RowFields` (the same fields, read without the rest)."""

    @property
    def verdict(self) -> str: ...
    @property
    def alarms(self) -> list[Alarm]: ...
    @property
    def device_alarm(self) -> bool | None: ...
    @property
    def incomplete(self) -> list[str]: ...
    @property
    def end_reason(self) -> str | None: ...
    @property
    def model(self) -> ModelScore | None: ...
    @property
    def baseline_verdict(self) -> str | None: ...
    @property
    def baseline(self) -> Baseline | None: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def end_ns(self) -> int: ...
    @property
    def samples(self) -> int: ...
    @property
    def device_occupancy(self) -> int | None: ...


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
FIELDED_NOT_EVALUATED = {
    "no-background": "no background reading before the vehicle to compare it with",
    "background-rejected": "the portal's background is far above what the vehicle measured, so not in its units",
    "no-neutron-background": "no neutron background to compare the neutron counts with",
}
"""Why the fielded rule (or a part of it) was not evaluated (``baseline.not_evaluated``), in words."""
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


def incomplete_causes(decision: Told) -> list[str]:
    """The codes that make ``decision`` INCOMPLETE, each once: its ``incomplete`` entries, then how it ended unless
    that was normal (the portal's end line) or is one of them already (as :func:`incomplete_text` words them)."""
    why = list(dict.fromkeys(decision.incomplete))
    end = decision.end_reason or "?"
    return why if (why and end in COMPLETE_ENDS) or end in why else [*why, end]


NOT_SCREENED = frozenset({"missed", "no-occupancy", "no-background", "error"})
"""Causes after which lanewatch has no radiation result for the vehicle at all."""


def _seconds(decision: Told) -> float | None:
    """The decision's span (s), start to end, when it has one."""
    start, end = decision.start_ns, decision.end_ns
    return (end - start) / 1e9 if start and end and end > start else None


def _measured(decision: Told) -> str:
    """`` (12 samples over 3.4 s measured)``: how much of the vehicle the portal's data covers."""
    seconds = _seconds(decision)
    return f" ({decision.samples} samples{f' over {seconds:.1f} s' if seconds is not None else ''} measured)"


def _incomplete_cause(code: str, decision: Told) -> str:
    """One cause of an INCOMPLETE decision in words: what data is missing, with its numbers."""
    seconds = _seconds(decision)
    if code == "missed":
        counter = f" (its occupancy {decision.device_occupancy})" if decision.device_occupancy is not None else ""
        within = f" (it passed within the {seconds:.0f} s before the portal's next end line)" if seconds else ""
        return f"the portal counted this vehicle{counter} but lanewatch received none of its data{within}"
    if code == "no-occupancy":
        scan = f" for {seconds:.1f} s" if seconds else ""
        return f"the X-ray scanner imaged a vehicle{scan} but the portal reported no occupancy: no radiation data"
    if code in ("link-lost", "driver-restart", "stalled"):
        return f"{END_WORDS[code]}, so the rest of the vehicle was not measured{_measured(decision)}"
    if code == "partial":
        return f"{INCOMPLETE_WORDS[code]}, so its front may not have been measured{_measured(decision)}"
    if code == "timeout":
        return END_WORDS[code] + (f" ({seconds:.0f} s)" if seconds else "")
    return INCOMPLETE_WORDS.get(code) or END_WORDS.get(code, f"it ended by {code}")


def incomplete_text(decision: Told) -> str:
    """Why ``decision`` is INCOMPLETE, each cause once, in plain words with its numbers, and what the officer must
    do: the vehicle crossed the lane without a complete screening."""
    causes = incomplete_causes(decision)
    head = "Not screened for radiation" if NOT_SCREENED & set(causes) else "Screened only in part"
    why = "; ".join(_incomplete_cause(c, decision) for c in causes)
    return f"{head}: {why}. Re-scan the vehicle or send it to secondary inspection"


def _num(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else "?"


def _measure(reason: str, stat: float | None, threshold: float | None, expected: float | None = None) -> str:
    """A radiation test's statistic against its threshold in its unit: `` 14.2 sigma (threshold 5.1)`` (the size
    of a two-sided z: its sign is the direction or the side, which the reason words), or the neutron counts."""
    if reason == "neutron":
        beside = f", {_num(expected, 0)} expected" if expected is not None else ""
        return f" {_num(stat, 0)} counts in its window{beside} (threshold {_num(threshold, 0)})"
    return f" {_num(_size(stat))} sigma (threshold {_num(threshold)})"


def _size(z: float | None) -> float | None:
    """The size of a z-score whose sign says a direction or a side (or of a one-sided one)."""
    return None if z is None else abs(z)


def _at_the_object(alarm: Alarm) -> str:
    """The radiation evidence of a ``shielded-source-suspected`` entry in words: the test that alarms at the object,
    or the weak hotspot there (below the alarm thresholds)."""
    evidence = alarm.radiation
    if evidence is None:
        return f"where the radiation rises:{_measure('gamma', alarm.statistic, alarm.threshold)}"
    test = evidence.reason.removesuffix(" (below threshold)")
    name = TEST_NAMES.get(test, test)
    if test != evidence.reason:
        size, hotspot = _num(_size(evidence.statistic)), _num(evidence.threshold)
        return f"where the radiation rises below the alarm thresholds: {name} {size} sigma (a hotspot from {hotspot})"
    return f"where the radiation alarms: {name}{_measure(test, evidence.statistic, evidence.threshold)}"


MATERIAL_WORDS = {"high_z": "a high-Z object", "dense": "a dense object (material not resolved)"}
"""An image object's material class, in words."""


def _image_there(alarm: Alarm, decision: Told | None) -> str:
    """``; the X-ray image shows a high-Z object there, 41 mm lead equivalent, 65 mm along by 40 mm high (not large
    or thick enough to count as a shield)`` for a radiation alarm with an image object at its place, unless a fused
    finding of the decision says that object already; else ""."""
    obj = alarm.object
    if obj is None or obj.x_m is None:
        return ""
    if decision is not None and any(
        a is not alarm and a.object is not None and a.object.x_m == obj.x_m for a in decision.alarms
    ):
        return ""
    what = MATERIAL_WORDS.get(obj.material or "", f"an object ({obj.material})")
    size = ""
    if None not in obj.x_m and obj.z_mm is not None and None not in obj.z_mm:
        size = f", {1000 * (obj.x_m[1] - obj.x_m[0]):.0f} mm along by {obj.z_mm[1] - obj.z_mm[0]:.0f} mm high"
    shield = " (not large or thick enough to count as a shield)" if obj.material == "high_z" and not obj.shields else ""
    return f"; the X-ray image shows {what} there, {_num(obj.lead_mm, 0)} mm lead equivalent{size}{shield}"


def _where(alarm: Alarm) -> str:
    """`` 5.2 m behind the front, ± 0.3 m``, or "" for an entry without a location."""
    location = alarm.location_m
    if location is None:
        return ""
    sd = alarm.location_sd_m
    if sd is None or sd <= 0:
        return f" {location:.1f} m behind the front (its uncertainty was not recorded)"
    digits = 1 if sd >= 0.1 else 2  # the place to the precision its uncertainty supports
    return f" {location:.{digits}f} m behind the front, ± {sd:.{digits}f} m"


def reason_text(alarm: Alarm, decision: Told | None = None) -> str:
    """One ``alarms`` entry (or a provisional alarm) in plain words with its numbers (``decision``: the one it belongs
    to, whose verdict and model explain a ``norm-consistent`` entry's release)."""
    reason = alarm.reason
    stat, threshold = alarm.statistic, alarm.threshold
    if reason in TEST_NAMES:
        size = _size(stat)
        name = TEST_NAMES[reason]
        if reason == "gamma-shape" and alarm.direction:
            name += f" {alarm.direction} than background"
        if reason == "gamma-side" and alarm.side:
            name += f" (the {alarm.side} half of the channels)"
        elif reason in ("neutron", "neutron-gamma") and alarm.side:
            name += f" (the {alarm.side} column's tubes)"
        measure = _measure(reason, stat, threshold, alarm.expected)
        crossed = size is None or threshold is None or size >= threshold  # the neutron test alarms at its threshold
        if not crossed:
            return f"{name} below its threshold:{measure}{_where(alarm)}"
        text = f"{name}{measure}{_where(alarm)}{_image_there(alarm, decision)}"
        if alarm.withheld:
            text += f"; withheld: {WITHHELD_WORDS.get(alarm.withheld, alarm.withheld)}"
        elif not alarm.alarm:
            text += "; consistent with NORM, so it does not alarm on its own"
        return text
    if reason.endswith("(below threshold)"):
        test = reason.removesuffix(" (below threshold)")
        return f"{TEST_NAMES.get(test, test)} below its threshold:{_measure(test, stat, threshold)}{_where(alarm)}"
    if reason == "norm-consistent":
        extent = alarm.extent
        spread = f", spread over {extent:.0%} of the load" if extent is not None else ""
        return f"Consistent with NORM{spread}: {norm_release_text(alarm, decision)}"
    if reason == "device":
        which = " and ".join(k for k, on in (("gamma", alarm.gamma), ("neutron", alarm.neutron)) if on) or "unspecified"
        reading = alarm.lanewatch
        if reading == "alarm":
            own = f"lanewatch's own tests confirm it ({', '.join(alarm.confirmed_by or [])})"
        elif reading == "norm-consistent":
            own = "lanewatch finds the excess consistent with NORM"
        elif reading == "no-background":
            own = "lanewatch had no background before the vehicle to test against"
        else:
            own = "lanewatch's own tests find no significant excess"
        return f"The portal's own alarm ({which}); {own}" + ("" if alarm.alarm else ", reported only")
    if reason == "tamper":
        return "Tamper: the portal reports its cabinet opened or a detector fault"
    if reason == "shielded-source-suspected":
        lead = alarm.object.lead_mm if alarm.object is not None else None
        return f"Shielded source suspected: dense object, {_num(lead, 0)} mm lead equivalent{_where(alarm)}, " + (
            _at_the_object(alarm)
        )
    if reason == "image-review":
        return (
            f"Dense object, {_num(stat, 0)} mm lead equivalent{_where(alarm)}: large enough to hide a source, image "
            f"review needed (above {_num(threshold, 0)} mm lead equivalent)"
        )
    if reason == "image-too-dark":
        fraction = f"{stat:.0%}" if stat is not None else "?"
        limit = f"{threshold:.0%}" if threshold is not None else "?"
        return f"X-ray image too dark over {fraction} of the load (limit {limit}): the image cannot clear it"
    if reason == "model-anomaly":
        return f"Anomaly model score {_num(stat, 2)} (alarm from {_num(threshold, 2)})"
    numbers = f" {_num(stat)} (threshold {_num(threshold)})" if stat is not None else ""
    return f"{reason}{numbers}{_where(alarm)}"


def finding_label(finding: Located) -> str:
    """A located finding's short label with its place: ``Gamma excess 8.0 m``."""
    reason = finding.reason
    test = reason.removesuffix(" (below threshold)")
    label = FINDING_LABELS.get(test, test) + (" (below threshold)" if test != reason else "")
    return f"{label} {finding.location_m:.1f} m"


def reasons(decision: Told) -> list[str]:
    """Every reason of ``decision`` in plain words: alarming ones first, then the portal's own alarm, the NORM release
    and the rest."""
    alarms = decision.alarms
    # an INCOMPLETE decision says first that the vehicle was not (wholly) screened: that is what the officer acts on
    out = [incomplete_text(decision)] if decision.verdict == "INCOMPLETE" else []
    out += [reason_text(a, decision) for a in alarms if a.alarm]
    if decision.device_alarm and not any(a.reason == "device" for a in alarms):
        out.append("The portal's own alarm")
    # the NORM release (or why there is none) next, so a short summary never shows a released excess without it
    out += [reason_text(a, decision) for a in alarms if not a.alarm and a.reason == "norm-consistent"]
    out += [reason_text(a, decision) for a in alarms if not a.alarm and a.reason != "norm-consistent"]
    return out


def model_text(decision: Told) -> str:
    """The anomaly model's finding in words, or "" when the decision was not scored."""
    model = decision.model
    if model is None:
        return ""
    if model.unscored:
        if decision.verdict == "INCOMPLETE":  # its reasons say what is missing
            return "not scored: the vehicle's data is incomplete"
        return f"not scored: {model.unscored}"
    if model.calibration == "warming-up":
        seen, needed = model.calibration_occupancies, model.min_occupancies
        return f"warming up: {seen} of {needed} ordinary vehicles seen at this lane, no score yet"
    score = _num(model.score, 2)
    return f"{'finding' if model.finding else 'no finding'}, score {score}"


def model_short(decision: Told) -> str:
    """:func:`model_text` short enough for a table cell."""
    model = decision.model
    if model is not None and not model.unscored and model.calibration == "warming-up":
        return "model warming up"
    return model_text(decision)


def _norm_entries(decision: Told) -> list[Alarm]:
    return [a for a in decision.alarms if a.reason == "norm-consistent"]


def release_recommended(decision: Told) -> bool:
    return any(a.release_recommended for a in _norm_entries(decision))


def norm_state(decision: Told) -> str:
    """``release`` (NORM-consistent, release recommended), ``held`` (NORM-consistent but the verdict is ALARM, no
    release recommended), ``unconfirmed`` (cleared as NORM-consistent by the radiation tests, but the model or the
    image did not confirm the release) or "" (no NORM-consistent excess)."""
    if not _norm_entries(decision):
        return ""
    if release_recommended(decision):
        return "release"
    return "held" if decision.verdict == "ALARM" else "unconfirmed"


def _no_release_causes(alarm: Alarm, decision: Told | None) -> str:
    """Why a ``norm-consistent`` entry carries no release recommendation, in words (the image's and the model's)."""
    causes = ["the X-ray image does not agree"] if alarm.image is not None and not alarm.image.agrees else []
    model = decision.model if decision is not None else None
    if model is None:
        causes.append("the anomaly model disagrees" if alarm.model_agrees is False else "no model judged it")
    elif model.calibration == "warming-up" and model.score is None:
        needed = model.min_occupancies
        causes.append(
            f"the anomaly model is still warming up ({model.calibration_occupancies} of {needed} ordinary "
            f"vehicles scored at this lane; no release is recommended before it has scored {needed})"
        )
    elif model.unscored:
        causes.append(f"the anomaly model gave no score ({model.unscored})")
    elif model.score is None:
        causes.append("the anomaly model gave no score")
    elif alarm.model_agrees is False:
        score, limit = _num(model.score, 2), _num(model.release_threshold, 2)
        causes.append(f"the anomaly model finds the load unusual (score {score}, release below {limit})")
    return "; ".join(causes) or "no anomaly model or X-ray image confirmed it"


def norm_release_text(alarm: Alarm, decision: Told | None) -> str:
    """What a ``norm-consistent`` entry means for release, consistent with the decision's verdict."""
    alarm_stands = decision is not None and decision.verdict == "ALARM"
    if alarm.release_recommended:
        return "release recommended" + ("; the ALARM stands on its other reasons" if alarm_stands else "")
    cause = _no_release_causes(alarm, decision)
    if alarm_stands:
        return f"no release recommended: {cause}"
    return f"cleared by the radiation tests, release not confirmed: {cause}"


NORM_WORDS = {"release": "release recommended", "held": "held (alarm)", "unconfirmed": "release not confirmed"}
""":func:`norm_state` in words, for a table cell."""


def fielded_short(decision: Told) -> str:
    """The fielded rule's verdict for a table cell: ``ALARM``, ``CLEAR``, ``not eval.`` (no background to compare
    with) or ``-`` (no radiation data)."""
    if decision.baseline_verdict is not None:
        return decision.baseline_verdict
    return "not eval." if decision.baseline is not None and decision.baseline.not_evaluated else "-"


def fielded_text(decision: Decision) -> str:
    """The fielded n-sigma rule's verdict with its numbers in words, and why it (or a part of it) was not evaluated."""
    base = decision.baseline
    if base is None:
        return "not applied: no radiation data"
    parts = []
    if base.max_sigma is not None:
        parts.append(f"gamma {base.max_sigma:.1f} sigma at most (alarm above {_num(base.n_sigma)})")
    if base.neutron_max is not None and base.neutron_background is not None:
        parts.append(
            f"neutrons {_num(base.neutron_max, 0)} counts at most against {_num(base.neutron_background)} background"
            f" (alarm above +{base.neutron_threshold})"
        )
    why = FIELDED_NOT_EVALUATED.get(base.not_evaluated or "", base.not_evaluated)
    if decision.baseline_verdict is None:
        return "; ".join([f"not evaluated: {why or 'no verdict'}", *parts])
    what = "; ".join(parts) or "nothing measured"
    return f"{decision.baseline_verdict}: {what}" + (f"; the rest not evaluated: {why}" if why else "")


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


class Summary(msgspec.Struct, kw_only=True):
    """What the wall and the live feed show of a decision (small enough to push to every browser)."""

    seq: int
    lane: str
    verdict: str
    end: str
    """End (ISO 8601 UTC)."""
    end_local: str
    """End in the site's time zone."""
    end_utc: str
    """End as ``YYYY-MM-DD HH:MM:SS UTC``."""
    reasons: list[str]
    """The first three reasons in words."""
    device_alarm: bool
    model: str
    """The anomaly model's finding in words."""
    release_recommended: bool
    norm: str
    """The NORM release (:func:`norm_state`)."""
    state: str
    """The adjudication state (changes as operators act)."""
    background_cps: float | None
    """The gamma background (cps, all channels) the decision was judged against."""


def summary(decision: Decision, state: str, clock: Clock) -> Summary:
    """What the wall and the live feed show of ``decision``, whose adjudication ``state`` is given."""
    return Summary(
        seq=decision.seq,
        lane=decision.lane,
        verdict=decision.verdict,
        end=decision.end,
        end_local=clock.local(decision.end),
        end_utc=utc_label(decision.end),
        reasons=reasons(decision)[:3],
        device_alarm=decision.device_alarm,
        model=model_text(decision),
        release_recommended=release_recommended(decision),
        norm=norm_state(decision),
        state=state,
        background_cps=background_cps(decision),
    )


def background_cps(decision: Decision) -> float | None:
    """The gamma background (cps, all channels) the decision was judged against, or None."""
    value = decision.background.gamma_total_cps if decision.background is not None else None
    return None if value is None else float(value)
