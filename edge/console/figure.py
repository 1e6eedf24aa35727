"""The decision's figure for the detail page: X-ray image and radiation profile on one metres axis, as SVG.

Drawn on the server (no plotting library in the browser): the image with its objects boxed in their
material's colour and labelled with their lead equivalent; under it the gamma counts with the expected
background, the test statistics (z) with the alarm threshold, and the neutron counts (from zero); every
located finding as a line with its one-sigma band through all panels, labelled in a strip above the
image where labels that would overlap are stacked in rows. Each panel has its values on the left axis
with units and its legend above its frame, clear of the data; a threshold too far from the data to
share its scale is drawn clipped at the panel's edge, with an arrow and its value. ``image-too-dark`` is
a condition of the whole image: a dashed frame round the image with its caption, not a located line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Any

from lanewatch.edge.console.present import finding_label, reason_text
from lanewatch.edge.decisions.decision import Decision
from lanewatch.edge.decisions.profile import (
    SHAPE_SERIES,
    SIDE_SERIES,
    Z_REACH,
    Located,
    profile_data,
    stack,
    value_range,
)

WIDTH = 1000
"""Width (px) of the figure."""
LEFT, RIGHT = 64, 16
"""Margins (px) for the value axes."""
IMAGE_HEIGHT = 180
PANEL_HEIGHT = 110
HEADER = 18
"""Height (px) of the row above a panel holding its title and legend."""
GAP = 26
LABEL_ROW = 15
"""Height (px) of a row of finding labels."""
CHAR_PX = 8.0
"""Width (px) of a character of the labels (12 px bold sans-serif, generous), for stacking them."""
MATERIAL_COLOURS = {
    "organic": "#e67e00",
    "inorganic": "#1a9a1a",
    "metal": "#1f6fff",
    "high_z": "#c000c0",
    "unresolvable": "#7a0000",
}
"""Stroke colour per image material class (legend under the image)."""
FINDING_COLOUR = "#d01010"


@dataclass(frozen=True)
class Axis:
    x0_m: float
    x1_m: float

    def px(self, x_m: float) -> float:
        return LEFT + (x_m - self.x0_m) / (self.x1_m - self.x0_m) * (WIDTH - LEFT - RIGHT)


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def _width(text: str) -> float:
    return CHAR_PX * len(text)


def _ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """Round tick values inside [lo, hi]: about ``count`` of them, never fewer than three."""
    span = hi - lo or 1.0
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * step:
            step *= mult
            break
    while True:
        first = math.ceil(lo / step - 1e-9) * step
        ticks = [first + i * step for i in range(int((hi - first) / step) + 2) if first + i * step <= hi + 1e-9 * step]
        if len(ticks) >= 3:
            return [round(t, 10) for t in ticks]
        step /= 2


def _panel(
    out: list[str],
    axis: Axis,
    top: float,
    title: str,
    unit: str,
    series: list[tuple[str, list[float], list[Any], str, str]],
    thresholds: list[tuple[float, str]] | None = None,
    from_zero: bool = False,
    notes: list[str] | None = None,
    reach: float = 0.0,
) -> None:
    """One line-plot panel under a header row (title, legend) at ``top``: ``series`` are (name, x_m, values,
    colour, dash), ``thresholds`` (value, label), ``notes`` (what it lacks, in words, at its top left corner);
    counts panels start at zero (``from_zero``); ``reach``: see :func:`value_range`."""
    values = [v for _, _, ys, _, _ in series for v in _finite(ys)]
    thresholds = thresholds or []
    lo, hi = value_range(values, [t for t, _ in thresholds], from_zero, reach)
    legend_x = LEFT
    out.append(f'<text x="{legend_x}" y="{top + 12}" class="ptitle">{escape(title)}</text>')
    legend_x += 24 + _width(title)
    for name, _, _, colour, dash in series:
        dashing = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<line x1="{legend_x}" x2="{legend_x + 18}" y1="{top + 8}" y2="{top + 8}" stroke="{colour}"'
            f' stroke-width="1.6"{dashing}/>'
        )
        out.append(f'<text x="{legend_x + 22}" y="{top + 12}" class="legend">{escape(name)}</text>')
        legend_x += 34 + _width(name)
    top += HEADER

    def y(v: float) -> float:
        return top + PANEL_HEIGHT - (v - lo) / (hi - lo) * PANEL_HEIGHT

    right = WIDTH - RIGHT
    out.append(f'<rect x="{LEFT}" y="{top}" width="{right - LEFT}" height="{PANEL_HEIGHT}" class="frame"/>')
    for tick in _ticks(lo, hi):
        out.append(f'<line x1="{LEFT - 4}" x2="{LEFT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="tick"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" class="ylab">{tick:g}</text>')
    out.append(
        f'<text x="14" y="{top + PANEL_HEIGHT / 2}" class="unit" '
        f'transform="rotate(-90 14 {top + PANEL_HEIGHT / 2})">{escape(unit)}</text>'
    )
    for _, xs, ys, colour, dash in series:
        points = " ".join(f"{axis.px(x):.1f},{y(v):.1f}" for x, v in zip(xs, ys, strict=False) if _finite([v]))
        if points:
            dashing = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.6"{dashing}/>')
    for row, note in enumerate(notes or []):
        out.append(f'<text x="{LEFT + 6}" y="{top + 14 + row * LABEL_ROW}" class="pnote">{escape(note)}</text>')
    off: list[str] = []
    last_label_y = -math.inf  # the labels share the right edge: one above its line, or under the one before
    for threshold, label in sorted(thresholds, key=lambda t: -t[0]):
        kind = next((k for k in ("shape", "side") if label.startswith(k)), "alarm")
        if lo <= threshold <= hi:
            out.append(
                f'<line x1="{LEFT}" x2="{right}" y1="{y(threshold):.1f}" y2="{y(threshold):.1f}" '
                f'class="threshold {kind}"/>'
            )
            label_y = y(threshold) - 3
            if label_y < last_label_y + LABEL_ROW:  # under its line, clear of the label before
                label_y = max(y(threshold) + 12, last_label_y + LABEL_ROW)
            last_label_y = label_y
            out.append(f'<text x="{right - 4}" y="{label_y:.1f}" class="thrlab {kind}">{escape(label)}</text>')
            continue
        # off the scale: an arrow at the edge it lies beyond, its value in the header row (clear of the data)
        above = threshold > hi
        edge = top if above else top + PANEL_HEIGHT
        base = edge + 9 if above else edge - 9
        x = right - 10 - 16 * len(off)
        text = escape(f"{label}, {'above' if above else 'below'} this scale")
        out.append(f'<polygon points="{x - 6},{base} {x + 6},{base} {x},{edge}" class="thrarrow {kind}">')
        out.append(f"<title>{text}</title></polygon>")
        off.append(f'<tspan class="{kind}">{"▲" if above else "▼"} {text}</tspan>')
    if off:
        out.append(f'<text x="{right}" y="{top - HEADER + 12}" class="thrlab">{" · ".join(off)}</text>')


def _labels(out: list[str], axis: Axis, found: list[Located], top: float) -> tuple[float, list[float]]:
    """The findings' labels in rows above the figure, stacked so none overlaps another; returns the strip's
    height (px) and, per finding, where its line starts (just under its label)."""
    texts = [finding_label(f) for f in found]
    right = WIDTH - RIGHT
    spans = []
    for finding, text in zip(found, texts, strict=True):
        x = axis.px(finding.location_m)
        fits = x + 4 + _width(text) <= right
        spans.append((x + 4, x + 4 + _width(text)) if fits else (x - 4 - _width(text), x - 4))
    rows = stack(spans, gap=8.0)
    for finding, (left, end), text, row in zip(found, spans, texts, rows, strict=True):
        at_left = left > axis.px(finding.location_m)
        anchor = "" if at_left else ' text-anchor="end"'
        out.append(
            f'<text x="{left if at_left else end:.1f}" y="{top + 11 + row * LABEL_ROW}" class="flab"{anchor}>'
            f"{escape(text)}</text>"
        )
    height = (max(rows) + 1) * LABEL_ROW + 4 if rows else 0
    return height, [top + row * LABEL_ROW + 2 for row in rows]


def svg(decision: Decision, preview_url: str | None) -> str:
    """The figure as an inline SVG element; ``preview_url`` is where the browser gets the X-ray preview PNG."""
    data = profile_data(decision)
    rad, neutron = data.radiation, data.neutron
    xray = decision.xray
    preview = xray.preview if xray is not None and preview_url else None
    # samples centred at (i + 0.5) steps: the last of n ends at n steps
    spans = [(0.0, xs[-1] * len(xs) / (len(xs) - 0.5)) for xs in (rad.location_m, neutron.location_m) if xs]
    if preview:
        spans.append(tuple(preview.x_m))
    x0, x1 = (min(a for a, _ in spans), max(b for _, b in spans)) if spans else (0.0, 1.0)
    axis = Axis(x0, x1 if x1 > x0 else x0 + 1.0)
    out: list[str] = []
    found = data.findings
    labels: list[str] = []  # drawn last, over the findings' lines
    strip, line_tops = _labels(labels, axis, found, 8.0)
    top = 8.0 + strip
    if preview:
        a, b = axis.px(preview.x_m[0]), axis.px(preview.x_m[1])
        out.append(
            f'<image href="{escape(preview_url or "")}" x="{a:.1f}" y="{top}" width="{b - a:.1f}" '
            f'height="{IMAGE_HEIGHT}" preserveAspectRatio="none" class="xray"/>'
        )
        dark = data.image.too_dark
        if dark is not None:  # the whole image fails, not a place in it: a frame round it and its caption
            out.append(
                f'<rect x="{a + 1.5:.1f}" y="{top + 1.5}" width="{b - a - 3:.1f}" height="{IMAGE_HEIGHT - 3}" '
                f'class="darkframe"><title>{escape(reason_text(dark))}</title></rect>'
            )
            out.append(f'<text x="{a + 10:.1f}" y="{top + 20}" class="darklab">{escape(reason_text(dark))}</text>')
        rows = xray.pixels or 1
        for obj in xray.objects or []:
            colour = MATERIAL_COLOURS.get(obj.material or "", "#000")
            ox0, ox1 = axis.px(obj.x_m[0]), axis.px(obj.x_m[1])
            oy0 = top + obj.pixels[0] / rows * IMAGE_HEIGHT
            oy1 = top + (obj.pixels[1] + 1) / rows * IMAGE_HEIGHT
            out.append(
                f'<rect x="{ox0 - 2:.1f}" y="{oy0 - 2:.1f}" width="{max(ox1 - ox0, 1) + 4:.1f}" '
                f'height="{max(oy1 - oy0, 1) + 4:.1f}" fill="none" stroke="{colour}" stroke-width="2.5"/>'
            )
            out.append(
                f'<text x="{ox1 + 6:.1f}" y="{oy0 + 10:.1f}" class="objlab" fill="{colour}">'
                f"{obj.lead_mm} mm Pb eq.</text>"
            )
        legend_x = LEFT
        legend_y = top + IMAGE_HEIGHT + 14
        out.append(f'<text x="{legend_x}" y="{legend_y}" class="legend">image objects:</text>')
        legend_x += 96
        for material, colour in MATERIAL_COLOURS.items():
            out.append(
                f'<rect x="{legend_x}" y="{legend_y - 9}" width="10" height="10" fill="none" stroke="{colour}" '
                f'stroke-width="2"/><text x="{legend_x + 14}" y="{legend_y}" class="legend">'
                f"{material.replace('_', '-')}</text>"
            )
            legend_x += 30 + 7 * len(material)
        top += IMAGE_HEIGHT + GAP
    panel = HEADER + PANEL_HEIGHT
    if rad.gross:
        xs = rad.location_m
        _panel(
            out,
            axis,
            top,
            "gamma",
            f"counts per {rad.dt_s:g} s",
            [("gross", xs, rad.gross, "#111", ""), ("expected", xs, rad.expected, "#888", "4 3")],
        )
        top += panel + GAP
        series = [("matched filter", xs, rad.mf_z, "#c01818", "")]
        if rad.shape_z:
            series.append((SHAPE_SERIES, xs, rad.shape_z, "#1060c0", ""))
        if rad.side_z:
            series.append((SIDE_SERIES, xs, rad.side_z, "#0a8a5a", "6 2"))
        _panel(
            out, axis, top, "test statistics", "z (sigma)", series, rad.thresholds, notes=rad.notes, reach=Z_REACH
        )
        top += panel + GAP
    if neutron.counts:
        expected = neutron.expected
        nxs = neutron.location_m
        series = [("counts", nxs, neutron.counts, "#6a2ca0", "")]
        if isinstance(expected, int | float):
            series.append(("expected", nxs, [expected] * len(nxs), "#888", "4 3"))
        unit = f"counts per {neutron.dt_s:g} s"
        _panel(out, axis, top, "neutrons", unit, series, neutron.thresholds, from_zero=True)
        top += panel + GAP
    bottom = top - GAP
    for finding, line_top in zip(found, line_tops, strict=True):
        x = axis.px(finding.location_m)
        sd = finding.location_sd_m or 0.0
        if sd:
            a, b = axis.px(finding.location_m - sd), axis.px(finding.location_m + sd)
            out.append(
                f'<rect x="{a:.1f}" y="{8 + strip}" width="{b - a:.1f}" height="{bottom - 8 - strip:.1f}" '
                'class="band"/>'
            )
        cls = "finding alarm" if finding.alarm else "finding"
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{line_top:.1f}" y2="{bottom:.1f}" class="{cls}"/>')
    out += labels
    for tick in _ticks(axis.x0_m, axis.x1_m, 10):
        if axis.x0_m - 1e-9 <= tick <= axis.x1_m + 1e-9:
            x = axis.px(tick)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 5}" class="tick"/>')
            out.append(f'<text x="{x:.1f}" y="{bottom + 18}" class="xlab">{tick:g}</text>')
    out.append(f'<text x="{WIDTH / 2}" y="{bottom + 36}" class="xtitle">{escape(data.axis)} (m)</text>')
    height = bottom + 44
    return (
        f'<svg class="figure" viewBox="0 0 {WIDTH} {height:.0f}" width="100%" role="img" '
        f'aria-label="X-ray image and radiation profile">{"".join(out)}</svg>'
    )
