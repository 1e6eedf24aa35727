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
- ``baseline_verdict``: what the fielded n-sigma rule said, and ``baseline`` its numbers: against the portal's own
  background only, so null with ``baseline.not_evaluated`` saying why when there is none to compare with,
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

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta

from lanewatch.edge.bus.records import Record, iso_utc

if TYPE_CHECKING:
    from lanewatch.edge.xray.scan import Scan

VERDICTS = ("CLEAR", "ALARM", "INCOMPLETE")
SCHEMA_VERSION = 2
"""Version of the decision contract (:class:`Decision`); it grows when a field changes meaning or is removed. 2:
``model.score`` is read against the lane's own traffic (``model.raw_score`` is the model's own score)."""
Verdict = Literal["CLEAR", "ALARM", "INCOMPLETE"]
Instant = Annotated[str, Meta(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")]
"""ISO 8601 UTC, e.g. 2026-11-28T03:30:16.123Z."""
Ns = Annotated[int, Meta(ge=0)]
"""An instant in ns since the epoch (UTC)."""
Numbers = list[float | None]
"""A series of numbers; null where there is no value."""


class _Section(msgspec.Struct, kw_only=True):
    """A part of a decision whose listed fields are checked; further fields (by reason or by source) are allowed."""


class ImageObject(_Section):
    """A high-Z or dense object of the X-ray image, on the metres axis (see :mod:`lanewatch.edge.xray.fusion`)."""

    x_m: list[float | None] | None = None
    """Its span (m from the vehicle front, or from the scan's first line)."""
    lines: list[int] | None = None
    """First and last image line."""
    pixels: list[int] | None = None
    """First and last detector pixel."""
    z_mm: list[float | None] | None = None
    """Its span (mm) up the detector column."""
    material: str | None = None
    """Material class (high_z, dense, metal, organic, unresolvable, ...)."""
    ratio: float | None = None
    """Dual-energy ratio (low over high energy attenuation)."""
    excess: float | None = None
    """Mean attenuation above its surroundings."""
    max_excess: float | None = None
    """Largest attenuation above its surroundings."""
    lead_mm: float | None = None
    """Lead-equivalent thickness (mm)."""
    area_mm2: float | None = None
    """Area (mm²) in the image."""
    shields: bool | None = None
    """Large and dense enough to shield a source."""
    mean_att: float | None = None
    """For a dense region: its mean attenuation."""
    max_att: float | None = None
    """For a dense region: its largest attenuation."""


class RadiationEvidence(_Section):
    """For reason shielded-source-suspected: the radiation evidence co-located with the image object (an alarm, or
    a weak hotspot whose reason ends in ``(below threshold)``)."""

    reason: str
    statistic: float | None = None
    threshold: float | None = None
    location_m: float | None = None
    location_sd_m: float | None = None
    separation_m: float | None = None
    """Distance (m) between the evidence and the object's span."""
    separation_sigma: float | None = None
    """That distance in standard deviations of the two locations combined."""


class NormImage(_Section):
    """For reason norm-consistent at a lane with a scanner: whether the image shows homogeneous low-Z bulk cargo
    where the excess lies."""

    agrees: bool
    """The image supports the release."""
    extent_m: list[float | None] | None = None
    """The span (m) of the load that was looked at."""
    load_ratio: float | None = None
    """The load's dual-energy ratio (null without two energies)."""
    load_ratio_min: float | None = None
    """The ratio below which the load attenuates like metal or high-Z."""
    spread: float | None = None
    """Inter-quartile spread of the load's attenuation over its median."""
    spread_max: float | None = None
    """The largest spread of a homogeneous load."""
    dark_fraction: float | None = None
    """Share of the load too dark to see through."""
    disagrees_because: list[str] = []
    """Why the image does not agree, in words."""


class FalseAlarmProbabilities(_Section):
    """For reason device: the false-alarm probabilities lanewatch's own tests were run at."""

    gamma: float | None = None
    neutron: float | None = None


class Alarm(_Section):
    """One ``alarms`` entry: a test that crossed its threshold, or a finding that explains the verdict."""

    reason: str
    """What alarmed or explains: a radiation test (e.g. gamma-window, neutron), tamper, device, norm-consistent,
    shielded-source-suspected, image-review, image-too-dark, model-anomaly."""
    alarm: bool
    """True when this entry makes the verdict ALARM; false on entries that explain (NORM released, withheld)."""
    statistic: float | None = None
    """The test statistic (a z-score, counts or an anomaly score; see reason), or null."""
    threshold: float | None = None
    """The threshold the statistic was compared with, or null."""
    location_m: float | None = None
    """Where along the vehicle (m from its front) the excess lies, or null."""
    location_sd_m: float | None = None
    """Standard deviation (m) of ``location_m``."""
    t_offset_s: float | None = None
    """Time (s) after the occupancy start of the excess' peak."""
    withheld: str | None = None
    """Why a radiation test's entry does not alarm although it crossed (no-background)."""
    gamma: bool | None = None
    """For reason device: the portal's gamma alarm."""
    neutron: bool | None = None
    """For reason device: the portal's neutron alarm."""
    lanewatch: str | None = None
    """For reason device: lanewatch's own reading (alarm, norm-consistent, not-significant, no-background: no
    background before the vehicle to test against, what its tests found withheld)."""
    confirmed_by: list[str] | None = None
    """For reason device: lanewatch's tests that confirm the portal's alarm."""
    release_recommended: bool | None = None
    """For reason norm-consistent: the image and the model agree the load may be released."""
    model_agrees: bool | None = None
    """For reason norm-consistent: the anomaly score is below the release threshold."""
    radiation_z: float | None = None
    """For fused findings: the matched-filter z at the image object."""
    window_s: float | None = None
    """For reason neutron: length (s) of the sliding window whose counts the statistic, threshold and expected sum."""
    model_version: str | None = None
    """For reason model-anomaly: the model that scored."""
    direction: Literal["softer", "harder"] | None = None
    """For reason gamma-shape: the spectrum is softer or harder than background."""
    side: Literal["first", "second"] | None = None
    """For reason gamma-side: the half of the portal's channels whose share of the gross counts rose; for reasons
    neutron and neutron-gamma: the half of the neutron tubes (one column) whose window counts (absent: all tubes)."""
    expected: float | None = None
    """For reason neutron: the counts expected in the window."""
    released_as: str | None = None
    """For a radiation test released as NORM: norm-consistent."""
    raised_at_s: float | None = None
    """For a provisional alarm: time (s) after the occupancy start at which the streaming test crossed."""
    extent: float | None = None
    """For reason norm-consistent: share of the load the excess is spread over."""
    min_extent: float | None = None
    """For reason norm-consistent: the share from which an excess counts as spread over the load."""
    extent_m: list[float | None] | None = None
    """For reason image-too-dark: the longest dark stretch (m), or null."""
    image: NormImage | None = None
    """For reason norm-consistent at a lane with a scanner: what the image says about the release."""
    object: ImageObject | None = None
    """For fused findings: the image object; for a radiation test's alarm: the high-Z or dense image object at its
    location (within ``[fusion] colocation_sigma``), if any."""
    radiation: RadiationEvidence | None = None
    """For reason shielded-source-suspected: the radiation evidence at the object."""
    false_alarm_probability: FalseAlarmProbabilities | None = None
    """For reason device: the false-alarm probabilities of lanewatch's own tests."""


class ProvisionalAlarm(Alarm, kw_only=True):
    """A mid-passage alarm, published on the alert bus (not journaled) as soon as a streaming test crosses: an
    ``alarms`` entry of the occupancy still under way."""

    lane: str
    """The lane id."""
    occupancy_id: str
    """The occupancy under way."""
    alarm: bool = True


class Baseline(_Section):
    """What the fielded n-sigma rule computed: against the tracked background (the portal's own background lines)
    only, never against a level estimated from the occupancy itself."""

    max_sigma: float | None = None
    """Largest excess of the 1 s gross count over background, in standard deviations (null: not evaluated)."""
    n_sigma: float | None = None
    """The rule's n."""
    neutron_max: float | None = None
    """Largest neutron sample (counts, all tubes)."""
    neutron_background: float | None = None
    """Neutron background (counts per sample; null: the neutron part not evaluated)."""
    not_evaluated: Literal["no-background", "background-rejected", "no-neutron-background"] | None = None
    """Why a part of the rule was not evaluated (``baseline_verdict`` then null unless another part alarmed):
    no-background (no usable gamma background before the vehicle: the rule would compare the vehicle with itself),
    background-rejected (the tracked gamma background far above the occupancy's least shielded second, see
    ``background.tracked_rejected_ratio``), no-neutron-background (neutrons counted, no neutron background)."""
    neutron_threshold: int | None = None
    """The fielded neutron threshold (counts above background)."""


class SensorCalibration(_Section):
    """One sensor's background-line convention, checked against what the lane's occupancies count."""

    status: str
    """warming-up, consistent, calibrated (lines hold counts over their reporting interval) or mismatch."""
    ratio: float | None
    """What the occupancies count over what the lines predict (median of recent occupancies)."""
    factor: float
    """Factor applied to the lines' background before an occupancy uses it."""


class Calibration(_Section):
    """The lane's background-line conventions after this occupancy (see ``lanewatch.edge.lane.calibration``)."""

    gamma: SensorCalibration
    neutron: SensorCalibration
    interval_s: float
    """Reporting interval (s) of the background lines, as measured."""


class Background(_Section):
    """The background the occupancy was tested against."""

    origin: str | None = None
    """Where the gamma background came from (measured, ...)."""
    gamma_cps: list[Any] | None = None
    """Gamma background (cps) per channel and window."""
    gamma_total_cps: float | None = None
    """Gamma background (cps), all channels."""
    neutron_origin: str | None = None
    """Where the neutron background came from."""
    neutron_cps: float | None = None
    """Neutron background (cps), all tubes."""
    calibration: Calibration | None = None
    """The lane's background-line conventions, checked against its occupancies."""
    tracked_rejected_ratio: float | None = None
    """When the tracked gamma background was far above this occupancy's least shielded second (and not used): that
    second's rate over it."""


class ModelScore(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The anomaly model's part of the decision."""

    version: str
    """The model that scored ("" when none is loaded)."""
    score: float | None
    """Anomaly score at this lane: -log10 of the fraction of the lane's recent ordinary vehicles scoring at least as
    high (schema 1: of the model's training traffic); null when not scored or while the lane's calibration warms
    up."""
    finding: bool
    """True when the score reaches ``finding_threshold``."""
    finding_threshold: float
    """``[model] finding_threshold``: the score from which there is a finding."""
    alarm_threshold: float
    """``[model] alarm_threshold``: the score from which the model alarms (0: never)."""
    release_threshold: float
    """``[model] release_threshold``: a NORM release is recommended only below this score."""
    unscored: str | None = None
    """Why there is no score."""
    raw_score: float | None = None
    """The model's own score: -log10 of the fraction of its training traffic (simulated) scoring at least as high."""
    calibration: Literal["lane", "warming-up"] | None = None
    """lane: the score is read against the lane's own ordinary traffic; warming-up: the lane has fewer than
    ``min_occupancies`` of them yet, so there is no score, no finding and no model alarm."""
    calibration_occupancies: Annotated[int, Meta(ge=0)] | None = None
    """Ordinary occupancies in the lane's calibration when this one was scored."""
    min_occupancies: Annotated[int, Meta(ge=0)] | None = None
    """Ordinary occupancies the lane's calibration needs before it gives scores."""


class Registration(_Section):
    """How the X-ray image's lines map to metres from the vehicle front (see :mod:`lanewatch.edge.xray.fusion`)."""

    method: str | None = None
    """How the front was found."""
    origin: str | None = None
    """What the metres count from: front (the vehicle front) or first-line (the scan's first line)."""
    front_line: float | None = None
    rear_line: float | None = None
    line_spacing_mm: float | None = None
    """Vehicle travel (mm) between two image lines."""
    front_sd_m: float | None = None
    """Standard deviation (m) of the front's place."""
    speed_kmh: float | None = None
    """The speed (km/h) the registration used."""
    radiation_origin_sd_m: float | None = None
    """Standard deviation (m) of the radiation profile's origin on the same axis."""
    sd_m: float | None = None
    """Standard deviation (m) of a place on the common axis (image and radiation together)."""


class VehicleLength(_Section):
    """The vehicle length (m) as the image and the radiation profile see it."""

    image: float | None = None
    radiation: float | None = None


class ImageProfile(_Section):
    """Mean high-energy attenuation of the vehicle along the axis."""

    x_m: Numbers = []
    mean_att: Numbers = []


class Preview(_Section):
    """The image preview: a PNG (base64) and where it lies on the axes."""

    png_base64: str
    width: int | None = None
    height: int | None = None
    x_m: Numbers | None = None
    """The preview's left and right edges (m)."""
    z_mm: Numbers | None = None
    """The preview's bottom and top (mm up the detector column)."""
    lines_per_px: float | None = None
    pixels_per_px: float | None = None


class Profile(_Section):
    """The radiation count profiles to draw evidence (empty for a scan alone); series are per sample, null where
    there is no value."""

    dt_s: float | None = None
    """Gamma sample interval (s)."""
    speed_kmh: float | None = None
    gross: Numbers | None = None
    """Gross gamma counts per sample."""
    channels: list[list[Numbers]] | None = None
    """Gamma counts per sample, channel and energy window, as the portal sent them."""
    window_edges_kev: Numbers | None = None
    """The energy windows' edges (keV) of ``channels`` and ``windows`` (with two windows or more)."""
    expected: Numbers | None = None
    """Expected gamma counts per sample (the background, locally levelled)."""
    sideband_expected: Numbers | None = None
    sideband_spread: float | None = None
    mf_z: Numbers | None = None
    """The gross matched filter's z per sample."""
    gamma_threshold: float | None = None
    """The gamma test's z threshold."""
    windows: list[Numbers] | None = None
    """Counts per sample and energy window."""
    shape_z: Numbers | None = None
    """The spectrum shape test's signed z per sample (below 0: harder than background)."""
    shape_threshold: float | None = None
    side_z: Numbers | None = None
    """The side test's signed z per sample (above 0: the first half of the channels' share rose)."""
    side_threshold: float | None = None
    neutron: Numbers | None = None
    """Neutron counts per neutron sample."""
    neutron_channels: list[Numbers] | None = None
    """Neutron counts per neutron sample and channel (tube), as the portal sent them."""
    neutron_dt_s: float | None = None
    neutron_expected: float | None = None
    """Neutron background (counts per neutron sample)."""
    neutron_ship_expected: Numbers | None = None
    neutron_total: float | None = None
    neutron_total_expected: float | None = None


class Xray(_Section):
    """The X-ray part: the scan matched with the occupancy (or ``status`` missing), its registration and findings."""

    status: Literal["complete", "incomplete", "missing"]
    """complete, incomplete (cut short or lines lost), or missing (no scan came)."""
    scan_id: int | None = None
    """The scanner's scan number."""
    source: str | None = None
    """The driver that sent the scan."""
    end_reason: str | None = None
    """How the scan ended (scan_end, timeout, cut, link_down, restarted, ...)."""
    start: Instant | None = None
    end: Instant | None = None
    start_ns: Ns | None = None
    end_ns: Ns | None = None
    lines: int | None = None
    """Image lines received."""
    lines_reported: int | None = None
    """Image lines the scanner said it sent."""
    missing: int | None = None
    """Image lines lost."""
    energies: int | None = None
    pixels: int | None = None
    pixel_pitch_mm: float | None = None
    """Pixel pitch (mm) along the detector column."""
    calibration: str | None = None
    """measured, estimated or partial."""
    recalibrations: int | None = None
    registration: Registration | None = None
    """How the image's lines map to metres from the vehicle front, and its uncertainty."""
    vehicle_length_m: VehicleLength | None = None
    """The vehicle length as the image and the radiation profile see it."""
    cell_mm: list[float] | None = None
    class_fractions: dict[str, float] | None = None
    """Share of the vehicle's attenuation per material class."""
    dark_fraction: float | None = None
    """Fraction of the vehicle's image too dark to see through."""
    objects: list[ImageObject] | None = None
    """High-Z objects on the metres axis."""
    regions: list[ImageObject] | None = None
    """Dense regions on the metres axis (with their mean and largest attenuation)."""
    profile: ImageProfile | None = None
    """Image profile along the vehicle."""
    preview: Preview | None = None
    """Preview PNG (base64) and its geometry."""
    meta: dict[str, Any] | None = None
    """What the image source said about the scan (a DICOS file's identifiers)."""


class Decision(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A lanewatch decision: exactly one per occupancy (or per X-ray scan that matched none), journaled, then
    published. ``lanewatch schema decision`` prints this contract as JSON Schema."""

    schema_version: Literal[1, 2]
    """Version of this contract: 2 since ``model.score`` is calibrated at the lane, 1 before."""
    seq: Annotated[int, Meta(ge=1)]
    """Journal sequence number: strictly increasing, never reused."""
    lane: str
    """The lane id."""
    occupancy_id: str
    """Unique: lane, start (ns) and the source and sequence number of the record that opened the occupancy."""
    device_occupancy: int | None
    """The portal's own occupancy counter (GX), or null."""
    counter_inferred: bool = False
    """True when ``device_occupancy`` was inferred from the next end line (a cut occupancy that was the next
    vehicle), not sent with this occupancy's own."""
    start: Instant
    """First sample (ISO 8601 UTC)."""
    end: Instant
    """End of the occupancy (ISO 8601 UTC)."""
    start_ns: Ns
    """``start`` in ns since the epoch, as the driver stamped it."""
    end_ns: Ns
    """``end`` in ns since the epoch."""
    verdict: Verdict
    """ALARM when any alarms entry has alarm true; else INCOMPLETE when the data is not whole; else CLEAR."""
    alarms: list[Alarm]
    """Every test that crossed its threshold and every finding that explains the verdict."""
    baseline_verdict: Literal["CLEAR", "ALARM"] | None
    """What the fielded n-sigma rule said (null without radiation data, and when it could not be evaluated:
    ``baseline.not_evaluated`` says why)."""
    baseline: Baseline | None
    """The fielded rule's numbers (null without radiation data)."""
    end_reason: str
    """gx, background, counter-jump, driver-restart, link-lost, stalled, timeout, error, missed (a vehicle the portal
    counted and lanewatch never saw), no-occupancy, ..."""
    incomplete: list[str]
    """Why the data is not whole whatever the end (partial, no-background, missed, no-occupancy, and the cut's end
    reason when a vehicle seen in two pieces is one decision); empty when whole."""
    samples: Annotated[int, Meta(ge=0)]
    """Gamma samples in the occupancy."""
    device_alarm: bool
    """The portal's own alarm flag (GA/NA lines)."""
    tamper: bool
    """A tamper state was active during the occupancy (an alarms entry tamper then says so)."""
    link_interruptions: Annotated[int, Meta(ge=0)]
    """Times a driver's device link went down during the occupancy."""
    speed_kmh: float | None
    """Vehicle speed (km/h) used for the location, or null."""
    background: Background | None
    """The background the occupancy was tested against (null without one)."""
    profile: Profile
    """Radiation count profiles to draw evidence (t_s, gross, expected, mf_z, neutron, ...); empty for a scan alone."""
    model: ModelScore | None = None
    """The anomaly model's score, when a model is configured."""
    xray: Xray | None = None
    """Only at a lane with an X-ray scanner, or when a scan was fused."""


_DECODER = msgspec.json.Decoder(Decision)


def decode(raw: bytes | str) -> Decision:
    """A decision's JSON (as journaled and published, with its ``seq``) as a :class:`Decision`.

    Sections keep the fields they declare: further fields the JSON holds in them are skipped, so code that must
    pass the decision on exactly as journaled passes its JSON on. Raises ``msgspec.ValidationError`` when it does
    not fit the contract and ``msgspec.DecodeError`` when it is not JSON."""
    return _DECODER.decode(raw)


class _Numbered(msgspec.Struct):
    seq: int


def seq_of(raw: bytes | str) -> int:
    """The ``seq`` of a decision's JSON, read without the rest (``msgspec.DecodeError`` when it has none): what
    passes a decision that does not fit the contract over names it by."""
    return msgspec.json.decode(raw, type=_Numbered).seq


def problems(decision: dict[str, Any]) -> str | None:
    """Why ``decision`` (as journaled, with its ``seq``) does not fit :class:`Decision`, or None when it does."""
    try:
        msgspec.convert(decision, Decision, strict=True)
    except msgspec.ValidationError as exc:
        return str(exc)
    return None


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
        "schema_version": SCHEMA_VERSION,
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
        "schema_version": SCHEMA_VERSION,
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
        "schema_version": SCHEMA_VERSION,
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
