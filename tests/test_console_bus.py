"""Two consoles agree at once: an act recorded on one reaches the other's event stream over the alert bus.

Every part is a real process on loopback: the service (CURVE bus, keys made by ``lanewatch keys``) over a journal
seeded with the decisions of tests/data/console-decisions.json.gz, and two ``lanewatch console`` processes, each
with a console key of its own, sharing the journal and the users database. The consoles read the journal for
missed acts only once an hour here (``adjudication_resync_s``), so what the second console shows can only have
come over the bus; its event says so (``via: bus``), and so do its metrics.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_console import PASSWORD, seed_site
from test_ops import http_get, wait_for

from lanewatch.edge.commands.demo import free_ports
from lanewatch.edge.decisions.journal import Journal

pytestmark = pytest.mark.slow
EXE = str(Path(sys.executable).parent / "lanewatch")


def metric(address: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text at ``http://address/metrics`` (0 when absent)."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in http_get(address, "/metrics")[1].decode().splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == want:
            return float(value)
    return 0.0


class Site:
    """The service and two consoles (``a`` and ``b``) as processes; ``url``/``http`` of each console."""

    def __init__(self, root: Path) -> None:
        ports = free_ports(9)
        self.root = root
        self.service_http = f"127.0.0.1:{ports[0]}"
        base = f"""
[service]
journal = "{root / "journal.db"}"
http = "{self.service_http}"
[bus]
ingest = "tcp://127.0.0.1:{ports[1]}"
alerts = "tcp://127.0.0.1:{ports[2]}"
query = "tcp://127.0.0.1:{ports[3]}"
keys = "{root / "keys"}"
[model]
path = ""
[[lanes]]
id = "lane1"
[[lanes]]
id = "lane2"
"""
        (root / "service.toml").write_text(base)
        self.url: dict[str, str] = {}
        self.http: dict[str, str] = {}
        for name, listen, http in (("a", ports[4], ports[5]), ("b", ports[6], ports[7])):
            self.url[name], self.http[name] = f"http://127.0.0.1:{listen}", f"127.0.0.1:{http}"
            console = (
                f'[console]\nlisten = "127.0.0.1:{listen}"\nhttp = "127.0.0.1:{http}"\nplain_http = true\n'
                f"adjudication_resync_s = 3600\n"
            )
            (root / f"console-{name}.toml").write_text(base.replace("[[lanes]]", console + "[[lanes]]", 1))
        seed_site(root / "journal.db", root / "lanewatch-console.db", {"olga": "operator"})
        config = str(root / "service.toml")
        subprocess.run([EXE, "keys", "--config", config, "init"], check=True, capture_output=True, timeout=60)
        subprocess.run([EXE, "keys", "--config", config, "console", "console-b"], check=True, capture_output=True)
        self.procs: list[subprocess.Popen] = []
        self._start("service", [EXE, "run", "--config", config])
        wait_for("the service's /healthz", lambda: http_get(self.service_http, "/healthz")[0] in (200, 503), self.procs)
        self._start("console-a", [EXE, "console", "--config", str(root / "console-a.toml")])
        self._start("console-b", [EXE, "console", "--config", str(root / "console-b.toml"), "--key", "console-b"])
        for name in ("a", "b"):
            answers = lambda n=name: http_get(self.http[n], "/healthz")[0] == 200  # noqa: E731
            wait_for(f"console {name}'s /healthz", answers, self.procs)
        # both consoles follow the bus (their subscriptions to decisions and acts are made together)
        wait_for("two subscribers", lambda: metric(self.service_http, "lanewatch_alert_subscribers") >= 2, self.procs)

    def _start(self, name: str, argv: list[str]) -> None:
        log = (self.root / f"{name}.log").open("wb")
        env = {**os.environ, "NUMBA_CACHE_DIR": str(self.root / "numba")}
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env))
        log.close()

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("two-consoles")
    running = None
    try:
        running = Site(root)
        yield running
    except BaseException:
        for log in sorted(root.glob("*.log")):
            print(f"---- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        if running is not None:
            running.close()


def logged_in(url: str) -> httpx.Client:
    http = httpx.Client(base_url=url, timeout=60, follow_redirects=True)
    token = re.search(r'name="csrf" value="([^"]+)"', http.get("/login").text).group(1)
    assert http.post("/login", data={"name": "olga", "password": PASSWORD, "csrf": token}).status_code in (200, 303)
    return http


def test_an_act_on_one_console_reaches_the_others_event_stream_over_the_bus(site: Site) -> None:
    with Journal(site.root / "journal.db", readonly=True) as journal:
        seq = next(d.seq for d in journal.since(0) if d.verdict == "ALARM")
    a, b = logged_in(site.url["a"]), logged_in(site.url["b"])
    events: list[tuple[str, dict]] = []
    opened, arrived = threading.Event(), threading.Event()

    def follow() -> None:
        name = ""
        with b.stream("GET", "/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
                    opened.set()
                    if name == "adjudication" and events[-1][1]["seq"] == seq:
                        arrived.set()
                        return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert opened.wait(60), "console b's event stream sent nothing"
    token = re.search(r'name="csrf" content="([^"]+)"', a.get("/").text).group(1)
    assert a.post(f"/decision/{seq}/acknowledge", data={"csrf": token}).status_code == 200
    assert arrived.wait(60), f"console b's stream did not show the act; it sent {events}"
    act = next(data for name, data in events if name == "adjudication")
    assert act == {"id": act["id"], "seq": seq, "kind": "acknowledge", "user": "olga", "via": "bus"}
    assert metric(site.http["b"], "lanewatch_console_adjudications_total", kind="acknowledge", via="bus") == 1
    wait_for(
        "console a to show its own act",
        lambda: metric(site.http["a"], "lanewatch_console_adjudications_total", kind="acknowledge", via="local") == 1,
        site.procs,
    )
    assert metric(site.service_http, "lanewatch_journal_queries_total", op="adjudicated") == 1
    assert metric(site.http["b"], "lanewatch_console_bus_lag_seconds_count") == 1
    assert b.get("/wall.json").json()["lanes"][0]["awaiting"][0]["state"] in ("acknowledged", "unacknowledged")
    b.close()
    a.close()


def test_a_console_started_later_shows_every_act_from_the_journal(site: Site) -> None:
    """Nothing is lost to a console that was not running: the journal holds every act (append-only)."""
    with Journal(site.root / "journal.db", readonly=True) as journal:
        seq = [d.seq for d in journal.since(0) if d.verdict == "ALARM"][1]
    a = logged_in(site.url["a"])
    token = re.search(r'name="csrf" content="([^"]+)"', a.get("/").text).group(1)
    form = {"csrf": token, "disposition": "background", "notes": "rescanned clean"}
    assert a.post(f"/decision/{seq}/adjudicate", data=form).status_code == 200
    proc = site.procs[2]
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    site._start("console-b", [EXE, "console", "--config", str(site.root / "console-b.toml"), "--key", "console-b"])
    wait_for("console b again", lambda: http_get(site.http["b"], "/healthz")[0] == 200, site.procs[:2] + site.procs[3:])
    b = logged_in(site.url["b"])
    awaiting = [item["seq"] for lane in b.get("/wall.json").json()["lanes"] for item in lane["awaiting"]]
    assert seq not in awaiting, "disposed while console b was down: not awaiting on its wall"
    assert "rescanned clean" in b.get(f"/decision/{seq}").text
    a.close()
    b.close()


def test_a_console_that_cannot_bind_says_which_key_and_exits_1(site: Site) -> None:
    taken = site.url["a"].removeprefix("http://")
    config = site.root / "console-c.toml"
    config.write_text((site.root / "console-a.toml").read_text().replace(site.http["a"], "127.0.0.1:0"))
    proc = subprocess.run([EXE, "console", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"console.listen: cannot bind {taken}: Address already in use" in proc.stderr
    assert "serving" not in proc.stderr
    config.write_text((site.root / "console-a.toml").read_text().replace(taken, "127.0.0.1:0"))
    proc = subprocess.run([EXE, "console", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"console.http: cannot bind {site.http['a']}: Address already in use" in proc.stderr
    assert "serving" not in proc.stderr


def test_the_consoles_metrics_pass_promtool_and_healthz_reports(site: Site) -> None:
    from test_ops import exported_names, tool

    code, body = http_get(site.http["a"], "/metrics")
    assert code == 200
    proc = subprocess.run([tool("promtool"), "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout and not proc.stderr, (proc.stdout + proc.stderr).decode()
    scraped = {line.split("{")[0].split(" ")[0] for line in body.decode().splitlines() if line and line[0] != "#"}
    assert scraped <= exported_names(), f"exported but unknown to the metric sets: {scraped - exported_names()}"
    assert {
        "lanewatch_console_requests_total",
        "lanewatch_console_request_duration_seconds_bucket",
        "lanewatch_console_sse_clients",
        "lanewatch_console_service_reachable",
        "process_start_time_seconds",
    } <= scraped
    assert metric(site.http["a"], "lanewatch_console_requests_total", route="/login", status="200") >= 1
    with urllib.request.urlopen(f"http://{site.http['a']}/healthz", timeout=10) as response:
        health = json.loads(response.read())
    assert health["ok"] and health["journal"]["last_seq"] == 7 and health["service"]["reachable"] is True


def test_a_console_stops_at_once_while_a_browser_holds_its_event_stream(site: Site) -> None:
    """systemd stops the console with SIGTERM while walls are open: their event streams never end by themselves, and
    the console does not wait for them (it waited until every browser had gone, and systemd killed it)."""
    a = logged_in(site.url["a"])
    opened, ended = threading.Event(), threading.Event()
    names: list[str] = []

    def follow() -> None:
        with contextlib.suppress(httpx.HTTPError), a.stream("GET", "/events") as stream:
            for line in stream.iter_lines():
                opened.set()
                if line.startswith("event: "):
                    names.append(line[7:])
        ended.set()

    threading.Thread(target=follow, daemon=True).start()
    assert opened.wait(60), "console a's event stream sent nothing"
    proc = site.procs[1]
    proc.send_signal(signal.SIGTERM)
    # the stream is told and ends, rather than being cut after SHUTDOWN_GRACE_S with the browser none the wiser
    assert ended.wait(120), "the event stream did not end"
    assert names[-1:] == ["closing"], f"the stream's last event was not 'closing': {names[-5:]}"
    try:
        code = proc.wait(120)  # it cancels the stream after SHUTDOWN_GRACE_S; without that bound it never exits
    except subprocess.TimeoutExpired:
        code = None
        proc.kill()
        proc.wait()
    a.close()
    site._start("console-a", [EXE, "console", "--config", str(site.root / "console-a.toml")])
    site.procs[1] = site.procs.pop()  # in the stopped one's place
    running = [proc for proc in site.procs if proc.poll() is None]  # (an earlier test stopped one console b)
    wait_for("console a again", lambda: http_get(site.http["a"], "/healthz")[0] == 200, running)
    # uvicorn ends by raising the signal it caught again, so a clean stop reads as "killed by SIGTERM"
    assert code in (0, -signal.SIGTERM), "the console did not stop with an event stream open"
