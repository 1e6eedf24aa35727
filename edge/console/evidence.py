"""A decision's evidence bundle: one ZIP a person can open and a court can check.

``decision-SEQ/`` in the archive holds:

``decision.json``
    The decision exactly as journaled.
``profile.csv``, ``neutron.csv``
    The gamma samples (location m, gross and expected counts per sample, matched-filter and shape z) and
    the neutron samples (location m, counts, expected), on the metres-from-the-front axis.
``evidence.png``
    The figure (matplotlib): the X-ray image with its objects boxed by material, the gamma counts with the
    expected background, the test statistics with the alarm threshold and the neutron counts, all on the
    same metres axis with values and units, legends, and every located finding with its one-sigma band.
``xray-preview.png``
    The scanner's preview as the decision carries it (when it has one).
``occupancy.n42``
    The occupancy as an ANSI N42.42-2012 file written with SpecUtils: one gross-count gamma record per
    sample and one neutron record per neutron sample, with their start and real times (not in the bundle
    of a decision without radiation samples, such as a scan with no occupancy).
``adjudications.json``
    Every act on the decision (acknowledgement, adjudications, amendments), oldest first.
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

from lanewatch.edge.console.present import parse_utc, reasons
from lanewatch.edge.decisions.adjudication import Adjudication
from lanewatch.edge.decisions.profile import profile_data

MATERIAL_COLOURS = {
    "organic": "#e67e00",
    "inorganic": "#1a9a1a",
    "metal": "#1f6fff",
    "high_z": "#c000c0",
    "unresolvable": "#7a0000",
}
"""Box colour per image material class, as on the console's figure."""
LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8, "title_fontsize": 8, "frameon": False}
"""Legends beside their panel, clear of the data."""


def _csv(header: list[str], columns: list[list[Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in zip(*columns, strict=False):
        writer.writerow(row)
    return out.getvalue().encode()


def profile_csv(decision: dict[str, Any]) -> tuple[bytes, bytes]:
    """The gamma and the neutron samples as CSV."""
    data = profile_data(decision)
    rad, neutron = data["radiation"], data["neutron"]
    n = len(rad["location_m"])
    gamma = _csv(
        ["location_m", "gross_counts", "expected_counts", "matched_filter_z", "shape_z"],
        [rad["location_m"], rad["gross"][:n], rad["expected"][:n], rad["mf_z"][:n], rad["shape_z"][:n] or [""] * n],
    )
    m = len(neutron["location_m"])
    expected = neutron["expected"]
    neutrons = _csv(
        ["location_m", "counts", "expected_counts"],
        [neutron["location_m"], neutron["counts"][:m], [expected if expected is not None else ""] * m],
    )
    return gamma, neutrons


def figure_png(decision: dict[str, Any]) -> bytes:
    """The evidence figure (see the module docstring) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    data = profile_data(decision)
    rad, neutron = data["radiation"], data["neutron"]
    xray = decision.get("xray") or {}
    preview = xray.get("preview")
    panels = ["image"] if preview else []
    panels += ["gamma", "z"] if rad["gross"] else []
    panels += ["neutron"] if neutron["counts"] else []
    if not panels:
        panels = ["gamma"]
    heights = [1.6 if p == "image" else 1.0 for p in panels]
    fig, axes = plt.subplots(
        len(panels), 1, sharex=True, figsize=(11, 1.9 * sum(heights) + 1.0), gridspec_kw={"height_ratios": heights}
    )
    axes = list(axes) if len(panels) > 1 else [axes]
    by = dict(zip(panels, axes, strict=True))
    seq, lane, verdict = decision.get("seq"), decision.get("lane"), decision.get("verdict")
    fig.suptitle(f"Decision {seq} · {lane} · {verdict} · ended {decision.get('end')}", fontsize=11)
    if preview:
        ax = by["image"]
        image = plt.imread(io.BytesIO(base64.b64decode(preview["png_base64"])), format="png")
        (x0, x1), (z0, z1) = preview["x_m"], preview.get("z_mm") or [0.0, 4600.0]
        ax.imshow(image, cmap="gray", extent=(x0, x1, z1 / 1000, z0 / 1000), aspect="auto", vmin=0, vmax=1)
        handles = []
        rows = xray.get("pixels") or 1
        for obj in xray.get("objects") or []:
            colour = MATERIAL_COLOURS.get(obj.get("material", ""), "black")
            top, bottom = (
                (obj["pixels"][0] / rows * (z1 - z0) + z0) / 1000,
                ((obj["pixels"][1] + 1) / rows * (z1 - z0) + z0) / 1000,
            )
            ax.add_patch(
                Rectangle(
                    (obj["x_m"][0], top), obj["x_m"][1] - obj["x_m"][0], bottom - top, fill=False, ec=colour, lw=2
                )
            )
            ax.annotate(f"{obj.get('lead_mm')} mm Pb eq.", (obj["x_m"][1], top), color=colour, fontsize=8,
                        xytext=(4, 0), textcoords="offset points", va="top")  # fmt: skip
        for material, colour in MATERIAL_COLOURS.items():
            handles.append(Patch(fill=False, ec=colour, lw=2, label=material.replace("_", "-")))
        ax.legend(handles=handles, title="image objects", **LEGEND)
        ax.set_ylabel("from the top\nof the image (m)")
    if "gamma" in by and rad["gross"]:
        ax = by["gamma"]
        ax.plot(rad["location_m"], rad["gross"][: len(rad["location_m"])], color="black", lw=1.2, label="gross")
        ax.plot(rad["location_m"], rad["expected"][: len(rad["location_m"])], color="grey", ls="--", label="expected")
        ax.set_ylabel(f"gamma counts\nper {rad['dt_s']:g} s")
    if "z" in by:
        ax = by["z"]
        ax.plot(rad["location_m"], rad["mf_z"][: len(rad["location_m"])], color="#c01818", label="matched filter z")
        if rad["shape_z"]:
            ax.plot(rad["location_m"], rad["shape_z"][: len(rad["location_m"])], color="#1060c0", label="shape z")
        threshold = rad["thresholds"].get("gamma")
        if threshold is not None:
            ax.axhline(threshold, color="#c01818", ls=":", label=f"alarm threshold {threshold:.3g}")
        ax.set_ylabel("test statistic\nz (sigma)")
    if "neutron" in by and neutron["counts"]:
        ax = by["neutron"]
        xs = neutron["location_m"]
        ax.step(xs, neutron["counts"][: len(xs)], where="mid", color="#6a2ca0", label="neutron counts")
        if neutron["expected"] is not None:
            ax.axhline(neutron["expected"], color="grey", ls="--", label="expected")
        ax.set_ylabel(f"neutron counts\nper {neutron['dt_s']:g} s")
    for k, finding in enumerate(data["findings"]):
        sd = finding.get("location_sd_m") or 0.0
        for ax in axes:
            ax.axvline(finding["location_m"], color="#d01010", lw=2 if finding["alarm"] else 1)
            if sd:
                ax.axvspan(finding["location_m"] - sd, finding["location_m"] + sd, color="#d01010", alpha=0.12)
        axes[0].annotate(str(finding["reason"]), (finding["location_m"], 1.0), xycoords=("data", "axes fraction"),
                         color="#d01010", fontsize=8, xytext=(3, -10 - 11 * k), textcoords="offset points")  # fmt: skip
    axes[-1].set_xlabel(f"{data['axis']} (m)")
    for ax, panel in zip(axes, panels, strict=True):
        ax.grid(alpha=0.25)
        if panel != "image":
            if data["findings"]:
                ax.plot([], [], color="#d01010", label="finding ± 1 sigma")
            ax.legend(**LEGEND)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()


def occupancy_n42(decision: dict[str, Any]) -> bytes:
    """The occupancy's gross gamma counts and neutron counts as an N42.42-2012 file (SpecUtils)."""
    import SpecUtils

    profile = decision.get("profile") or {}
    start = parse_utc(decision.get("start")) or datetime.now(UTC)
    spec = SpecUtils.SpecFile()
    dt = float(profile.get("dt_s") or 0.2)
    for i, counts in enumerate(profile.get("gross") or []):
        record = SpecUtils.Measurement()
        record.setGammaCounts([float(counts)], dt, dt)
        _stamp(record, SpecUtils, i + 1, "gamma", start + timedelta(seconds=i * dt))
        spec.addMeasurement(record, False)
    neutron_dt = float(profile.get("neutron_dt_s") or 1.0)
    for i, counts in enumerate(profile.get("neutron") or []):
        record = SpecUtils.Measurement()
        record.setNeutronCounts([float(counts)], neutron_dt)
        _stamp(record, SpecUtils, i + 1, "neutron", start + timedelta(seconds=i * neutron_dt))
        spec.addMeasurement(record, False)
    spec.cleanupAfterLoad(True, False, False)
    spec.setRemarks([f"lanewatch decision {decision.get('seq')}, occupancy {decision.get('occupancy_id')}"])
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


def bundle(decision: dict[str, Any], history: list[Adjudication]) -> bytes:
    """The evidence ZIP of ``decision`` with its adjudication ``history`` (see the module docstring)."""
    seq = decision.get("seq")
    gamma, neutrons = profile_csv(decision)
    files: dict[str, bytes] = {
        "decision.json": json.dumps(decision, indent=1).encode() + b"\n",
        "profile.csv": gamma,
        "neutron.csv": neutrons,
        "evidence.png": figure_png(decision),
        "adjudications.json": json.dumps(
            {"seq": seq, "reasons": reasons(decision), "history": [msgspec.to_builtins(h) for h in history]}, indent=1
        ).encode()
        + b"\n",
    }
    profile = decision.get("profile") or {}
    if profile.get("gross") or profile.get("neutron"):
        files["occupancy.n42"] = occupancy_n42(decision)
    preview = (decision.get("xray") or {}).get("preview")
    if preview:
        files["xray-preview.png"] = base64.b64decode(preview["png_base64"])
    manifest = "".join(f"{hashlib.sha256(body).hexdigest()}  {name}\n" for name, body in sorted(files.items()))
    files["MANIFEST.sha256"] = manifest.encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, body in files.items():
            archive.writestr(f"decision-{seq}/{name}", body)
    return out.getvalue()
