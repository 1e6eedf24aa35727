"""The alert journal on real SQLite files: numbering, idempotence, reads, crashes and write failures."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from support import typed

from lanewatch.edge.decisions import decision
from lanewatch.edge.decisions import journal as journal_module
from lanewatch.edge.decisions.journal import SCHEMA_VERSION, Journal, JournalError, utc_text
from lanewatch.edge.ops.metrics import ServiceMetrics


def make_decision(i: int, lane: str = "L1", verdict: str = "CLEAR", profile_len: int = 20) -> dict[str, Any]:
    """A decision shaped like the service's, with a seeded count profile of ``profile_len`` samples."""
    rng = random.Random(i)
    alarms = [
        {"reason": "gamma", "statistic": 2.5 + i % 3, "threshold": 4.8, "location_m": 3.1, "alarm": False},
        {"reason": "neutron", "statistic": 1.0, "threshold": 7.0, "location_m": None, "alarm": False},
    ]
    start_ns = 1_714_564_800_000_000_000 + i * 1_000_000_000
    return {
        "schema_version": decision.SCHEMA_VERSION,
        "lane": lane,
        "occupancy_id": f"{lane}-{i:06d}",
        "device_occupancy": i,
        "start": f"2024-05-01T12:{i // 60 % 60:02d}:{i % 60:02d}Z",
        "end": f"2024-05-01T12:{i // 60 % 60:02d}:{i % 60:02d}.800Z",
        "start_ns": start_ns,
        "end_ns": start_ns + 800_000_000,
        "verdict": verdict,
        "alarms": alarms,
        "baseline_verdict": "CLEAR",
        "baseline": None,
        "end_reason": "gx",
        "incomplete": [],
        "samples": profile_len,
        "device_alarm": False,
        "tamper": False,
        "link_interruptions": 0,
        "speed_kmh": None,
        "background": None,
        "profile": {"gamma_counts": [[rng.randint(40, 60) for _ in range(profile_len)] for _ in range(4)]},
    }


def sample(metrics: ServiceMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics(CollectorRegistry())


def test_seq_is_strictly_increasing_and_survives_reopening(tmp_path: Path, metrics: ServiceMetrics) -> None:
    path = tmp_path / "state" / "journal.db"
    with Journal(path, metrics) as journal:
        assert journal.last_seq() == 0
        seqs = [journal.append(make_decision(i))["seq"] for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
        assert sample(metrics, "lanewatch_journal_last_seq") == 5
        assert sample(metrics, "lanewatch_journal_write_seconds_count") == 5
        assert sample(metrics, "lanewatch_journal_size_bytes") == journal.size_bytes() > 0
    # seq is never reused, even when the newest rows are gone: AUTOINCREMENT keeps the high-water mark.
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM decisions WHERE seq >= 4")
    with Journal(path) as journal:
        assert journal.last_seq() == 5
        assert journal.append(make_decision(100))["seq"] == 6
        assert [d.seq for d in journal.since(0)] == [1, 2, 3, 6]


def test_append_is_idempotent_per_occupancy(tmp_path: Path, metrics: ServiceMetrics) -> None:
    with Journal(tmp_path / "j.db", metrics) as journal:
        first = journal.append(make_decision(1, verdict="ALARM"))
        journal.append(make_decision(2))
        retry = dict(make_decision(1, verdict="CLEAR"), seq=999)
        again = journal.append(retry)
        assert again == first
        assert again["verdict"] == "ALARM" and again["seq"] == 1
        assert journal.last_seq() == 2
        assert len(journal.since(0)) == 2
        assert sample(metrics, "lanewatch_journal_last_seq") == 2
        assert sample(metrics, "lanewatch_journal_errors_total") == 0


def test_append_returns_what_is_stored(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as journal:
        decision = make_decision(7)
        stored = journal.append(decision)
        assert "seq" not in decision, "the caller's dict is left alone"
        assert stored == {"seq": 1, **decision}
        assert journal.get(1) == typed(stored) and json.loads(journal.get_json(1) or b"") == stored
        assert journal.get(2) is None
        assert journal.get_occupancy("L1-000007") == typed(stored)
        assert journal.get_occupancy("nope") is None


def test_since_get_last_and_paging_by_size(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as journal:
        for i in range(10):
            journal.append(make_decision(i, profile_len=200))
        assert journal.last_seq() == 10
        assert [d.seq for d in journal.since(0)] == list(range(1, 11))
        assert [d.seq for d in journal.since(7)] == [8, 9, 10]
        assert [d.seq for d in journal.since(2, limit=3)] == [3, 4, 5]
        assert journal.since(10) == []
        one = len(journal.get_json(1) or b"")
        paged = journal.since(0, max_bytes=int(2.5 * one))
        assert 1 <= len(paged) < 10
        assert [d.seq for d in paged] == list(range(1, len(paged) + 1))
        # A page always holds at least one decision, so paging always advances.
        assert [d.seq for d in journal.since(4, max_bytes=1)] == [5]


def test_query_filters_by_lane_verdict_and_end_time(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as journal:
        for i in range(12):
            journal.append(make_decision(i, lane=f"L{i % 2}", verdict="ALARM" if i % 3 == 0 else "CLEAR"))
        assert [d.seq for d in journal.query(lane="L0")] == [1, 3, 5, 7, 9, 11]
        assert [d.seq for d in journal.query(verdict="ALARM")] == [1, 4, 7, 10]
        assert [d.seq for d in journal.query(lane="L1", verdict="ALARM")] == [4, 10]
        assert [d.seq for d in journal.query(limit=3)] == [10, 11, 12]
        # ends are at 12:00:0i.8; a bound given in another zone is compared in UTC
        window = journal.query(since="2024-05-01T14:00:03+02:00", until="2024-05-01T12:00:06Z")
        assert [d.device_occupancy for d in window] == [3, 4, 5]
        assert journal.query(lane="nowhere") == []


@pytest.mark.invalid_decisions  # other ISO 8601 forms, normalized in the index columns
def test_times_are_stored_in_one_sortable_utc_format(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path) as journal:
        decision = dict(make_decision(1), start="2024-05-01T14:00:00+02:00", end="2024-05-01T12:00:05.25Z")
        stored = journal.append(decision)
        assert stored["start"] == "2024-05-01T14:00:00+02:00", "the body keeps what the service wrote"
    with sqlite3.connect(path) as conn:
        row = conn.execute('SELECT start, "end", created FROM decisions').fetchone()
    assert row[:2] == ("2024-05-01T12:00:00.000000Z", "2024-05-01T12:00:05.250000Z")
    assert row[2].endswith("Z") and row[2] == utc_text(row[2])
    assert utc_text("2024-05-01T12:00:00") == "2024-05-01T12:00:00.000000Z"


def test_large_bodies_are_compressed_small_ones_stay_readable_json(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path) as journal:
        small = journal.append(make_decision(1, profile_len=5))
        large = journal.append(make_decision(2, profile_len=2000))
        assert json.loads(journal.get_json(2) or b"") == large
        assert [json.loads(raw) for raw in journal.since_json(0)] == [small, large]
        assert journal.since(0) == [typed(small), typed(large)]
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT seq, encoding, length(body), typeof(body) FROM decisions ORDER BY seq").fetchall()
        # plain JSON rows stay queryable with SQLite's own JSON functions
        assert conn.execute("SELECT json_extract(body, '$.end_reason') FROM decisions WHERE seq = 1").fetchone() == (
            "gx",
        )
    assert rows[0][1:] == ("json", len(json.dumps(small, separators=(",", ":"))), "text")
    assert rows[1][1] == "json+zlib" and rows[1][3] == "blob"
    assert rows[1][2] < 0.8 * len(json.dumps(large, separators=(",", ":")))


def test_numpy_values_are_stored_as_plain_numbers(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    with Journal(tmp_path / "j.db") as journal:
        decision = dict(make_decision(1), profile={"t_s": np.arange(3) * 0.2, "peak": np.float32(1.5)})
        decision["device_occupancy"] = np.int64(4)
        stored = journal.append(decision)
        assert stored["profile"] == {"t_s": [0.0, 0.2, 0.4], "peak": 1.5}
        assert stored["device_occupancy"] == 4
        assert json.loads(journal.get_json(1) or b"") == stored


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"occupancy_id": None}, "lacks occupancy_id"),
        ({"lane": ""}, "lacks lane"),
        ({"verdict": "MAYBE"}, "verdict must be one of"),
        ({"end": "yesterday"}, "ISO"),
        ({"start": 12}, "ISO 8601"),
        ({"profile": {"bad": object()}}, "not JSON serializable"),
    ],
)
def test_bad_decisions_are_refused_and_counted(
    tmp_path: Path, metrics: ServiceMetrics, change: dict[str, Any], message: str
) -> None:
    with Journal(tmp_path / "j.db", metrics) as journal:
        with pytest.raises(JournalError, match=message) as info:
            journal.append({**make_decision(1), **change})
        assert str(tmp_path) in str(info.value)
        assert sample(metrics, "lanewatch_journal_errors_total") == 1
        assert journal.last_seq() == 0
        assert journal.writable(), "a bad decision says nothing about the disk"
        assert journal.append(make_decision(2))["seq"] == 1


def test_another_connection_and_process_see_committed_rows(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path) as writer, Journal(path, readonly=True) as reader:
        assert reader.since(0) == []
        written = [writer.append(make_decision(i)) for i in range(3)]
        assert reader.since(0) == [typed(d) for d in written]
        assert reader.last_seq() == 3
        assert not reader.writable()
        script = textwrap.dedent(
            """
            import sqlite3, sys
            conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
            print(conn.execute("SELECT group_concat(occupancy_id) FROM decisions ORDER BY seq").fetchone()[0])
            """
        )
        out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == ",".join(d["occupancy_id"] for d in written)
        writer.append(make_decision(3))
        fourth = reader.get(4)
        assert fourth is not None and fourth.occupancy_id == "L1-000003"


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    from test_journal import make_decision
    from lanewatch.edge.decisions.journal import Journal
    journal = Journal(sys.argv[1])
    i = int(sys.argv[4])
    while True:
        stored = journal.append(make_decision(i, profile_len=int(sys.argv[3])))
        print(stored["seq"], stored["occupancy_id"], flush=True)
        i += 1
    """
)


def test_kill_9_loses_no_acknowledged_decision(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    tests_dir = str(Path(__file__).resolve().parent)
    acked: list[tuple[int, str]] = []
    for round_ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, str(path), tests_dir, "300", str(1000 * round_)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            before = len(acked)
            deadline = time.monotonic() + 60
            while len(acked) < before + 40 and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                seq, occupancy = line.split()
                acked.append((int(seq), occupancy))
            os.kill(proc.pid, signal.SIGKILL)
            # what it printed before dying was acknowledged too
            acked.extend((int(s), o) for s, o in (line.split() for line in proc.stdout.read().splitlines()))
        finally:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        assert len(acked) >= before + 40, f"round {round_}: writer acknowledged too little"
    seqs = [s for s, _ in acked]
    assert seqs == sorted(set(seqs)), "acknowledged seqs strictly increase, also across the crash"
    with Journal(path) as journal:
        for seq, occupancy in acked:
            stored = journal.get_json(seq)
            assert stored is not None, f"acknowledged seq {seq} lost"
            i = int(occupancy.split("-")[1])
            assert json.loads(stored) == {"seq": seq, **make_decision(i, profile_len=300)}
        after = journal.append(make_decision(10**6))
        assert after["seq"] > max(seqs)
        assert after["seq"] > journal.since(0)[-2].seq
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import resource, signal, sys
    sys.path.insert(0, sys.argv[2])
    from test_journal import make_decision
    from lanewatch.edge.decisions.journal import Journal, JournalError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG
    journal = Journal(sys.argv[1])
    limit = int(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        for i in range(100_000):
            print("ACK", journal.append(make_decision(i, profile_len=400))["seq"], flush=True)
    except JournalError as exc:
        print("ERROR", exc, flush=True)
    print("WRITABLE", journal.writable(), flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space is back: the same journal goes on
    print("ACK", journal.append(make_decision(10**6))["seq"], flush=True)
    print("WRITABLE", journal.writable(), flush=True)
    """
)


def test_a_full_disk_raises_journal_error_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    tests_dir = str(Path(__file__).resolve().parent)
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(path), tests_dir, str(256 * 1024)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    acked = [int(line.split()[1]) for line in lines if line.startswith("ACK")]
    errors = [line for line in lines if line.startswith("ERROR")]
    assert len(acked) >= 2, out.stdout
    assert len(errors) == 1 and f"{path}: cannot journal decision for occupancy" in errors[0], out.stdout
    assert lines.index(errors[0]) == len(acked) - 1
    assert lines[-3:] == ["WRITABLE False", f"ACK {acked[-1]}", "WRITABLE True"]
    assert acked == list(range(1, len(acked) + 1))
    with Journal(path) as journal:
        assert [d.seq for d in journal.since(0, limit=10**6)] == acked
        assert journal.append(make_decision(10**7))["seq"] == acked[-1] + 1
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_locked_database_spills_to_the_fallback_then_recovers(tmp_path: Path, metrics: ServiceMetrics) -> None:
    path = tmp_path / "j.db"
    with Journal(path, metrics, busy_timeout_s=0.05) as journal:
        journal.append(make_decision(0))
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            assert journal.append(make_decision(1))["seq"] == 2  # durable in the fallback file, so publishable
            assert journal.append(make_decision(1))["seq"] == 2, "one occupancy, one decision, in the fallback too"
            assert sample(metrics, "lanewatch_journal_errors_total") == 2
            assert sample(metrics, "lanewatch_journal_fallback_decisions_total") == 1
            assert "the last write failed" in journal.problem() and not journal.writable()
            assert journal.last_seq() == 2
            assert json.loads(journal.fallback_path.read_text())["seq"] == 2
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert journal.append(make_decision(2))["seq"] == 3  # the fallback moves into the journal first
        assert journal.writable() and not journal.fallback_path.exists()
        assert [d.seq for d in journal.since(0)] == [1, 2, 3]


def test_seq_is_never_reused_when_the_file_is_deleted_or_replaced_while_stopped(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path) as journal:
        for i in range(3):
            journal.append(make_decision(i))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with Journal(path) as journal:
        assert journal.last_seq() == 3 and journal.append(make_decision(3))["seq"] == 4
    os.replace(tmp_path / "j.db", tmp_path / "old.db")
    with Journal(tmp_path / "other.db") as other:
        other.append(make_decision(99))
    os.replace(tmp_path / "other.db", path)  # another journal in its place: numbering goes on from the highest
    with Journal(path) as journal:
        assert journal.append(make_decision(4))["seq"] == 5


def test_a_journal_deleted_while_open_is_detected_and_nothing_is_lost(tmp_path: Path, metrics: ServiceMetrics) -> None:
    path = tmp_path / "j.db"
    with Journal(path, metrics) as journal:
        journal.append(make_decision(0))
        assert journal.problem() == ""
        path.unlink()
        assert "deleted while open" in journal.problem() and not journal.writable()
        assert sample(metrics, "lanewatch_journal_detached") == 1
        stored = [journal.append(make_decision(i))["seq"] for i in range(1, 4)]
        assert stored == [2, 3, 4] and not path.exists(), "nothing is written into the deleted file"
        assert [json.loads(line)["seq"] for line in journal.fallback_path.read_text().splitlines()] == stored
    with Journal(path) as journal:  # a restart imports the fallback into the new file at the path
        assert [d.seq for d in journal.since(0)] == [2, 3, 4] and journal.writable()
        assert journal.append(make_decision(9))["seq"] == 5 and not journal.fallback_path.exists()


def test_free_space_health_has_hysteresis(tmp_path: Path) -> None:
    """Near the limit health does not flap: not ok under MIN_FREE_BYTES, ok again only from RESUME_FREE_BYTES."""
    with Journal(tmp_path / "j.db") as journal:
        fs = os.statvfs(tmp_path)
        free = fs.f_bavail * fs.f_frsize
        assert journal.writable()
        for floor, ok in ((2 * free, False), (free * 3 // 4, False), (free * 2 // 5, True), (free * 3 // 4, True)):
            journal_module.MIN_FREE_BYTES, journal_module.RESUME_FREE_BYTES = floor, 2 * floor
            try:
                assert journal.writable() is ok, (floor, free)
            finally:
                journal_module.MIN_FREE_BYTES, journal_module.RESUME_FREE_BYTES = 1 << 20, 2 << 20


def test_schema_version_and_files_that_are_not_journals(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(JournalError, match="newer"):
        Journal(path)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(JournalError, match=r"garbage\.db: cannot open journal"):
        Journal(garbage)
    with pytest.raises(JournalError, match=r"missing\.db: cannot open journal: no such file$"):
        Journal(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists(), "reading creates nothing"
    for readonly in (True, False):
        with pytest.raises(JournalError, match=r"cannot open journal: a directory, not a journal file$"):
            Journal(tmp_path, readonly=readonly)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(JournalError, match="not a lanewatch journal"):
        Journal(empty, readonly=True)


def test_closed_journal_refuses_work(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    journal.append(make_decision(1))
    journal.close()
    journal.close()
    assert not journal.writable()
    with pytest.raises(JournalError, match="closed"):
        journal.append(make_decision(2))
    with pytest.raises(JournalError, match="closed"):
        journal.since(0)


@pytest.mark.invalid_decisions
def test_a_decision_that_breaks_the_schema_is_counted_logged_and_still_journaled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = ServiceMetrics(CollectorRegistry())
    bad = {**make_decision(1), "samples": -3, "surprise": True}
    with Journal(tmp_path / "j.db", metrics) as journal:
        stored = journal.append(bad)
        journal.append(make_decision(2))
        assert json.loads(journal.get_json(stored["seq"]) or b"") == stored and stored["surprise"] is True
        with pytest.raises(JournalError, match="decision 1 does not fit the decision contract"):
            journal.get(1)  # the typed read names it: a reader passes it over, or reads its JSON
        assert journal.get(2) == typed({**make_decision(2), "seq": 2})
    where = {"where": "decision-schema"}
    assert sample(metrics, "lanewatch_handler_errors_total", where) == 1
    assert journal.invalid == 1
    assert "does not fit the decision schema" in caplog.text and "L1-000001" in caplog.text
    assert decision.problems(bad) is not None and decision.problems({**make_decision(2), "seq": 2}) is None


def test_background_checkpoints_bring_commits_into_the_database_file_without_a_commit_doing_it(
    tmp_path: Path,
) -> None:
    """With checkpoints in the background no commit checkpoints (SQLite's automatic checkpoint is off for the
    writer), yet every committed decision reaches the database file itself: a copy of that file alone, without the
    WAL, holds them all once the checkpoint thread has run. The decisions are durable before that, in the WAL."""
    path = tmp_path / "journal.db"
    with Journal(path, checkpoint_in_background=True) as journal:
        assert journal._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        stored = [journal.append(make_decision(i)) for i in range(20)]

        def in_file_alone() -> list[int]:
            copy = tmp_path / f"copy-{time.monotonic_ns()}.db"
            copy.write_bytes(path.read_bytes())
            conn = sqlite3.connect(copy)
            try:
                return [row[0] for row in conn.execute("SELECT seq FROM decisions ORDER BY seq")]
            except sqlite3.DatabaseError:
                return []  # the schema itself not yet in the file
            finally:
                conn.close()

        deadline = time.monotonic() + 30
        checkpointer = journal._checkpointer
        assert checkpointer is not None
        # the thread counts a checkpoint after SQLite copied the pages: the file may hold them a moment before
        while in_file_alone() != [d["seq"] for d in stored] or checkpointer.done < 1:
            assert time.monotonic() < deadline, f"never checkpointed: {in_file_alone()}, {checkpointer.done} counted"
            time.sleep(0.05)
    with Journal(path) as again:
        assert [d.seq for d in again.since(0)] == [d["seq"] for d in stored]
