"""A decision's evidence bundle: one ZIP a person can open and a court can check.

``decision-SEQ/`` in the archive holds:

``decision.json``
    The decision exactly as journaled.
``profile.csv``, ``neutron.csv``
    The gamma samples (location m, gross and expected counts per sample, matched-filter and shape z) and
    the neutron samples (location m, counts, expected), on the metres-from-the-front axis.
``evidence.png``
    The figure (matplotlib): the X-ray image with its objects boxed by material, the gamma counts with the
    expected background, the test statistics with the alarm threshold (an arrow and its value at the edge
    when it lies too far off the data's scale) and the neutron counts from zero, all on the same metres
    axis with values and units, legends beside the panels, and every located finding with its one-sigma
    band, labelled above the figure in rows that never overlap. An image too dark to clear the load is
    framed whole, with its caption, as on the console's figure (:mod:`lanewatch.edge.console.figure`).
``xray-preview.png``
    The scanner's preview as the decision carries it (when it has one).
``occupancy.n42``
    The occupancy as an ANSI N42.42-2012 file written with SpecUtils: per gamma sample one record per gamma channel
    (detectors ``gamma-1``, ``gamma-2``, ...), its channels the lane's energy windows with their edges (keV) as the
    energy calibration, and per neutron sample one record per neutron channel (``neutron-1``, ...), the counts as
    the portal sent them, with their start and real times, so each test can be checked from it; lanewatch and its
    version named as the creator. A decision journaled before the channels were kept gives one gross ``gamma`` and
    one ``neutron`` record per sample. Not in the bundle of a decision without radiation samples, such as a scan
    with no occupancy.
``adjudications.json``
    Every act on the decision (acknowledgement, adjudications, amendments), oldest first, an attached file named by
    ``attachment_file``; ``history`` null and ``history_not_included`` saying why when the history could not be read
    (``lanewatch evidence --query`` away from the journal file).
``attachments/ID-NAME``
    The handheld identifiers' N42 files attached to the acts (``ID`` the act's id), as uploaded.

Beside that folder, ``decision-SEQ.sha256`` holds the SHA-256 of every file in it, in ``sha256sum`` format with
paths relative to the manifest's own folder: ``sha256sum -c decision-SEQ.sha256`` where the ZIP was unpacked
checks them.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import tempfile
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from lanewatch.edge.console.adjudication import safe_file_name
from lanewatch.edge.console.figure import MATERIAL_COLOURS
from lanewatch.edge.console.present import Clock, finding_label, parse_utc, reason_text, reasons, utc_label
from lanewatch.edge.decisions.adjudication import Adjudication
from lanewatch.edge.decisions.decision import Alarm, Decision, Preview, Xray, decode
from lanewatch.edge.decisions.profile import (
    SHAPE_SERIES,
    SIDE_SERIES,
    Z_REACH,
    Located,
    profile_data,
    stack,
    value_range,
)

DPI = 110
LABEL_ROW_PT = 11
"""Height (points) of a row of finding labels above the figure."""
FINDING_COLOUR = "#d01010"
DARK_COLOUR = "#b05a00"
"""Colour of the frame round an image too dark to clear the load."""
LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8, "title_fontsize": 8, "frameon": False}
"""Legends beside their panel, clear of the data."""


def _csv(header: list[str], columns: list[list[Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in zip(*columns, strict=False):
        writer.writerow(row)
    return out.getvalue().encode()


def profile_csv(decision: Decision) -> tuple[bytes, bytes]:
    """The gamma and the neutron samples as CSV."""
    data = profile_data(decision)
    rad, neutron = data.radiation, data.neutron
    n = len(rad.location_m)
    gamma = _csv(
        ["location_m", "gross_counts", "expected_counts", "matched_filter_z", "shape_z", "side_z"],
        [
            rad.location_m,
            rad.gross[:n],
            rad.expected[:n],
            rad.mf_z[:n],
            rad.shape_z[:n] or [""] * n,
            rad.side_z[:n] or [""] * n,
        ],
    )
    m = len(neutron.location_m)
    expected = neutron.expected
    neutrons = _csv(
        ["location_m", "counts", "expected_counts"],
        [neutron.location_m, neutron.counts[:m], [expected if expected is not None else ""] * m],
    )
    return gamma, neutrons


def figure_png(decision: Decision, clock: Clock | None = None) -> bytes:
    """The evidence figure (see the module docstring) as PNG; its title in ``clock``'s time zone (and UTC)."""
    from matplotlib import pyplot as plt

    fig = figure(decision, clock)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)
    plt.close(fig)
    return out.getvalue()


def figure(decision: Decision, clock: Clock | None = None) -> Any:
    """The evidence figure as a matplotlib Figure, laid out (the caller closes it); the end time in the title in
    ``clock``'s time zone with UTC beside it (UTC alone without a clock)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    data = profile_data(decision)
    rad, neutron = data.radiation, data.neutron
    xray = decision.xray
    preview = xray.preview if xray is not None else None
    panels = ["image"] if preview else []
    panels += ["gamma", "z"] if rad.gross else []
    panels += ["neutron"] if neutron.counts else []
    if not panels:
        panels = ["gamma"]
    heights = [1.6 if p == "image" else 1.0 for p in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        sharex=True,
        figsize=(11, 1.9 * sum(heights) + 1.4),
        gridspec_kw={"height_ratios": heights},
        dpi=DPI,
    )
    axes = list(axes) if len(panels) > 1 else [axes]
    by = dict(zip(panels, axes, strict=True))
    seq, lane, verdict = decision.seq, decision.lane, decision.verdict
    ended = utc_label(decision.end)
    if clock is not None and clock.zone.key != "UTC":
        ended = f"{clock.local(decision.end)} {clock.zone.key} ({ended})"
    fig.suptitle(f"Decision {seq} · {lane} · {verdict} · ended {ended}", fontsize=11)
    if xray is not None and preview is not None:
        _image_panel(by["image"], xray, preview, data.image.too_dark)
    if "gamma" in by and rad.gross:
        ax = by["gamma"]
        n = len(rad.location_m)
        ax.plot(rad.location_m, rad.gross[:n], color="black", lw=1.2, label="gross")
        ax.plot(rad.location_m, rad.expected[:n], color="grey", ls="--", label="expected")
        ax.set_ylim(*value_range(rad.gross[:n] + rad.expected[:n]))
        ax.set_ylabel(f"gamma counts\nper {rad.dt_s:g} s")
    if "z" in by:
        ax = by["z"]
        n = len(rad.location_m)
        ax.plot(rad.location_m, rad.mf_z[:n], color="#c01818", label="matched filter z")
        if rad.shape_z:
            ax.plot(rad.location_m, rad.shape_z[:n], color="#1060c0", label=SHAPE_SERIES)
        if rad.side_z:
            ax.plot(rad.location_m, rad.side_z[:n], color="#0a8a5a", ls="-.", label=SIDE_SERIES)
        _thresholds(ax, rad.mf_z[:n] + rad.shape_z[:n] + rad.side_z[:n], rad.thresholds, reach=Z_REACH)
        if rad.notes:
            ax.text(0.01, 0.96, "\n".join(rad.notes), transform=ax.transAxes, va="top", fontsize=8, color="#555")
        ax.set_ylabel("test statistic\nz (sigma)")
    if "neutron" in by and neutron.counts:
        ax = by["neutron"]
        xs = neutron.location_m
        ax.step(xs, neutron.counts[: len(xs)], where="mid", color="#6a2ca0", label="neutron counts")
        expected = neutron.expected
        if expected is not None:
            ax.axhline(expected, color="grey", ls="--", label="expected")
        values = neutron.counts + ([expected] if expected is not None else [])
        _thresholds(ax, values, neutron.thresholds, from_zero=True)
        ax.set_ylabel(f"neutron counts\nper {neutron.dt_s:g} s")
    for finding in data.findings:
        sd = finding.location_sd_m or 0.0
        for ax in axes:
            ax.axvline(finding.location_m, color=FINDING_COLOUR, lw=2 if finding.alarm else 1)
            if sd:
                ax.axvspan(finding.location_m - sd, finding.location_m + sd, color=FINDING_COLOUR, alpha=0.12)
    axes[-1].set_xlabel(f"{data.axis} (m)")
    for ax, panel in zip(axes, panels, strict=True):
        ax.grid(alpha=0.25)
        if panel != "image":
            if data.findings:
                ax.plot([], [], color=FINDING_COLOUR, label="finding ± 1 sigma")
            ax.legend(**LEGEND)
    fig.tight_layout()
    labels = [_label(fig, axes[0], finding) for finding in data.findings]
    for _ in range(2):  # stack the labels, then again once the layout has made room for them
        _stack_labels(fig, labels)
        fig.tight_layout()
    return fig


def _image_panel(ax: Any, xray: Xray, preview: Preview, dark: Alarm | None) -> None:
    """The X-ray preview on the metres axis, its objects boxed by material with a legend beside it; a dashed frame
    round the whole image and its caption when the image is too dark to clear the load (``dark``)."""
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    image = plt.imread(io.BytesIO(base64.b64decode(preview.png_base64)), format="png")
    (x0, x1), (z0, z1) = preview.x_m, preview.z_mm or [0.0, 4600.0]
    ax.imshow(image, cmap="gray", extent=(x0, x1, z1 / 1000, z0 / 1000), aspect="auto", vmin=0, vmax=1)
    rows = xray.pixels or 1
    for obj in xray.objects or []:
        colour = MATERIAL_COLOURS.get(obj.material or "", "black")
        top = (obj.pixels[0] / rows * (z1 - z0) + z0) / 1000
        bottom = ((obj.pixels[1] + 1) / rows * (z1 - z0) + z0) / 1000
        ax.add_patch(Rectangle((obj.x_m[0], top), obj.x_m[1] - obj.x_m[0], bottom - top, fill=False, ec=colour,
                               lw=2))  # fmt: skip
        ax.annotate(f"{obj.lead_mm} mm Pb eq.", (obj.x_m[1], top), color=colour, fontsize=8,
                    xytext=(4, 0), textcoords="offset points", va="top")  # fmt: skip
    handles = [Patch(fill=False, ec=c, lw=2, label=m.replace("_", "-")) for m, c in MATERIAL_COLOURS.items()]
    if dark is not None:
        ax.add_patch(Rectangle((x0, z0 / 1000), x1 - x0, (z1 - z0) / 1000, fill=True, fc=(0.16, 0.08, 0, 0.08),
                               ec=DARK_COLOUR, lw=3, ls="--"))  # fmt: skip
        ax.text(0.01, 0.96, reason_text(dark), transform=ax.transAxes, va="top", fontsize=8, fontweight="bold",
                color=DARK_COLOUR, bbox={"fc": "white", "ec": "none", "alpha": 0.85})  # fmt: skip
        handles.append(Patch(fill=False, ec=DARK_COLOUR, lw=2, ls="--", label="image too dark"))
    ax.legend(handles=handles, title="image objects", **LEGEND)
    ax.set_ylabel("from the top\nof the image (m)")


def _thresholds(
    ax: Any, values: list[Any], thresholds: list[tuple[float, str]], from_zero: bool = False, reach: float = 0.0
) -> None:
    """The panel's value range (:func:`value_range`), and each threshold (value, label) as a line when it shares
    the data's scale, else as an arrow at the edge it lies beyond with its value."""
    from matplotlib.lines import Line2D

    lo, hi = value_range(values, [t for t, _ in thresholds], from_zero, reach)
    ax.set_ylim(lo, hi)
    off = 0
    for threshold, label in thresholds:
        colour = "#1060c0" if label.startswith("shape") else "#0a8a5a" if label.startswith("side") else "#c01818"
        if lo <= threshold <= hi:
            ax.axhline(threshold, color=colour, ls=":", label=label)
            continue
        above = threshold > hi
        marker, y = ("^", 0.93 - 0.12 * off) if above else ("v", 0.07 + 0.12 * off)
        ax.plot([0.985], [y], marker=marker, ms=9, color=colour, transform=ax.transAxes, clip_on=False, ls="none")
        ax.annotate(f"{label} {'above' if above else 'below'} this scale", (0.97, y), xycoords="axes fraction",
                    ha="right", va="center", fontsize=8, color=colour)  # fmt: skip
        ax.add_line(Line2D([], [], marker=marker, color=colour, ls="none", label=f"{label} (off scale)"))
        off += 1


def _label(fig: Any, ax: Any, finding: Located) -> Any:
    """A finding's label above ``ax``, joined to its line; turned to the left of the line when it would run past
    the panel's right edge."""
    from matplotlib.text import Text

    label = None
    for side in (1, -1):
        if label is not None:
            label.remove()
        label = ax.annotate(
            finding_label(finding), (finding.location_m, 1.0), xycoords=("data", "axes fraction"),
            xytext=(2 * side, 3), textcoords="offset points", ha="left" if side > 0 else "right", va="bottom",
            color=FINDING_COLOUR, fontsize=8, fontweight="bold",
            arrowprops={"arrowstyle": "-", "color": FINDING_COLOUR, "lw": 1, "shrinkA": 0, "shrinkB": 0,
                        "relpos": (0.0 if side > 0 else 1.0, 0.0)},
        )  # fmt: skip
        renderer = fig.canvas.get_renderer()  # the text's own extent: an annotation's takes in its connector
        if Text.get_window_extent(label, renderer).x1 <= ax.get_window_extent(renderer).x1:
            break
    return label


def _stack_labels(fig: Any, labels: list[Any]) -> None:
    """Rows for the finding labels so that none overlaps another (:func:`stack`): the first row on top, so a
    finding's line rises past the labels of later rows, which lie to its right."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    spans = []
    for label in labels:
        label.xyann = (label.xyann[0], 3)
        box = Text.get_window_extent(label, renderer)
        spans.append((box.x0, box.x1))
    rows = stack(spans, gap=6.0 * fig.dpi / 72.0)
    for label, row in zip(labels, rows, strict=True):
        label.xyann = (label.xyann[0], 3 + LABEL_ROW_PT * (max(rows) - row))


def occupancy_n42(decision: Decision) -> bytes:
    """The occupancy as an N42.42-2012 file (see the module docstring): written with SpecUtils, then its energy
    calibrations set to the windows' edges and its creator named (which SpecUtils' Python binding cannot set)."""
    import SpecUtils

    profile = decision.profile
    start = parse_utc(decision.start) or datetime.now(UTC)
    spec = SpecUtils.SpecFile()
    dt = float(profile.dt_s or 0.2)
    gamma = profile.channels or [[[counts]] for counts in profile.gross or []]
    for i, sample in enumerate(gamma):
        for c, windows in enumerate(sample):
            record = SpecUtils.Measurement()
            record.setGammaCounts([float(v or 0.0) for v in windows], dt, dt)
            _stamp(record, SpecUtils, i + 1, f"gamma-{c + 1}" if profile.channels else "gamma", start, i * dt)
            spec.addMeasurement(record, False)
    neutron_dt = float(profile.neutron_dt_s or 1.0)
    neutron = profile.neutron_channels or [[counts] for counts in profile.neutron or []]
    for i, sample in enumerate(neutron):
        for c, counts in enumerate(sample):
            record = SpecUtils.Measurement()
            record.setNeutronCounts([float(counts or 0.0)], neutron_dt)
            name = f"neutron-{c + 1}" if profile.neutron_channels else "neutron"
            _stamp(record, SpecUtils, i + 1, name, start, i * neutron_dt)
            spec.addMeasurement(record, False)
    spec.setUuid(str(uuid.uuid5(uuid.NAMESPACE_URL, f"lanewatch:{decision.lane}:{decision.occupancy_id}")))
    spec.setInstrumentType("PortalMonitor")
    spec.setInstrumentId(decision.lane)
    spec.setRemarks(
        [f"lanewatch decision {decision.seq}, lane {decision.lane}, occupancy {decision.occupancy_id}"]
        + ([f"energy windows (keV): {_edges_text(profile.window_edges_kev)}"] if profile.window_edges_kev else [])
    )
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "occupancy.n42")
        with open(path, "wb") as out:
            spec.write2012N42Xml(out)
        with open(path, encoding="utf-8") as written:
            return _named_and_calibrated(written.read(), profile.window_edges_kev).encode()


N42_CALIBRATION = re.compile(
    r"<Remark>Energy calibration not available\.</Remark>\s*<CoefficientValues>[^<]*</CoefficientValues>"
)
"""What SpecUtils writes for a spectrum without an energy calibration."""
N42_UNKNOWN_STATE = re.compile(
    r"\s*<RadDetectorState [^>]*>\s*<Remark>[^<]*could not determine detector state\.</Remark>\s*"
    r"</RadDetectorState>"
)
"""SpecUtils' placeholder for a detector state nobody reported."""


def _edges_text(edges: list[float | None]) -> str:
    return " ".join(f"{edge:g}" for edge in edges if edge is not None)


def _named_and_calibrated(xml: str, edges: list[float | None] | None) -> str:
    """SpecUtils' N42 XML with lanewatch (and its version) as its creator and software, no placeholder detector
    states, and each gamma spectrum's channels given the energy windows' edges (keV) when the lane has windows."""
    creator = f"lanewatch {lanewatch_version()}"
    xml = xml.replace(
        "<RadInstrumentDataCreatorName>InterSpec</RadInstrumentDataCreatorName>",
        f"<RadInstrumentDataCreatorName>{creator}</RadInstrumentDataCreatorName>",
    ).replace(
        "<RadInstrumentComponentName>Software</RadInstrumentComponentName>\n"
        "\t\t\t<RadInstrumentComponentVersion>InterSpec</RadInstrumentComponentVersion>",
        "<RadInstrumentComponentName>Software</RadInstrumentComponentName>\n"
        f"\t\t\t<RadInstrumentComponentVersion>{creator}</RadInstrumentComponentVersion>",
    )
    xml = N42_UNKNOWN_STATE.sub("", xml)
    if edges:
        boundaries = (
            f"<Remark>Energy windows (keV)</Remark><EnergyBoundaryValues>{_edges_text(edges)}</EnergyBoundaryValues>"
        )
        xml = N42_CALIBRATION.sub(boundaries, xml)
    return xml


def lanewatch_version() -> str:
    """The installed lanewatch's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lanewatch")
    except PackageNotFoundError:
        return "unknown version"


def _stamp(record: Any, specutils: Any, sample: int, detector: str, start: datetime, offset_s: float) -> None:
    record.setSampleNumber(sample)
    record.setDetectorName(detector)
    record.setOccupancyStatus(specutils.OccupancyStatus.Occupied)
    record.setSourceType(specutils.SourceType.Foreground)
    record.setStartTime(start + timedelta(seconds=offset_s))


def bundle(
    journaled: bytes,
    history: list[Adjudication] | None,
    missing: str = "",
    attachments: dict[int, tuple[str, bytes]] | None = None,
    clock: Clock | None = None,
) -> bytes:
    """The evidence ZIP of the decision whose JSON (as journaled) is ``journaled``, with its adjudication ``history``
    (see the module docstring); None when the history could not be read, ``missing`` saying why. ``attachments``:
    the files attached to its acts (name and bytes by act id); ``clock``: the site's time zone (UTC without one).
    Raises ``msgspec.ValidationError`` when the decision does not fit the decision contract."""
    decision = decode(journaled)
    seq = decision.seq
    attached = {act: f"attachments/{act}-{safe_file_name(name)}" for act, (name, _) in (attachments or {}).items()}
    acts = None
    if history is not None:
        acts = [{**msgspec.to_builtins(h), "attachment_file": attached.get(h.id)} for h in history]
    record = {"seq": seq, "reasons": reasons(decision), "history": acts}
    if history is None:
        record["history_not_included"] = missing
    gamma, neutrons = profile_csv(decision)
    files: dict[str, bytes] = {
        "decision.json": json.dumps(json.loads(journaled), indent=1).encode() + b"\n",
        "profile.csv": gamma,
        "neutron.csv": neutrons,
        "evidence.png": figure_png(decision, clock),
        "adjudications.json": json.dumps(record, indent=1).encode() + b"\n",
    }
    if decision.profile.gross or decision.profile.neutron:
        files["occupancy.n42"] = occupancy_n42(decision)
    if decision.xray is not None and decision.xray.preview is not None:
        files["xray-preview.png"] = base64.b64decode(decision.xray.preview.png_base64)
    for act, (_, body) in (attachments or {}).items():
        files[attached[act]] = body
    folder = f"decision-{seq}"
    manifest = "".join(f"{hashlib.sha256(body).hexdigest()}  {folder}/{name}\n" for name, body in sorted(files.items()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, body in files.items():
            archive.writestr(f"{folder}/{name}", body)
        archive.writestr(f"{folder}.sha256", manifest.encode())
    return out.getvalue()
