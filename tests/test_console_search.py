"""The event table's search in adjudication notes: SQLite's full-text index (FTS5, trigrams) kept in step with the
append-only history, built for a journal from before it or with the earlier index of words, finding text inside
words, combined with the other filters and paging, and what users type (quotes, operators of the query language,
LIKE's wildcards, unicode) never failing the page.

Real journals in temporary directories, the console over HTTP with Starlette's TestClient.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from starlette.testclient import TestClient
from test_console import PASSWORD, ROLES, csrf, login, seed_site, site_config, table_seqs

from lanewatch.edge.console.adjudication import (
    NOTES_TOKENIZER,
    Adjudications,
    EventFilter,
    NotesSearch,
    SearchError,
    notes_query,
)
from lanewatch.edge.console.app import create_app
from lanewatch.edge.console.users import UserStore, users_path

NOTES = {
    3: "Kitty litter, 100% clay; driver Müller, papers checked",
    5: "Ceramic tiles for Röntgen GmbH, papers checked",
    1: "Rescanned clean on the X-ray; container MSKU4471230",
    6: "Granite countertops: papers checked at the gate",
}
"""Decision seq -> the notes of its adjudication (seqs 2, 4 and 7 are left without one)."""


def journal_of(tmp_path: Path) -> Path:
    """The seven decisions of tests/data/console-decisions.json.gz journaled on lanes 1 and 2, alternately."""
    path = tmp_path / "journal.db"
    seed_site(path)
    return path


def adjudicate(store: Adjudications, notes: dict[int, str] = NOTES) -> None:
    for seq, text in notes.items():
        store.record(seq, "adjudicate", "olga", "operator", disposition="norm", notes=text)


def found(store: Adjudications, text: str, **where: str) -> list[int]:
    return [row.seq for row in store.events(EventFilter(text=text, **where), 50).rows]


def index_agrees(path: Path) -> None:
    """FTS5's own check: the index holds exactly the words of the acts' notes in ``adjudications``."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("INSERT INTO adjudication_notes (adjudication_notes, rank) VALUES ('integrity-check', 1)")
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Adjudications]:
    store = Adjudications(journal_of(tmp_path))
    adjudicate(store)
    yield store
    store.close()


def test_text_anywhere_in_any_order_case_ignored(store: Adjudications) -> None:
    assert found(store, "litter") == [3]
    assert found(store, "LIT") == [3], "the start of a word, in any case"
    assert found(store, "itter") == [3], "inside a word: litter"
    assert found(store, "ray") == found(store, "x-ray") == [1], "inside a word: X-ray"
    assert found(store, "4471") == found(store, "msku447") == [1], "part of a container number"
    assert found(store, "clay kitty") == [3], "every term, in any order"
    assert found(store, "MÜLLER") == found(store, "Müller") == [3]
    if "remove_diacritics" in NOTES_TOKENIZER:
        assert found(store, "muller") == [3] and found(store, "rontgen") == [5]
    assert found(store, "kitty tiles") == [], "the terms must be in one act's notes"
    assert found(store, '"kitty litter"') == [3]
    assert found(store, '"ty lit"') == [3], "a quoted phrase may start and end inside words"
    assert found(store, '"litter kitty"') == [], "a quoted phrase keeps its order"
    assert found(store, "cs-137") == []
    assert found(store, "100%") == [3], "punctuation is text"
    assert sorted(found(store, "papers")) == [3, 5, 6]
    index_agrees(store.path)


def test_a_term_of_one_or_two_characters_is_looked_for_in_what_the_longer_ones_found(store: Adjudications) -> None:
    assert found(store, "kitty ay") == [3], "'ay' in 'clay'"
    assert found(store, "papers GM") == [5], "case ignored"
    assert found(store, "papers zz") == []
    assert found(store, "papers 0%") == [3], "LIKE's wildcards are text: '0%' only in '100%'"
    assert found(store, "papers _c") == [], "'_' is no wildcard ('s checked' has no '_c')"
    for text in ("ay", "x", "ay zz"):
        with pytest.raises(SearchError, match="at least 3 characters in a row"):
            found(store, text)


def test_search_keeps_the_filters_and_pages_both_ways(store: Adjudications) -> None:
    everything = [row.seq for row in store.events(EventFilter(), 50).rows]
    expected = [seq for seq in everything if seq in (3, 5, 6)]  # the table's order, kept to the noted decisions
    assert found(store, "papers checked") == expected
    lane2 = [row.seq for row in store.events(EventFilter(lane="lane2"), 50).rows]
    assert found(store, "papers", lane="lane2") == [seq for seq in expected if seq in lane2] != []
    assert found(store, "papers", verdict="CLEAR") == []  # 3, 5 and 6 are alarms
    assert found(store, "papers", state="disposed") == expected
    assert found(store, "papers", state="awaiting") == []
    ends = {row.seq: row.end for row in store.events(EventFilter(), 50).rows}
    assert found(store, "papers", since=ends[expected[1]]) == expected[:2], "since: inclusive"
    assert found(store, "papers", until=ends[expected[1]]) == expected[2:], "until: exclusive"

    first = store.events(EventFilter(text="papers"), 2)
    assert [r.seq for r in first.rows] == expected[:2] and first.newer is None and first.older == expected[1]
    second = store.events(EventFilter(text="papers"), 2, before=first.older)
    assert [r.seq for r in second.rows] == expected[2:] and second.older is None and second.newer == expected[2]
    back = store.events(EventFilter(text="papers"), 2, after=second.newer)
    assert [r.seq for r in back.rows] == expected[:2]


def test_a_search_orders_its_matches_from_the_index_of_seq_and_end_not_the_rows(store: Adjudications) -> None:
    """The decisions rows are 14-30 kB each: a search matching thousands of notes must not read them to sort."""
    executed: list[str] = []
    store._conn.set_trace_callback(executed.append)
    try:
        for where in ({}, {"lane": "lane2"}, {"state": "disposed", "verdict": "ALARM"}):
            found(store, "papers", **where)
    finally:
        store._conn.set_trace_callback(None)
    searches = [sql for sql in executed if "MATCH" in sql]
    assert len(searches) == 3
    conn = sqlite3.connect(store.path)
    try:
        for sql in searches:
            plan = " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql))
            assert "SEARCH d USING COVERING INDEX decisions_seq_end_lane_verdict (seq=?)" in plan, plan
    finally:
        conn.close()


def test_a_supervisors_amendment_is_found(store: Adjudications) -> None:
    disposed = store.history(3)[-1]
    store.record(
        3, "amend", "sam", "supervisor", disposition="medical", notes="Patient treated with Tc-99m", amends=disposed.id
    )
    assert found(store, "tc-99m") == found(store, "patient") == found(store, "atien") == [3]
    assert found(store, "kitty") == [3], "the amended act's notes stay in the history, and found"
    assert found(store, "99m") == [3]
    index_agrees(store.path)


def test_an_act_recorded_by_another_console_is_found(tmp_path: Path) -> None:
    path = journal_of(tmp_path)
    first, second = Adjudications(path), Adjudications(path)
    try:
        second.record(2, "adjudicate", "olga", "operator", disposition="test", notes="Drill with a check source")
        assert found(first, "drill") == [2]
    finally:
        first.close()
        second.close()


def test_a_journal_from_before_the_index_has_it_built_when_a_console_opens_it(tmp_path: Path) -> None:
    path = journal_of(tmp_path)
    adjudicate(Adjudications(path))
    conn = sqlite3.connect(path)  # the layout the console left before the full-text index
    conn.executescript(
        "DROP TRIGGER adjudication_notes_insert; DROP TABLE adjudication_notes;"
        " CREATE INDEX adjudications_notes ON adjudications (notes, seq);"
    )
    conn.close()
    store = Adjudications(path)
    try:
        assert sorted(found(store, "papers")) == [3, 5, 6]
        store.record(4, "adjudicate", "olga", "operator", disposition="background", notes="Papers missing")
        assert sorted(found(store, "papers")) == [3, 4, 5, 6]
        index_agrees(path)
    finally:
        store.close()
    conn = sqlite3.connect(path)
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "adjudications_notes" not in names, "the index of the search by LIKE is dropped"
    reopened = Adjudications(path)  # a second opening finds the index and leaves it as it is
    try:
        assert sorted(found(reopened, "papers")) == [3, 4, 5, 6]
        index_agrees(path)
    finally:
        reopened.close()


def test_a_journal_with_the_earlier_index_of_words_has_it_rebuilt_as_trigrams(tmp_path: Path) -> None:
    path = journal_of(tmp_path)
    adjudicate(Adjudications(path))
    conn = sqlite3.connect(path)  # the index the console made before it searched inside words
    conn.executescript(
        "DROP TRIGGER adjudication_notes_insert; DROP TABLE adjudication_notes;"
        " CREATE VIRTUAL TABLE adjudication_notes USING fts5(notes, content='adjudications', content_rowid='id',"
        " tokenize='unicode61 remove_diacritics 2');"
        " CREATE TRIGGER adjudication_notes_insert AFTER INSERT ON adjudications"
        " BEGIN INSERT INTO adjudication_notes (rowid, notes) VALUES (new.id, new.notes); END;"
        " INSERT INTO adjudication_notes (adjudication_notes) VALUES ('rebuild');"
    )
    conn.close()
    store = Adjudications(path)
    try:
        assert found(store, "itter") == [3] and found(store, "ray") == [1]
        store.record(4, "adjudicate", "olga", "operator", disposition="background", notes="Seal 88123 intact")
        assert found(store, "812") == [4], "the trigger indexes into the new index"
        index_agrees(path)
    finally:
        store.close()
    conn = sqlite3.connect(path)
    made = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'adjudication_notes'").fetchone()[0]
    triggers = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND sql LIKE '%_notes (rowid%'")
    assert f"tokenize='{NOTES_TOKENIZER}'" in made and triggers.fetchone()[0] == 1
    conn.close()


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("kitty lit", NotesSearch('"kitty" "lit"')),
        ('"kitty litter" clay', NotesSearch('"kitty litter" "clay"')),
        ('say "hi', NotesSearch('"say"', ("%hi%",))),
        ('a"bcd', NotesSearch('"bcd"', ("%a%",))),
        ('say "it\'s ok"', NotesSearch('"say" "it\'s ok"')),
        ("NEAR(kitty", NotesSearch('"NEAR(kitty"')),
        ("x OR yes", NotesSearch('"yes"', ("%x%", "%OR%"))),
        ("kit* -clay", NotesSearch('"kit*" "-clay"')),
        ("100% a_ b\\", NotesSearch('"100%"', ("%a\\_%", "%b\\\\%"))),
    ],
)
def test_what_users_type_is_quoted_into_the_query_language(text: str, query: NotesSearch) -> None:
    assert notes_query(text) == query


@pytest.mark.parametrize("text", ["*", '""', '"', "!! ... ??", "🙂", "-", "%", "_"])
def test_a_search_without_a_word_is_refused_in_words(text: str) -> None:
    with pytest.raises(SearchError, match="at least one word"):
        notes_query(text)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    config = site_config(tmp_path)
    journal_of(tmp_path)
    users = UserStore(users_path(config))
    for name, role in ROLES.items():
        users.add(name, role, PASSWORD)
    users.close()
    with TestClient(create_app(config, start_feeds=False), base_url="https://testserver") as client:
        yield client


HOSTILE = [
    '"', '""', '"kitty', 'kitty"', "*", "kit*", "NEAR(", "NEAR(kitty litter, 2)", "kitty OR tiles", "kitty AND NOT",
    "-kitty", "notes:kitty", "^kitty", "(kitty", "kitty)", "{notes}: kitty", "'; DROP TABLE adjudications; --",
    "%", "_", "\\", "日本語", "Müller", "🙂", "kitty 🙂", "\u0301", "a" * 5000, " ".join(["kitty"] * 17),
]  # fmt: skip


def test_hostile_searches_answer_a_page_or_a_message_never_an_error(client: TestClient) -> None:
    login(client, "olga")
    token = csrf(client)
    client.post("/decision/3/adjudicate", data={"csrf": token, "disposition": "norm", "notes": NOTES[3]})
    for text in HOSTILE:
        page = client.get("/decisions", params={"q": text})
        assert page.status_code in (200, 400), (text, page.status_code)
        if page.status_code == 400:
            assert re.search(r'<p class="error" role="alert">search the notes for at (least|most)', page.text), text
        csv = client.get("/decisions", params={"q": text, "format": "csv"})
        assert csv.status_code == page.status_code, (text, csv.status_code)
    for text in ("kit", "Müller", "KITTY 100%", "kitty 🙂", "kitty %", '"kitty', "100% clay", "üller"):
        assert table_seqs(client, urlencode({"q": text})) == [3], text
    for text in ("kit*", "-kitty", "NEAR(kitty litter, 2)", "notes:kitty", "kitty OR tiles", "kitty AND NOT", "日本語"):
        assert table_seqs(client, urlencode({"q": text})) == [], text
    refused = client.get("/decisions", params={"q": "*"})
    assert refused.status_code == 400 and "at least one word" in refused.text
    assert '<td><a href="/decision/' not in refused.text, "no rows rather than rows the search did not choose"
    assert client.get("/decisions", params={"q": " ".join(["kitty"] * 17)}).status_code == 400
    assert table_seqs(client, "q=kitty&lane=lane1") == [3] and table_seqs(client, "q=kitty&lane=lane2") == []
