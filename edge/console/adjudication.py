"""Adjudications of decisions, append-only, in the journal's SQLite file; and the event table's queries.

Tables added to the journal database (beside ``decisions``, which this module only reads):

``adjudications(id, seq, kind, disposition, secondary, notes, user, role, time, attachment_name,
attachment, nuclides, amends)``
    One row per act on decision ``seq``: ``acknowledge`` (an operator has seen the alarm),
    ``adjudicate`` (a disposition code, the secondary inspection's result, notes, and optionally a
    handheld identifier's N42 file with the nuclides it identified), or ``amend`` (a supervisor's
    correction of an earlier adjudication, ``amends`` its id). Triggers refuse UPDATE and DELETE:
    history is never rewritten, an amendment is a new row.
``adjudication_notes``
    SQLite's full-text index (FTS5, trigram tokenizer) of the acts' notes, row for row (its rowid is the act's id;
    the text stays in ``adjudications``): every run of three characters, so a search finds text anywhere in a word
    ("ray" in "X-ray", "4471" in a container number). A trigger indexes each new act in the transaction that
    appends it (acts are never updated or deleted, so that is all it needs); a journal from before the index, or
    with an index of another tokenizer, has it (re)built when a console first opens it. :func:`notes_query` turns
    what a user types into the index's query language.
``adjudication_state(seq, state, disposition, last_id)``
    The current state of each adjudicated decision (``acknowledged`` or ``disposed``), kept in
    the same transaction as the row that changed it, so the event table filters on it by index.
    A decision absent from it is ``unacknowledged`` when it needs adjudication (:data:`NEEDS_ADJUDICATION`: an
    ALARM, or an INCOMPLETE decision, a vehicle that crossed the lane without a complete screening, which an officer
    must have re-scanned or inspected), else it needs nothing.

The acts a decision's state allows (anything else is refused with :class:`AdjudicationError`, saying who
acted before and when; the check runs in the write transaction, so two consoles acting at once cannot both
pass it)::

    ALARM, INCOMPLETE:  unacknowledged --acknowledge--> acknowledged --adjudicate--> disposed --amend--> ...
                        unacknowledged --------------adjudicate--------------------> disposed
    CLEAR:  (needs nothing) --adjudicate--> disposed --amend--> disposed ...

- ``acknowledge`` only a decision that needs adjudication, once, and not after it was disposed (adjudicating implies
  it);
- ``adjudicate`` once: a second disposition (an operator who had the page open while another disposed
  it) is refused, the decision keeps the first and a supervisor amends it;
- ``amend`` (supervisors and admins) only a disposed decision, and only the act that stands (the latest
  adjudication or amendment, named by ``amends``): an amendment of an act already amended is refused;
  its reason goes in the notes (required).
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from lanewatch.edge.console.present import Clock
from lanewatch.edge.console.users import now_text, role_allows
from lanewatch.edge.decisions.adjudication import DISPOSITIONS, KINDS, MAX_NOTES, SECONDARY, Adjudication
from lanewatch.edge.decisions.decision import Alarm, Baseline, ModelScore
from lanewatch.edge.decisions.journal import Journal, decode_as
from lanewatch.edge.store import SqliteStore

NEEDS_ADJUDICATION = ("ALARM", "INCOMPLETE")
"""Verdicts that wait in the "awaiting adjudication" queue (banner, tiles, sound) until disposed: an alarm, and a
vehicle that crossed the lane without a complete screening (re-scan or secondary inspection)."""


def initial_state(verdict: str) -> str:
    """The adjudication state of a decision no console has acted on: ``unacknowledged`` when it needs adjudication,
    else "" (it needs nothing)."""
    return "unacknowledged" if verdict in NEEDS_ADJUDICATION else ""


STATES = ("unacknowledged", "acknowledged", "awaiting", "disposed")
"""Adjudication states a filter may ask for; ``awaiting`` is unacknowledged or acknowledged, not yet disposed."""

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS adjudications (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        disposition TEXT,
        secondary TEXT,
        notes TEXT NOT NULL DEFAULT '',
        user TEXT NOT NULL,
        role TEXT NOT NULL,
        time TEXT NOT NULL,
        attachment_name TEXT,
        attachment BLOB,
        nuclides TEXT,
        amends INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS adjudications_seq ON adjudications (seq)",
    """CREATE TRIGGER IF NOT EXISTS adjudications_no_update BEFORE UPDATE ON adjudications
        BEGIN SELECT RAISE(ABORT, 'adjudications are append-only: amend instead'); END""",
    """CREATE TRIGGER IF NOT EXISTS adjudications_no_delete BEFORE DELETE ON adjudications
        BEGIN SELECT RAISE(ABORT, 'adjudications are append-only: amend instead'); END""",
    """CREATE TABLE IF NOT EXISTS adjudication_state (
        seq INTEGER PRIMARY KEY,
        state TEXT NOT NULL,
        disposition TEXT,
        last_id INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS adjudication_state_state ON adjudication_state (state, seq)",
    "CREATE INDEX IF NOT EXISTS decisions_verdict_seq ON decisions (verdict, seq)",
    # The event table's pages by lane and verdict, newest first, without reading the rows of the lane's other
    # verdicts.
    'CREATE INDEX IF NOT EXISTS decisions_lane_verdict_end ON decisions (lane, verdict, "end")',
    # The notes are searched by their full-text index (NOTES_INDEX); this index served the earlier scan with LIKE.
    "DROP INDEX IF EXISTS adjudications_notes",
    # Each decision's end, lane and verdict by seq, compact: a search in notes orders and filters its matches from
    # it, not from the rows (14-30 kB each; a lane's matches among 5,000 read 2 s of them on a loaded machine).
    'CREATE INDEX IF NOT EXISTS decisions_seq_end_lane_verdict ON decisions (seq, "end", lane, verdict)',
    "DROP INDEX IF EXISTS decisions_seq_end",
)
NOTES_TOKENIZER = "trigram remove_diacritics 1" if sqlite3.sqlite_version_info >= (3, 45, 0) else "trigram"
"""The notes index's tokenizer: every three characters, case ignored; accents too where SQLite can (3.45 and later)."""
NOTES_INDEX = (
    # External content: the index holds the trigrams, ``adjudications`` the text.
    "CREATE VIRTUAL TABLE adjudication_notes USING fts5(notes, content='adjudications', content_rowid='id',"
    f" tokenize='{NOTES_TOKENIZER}')",
    """CREATE TRIGGER adjudication_notes_insert AFTER INSERT ON adjudications
        BEGIN INSERT INTO adjudication_notes (rowid, notes) VALUES (new.id, new.notes); END""",
    "INSERT INTO adjudication_notes (adjudication_notes) VALUES ('rebuild')",  # the acts recorded before the index
)
"""The notes' full-text index, created with its trigger and filled from the acts so far in one transaction (so no act
is recorded between the fill and the trigger), when a journal does not have it yet, or has it with another
tokenizer (the earlier index of words, or one made by another SQLite), which is dropped first."""
MIN_INDEXED = 3
"""Characters a search term needs for the index to find it (the trigram tokenizer's unit); shorter terms are looked
for with LIKE in the notes the longer ones found."""
MAX_SEARCH_TERMS = 16
"""Words and quoted phrases a search in notes may have."""
READ_PRAGMAS = ("cache_size = -65536", "mmap_size = 268435456")
"""The event table's reads: a 64 MiB page cache (the indexes it pages through stay in it) and reads of the journal
by memory map (up to 256 MiB) rather than a system call per page."""


def adjudication_state(path: str | Path, seq: int, verdict: str) -> tuple[str, str | None]:
    """Decision ``seq``'s state and disposition code from the journal file at ``path``, read-only, as
    :meth:`Adjudications.state` gives the state (:func:`initial_state` for one no console has touched, also before
    any console ran)."""
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'adjudication_state'").fetchone() is not None:
            sql = "SELECT state, disposition FROM adjudication_state WHERE seq = ?"
            row = conn.execute(sql, (seq,)).fetchone()
            if row is not None:
                return str(row[0]), row[1]
    finally:
        conn.close()
    return initial_state(verdict), None


class AdjudicationError(ValueError):
    """An adjudication that cannot be recorded; the message says why."""


class SearchError(ValueError):
    """A search in notes that cannot be run; the message says why, in words for the user."""


class SearchUnavailable(RuntimeError):
    """This Python's SQLite lacks the full-text module (FTS5) the search in notes needs."""


_SEARCH_PART = re.compile(r'"([^"]*)"?|[^\s"]+')


@dataclass(frozen=True)
class NotesSearch:
    """A search in notes as the index runs it: every term must be in one act's notes."""

    match: str
    """The FTS5 query of the terms of :data:`MIN_INDEXED` characters or more, each quoted as a string."""
    like: tuple[str, ...] = ()
    """LIKE patterns (escape ``\\``) of the shorter terms, tried on the notes the index found."""


def notes_query(text: str) -> NotesSearch:
    """The search for what a user typed in "notes contain": every term must be in one act's notes, in any order,
    anywhere (inside a word too: ``ray`` finds "X-ray"), case ignored; a term is a run of characters without
    spaces, or text in double quotes with its spaces (an unclosed quote runs to the end). Every term is quoted into
    the query language, so no character the user types is an operator (``*``, ``NEAR(``, ``OR``, ``-``, ``:``, ``%``
    are text). A term of one or two characters is looked for only in the notes the longer terms found. Raises
    :class:`SearchError` when no term has a letter or digit, none has :data:`MIN_INDEXED` characters, or there are
    more than :data:`MAX_SEARCH_TERMS`."""
    terms = []
    for part in _SEARCH_PART.finditer(text):
        term = part.group(0) if part.group(1) is None else part.group(1)
        if any(ch.isalnum() for ch in term):  # punctuation alone is no search ("-", "*", "...")
            terms.append(term)
    if not terms:
        raise SearchError("search the notes for at least one word (letters or digits)")
    if len(terms) > MAX_SEARCH_TERMS:
        raise SearchError(f"search the notes for at most {MAX_SEARCH_TERMS} words or quoted phrases, not {len(terms)}")
    indexed = ['"' + term.replace('"', '""') + '"' for term in terms if len(term) >= MIN_INDEXED]
    if not indexed:
        raise SearchError(
            f"search the notes for at least {MIN_INDEXED} characters in a row (one or two are searched only beside a "
            f"longer word)"
        )
    short = tuple("%" + re.sub(r"([\\%_])", r"\\\1", term) + "%" for term in terms if len(term) < MIN_INDEXED)
    return NotesSearch(" ".join(indexed), short)


def require_fts5() -> None:
    """Raise :class:`SearchUnavailable` unless this Python's SQLite has the full-text module FTS5 and its trigram
    tokenizer (SQLite 3.34 and later)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f"CREATE VIRTUAL TABLE probe USING fts5(text, tokenize='{NOTES_TOKENIZER}')")
    except sqlite3.OperationalError as exc:
        raise SearchUnavailable(
            f"this Python's SQLite {sqlite3.sqlite_version} has no full-text module FTS5 with its trigram tokenizer "
            f"({exc}), which the console's search in notes needs: run the console with a Python whose sqlite3 is "
            f"3.34 or later, built with FTS5 (Debian's and python.org's are)"
        ) from None
    finally:
        conn.close()


@dataclass(frozen=True)
class EventFilter:
    """What the event table shows; times are UTC journal text (``since`` inclusive, ``until`` exclusive)."""

    lane: str | None = None
    verdict: str | None = None
    state: str | None = None
    since: str | None = None
    until: str | None = None
    text: str | None = None
    """What the user typed to search the adjudication notes, as :func:`notes_query` reads it."""


class RowFields(msgspec.Struct, frozen=True):
    """The fields of a decision the event table shows beside its columns (read without the rest of the decision)."""

    verdict: str = ""
    alarms: list[Alarm] = []
    device_alarm: bool | None = None
    incomplete: list[str] = []
    end_reason: str | None = None
    model: ModelScore | None = None
    baseline_verdict: str | None = None
    baseline: Baseline | None = None
    start_ns: int = 0
    end_ns: int = 0
    samples: int = 0
    device_occupancy: int | None = None


@dataclass(frozen=True)
class EventRow:
    seq: int
    lane: str
    verdict: str
    start: str
    end: str
    state: str
    """unacknowledged | acknowledged | disposed | "" (a decision that needs no adjudication)."""
    disposition: str | None
    fields: RowFields | None = None
    """What the table shows of the decision, when :meth:`Adjudications.events` was asked for it."""


@dataclass(frozen=True)
class EventPage:
    rows: list[EventRow]
    older: int | None
    """Seq to pass as ``before`` for the next older page, or None at the oldest."""
    newer: int | None
    """Seq to pass as ``after`` for the next newer page, or None at the newest."""


class Adjudications(SqliteStore):
    """The adjudication tables of the journal at ``path`` (created there if missing), and reads of its decisions."""

    def __init__(self, path: str | Path, clock: Clock | None = None) -> None:
        self.clock = clock
        """The site's time zone, for the times in refusals (UTC without one)."""
        require_fts5()
        if not Path(path).exists():
            Journal(Path(path)).close()  # an empty journal with its schema, as the service would make it
        super().__init__(path, SCHEMA, pragmas=["synchronous = FULL", *READ_PRAGMAS])
        with self._tx() as conn:
            found = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'adjudication_notes'").fetchone()
            if found is None or f"tokenize='{NOTES_TOKENIZER}'" not in found[0]:
                conn.execute("DROP TRIGGER IF EXISTS adjudication_notes_insert")
                conn.execute("DROP TABLE IF EXISTS adjudication_notes")
                for statement in NOTES_INDEX:
                    conn.execute(statement)

    # ---- writing ---------------------------------------------------------------------------------
    def record(
        self,
        seq: int,
        kind: str,
        user: str,
        role: str,
        *,
        disposition: str | None = None,
        secondary: str | None = None,
        notes: str = "",
        attachment: tuple[str, bytes] | None = None,
        nuclides: list[str] | None = None,
        amends: int | None = None,
    ) -> Adjudication:
        """Append one act on decision ``seq`` and update its state, as the state machine of the module allows;
        raises :class:`AdjudicationError` (saying why, and who acted before) when refused."""
        if kind not in KINDS:
            raise AdjudicationError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind == "acknowledge" and (disposition or secondary or notes or attachment):
            raise AdjudicationError("an acknowledgement carries no disposition, inspection, notes or file: adjudicate")
        if kind != "acknowledge" and disposition not in DISPOSITIONS:
            raise AdjudicationError(f"choose a disposition code ({', '.join(DISPOSITIONS)})")
        if secondary is not None and secondary not in SECONDARY:
            raise AdjudicationError(f"secondary inspection must be one of {', '.join(SECONDARY)}")
        if len(notes) > MAX_NOTES:
            raise AdjudicationError(f"notes are at most {MAX_NOTES} characters, these have {len(notes)}")
        if kind == "amend":
            if not role_allows(role, "supervisor"):
                raise AdjudicationError("only a supervisor can amend an adjudication")
            if not notes.strip():
                raise AdjudicationError("an amendment needs its reason in the notes")
        when = now_text()
        with self._tx() as conn:
            found = conn.execute("SELECT verdict FROM decisions WHERE seq = ?", (seq,)).fetchone()
            if found is None:
                raise AdjudicationError(f"no decision numbered {seq}")
            self._check_transition(conn, seq, str(found[0]), kind, amends)
            cursor = conn.execute(
                "INSERT INTO adjudications (seq, kind, disposition, secondary, notes, user, role, time,"
                " attachment_name, attachment, nuclides, amends) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq, kind, disposition, secondary, notes, user, role, when,
                    attachment[0] if attachment else None, attachment[1] if attachment else None,
                    json.dumps(nuclides or []), amends,
                ),
            )  # fmt: skip
            row_id = int(cursor.lastrowid or 0)
            new_state = "acknowledged" if kind == "acknowledge" else "disposed"
            conn.execute(
                "INSERT INTO adjudication_state (seq, state, disposition, last_id) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (seq) DO UPDATE SET state = excluded.state,"
                " disposition = COALESCE(excluded.disposition, disposition), last_id = excluded.last_id",
                (seq, new_state, disposition, row_id),
            )
        return Adjudication(
            id=row_id, seq=seq, kind=kind, disposition=disposition, secondary=secondary, notes=notes, user=user,
            role=role, time=when, attachment_name=attachment[0] if attachment else None, nuclides=nuclides or [],
            amends=amends,
        )  # fmt: skip

    def _check_transition(
        self, conn: sqlite3.Connection, seq: int, verdict: str, kind: str, amends: int | None
    ) -> None:
        """Raise :class:`AdjudicationError` unless ``kind`` may follow decision ``seq``'s acts so far (read in the
        write transaction, so two consoles acting at once cannot both pass)."""
        acts = conn.execute(
            "SELECT id, kind, disposition, user, time FROM adjudications WHERE seq = ? ORDER BY id", (seq,)
        ).fetchall()
        ack = next((a for a in acts if a[1] == "acknowledge"), None)
        current = next((a for a in reversed(acts) if a[1] != "acknowledge"), None)  # the disposition that stands

        def by(act: tuple) -> str:
            if self.clock is None or self.clock.zone.key == "UTC":
                return f"by {act[3]} at {act[4][:16].replace('T', ' ')} UTC"
            return f"by {act[3]} at {self.clock.local(act[4], seconds=False)} ({self.clock.zone.key})"

        if kind == "acknowledge":
            if verdict not in NEEDS_ADJUDICATION:
                raise AdjudicationError(f"decision {seq} is {verdict}: there is nothing to acknowledge")
            if current is not None:
                raise AdjudicationError(
                    f"decision {seq} was disposed already ({DISPOSITIONS[current[2]]}, {by(current)}): there is "
                    f"nothing left to acknowledge"
                )
            if ack is not None:
                raise AdjudicationError(f"decision {seq} was acknowledged already, {by(ack)}")
        elif kind == "adjudicate":
            if current is not None:
                raise AdjudicationError(
                    f"decision {seq} was disposed already ({DISPOSITIONS[current[2]]}, {by(current)}); a second "
                    f"disposition is refused: a supervisor can amend it"
                )
        elif current is None:
            raise AdjudicationError(f"decision {seq} is not disposed yet: adjudicate it (an amendment corrects one)")
        elif amends != current[0]:
            if amends not in [a[0] for a in acts if a[1] != "acknowledge"]:
                raise AdjudicationError(f"decision {seq} has no adjudication numbered {amends} to amend")
            raise AdjudicationError(
                f"adjudication #{amends} of decision {seq} was amended already (#{current[0]}, {by(current)}): "
                f"amend #{current[0]}, the one that stands"
            )

    # ---- reading ---------------------------------------------------------------------------------
    _COLUMNS = "id, seq, kind, disposition, secondary, notes, user, role, time, attachment_name, nuclides, amends"

    @staticmethod
    def _row(row: tuple) -> Adjudication:
        fields = dict(zip(Adjudications._COLUMNS.split(", "), row, strict=True))
        fields["nuclides"] = json.loads(fields["nuclides"] or "[]")
        return Adjudication(**fields)

    def history(self, seq: int) -> list[Adjudication]:
        """Every act on decision ``seq``, oldest first."""
        rows = self._read(f"SELECT {self._COLUMNS} FROM adjudications WHERE seq = ? ORDER BY id", (seq,))
        return [self._row(row) for row in rows]

    @classmethod
    def read_history(cls, path: str | Path, seq: int) -> list[Adjudication]:
        """Decision ``seq``'s history from the journal at ``path``, opened read-only (none before any console)."""
        sql = f"SELECT {cls._COLUMNS} FROM adjudications WHERE seq = ? ORDER BY id"
        return [cls._row(row) for row in _read_only(path, sql, (seq,))]

    _ATTACHMENTS = "SELECT id, attachment_name, attachment FROM adjudications WHERE seq = ? AND attachment IS NOT NULL"

    def attachments(self, seq: int) -> dict[int, tuple[str, bytes]]:
        """The files attached to the acts on decision ``seq``: (name, bytes) by act id."""
        return {int(i): (str(name), bytes(body)) for i, name, body in self._read(self._ATTACHMENTS, (seq,))}

    @classmethod
    def read_attachments(cls, path: str | Path, seq: int) -> dict[int, tuple[str, bytes]]:
        """:meth:`attachments` from the journal at ``path``, opened read-only."""
        return {int(i): (str(name), bytes(body)) for i, name, body in _read_only(path, cls._ATTACHMENTS, (seq,))}

    def after(self, last_id: int, limit: int = 500) -> list[Adjudication]:
        """Acts recorded after id ``last_id`` (by any console), oldest first."""
        sql = f"SELECT {self._COLUMNS} FROM adjudications WHERE id > ? ORDER BY id LIMIT ?"
        rows = self._read(sql, (last_id, limit))
        return [self._row(row) for row in rows]

    def last_seq(self) -> int:
        """The journal's newest decision seq (0 when empty)."""
        return int(self._read("SELECT COALESCE(MAX(seq), 0) FROM decisions")[0][0])

    def notes(self, seqs: list[int]) -> dict[int, str]:
        """The notes of the acts on decisions ``seqs``, oldest first and joined by `` | ``, by seq (none without)."""
        marks = ",".join("?" * len(seqs))
        sql = f"SELECT seq, notes FROM adjudications WHERE seq IN ({marks}) AND notes != '' ORDER BY id"
        out: dict[int, list[str]] = {}
        for seq, text in self._read(sql, tuple(seqs)) if seqs else []:
            out.setdefault(int(seq), []).append(str(text))
        return {seq: " | ".join(texts) for seq, texts in out.items()}

    def last_id(self) -> int:
        rows = self._read("SELECT COALESCE(MAX(id), 0) FROM adjudications")
        return int(rows[0][0])

    def attachment(self, adjudication_id: int) -> tuple[str, bytes] | None:
        rows = self._read("SELECT attachment_name, attachment FROM adjudications WHERE id = ?", (adjudication_id,))
        return (rows[0][0], rows[0][1]) if rows and rows[0][1] is not None else None

    def state(self, seq: int, verdict: str) -> str:
        """``unacknowledged``, ``acknowledged``, ``disposed``, or "" for a decision that needs nothing."""
        rows = self._read("SELECT state FROM adjudication_state WHERE seq = ?", (seq,))
        if rows:
            return str(rows[0][0])
        return initial_state(verdict)

    def span(self, since: str, until: str) -> list[tuple[int, str, str, str | None, str | None]]:
        """(seq, lane, verdict, state, disposition) of every decision that ended in [since, until) (UTC text)."""
        return self._read(
            "SELECT d.seq, d.lane, d.verdict, s.state, s.disposition FROM decisions d LEFT JOIN adjudication_state s"
            ' ON s.seq = d.seq WHERE d."end" >= ? AND d."end" < ? ORDER BY d.seq',
            (since, until),
        )

    def awaiting(self, limit: int = 1000) -> list[EventRow]:
        """ALARM decisions not yet disposed, the oldest ``limit`` of them, oldest first (first come, first served)."""
        return self.events(EventFilter(state="awaiting"), limit=limit, oldest_first=True).rows

    def events(
        self,
        where: EventFilter,
        limit: int,
        before: int | None = None,
        after: int | None = None,
        fields: bool = False,
        oldest_first: bool = False,
    ) -> EventPage:
        """One page of decisions matching ``where``, the latest end first (``oldest_first``: the earliest first): the
        page of those that ended before decision ``before``, or (``after``) after decision ``after``, nearest to it
        first; without either the newest page (``oldest_first``: the oldest); ``fields`` also reads each row's
        :class:`RowFields` in the same query."""
        clauses, params = [], []
        # The verdicts read, each by its own walk of the journal's (verdict, end) index: a page of those that need
        # adjudication (ALARM and INCOMPLETE) merges two walks rather than sorting every decision of both verdicts.
        needs = where.state in ("unacknowledged", "awaiting")
        verdicts = [v for v in NEEDS_ADJUDICATION if where.verdict in (None, v)] if needs else [where.verdict]
        for clause, value in (
            ("d.lane = ?", where.lane),
            ('d."end" >= ?', where.since),
            ('d."end" < ?', where.until),
        ):
            if value:
                clauses.append(clause)
                params.append(value)
        if where.state == "unacknowledged":
            clauses.append("s.state IS NULL")
        elif where.state == "awaiting":
            clauses.append("(s.state IS NULL OR s.state = 'acknowledged')")
        elif where.state in ("acknowledged", "disposed"):
            clauses.append("s.state = ?")
            params.append(where.state)
        if where.text:
            search = notes_query(where.text)
            clauses.append(
                "d.seq IN (SELECT a.seq FROM adjudication_notes JOIN adjudications a ON a.id = adjudication_notes.rowid"
                " WHERE adjudication_notes MATCH ?" + " AND a.notes LIKE ? ESCAPE '\\'" * len(search.like) + ")"
            )
            params += [search.match, *search.like]
        # By end time, then seq (either way): the journal's (lane, end), (verdict, end) and (end) indexes give this
        # order directly, so a page never sorts the rows a filter matches (a day holds hundreds of thousands);
        # a search in notes sorts its matches (found by the full-text index) by seq and end, not their rows.
        cursor = before if after is None else after
        if cursor is not None:
            found = self._read('SELECT "end" FROM decisions WHERE seq = ?', (cursor,))
            if not found:
                return EventPage([], None, None)
            clauses.append('(d."end", d.seq) < (?, ?)' if after is None else '(d."end", d.seq) > (?, ?)')
            params += [found[0][0], cursor]
        # the query walks away from the cursor (or from the end the page starts at); the rows are shown in the
        # table's order
        descending = before is not None or (after is None and not oldest_first)
        order = "DESC" if descending else "ASC"
        # Two steps: the page's seqs, from the indexes alone where the filter allows (no state, no notes: the
        # journal's indexes hold lane, verdict, end and seq), then the page's rows and bodies by seq.
        sql = 'SELECT d.seq, d."end" FROM decisions d'
        if where.text:
            # Each match's end, lane and verdict from this compact index, not from its row: the planner takes the
            # table's own key for seq, whose pages (one 14-30 kB decision each) a journal under live writes does not
            # keep cached (a search matching 5,000 notes read 20 MB of them: 50-70 ms live, 20 ms quiet).
            sql += " INDEXED BY decisions_seq_end_lane_verdict"
        if where.state:
            sql += " LEFT JOIN adjudication_state s ON s.seq = d.seq"
        walked: list[tuple[int, str]] = []  # (seq, end)
        for verdict in verdicts:
            each = [*clauses, "d.verdict = ?"] if verdict else clauses
            query = sql + (" WHERE " + " AND ".join(each) if each else "")
            query += f' ORDER BY d."end" {order}, d.seq {order} LIMIT ?'
            try:
                walked += self._read(query, (*params, *([verdict] if verdict else []), limit + 1))
            except sqlite3.OperationalError as exc:
                if not where.text or "fts5" not in str(exc):
                    raise
                raise SearchError(f"the search in notes could not be run ({exc}): try plain words") from None
        walked.sort(key=lambda row: (row[1], row[0]), reverse=descending)
        seqs = [seq for seq, _ in walked[: limit + 1]]
        more = len(seqs) > limit
        seqs = seqs[:limit]
        if descending == oldest_first:
            seqs.reverse()
        marks = ",".join("?" * len(seqs))
        sql = (
            'SELECT d.seq, d.lane, d.verdict, d.start, d."end", s.state, s.disposition'
            + (", d.encoding, d.body" if fields else ", NULL, NULL")
            + f" FROM decisions d LEFT JOIN adjudication_state s ON s.seq = d.seq WHERE d.seq IN ({marks})"
        )
        found = {row[0]: row for row in self._read(sql, tuple(seqs))} if seqs else {}
        rows = [found[seq] for seq in seqs if seq in found]
        page = [
            EventRow(
                seq, lane, verdict, start, end, state or initial_state(verdict), disp,
                None if body is None else decode_as(encoding, body, RowFields),
            )
            for seq, lane, verdict, start, end, state, disp, encoding, body in rows
        ]  # fmt: skip
        if not page:
            return EventPage([], None, None)
        has_older, has_newer = (more, cursor is not None) if descending else (cursor is not None, more)
        oldest, newest = (page[0], page[-1]) if oldest_first else (page[-1], page[0])
        return EventPage(page, oldest.seq if has_older else None, newest.seq if has_newer else None)


def _read_only(path: str | Path, sql: str, args: tuple[Any, ...]) -> list[Any]:
    """The rows of ``sql`` over the journal at ``path``, opened read-only (none before any console made the
    adjudications table)."""
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'adjudications'").fetchone() is None:
            return []
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def safe_file_name(name: str) -> str:
    """A file name of letters, digits, dots, dashes and underscores only (an attachment's, to serve or to bundle)."""
    return "".join(c for c in name if c.isalnum() or c in "._-") or "attachment.n42"
