"""The lane wall in a real browser when the console goes away and when the session ends.

``lanewatch console`` runs as a process (plain HTTP on loopback) over a journal seeded with the decisions of
tests/data/console-decisions.json.gz; Playwright drives Debian's Chromium (``make system-deps``). The test kills the
console with SIGKILL, as a crash would, and starts it again; screenshots go to ``$LANEWATCH_ARTIFACTS``.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
import uvicorn
from test_console import PASSWORD, seed_site, site  # noqa: F401 (a fixture)
from test_console_browser import ARTIFACTS, CHROMIUM, browser  # noqa: F401 (a fixture)
from test_ops import http_get, wait_for

from lanewatch.edge.commands.demo import free_ports
from lanewatch.edge.config import Config
from lanewatch.edge.console.app import create_app
from lanewatch.edge.console.live import Event

pytestmark = pytest.mark.slow
EXE = str(Path(sys.executable).parent / "lanewatch")
ZONE = "America/Los_Angeles"
IDLE_TIMEOUT_S = 60.0


class Console:
    """One ``lanewatch console`` process over a seeded journal, with no service (its bus goes nowhere)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        listen, http, *bus = free_ports(6)
        self.url, self.http = f"http://127.0.0.1:{listen}", f"127.0.0.1:{http}"
        self.config = root / "console.toml"
        self.config.write_text(f"""
[service]
journal = "{root / "journal.db"}"
http = "127.0.0.1:{bus[0]}"
[bus]
plaintext = true
ingest = "tcp://127.0.0.1:{bus[1]}"
alerts = "tcp://127.0.0.1:{bus[2]}"
query = "tcp://127.0.0.1:{bus[3]}"
[console]
listen = "127.0.0.1:{listen}"
http = "127.0.0.1:{http}"
plain_http = true
timezone = "{ZONE}"
idle_timeout_s = {IDLE_TIMEOUT_S}
[[lanes]]
id = "lane1"
[[lanes]]
id = "lane2"
""")
        seed_site(root / "journal.db", root / "lanewatch-console.db", {"olga": "operator"})
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = (self.root / "console.log").open("ab")
        self.proc = subprocess.Popen([EXE, "console", "--config", str(self.config)], stdout=log, stderr=log)
        log.close()
        wait_for("the console's /healthz", lambda: http_get(self.http, "/healthz")[0] == 200, [self.proc])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(60)

    def sessions(self, sql: str, *args: Any) -> list[tuple]:
        with sqlite3.connect(self.root / "lanewatch-console.db") as conn:
            return conn.execute(sql, args).fetchall()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: `make system-deps` installs Debian's chromium")
    running = Console(tmp_path_factory.mktemp("wall"))
    try:
        yield running
    finally:
        if running.proc is not None and running.proc.poll() is None:
            running.proc.send_signal(signal.SIGINT)
            running.proc.wait(60)


def open_wall(browser: Any, console: Console) -> Any:  # noqa: F811
    page = browser.new_context(viewport={"width": 1400, "height": 950}).new_page()
    page.set_default_timeout(60_000)
    page.goto(console.url + "/")
    page.fill("input[name=name]", "olga")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#wall .tile")
    page.wait_for_function("() => window.lanewatch.connected === true")
    return page


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def test_the_wall_says_at_once_when_the_console_is_gone_and_recovers_or_logs_in_again(
    browser: Any,  # noqa: F811
    console: Console,
) -> None:
    page = open_wall(browser, console)
    assert page.locator("#connection").is_hidden()
    console.kill()
    page.wait_for_selector("#connection:not([hidden])")
    said = page.inner_text("#connection")
    assert said.startswith("Console connection lost since ") and f"(site time, {ZONE})" in said
    assert "NOT live" in said and page.inner_text("#service-state") == "Service state unknown"
    assert page.evaluate("document.body.classList.contains('offline')"), "the tiles are greyed"
    shot(page, "wall-console-lost.png")

    console.start()  # back, the session still open: live again, the lost state gone
    page.wait_for_function("() => window.lanewatch.connected && document.getElementById('connection').hidden")
    assert not page.evaluate("document.body.classList.contains('offline')")

    console.kill()
    page.wait_for_selector("#connection:not([hidden])")
    console.sessions("UPDATE sessions SET last_seen = last_seen - ?", IDLE_TIMEOUT_S * 2)  # it ended meanwhile
    console.start()
    page.wait_for_url("**/login?next=/")  # not frozen: the login page, then back to the wall
    page.fill("input[name=name]", "olga")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#wall .tile")
    page.wait_for_function("() => window.lanewatch.connected === true")
    assert page.url == console.url + "/"
    page.context.close()


def test_an_open_visible_wall_keeps_its_session_and_an_act_after_it_ended_comes_back_unrecorded(
    browser: Any,  # noqa: F811
    console: Console,
) -> None:
    """An alarm station's wall is watched, not clicked: while it is open and visible its session stays open. A
    form sent after the session ended anyway is not recorded, and after logging in the officer is back on the page
    it was sent from, told so (it went to the form's action, a 405, and the acknowledgement was lost)."""
    page = open_wall(browser, console)
    aged = time.time() - IDLE_TIMEOUT_S / 2  # as if half the idle timeout had gone by without a click
    console.sessions("UPDATE sessions SET last_seen = ?", aged)
    wait_for(  # it signs every third of the idle timeout
        "the wall to keep its session open",
        lambda: console.sessions("SELECT max(last_seen) FROM sessions")[0][0] > aged,
        [console.proc],
    )

    console.sessions("UPDATE sessions SET last_seen = last_seen - ?", IDLE_TIMEOUT_S * 2)  # ended, say overnight
    banner = page.locator("#banner")
    seq = banner.locator("a").first.inner_text().removeprefix("decision ")
    banner.locator("button", has_text="Acknowledge").first.click()
    page.wait_for_url("**/login?**")
    said = page.inner_text(".unrecorded")
    assert f"the acknowledgement of decision {seq} was NOT recorded" in said
    page.fill("input[name=name]", "olga")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#wall .tile")
    assert page.url.startswith(console.url + "/?unrecorded=")
    assert f"the acknowledgement of decision {seq} was NOT recorded" in page.inner_text(".unrecorded")
    shot(page, "wall-act-unrecorded.png")
    with sqlite3.connect(console.root / "journal.db") as conn:
        acts = conn.execute("SELECT count(*) FROM adjudications WHERE seq = ?", (int(seq),)).fetchone()[0]
    assert acts == 0, "nothing was recorded"
    page.context.close()


def test_mute_silences_the_alarms_sounding_then_a_new_alarm_sounds_and_unmute_ends_it(
    browser: Any,  # noqa: F811
    site: Config,  # noqa: F811
) -> None:
    """The console in this process (uvicorn, the feeds off): a new alarm is put on its wall as the alert bus would."""
    app = create_app(site, secure=False, start_feeds=False)
    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for("uvicorn", lambda: server.started, [])
        page = browser.new_context(viewport={"width": 1400, "height": 950}).new_page()
        page.set_default_timeout(60_000)
        page.goto(f"http://127.0.0.1:{port}/")
        page.fill("input[name=name]", "olga")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_function("() => document.body.dataset.sound === 'on'")
        page.click("#mute")
        page.wait_for_function("() => document.body.dataset.sound === 'muted'")
        assert page.inner_text("#mute") == "Unmute"
        until = page.evaluate("() => JSON.parse(localStorage.getItem('lanewatch-mute:olga')).until")
        local = datetime.fromtimestamp(until / 1000, ZoneInfo(site.console.timezone)).strftime("%H:%M:%S")
        assert f"Sound muted until {local} (site time)" in page.inner_text("#sound-state")
        shot(page, "wall-muted.png")

        console = app.state.console  # a new alarm on the other lane: it sounds, the mute was for the earlier ones
        console.wall.on_decision(msgspec.structs.replace(console.journal.get(2), seq=100, lane="lane1"))
        console.hub.publish(Event("wall", None, json.dumps(console.wall.snapshot())))
        page.wait_for_function("() => document.body.dataset.sound === 'on'")
        assert "muted" not in page.inner_text("#sound-state")

        page.click("#mute")  # now the new one too
        page.wait_for_function("() => document.body.dataset.sound === 'muted'")
        page.click("#mute")  # and unmuted before the time is up
        page.wait_for_function("() => document.body.dataset.sound === 'on'")
        assert page.inner_text("#mute").startswith("Mute sound")
        page.context.close()
    finally:
        server.should_exit = True
        thread.join(30)
