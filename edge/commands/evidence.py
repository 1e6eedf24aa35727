"""``lanewatch evidence SEQ --out DIR``: the evidence of one journaled decision, as files a person can open.

Reads decision ``SEQ`` from the journal file of the configuration (read-only; ``--journal`` names
another file), or from the service's query endpoint (``--query``, or when there is no journal file
here), and writes to ``DIR``:

``evidence-SEQ.png``
    The X-ray preview of the decision's scan (front of the vehicle on the left, scaled up to about
    :data:`TARGET_WIDTH` pixels) with the imaging pipeline's dense regions outlined in their material's
    colour (:data:`COLOURS`), the fusion's image objects boxed thicker and labelled with their
    lead-equivalent thickness, and every located finding (radiation alarms, fused findings) as a
    vertical line with its one-sigma band. Below, on the same metres axis: the gamma count profile
    with its expected background, and the matched-filter z (and the shape z) with the alarm
    threshold. A decision without a scan gets the plots alone; one without radiation, the image alone.
``profile-SEQ.json``
    The plotted data: per gamma sample its location (m) and counts, expected counts and z; the
    neutron counts; the image's attenuation profile; the findings with location and uncertainty;
    and the axis mapping of the image (metres of its left and right edge).
``decision-SEQ.json``
    The decision as journaled.
``evidence-SEQ.zip``
    The evidence bundle the operators' console gives for the decision, with its adjudication history when
    the journal file is read (see :mod:`lanewatch.edge.console.evidence`).

Exit status 0 when all four were written, 1 when the decision cannot be read (or its preview
cannot be decoded), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from PIL import Image, ImageDraw, ImageFont

from lanewatch.edge.bus.security import Keys
from lanewatch.edge.config import Config
from lanewatch.edge.console.adjudication import Adjudication, Adjudications
from lanewatch.edge.console.evidence import bundle
from lanewatch.edge.decisions.journal import Journal, JournalError
from lanewatch.edge.decisions.profile import profile_data
from lanewatch.edge.decisions.subscriber import JournalClient, QueryError, ServiceUnreachable

TARGET_WIDTH = 1200
"""About how wide (px) the preview is drawn; it is scaled up by a whole factor."""
MARGIN = 40
"""Space (px) left of, right of and below the drawing, for the axis labels."""
PLOT_HEIGHT = 150
"""Height (px) of each profile plot under the image."""
GAP = 24
"""Space (px) between the parts of the drawing."""
QUERY_TIMEOUT_S = 5.0
COLOURS: dict[str, tuple[int, int, int]] = {
    "organic": (255, 140, 0),
    "inorganic": (0, 170, 0),
    "metal": (30, 110, 255),
    "high_z": (220, 0, 220),
    "unresolvable": (200, 0, 0),
    "unclassified": (120, 120, 120),
    "dense": (120, 120, 120),
}
"""Outline colour (RGB) per material class."""
FINDING_COLOUR = (230, 20, 20)
"""Colour of located findings: their line, and their band at a quarter opacity."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lanewatch evidence``."""
    parser.add_argument("seq", type=int, help="journal sequence number of the decision")
    parser.add_argument("--out", required=True, type=Path, help="directory to write the files to (created)")
    parser.add_argument("--journal", type=Path, help="journal file to read (default: the configuration's)")
    parser.add_argument("--query", action="store_true", help="ask the service's query endpoint, not the file")
    parser.add_argument("--key", default="console", help="CURVE key name for --query (default console)")


def _read(args: argparse.Namespace, config: Config) -> dict[str, Any] | None:
    """The decision, from the journal file or else the query endpoint; None when there is none."""
    path = args.journal or Path(config.service.journal)
    if not args.query and (args.journal is not None or path.exists()):
        with Journal(path, readonly=True) as journal:
            return journal.get(args.seq)
    ctx = zmq.Context()
    client = JournalClient(ctx, config.bus.query, keys=Keys.load(config.bus, args.key))
    try:
        return client.get(args.seq, timeout_s=QUERY_TIMEOUT_S)
    finally:
        client.close()
        ctx.term()


def _history(args: argparse.Namespace, config: Config) -> list[Adjudication]:
    """The decision's adjudications when its journal file is here (the query endpoint serves decisions only)."""
    path = args.journal or Path(config.service.journal)
    return [] if args.query or not path.exists() else Adjudications.read_history(path, args.seq)


def run(args: argparse.Namespace, config: Config) -> int:
    """Write the evidence files of decision ``args.seq`` into ``args.out``."""
    if args.seq < 1:
        print(f"lanewatch evidence: SEQ must be a journal sequence number (1 or more), got {args.seq}")
        return 2
    where = f"the query endpoint {config.bus.query}" if args.query else str(args.journal or config.service.journal)
    try:
        decision = _read(args, config)
    except (JournalError, QueryError, ServiceUnreachable) as exc:
        print(f"lanewatch evidence: cannot read decision {args.seq}: {exc}")
        return 1
    if decision is None:
        print(f"lanewatch evidence: no decision numbered {args.seq} in {where}")
        return 1
    try:
        image = render(decision)
    except (ValueError, OSError) as exc:
        print(f"lanewatch evidence: decision {args.seq}: its X-ray preview cannot be decoded: {exc}")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {
        "png": args.out / f"evidence-{args.seq}.png",
        "profile": args.out / f"profile-{args.seq}.json",
        "decision": args.out / f"decision-{args.seq}.json",
    }
    paths["bundle"] = args.out / f"evidence-{args.seq}.zip"
    image.save(paths["png"], format="PNG")
    paths["bundle"].write_bytes(bundle(decision, _history(args, config)))
    paths["profile"].write_text(json.dumps(profile_data(decision), indent=1) + "\n")
    paths["decision"].write_text(json.dumps(decision, indent=1) + "\n")
    for path in paths.values():
        print(path)
    return 0


# ---- drawing ---------------------------------------------------------------------------------------
def _preview(decision: dict[str, Any]) -> tuple[Image.Image, dict[str, Any]] | None:
    preview = (decision.get("xray") or {}).get("preview")
    if not preview:
        return None
    img = Image.open(io.BytesIO(base64.b64decode(preview["png_base64"], validate=True)))
    img.load()
    return img.convert("L"), preview


@dataclass(frozen=True)
class Layout:
    """Where things go on the evidence image (px), and the metres axis shared by the image and the plots."""

    width: int
    height: int
    x0_m: float
    """Metres at the left edge of the drawing."""
    m_per_px: float
    image_size: tuple[int, int]
    """Size of the drawn preview (0 x 0 without one)."""
    plots: int

    def px(self, x_m: float) -> float:
        return MARGIN + (x_m - self.x0_m) / self.m_per_px


def layout(decision: dict[str, Any], preview: Image.Image | None) -> Layout:
    """The layout for ``decision`` and its decoded preview: the axis covers both the image and the radiation."""
    located = profile_data(decision)["radiation"]["location_m"]
    spans = []
    if located:
        step = located[1] - located[0] if len(located) > 1 else 2 * located[0]
        spans.append((0.0, located[-1] + 0.5 * step))
    image_size = (0, 0)
    if preview is not None:
        scale = max(1, round(TARGET_WIDTH / preview.width))
        image_size = (preview.width * scale, preview.height * scale)
        left, right = decision["xray"]["preview"]["x_m"]
        spans.append((left, right))
        m_per_px = (right - left) / image_size[0]
    if not spans:
        spans.append((0.0, 1.0))
    x0, x1 = min(a for a, _ in spans), max(b for _, b in spans)
    if preview is None:
        m_per_px = (x1 - x0) / TARGET_WIDTH
    plots = 2 if located else 0
    height = MARGIN // 2 + image_size[1] + (GAP if image_size[1] and plots else 0) + plots * (PLOT_HEIGHT + GAP)
    width = math.ceil((x1 - x0) / m_per_px) + 2 * MARGIN
    return Layout(width, height + MARGIN, x0, m_per_px, image_size, plots)


def render(decision: dict[str, Any]) -> Image.Image:
    """The evidence image of ``decision`` (see the module docstring)."""
    found = _preview(decision)
    lay = layout(decision, None if found is None else found[0])
    canvas = Image.new("RGB", (lay.width, lay.height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas, "RGBA")
    font = ImageFont.load_default()
    data = profile_data(decision)
    xray = decision.get("xray") or {}
    top = MARGIN // 2
    px = lay.px
    right = lay.width - MARGIN

    title = f"decision {decision.get('seq')}  {decision.get('lane')}  {decision.get('verdict')}  {decision.get('end')}"
    if xray.get("scan_id") is not None:
        title += f"  scan {xray['scan_id']} ({xray.get('status')})"
    draw.text((MARGIN, 4), title, fill=(0, 0, 0), font=font)
    bands_bottom = top
    if found is not None:
        img, preview = found
        img_w, img_h = lay.image_size
        canvas.paste(
            img.resize((img_w, img_h), Image.Resampling.NEAREST).convert("RGB"), (round(px(preview["x_m"][0])), top)
        )
        rows_per_px = img_h / (xray.get("pixels") or img.height)
        for region in xray.get("regions") or []:
            _box(draw, region, px, top, rows_per_px, COLOURS.get(region.get("material", ""), (0, 0, 0)), 1)
        bands_bottom = top + img_h
        top += img_h + GAP
    if data["radiation"]["gross"]:
        rad = data["radiation"]
        _plot(
            draw,
            font,
            px,
            top,
            [("gross", rad["gross"], (0, 0, 0)), ("expected", rad["expected"], (150, 150, 150))],
            rad["location_m"],
            "gamma counts per sample",
            None,
        )
        top += PLOT_HEIGHT + GAP
        series = [("mf_z", rad["mf_z"], (200, 0, 0))]
        if rad["shape_z"]:
            series.append(("shape_z", rad["shape_z"], (0, 120, 200)))
        _plot(
            draw,
            font,
            px,
            top,
            series,
            rad["location_m"],
            "z (matched filter red, shape blue)",
            rad["thresholds"].get("gamma"),
        )
        top += PLOT_HEIGHT + GAP
    label_y = (bands_bottom if bands_bottom > MARGIN // 2 else MARGIN // 2 + 14 * len(data["findings"])) - 14
    for k, finding in enumerate(data["findings"]):
        x = px(finding["location_m"])
        sd = finding.get("location_sd_m") or 0.0
        band = (max(MARGIN, px(finding["location_m"] - sd)), min(right, px(finding["location_m"] + sd)))
        if band[1] > band[0]:
            draw.rectangle([band[0], MARGIN // 2, band[1], top - GAP], fill=(*FINDING_COLOUR, 64))
        if MARGIN <= x <= right:
            draw.line([(x, MARGIN // 2), (x, top - GAP)], fill=FINDING_COLOUR, width=1 if not finding["alarm"] else 2)
            draw.text(
                (x + 3, label_y - 14 * k),
                str(finding["reason"]),
                fill=FINDING_COLOUR,
                font=font,
            )
    for obj in xray.get("objects") or [] if found is not None else []:  # over the bands, so their colour shows
        colour = COLOURS.get(obj.get("material", ""), (0, 0, 0))
        left = _box(draw, obj, px, MARGIN // 2, rows_per_px, colour, 3)
        label_at = (left, max(MARGIN // 2, MARGIN // 2 + obj["pixels"][0] * rows_per_px - 12))
        draw.text(label_at, f"{obj.get('lead_mm')} mm Pb", fill=colour, font=font)
    _axis(draw, font, px, lay.x0_m, lay.x0_m + (right - MARGIN) * lay.m_per_px, top - GAP + 4, data["axis"])
    return canvas


def _box(
    draw: ImageDraw.ImageDraw,
    item: dict[str, Any],
    px: Any,
    top: int,
    rows_per_px: float,
    colour: tuple[int, int, int],
    width: int,
) -> float:
    """Outline an item with ``x_m`` and ``pixels`` (detector rows) on the image; returns its left edge (px)."""
    a, b = px(item["x_m"][0]), px(item["x_m"][1])
    y0 = top + item["pixels"][0] * rows_per_px
    y1 = top + (item["pixels"][1] + 1) * rows_per_px
    draw.rectangle([a, y0, max(b, a + 1), max(y1, y0 + 1)], outline=colour, width=width)
    return a


def _plot(
    draw: ImageDraw.ImageDraw,
    font: Any,
    px: Any,
    top: int,
    series: list[tuple[str, list[Any], tuple[int, int, int]]],
    x_m: list[float],
    label: str,
    threshold: float | None,
) -> None:
    """Line plot of ``series`` against ``x_m`` in a frame ``PLOT_HEIGHT`` high at ``top``."""
    values = [v for _, ys, _ in series for v in ys if isinstance(v, int | float) and math.isfinite(v)]
    if threshold is not None:
        values.append(threshold)
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    left, right = px(x_m[0]) if x_m else MARGIN, px(x_m[-1]) if x_m else MARGIN
    draw.rectangle([MARGIN, top, max(right, left) + 1, top + PLOT_HEIGHT], outline=(180, 180, 180))

    def y(v: float) -> float:
        return top + PLOT_HEIGHT - (v - lo) / (hi - lo) * PLOT_HEIGHT

    if threshold is not None:
        draw.line([(MARGIN, y(threshold)), (right, y(threshold))], fill=(200, 0, 0, 128), width=1)
    for _, ys, colour in series:
        points = [
            (px(x), y(v)) for x, v in zip(x_m, ys, strict=False) if isinstance(v, int | float) and math.isfinite(v)
        ]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
    draw.text((MARGIN + 4, top + 2), f"{label}  [{lo:.4g}, {hi:.4g}]", fill=(0, 0, 0), font=font)


def _axis(draw: ImageDraw.ImageDraw, font: Any, px: Any, x0: float, x1: float, y: int, name: str) -> None:
    """Metre ticks under the drawing, and what they count from."""
    step = 1.0 if x1 - x0 <= 30 else 5.0
    tick = math.ceil(x0 / step) * step
    while tick <= x1:
        x = px(tick)
        draw.line([(x, y), (x, y + 5)], fill=(0, 0, 0))
        draw.text((x - 6, y + 7), f"{tick:g}", fill=(0, 0, 0), font=font)
        tick += step
    draw.text((px(x1) - 6 * len(name), y + 20), name, fill=(0, 0, 0), font=font)
