"""The operators' console in a real browser: Playwright drives Debian's Chromium against ``lanewatch demo``.

Everything is a real process: the demo's simulated lanes, drivers and service (CURVE bus), ``lanewatch users``
and ``lanewatch console`` over HTTPS with a self-signed certificate. Screenshots of the wall and of a
decision's detail are saved in ``$LANEWATCH_ARTIFACTS`` (default ``test-artifacts/``) as test artefacts.
Chromium comes from ``make system-deps`` (apt); Playwright never downloads a browser here.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
import zoneinfo
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from lanewatch.edge.commands.demo import free_ports
from lanewatch.edge.ops.units import self_signed_pair

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("LANEWATCH_ARTIFACTS", REPO / "test-artifacts")) / "console"
CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery"
ZONE = "Europe/Amsterdam"
TIMEOUT_S = 300.0
"""Longest wait for the demo to start and for its first alarm (the first run compiles the kernels)."""

pytestmark = pytest.mark.slow


def wait_for(what: str, check: Callable[[], bool], procs: list[subprocess.Popen], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"{what}: {proc.args} exited {proc.returncode}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.2)


class Site:
    """The demo and a console over it; ``url`` is the console's base URL."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen] = []
        lanewatch = str(Path(sys.executable).parent / "lanewatch")
        self.lanewatch = lanewatch
        demo = [lanewatch, "demo", "--lanes", "2", "--speedup", "3", "--no-console", "--workdir", str(root)]
        self._start("demo", demo)
        demo_config = root / "lanewatch.toml"
        wait_for("the demo's configuration", demo_config.exists, self.procs, TIMEOUT_S)
        cert, key = self_signed_pair("localhost")
        (root / "console-cert.pem").write_bytes(cert)
        (root / "console-key.pem").write_bytes(key)
        port, http = free_ports(2)
        self.url = f"https://127.0.0.1:{port}"
        console = re.sub(  # the demo's own [console] section, replaced by this test's
            r"\[console\]\n(?:[^\[\n].*\n)*",
            f'[console]\nlisten = "127.0.0.1:{port}"\nhttp = "127.0.0.1:{http}"\n'
            f'certificate = "{root}/console-cert.pem"\nkey = "{root}/console-key.pem"\ntimezone = "{ZONE}"\n\n',
            demo_config.read_text(),
        )
        self.config = root / "console.toml"
        self.config.write_text(console)
        for name, role in (("olga", "operator"), ("ada", "admin")):
            subprocess.run(
                [lanewatch, "users", "add", name, "--role", role, "--config", str(self.config)],
                input=PASSWORD + "\n", text=True, check=True, capture_output=True, timeout=60,
            )  # fmt: skip
        self._start("console", [lanewatch, "console", "--config", str(self.config)])

        def answers() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for("the console", answers, self.procs, TIMEOUT_S)

    def _start(self, name: str, argv: list[str]) -> None:
        log = (self.root.parent / f"{name}.log").open("w")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True))

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        for proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: `make system-deps` installs Debian's chromium")
    root = tmp_path_factory.mktemp("console") / "site"
    root.mkdir()
    running = Site(root)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    args = ["--autoplay-policy=no-user-gesture-required"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium's sandbox refuses to run as root (CI containers)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        yield chromium
        chromium.close()


def new_page(browser: Any, site: Site) -> Any:
    # the console's certificate is the self-signed one install-units would make
    viewport = {"width": 1400, "height": 950}
    context = browser.new_context(ignore_https_errors=True, viewport=viewport, accept_downloads=True)
    context.set_default_timeout(30_000)
    return context.new_page()


def log_in(page: Any, site: Site, name: str) -> None:
    page.goto(site.url + "/")
    assert "/login" in page.url
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#wall .tile")


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_operator_sees_an_alarm_acknowledges_adjudicates_finds_and_downloads_it(browser: Any, site: Site) -> None:
    page = new_page(browser, site)
    log_in(page, site, "olga")
    page.wait_for_selector("#wall .tile[data-status=alarm], #wall .tile.awaiting", timeout=TIMEOUT_S * 1000)
    banner = page.locator("#banner")
    banner.wait_for(state="visible")
    assert "ALARM" in banner.inner_text()
    page.wait_for_function("window.lanewatch && window.lanewatch.sounding === true")
    assert page.evaluate("document.body.dataset.sound") == "on"
    wall = shot(page, "wall.png")
    assert wall.stat().st_size > 10_000

    # acknowledge the first unacknowledged alarm from the banner
    link = banner.locator("a").first
    seq = int(re.search(r"decision (\d+)", link.inner_text()).group(1))
    banner.locator("button", has_text="Acknowledge").first.click()
    page.wait_for_url(site.url + "/")
    page.goto(f"{site.url}/decision/{seq}")
    assert page.locator("h1 .state").inner_text() == "acknowledged"

    # another console has the same decision open
    other = new_page(browser, site)
    log_in(other, site, "ada")
    other.goto(f"{site.url}/decision/{seq}")
    other.wait_for_function("document.getElementById('updated') !== null")

    # adjudicate with a note and the handheld identifier's N42 file
    form = page.locator("#adjudicate")
    form.locator("select[name=disposition]").select_option("innocent")
    form.locator("select[name=secondary]").select_option("source-found")
    form.locator("textarea[name=notes]").fill("Industrial gauge, papers checked (browser test)")
    form.locator("input[name=n42]").set_input_files(str(REPO / "tests" / "data" / "riid-cs137.n42"))
    form.locator("button[type=submit]").click()
    page.wait_for_selector("h1 .state.disposed")
    history = page.locator("table.history").inner_text()
    assert "Cs-137, K-40" in history and "Industrial gauge, papers checked" in history and "olga" in history
    assert page.locator("svg.figure").count() == 1
    shot(page, "detail.png")
    other.wait_for_selector("h1 .state.disposed", timeout=60_000)  # the other console agrees, unprompted
    assert "Industrial gauge, papers checked" in other.locator("table.history").inner_text()

    # find it by the date filter, in the site's local time
    ended = page.locator(".meta time").get_attribute("title")  # "YYYY-MM-DD HH:MM:SS UTC"
    when = datetime.strptime(ended, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=zoneinfo.ZoneInfo("UTC"))
    day = when.astimezone(zoneinfo.ZoneInfo(ZONE)).date().isoformat()
    page.goto(site.url + "/decisions")
    page.fill("input[name=from]", day)
    page.fill("input[name=to]", day)
    page.select_option("select[name=state]", "disposed")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r".*from=.*"))
    assert page.locator(f'table.events a[href="/decision/{seq}"]').count() == 1
    shot(page, "events.png")

    # the evidence bundle: its manifest holds every other file's SHA-256
    page.goto(f"{site.url}/decision/{seq}")
    with page.expect_download() as download_info:
        page.click("#evidence")
    download = download_info.value
    target = ARTIFACTS / f"evidence-{seq}.zip"
    download.save_as(str(target))
    archive = zipfile.ZipFile(io.BytesIO(target.read_bytes()))
    sums = f"decision-{seq}.sha256"  # beside the folder, its paths relative to where the ZIP is unpacked
    manifest = archive.read(sums).decode().splitlines()
    files = {name: archive.read(name) for name in archive.namelist() if name != sums}
    assert sorted(manifest) == sorted(f"{hashlib.sha256(body).hexdigest()}  {name}" for name, body in files.items())
    assert "Industrial gauge" in files[f"decision-{seq}/adjudications.json"].decode()


def test_operator_is_refused_the_users_page_and_a_form_without_its_token(browser: Any, site: Site) -> None:
    page = new_page(browser, site)
    log_in(page, site, "olga")
    response = page.goto(site.url + "/users")
    assert response.status == 403 and "Not allowed" in page.inner_text("h1")

    page.goto(site.url + "/decisions?state=unacknowledged")
    page.wait_for_selector("table.events a", timeout=TIMEOUT_S * 1000)
    page.locator("table.events td a").first.click()
    page.wait_for_selector("form[action$=acknowledge]")
    page.evaluate("document.querySelector('form[action$=acknowledge] input[name=csrf]').remove()")
    with page.expect_navigation():
        page.click("#acknowledge")
    assert "anti-forgery" in page.inner_text("main")
    assert page.locator("h1").inner_text() == "Not allowed"
    page.go_back()
    page.reload()
    assert page.locator("h1 .state").inner_text() == "unacknowledged", "the refused form recorded nothing"


def test_admin_adds_a_user_in_the_browser(browser: Any, site: Site) -> None:
    page = new_page(browser, site)
    log_in(page, site, "ada")
    page.goto(site.url + "/users")
    page.fill("form.form-grid input[name=name]", "nina")
    page.select_option("form.form-grid select[name=role]", "supervisor")
    page.fill("form.form-grid input[name=password]", PASSWORD)
    page.click("button[value=add]")
    assert "nina" in page.locator("table.grid").inner_text()
    listed = subprocess.run(
        [site.lanewatch, "users", "list", "--config", str(site.config)], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"^nina\s+supervisor", listed, re.M)
