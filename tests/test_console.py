"""The operators' console over HTTP (Starlette's TestClient, a real journal and users database in SQLite).

tests/data/console-decisions.json.gz holds seven decisions journaled by ``lanewatch demo`` (seed 2007):
CLEAR, image review, gamma with the portal's alarm, NORM release, neutron, shielded source, neutron-gamma.
tests/data/riid-cs137.n42 is a handheld identifier's N42.42-2011 file naming Cs-137 and K-40 in its
analysis results.
"""

from __future__ import annotations

import csv
import gzip
import html
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import msgspec
import pytest
from starlette.testclient import TestClient
from support import typed

from lanewatch.edge import config as config_module
from lanewatch.edge.bus.records import Kind, Record
from lanewatch.edge.commands import alerts
from lanewatch.edge.commands.schema import schema
from lanewatch.edge.config import Config, ConfigError, DetectionConfig, ModelConfig
from lanewatch.edge.console.adjudication import (
    AdjudicationError,
    Adjudications,
    EventFilter,
    RowFields,
    adjudication_state,
)
from lanewatch.edge.console.app import LoginLimiter, create_app, n42_nuclides
from lanewatch.edge.console.health import Health, HealthHistory, LaneHealth, SensorHealth
from lanewatch.edge.console.present import (
    INCOMPLETE_NAMES,
    Clock,
    incomplete_causes,
    norm_state,
    reasons,
    summary,
    utc_label,
)
from lanewatch.edge.console.users import UserStore, users_path
from lanewatch.edge.decisions.adjudication import Adjudication
from lanewatch.edge.decisions.decision import Decision, ProvisionalAlarm, build_missed, verdict_of
from lanewatch.edge.decisions.journal import Journal
from lanewatch.edge.lane.detect import device_alarm_entry
from lanewatch.edge.model.calibration import Calibrated
from lanewatch.edge.model.runtime import apply_policy

DATA = Path(__file__).parent / "data"
PASSWORD = "correct horse battery"
S = 1_000_000_000
ROLES = {"olga": "operator", "sam": "supervisor", "ada": "admin"}


def decisions() -> list[dict[str, Any]]:
    with gzip.open(DATA / "console-decisions.json.gz", "rt") as f:
        return json.load(f)


def site_config(tmp_path: Path, **console: Any) -> Config:
    settings = {"timezone": "Europe/Amsterdam", "plain_http": False, **console}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    text = f"""
[service]
journal = "{tmp_path / "journal.db"}"
http = "127.0.0.1:9"
[console]
{lines}
[[lanes]]
id = "lane1"
[[lanes]]
id = "lane2"
"""
    return config_module.parse(text, "test.toml")


def seed_site(journal: Path, users: Path | None = None, roles: dict[str, str] = ROLES) -> None:
    """Journal the decisions of tests/data/console-decisions.json.gz at ``journal``, on lanes 1 and 2 alternately, and
    give the users database at ``users`` (if any) the users of ``roles`` (name -> role)."""
    with Journal(journal) as journaled:
        for i, decision in enumerate(decisions()):
            decision["lane"] = f"lane{1 + i % 2}"
            journaled.append(decision)
    if users is None:
        return
    store = UserStore(users)
    for name, role in roles.items():
        store.add(name, role, PASSWORD)
    store.close()


@pytest.fixture
def site(tmp_path: Path) -> Config:
    config = site_config(tmp_path)
    seed_site(Path(config.service.journal), users_path(config))
    return config


@pytest.fixture
def client(site: Config) -> Iterator[TestClient]:
    with TestClient(create_app(site, start_feeds=False), base_url="https://testserver") as client:
        yield client


def login(client: TestClient, name: str, password: str = PASSWORD) -> Any:
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return client.post("/login", data={"name": name, "password": password, "csrf": token}, follow_redirects=False)


def csrf(client: TestClient, path: str = "/") -> str:
    return re.search(r'name="csrf" content="([^"]+)"', client.get(path).text).group(1)


def seq_of(client: TestClient, reason: str) -> int:
    with Journal(client.app.state.console.config.service.journal, readonly=True) as journal:
        return next(d.seq for d in journal.since(0) if any(a.reason == reason for a in d.alarms))


# ---- login, sessions, roles --------------------------------------------------------------------------
def test_login_sets_a_secure_httponly_samesite_cookie_and_is_audited(client: TestClient) -> None:
    assert client.get("/", follow_redirects=False).headers["location"].startswith("/login")
    response = login(client, "olga")
    assert response.status_code == 303
    cookie = next(v for k, v in response.headers.multi_items() if k == "set-cookie" and "lw_session=" in v)
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    wall = client.get("/")
    assert wall.status_code == 200 and "olga · operator" in wall.text
    assert "default-src 'self'" in wall.headers["content-security-policy"]
    assert login(client, "olga", "wrong password").status_code == 401
    log = client.app.state.console.users.audit_log()
    assert [(e.user, e.action) for e in log[:2]] == [("olga", "login-failed"), ("olga", "login")]


def test_login_without_its_form_token_is_refused(client: TestClient) -> None:
    response = client.post("/login", data={"name": "olga", "password": PASSWORD}, follow_redirects=False)
    assert response.status_code == 403
    assert "lw_session" not in response.cookies


def test_a_flood_of_bad_logins_for_one_name_refuses_that_name_only(client: TestClient) -> None:
    """Every console behind one address (loopback, a proxy): a program guessing olga's password there must not
    lock sam out, nor have olga's password checked more than the limit allows."""
    outcomes = [login(client, "olga", f"guess {i}").status_code for i in range(20)]
    assert outcomes == [401] * 5 + [429] * 15
    refused = login(client, "olga")
    assert refused.status_code == 429 and "Too many failed logins for olga: try again in" in refused.text
    assert login(client, "sam").status_code == 303, "another user on the same address logs in"
    actions = [entry.action for entry in client.app.state.console.users.audit_log()]
    assert actions[:2] == ["login", "login-refused"] and actions.count("login-failed") == 5
    assert actions.count("login-refused") == 16
    metrics = client.app.state.console.metrics.registry
    assert metrics.get_sample_value("lanewatch_console_login_failures_total", {"outcome": "failed"}) == 5
    assert metrics.get_sample_value("lanewatch_console_login_failures_total", {"outcome": "refused"}) == 16


def test_the_login_backoff_of_an_account_is_bounded() -> None:
    """Wrong passwords for olga from many addresses (one each, so no address is over its own limit): each try
    waits longer, but never more than the window, so the right password gets in once the flood stops."""
    limiter = LoginLimiter(attempts=5, window_s=300.0)
    now = 1000.0
    for i in range(200):
        now += limiter.wait_s("olga", f"10.0.{i // 250}.{i % 250}", now)  # the attacker waits exactly as told
        limiter.failed("olga", f"10.0.{i // 250}.{i % 250}", now)
    assert 0 < limiter.wait_s("olga", "192.0.2.7", now + 1) <= 300.0
    assert limiter.wait_s("olga", "192.0.2.7", now + 300.0) == 0.0, "never locked out for good"
    assert limiter.wait_s("sam", "10.0.0.1", now) == 0.0, "other accounts are not touched"
    waits = [limiter.wait_s("eve", "10.9.9.9", 0.0)]
    for attempt in range(8):
        limiter.failed("eve", f"10.9.9.{attempt}", 0.0)
        waits.append(limiter.wait_s("eve", "10.9.9.9", 0.0))
    assert waits == [0.0] * 5 + [1.0, 2.0, 4.0, 8.0], "1 s after the limit, doubling"


def test_idle_session_is_closed(client: TestClient, site: Config) -> None:
    login(client, "olga")
    assert client.get("/", follow_redirects=False).status_code == 200
    store = client.app.state.console.users
    token = client.cookies["lw_session"]
    with sqlite3.connect(users_path(site)) as conn:  # as if the last request was long ago
        conn.execute("UPDATE sessions SET last_seen = last_seen - ?", (site.console.idle_timeout_s - 1,))
    assert store.session(token, site.console.idle_timeout_s, touch=False) is not None
    with sqlite3.connect(users_path(site)) as conn:
        conn.execute("UPDATE sessions SET last_seen = last_seen - 2")
    assert store.session(token, site.console.idle_timeout_s, touch=False) is None, "an event stream's check is no use"
    assert client.get("/", follow_redirects=False).headers["location"] == "/login?next=/"


def test_a_form_sent_after_the_session_ended_returns_to_its_page_after_login_saying_it_was_not_recorded(
    client: TestClient, site: Config
) -> None:
    login(client, "olga")
    token = csrf(client, "/decision/3")
    with sqlite3.connect(users_path(site)) as conn:
        conn.execute("UPDATE sessions SET last_seen = last_seen - ?", (site.console.idle_timeout_s + 1,))
    sent = client.post(
        "/decision/3/adjudicate", data={"csrf": token, "disposition": "norm"}, follow_redirects=False,
        headers={"Referer": "https://testserver/decision/3"},
    )  # fmt: skip
    assert sent.status_code == 303
    location = "/login?next=/decision/3%3Funrecorded%3D/decision/3/adjudicate&unrecorded=/decision/3/adjudicate"
    assert sent.headers["location"] == location
    said = "Your session had ended: the adjudication of decision 3 was NOT recorded. Log in and do it again."
    assert said in html.unescape(client.get(sent.headers["location"]).text)
    back = login(client, "olga")  # the login form carries the page to return to
    assert back.status_code == 303
    page = client.get("/login?" + sent.headers["location"].split("?", 1)[1])
    target = html.unescape(re.search(r'name="next" value="([^"]+)"', page.text).group(1))
    assert target == "/decision/3?unrecorded=/decision/3/adjudicate"
    shown = client.get(target)
    assert shown.status_code == 200 and said in html.unescape(shown.text)
    assert client.app.state.console.adjudications.history(3) == [], "nothing was recorded"
    # from another site, or with no Referer: back to the wall, not to the form's action (a GET there is 405)
    client.cookies.clear()
    sent = client.post("/decision/3/acknowledge", data={}, headers={"Referer": "https://elsewhere/decision/3"},
                       follow_redirects=False)  # fmt: skip
    unrecorded = "unrecorded=/decision/3/acknowledge"
    assert sent.headers["location"] == f"/login?next=/%3F{unrecorded.replace('=', '%3D')}&{unrecorded}"
    assert client.get("/login").headers["referrer-policy"] == "same-origin", "the browser sends the form's page"


def test_users_list_names_a_missing_users_file_and_makes_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lanewatch users list`` with a forgotten --config: an error naming the file it looked for, not an empty list
    and a new database in the current folder."""
    import argparse

    from lanewatch.edge.console import users

    parser = argparse.ArgumentParser()
    users.add_arguments(parser)
    config = site_config(tmp_path)
    assert users.run(parser.parse_args(["list"]), config) == 1
    err = capsys.readouterr().err
    assert f"no users file {users_path(config)} (configuration: {config.source})" in err
    assert not users_path(config).exists()
    store = UserStore(users_path(config))
    store.add("olga", "operator", PASSWORD)
    store.close()
    assert users.run(parser.parse_args(["list"]), config) == 0
    assert capsys.readouterr().out.split()[:2] == ["olga", "operator"]


def test_users_role_and_passwd_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lanewatch users role NAME --role R`` and ``users passwd NAME`` (the password from stdin), audited as the CLI;
    an unknown user or a short password is refused in words."""
    import argparse
    import io

    from lanewatch.edge.console import users

    parser = argparse.ArgumentParser()
    users.add_arguments(parser)
    config = site_config(tmp_path)
    store = UserStore(users_path(config))
    store.add("olga", "operator", PASSWORD)
    assert users.run(parser.parse_args(["role", "olga", "--role", "supervisor"]), config) == 0
    assert users.run(parser.parse_args(["role", "nobody", "--role", "admin"]), config) == 1
    assert "no user 'nobody'" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert users.run(parser.parse_args(["passwd", "olga"]), config) == 1
    assert "at least 8 characters" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("a new passphrase\n"))
    assert users.run(parser.parse_args(["passwd", "olga"]), config) == 0
    assert store.get("olga").role == "supervisor" and store.verify("olga", "a new passphrase") is not None
    assert [(e.user, e.action) for e in store.audit_log()[:2]] == [("cli", "password-set"), ("cli", "role-set")]
    store.close()


def test_operator_is_refused_the_users_page_and_an_admin_adds_a_user(client: TestClient) -> None:
    login(client, "olga")
    assert client.get("/users").status_code == 403
    assert client.get("/audit").status_code == 403
    login(client, "ada")
    token = csrf(client, "/users")
    form = {"csrf": token, "action": "add", "name": "nina", "role": "operator", "password": PASSWORD}
    assert "nina" in client.post("/users", data=form).text
    assert client.app.state.console.users.get("nina").role == "operator"
    assert "too short" not in client.post("/users", data={**form, "name": "x", "password": "short"}).text
    assert "at least 8 characters" in client.post("/users", data={**form, "name": "x", "password": "short"}).text


def test_an_admin_changes_a_role_and_resets_a_password(client: TestClient) -> None:
    """A role change acts from the user's next request; a new password closes the user's sessions and the old one no
    longer logs in; an admin cannot change their own role (the site keeps an admin); both are audited."""
    login(client, "olga")
    assert client.get("/reports").status_code == 403
    olga_cookies = dict(client.cookies)
    login(client, "ada")
    token = csrf(client, "/users")
    page = client.post("/users", data={"csrf": token, "action": "role", "name": "olga", "role": "supervisor"})
    assert page.status_code == 200 and "error" not in page.text.split("<h1>Users</h1>", 1)[1].split("<table", 1)[0]
    assert client.app.state.console.users.get("olga").role == "supervisor"
    refused = client.post("/users", data={"csrf": token, "action": "role", "name": "ada", "role": "operator"})
    assert "you cannot change the role of yourself" in refused.text
    assert client.app.state.console.users.get("ada").role == "admin"
    admin_cookies = dict(client.cookies)
    client.cookies.clear()
    client.cookies.update(olga_cookies)
    assert client.get("/reports").status_code == 200, "the open session acts with the new role"
    client.cookies.clear()
    client.cookies.update(admin_cookies)
    short = client.post("/users", data={"csrf": token, "action": "password", "name": "olga", "password": "short"})
    assert "at least 8 characters" in short.text
    new = {"csrf": token, "action": "password", "name": "olga", "password": "a new passphrase"}
    assert "olga has a new password; their sessions were closed" in client.post("/users", data=new).text
    client.cookies.clear()
    client.cookies.update(olga_cookies)
    assert client.get("/reports", follow_redirects=False).status_code == 303, "her session was closed"
    users = client.app.state.console.users
    assert users.verify("olga", PASSWORD) is None and users.verify("olga", "a new passphrase") is not None
    assert [(e.user, e.action, e.detail) for e in users.audit_log()[:2]] == [
        ("ada", "password-set", "olga"),
        ("ada", "role-set", "olga as supervisor"),
    ]


def test_a_form_without_its_csrf_token_is_refused(client: TestClient) -> None:
    login(client, "olga")
    seq = seq_of(client, "neutron")
    response = client.post(f"/decision/{seq}/acknowledge", data={})
    assert response.status_code == 403 and "anti-forgery" in response.text
    response = client.post(f"/decision/{seq}/acknowledge", data={"csrf": "forged"})
    assert response.status_code == 403
    assert client.app.state.console.adjudications.history(seq) == []
    assert client.app.state.console.users.audit_log()[0].action == "csrf-refused"


def test_refusals_for_the_wrong_role_are_audited_and_acts_name_their_disposition(client: TestClient) -> None:
    """An operator's amendment and user management, sent with a valid form token, are refused and audited like a
    refused token; the audit says an act's disposition by its name."""
    login(client, "olga")
    seq = seq_of(client, "neutron")
    token = csrf(client)
    assert (
        client.post(f"/decision/{seq}/adjudicate", data={"csrf": token, "disposition": "innocent"}).status_code == 200
    )
    act = client.app.state.console.adjudications.history(seq)[0].id
    amend = {"csrf": token, "amends": str(act), "disposition": "medical", "notes": "a Tc-99m patient"}
    assert client.post(f"/decision/{seq}/amend", data=amend).status_code == 403
    add = {"csrf": token, "action": "add", "name": "mallory", "role": "admin", "password": PASSWORD}
    assert client.post("/users", data=add).status_code == 403
    log = client.app.state.console.users.audit_log()
    assert [(e.user, e.action, e.detail) for e in log[:3]] == [
        ("olga", "role-refused", "POST /users: needs admin, is operator"),
        ("olga", "role-refused", f"POST /decision/{seq}/amend: needs supervisor, is operator"),
        ("olga", "adjudicated", f"decision {seq}: Other innocent source"),
    ]
    login(client, "sam")
    assert client.post(f"/decision/{seq}/amend", data={**amend, "csrf": csrf(client)}).status_code == 200
    assert (
        client.app.state.console.users.audit_log()[0].detail == f"decision {seq}: Medical isotope (amends act #{act})"
    )


# ---- adjudication ------------------------------------------------------------------------------------
def test_acknowledge_adjudicate_with_n42_and_supervisor_amends(client: TestClient, site: Config) -> None:
    login(client, "olga")
    seq = seq_of(client, "gamma-shape")
    token = csrf(client)
    assert client.post(f"/decision/{seq}/acknowledge", data={"csrf": token}).status_code == 200
    n42 = (DATA / "riid-cs137.n42").read_bytes()
    form = {"csrf": token, "disposition": "innocent", "secondary": "source-found", "notes": "Cs-137 gauge, papers ok"}
    page = client.post(f"/decision/{seq}/adjudicate", data=form, files={"n42": ("riid.n42", n42)})
    assert page.status_code == 200
    assert "Cs-137, K-40" in page.text and "Cs-137 gauge, papers ok" in page.text
    again = client.post(f"/decision/{seq}/adjudicate", data=form)
    assert again.status_code == 409 and "a supervisor can amend" in again.text
    history = client.app.state.console.adjudications.history(seq)
    assert [h.kind for h in history] == ["acknowledge", "adjudicate"] and history[1].nuclides == ["Cs-137", "K-40"]
    assert client.get(f"/attachment/{history[1].id}").content == n42

    amend = {"csrf": token, "amends": str(history[1].id), "disposition": "medical", "notes": "it was Tc-99m"}
    assert client.post(f"/decision/{seq}/amend", data=amend).status_code == 403
    login(client, "sam")
    page = client.post(f"/decision/{seq}/amend", data={**amend, "csrf": csrf(client)})
    assert page.status_code == 200 and "amend of #" in page.text
    history = client.app.state.console.adjudications.history(seq)
    assert [(h.kind, h.disposition, h.user) for h in history] == [
        ("acknowledge", None, "olga"), ("adjudicate", "innocent", "olga"), ("amend", "medical", "sam")
    ]  # fmt: skip
    actions = [e.action for e in client.app.state.console.users.audit_log()]
    assert {"acknowledged", "adjudicated", "amended"} <= set(actions)
    with sqlite3.connect(site.service.journal) as conn:
        for statement in ("UPDATE adjudications SET notes = ''", "DELETE FROM adjudications"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)


def test_contradictory_acts_are_refused_with_who_acted_before(site: Config) -> None:
    """The state machine of edge/console/adjudication.py, on a real journal: each refusal says why, and nothing
    is recorded for it."""
    store = Adjudications(site.service.journal)
    try:
        with Journal(site.service.journal, readonly=True) as journal:
            found = journal.since(0)
        alarms = [d.seq for d in found if d.verdict == "ALARM"]
        clear = next(d.seq for d in found if d.verdict == "CLEAR")
        first, second = alarms[0], alarms[1]

        def refused(seq: int, kind: str, role: str = "operator", **kw: Any) -> str:
            before = store.history(seq)
            with pytest.raises(AdjudicationError) as exc:
                store.record(seq, kind, "olga" if role == "operator" else "sam", role, **kw)
            assert store.history(seq) == before
            return str(exc.value)

        assert "CLEAR: there is nothing to acknowledge" in refused(clear, "acknowledge")
        assert "not disposed yet: adjudicate it" in refused(first, "amend", "supervisor", disposition="norm",
                                                              notes="x", amends=1)  # fmt: skip
        ack = store.record(first, "acknowledge", "olga", "operator")
        assert "acknowledged already, by olga at" in refused(first, "acknowledge")
        assert "carries no disposition" in refused(first, "acknowledge", disposition="norm")
        disposed = store.record(first, "adjudicate", "olga", "operator", disposition="norm")
        message = refused(first, "adjudicate", disposition="threat")
        assert f"decision {first} was disposed already (NORM (naturally occurring radioactive material), by" in message
        assert "a second disposition is refused: a supervisor can amend it" in message
        assert "disposed already (NORM" in refused(first, "acknowledge")
        assert "only a supervisor can amend" in refused(first, "amend", disposition="threat", notes="x",
                                                        amends=disposed.id)  # fmt: skip
        assert "needs its reason" in refused(first, "amend", "supervisor", disposition="threat", amends=disposed.id)
        assert f"no adjudication numbered {ack.id}" in refused(first, "amend", "supervisor", disposition="threat",
                                                                notes="x", amends=ack.id)  # fmt: skip
        amended = store.record(first, "amend", "sam", "supervisor", disposition="medical", notes="Tc-99m",
                               amends=disposed.id)  # fmt: skip
        message = refused(first, "amend", "supervisor", disposition="threat", notes="y", amends=disposed.id)
        assert f"#{disposed.id} of decision {first} was amended already (#{amended.id}, by sam" in message
        assert f"amend #{amended.id}, the one that stands" in message
        store.record(first, "amend", "sam", "supervisor", disposition="threat", notes="y", amends=amended.id)
        assert store.state(first, "ALARM") == "disposed"
        # adjudicating straight away (no acknowledgement) is allowed; so is a disposition of a CLEAR decision
        store.record(second, "adjudicate", "olga", "operator", disposition="background")
        store.record(clear, "adjudicate", "olga", "operator", disposition="test")
        assert [h.kind for h in store.history(second)] == ["adjudicate"]
        validator = jsonschema.Draft202012Validator(schema("adjudication"))
        for act in store.after(0):  # what the bus publishes fits the published contract
            validator.validate(msgspec.to_builtins(act))
    finally:
        store.close()
    # at a site in another time zone, a refusal gives the earlier act's time in it
    local = Adjudications(site.service.journal, Clock.named("America/Los_Angeles"))
    try:
        when = Clock.named("America/Los_Angeles").local(local.history(second)[0].time, seconds=False)
        with pytest.raises(AdjudicationError, match=re.escape(f"by olga at {when} (America/Los_Angeles)")):
            local.record(second, "adjudicate", "olga", "operator", disposition="threat")
    finally:
        local.close()


def test_a_file_that_is_not_n42_is_refused_and_nothing_recorded(client: TestClient) -> None:
    login(client, "olga")
    seq = seq_of(client, "neutron")
    notes = "driver's papers <ok> & seal 4471"
    form = {"csrf": csrf(client), "disposition": "test", "secondary": "no-source", "notes": notes}
    response = client.post(f"/decision/{seq}/adjudicate", data=form, files={"n42": ("x.n42", b"not a spectrum")})
    assert response.status_code == 409 and "N42 file is expected" in response.text
    assert client.app.state.console.adjudications.history(seq) == []
    # the decision's page again, with why, and what was typed kept: only the file has to be chosen again
    page = response.text
    assert 'id="refused"' in page and "Choose the file again" in page
    typed = re.search(r'<textarea name="notes" rows="3">(.*?)</textarea>', page, re.S)
    assert typed is not None and html.unescape(typed.group(1)) == notes and "<ok>" not in page, "kept, escaped"
    assert '<option value="test" selected>' in page and '<option value="no-source" selected>' in page


def test_n42_nuclides_reads_the_identifiers_analysis() -> None:
    assert n42_nuclides((DATA / "riid-cs137.n42").read_bytes()) == ["Cs-137", "K-40"]


# ---- event table and detail ----------------------------------------------------------------------------
def table_seqs(client: TestClient, query: str) -> list[int]:
    page = client.get(f"/decisions?{query}")
    assert page.status_code == 200, page.text
    return [int(s) for s in re.findall(r'<td><a href="/decision/(\d+)">', page.text)]


def test_event_table_filters_and_pages(client: TestClient, site: Config) -> None:
    login(client, "olga")
    # newest end first: decision 7 (the portal's alarm alone) ended before the others
    assert table_seqs(client, "") == [6, 5, 4, 3, 2, 1, 7]
    assert table_seqs(client, "lane=lane2") == [6, 4, 2]
    assert table_seqs(client, "verdict=CLEAR") == [4, 1]
    # the queues of alarms awaiting adjudication: the oldest first (first come, first served), unless asked
    assert table_seqs(client, "state=awaiting") == [7, 2, 3, 5, 6]
    assert table_seqs(client, "state=unacknowledged") == [7, 2, 3, 5, 6]
    assert table_seqs(client, "state=awaiting&order=newest") == [6, 5, 3, 2, 7]
    assert table_seqs(client, "order=oldest") == [7, 1, 2, 3, 4, 5, 6]
    with Journal(site.service.journal, readonly=True) as journal:
        end = journal.since(0)[0].end
    day = client.app.state.console.clock.local(end)[:10]
    assert table_seqs(client, f"from={day}&to={day}") == [6, 5, 4, 3, 2, 1, 7]
    assert table_seqs(client, "to=2000-01-01") == []
    unknown = client.get("/decisions?lane=nosuch")
    assert unknown.status_code == 400 and "no lane &#39;nosuch&#39; in the configuration" in unknown.text
    for query, says in (
        ("verdict=BOGUS", "no verdict"),
        ("state=bogus", "no adjudication state"),
        ("order=sideways", "no order"),
        ("from=garbage", "dates are YYYY-MM-DD"),
        ("from=2026-13-45", "dates are YYYY-MM-DD"),
        (f"from={date.fromisoformat(day) + timedelta(days=1)}&to={day}", "the dates are the wrong way round"),
    ):
        refused = client.get(f"/decisions?{query}")
        assert refused.status_code == 400 and says in refused.text, query
        assert '<td><a href="/decision/' not in refused.text, f"{query}: a filter in error shows no rows"

    token = csrf(client)
    form = {"csrf": token, "disposition": "norm", "secondary": "not-performed", "notes": "Kitty litter, 100% clay"}
    client.post("/decision/3/adjudicate", data=form)
    assert table_seqs(client, "q=litter") == [3]
    assert table_seqs(client, "q=100%25") == [3], "punctuation is no operator"
    assert table_seqs(client, "q=nothing+such") == []
    assert table_seqs(client, "state=disposed") == [3]
    assert 3 not in table_seqs(client, "state=awaiting")

    store = client.app.state.console.adjudications
    first = store.events(EventFilter(), 3)
    assert [r.seq for r in first.rows] == [6, 5, 4] and first.newer is None and first.older == 4
    second = store.events(EventFilter(), 3, before=first.older)
    assert [r.seq for r in second.rows] == [3, 2, 1] and second.newer == 3 and second.older == 1
    assert [r.seq for r in store.events(EventFilter(), 3, before=second.older).rows] == [7]
    assert [r.seq for r in store.events(EventFilter(), 3, after=second.newer).rows] == [6, 5, 4]
    first = store.events(EventFilter(), 3, oldest_first=True)  # the same pages, the other way
    assert [r.seq for r in first.rows] == [7, 1, 2] and first.older is None and first.newer == 2
    second = store.events(EventFilter(), 3, after=first.newer, oldest_first=True)
    assert [r.seq for r in second.rows] == [3, 4, 5] and second.older == 3 and second.newer == 5
    last = store.events(EventFilter(), 3, after=second.newer, oldest_first=True)
    assert [r.seq for r in last.rows] == [6] and last.older == 6 and last.newer is None
    assert [r.seq for r in store.events(EventFilter(), 3, before=second.older, oldest_first=True).rows] == [7, 1, 2]
    csv = client.get("/decisions?verdict=CLEAR&format=csv")
    assert csv.headers["content-type"].startswith("text/csv") and len(csv.text.strip().splitlines()) == 3


def test_csv_export_carries_every_column_of_the_table_and_says_when_it_is_cut(
    client: TestClient, site: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export of the event table: the columns the table shows (portal alarm, model, fielded rule, NORM release,
    adjudication state and disposition), the notes, the time zone named; an export larger than its cap says so."""
    import csv as csv_module
    import io

    from lanewatch.edge.console import app as app_module

    login(client, "olga")
    seq = seq_of(client, "shielded-source-suspected")
    form = {"csrf": csrf(client), "disposition": "test", "notes": "drill at gate 4"}
    assert client.post(f"/decision/{seq}/adjudicate", data=form).status_code == 200
    norm = seq_of(client, "norm-consistent")
    response = client.get("/decisions?format=csv")
    assert "X-Lanewatch-Truncated" not in response.headers and response.headers["X-Lanewatch-Rows"] == "7"
    rows = list(csv_module.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == [
        "seq", "end (Europe/Amsterdam)", "end (UTC)", "lane", "verdict", "portal_alarm", "model", "fielded_rule",
        "norm_release", "state", "disposition", "reasons", "notes",
    ]  # fmt: skip
    by_seq = {int(r["seq"]): r for r in rows}
    table = client.get("/decisions").text
    for number, row in by_seq.items():  # what the page shows, the export has
        cells = re.search(rf'<a href="/decision/{number}">{number}</a></td>(.*?)</tr>', table, re.S).group(1)
        shown = [
            html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", cells, re.S)
        ]
        assert shown[3:7] == [row["portal_alarm"], row["model"], row["fielded_rule"], row["norm_release"]], shown
    shielded = by_seq[seq]
    assert (shielded["state"], shielded["disposition"], shielded["notes"]) == (
        "disposed",
        "Test source",
        "drill at gate 4",
    )
    assert shielded["portal_alarm"] == "ALARM" and shielded["fielded_rule"] in ("ALARM", "CLEAR", "not eval.")
    assert by_seq[norm]["norm_release"] in ("release recommended", "release not confirmed")
    monkeypatch.setattr(app_module, "CSV_MAX_ROWS", 3)
    cut = client.get("/decisions?format=csv")
    assert len(cut.text.strip().splitlines()) == 1 + 3 and cut.headers["X-Lanewatch-Rows"] == "3"
    assert "the first 3 decisions only" in cut.headers["X-Lanewatch-Truncated"]


def test_event_table_shows_local_time_with_utc_on_hover(client: TestClient, site: Config) -> None:
    login(client, "olga")
    with Journal(site.service.journal, readonly=True) as journal:
        end = journal.since(0)[0].end
    page = client.get("/decisions").text
    local = client.app.state.console.clock.local(end)
    assert f'title="{end[:10]} {end[11:19]} UTC">{local}<' in page
    assert local != f"{end[:10]} {end[11:19]}", "Europe/Amsterdam is never UTC"
    assert "Dates and times in Europe/Amsterdam; hover a time for UTC." in page


def test_event_table_at_a_utc_site_says_so_once_and_keeps_the_model_short(tmp_path: Path) -> None:
    config = site_config(tmp_path, timezone="UTC")
    with Journal(config.service.journal) as journal:
        for decision in decisions():
            warming = apply_policy(
                decision, None, ModelConfig(path="m.onnx"), "m", raw=0.709, calibrated=Calibrated(None, 19)
            )
            journal.append({**warming, "lane": "lane1"})
    store = UserStore(users_path(config))
    store.add("olga", "operator", PASSWORD)
    store.close()
    with TestClient(create_app(config, start_feeds=False), base_url="https://testserver") as utc:
        login(utc, "olga")
        page = utc.get("/decisions").text
        detail = utc.get("/decision/1").text
    assert "Dates and times in UTC." in page and "hover a time for UTC" not in page
    assert page.count("<td>model warming up</td>") == 7 and "ordinary vehicles seen at this lane" not in page
    assert "warming up: 19 of 200 ordinary vehicles seen at this lane, no score yet" in detail


def test_detail_page_gives_reasons_in_words_and_one_figure(client: TestClient) -> None:
    login(client, "olga")
    seq = seq_of(client, "image-review")
    page = client.get(f"/decision/{seq}").text
    assert "mm lead equivalent" in page and "behind the front" in page
    assert "Fielded rule</dt><dd>CLEAR" in page and "Anomaly model</dt><dd>finding, score" in page
    assert "The portal's own alarm</dt><dd>no" in page
    assert page.count("<svg") == 1 and f'href="/decision/{seq}/preview.png"' in page and "mm Pb eq." in page
    png = client.get(f"/decision/{seq}/preview.png")
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    neutron = client.get(f"/decision/{seq_of(client, 'neutron')}").text
    assert "Neutron excess" in neutron and "neutrons" in neutron and "counts per 1 s" in neutron
    assert client.get("/decision/999").status_code == 404


def test_detail_page_says_why_the_fielded_rule_was_not_evaluated(site: Config) -> None:
    """A first vehicle with no background before it: the fielded rule gives no verdict and says why, never a number
    against the vehicle's own level."""
    first = next(d for d in decisions() if d["baseline"])
    baseline = {**first["baseline"], "max_sigma": None, "neutron_background": None, "not_evaluated": "no-background"}
    with Journal(site.service.journal) as journal:
        first.update(occupancy_id="first-after-start", verdict="INCOMPLETE", alarms=[], incomplete=["no-background"])
        seq = journal.append({**first, "baseline_verdict": None, "baseline": baseline})["seq"]
    with TestClient(create_app(site, start_feeds=False), base_url="https://testserver") as client:
        login(client, "olga")
        page = client.get(f"/decision/{seq}").text
    assert "Fielded rule</dt><dd>not evaluated: no background reading before the vehicle to compare it with" in page
    assert "sigma at most" not in page and "0.0 background" not in page


def test_reasons_read_as_plain_words() -> None:
    by_reason = {tuple(a["reason"] for a in d["alarms"]): read(d) for d in decisions()}
    gamma = reasons(by_reason[("gamma", "gamma-shape", "device")])
    located = r"Gamma excess \d+\.\d sigma \(threshold \d+\.\d\) \d+\.\d m behind the front, ± \d\.\d m"
    assert re.match(located, gamma[0])
    assert "The portal's own alarm (gamma); lanewatch's own tests confirm it (gamma, gamma-shape)" in gamma
    norm = reasons(by_reason[("gamma-shape", "norm-consistent")])
    spread = r"Consistent with NORM, spread over \d+% of the load: (release recommended|cleared by the radiation)"
    assert any(re.match(spread, r) for r in norm)
    assert any("consistent with NORM, so it does not alarm on its own" in r for r in norm)
    assert not any("released" in r for r in norm)


def read(decision: dict[str, Any]) -> Decision:
    """One of the demo's decisions (or one changed here) as the console reads it from the journal."""
    return typed({"seq": 1, **decision})


def norm_decision(image_agrees: bool = True, **model: Any) -> dict[str, Any]:
    """The demo's NORM-consistent vehicle with the image's judgement of the load (``image_agrees``, as the fusion
    records it) scored again by the model's policy (``model``: apply_policy's arguments)."""
    decision = next(d for d in decisions() if any(a["reason"] == "norm-consistent" for a in d["alarms"]))
    norm = next(a for a in decision["alarms"] if a["reason"] == "norm-consistent")
    norm["image"]["agrees"] = norm["release_recommended"] = image_agrees
    return apply_policy(decision, cfg=ModelConfig(path="model.onnx"), version="test", **model)


def test_norm_release_reason_names_its_cause() -> None:
    warming = norm_decision(score=None, raw=0.709, calibrated=Calibrated(None, 19))
    text = next(r for r in reasons(read(warming)) if r.startswith("Consistent with NORM"))
    assert text.endswith(
        "cleared by the radiation tests, release not confirmed: the anomaly model is still warming up (19 of 200 "
        "ordinary vehicles scored at this lane; no release is recommended before it has scored 200)"
    )
    assert "unusual" not in text and norm_state(read(warming)) == "unconfirmed"
    unusual = norm_decision(score=2.23, raw=0.9, calibrated=Calibrated(2.23, 300))
    assert reasons(read(unusual))[0].endswith(
        "release not confirmed: the anomaly model finds the load unusual (score 2.23, release below 2.00)"
    )
    ordinary = norm_decision(score=0.4, raw=0.3, calibrated=Calibrated(0.4, 300))
    assert reasons(read(ordinary))[0].endswith(": release recommended") and norm_state(read(ordinary)) == "release"
    dark = norm_decision(False, score=0.4, raw=0.3, calibrated=Calibrated(0.4, 300))
    assert reasons(read(dark))[0].endswith("release not confirmed: the X-ray image does not agree")
    unscored = norm_decision(False, score=None, reason="no usable profile")
    assert reasons(read(unscored))[0].endswith(
        "the X-ray image does not agree; the anomaly model gave no score (no usable profile)"
    )


def test_norm_wording_agrees_with_an_alarm_verdict_in_summary_and_detail() -> None:
    """The portal alarms on a NORM-consistent load: the verdict is ALARM, lanewatch released nothing."""
    decision = norm_decision(score=None, raw=0.709, calibrated=Calibrated(None, 19))
    portal = next(d for d in decisions() if d["device_alarm"] and len(d["alarms"]) == 1)["alarms"][0]
    decision.update(verdict="ALARM", device_alarm=True)
    decision["alarms"].append({**portal, "gamma": True, "neutron": False, "lanewatch": "norm-consistent"})
    shown = summary(read(decision), "unacknowledged", Clock.named("UTC"))
    assert shown.norm == "held" and not shown.release_recommended
    assert shown.reasons[:2] == reasons(read(decision))[:2]
    assert shown.reasons[0].startswith("The portal's own alarm (gamma); lanewatch finds the excess consistent")
    assert re.search(r": no release recommended: the anomaly model is still warming up \(19 of 200", shown.reasons[1])
    assert not any("released" in r or "release recommended;" in r for r in reasons(read(decision)))


# ---- configuration ---------------------------------------------------------------------------------------
def test_console_configuration_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="plain HTTP is allowed only on a loopback"):
        site_config(tmp_path, plain_http=True, listen="0.0.0.0:8080")
    assert site_config(tmp_path, plain_http=True, listen="127.0.0.1:8080").console.plain_http
    with pytest.raises(ConfigError, match="IANA time zone"):
        site_config(tmp_path, timezone="Mars/Olympus")
    with pytest.raises(ConfigError, match=r"console\.listen: expected host:port"):
        site_config(tmp_path, listen="8443")
    with pytest.raises(ConfigError, match=r"console\.listen: expected an address of its own"):
        site_config(tmp_path, listen="127.0.0.1:9")  # the service's http


def test_adjudications_create_the_journal_when_missing(tmp_path: Path) -> None:
    store = Adjudications(tmp_path / "new" / "journal.db")
    assert store.last_id() == 0 and store.awaiting() == []
    store.close()
    with Journal(tmp_path / "new" / "journal.db") as journal:
        assert journal.last_seq() == 0


# ---- evidence ----------------------------------------------------------------------------------------------
def test_evidence_zip_has_a_manifest_an_n42_spectutils_reads_and_the_history(
    client: TestClient, site: Config, tmp_path: Path
) -> None:
    import io
    import subprocess
    import zipfile

    import SpecUtils

    login(client, "olga")
    seq = seq_of(client, "shielded-source-suspected")
    token = csrf(client)
    riid = (DATA / "riid-cs137.n42").read_bytes()
    form = {"csrf": token, "disposition": "test", "notes": "drill"}
    client.post(f"/decision/{seq}/adjudicate", data=form, files={"n42": ("handheld scan 1.n42", riid)})
    response = client.get(f"/decision/{seq}/evidence.zip")
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    unpacked = tmp_path / "unpacked"
    archive.extractall(unpacked)
    checked = subprocess.run(
        ["sha256sum", "-c", f"decision-{seq}.sha256"], cwd=unpacked, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    files = {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist() if "/" in name}
    listed = [line.split("  ", 1)[1] for line in archive.read(f"decision-{seq}.sha256").decode().splitlines()]
    assert sorted(listed) == sorted(f"decision-{seq}/{name}" for name in files), "every file, and only those"
    attached = f"attachments/{client.app.state.console.adjudications.history(seq)[0].id}-handheldscan1.n42"
    assert {"decision.json", "profile.csv", "neutron.csv", "evidence.png", "xray-preview.png", "occupancy.n42",
            attached} <= set(files)  # fmt: skip
    assert files[attached] == riid, "the handheld identifier's file as uploaded"
    with Journal(site.service.journal, readonly=True) as journal:
        decision = json.loads(journal.get_json(seq) or b"")
    assert json.loads(files["decision.json"]) == decision
    jsonschema.Draft202012Validator(schema("decision")).validate(json.loads(files["decision.json"]))
    history = json.loads(files["adjudications.json"])["history"]
    assert [(h["kind"], h["disposition"], h["notes"], h["attachment_file"]) for h in history] == [
        ("adjudicate", "test", "drill", attached)
    ]
    assert files["evidence.png"].startswith(b"\x89PNG")
    assert len(files["profile.csv"].decode().splitlines()) == len(decision["profile"]["gross"]) + 1

    n42 = Path(site.service.journal).parent / "occupancy.n42"
    n42.write_bytes(files["occupancy.n42"])
    spec = SpecUtils.SpecFile()
    spec.loadFile(str(n42), SpecUtils.ParserType.Auto)
    records = spec.measurements()
    gamma = [m.gammaCountSum() for m in records if m.detectorName() == "gamma"]
    neutron = [m.neutronCountsSum() for m in records if m.detectorName() == "neutron"]
    assert gamma == [float(c) for c in decision["profile"]["gross"]], "journaled before the channels were kept"
    assert neutron == [float(c) for c in decision["profile"]["neutron"]]
    assert client.app.state.console.users.audit_log()[0].action == "evidence-downloaded"


def test_the_evidence_figure_gives_the_end_in_the_sites_time_zone_with_utc(site: Config) -> None:
    from lanewatch.edge.console.evidence import figure

    decision = read(decisions()[2])
    title = figure(decision, Clock.named("America/Los_Angeles"))._suptitle.get_text()
    end = datetime.fromisoformat(decision.end).astimezone(ZoneInfo("America/Los_Angeles"))
    assert f"ended {end:%Y-%m-%d %H:%M:%S} America/Los_Angeles ({utc_label(decision.end)})" in title


def test_lanewatch_evidence_writes_the_same_bundle(client: TestClient, site: Config, tmp_path: Path) -> None:
    import argparse
    import zipfile

    from lanewatch.edge.commands import evidence

    parser = argparse.ArgumentParser()
    evidence.add_arguments(parser)
    assert evidence.run(parser.parse_args(["4", "--out", str(tmp_path / "out")]), site) == 0
    login(client, "olga")
    written = zipfile.ZipFile(tmp_path / "out" / "evidence-4.zip")
    served = zipfile.ZipFile(io_of(client.get("/decision/4/evidence.zip").content))
    assert written.namelist() == served.namelist()
    for name in ("decision-4/decision.json", "decision-4/profile.csv", "decision-4/neutron.csv"):  # n42: own time
        assert written.read(name) == served.read(name), name


def io_of(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


# ---- the event stream ------------------------------------------------------------------------------------
def test_event_stream_replays_every_decision_after_last_event_id(site: Config) -> None:
    """A browser that reconnects sends the last journal seq it saw; the stream resends everything after it."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(site, secure=False, start_feeds=False), host="127.0.0.1", port=port, log_level="error"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            token = re.search(r'name="csrf" value="([^"]+)"', http.get("/login").text).group(1)
            http.post("/login", data={"name": "olga", "password": PASSWORD, "csrf": token})
            events: list[tuple[str, str]] = []
            with http.stream("GET", "/events", headers={"Last-Event-ID": "3"}) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                name = ""
                for line in stream.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("id: "):
                        events.append((name, line[4:]))
                    if len([e for e in events if e[0] == "decision"]) == 4:
                        break
            assert [seq for name, seq in events if name == "decision"] == ["4", "5", "6", "7"]
    finally:
        server.should_exit = True
        thread.join(10)


def test_supervisor_day_report_as_page_and_csv(client: TestClient, site: Config) -> None:
    login(client, "olga")
    assert client.get("/reports").status_code == 403
    form = {"csrf": csrf(client), "disposition": "norm", "secondary": "not-performed"}
    client.post("/decision/2/adjudicate", data=form)
    login(client, "sam")
    with Journal(site.service.journal, readonly=True) as journal:
        day = client.app.state.console.clock.local(journal.since(0)[0].end)[:10]
    page = client.get(f"/reports?day={day}&shift=day")
    heading = f"Lane report, {day} day shift 00:00-24:00 local time (Europe/Amsterdam)"
    assert page.status_code == 200 and heading in page.text and "day (00:00-24:00)" in page.text
    assert "night (22:00-06:00)" in page.text
    # alarms by reason and incomplete decisions by cause in words, uptime of the time watched
    text = html.unescape(page.text)
    assert "Dense object: image review 1" in text and "Portal's own alarm" in text
    assert "image-review 1" not in text and "device " not in text
    joined = next(d for d in decisions() if d["incomplete"])  # a vehicle whose start the service did not see
    assert [INCOMPLETE_NAMES[c] for c in incomplete_causes(read(joined))] == [
        "start not seen",
        "no background before it",
    ]
    assert "Uptime (of the time watched)" in page.text
    csv_text = client.get(f"/reports?day={day}&shift=day&format=csv").text.splitlines()
    header, *rows = [line.split(",") for line in csv_text]
    by_lane = {row[1]: dict(zip(header, row, strict=False)) for row in rows}
    assert set(by_lane) == {"lane1", "lane2"}
    assert sum(int(r["vehicles"]) for r in by_lane.values()) == 7
    assert sum(int(r["alarm"]) for r in by_lane.values()) == 5
    assert by_lane["lane2"]["disposed_norm"] == "1" and by_lane["lane2"]["median_minutes_to_disposition"]
    assert sum(int(r["awaiting"]) for r in by_lane.values()) == 4
    assert client.get("/reports?day=yesterday").status_code == 400


def test_report_gives_each_lanes_uptime_and_faults_from_the_health_history(client: TestClient, site: Config) -> None:
    """Readings every 10 s from 09:00 to 10:00 UTC on 2026-01-15: lane1 has a gamma-high fault from 09:30 to 09:40;
    lane2 is watched until 09:20, not at all until 09:50 (no console ran), then the service is unreachable."""
    from datetime import UTC, datetime, timedelta

    def reading(faults: list[str]) -> Health:
        sensor = SensorHealth(name="RPM", connected=True, fresh=True, age_s=0.2, ok=True)
        lanes = {"lane1": LaneHealth(faults=faults, sensors=[sensor]), "lane2": LaneHealth(sensors=[sensor])}
        return Health(reachable=True, ok=not faults, lanes=lanes)

    history = HealthHistory(site.service.journal)
    start = datetime(2026, 1, 15, 9, tzinfo=UTC)
    for step in range(361):
        at = start + timedelta(seconds=10 * step)
        when = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        minute = step / 6
        history.record(reading(["gamma-high"] if 30 <= minute < 40 else []), ["lane1"], when)
        if minute <= 20:
            history.record(reading([]), ["lane2"], when)
        elif minute >= 50:
            history.record(Health(reachable=False), ["lane2"], when)
    history.close()
    login(client, "sam")
    csv_text = client.get("/reports?day=2026-01-15&shift=day&format=csv").text.splitlines()
    header, *rows = [line.split(",") for line in csv_text]
    by_lane = {row[1]: dict(zip(header, row, strict=True)) for row in rows}
    lane1, lane2 = by_lane["lane1"], by_lane["lane2"]
    assert (lane1["uptime_percent"], lane1["down_minutes"], lane1["unobserved_minutes"]) == ("83.3", "10.0", "1380.0")
    assert lane1["faults"] == "gamma-high 1x 10.0 min"
    assert (lane2["uptime_percent"], lane2["down_minutes"], lane2["unobserved_minutes"]) == ("66.7", "10.0", "1410.0")
    assert lane2["faults"] == "service unreachable 1x 10.0 min"
    page = client.get("/reports?day=2026-01-15&shift=day")
    assert "83.3% of 60 min watched" in page.text and "not watched 1380 min" in page.text
    assert "gamma-high 1x 10.0 min" in page.text
    early = client.get("/reports?day=2026-01-15&shift=early&format=csv").text.splitlines()  # 06:00-14:00 local
    assert early[1].split(",")[-4:] == ["83.3", "10.0", "420.0", "gamma-high 1x 10.0 min"]


def test_wall_state_has_each_lanes_tile_with_its_background_and_awaiting_alarms(client: TestClient) -> None:
    login(client, "olga")
    wall = client.get("/wall.json").json()
    lanes = {lane["id"]: lane for lane in wall["lanes"]}
    assert set(lanes) == {"lane1", "lane2"}
    assert all(lane["status"] == "alarm" for lane in lanes.values()), "both lanes have alarms awaiting adjudication"
    assert sorted(a["seq"] for a in wall["unacknowledged"]) == [2, 3, 5, 6, 7]
    assert len(lanes["lane1"]["background_cps"]) == 4 and all(v > 0 for v in lanes["lane1"]["background_cps"])
    assert wall["service"]["reachable"] is None, "no health read yet: the feeds are not running"


def test_the_wall_carries_the_oldest_alarms_awaiting_and_counts_the_rest(client: TestClient) -> None:
    """A site with many alarms not yet disposed: every wall update (sent to each browser several times a second)
    carries the oldest few for the banner and each tile (the oldest must never drop out of sight), and how many
    there are."""
    login(client, "olga")
    wall = client.app.state.console.wall
    alarm = client.app.state.console.journal.get(2)
    for seq in range(100, 112):  # twelve more alarms on lane1, none acknowledged
        wall.on_decision(msgspec.structs.replace(alarm, seq=seq, lane="lane1"))
    shown = client.get("/wall.json").json()
    # by end, as the queue of alarms awaiting adjudication: 7 ended first, then 2, 3 and the copies of 2 (same end)
    assert [a["seq"] for a in shown["unacknowledged"]] == [7, 2, 3, 100, 101]
    assert shown["unacknowledged_count"] == 17
    lanes = {lane["id"]: lane for lane in shown["lanes"]}
    assert [a["seq"] for a in lanes["lane1"]["awaiting"]] == [7, 3, 100, 101, 102]
    mine = [seq for seq in (2, 3, 5, 6, 7) if client.app.state.console.journal.get(seq).lane == "lane1"]
    assert lanes["lane1"]["awaiting_count"] == lanes["lane1"]["unacknowledged"] == 12 + len(mine)
    assert lanes["lane2"]["awaiting_count"] == lanes["lane2"]["unacknowledged"] == 5 - len(mine)


def test_a_lane_with_alarms_awaiting_still_shows_the_vehicle_in_it_now(client: TestClient) -> None:
    """Alarms of earlier vehicles wait on the tile; the tile's state is what the lane is doing now."""
    login(client, "olga")
    alarm = ProvisionalAlarm(lane="lane1", occupancy_id="lane1-9", reason="gamma", statistic=9.1, threshold=4.8)
    client.app.state.console.wall.on_provisional(alarm, "gamma 9.1 > 4.8 at 3.0 m")
    lanes = {lane["id"]: lane for lane in client.get("/wall.json").json()["lanes"]}
    assert lanes["lane1"]["status"] == "provisional" and lanes["lane1"]["awaiting_count"] >= 1
    assert lanes["lane2"]["status"] == "alarm" and lanes["lane2"]["awaiting_count"] >= 1


def test_a_lane_with_alarms_awaiting_keeps_the_alarm_headline_while_the_next_vehicle_passes(
    client: TestClient,
) -> None:
    """The next vehicle entering the lane must not headline the tile OCCUPIED over alarms not yet adjudicated: the
    alarm stays the tile's state and the occupancy is shown beside it."""
    login(client, "olga")
    wall = client.app.state.console.wall
    wall.on_health(Health(reachable=True, ok=True, lanes={"lane1": LaneHealth(occupied=True)}))
    lanes = {lane["id"]: lane for lane in client.get("/wall.json").json()["lanes"]}
    assert lanes["lane1"]["awaiting_count"] >= 1
    assert lanes["lane1"]["status"] == "alarm" and lanes["lane1"]["occupied"] is True
    assert lanes["lane2"]["status"] == "alarm" and lanes["lane2"]["occupied"] is False
    for seq in [a["seq"] for lane in lanes.values() for a in lane["awaiting"]]:
        wall.on_adjudication(Adjudication(id=seq, seq=seq, kind="adjudicate", user="olga", role="operator",
                                          time="2026-01-15T10:00:00Z", disposition="background"))  # fmt: skip
    lanes = {lane["id"]: lane for lane in client.get("/wall.json").json()["lanes"]}
    assert lanes["lane1"]["status"] == "occupied", "nothing awaiting: the vehicle in the lane is the headline"


def test_incomplete_decisions_say_why_in_words() -> None:
    """Every cause once, in words with its numbers (what is missing, for how long), and what the officer must do."""
    act = "Re-scan the vehicle or send it to secondary inspection"
    span = {"start_ns": S, "end_ns": 3 * S}
    partial = RowFields(verdict="INCOMPLETE", end_reason="gx", incomplete=["partial"], samples=11, **span)
    assert reasons(partial) == [
        "Screened only in part: its start was not seen (the driver or the service joined mid-vehicle), so its front "
        f"may not have been measured (11 samples over 2.0 s measured). {act}"
    ]
    cut = RowFields(verdict="INCOMPLETE", end_reason="link-lost", incomplete=["no-background"], samples=9, **span)
    assert reasons(cut) == [
        "Not screened for radiation: no background reading before it, so its tests are withheld; the link to the "
        f"portal was lost during it, so the rest of the vehicle was not measured (9 samples over 2.0 s measured). {act}"
    ]
    missed = RowFields(verdict="INCOMPLETE", end_reason="missed", incomplete=["missed"], device_occupancy=84, end_ns=S)
    assert reasons(msgspec.structs.replace(missed, start_ns=S - 12 * S)) == [
        "Not screened for radiation: the portal counted this vehicle (its occupancy 84) but lanewatch received none of "
        f"its data (it passed within the 12 s before the portal's next end line). {act}"
    ]
    scan = RowFields(verdict="INCOMPLETE", end_reason="no-occupancy", incomplete=["no-occupancy"],
                     start_ns=S, end_ns=5 * S)  # fmt: skip
    assert reasons(scan) == [
        "Not screened for radiation: the X-ray scanner imaged a vehicle for 4.0 s but the portal reported no "
        f"occupancy: no radiation data. {act}"
    ]
    assert [incomplete_causes(d) for d in (missed, scan)] == [["missed"], ["no-occupancy"]], "each cause once"


def test_a_vehicle_not_screened_awaits_adjudication_like_an_alarm(site: Config) -> None:
    """A vehicle the portal counted and lanewatch never read (INCOMPLETE, ``missed``) waits for an officer: in the
    queue, on its lane's tile (the tile's headline when nothing alarms there), in the banner's count (it sounds),
    in the report's awaiting count and in ``lanewatch alerts``' adjudication column, until it is disposed."""
    end_ns = time.time_ns()
    end = Record(Kind.OCCUPANCY_END, "lane2", "rpm", 40, end_ns, 0, values={"device_occupancy": 85})
    with Journal(site.service.journal) as journal:
        seq = journal.append(build_missed("lane2", end, 84, end_ns - 12 * S))["seq"]
        missed = journal.get(seq)
    assert missed is not None and missed.verdict == "INCOMPLETE"
    assert adjudication_state(site.service.journal, seq, missed.verdict) == ("unacknowledged", None)
    table = alerts.Table.of(site)  # as `lanewatch alerts --journal` reads it
    assert table.line(missed)[table.header().index("ADJUDICATION") :].split()[0] == "unacknowledged"
    with TestClient(create_app(site, start_feeds=False), base_url="https://testserver") as client:
        login(client, "olga")
        console = client.app.state.console
        assert seq in table_seqs(client, "state=awaiting") and seq in table_seqs(client, "state=unacknowledged")
        page = html.unescape(client.get(f"/decision/{seq}").text)
        assert page.count("Not screened for radiation: the portal counted this vehicle (its occupancy 84)") == 1
        assert "missed; missed" not in page and "no adjudication needed" not in page
        assert f'action="/decision/{seq}/acknowledge"' in page
        wall = client.get("/wall.json").json()
        lanes = {lane["id"]: lane for lane in wall["lanes"]}
        alarms = sum(1 for d in console.journal.since(0) if d.verdict == "ALARM")
        assert wall["unacknowledged_count"] == alarms + 1, "it counts (and sounds) as an alarm does"
        assert seq in [a["seq"] for a in lanes["lane2"]["awaiting"]] and lanes["lane2"]["status"] == "alarm"
        for other in [a["seq"] for a in lanes["lane2"]["awaiting"] if a["seq"] != seq]:  # lane2's alarms disposed
            console.wall.on_adjudication(console.adjudications.record(other, "adjudicate", "olga", "operator",
                                                                      disposition="background"))  # fmt: skip
        lane2 = next(lane for lane in client.get("/wall.json").json()["lanes"] if lane["id"] == "lane2")
        assert lane2["status"] == "incomplete" and [a["seq"] for a in lane2["awaiting"]] == [seq]
        assert lane2["awaiting"][0]["reasons"][0].startswith("Not screened for radiation")
        login(client, "sam")
        day = console.clock.local(missed.end)[:10]
        rows = client.get(f"/reports?day={day}&shift=day&format=csv").text.splitlines()
        report = {r["lane"]: r for r in csv.DictReader(rows)}
        assert report["lane2"]["awaiting"] == "1" and report["lane2"]["incomplete"] == "1"
        token = csrf(client)
        assert client.post(f"/decision/{seq}/acknowledge", data={"csrf": token}).status_code == 200
        form = {"csrf": token, "disposition": "fault", "secondary": "not-performed", "notes": "portal driver down"}
        assert client.post(f"/decision/{seq}/adjudicate", data=form).status_code == 200
        assert seq not in table_seqs(client, "state=awaiting")
    assert adjudication_state(site.service.journal, seq, "INCOMPLETE") == ("disposed", "fault")


def test_an_alarm_entry_makes_an_incomplete_occupancy_an_alarm() -> None:
    """The portal's own alarm (or any alarming entry) on an occupancy with missing data is an ALARM; reported only,
    the occupancy stays INCOMPLETE (and still awaits adjudication)."""
    for policy, verdict in (("alarm", "ALARM"), ("report", "INCOMPLETE")):
        device = device_alarm_entry(True, False, [], DetectionConfig(device_alarm=policy))
        for end_reason, incomplete in (("gx", ["partial", "no-background"]), ("link-lost", []), ("missed", ["missed"])):
            assert verdict_of({"alarms": [device]}, end_reason, False, incomplete) == verdict
    assert verdict_of({"alarms": []}, "gx", True, ["partial"]) == "ALARM", "tamper"


def test_the_consoles_listening_socket_gives_connections_tcp_nodelay() -> None:
    """asyncio turns Nagle's algorithm off only on connections of a socket that says it is TCP; without that, every
    response waited about 40 ms for the browser's delayed acknowledgement."""
    import asyncio
    import socket

    from lanewatch.edge.console.command import bind

    async def accepted_nodelay() -> int:
        listener = bind("127.0.0.1", 0)
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname())
        try:
            return await asyncio.wait_for(seen, 60)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(accepted_nodelay()) == 1
