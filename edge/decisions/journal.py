"""The alert journal: every decision, durably, in one SQLite file, before anyone hears of it.

A decision is a JSON-serializable dict with at least ``lane``, ``occupancy_id``, ``verdict``
(``CLEAR`` | ``ALARM`` | ``INCOMPLETE``), ``start`` and ``end`` (ISO 8601, UTC); every decision is checked
against the published contract (:class:`lanewatch.edge.decisions.decision.Decision`) as it is written. One that
does not fit is a bug: it is counted (``lanewatch_handler_errors_total{where="decision-schema"}``) and logged,
and journaled all the same, since a decision is never lost.
:meth:`Journal.append` gives it the next ``seq`` and returns only once the row is committed
and fsynced (WAL mode, ``synchronous=FULL``), so a decision that was acknowledged survives a
crash or a power cut, and may then be published. ``seq`` comes from an ``AUTOINCREMENT`` key:
strictly increasing and never reused, also across restarts. One occupancy gets exactly one
decision: appending an ``occupancy_id`` that is already journaled returns the stored decision.

Other processes may read the file while the service writes (WAL readers never block the
writer); open it with ``Journal(path, readonly=True)`` or any SQLite client. The layout:

``decisions(seq, occupancy_id, lane, verdict, start, end, created, encoding, body)``
    ``start``/``end``/``created`` are ISO 8601 UTC text in one fixed format
    (``2024-05-01T12:00:00.000000Z``) so that they compare as text; ``body`` is the whole
    decision as JSON text (``encoding = 'json'``), or zlib-compressed JSON as a blob
    (``encoding = 'json+zlib'``) when that is at least :data:`COMPRESS_MIN_SAVING` smaller:
    a 41 kB decision with its count profiles compresses to 18 kB at level 1 in 0.35 ms,
    while the fsynced commit takes 0.3-3 ms, and the journal grows 2-3 times slower.

The schema version is ``PRAGMA user_version``; :data:`MIGRATIONS` lists the steps from an
empty file, each applied once in its own transaction.

A decision is never lost and a ``seq`` never reused, whatever happens to the file:

* The highest ``seq`` given is also kept in a small side file (``<journal>.seq``, written in
  place after each commit), so a journal deleted or replaced while the service was down does not
  number from 1 again.
* The journal's file identity (``st_dev``, ``st_ino``) is checked before every write and by
  :meth:`Journal.problem`: a journal deleted or replaced while open is *detached*. Decisions
  then go to the fallback file, ``<journal>.fallback.jsonl`` (one JSON decision a line,
  fsynced), with the next ``seq``, and :meth:`Journal.problem` says so until a restart, which
  imports the fallback into the journal at the path.
* A write the database refuses (locked, full, read-only) goes to the fallback file too; the
  fallback is moved into the journal by the next write that succeeds. Only when neither can be
  written does :meth:`Journal.append` raise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from lanewatch.edge.decisions import decision as contract
from lanewatch.edge.decisions.decision import Decision
from lanewatch.edge.ops.metrics import ServiceMetrics

log = logging.getLogger(__name__)

VERDICTS = ("CLEAR", "ALARM", "INCOMPLETE")
REQUIRED_KEYS = ("lane", "occupancy_id", "verdict", "start", "end")

COMPRESS_MIN_BYTES = 4096
"""Bodies shorter than this (bytes of JSON) are stored as plain JSON text."""
COMPRESS_MIN_SAVING = 0.2
"""Compress a body only when zlib saves at least this fraction of its size."""
COMPRESS_LEVEL = 1
"""zlib level: 1 gives nearly all of level 6's saving on count profiles at a fifth of the time."""

MIN_FREE_BYTES = 1 << 20
""":meth:`Journal.writable` reports False when the journal's file system has less free space (bytes)..."""
RESUME_FREE_BYTES = 2 * MIN_FREE_BYTES
"""... and True again only once it has this much (hysteresis: no flapping on every write near the limit)."""
SEQ_SUFFIX = ".seq"
"""Side file beside the journal holding the highest seq ever given."""
FALLBACK_SUFFIX = ".fallback.jsonl"
CHECKPOINT_QUIET_S = 0.5
"""With background checkpoints, how long (s) the journal must have had no commit before the checkpoint thread copies
the new pages into the database file: a lane's decisions are seconds apart, so the checkpoint's fsync falls between
two of them rather than beside one."""
CHECKPOINT_COMMITS = 256
"""... or how many commits may wait for a checkpoint when the journal is never that quiet (many lanes)."""
"""File beside the journal that takes decisions while the journal cannot (JSON lines, fsynced)."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE decisions (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            occupancy_id TEXT NOT NULL UNIQUE,
            lane TEXT NOT NULL,
            verdict TEXT NOT NULL,
            start TEXT NOT NULL,
            "end" TEXT NOT NULL,
            created TEXT NOT NULL,
            encoding TEXT NOT NULL,
            body BLOB NOT NULL
        )""",
        'CREATE INDEX decisions_lane_end ON decisions (lane, "end")',
        'CREATE INDEX decisions_verdict_end ON decisions (verdict, "end")',
        'CREATE INDEX decisions_end ON decisions ("end")',
    ),
)
"""Schema steps: ``MIGRATIONS[i]`` takes ``user_version`` i to i + 1."""

SCHEMA_VERSION = len(MIGRATIONS)


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _read_seq(path: Path) -> int:
    """The seq in a side file; 0 when there is none (or it is unreadable, said in the log)."""
    try:
        return int(path.read_text().strip() or 0)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as exc:
        log.error("%s: cannot read the highest seq given: %s", path, exc)
        return 0


class JournalError(RuntimeError):
    """The journal could not store or read a decision; the message says what and where."""


def utc_text(value: str | datetime) -> str:
    """An ISO 8601 time (or datetime) as the journal's sortable UTC text; naive times are taken as UTC."""
    if isinstance(value, datetime):
        when = value
    else:
        try:
            when = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected an ISO 8601 time, got {value!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_default(obj: Any) -> Any:
    """Let numpy scalars and arrays through as plain numbers and lists."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


JSON_ENCODER = msgspec.json.Encoder(enc_hook=_json_default)
"""Decisions as compact JSON (NaN, which JSON lacks, as null), numpy values as plain numbers and lists."""


def _encode(body: str) -> tuple[str, str | bytes]:
    raw = body.encode()
    if len(raw) >= COMPRESS_MIN_BYTES:
        packed = zlib.compress(raw, COMPRESS_LEVEL)
        if len(packed) <= (1 - COMPRESS_MIN_SAVING) * len(raw):
            return "json+zlib", packed
    return "json", body


def _json(encoding: str, body: str | bytes) -> bytes:
    """A stored decision as JSON bytes, ready to send as it is."""
    if encoding == "json+zlib":
        raw = zlib.decompress(body)
    elif encoding == "json":
        raw = body.encode() if isinstance(body, str) else bytes(body)
    else:
        raise JournalError(f"unknown body encoding {encoding!r}")
    if b"NaN" in raw or b"Infinity" in raw:  # a body written before msgspec encoded decisions may hold NaN: not JSON
        raw = JSON_ENCODER.encode(json.loads(raw))
    return raw


T = TypeVar("T")


def decode_as(encoding: str, body: str | bytes, tp: type[T]) -> T:
    """A stored decision (its ``encoding`` and ``body`` columns) decoded as ``tp``, a Struct of some of its fields:
    the others (the X-ray preview, the profile: most of its bytes) are skipped, not built."""
    return msgspec.json.decode(_json(encoding, body), type=tp)


def _decode(encoding: str, body: str | bytes) -> dict[str, Any]:
    return msgspec.json.decode(_json(encoding, body))


def _typed(raw: bytes) -> Decision:
    """A stored decision's JSON as a :class:`Decision`; one that does not fit the contract (journaled anyway, each
    one a bug: see :meth:`Journal._check`) raises :class:`JournalError` naming it."""
    try:
        return contract.decode(raw)
    except msgspec.ValidationError as exc:
        raise JournalError(f"decision {contract.seq_of(raw)} does not fit the decision contract: {exc}") from exc


class Journal:
    """The decisions journal in the SQLite file at ``path`` (created with its folder if missing).

    ``metrics`` (the service's) get the write time, size, last seq and write errors.
    ``readonly`` opens an existing journal for reading only. ``busy_timeout_s`` is how long
    a write waits for another writer's lock before it fails. One instance may be shared by
    threads; :meth:`writable` never touches the database and is cheap enough for /healthz.
    """

    def __init__(
        self,
        path: str | Path,
        metrics: ServiceMetrics | None = None,
        *,
        readonly: bool = False,
        busy_timeout_s: float = 5.0,
        checkpoint_in_background: bool = False,
    ) -> None:
        self.path = Path(path)
        self.metrics = metrics
        self.readonly = readonly
        self.seq_path = Path(f"{self.path}{SEQ_SUFFIX}")
        self.fallback_path = Path(f"{self.path}{FALLBACK_SUFFIX}")
        self.detached = ""
        """Why the file at ``path`` is no longer this journal (deleted, replaced); "" while it is."""
        self._fallback: dict[str, dict[str, Any]] = {}
        """Decisions in the fallback file, by occupancy id."""
        self._hwm = 0
        """The highest seq ever given, here, in the side file or in the fallback."""
        self._identity: tuple[int, int] | None = None
        self._seq_fd: int | None = None
        self._low_space = False
        self._lock = threading.Lock()
        self._write_failed = False
        self.invalid = 0
        """Decisions journaled that did not fit the decision schema (each one a bug, counted and logged)."""
        self._closed = False
        self._checkpointer: _Checkpointer | None = None
        if self.path.is_dir() or (readonly and not self.path.exists()):
            why = "a directory, not a journal file" if self.path.is_dir() else "no such file"
            raise JournalError(f"{self.path}: cannot open journal: {why}")
        try:
            if readonly:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            if not readonly:
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise JournalError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
                self._conn.execute("PRAGMA synchronous = FULL")
                if checkpoint_in_background:
                    self._conn.execute("PRAGMA wal_autocheckpoint = 0")  # no commit copies the WAL into the file
            self._migrate()
            if not readonly:
                self._identity = _identity(self.path)
                self._hwm = max(self._db_seq(), _read_seq(self.seq_path))
                self._import_fallback()
                if checkpoint_in_background:
                    self._checkpointer = _Checkpointer(self.path)
        except (sqlite3.Error, OSError) as exc:
            if hasattr(self, "_conn"):
                self._conn.close()
            raise JournalError(f"{self.path}: cannot open journal: {exc}") from exc
        if metrics is not None:
            metrics.journal_detached.set(0)
            metrics.journal_seq.set(self.last_seq())
            self._update_size()

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"{self.path}: journal schema version {version} is newer than this lanewatch knows ({SCHEMA_VERSION})"
            )
        if version < SCHEMA_VERSION and self.readonly:
            raise JournalError(f"{self.path}: not a lanewatch journal (schema version {version}), opened read-only")
        for step in range(version, SCHEMA_VERSION):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[step]:
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {step + 1}")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            log.info("%s: journal schema migrated to version %d", self.path, step + 1)

    def append(self, decision: dict[str, Any], *, retry: bool = False) -> dict[str, Any]:
        """Journal ``decision`` durably and return it with its ``seq``.

        An ``occupancy_id`` already journaled returns the stored decision unchanged. A decision the
        database cannot take (disk full, read-only, locked, the file deleted or replaced) goes to the
        fallback file. Raises :class:`JournalError` (and counts it, unless ``retry`` says this decision
        failed before) for a decision that lacks a required key or is not JSON-serializable, and when
        neither the database nor the fallback can be written; nothing is stored then.
        """
        t0 = time.perf_counter()
        try:
            with self._lock:
                stored, inserted = self._store(decision)
        except (JournalError, sqlite3.Error, OSError, ValueError, TypeError) as exc:
            if self.metrics is not None and not retry:
                self.metrics.journal_errors.inc()
            occupancy = decision.get("occupancy_id") if isinstance(decision, dict) else None
            log.error("%s: cannot journal decision for occupancy %r: %s", self.path, occupancy, exc)
            raise JournalError(f"{self.path}: cannot journal decision for occupancy {occupancy!r}: {exc}") from exc
        if self.metrics is not None and inserted:
            self.metrics.journal_write.observe(time.perf_counter() - t0)
            self.metrics.journal_seq.set(stored["seq"])
            self._update_size()
        return stored

    def _store(self, decision: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """:meth:`_append` to the database while it is this journal and takes it, else to the fallback file."""
        if self._closed:
            raise JournalError("journal is closed")
        self._check_identity()
        if not self.detached:
            try:
                if self._fallback:
                    self._drain_fallback()
                stored, inserted = self._append(decision)
            except (sqlite3.Error, OSError) as exc:
                self._write_failed = True
                if self.metrics is not None:
                    self.metrics.journal_errors.inc()
                log.error("%s: cannot write the journal, decision to %s: %s", self.path, self.fallback_path, exc)
            else:
                self._write_failed = False
                if inserted:
                    self._set_hwm(stored["seq"])
                if self._check_identity():  # the file went while this was written: keep a copy that stays
                    self._append_fallback(stored)
                return stored, inserted
        return self._append_fallback(decision), True

    def _check_identity(self) -> str:
        """Detach the journal (and say why) when the file at its path is no longer the one it opened."""
        if self.detached or self._identity is None:
            return self.detached
        try:
            identity = _identity(self.path)
        except FileNotFoundError:
            why = "deleted"
        except OSError as exc:
            why = f"unreadable ({exc.strerror})"
        else:
            if identity == self._identity:
                return ""
            why = "replaced"
        self.detached = f"journal file {self.path} {why} while open; decisions go to {self.fallback_path}"
        log.critical("%s until the service restarts and imports them", self.detached)
        if self.metrics is not None:
            self.metrics.journal_detached.set(1)
        self._set_hwm(self._hwm, durable=True)
        return self.detached

    def _set_hwm(self, seq: int, durable: bool = False) -> None:
        """Remember ``seq`` as the highest given, in the side file too: one fixed-width write in place (a rename per
        decision cost milliseconds on a busy disk), fsynced only when ``durable``."""
        self._hwm = max(self._hwm, seq)
        try:
            if self._seq_fd is None:
                self._seq_fd = os.open(self.seq_path, os.O_RDWR | os.O_CREAT, 0o600)
            os.pwrite(self._seq_fd, b"%020d\n" % self._hwm, 0)
            if durable:
                os.fsync(self._seq_fd)
        except OSError as exc:  # the database (or the fallback) holds the seq as well
            log.warning("%s: cannot write %s: %s", self.path, self.seq_path, exc)

    def _append_fallback(self, decision: dict[str, Any]) -> dict[str, Any]:
        """Write ``decision`` (numbered next, unless it has its seq already) to the fallback file, fsynced."""
        occupancy_id = str(decision.get("occupancy_id"))
        if occupancy_id in self._fallback:
            return self._fallback[occupancy_id]
        if "seq" in decision:
            full = dict(decision)
        else:
            self._validate(decision)
            full = {"seq": self._hwm + 1, **decision}
        line = JSON_ENCODER.encode(full) + b"\n"
        fd = os.open(self.fallback_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            size = os.fstat(fd).st_size
            try:
                os.write(fd, line)
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)  # no partial line for the next one to run into
                raise
        finally:
            os.close(fd)
        stored = msgspec.json.decode(line)
        self._fallback[occupancy_id] = stored
        self._set_hwm(stored["seq"])
        if self.metrics is not None:
            self.metrics.journal_fallback.inc()
        return stored

    def _import_fallback(self) -> None:
        """Read the fallback file left by an earlier run (or this one) and move what it holds into the journal."""
        try:
            lines = self.fallback_path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        for number, line in enumerate(lines, start=1):
            try:
                stored = msgspec.json.decode(line)
                self._fallback[str(stored["occupancy_id"])] = stored
                self._hwm = max(self._hwm, int(stored["seq"]))
            except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
                log.error("%s: line %d is not a decision, skipped: %s", self.fallback_path, number, exc)
        self._drain_fallback()
        log.warning("%s: %d decisions imported from %s", self.path, len(lines), self.fallback_path)

    def _drain_fallback(self) -> None:
        """Insert the fallback's decisions (with their seq) into the database, then remove the file."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stored in sorted(self._fallback.values(), key=lambda d: d["seq"]):
                self._insert(stored, JSON_ENCODER.encode(stored).decode(), "INSERT OR IGNORE")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self._fallback.clear()
        self._set_hwm(self._hwm, durable=True)
        self.fallback_path.unlink(missing_ok=True)

    def _db_seq(self) -> int:
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'decisions'").fetchone()
        return row[0] if row else 0

    @staticmethod
    def _validate(decision: dict[str, Any]) -> None:
        if not isinstance(decision, dict):
            raise JournalError(f"a decision must be a dict, got {type(decision).__name__}")
        missing = [key for key in REQUIRED_KEYS if decision.get(key) in (None, "")]
        if missing:
            raise JournalError(f"decision lacks {', '.join(missing)}")
        if decision["verdict"] not in VERDICTS:
            raise JournalError(f"verdict must be one of {', '.join(VERDICTS)}, got {decision['verdict']!r}")

    def _append(self, decision: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The stored decision, and whether it was inserted now (False: the occupancy was journaled before)."""
        self._validate(decision)
        occupancy_id = str(decision["occupancy_id"])
        fields = {key: value for key, value in decision.items() if key != "seq"}
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT seq, encoding, body FROM decisions WHERE occupancy_id = ?", (occupancy_id,)
            ).fetchone()
            if row is not None:
                conn.execute("ROLLBACK")
                log.info("%s: occupancy %r already journaled as seq %d", self.path, occupancy_id, row[0])
                return _decode(row[1], row[2]), False
            seq = max(self._db_seq(), self._hwm) + 1
            full = {"seq": seq, **fields}
            self._check(full)
            body = JSON_ENCODER.encode(full).decode()
            self._insert(full, body)
            conn.execute("COMMIT")
            if self._checkpointer is not None:
                self._checkpointer.poke()
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return msgspec.json.decode(body), True

    def _insert(self, full: dict[str, Any], body: str, verb: str = "INSERT") -> None:
        """Insert the decision ``full`` (with its seq), JSON ``body``, in the open transaction."""
        encoding, stored = _encode(body)
        self._conn.execute(
            f'{verb} INTO decisions (seq, occupancy_id, lane, verdict, start, "end", created, encoding, body)'
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (full["seq"], str(full["occupancy_id"]), str(full["lane"]), full["verdict"], utc_text(full["start"]),
             utc_text(full["end"]), utc_text(datetime.now(UTC)), encoding, stored),
        )  # fmt: skip

    def _check(self, decision: dict[str, Any]) -> None:
        """Count and log (the 1st, 2nd, 4th, 8th... time) a decision that does not fit the published contract."""
        why = contract.problems(decision)
        if why is None:
            return
        self.invalid += 1
        if self.metrics is not None:
            self.metrics.handler_errors.labels("decision-schema").inc()
        if self.invalid & (self.invalid - 1) == 0:
            log.error(
                "%s: decision for occupancy %r does not fit the decision schema (%d so far), journaled anyway: %s",
                self.path,
                decision.get("occupancy_id"),
                self.invalid,
                why,
            )

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, locked; a closed or unreadable journal raises JournalError."""
        try:
            with self._lock:
                if self._closed:
                    raise JournalError(f"{self.path}: journal is closed")
                yield self._conn
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot read journal: {exc}") from exc

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[int, str, str | bytes]]:
        """(seq, encoding, body) rows of a query."""
        with self._reading() as conn:
            return conn.execute(sql, params).fetchall()

    def since(self, seq: int, limit: int = 1000, max_bytes: int | None = None) -> list[Decision]:
        """Decisions with a seq above ``seq``, ascending, at most ``limit`` of them.

        ``max_bytes`` stops the list once the stored bodies (bytes) reach it; the first
        decision is always included, so paging always advances.
        """
        return [_typed(raw) for raw in self.since_json(seq, limit, max_bytes)]

    def since_json(self, seq: int, limit: int = 1000, max_bytes: int | None = None) -> list[bytes]:
        """:meth:`since` as each decision's JSON, not decoded (what the query server sends on)."""
        rows: list[tuple[str, str | bytes]] = []
        size = 0
        sql = "SELECT encoding, body FROM decisions WHERE seq > ? ORDER BY seq LIMIT ?"
        with self._reading() as conn:
            for encoding, body in conn.execute(sql, (seq, max(0, limit))):  # rows are read only as needed
                if max_bytes is not None and rows and size + len(body) > max_bytes:
                    break
                size += len(body)
                rows.append((encoding, body))
        return [_json(encoding, body) for encoding, body in rows]

    def get(self, seq: int) -> Decision | None:
        """The decision numbered ``seq``, or None."""
        raw = self.get_json(seq)
        return None if raw is None else _typed(raw)

    def get_json(self, seq: int) -> bytes | None:
        """:meth:`get` as the decision's JSON, not decoded."""
        rows = self._rows("SELECT seq, encoding, body FROM decisions WHERE seq = ?", (seq,))
        return _json(rows[0][1], rows[0][2]) if rows else None

    def get_occupancy(self, occupancy_id: str) -> Decision | None:
        """The decision of occupancy ``occupancy_id``, or None."""
        sql = "SELECT seq, encoding, body FROM decisions WHERE occupancy_id = ?"
        rows = self._rows(sql, (occupancy_id,))
        return _typed(_json(rows[0][1], rows[0][2])) if rows else None

    def last_seq(self) -> int:
        """The highest seq ever given (0 for a new journal)."""
        with self._reading():
            return max(self._db_seq(), self._hwm)

    def query(
        self,
        lane: str | None = None,
        verdict: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        limit: int = 100,
    ) -> list[Decision]:
        """The newest ``limit`` decisions matching every filter given, in ascending seq order.

        ``since``/``until`` bound the decision's ``end`` time (ISO 8601 or datetime; since
        inclusive, until exclusive).
        """
        return [_typed(raw) for raw in self.query_json(lane, verdict, since, until, limit)]

    def query_json(
        self,
        lane: str | None = None,
        verdict: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        limit: int = 100,
    ) -> list[bytes]:
        """:meth:`query` as each decision's JSON, not decoded."""
        where, params = [], []
        for clause, value in (("lane = ?", lane), ("verdict = ?", verdict)):
            if value is not None:
                where.append(clause)
                params.append(value)
        for clause, value in (('"end" >= ?', since), ('"end" < ?', until)):
            if value is not None:
                where.append(clause)
                params.append(utc_text(value))
        # Two steps: the seqs from the indexes alone, then only their rows. In one, a filter's matches were sorted
        # with their bodies: a lane's last 60 of a million decisions (14-30 kB each) read every one of the lane's.
        sql = "SELECT seq FROM decisions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        with self._reading() as conn:
            seqs = [row[0] for row in conn.execute(sql, (*params, max(0, limit)))]
        if not seqs:
            return []
        marks = ",".join("?" * len(seqs))
        rows = self._rows(f"SELECT seq, encoding, body FROM decisions WHERE seq IN ({marks}) ORDER BY seq", tuple(seqs))
        return [_json(encoding, body) for _, encoding, body in rows]

    def writable(self) -> bool:
        """True when :meth:`problem` finds none."""
        return not self.problem()

    def problem(self) -> str:
        """What keeps the journal from taking decisions ("" when nothing does): closed, read-only, the file deleted
        or replaced, the last write failed, the file or folder not writable, free space under
        :data:`MIN_FREE_BYTES` (until it is back above :data:`RESUME_FREE_BYTES`).

        Touches no database and takes no lock (a stat or two): cheap enough to call every second.
        """
        if self._closed:
            return "closed"
        if self.readonly:
            return "opened read-only"
        if self._check_identity():
            return self.detached
        if self._write_failed:
            return f"the last write failed; decisions go to {self.fallback_path}"
        folder = self.path.parent
        try:
            fs = os.statvfs(folder)
        except OSError as exc:
            return f"cannot check free space: {exc.strerror}"
        free = fs.f_bavail * fs.f_frsize
        self._low_space = free < (RESUME_FREE_BYTES if self._low_space else MIN_FREE_BYTES)
        if self._low_space:
            return f"{free} bytes free, under {MIN_FREE_BYTES} (ok again from {RESUME_FREE_BYTES})"
        if not (os.access(self.path, os.W_OK) and os.access(folder, os.W_OK)):
            return "file or folder not writable"
        return ""

    def size_bytes(self) -> int:
        """Bytes on disk of the database and its write-ahead log."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def _update_size(self) -> None:
        if self.metrics is not None:
            self.metrics.journal_size.set(self.size_bytes())

    def close(self) -> None:
        """Close the database; later calls raise :class:`JournalError`."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
                if self._seq_fd is not None:
                    os.close(self._seq_fd)
                    self._seq_fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Checkpointer:
    """Copies the journal's committed WAL pages into its database file from a thread of its own, over a connection of
    its own, once no commit came for :data:`CHECKPOINT_QUIET_S` or :data:`CHECKPOINT_COMMITS` are waiting
    (``PRAGMA wal_checkpoint(PASSIVE)``, which waits for no writer or reader). The writer's own automatic checkpoint
    is off, so no decision's commit pays for copying the pages of the hundreds before it (SQLite's default checkpoints
    inside the commit that fills 1000 pages). Durability is the commit's: each is fsynced to the WAL; a checkpoint
    fsyncs the WAL before and the database file after copying."""

    def __init__(self, path: Path) -> None:
        # mode=rw: a journal deleted meanwhile is never created again empty by this connection
        self._conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, check_same_thread=False)
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute("PRAGMA busy_timeout = 1000")
        self.path = path
        self.done = 0
        """Checkpoints run."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._commits = 0
        """Commits since the last checkpoint began."""
        self._last_s = 0.0
        """Monotonic time (s) of the last commit."""
        self._thread = threading.Thread(target=self._run, name="journal-checkpoint", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """A commit happened."""
        with self._lock:
            self._commits += 1
            self._last_s = time.monotonic()
            self._wake.set()

    def _due_in_s(self) -> float:
        """How long (s) until the next checkpoint is due (0: now); a checkpoint due now is begun."""
        with self._lock:
            quiet_at_s = self._last_s + CHECKPOINT_QUIET_S
            wait_s = 0.0 if self._commits >= CHECKPOINT_COMMITS else quiet_at_s - time.monotonic()
            if wait_s <= 0:
                self._commits = 0
                self._wake.clear()
            return max(0.0, wait_s)

    def _run(self) -> None:
        failures = 0
        try:
            while True:
                self._wake.wait()
                while (wait_s := self._due_in_s()) > 0:
                    if self._stop.wait(wait_s):
                        return
                if self._stop.is_set():
                    return
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.done += 1
                except sqlite3.Error as exc:  # the next commit tries again; the WAL holds every decision meanwhile
                    failures += 1
                    if failures & (failures - 1) == 0:
                        log.error("%s: checkpoint failed (%d so far): %s", self.path, failures, exc)
        finally:
            self._conn.close()

    def stop(self) -> None:
        """Stop the thread (a checkpoint under way finishes first)."""
        self._stop.set()
        self._wake.set()
        self._thread.join()
