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
    The occupancy as an ANSI N42.42-2012 file written with SpecUtils: one gross-count gamma record per
    sample and one neutron record per neutron sample, with their start and real times (not in the bundle
    of a decision without radiation samples, such as a scan with no occupancy).
``adjudications.json``
    Every act on the decision (acknowledgement, adjudications, amendments), oldest first; ``history`` null and
    ``history_not_included`` saying why when the history could not be read (``lanewatch evidence --query`` away
    from the journal file).
``MANIFEST.sha256``
    The SHA-256 of every other file, in ``sha256sum`` format (``sha256sum -c`` checks it).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import tempfile
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from lanewatch.edge.console.figure import MATERIAL_COLOURS
from lanewatch.edge.console.present import finding_label, parse_utc, reason_text, reasons, utc_label
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


def figure_png(decision: Decision) -> bytes:
    """The evidence figure (see the module docstring) as PNG."""
    from matplotlib import pyplot as plt

    fig = figure(decision)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)
    plt.close(fig)
    return out.getvalue()


def figure(decision: Decision) -> Any:
    """The evidence figure as a matplotlib Figure, laid out (the caller closes it)."""
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
    fig.suptitle(f"Decision {seq} · {lane} · {verdict} · ended {utc_label(decision.end)}", fontsize=11)
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
        colour = "#1060c0" if label.startswith("shape") else "#c01818"
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
    """The occupancy's gross gamma counts and neutron counts as an N42.42-2012 file (SpecUtils)."""
    import SpecUtils

    profile = decision.profile
    start = parse_utc(decision.start) or datetime.now(UTC)
    spec = SpecUtils.SpecFile()
    dt = float(profile.dt_s or 0.2)
    for i, counts in enumerate(profile.gross or []):
        record = SpecUtils.Measurement()
        record.setGammaCounts([float(counts)], dt, dt)
        _stamp(record, SpecUtils, i + 1, "gamma", start + timedelta(seconds=i * dt))
        spec.addMeasurement(record, False)
    neutron_dt = float(profile.neutron_dt_s or 1.0)
    for i, counts in enumerate(profile.neutron or []):
        record = SpecUtils.Measurement()
        record.setNeutronCounts([float(counts)], neutron_dt)
        _stamp(record, SpecUtils, i + 1, "neutron", start + timedelta(seconds=i * neutron_dt))
        spec.addMeasurement(record, False)
    spec.cleanupAfterLoad(True, False, False)
    spec.setRemarks([f"lanewatch decision {decision.seq}, occupancy {decision.occupancy_id}"])
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "occupancy.n42")
        with open(path, "wb") as out:
            spec.write2012N42Xml(out)
        with open(path, "rb") as written:
            return written.read()


def _stamp(record: Any, specutils: Any, sample: int, detector: str, when: datetime) -> None:
    record.setSampleNumber(sample)
    record.setDetectorName(detector)
    record.setOccupancyStatus(specutils.OccupancyStatus.Occupied)
    record.setSourceType(specutils.SourceType.Foreground)
    record.setStartTime(when)


def bundle(journaled: bytes, history: list[Adjudication] | None, missing: str = "") -> bytes:
    """The evidence ZIP of the decision whose JSON (as journaled) is ``journaled``, with its adjudication ``history``
    (see the module docstring); None when the history could not be read, ``missing`` saying why. Raises
    ``msgspec.ValidationError`` when the decision does not fit the decision contract."""
    decision = decode(journaled)
    seq = decision.seq
    acts = None if history is None else [msgspec.to_builtins(h) for h in history]
    record = {"seq": seq, "reasons": reasons(decision), "history": acts}
    if history is None:
        record["history_not_included"] = missing
    gamma, neutrons = profile_csv(decision)
    files: dict[str, bytes] = {
        "decision.json": json.dumps(json.loads(journaled), indent=1).encode() + b"\n",
        "profile.csv": gamma,
        "neutron.csv": neutrons,
        "evidence.png": figure_png(decision),
        "adjudications.json": json.dumps(record, indent=1).encode() + b"\n",
    }
    if decision.profile.gross or decision.profile.neutron:
        files["occupancy.n42"] = occupancy_n42(decision)
    if decision.xray is not None and decision.xray.preview is not None:
        files["xray-preview.png"] = base64.b64decode(decision.xray.preview.png_base64)
    manifest = "".join(f"{hashlib.sha256(body).hexdigest()}  {name}\n" for name, body in sorted(files.items()))
    files["MANIFEST.sha256"] = manifest.encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, body in files.items():
            archive.writestr(f"decision-{seq}/{name}", body)
    return out.getvalue()
