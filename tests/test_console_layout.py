"""The console's pages laid out by Chromium: a narrow window and a lane tile with alarms awaiting adjudication.

The console is the real application over a real journal (Starlette's TestClient, as in test_console.py); Chromium
(Debian's, through Playwright) loads its pages, scripts and style sheet through the client, so what is measured is
what the browser draws. Screenshots are saved in ``$LANEWATCH_ARTIFACTS`` (default ``test-artifacts/``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from starlette.testclient import TestClient
from test_console import client, login, seq_of, site  # noqa: F401 (fixtures)

from lanewatch.edge.bus.records import Kind, Record
from lanewatch.edge.console.health import Health, LaneHealth, SensorHealth
from lanewatch.edge.decisions.decision import build_missed
from lanewatch.edge.decisions.journal import Journal

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("LANEWATCH_ARTIFACTS", REPO / "test-artifacts")) / "console-layout"
CHROMIUM = "/usr/bin/chromium"
BASE = "https://testserver"


@pytest.fixture
def browser_page(client: TestClient) -> Iterator[Any]:  # noqa: F811
    """A Chromium page 800 px wide whose requests the console answers (its event stream is refused: no live feed)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: `make system-deps` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    def answer(route: Any) -> None:
        request = route.request
        path = request.url.removeprefix(BASE)
        if path.startswith("/events"):
            route.fulfill(status=204, body=b"")
            return
        response = client.request(request.method, path, content=request.post_data_buffer)
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-encoding")}
        route.fulfill(status=response.status_code, headers=headers, body=response.content)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else []
        )
        context = browser.new_context(viewport={"width": 800, "height": 900})
        context.route(f"{BASE}/**", answer)
        yield context.new_page()
        browser.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def box(page: Any, selector: str) -> dict[str, float]:
    return page.eval_on_selector(selector, "e => { const b = e.getBoundingClientRect(); return {x: b.x, y: b.y, "
                                 "right: b.right, bottom: b.bottom}; }")  # fmt: skip


def test_the_detail_page_fits_an_800_px_window(client: TestClient, browser_page: Any) -> None:  # noqa: F811
    login(client, "olga")
    page = browser_page
    page.goto(f"{BASE}/decision/{seq_of(client, 'device')}")
    page.wait_for_selector("#adjudication")
    shot(page, "detail-800")
    assert page.evaluate("document.documentElement.scrollWidth") <= 800, "no horizontal scrolling"
    why, adjudication = box(page, "section.card:has(> h2:text('Why'))"), box(page, "#adjudication")
    assert adjudication["right"] <= 800 and adjudication["y"] >= why["bottom"], "the cards stack"
    assert box(page, "table.history")["right"] <= adjudication["right"]


def test_an_occupied_lane_with_an_unacknowledged_alarm_shows_the_alarm(client: TestClient, browser_page: Any) -> None:  # noqa: F811
    """Lane 1 has a vehicle in it now and alarms of earlier ones unacknowledged: the tile says both, in its
    width; the alarm is its headline and its colour, the occupancy beside it."""
    login(client, "olga")
    sensors = [SensorHealth(name="rpm", ok=True, connected=True, fresh=True, age_s=0.1)]
    client.app.state.console.wall.on_health(
        Health(reachable=True, ok=True, lanes={"lane1": LaneHealth(occupied=True, sensors=sensors)})
    )
    page = browser_page
    page.goto(f"{BASE}/")
    page.wait_for_selector("#lane-lane1 .occupancy")
    shot(page, "wall-800")
    tile = box(page, "#lane-lane1")
    assert page.inner_text("#lane-lane1 .status") == "ALARM AWAITING ADJUDICATION"
    assert page.inner_text("#lane-lane1 .occupancy").endswith("OCCUPIED")
    assert box(page, "#lane-lane1 .occupancy")["right"] <= tile["right"], "the occupancy stays in its tile"
    assert page.get_attribute("#lane-lane1", "class").split() == ["tile", "alarm", "unacknowledged"]
    colour = page.eval_on_selector("#lane-lane1", "e => getComputedStyle(e).borderTopColor")
    assert colour == "rgb(200, 30, 30)"
    page.eval_on_selector("#lane-lane1", "e => e.style.animation = 'none'")  # its colour between two flashes
    assert page.eval_on_selector("#lane-lane1", "e => getComputedStyle(e).backgroundColor") == "rgb(253, 236, 236)"


def test_the_banner_shows_the_oldest_alarms_and_links_the_rest(client: TestClient, browser_page: Any) -> None:  # noqa: F811
    """The wall carries the oldest few unacknowledged alarms and their count; the banner lists five, oldest first,
    and links the queue for the others."""
    login(client, "olga")
    wall = client.app.state.console.wall
    alarm = client.app.state.console.journal.get(2)
    for seq in range(100, 112):
        wall.on_decision(msgspec.structs.replace(alarm, seq=seq))
    page = browser_page
    page.goto(f"{BASE}/")
    page.wait_for_selector("#banner .item")
    assert page.locator("#banner .item").count() == 5
    assert page.inner_text("#banner").splitlines()[-1].startswith("and 12 more unacknowledged")  # 17 in all
    assert page.locator("#banner .item a").first.inner_text() == "decision 7", "the oldest (by end) first"
    page.click("#banner .more a")
    page.wait_for_url(f"{BASE}/decisions?state=unacknowledged")
    assert page.locator("table.events td a").first.inner_text() == "7", "the queue, oldest first"


def test_a_lane_whose_rpm_is_dead_says_so_in_words(client: TestClient, browser_page: Any) -> None:  # noqa: F811
    """The RPM's driver is silent while the X-ray's still speaks: its chip and the tile's faults say what is wrong,
    with the age, not only by colour."""
    login(client, "olga")
    sensors = [
        SensorHealth(name="RPM", ok=False, connected=None, fresh=False, age_s=35.2, words="no data for 35 s"),
        SensorHealth(name="X-ray", ok=True, connected=True, fresh=True, age_s=0.4),
    ]
    health = Health(reachable=True, ok=False, lanes={"lane1": LaneHealth(sensors=sensors)})
    client.app.state.console.wall.on_health(health)
    page = browser_page
    page.goto(f"{BASE}/")
    page.wait_for_selector("#lane-lane1 .faults")
    shot(page, "wall-rpm-dead")
    chips = page.locator("#lane-lane1 .sensor")
    assert chips.all_inner_texts() == ["RPM no data for 35 s", "X-ray ok 0.4 s"]
    assert chips.nth(0).get_attribute("class").split() == ["sensor", "bad"]
    assert page.inner_text("#lane-lane1 .faults") == "Faults: RPM no data for 35 s"


def test_a_decision_page_says_which_disposition_another_console_recorded(client: TestClient, browser_page: Any) -> None:  # noqa: F811
    """An officer is typing notes on a decision when another console disposes of it: the notice names who, the act and
    the disposition in words, not the act's code, and the typed notes stay."""
    import json

    login(client, "olga")
    seq = seq_of(client, "device")
    page = browser_page
    sent = {"act": ""}

    def events(route: Any) -> None:  # an event stream that carries the act once it is recorded
        body = f"retry: 200\n\nevent: adjudication\ndata: {sent['act']}\n\n" if sent["act"] else "retry: 200\n\n"
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    page.route(f"{BASE}/events**", events)
    page.goto(f"{BASE}/decision/{seq}")
    page.fill("textarea[name=notes]", "driver says: ceramic tiles")
    act = {"id": 1, "seq": seq, "kind": "adjudicate", "disposition": "test", "user": "sam", "role": "supervisor",
           "time": "2026-12-02T07:51:00Z", "notes": "", "nuclides": []}  # fmt: skip
    sent["act"] = json.dumps(act)
    page.wait_for_selector("#updated:not([hidden])")
    assert page.inner_text("#updated").startswith("sam disposed of this decision as “Test source”.")
    assert page.input_value("textarea[name=notes]") == "driver says: ceramic tiles"


def test_a_vehicle_not_screened_is_on_the_wall_and_its_page_says_why(client: TestClient, browser_page: Any) -> None:  # noqa: F811
    """A vehicle the portal counted and lanewatch never read: on the banner and, with its lane's alarms disposed, the
    tile's headline; its page says once, in words, what is missing, and offers the acknowledgement."""
    login(client, "olga")
    console = client.app.state.console
    end_ns = time.time_ns()
    end = Record(Kind.OCCUPANCY_END, "lane2", "rpm", 40, end_ns, 0, values={"device_occupancy": 85})
    with Journal(console.config.service.journal) as journal:
        seq = journal.append(build_missed("lane2", end, 84, end_ns - 12 * 1_000_000_000))["seq"]
        missed = journal.get(seq)
    for row in console.adjudications.awaiting():
        if row.lane == "lane2" and row.seq != seq:
            console.wall.on_adjudication(
                console.adjudications.record(row.seq, "adjudicate", "olga", "operator", disposition="background")
            )
    console.wall.on_decision(missed)
    page = browser_page
    page.goto(f"{BASE}/")
    page.wait_for_selector("#lane-lane2[data-status=incomplete]")
    shot(page, "wall-not-screened")
    assert page.inner_text("#lane-lane2 .status") == "NOT SCREENED: AWAITING ADJUDICATION"
    assert page.get_attribute("#lane-lane2", "class").split() == ["tile", "incomplete", "unacknowledged"]
    assert f"#{seq} " in page.inner_text("#lane-lane2 .alarms")
    assert "unacknowledged: Not screened for radiation: the portal counted" in page.inner_text("#lane-lane2 .alarms")
    assert "INCOMPLETE lane2" in page.inner_text("#banner")
    page.goto(f"{BASE}/decision/{seq}")
    page.wait_for_selector("#adjudication")
    shot(page, "detail-not-screened")
    why = page.inner_text("section.card:has(> h2:text('Why'))")
    assert why.count("Not screened for radiation") == 1 and "missed; missed" not in why, why
    assert "(its occupancy 84)" in why and "within the 12 s before" in why
    assert page.locator(f"form[action='/decision/{seq}/acknowledge']").count() >= 1
