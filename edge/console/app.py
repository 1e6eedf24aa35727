"""The console's web application (Starlette): pages rendered on the server, live updates by server-sent events.

Every page but the login needs a session (cookie ``lw_session``: Secure, HttpOnly, SameSite=Strict);
every form carries the session's CSRF token and a POST without it is refused (403). Failed logins are
limited per user name and client address, with a bounded backoff per user name (:class:`LoginLimiter`); a
session idle for ``[console].idle_timeout_s`` is closed. Roles: operators acknowledge and adjudicate,
supervisors also amend, see the audit log and reports, admins also manage users.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import csv
import io
import json
import logging
import math
import secrets
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import msgspec
from jinja2 import Environment, PackageLoader, select_autoescape
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lanewatch.edge.bus.security import Keys
from lanewatch.edge.config import Config
from lanewatch.edge.console import figure
from lanewatch.edge.console.adjudication import (
    DISPOSITIONS,
    SECONDARY,
    STATES,
    AdjudicationError,
    Adjudications,
    EventFilter,
    EventPage,
    RowFields,
    SearchError,
    safe_file_name,
)
from lanewatch.edge.console.health import Health, HealthHistory
from lanewatch.edge.console.live import CLOSING, HEARTBEAT, Event, Feeds, Hub, Wall, read_health
from lanewatch.edge.console.present import (
    INCOMPLETE_NAMES,
    NORM_WORDS,
    REASON_NAMES,
    Clock,
    fielded_short,
    fielded_text,
    model_short,
    model_text,
    norm_state,
    reasons,
    summary,
    utc_label,
)
from lanewatch.edge.console.users import ROLES, Session, UserError, UserStore, role_allows, users_path
from lanewatch.edge.decisions.journal import VERDICTS, Journal, utc_text
from lanewatch.edge.decisions.profile import axis_name
from lanewatch.edge.ops.metrics import ConsoleMetrics

log = logging.getLogger(__name__)

SESSION_COOKIE = "lw_session"
LOGIN_COOKIE = "lw_login"
"""Anti-forgery token of the login form (double-submit: cookie and hidden field must match)."""
MAX_UPLOAD_BYTES = 20 << 20
"""Largest N42 file accepted as a secondary-inspection attachment (bytes)."""
HEARTBEAT_S = 5.0
"""An event stream checks its session and, when nothing else was sent for this long (s), sends a ``heartbeat`` event:
the wall knows it is live while events or heartbeats arrive, and shows it is not when they stop (the browser waits
:data:`HEARTBEAT_S` times the wall page's ``data-heartbeat-misses``)."""
HEARTBEAT_MISSES = 3
"""Heartbeats a wall may miss before it says the console connection is lost."""
TICKER_ROWS = 15
"""Decisions the wall lists when it opens (newer ones are added live)."""
BACKLOG_LIMIT = 500
"""Most decisions replayed to a reconnecting browser (its Last-Event-ID onwards)."""
ORDERS = {"oldest": "oldest first", "newest": "newest first"}
"""Orders of the event table (its ``order`` parameter; the default is :func:`oldest_first`'s)."""
ALIVE_MAX_S = 60.0
"""Longest time (s) between two signs from an open, visible wall that it is in use (a third of the idle timeout when
shorter)."""
AWAITING_QUEUE = 1000
"""Alarms awaiting adjudication a decision's page reads to link the next one: the oldest of them, first come first
served."""


@dataclass
class Console:
    """Everything the request handlers share."""

    config: Config
    users: UserStore
    adjudications: Adjudications
    journal: Journal
    clock: Clock
    wall: Wall
    hub: Hub
    feeds: Feeds
    templates: Environment
    secure: bool
    """Whether the console is served over HTTPS (cookies are then marked Secure)."""
    metrics: ConsoleMetrics

    def health(self) -> dict[str, Any]:
        """The console's /healthz: ok while its journal and users database answer and its feeds run; the service's
        reachability (from its last /healthz read) is reported beside."""
        problems = []
        try:
            last_seq = self.adjudications.last_seq()
        except sqlite3.Error as exc:
            last_seq = None
            problems.append(f"journal {self.config.service.journal}: {exc}")
        try:
            self.users.users()
        except sqlite3.Error as exc:
            problems.append(f"users database {self.users.path}: {exc}")
        stopped = [t.name for t in self.feeds.threads if t.ident is not None and not t.is_alive()]
        if stopped:
            problems.append(f"stopped: {', '.join(stopped)}")
        return {
            "ok": not problems,
            "problems": problems,
            "journal": {"path": self.config.service.journal, "last_seq": last_seq},
            "service": {"reachable": self.wall.health.reachable},
            "sse_clients": len(self.hub.queues),
        }


class LoginLimiter:
    """Failed logins, counted so that a program flooding one account with wrong passwords from one address (every
    console behind one proxy or loopback address) locks out neither the other accounts nor, for long, that one:

    - per account and address: ``attempts`` failures within ``window_s`` refuse that account from that address
      until the oldest of them is ``window_s`` old;
    - per account, from any address: after ``attempts`` failures in a row, each further try waits a backoff that
      doubles with each failure, from 1 s up to ``window_s`` (forgotten after ``window_s`` without a failure).

    A try refused for either is not checked and not counted, so a flood cannot lengthen the wait past
    ``window_s`` and the right password gets in once it is over; a success clears the account. At most
    :data:`MAX_KEYS` accounts and pairs are remembered (the least recently failed are forgotten first), so made-up
    names cannot exhaust memory.
    """

    MAX_KEYS = 10_000

    def __init__(self, attempts: int, window_s: float) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.pairs: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self.accounts: OrderedDict[str, tuple[int, float]] = OrderedDict()
        """Failures in a row of each account, and when the last was (monotonic s)."""

    def wait_s(self, name: str, address: str, now: float | None = None) -> float:
        """0 when ``name`` may try to log in from ``address`` now, else how long (s) until it may."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        times = self.pairs.get((name, address))
        if times is not None:
            while times and now - times[0] >= self.window_s:
                times.popleft()
            if not times:
                del self.pairs[(name, address)]
            elif len(times) >= self.attempts:
                wait = times[0] + self.window_s - now
        account = self.accounts.get(name)
        if account is not None:
            count, last = account
            if now - last >= self.window_s:
                del self.accounts[name]
            elif count >= self.attempts:
                wait = max(wait, last + min(self.window_s, 2.0 ** (count - self.attempts)) - now)
        return max(0.0, wait)

    def failed(self, name: str, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.pairs.setdefault((name, address), deque()).append(now)
        self.pairs.move_to_end((name, address))
        count, _ = self.accounts.pop(name, (0, now))
        self.accounts[name] = (count + 1, now)
        for table in (self.pairs, self.accounts):
            while len(table) > self.MAX_KEYS:
                table.popitem(last=False)

    def succeeded(self, name: str, address: str) -> None:
        self.accounts.pop(name, None)
        self.pairs.pop((name, address), None)


class RequestMetrics:
    """ASGI middleware: counts each HTTP request by route (its path template) and status, and times it to the start
    of its response."""

    def __init__(self, app: ASGIApp, metrics: ConsoleMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.request_duration.labels(_route(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, timed)
        finally:
            self.metrics.requests.labels(_route(scope), str(status)).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return str(getattr(route, "path", "")) or "unmatched"


class SecurityHeaders:
    """ASGI middleware: a strict content security policy (no inline script, nothing from elsewhere), no framing,
    no sniffing, no referrer to other sites, no caching of pages; HSTS over HTTPS."""

    POLICY = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )
    REFERRER = b"same-origin"
    """The console's own pages send their address with a form (:func:`login_again` returns to it); no other site
    is told anything."""

    def __init__(self, app: ASGIApp, hsts: bool) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", self.POLICY.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", self.REFERRER),
            (b"x-frame-options", b"DENY"),
        ]
        if hsts:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if any(k == b"content-type" and v.startswith(b"text/html") for k, v in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers + self.headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


ACTS = {"acknowledge": "the acknowledgement", "adjudicate": "the adjudication", "amend": "the amendment"}


def login_again(request: Request) -> str:
    """Where a request without a live session is sent: the login page, then back to the page asked for. A form sent
    (POST) after the session ended is not recorded: back to the page it was sent from (its same-origin Referer, else
    the wall), which says so (``unrecorded``), never to the form's action (a GET there is 405)."""
    if request.method in ("GET", "HEAD"):
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return "/login?" + urlencode({"next": back}, safe="/")
    referer = urlsplit(request.headers.get("referer", ""))
    same_site = referer.netloc == request.url.netloc and referer.path.startswith("/")
    page = referer.path + (f"?{referer.query}" if referer.query else "") if same_site else "/"
    if page.startswith("/login"):
        page = "/"
    separator = "&" if "?" in page else "?"
    unrecorded = urlencode({"unrecorded": request.url.path}, safe="/")
    return "/login?" + urlencode({"next": page + separator + unrecorded}, safe="/") + "&" + unrecorded


def unrecorded_text(path: str) -> str:
    """What the page sent after its session ended says was not recorded (``path``: the form's action)."""
    parts = path.strip("/").split("/")
    if len(parts) == 3 and parts[0] == "decision" and parts[1].isdigit() and parts[2] in ACTS:
        what = f"{ACTS[parts[2]]} of decision {parts[1]}"
    else:
        what = "what you sent"
    return f"Your session had ended: {what} was NOT recorded. Log in and do it again."


def create_app(
    config: Config,
    *,
    secure: bool = True,
    health: Callable[[Config], Health] = read_health,
    start_feeds: bool = True,
    keys: Keys | None = None,
    registry: CollectorRegistry | None = None,
) -> Starlette:
    """The console for ``config``; ``secure`` marks cookies Secure (HTTPS); ``health`` reads the lanes' health;
    ``keys`` are the console's CURVE keys on the alert bus (None: plaintext); ``start_feeds`` False serves the
    journal without following the bus; its metrics go to ``registry`` (default: one of its own)."""
    journal_path = Path(config.service.journal)
    adjudications = Adjudications(journal_path, Clock.named(config.console.timezone))
    journal = Journal(journal_path, readonly=True)
    users = UserStore(users_path(config))
    clock = Clock.named(config.console.timezone)
    wall = Wall(config, adjudications, journal, clock)
    hub = Hub()
    metrics = ConsoleMetrics(registry if registry is not None else CollectorRegistry())
    metrics.sse_clients.set_function(lambda: len(hub.queues))
    history = HealthHistory(journal_path)
    feeds = Feeds(config, wall, hub, metrics, history, health=health, keys=keys)
    env = Environment(loader=PackageLoader("lanewatch.edge.console", "templates"), autoescape=select_autoescape())
    env.globals.update(ROLES=ROLES, DISPOSITIONS=DISPOSITIONS, SECONDARY=SECONDARY, VERDICTS=VERDICTS, STATES=STATES)
    env.globals.update(REASON_NAMES=REASON_NAMES, INCOMPLETE_NAMES=INCOMPLETE_NAMES)
    env.filters["local"] = clock.local
    env.filters["utc"] = utc_label
    env.globals["allows"] = role_allows
    env.globals["unrecorded_text"] = unrecorded_text
    console = Console(config, users, adjudications, journal, clock, wall, hub, feeds, env, secure, metrics)
    limiter = LoginLimiter(config.console.login_attempts, config.console.login_window_s)

    # ---- helpers ---------------------------------------------------------------------------------
    def render(request: Request, name: str, session: Session | None, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(
            request=request, session=session, user=session.user if session else None, config=config, **context
        )
        return HTMLResponse(html, status_code=status)

    async def session_of(request: Request) -> Session | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        return await run_in_threadpool(users.session, token, config.console.idle_timeout_s)

    async def need(request: Request, role: str = "operator") -> Session:
        session = await session_of(request)
        if session is None:
            raise HTTPException(303, headers={"Location": login_again(request)})
        if not role_allows(session.user.role, role):
            audit(session, "role-refused", f"{request.method} {request.url.path}: needs {role}, is {session.user.role}",
                  request)  # fmt: skip
            raise HTTPException(403, f"this page is for the {role} role and above; you are {session.user.role}")
        return session

    async def checked_form(request: Request, session: Session) -> FormData:
        form = await request.form(max_part_size=MAX_UPLOAD_BYTES)
        token = form.get("csrf")
        if not isinstance(token, str) or not secrets.compare_digest(token, session.csrf):
            users.audit(session.user.name, "csrf-refused", request.url.path, _client(request))
            raise HTTPException(403, "the form's anti-forgery token is missing or wrong: reload the page and retry")
        return form

    def audit(session: Session, action: str, detail: str, request: Request) -> None:
        users.audit(session.user.name, action, detail, _client(request))

    # ---- login -----------------------------------------------------------------------------------
    async def login_page(request: Request) -> Response:
        token = secrets.token_urlsafe(24)
        response = render(request, "login.html", None, login_csrf=token, next=request.query_params.get("next", "/"))
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, secure=secure, samesite="strict", path="/login")
        return response

    async def login(request: Request) -> Response:
        form = await request.form()
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        address = _client(request)
        target = str(form.get("next") or "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie or not secrets.compare_digest(cookie, str(form.get("csrf", ""))):
            raise HTTPException(403, "the login form's anti-forgery token is missing or wrong: reload the page")

        def login_again(status: int, error: str) -> Response:
            """The login form again, with ``error`` and a fresh anti-forgery token."""
            token = secrets.token_urlsafe(24)
            response = render(request, "login.html", None, status, login_csrf=token, next=target, error=error)
            response.set_cookie(LOGIN_COOKIE, token, httponly=True, secure=secure, samesite="strict", path="/login")
            return response

        wait_s = limiter.wait_s(name, address)
        if wait_s > 0:
            metrics.login_failures.labels("refused").inc()
            users.audit(name or "?", "login-refused", f"too many failed logins: {math.ceil(wait_s)} s to wait", address)
            return login_again(429, f"Too many failed logins for {name}: try again in {math.ceil(wait_s)} s.")
        user = await run_in_threadpool(users.verify, name, password)
        if user is None:
            limiter.failed(name, address)
            metrics.login_failures.labels("failed").inc()
            users.audit(name or "?", "login-failed", "wrong user name or password", address)
            return login_again(401, "Wrong user name or password.")
        limiter.succeeded(name, address)
        token, _ = users.open_session(user)
        users.audit(user.name, "login", f"role {user.role}", address)
        response = RedirectResponse(target, 303)
        response.set_cookie(SESSION_COOKIE, token, httponly=True, secure=secure, samesite="strict")
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(request: Request) -> Response:
        session = await need(request)
        await checked_form(request, session)
        users.close_session(session)
        audit(session, "logout", "", request)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # ---- the wall and its live feed ----------------------------------------------------------------
    async def wall_page(request: Request) -> Response:
        session = await need(request)
        recent = msgspec.to_builtins(
            [
                summary(d, adjudications.state(d.seq, d.verdict), clock)
                for d in await run_in_threadpool(journal.query, limit=TICKER_ROWS)
            ]
        )
        return render(
            request, "wall.html", session, wall=wall.snapshot(), recent=recent, max_mute_s=config.console.max_mute_s,
            heartbeat_s=HEARTBEAT_S, heartbeat_misses=HEARTBEAT_MISSES,
            alive_s=min(ALIVE_MAX_S, config.console.idle_timeout_s / 3),
        )  # fmt: skip

    async def alive(request: Request) -> Response:
        """The wall's sign that it is open and visible (see ``[console].idle_timeout_s``): keeps its session open."""
        await need(request)
        return Response(status_code=204)

    async def wall_json(request: Request) -> Response:
        await need(request)
        return Response(json.dumps(wall.snapshot()), media_type="application/json")

    async def events(request: Request) -> Response:
        await need(request)
        last = request.headers.get("last-event-id") or request.query_params.get("since") or ""
        try:
            since = int(last) if last else None
        except ValueError:
            since = None
        queue = hub.subscribe()

        async def stream() -> AsyncIterator[bytes]:
            sent = 0
            try:
                if hub.closing:  # the server is shutting down
                    yield CLOSING.encode()
                    return
                yield b"retry: 2000\n\n"
                yield Event("wall", None, json.dumps(wall.snapshot())).encode()
                if since is not None:
                    backlog = await run_in_threadpool(journal.since, since, BACKLOG_LIMIT)
                    for decision in backlog:
                        state = adjudications.state(decision.seq, decision.verdict)
                        data = msgspec.json.encode(summary(decision, state, clock)).decode()
                        yield Event("decision", decision.seq, data).encode()
                        sent = decision.seq
                token = request.cookies.get(SESSION_COOKIE, "")
                check = time.monotonic() + HEARTBEAT_S
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), max(0.0, check - time.monotonic()))
                    except TimeoutError:
                        # the session is checked, not touched: only the wall's own sign that it is visible keeps it
                        session = await run_in_threadpool(users.session, token, config.console.idle_timeout_s, False)
                        if session is None:
                            yield Event("logout", None, "{}").encode()
                            return
                        check = time.monotonic() + HEARTBEAT_S
                        yield HEARTBEAT.encode()
                        continue
                    check = time.monotonic() + HEARTBEAT_S
                    if event.name == "decision" and event.id is not None and event.id <= sent:
                        continue
                    yield event.encode()
                    if event is CLOSING:
                        return
            finally:
                hub.unsubscribe(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # ---- users -----------------------------------------------------------------------------------
    async def users_page(request: Request) -> Response:
        session = await need(request, "admin")
        error = notice = ""
        if request.method == "POST":
            form = await checked_form(request, session)
            action = str(form.get("action", ""))
            try:
                if action == "add":
                    name, role = str(form.get("name", "")), str(form.get("role", ""))
                    users.add(name, role, str(form.get("password", "")), session.user.name, _client(request))
                elif action in ("disable", "enable", "role"):
                    name = str(form.get("name", ""))
                    if name == session.user.name:  # so that the site always keeps an admin
                        raise UserError(f"you cannot {'change the role of' if action == 'role' else action} yourself")
                    if action == "role":
                        users.set_role(name, str(form.get("role", "")), session.user.name, _client(request))
                    else:
                        users.set_disabled(name, action == "disable", session.user.name, _client(request))
                elif action == "password":
                    name = str(form.get("name", ""))
                    users.set_password(name, str(form.get("password", "")), session.user.name, _client(request))
                    notice = f"{name} has a new password; their sessions were closed"
            except UserError as exc:
                error = str(exc)
        return render(request, "users.html", session, users=users.users(), error=error, notice=notice)

    async def reports_page(request: Request) -> Response:
        session = await need(request, "supervisor")
        from lanewatch.edge.console.reports import SHIFTS, lane_reports, reports_csv

        today = datetime.now(clock.zone).date().isoformat()
        day = request.query_params.get("day") or today
        shift = request.query_params.get("shift") or "day"
        try:
            start_hour, end_hour = SHIFTS[shift]
            midnight = datetime.combine(date.fromisoformat(day), time_of_day(), clock.zone)
        except (KeyError, ValueError):
            raise HTTPException(400, f"a report needs a day (YYYY-MM-DD) and a shift ({', '.join(SHIFTS)})") from None
        since = utc_text(midnight + timedelta(hours=start_hour))
        until = utc_text(midnight + timedelta(hours=end_hour))
        lanes = [lane.id for lane in config.lanes]
        reports = await run_in_threadpool(lane_reports, adjudications, journal, history, lanes, since, until)
        end = end_hour if end_hour <= 24 else end_hour - 24  # a day ends at 24:00, a night the next day at 06:00
        span = f"{day} {shift} shift {start_hour:02d}:00-{end:02d}:00 local time ({config.console.timezone})"
        if request.query_params.get("format") == "csv":
            disposition = f'attachment; filename="report-{day}-{shift}.csv"'
            return PlainTextResponse(
                reports_csv(reports, span), media_type="text/csv", headers={"Content-Disposition": disposition}
            )
        return render(request, "report.html", session, reports=reports, day=day, shift=shift, shifts=SHIFTS, span=span)

    async def audit_page(request: Request) -> Response:
        session = await need(request, "supervisor")
        return render(request, "audit.html", session, entries=users.audit_log(500))

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", wall_page),
        Route("/wall.json", wall_json),
        Route("/alive", alive),
        Route("/events", events),
        Route("/users", users_page, methods=["GET", "POST"]),
        Route("/audit", audit_page),
        Route("/reports", reports_page),
        Mount("/static", StaticFiles(packages=[("lanewatch.edge.console", "static")]), name="static"),
    ]
    routes += decision_routes(console, need, checked_form, audit, render)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub.loop = asyncio.get_running_loop()
        if start_feeds:
            feeds.start()
        try:
            yield
        finally:
            if start_feeds:
                feeds.stop()
            journal.close()
            adjudications.close()
            history.close()
            users.close()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code in (301, 302, 303) and exc.headers:
            return RedirectResponse(exc.headers["Location"], exc.status_code)
        session = await session_of(request)
        return render(request, "error.html", session, exc.status_code, code=exc.status_code, message=exc.detail)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
        middleware=[Middleware(RequestMetrics, metrics=metrics), Middleware(SecurityHeaders, hsts=secure)],
    )
    app.state.console = console

    return app


# ---- decisions: table, detail, adjudication ---------------------------------------------------------
def _filter(console: Console, params: Any) -> tuple[EventFilter, dict[str, str], str]:
    """The event filter from query parameters (dates in the site's time zone), the values to show, an error."""
    shown = {key: str(params.get(key) or "") for key in ("lane", "verdict", "state", "from", "to", "q", "order")}
    error = ""
    since = until = None
    try:
        if shown["from"]:
            since = console.clock.utc_of_local(shown["from"])
        if shown["to"]:
            end = shown["to"]
            # a date alone ends with its whole day
            until = console.clock.utc_of_local(_next_day(end) if len(end) == 10 else end)
    except ValueError:
        error = "dates are YYYY-MM-DD or YYYY-MM-DDTHH:MM, in the site's time zone"
    if since is not None and until is not None and since >= until:
        error = f"the dates are the wrong way round: from {shown['from']} is not before to {shown['to']}"
    if shown["lane"] and shown["lane"] not in [lane.id for lane in console.config.lanes]:
        error = f"no lane {shown['lane']!r} in the configuration"
    if shown["verdict"] and shown["verdict"] not in VERDICTS:
        error = f"no verdict {shown['verdict']!r}: one of {', '.join(VERDICTS)}"
    if shown["state"] and shown["state"] not in STATES:
        error = f"no adjudication state {shown['state']!r}: one of {', '.join(STATES)}"
    if shown["order"] and shown["order"] not in ORDERS:
        error = f"no order {shown['order']!r}: one of {', '.join(ORDERS)}"
    where = EventFilter(
        lane=shown["lane"] or None,
        verdict=shown["verdict"] if shown["verdict"] in VERDICTS else None,
        state=shown["state"] if shown["state"] in STATES else None,
        since=since,
        until=until,
        text=shown["q"].strip() or None,  # read by Adjudications.events, which raises SearchError for a bad one
    )
    return where, shown, error


def oldest_first(shown: dict[str, str]) -> bool:
    """Whether the event table lists the oldest first: as asked, else for the queues of alarms awaiting
    adjudication (first come, first served: the oldest must not page out of sight), and newest first otherwise."""
    if shown["order"]:
        return shown["order"] == "oldest"
    return shown["state"] in ("awaiting", "unacknowledged")


def _next_day(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


def decision_routes(
    console: Console,
    need: Callable,
    checked_form: Callable,
    audit: Callable,
    render: Callable,
) -> list[Route]:
    """The routes of the event table, the detail page and the adjudication forms."""
    adjudications, journal, config = console.adjudications, console.journal, console.config

    async def table(request: Request) -> Response:
        session = await need(request)
        where, shown, error = _filter(console, request.query_params)
        if request.query_params.get("format") == "csv":
            if error:  # not an export of other decisions than asked for
                return PlainTextResponse(error, status_code=400)
            try:
                return await run_in_threadpool(_csv, console, where)
            except SearchError as exc:
                return PlainTextResponse(str(exc), status_code=400)

        def page_arg(name: str) -> int | None:
            value = request.query_params.get(name, "")
            return int(value) if value.isdigit() else None

        def build() -> Response:  # off the event loop: the query, the rows' decoding and the rendering
            nonlocal error
            page = EventPage([], None, None)  # a filter in error shows no rows rather than rows it did not choose
            if not error:
                try:
                    page = adjudications.events(
                        where, config.console.page_size, page_arg("before"), page_arg("after"), fields=True,
                        oldest_first=oldest_first(shown),
                    )  # fmt: skip
                except SearchError as exc:
                    error = str(exc)
            rows = [
                {"row": row, **_cells(row.fields), "reasons": reasons(row.fields)[:2]}
                for row in page.rows
                if row.fields
            ]
            query = "&".join(f"{k}={v}" for k, v in shown.items() if v)
            lanes = [lane.id for lane in config.lanes]
            return render(
                request, "events.html", session, 400 if error else 200, rows=rows, page=page, shown=shown,
                error=error, query=query, lanes=lanes, timezone=config.console.timezone,
                oldest_first=oldest_first(shown), orders=ORDERS,
            )  # fmt: skip

        return await run_in_threadpool(build)

    async def detail(request: Request) -> Response:
        return detail_page(request, await need(request), request.path_params["seq"])

    def detail_page(
        request: Request, session: Session, seq: int, status: int = 200, refused: str = "", typed: Any = None
    ) -> Response:
        """Decision ``seq``'s page; after a refused form (``typed``: its FormData), with why (``refused``) and what
        was typed in it kept."""
        decision = journal.get(seq)
        if decision is None:
            raise HTTPException(404, f"no decision numbered {seq}")
        history = adjudications.history(seq)
        preview = decision.xray.preview if decision.xray is not None else None
        svg = figure.svg(decision, f"/decision/{seq}/preview.png" if preview else None)
        kept = {key: str(typed.get(key) or "") for key in ("disposition", "secondary", "notes")} if typed else {}
        return render(
            request, "detail.html", session, status, d=decision, seq=seq, reasons=reasons(decision),
            model=model_text(decision), fielded=fielded_text(decision),
            state=adjudications.state(seq, decision.verdict), history=history, figure=svg, axis=axis_name(decision),
            awaiting=[r.seq for r in adjudications.awaiting(AWAITING_QUEUE)], refused=refused, typed=kept,
        )  # fmt: skip

    async def preview_png(request: Request) -> Response:
        await need(request)
        decision = journal.get(request.path_params["seq"])
        preview = decision.xray.preview if decision is not None and decision.xray is not None else None
        if preview is None:
            raise HTTPException(404, "this decision has no X-ray preview")
        try:
            png = base64.b64decode(preview.png_base64, validate=True)
        except binascii.Error:
            raise HTTPException(500, "the X-ray preview of this decision cannot be decoded") from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def evidence_zip(request: Request) -> Response:
        session = await need(request)
        seq = request.path_params["seq"]
        journaled = journal.get_json(seq)
        if journaled is None:
            raise HTTPException(404, f"no decision numbered {seq}")
        from lanewatch.edge.console.evidence import bundle

        try:
            history, attached = adjudications.history(seq), adjudications.attachments(seq)
            data = await run_in_threadpool(bundle, journaled, history, "", attached, console.clock)
        except msgspec.ValidationError as exc:
            raise HTTPException(500, f"decision {seq} does not fit the decision contract: {exc}") from None
        audit(session, "evidence-downloaded", f"decision {seq}", request)
        disposition = f'attachment; filename="evidence-{seq}.zip"'
        return Response(data, media_type="application/zip", headers={"Content-Disposition": disposition})

    async def act(request: Request) -> Response:
        session = await need(request)
        seq = request.path_params["seq"]
        kind = request.path_params["kind"]
        if kind not in ("acknowledge", "adjudicate", "amend"):
            raise HTTPException(404)
        if kind == "amend" and not role_allows(session.user.role, "supervisor"):
            detail = f"{request.method} {request.url.path}: needs supervisor, is {session.user.role}"
            audit(session, "role-refused", detail, request)
            raise HTTPException(403, "only a supervisor can amend an adjudication")
        form = await checked_form(request, session)
        attachment, nuclides = None, None
        upload = form.get("n42")
        if isinstance(upload, UploadFile) and upload.filename:
            data = await upload.read()
            try:
                nuclides = await run_in_threadpool(n42_nuclides, data)
            except ValueError as exc:  # the page again, what was typed kept: only the file must be chosen again
                return detail_page(request, session, seq, 409, f"Not recorded: {exc}. Choose the file again.", form)
            attachment = (Path(upload.filename).name, data)
        amends = form.get("amends")
        try:
            recorded = await run_in_threadpool(
                adjudications.record, seq, kind, session.user.name, session.user.role,
                disposition=str(form.get("disposition") or "") or None,
                secondary=str(form.get("secondary") or "") or None,
                notes=str(form.get("notes") or "").strip(),
                attachment=attachment, nuclides=nuclides,
                amends=int(str(amends)) if amends and str(amends).isdigit() else None,
            )  # fmt: skip
        except AdjudicationError as exc:
            raise HTTPException(409, str(exc)) from None
        disposition = DISPOSITIONS.get(recorded.disposition or "", recorded.disposition)
        detail = f"decision {seq}" + (f": {disposition}" if disposition else "")
        if recorded.amends:
            detail += f" (amends act #{recorded.amends})"
        audit(session, {"acknowledge": "acknowledged", "adjudicate": "adjudicated", "amend": "amended"}[kind],
              detail, request)  # fmt: skip
        console.feeds.recorded(recorded)
        target = str(form.get("next") or f"/decision/{seq}")
        return RedirectResponse(target if target.startswith("/") and not target.startswith("//") else "/", 303)

    async def attachment(request: Request) -> Response:
        await need(request)
        found = adjudications.attachment(request.path_params["id"])
        if found is None:
            raise HTTPException(404, "no such attachment")
        name, data = found
        safe = safe_file_name(name)
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{safe}"'},
        )

    return [
        Route("/decisions", table),
        Route("/decision/{seq:int}", detail),
        Route("/decision/{seq:int}/preview.png", preview_png),
        Route("/decision/{seq:int}/evidence.zip", evidence_zip),
        Route("/decision/{seq:int}/{kind:str}", act, methods=["POST"]),
        Route("/attachment/{id:int}", attachment),
    ]


def _cells(fields: RowFields) -> dict[str, str]:
    """What the event table (and its CSV) shows of a decision beside its seq, times, lane, verdict and adjudication:
    the portal's own alarm, the model, the fielded rule and the NORM release."""
    norm = norm_state(fields)
    return {
        "portal": "ALARM" if fields.device_alarm else "-",
        "model": model_short(fields) or "-",
        "fielded": fielded_short(fields),
        "norm": norm,
        "norm_words": NORM_WORDS.get(norm, "-"),
    }


CSV_MAX_ROWS = 100_000
"""Most decisions one CSV export holds; a larger export says so in its ``X-Lanewatch-Truncated`` header."""
CSV_PAGE = 500


def _csv(console: Console, where: EventFilter) -> Response:
    """Every decision of the filter (up to :data:`CSV_MAX_ROWS`, newest first) as CSV with every column of the table,
    the disposition's name and the acts' notes; local times (the zone in the column's title) and UTC."""
    out = io.StringIO()
    writer = csv.writer(out)
    zone = console.clock.zone.key
    writer.writerow(
        ["seq", f"end ({zone})", "end (UTC)", "lane", "verdict", "portal_alarm", "model", "fielded_rule",
         "norm_release", "state", "disposition", "reasons", "notes"]
    )  # fmt: skip
    before, written, truncated = None, 0, False
    while True:
        page = console.adjudications.events(where, min(CSV_PAGE, CSV_MAX_ROWS - written), before, fields=True)
        notes = console.adjudications.notes([row.seq for row in page.rows])
        for row in page.rows:
            cells = _cells(row.fields) if row.fields else {}
            writer.writerow(
                [row.seq, console.clock.local(row.end), utc_label(row.end), row.lane, row.verdict,
                 cells.get("portal", ""), cells.get("model", ""), cells.get("fielded", ""), cells.get("norm_words", ""),
                 row.state, DISPOSITIONS.get(row.disposition or "", row.disposition or ""),
                 "; ".join(reasons(row.fields) if row.fields else []), notes.get(row.seq, "")]
            )  # fmt: skip
        written += len(page.rows)
        if page.older is None:
            break
        if written >= CSV_MAX_ROWS:
            truncated = True
            break
        before = page.older
    headers = {"Content-Disposition": 'attachment; filename="decisions.csv"', "X-Lanewatch-Rows": str(written)}
    if truncated:
        headers["X-Lanewatch-Truncated"] = (
            f"the first {CSV_MAX_ROWS} decisions only (newest first); narrow the filter (dates, lane) for the rest"
        )
    return PlainTextResponse(out.getvalue(), media_type="text/csv", headers=headers)


def n42_nuclides(data: bytes) -> list[str]:
    """The nuclides a handheld identifier's N42 file names in its analysis results (read with SpecUtils).

    Raises ValueError when SpecUtils cannot read the file.
    """
    import tempfile

    import SpecUtils

    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(f"the N42 file is larger than {MAX_UPLOAD_BYTES >> 20} MB")
    with tempfile.NamedTemporaryFile(suffix=".n42") as tmp:
        tmp.write(data)
        tmp.flush()
        spec = SpecUtils.SpecFile()
        try:
            spec.loadFile(tmp.name, SpecUtils.ParserType.Auto)
        except RuntimeError:
            raise ValueError("the attachment is not a file SpecUtils can read (an N42 file is expected)") from None
        found = []
        for result in spec.detectorAnalysisResults() or []:
            name = result.nuclide().strip()
            if name and name not in found:
                found.append(name)
        return found
