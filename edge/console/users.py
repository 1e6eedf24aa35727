"""Console users, their sessions and the audit log, in one SQLite file beside the journal; ``lanewatch users``.

``users(name, role, password, created, disabled)``
    ``password`` is an argon2id hash (argon2-cffi's defaults: RFC 9106's second recommended set,
    64 MiB, 3 passes); the plain password is never stored or logged.
``sessions(token_sha256, user, csrf, created, last_seen)``
    A session cookie holds a random 256-bit token; only its SHA-256 is stored, so a copy of the
    file opens no session. ``csrf`` is the session's anti-forgery token, put in every form.
``audit(id, time, user, action, detail, address)``
    Logins (and refused ones), logouts, acknowledgements, adjudications, amendments and user changes.
    Append-only: triggers refuse UPDATE and DELETE.

Roles are ordered: an ``operator`` acknowledges and adjudicates, a ``supervisor`` also amends and
reports, an ``admin`` also manages users.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
import secrets
import sqlite3
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lanewatch.edge.config import Config
from lanewatch.edge.store import SqliteStore

ROLES = ("operator", "supervisor", "admin")
"""Roles, each allowed what the ones before it are."""
MIN_PASSWORD = 8
"""Shortest password accepted (characters)."""
TOUCH_FRACTION = 0.05
"""A session's idle clock is written when it is at least this fraction of the idle timeout old (45 s of 15 min)."""

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        password TEXT NOT NULL,
        created TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS sessions (
        token_sha256 TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        csrf TEXT NOT NULL,
        created REAL NOT NULL,
        last_seen REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time TEXT NOT NULL,
        user TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL,
        address TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS audit_time ON audit (time)",
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
)


class UserError(ValueError):
    """A user name, role or password that cannot be used; the message says why."""


def now_text() -> str:
    """Now, as the journal's sortable UTC text."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _hasher():  # argon2 is imported only by the commands that hash
    from argon2 import PasswordHasher

    return PasswordHasher()


def role_allows(role: str, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` may."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class User:
    name: str
    role: str
    created: str
    disabled: bool


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    """The anti-forgery token every form of this session carries."""
    token_sha256: str


@dataclass(frozen=True)
class AuditEntry:
    id: int
    time: str
    """UTC, ISO 8601."""
    user: str
    action: str
    detail: str
    address: str


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UserStore(SqliteStore):
    """The users database at ``path`` (created with its folder if missing); safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path, SCHEMA, pragmas=["journal_mode = WAL"])
        with contextlib.suppress(OSError):
            self.path.chmod(0o600)
        self._hasher = None

    # ---- users -----------------------------------------------------------------------------------
    def _password_hash(self, password: str) -> str:
        if len(password) < MIN_PASSWORD:
            raise UserError(f"a password needs at least {MIN_PASSWORD} characters")
        if self._hasher is None:
            self._hasher = _hasher()
        return self._hasher.hash(password)

    def add(self, name: str, role: str, password: str, by: str = "cli", address: str = "local") -> User:
        """Create user ``name``; raises :class:`UserError` for a bad or taken name, unknown role or short password."""
        if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@" for c in name):
            raise UserError(f"a user name is 1-64 letters, digits or . _ - @, got {name!r}")
        if role not in ROLES:
            raise UserError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        hashed = self._password_hash(password)
        created = now_text()
        try:
            with self._tx() as conn:
                conn.execute(
                    "INSERT INTO users (name, role, password, created) VALUES (?, ?, ?, ?)",
                    (name, role, hashed, created),
                )
                self._audit(conn, by, "user-added", f"{name} as {role}", address)
        except sqlite3.IntegrityError:
            raise UserError(f"user {name!r} exists already") from None
        return User(name, role, created, False)

    def set_password(self, name: str, password: str, by: str, address: str = "local") -> None:
        """Give ``name`` a new password (audited) and close their sessions, so that whoever held the old one is out;
        raises :class:`UserError` for an unknown user or a short password."""
        hashed = self._password_hash(password)
        with self._tx() as conn:
            if conn.execute("UPDATE users SET password = ? WHERE name = ?", (hashed, name)).rowcount == 0:
                raise UserError(f"no user {name!r}")
            conn.execute("DELETE FROM sessions WHERE user = ?", (name,))
            self._audit(conn, by, "password-set", name, address)

    def set_role(self, name: str, role: str, by: str, address: str = "local") -> None:
        """Give ``name`` another role (audited); their open sessions act with it from their next request."""
        if role not in ROLES:
            raise UserError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        with self._tx() as conn:
            if conn.execute("UPDATE users SET role = ? WHERE name = ?", (role, name)).rowcount == 0:
                raise UserError(f"no user {name!r}")
            self._audit(conn, by, "role-set", f"{name} as {role}", address)

    def set_disabled(self, name: str, disabled: bool, by: str, address: str) -> None:
        """Disable (all its sessions closed) or enable user ``name``."""
        with self._tx() as conn:
            if conn.execute("UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name)).rowcount == 0:
                raise UserError(f"no user {name!r}")
            if disabled:
                conn.execute("DELETE FROM sessions WHERE user = ?", (name,))
            self._audit(conn, by, "user-disabled" if disabled else "user-enabled", name, address)

    def users(self) -> list[User]:
        rows = self._read("SELECT name, role, created, disabled FROM users ORDER BY name")
        return [User(name, role, created, bool(disabled)) for name, role, created, disabled in rows]

    def get(self, name: str) -> User | None:
        rows = self._read("SELECT name, role, created, disabled FROM users WHERE name = ?", (name,))
        return User(rows[0][0], rows[0][1], rows[0][2], bool(rows[0][3])) if rows else None

    def verify(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs and they are enabled, else None (the time spent is alike)."""
        from argon2.exceptions import InvalidHashError, VerificationError

        if self._hasher is None:
            self._hasher = _hasher()
        rows = self._read("SELECT password, role, created, disabled FROM users WHERE name = ?", (name,))
        stored = rows[0][0] if rows else self._hasher.hash(secrets.token_hex(8))  # same work for unknown names
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if not rows or rows[0][3]:
            return None
        return User(name, rows[0][1], rows[0][2], False)

    # ---- sessions --------------------------------------------------------------------------------
    def open_session(self, user: User) -> tuple[str, Session]:
        """A new session for ``user``: the cookie's token (kept nowhere else) and the session."""
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), _hash_token(token))
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO sessions (token_sha256, user, csrf, created, last_seen) VALUES (?, ?, ?, ?, ?)",
                (session.token_sha256, user.name, session.csrf, now, now),
            )
        return token, session

    def session(self, token: str, idle_timeout_s: float, touch: bool = True) -> Session | None:
        """The live session of cookie ``token``, or None when unknown or idle too long; ``touch`` restarts its idle
        clock (a request of the user's; an open event stream's periodic check does not).

        The idle clock is written at most every :data:`TOUCH_FRACTION` of ``idle_timeout_s`` (a session may so
        close up to that much early), so most requests only read: a write is a synced transaction, whose time
        would add to every page's.
        """
        digest = _hash_token(token)
        now = time.time()
        rows = self._read(
            "SELECT s.user, s.csrf, s.last_seen, u.role, u.created, u.disabled FROM sessions s"
            " JOIN users u ON u.name = s.user WHERE s.token_sha256 = ?",
            (digest,),
        )
        if not rows:
            return None
        name, csrf, last_seen, role, created, disabled = rows[0]
        if disabled or now - last_seen > idle_timeout_s:
            with self._tx() as conn:
                conn.execute("DELETE FROM sessions WHERE token_sha256 = ?", (digest,))
            return None
        if touch and now - last_seen >= idle_timeout_s * TOUCH_FRACTION:
            with self._tx() as conn:
                conn.execute("UPDATE sessions SET last_seen = ? WHERE token_sha256 = ?", (now, digest))
        return Session(User(name, role, created, False), csrf, digest)

    def close_session(self, session: Session) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM sessions WHERE token_sha256 = ?", (session.token_sha256,))

    # ---- audit -----------------------------------------------------------------------------------
    @staticmethod
    def _audit(conn: sqlite3.Connection, user: str, action: str, detail: str, address: str) -> None:
        conn.execute(
            "INSERT INTO audit (time, user, action, detail, address) VALUES (?, ?, ?, ?, ?)",
            (now_text(), user, action, detail, address),
        )

    def audit(self, user: str, action: str, detail: str, address: str) -> None:
        """Append one entry to the audit log."""
        with self._tx() as conn:
            self._audit(conn, user, action, detail, address)

    def audit_log(self, limit: int = 200) -> list[AuditEntry]:
        """The newest ``limit`` audit entries, newest first."""
        sql = "SELECT id, time, user, action, detail, address FROM audit ORDER BY id DESC LIMIT ?"
        rows = self._read(sql, (limit,))
        return [AuditEntry(*row) for row in rows]


# ---- lanewatch users ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lanewatch users`` (the CLI adds ``--config``)."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="add a console user (the password is read from a prompt, or stdin)")
    add.add_argument("name", help="user name (letters, digits, . _ - @)")
    add.add_argument("--role", required=True, choices=ROLES, help="operator, supervisor or admin")
    actions = [add, sub.add_parser("list", help="list the console users")]
    for action, text in (
        ("disable", "disable a user (closes their sessions)"),
        ("enable", "enable a disabled user"),
        ("passwd", "give a user a new password (read from a prompt, or stdin; closes their sessions)"),
        ("role", "give a user another role"),
    ):
        actions.append(sub.add_parser(action, help=text))
        actions[-1].add_argument("name")
    actions[-1].add_argument("--role", required=True, choices=ROLES, help="operator, supervisor or admin")
    for action_parser in actions:  # --config after the action too: `lanewatch users add NAME --config FILE`
        action_parser.add_argument("--config", default=argparse.SUPPRESS, help="configuration file (TOML)")


def users_path(config: Config) -> Path:
    """The users database: ``[console].users``, relative to the journal's folder."""
    return Path(config.service.journal).parent / config.console.users


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise UserError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


def run(args: argparse.Namespace, config: Config) -> int:
    """Run ``lanewatch users ACTION``; 0 when done, 1 when refused (reason on stderr). Only ``add`` makes the users
    file: the others on a file that is not there (a forgotten or wrong ``--config``) say so, not "no users"."""
    path = users_path(config)
    if args.action != "add" and not path.exists():
        print(
            f"lanewatch users: no users file {path} (configuration: {config.source}); `lanewatch users add` makes it",
            file=sys.stderr,
        )
        return 1
    store = UserStore(path)
    try:
        if args.action == "add":
            user = store.add(args.name, args.role, _read_password())
            print(f"added {user.name} ({user.role}) to {store.path}")
        elif args.action == "list":
            for user in store.users():
                print(f"{user.name:24} {user.role:10} {user.created}{'  DISABLED' if user.disabled else ''}")
        elif args.action == "passwd":
            store.set_password(args.name, _read_password(), "cli")
            print(f"{args.name}: password set, their sessions closed")
        elif args.action == "role":
            store.set_role(args.name, args.role, "cli")
            print(f"{args.name}: role {args.role}")
        else:
            store.set_disabled(args.name, args.action == "disable", "cli", "local")
            print(f"{args.name}: {args.action}d")
    except UserError as exc:
        print(f"lanewatch users: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0
