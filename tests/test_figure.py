"""The decision's figures: the console's SVG (measured in Chromium) and the evidence bundle's matplotlib figure.

Decisions are the demo's journaled ones (tests/data/console-decisions.json.gz); a crowded one adds findings
shaped like the journal's next to the shielded source's, so that their labels would collide if drawn at their
lines. What is checked is what a reader sees: labels that do not overlap, legends clear of the data, the
neutron axis from zero, a threshold off the data's scale still shown, a too-dark image framed whole.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import typed
from test_console import decisions

from lanewatch.edge.console import evidence, figure
from lanewatch.edge.console.present import reasons
from lanewatch.edge.decisions.decision import Decision
from lanewatch.edge.decisions.profile import SHAPE_SERIES, SIDE_SERIES, findings, stack, value_range

CHROMIUM = "/usr/bin/chromium"
CSS = Path(figure.__file__).parent / "static" / "console.css"


def read(decision: dict[str, Any]) -> Decision:
    """One of the demo's decisions (or one changed here) as the console reads it from the journal."""
    return typed({"seq": 1, **decision})


def by_reason(reason: str) -> dict[str, Any]:
    return next(d for d in decisions() if any(a["reason"] == reason for a in d["alarms"]))


def crowded() -> dict[str, Any]:
    """The shielded source's decision with a neutron and a shape finding between its two, and two near its end."""
    decision = copy.deepcopy(by_reason("shielded-source-suspected"))
    decision["alarms"] += [
        {"reason": "neutron", "alarm": True, "statistic": 90.0, "threshold": 85.0, "location_m": 6.5, "expected": 40.0},
        {"reason": "gamma-shape", "alarm": True, "statistic": -6.0, "threshold": 4.8, "direction": "harder",
         "location_m": 7.4, "location_sd_m": 0.4},
        {"reason": "gamma", "alarm": True, "statistic": 9.0, "threshold": 4.8, "location_m": 12.5,
         "location_sd_m": 0.3},
        {"reason": "neutron-gamma", "alarm": True, "statistic": 9.0, "threshold": 4.8, "location_m": 12.2},
    ]  # fmt: skip
    return decision


def too_dark() -> dict[str, Any]:
    """The image-review decision whose image is also too dark over 46% of the load (fusion's entry)."""
    decision = copy.deepcopy(by_reason("image-review"))
    decision["alarms"].append(
        {"reason": "image-too-dark", "alarm": False, "statistic": 0.46, "threshold": 0.3, "location_m": 9.1,
         "location_sd_m": 0.1, "extent_m": [7.0, 11.2]}
    )  # fmt: skip
    return decision


def far_threshold() -> dict[str, Any]:
    """A decision whose gamma threshold lies far above its z (test statistics between -4 and 2)."""
    decision = copy.deepcopy(by_reason("neutron"))
    assert max(decision["profile"]["mf_z"]) < 2
    decision["alarms"].append(
        {
            "reason": "gamma",
            "alarm": True,
            "statistic": 45.0,
            "threshold": 40.0,
            "location_m": 4.0,
            "location_sd_m": 0.5,
        }
    )
    return decision


# ---- shared layout rules -------------------------------------------------------------------------------------
@given(st.lists(st.tuples(st.floats(0, 1000), st.floats(1, 300)), max_size=30), st.floats(0, 20))
def test_stacked_labels_of_a_row_never_overlap(labels: list[tuple[float, float]], gap: float) -> None:
    spans = [(left, left + width) for left, width in labels]
    rows = stack(spans, gap)
    assert len(rows) == len(spans) and all(0 <= r < max(len(spans), 1) for r in rows)
    for i, a in enumerate(spans):
        for j, b in enumerate(spans[:i]):
            if rows[i] == rows[j]:
                assert a[0] >= b[1] + gap or b[0] >= a[1] + gap, (a, b)
    assert rows == [0] * len(spans) or len(set(rows)) == max(rows) + 1, "rows are filled from the first"


def test_value_range_takes_a_near_threshold_in_and_leaves_a_far_one_out() -> None:
    assert value_range([1.0, 3.0], [4.8])[1] > 4.8, "near: on the scale"
    lo, hi = value_range([-4.0, 2.0], [40.0, -4.9])
    assert lo < -4.9, "the near one taken in"
    assert hi < 40.0 and lo < -4.0 and hi > 2.0, "far: left off, the data keep the height"
    assert value_range([13.0, 45.0], from_zero=True)[0] == 0.0, "counts start at zero"


def test_image_too_dark_is_no_located_finding() -> None:
    assert [f.reason for f in findings(read(too_dark()))] == ["image-review"]


# ---- the console's SVG, measured in Chromium -------------------------------------------------------------
@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: `make system-deps` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else []
        )
        page = browser.new_page(viewport={"width": 1400, "height": 950})
        yield page
        browser.close()


def boxes(page: Any, decision: dict[str, Any], selector: str) -> list[dict[str, Any]]:
    """The bounding boxes (SVG user units) and texts of the figure's elements matching ``selector``."""
    svg = figure.svg(read(decision), "data:image/png;base64," + decision["xray"]["preview"]["png_base64"])
    page.set_content(f"<!doctype html><style>{CSS.read_text()}</style><body>{svg}</body>")
    return page.evaluate(
        """sel => [...document.querySelectorAll('svg.figure ' + sel)].map(e => {
            const b = e.getBBox(); return {x: b.x, y: b.y, w: b.width, h: b.height, text: e.textContent}; })""",
        selector,
    )


def overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (
        a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
    )


def test_svg_finding_labels_never_overlap_and_stay_in_the_figure(page: Any) -> None:
    labels = boxes(page, crowded(), "text.flab")
    assert len(labels) == 6 and "Shielded source suspected 6.2 m" in [b["text"] for b in labels]
    for i, a in enumerate(labels):
        assert a["x"] >= 0 and a["x"] + a["w"] <= figure.WIDTH, a
        for b in labels[:i]:
            assert not overlap(a, b), (a["text"], b["text"])
    image = boxes(page, crowded(), "image.xray")[0]
    assert all(b["y"] + b["h"] <= image["y"] for b in labels), "labels in their strip above the image"


def test_svg_legends_sit_outside_the_plot_frames_and_neutrons_start_at_zero(page: Any) -> None:
    decision = crowded()
    frames = boxes(page, decision, "rect.frame")
    legends = boxes(page, decision, "text.legend") + boxes(page, decision, "text.ptitle")
    assert len(frames) == 3 and len(legends) >= 9
    assert not [(a["text"], f) for a in legends for f in frames if overlap(a, f)]
    neutron_frame = frames[-1]
    ticks = [b for b in boxes(page, decision, "text.ylab") if neutron_frame["y"] <= b["y"] <= neutron_frame["y"] + 120]
    lowest = max(ticks, key=lambda b: b["y"])
    assert lowest["text"] == "0" and abs(lowest["y"] + lowest["h"] / 2 - (neutron_frame["y"] + figure.PANEL_HEIGHT)) < 8


def test_svg_threshold_off_the_scale_is_an_arrow_with_its_value(page: Any) -> None:
    labels = [b["text"] for b in boxes(page, far_threshold(), "text.thrlab")]
    assert labels == ["▲ alarm threshold 40, above this scale"]
    arrows = boxes(page, far_threshold(), "polygon.thrarrow")
    frames = boxes(page, far_threshold(), "rect.frame")
    z = frames[1]
    assert len(arrows) == 1 and abs(arrows[0]["y"] - z["y"]) < 1, "at the top edge of the statistics panel"
    both = boxes(page, by_reason("device"), "text.thrlab")  # gamma and shape thresholds, 9.7 z units apart
    assert [b["text"] for b in both] == ["alarm threshold 4.83", "shape threshold -4.83 (harder)"]
    assert not overlap(*both)
    near = boxes(page, by_reason("shielded-source-suspected"), "line.threshold")
    assert len(near) == 1 and not boxes(page, by_reason("shielded-source-suspected"), "polygon.thrarrow")


def test_svg_frames_a_too_dark_image_whole_with_its_caption(page: Any) -> None:
    decision = too_dark()
    image = boxes(page, decision, "image.xray")[0]
    frame = boxes(page, decision, "rect.darkframe")
    assert len(frame) == 1 and abs(frame[0]["w"] - image["w"]) < 4 and abs(frame[0]["h"] - image["h"]) < 4
    caption = boxes(page, decision, "text.darklab")
    assert caption[0]["text"].startswith("X-ray image too dark over 46% of the load (limit 30%)")
    lines = boxes(page, decision, "line.finding")
    assert len(lines) == 1, "the image-review line only: darkness is no place on the vehicle"


# ---- the evidence figure (matplotlib) ----------------------------------------------------------------------
@pytest.fixture
def drawn() -> Iterator[Any]:
    from matplotlib import pyplot as plt

    figures: list[Any] = []

    def draw(decision: dict[str, Any]) -> Any:
        fig = evidence.figure(read(decision))
        fig.canvas.draw()
        figures.append(fig)
        return fig

    yield draw
    for fig in figures:
        plt.close(fig)


def finding_labels(fig: Any) -> list[Any]:
    return [t for ax in fig.axes for t in ax.texts if t.get_color() == evidence.FINDING_COLOUR]


def test_evidence_figure_labels_never_overlap_legends_sit_beside_and_neutrons_start_at_zero(drawn: Any) -> None:
    from matplotlib.text import Text

    fig = drawn(crowded())
    renderer = fig.canvas.get_renderer()
    labels = [Text.get_window_extent(t, renderer) for t in finding_labels(fig)]  # without their connectors
    assert len(labels) == 6
    for i, a in enumerate(labels):
        assert a.x0 >= 0 and a.x1 <= fig.bbox.width and a.y1 <= fig.bbox.height, "inside the figure"
        for b in labels[:i]:
            assert not a.overlaps(b)
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend is not None and not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
    neutron = fig.axes[-1]
    assert neutron.get_ylabel().startswith("neutron counts") and neutron.get_ylim()[0] == 0.0


def test_evidence_figure_shows_a_far_threshold_at_the_edge_and_frames_a_dark_image(drawn: Any) -> None:
    z = next(ax for ax in drawn(far_threshold()).axes if ax.get_ylabel().startswith("test statistic"))
    arrows = [t.get_text() for t in z.texts if "scale" in t.get_text()]
    assert z.get_ylim()[1] < 40 and arrows == ["alarm threshold 40 above this scale"]
    assert "alarm threshold 40 (off scale)" in [t.get_text() for t in z.get_legend().get_texts()]
    image = drawn(too_dark()).axes[0]
    captions = [t.get_text() for t in image.texts if t.get_color() == evidence.DARK_COLOUR]
    assert len(captions) == 1 and captions[0].startswith("X-ray image too dark over 46% of the load")
    frames = [p for p in image.patches if p.get_linestyle() == "--"]
    (x0, x1), z_mm = too_dark()["xray"]["preview"]["x_m"], too_dark()["xray"]["preview"]["z_mm"]
    assert len(frames) == 1 and frames[0].get_width() == pytest.approx(x1 - x0)
    assert frames[0].get_height() == pytest.approx((z_mm[1] - z_mm[0]) / 1000)


def test_the_side_test_shows_its_curve_and_threshold_on_its_side(page: Any, drawn: Any) -> None:
    """A gamma-side alarm (the second column's share rose): its signed curve and its threshold on that side are drawn,
    on the page and in the evidence figure, so the panel shows the statistic that alarmed."""
    decision = copy.deepcopy(by_reason("gamma"))
    n = len(decision["profile"]["gross"])
    decision["profile"]["side_z"] = [-6.2 if i == n // 2 else -0.5 for i in range(n)]
    decision["profile"]["side_threshold"] = 5.2
    decision["alarms"].append(
        {"reason": "gamma-side", "alarm": True, "statistic": -6.2, "threshold": 5.2, "side": "second",
         "location_m": 4.0, "location_sd_m": 0.4}
    )
    expected = "side threshold -5.2 (second column)"
    assert expected in [b["text"] for b in boxes(page, decision, "text.thrlab")]
    assert len(boxes(page, decision, "line.threshold.side")) == 1
    assert SIDE_SERIES in [b["text"] for b in boxes(page, decision, "text.legend")]
    z = next(ax for ax in drawn(decision).axes if ax.get_ylabel().startswith("test statistic"))
    legend = [t.get_text() for t in z.get_legend().get_texts()]
    assert expected in legend and SIDE_SERIES in legend
    assert z.get_ylim()[0] < -6.2


def test_the_two_sided_shape_test_shows_its_threshold_on_its_side(page: Any, drawn: Any) -> None:
    """A NORM release: the shape test crossed on the harder (negative) side, its threshold drawn there; the words
    give its size and side, the plot its signed curve, and both name the side and the same threshold size."""
    decision = by_reason("norm-consistent")
    shape = next(a for a in decision["alarms"] if a["reason"] == "gamma-shape")
    assert shape["statistic"] < -shape["threshold"]
    words = next(r for r in reasons(read(decision)) if r.startswith("Gamma spectrum shape"))
    assert words.startswith(f"Gamma spectrum shape harder than background {abs(shape['statistic']):.1f} sigma")
    expected = f"shape threshold {-shape['threshold']:.3g} (harder)"
    assert [b["text"] for b in boxes(page, decision, "text.thrlab")] == [expected]
    assert len(boxes(page, decision, "line.threshold.shape")) == 1
    assert SHAPE_SERIES in [b["text"] for b in boxes(page, decision, "text.legend")]
    assert "below 0: harder than background" in SHAPE_SERIES
    z = next(ax for ax in drawn(decision).axes if ax.get_ylabel().startswith("test statistic"))
    legend = [t.get_text() for t in z.get_legend().get_texts()]
    assert expected in legend and SHAPE_SERIES in legend
    assert z.get_ylim()[0] < -shape["threshold"] < z.get_ylim()[1]


def test_the_statistics_panel_always_shows_the_gamma_thresholds_or_says_why_not(page: Any, drawn: Any) -> None:
    """A dense-object alarm, no gamma test crossed: the thresholds the detection recorded are drawn (both sides of
    the shape test's); a decision journaled before they were recorded says so in the panel, as does one without
    a shape test."""
    decision = copy.deepcopy(by_reason("image-review"))
    assert {a["reason"] for a in decision["alarms"]} == {"image-review"}
    assert [b["text"] for b in boxes(page, decision, "text.pnote")] == [
        "gamma threshold not recorded in this decision",
        "shape threshold not recorded in this decision",
    ]
    decision["profile"].update(gamma_threshold=4.81, shape_threshold=4.9)
    labels = ["alarm threshold 4.81", "shape threshold +4.9 (softer)", "shape threshold -4.9 (harder)"]
    assert sorted(b["text"] for b in boxes(page, decision, "text.thrlab")) == sorted(labels)
    assert not boxes(page, decision, "text.pnote") and len(boxes(page, decision, "line.threshold")) == 3
    z = next(ax for ax in drawn(decision).axes if ax.get_ylabel().startswith("test statistic"))
    assert set(labels) <= {t.get_text() for t in z.get_legend().get_texts()}
    del decision["profile"]["shape_z"], decision["profile"]["shape_threshold"]
    assert [b["text"] for b in boxes(page, decision, "text.pnote")] == ["shape test did not run (gross counts only)"]
    z = next(ax for ax in drawn(decision).axes if ax.get_ylabel().startswith("test statistic"))
    assert "shape test did not run (gross counts only)" in [t.get_text() for t in z.texts]


def test_the_neutron_threshold_is_drawn_per_sample_over_its_window(page: Any, drawn: Any) -> None:
    """The neutron test sums a window (``window_s``): its threshold reads as that sum and as the mean per sample
    the window had to reach, on the counts-per-sample axis. (The recorded decision predates ``window_s``: its
    window, 3 samples of 1 s, is the ratio of its expected sum to the expected counts per sample.)"""
    decision = copy.deepcopy(by_reason("neutron"))
    entry = next(a for a in decision["alarms"] if a["reason"] == "neutron")
    assert round(entry["expected"] / decision["profile"]["neutron_expected"]) == 3
    entry["window_s"] = 3.0
    label = f"alarm threshold 85 counts in 3 s ({85 / 3:.3g} per 1 s)"
    assert [b["text"] for b in boxes(page, decision, "text.thrlab")] == [label]
    line, neutron_frame = boxes(page, decision, "line.threshold")[0], boxes(page, decision, "rect.frame")[-1]
    assert neutron_frame["y"] < line["y"] < neutron_frame["y"] + neutron_frame["h"]
    neutron = drawn(decision).axes[-1]
    assert label in [t.get_text() for t in neutron.get_legend().get_texts()] and neutron.get_ylim()[0] == 0.0


def test_the_evidence_figure_says_when_the_background_came_from_the_vehicle_itself(drawn: Any) -> None:
    """The first vehicle after start: its "expected" is the vehicle's own level and its tests were withheld, which
    the statistics panel says; the title gives the end in UTC as a person reads it."""
    decision = copy.deepcopy(by_reason("gamma"))
    decision.update(verdict="INCOMPLETE", incomplete=["no-background"], end="2024-05-01T12:03:04.500Z")
    decision["background"]["origin"] = "estimated-from-occupancy"
    for alarm in decision["alarms"]:
        alarm.update(alarm=False, withheld="no-background")
    fig = drawn(decision)
    z = next(ax for ax in fig.axes if ax.get_ylabel().startswith("test statistic"))
    note = "no background before the vehicle: expected from the vehicle itself, tests withheld"
    assert note in [t.get_text() for t in z.texts]
    assert fig.get_suptitle().endswith("INCOMPLETE · ended 2024-05-01 12:03:04 UTC")
    decision["incomplete"] = []
    z = next(ax for ax in drawn(decision).axes if ax.get_ylabel().startswith("test statistic"))
    assert "expected from the vehicle itself (no usable background line)" in [t.get_text() for t in z.texts]
