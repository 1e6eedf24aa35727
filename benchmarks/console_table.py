"""Benchmark: the console's event table with a million decisions journaled.

    python -m benchmarks.console_table [--decisions 1000000] [--requests 100] [--live-hz 1] [--journal FILE]

Builds a journal of ``--decisions`` decisions of real size (50 lanes, one every 0.2 s of simulated time, 3%
alarms, half of them adjudicated with notes, a supervisor's amendment on every fiftieth), with the journal's own
schema and encoding and the console's adjudication tables. Each decision is one of ``--pool`` decisions that
simulated vehicles (the default traffic mix) made when driven through a lane with an X-ray scanner (radiation
profile, X-ray section with its preview: 9-32 kB of JSON, stored compressed as the journal stores it), in the
row of its own seq, lane, verdict and times. ``--journal FILE`` keeps the journal there (built when missing, else
reused).

Then it times whole HTTP requests for pages of the event table from the console under uvicorn (routing, session,
query, decoding the page's decisions, rendering): the newest page, a lane, alarms awaiting adjudication, a one-day
range in the site's time zone, a lane's alarms of a day, searches in the notes (a word in a third of them, a word
in one in a thousand, text inside a word in a seventh, the first with a lane), and a page a thousand pages deep.
The console is ``lanewatch console`` in a process of its own, as deployed. Each page is timed twice: quiet, then
live, while another process playing the service journals (fsynced) and publishes ``--live-hz`` decisions of real
size a second per lane on a real alert bus, the console follows it and a browser's event stream reads the wall; the
run fails unless the stream received every decision journaled while live (each run journals decisions of its own,
also on a journal kept from an earlier run). Target: every page under 100 ms (p99), live too. Baselines in the same
run: the quiet pages; the deep page fetched with LIMIT/OFFSET, the way a naive table pages; and each search's query
by LIKE over every note (the console's earlier search, with its index on the notes) against the console's query by
the full-text index, quiet and live.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zoneinfo
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import msgspec
from prometheus_client import CollectorRegistry

from benchmarks.console_latency import Service
from benchmarks.fusion import WINDOWS_KEV, LaneFeed, passage_records
from lanewatch.drivers.sim.physics import HOLD_IN_S, Traffic
from lanewatch.drivers.sim.xray import XrayScanner
from lanewatch.edge import config as config_module
from lanewatch.edge.commands.demo import free_ports
from lanewatch.edge.config import DetectionConfig, LaneConfig
from lanewatch.edge.console.adjudication import READ_PRAGMAS, Adjudications, EventFilter
from lanewatch.edge.console.users import UserStore, users_path
from lanewatch.edge.decisions.journal import JSON_ENCODER, Journal, _encode
from lanewatch.edge.lane.occupancy import Lane
from lanewatch.edge.ops.metrics import ServiceMetrics

LANES = 50
PASSWORD = "benchmark password"
START = datetime(2024, 1, 1, tzinfo=UTC)
NOTE_LOADS = (
    "Kitty litter load", "Ceramic tiles", "Granite countertops", "Fertilizer (potash)", "Bananas",
    "Porcelain sinks", "Building bricks",
)  # fmt: skip
"""The loads the adjudications' notes name, in turn."""
MODEL = {"version": "benchmark", "score": 1.2, "finding": False, "finding_threshold": 2.0, "alarm_threshold": 0.0,
         "release_threshold": 2.0}  # fmt: skip
"""The model section of every built decision (the lane that simulated them runs no model)."""
POOLS = ("ALARM", "CLEAR")
"""The verdicts of the simulated decisions the rows are made from (INCOMPLETE rows from CLEAR ones)."""
PAYLOAD = ("background", "profile", "xray")
"""The fields of a simulated decision the live service's decisions carry, so that they have its size."""
SEARCHES = {"notes: papers": "papers", "notes: patient": "patient", "notes: otash": "otash"}
"""Searches in notes the baseline times: a word in a third of the notes, a word in one in a thousand, and text inside
a word ("potash") in a seventh."""
LIKE_QUERY = (
    "SELECT d.seq FROM decisions d WHERE d.seq IN (SELECT seq FROM adjudications WHERE notes LIKE ? ESCAPE '\\')"
    ' ORDER BY d."end" DESC, d.seq DESC LIMIT 16'
)
"""The console's earlier search in notes, the baseline: LIKE over every note by an index on the notes."""


def simulated_decisions(count: int, seed: int = 2007) -> list[dict[str, Any]]:
    """``count`` decisions of a lane with an X-ray scanner, one per simulated vehicle of the default traffic mix
    driven through the lane as :mod:`benchmarks.fusion` does (radiation profile, X-ray section with its preview),
    as plain JSON values."""
    detection = DetectionConfig(energy_windows_kev=WINDOWS_KEV, occupancy_hold_in_s=HOLD_IN_S)
    feed = LaneFeed(Lane(LaneConfig(id="lane1", xray="scanner:1"), detection, ServiceMetrics(CollectorRegistry())))
    traffic = Traffic(seed, WINDOWS_KEV)
    scanner = XrayScanner(seed)
    t_ns = feed.background(traffic, int(START.timestamp()) * 10**9, 15.0)
    while len(feed.decided) < count:
        passage = traffic.next_passage()
        events = passage_records(passage, scanner.scan(passage), t_ns)
        for when, kind, source, fields in events:
            feed(when, kind, source, fields)
        t_ns = feed.background(traffic, events[-1][0], 3.0)
    return [msgspec.json.decode(JSON_ENCODER.encode(decision)) for decision in feed.decided[:count]]


def verdict_of(seq: int) -> str:
    return "ALARM" if seq % 33 == 0 else "INCOMPLETE" if seq % 97 == 0 else "CLEAR"


def note_of(i: int) -> str:
    """The notes of the ``i``-th adjudication: a load, "papers checked" on every third (the search that matches
    many), a patient on every thousandth (the search that matches few)."""
    note = NOTE_LOADS[i % len(NOTE_LOADS)]
    if i % 3 == 0:
        note += ", papers checked"
    if i % 1000 == 0:
        note += "; driver is a patient treated with I-131 last week"
    return note


IDENTITY = ("seq", "lane", "occupancy_id", "start", "end", "start_ns", "end_ns")
"""The fields of a decision each row of the built journal has of its own."""


def templates(pools: dict[str, list[dict[str, Any]]]) -> dict[str, list[bytes]]:
    """The pool decisions by verdict (INCOMPLETE: the CLEAR ones, their link lost) as JSON object members without
    their :data:`IDENTITY`, encoded once."""
    incomplete = [d | {"verdict": "INCOMPLETE", "incomplete": ["link-lost"]} for d in pools["CLEAR"]]
    return {
        verdict: [
            JSON_ENCODER.encode({k: v for k, v in d.items() if k not in IDENTITY} | {"model": MODEL})[1:-1]
            for d in decisions
        ]
        for verdict, decisions in (*pools.items(), ("INCOMPLETE", incomplete))
    }


def rows_of(bulk: dict[str, list[bytes]], seqs: range) -> list[tuple]:
    """The journal rows of decisions ``seqs``: a pool decision of the row's verdict with the row's own identity,
    encoded (compressed) as the journal encodes it."""
    rows = []
    for seq in seqs:
        end = START + timedelta(seconds=0.2 * seq)
        text = end.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        end_ns = int(end.timestamp()) * 10**9 + end.microsecond * 1000
        lane = f"lane{seq % LANES + 1}"
        verdict = verdict_of(seq)
        identity = {"seq": seq, "lane": lane, "occupancy_id": f"{lane}-built-{seq}", "start": text, "end": text,
                    "start_ns": end_ns, "end_ns": end_ns}  # fmt: skip
        members = bulk[verdict][seq % len(bulk[verdict])]
        encoding, body = _encode((JSON_ENCODER.encode(identity)[:-1] + b"," + members + b"}").decode())
        rows.append((seq, identity["occupancy_id"], lane, verdict, text, text, text, encoding, body))
    return rows


def build(path: Path, count: int, pools: dict[str, list[dict[str, Any]]]) -> None:
    """``count`` decisions of real size made from ``pools`` (by verdict), and their adjudications, written in bulk
    (the journal's schema and encoding, not its fsync per row). Half the alarms are adjudicated, each with notes
    (:func:`note_of`), and a supervisor amends every fiftieth adjudication."""
    Journal(path).close()
    Adjudications(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA journal_mode = OFF")  # the rows straight to the file, not through a WAL of the same size
    chunks = [range(a, min(a + 5_000, count + 1)) for a in range(1, count + 1, 5_000)]
    with multiprocessing.get_context("spawn").Pool(2) as workers:  # compressing the bodies is most of the work
        for rows in workers.imap(functools.partial(rows_of, templates(pools)), chunks):
            conn.executemany(
                'INSERT INTO decisions (seq, occupancy_id, lane, verdict, start, "end", created, encoding, body)'
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
    conn.execute("INSERT OR REPLACE INTO sqlite_sequence (name, seq) VALUES ('decisions', ?)", (count,))
    adjudicated = [seq for seq in range(33, count + 1, 33) if seq % 66 == 0]
    conn.executemany(
        "INSERT INTO adjudications (id, seq, kind, disposition, secondary, notes, user, role, time)"
        " VALUES (?, ?, 'adjudicate', 'norm', 'not-performed', ?, 'olga', 'operator', '2024-01-02T00:00:00Z')",
        ((i + 1, seq, note_of(i)) for i, seq in enumerate(adjudicated)),
    )
    amended = [(i + 1, seq) for i, seq in enumerate(adjudicated) if i % 50 == 49]
    first = len(adjudicated) + 1
    conn.executemany(
        "INSERT INTO adjudications (id, seq, kind, disposition, secondary, notes, user, role, time, amends)"
        " VALUES (?, ?, 'amend', 'medical', 'not-performed', 'Re-checked: medical isotope, the load is clean', 'sam',"
        " 'supervisor', '2024-01-03T00:00:00Z', ?)",
        ((first + j, seq, amends) for j, (amends, seq) in enumerate(amended)),
    )
    last = {seq: i + 1 for i, seq in enumerate(adjudicated)} | {seq: first + j for j, (_, seq) in enumerate(amended)}
    conn.executemany(
        "INSERT INTO adjudication_state (seq, state, disposition, last_id) VALUES (?, 'disposed', ?, ?)",
        ((seq, "medical" if last[seq] >= first else "norm", last[seq]) for seq in adjudicated),
    )
    conn.commit()
    conn.execute("ANALYZE")
    conn.execute("PRAGMA journal_mode = WAL")  # as the journal runs
    conn.close()


def timed(http: httpx.Client, url: str, requests: int) -> tuple[float, float, int]:
    """p50 and p99 (ms) of GET ``url`` after one warm-up request (page cache), and the rows on the page."""
    http.get(url)
    times = []
    rows = 0
    for _ in range(requests):
        t0 = time.perf_counter()
        page = http.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        assert page.status_code == 200, (url, page.status_code)
        rows = len(re.findall(r'<td><a href="/decision/', page.text))
    return (*percentiles(times), rows)


def play_service(journal: Path, live_hz: float, payload: dict[str, Any], pipe: Connection) -> None:
    """In a process of its own, as the service runs: journal and publish decisions (with ``payload``'s fields) while
    told to ("run", "pause" answered with the seqs journaled so far, "stop")."""
    service = Service(journal, LANES, live_hz, payload)
    service.start()
    pipe.send((service.bus.alerts_endpoint, service.bus.query_endpoint))
    while (command := pipe.recv()) != "stop":
        if command == "run":
            service.running.set()
        else:
            service.running.clear()
            pipe.send(sorted(service.appended))
    service.close()


def start_service(
    journal: Path, live_hz: float, payload: dict[str, Any]
) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=play_service, args=(journal, live_hz, payload, theirs)
    )
    process.start()
    return process, ours


def search_baseline(store: Adjudications, conn: sqlite3.Connection, requests: int) -> dict[str, tuple[float, ...]]:
    """Per search of :data:`SEARCHES`: p50 and p99 (ms) of the earlier query by LIKE (``conn``, with the earlier
    index on the notes) and of the console's query (:meth:`Adjudications.events`, the full-text index, also reading
    the page's rows), after checking they find the same page."""
    out = {}
    for name, text in SEARCHES.items():
        like = [row[0] for row in conn.execute(LIKE_QUERY, (f"%{text}%",))][:15]
        assert like == [row.seq for row in store.events(EventFilter(text=text), 15).rows], name
        times: dict[str, list[float]] = {"like": [], "fts": []}
        for _ in range(requests):
            t0 = time.perf_counter()
            conn.execute(LIKE_QUERY, (f"%{text}%",)).fetchall()
            t1 = time.perf_counter()
            store.events(EventFilter(text=text), 15)
            times["like"].append((t1 - t0) * 1000)
            times["fts"].append((time.perf_counter() - t1) * 1000)
        out[name] = tuple(q for kind in ("like", "fts") for q in percentiles(times[kind]))
    return out


def percentiles(times_ms: list[float]) -> tuple[float, float]:
    times_ms = sorted(times_ms)
    return statistics.median(times_ms), times_ms[min(len(times_ms) - 1, int(0.99 * len(times_ms)))]


def answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Stream:
    """What a browser's event stream on the wall received: the seqs of the decision events, the number of wall
    updates, and why reading stopped early ("" while it reads)."""

    def __init__(self) -> None:
        self.decisions: set[int] = set()
        self.walls = 0
        self.error = ""


def follow_stream(url: str, cookies: dict[str, str], stream: Stream, stop: threading.Event) -> None:
    """Read the console's event stream as a browser on the wall does, into ``stream``, until ``stop``."""
    try:
        with httpx.Client(base_url=url, cookies=cookies, timeout=60) as http, http.stream("GET", "/events") as reply:
            if reply.status_code != 200 or not reply.headers.get("content-type", "").startswith("text/event-stream"):
                stream.error = f"/events answered {reply.status_code} {reply.headers.get('content-type')}"
                return
            name = ""
            for line in reply.iter_lines():
                if stop.is_set():
                    return
                if line.startswith("event: "):
                    name = line[7:]
                    stream.walls += name == "wall"
                elif line.startswith("id: ") and name == "decision":
                    stream.decisions.add(int(line[4:]))
        stream.error = "the console ended the stream"
    except (httpx.HTTPError, ValueError) as exc:
        stream.error = f"reading /events: {exc!r}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--live-hz", type=float, default=1.0, help="decisions a second per lane while live")
    parser.add_argument("--pool", type=int, default=48, help="simulated vehicles the decisions are made from")
    parser.add_argument("--journal", type=Path, help="keep the journal in this file (built when missing, else reused)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work on the machine widens the p99)")
    t0 = time.perf_counter()
    made = simulated_decisions(args.pool)
    pools = {verdict: [d for d in made if (d["verdict"] == "ALARM") == (verdict == "ALARM")] for verdict in POOLS}
    if not all(pools.values()):
        raise SystemExit(f"the {args.pool} simulated vehicles made no {' or '.join(v for v in POOLS if not pools[v])}")
    sizes = sorted(len(JSON_ENCODER.encode(d)) for d in made)
    stored = sorted(len(_encode(JSON_ENCODER.encode(d).decode())[1]) for d in made)
    print(
        f"{len(made)} simulated decisions ({len(pools['ALARM'])} alarms) in {time.perf_counter() - t0:.0f} s: "
        f"{sizes[0] / 1e3:.0f}-{sizes[-1] / 1e3:.0f} kB of JSON (median {statistics.median(sizes) / 1e3:.1f} kB), "
        f"{stored[0] / 1e3:.0f}-{stored[-1] / 1e3:.0f} kB stored (median {statistics.median(stored) / 1e3:.1f} kB)"
    )
    with tempfile.TemporaryDirectory() as folder:
        journal = args.journal or Path(folder) / "journal.db"
        if journal.exists():
            print(f"journal {journal} reused: {journal.stat().st_size / 1e9:.1f} GB")
        else:
            t0 = time.perf_counter()
            build(journal, args.decisions, pools)
            print(f"journal of {args.decisions:,} decisions built in {time.perf_counter() - t0:.0f} s "
                  f"({journal.stat().st_size / 1e9:.1f} GB)")  # fmt: skip
        service, pipe = start_service(journal, args.live_hz, {k: pools["CLEAR"][0][k] for k in PAYLOAD})
        alerts, query = pipe.recv()
        lanes = "".join(f'[[lanes]]\nid = "lane{i + 1}"\n' for i in range(LANES))
        port, http_port, service_http = free_ports(3)
        text = (
            f'[service]\njournal = "{journal}"\nhttp = "127.0.0.1:{service_http}"\n'
            f'[bus]\nalerts = "{alerts}"\nquery = "{query}"\nplaintext = true\n'
            f'[console]\nlisten = "127.0.0.1:{port}"\nhttp = "127.0.0.1:{http_port}"\nplain_http = true\n'
            f'users = "{Path(folder) / "users.db"}"\n'
            f'timezone = "Europe/Amsterdam"\n{lanes}'
        )
        (Path(folder) / "bench.toml").write_text(text)
        store = UserStore(users_path(config_module.parse(text, "bench.toml")))
        store.add("olga", "operator", PASSWORD)
        store.close()
        console = subprocess.Popen(
            [str(Path(sys.executable).parent / "lanewatch"), "console", "--config", str(Path(folder) / "bench.toml")]
        )
        deadline = time.monotonic() + 600
        while not answers(port):
            if console.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the console did not start (exit status {console.poll()})")
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        newest = START + timedelta(seconds=0.2 * args.decisions)
        last_day = newest.astimezone(zoneinfo.ZoneInfo("Europe/Amsterdam")).date().isoformat()
        deep = args.decisions - 15 * 1000
        pages = {
            "newest page": "/decisions",
            "one lane": "/decisions?lane=lane7",
            "awaiting adjudication": "/decisions?state=awaiting",
            "one local day": f"/decisions?from={last_day}&to={last_day}",
            "lane, ALARM, a day": f"/decisions?lane=lane33&verdict=ALARM&from={last_day}&to={last_day}",
            **{name: f"/decisions?q={text}" for name, text in SEARCHES.items()},
            "lane, notes: papers": "/decisions?lane=lane7&q=papers",
            "1000 pages deep": f"/decisions?before={deep}",
        }
        searches: dict[str, dict[str, tuple[float, ...]]] = {}
        stop = threading.Event()
        stream = Stream()
        results: dict[str, dict[str, tuple[float, float, int]]] = {}
        with httpx.Client(base_url=url, timeout=60) as http:
            # the socket listens before the console has loaded the wall from the journal
            login = http.get("/login", timeout=max(1.0, deadline - time.monotonic()))
            token = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
            store = Adjudications(journal)  # the console's queries, for the search baseline (now it has started)
            conn = sqlite3.connect(journal)
            for pragma in READ_PRAGMAS:
                conn.execute(f"PRAGMA {pragma}")
            conn.execute("CREATE INDEX IF NOT EXISTS adjudications_notes ON adjudications (notes, seq)")
            http.post("/login", data={"name": "olga", "password": PASSWORD, "csrf": token})
            reader = threading.Thread(target=follow_stream, args=(url, dict(http.cookies), stream, stop), daemon=True)
            reader.start()
            for page_url in pages.values():  # one untimed pass: templates compiled, the pages' rows in the page cache
                http.get(page_url)
            for phase in ("quiet", "live"):
                if phase == "live":
                    pipe.send("run")
                    time.sleep(2.0)  # the rate is reached
                t0 = time.monotonic()
                results[phase] = {name: timed(http, page, args.requests) for name, page in pages.items()}
                searches[phase] = search_baseline(store, conn, args.requests)
                if phase == "live":
                    timed_s = time.monotonic() - t0
                    pipe.send("pause")
                    journaled = set(pipe.recv())
                    wait_until = time.monotonic() + 30  # the console follows within its resync (1 s)
                    while not journaled <= stream.decisions and not stream.error and time.monotonic() < wait_until:
                        time.sleep(0.2)
                    streamed = len(journaled & stream.decisions)
                    print(
                        f"live: {len(journaled):,} decisions journaled, fsynced and published ({LANES} lanes x "
                        f"{args.live_hz:g} Hz) while the pages were timed for {timed_s:.0f} s; the browser's event "
                        f"stream received {streamed:,} of them ({stream.walls:,} wall updates)"
                    )
        stop.set()
        reader.join(30)  # its next event or keep-alive ends it: an open stream would hold the console's shutdown
        stream_failed = not journaled or streamed < len(journaled)
        if stream_failed:
            print(
                f"FAILED: the event stream received {streamed:,} of the {len(journaled):,} decisions published while "
                f"live{f' ({stream.error})' if stream.error else ''}: the live figures are not of a console following "
                f"the bus"
            )
        console.send_signal(signal.SIGINT)
        console.wait(60)
        pipe.send("stop")
        service.join(30)
        notes = {name: conn.execute(
            "SELECT count(DISTINCT seq), count(*) FROM adjudications WHERE notes LIKE ?", (f"%{text}%",)
        ).fetchone() for name, text in SEARCHES.items()}  # fmt: skip
        conn.execute("DROP INDEX adjudications_notes")
        store.close()
        print(f"{'page':24} {'quiet p50':>9} {'p99 ms':>7} {'live p50':>9} {'p99 ms':>7} {'rows':>5}")
        worst = 0.0
        for name in pages:
            q50, q99, rows = results["quiet"][name]
            l50, l99, _ = results["live"][name]
            worst = max(worst, q99, l99)
            print(f"{name:24} {q50:9.1f} {q99:7.1f} {l50:9.1f} {l99:7.1f} {rows:5d}")
        print("baseline, searches in notes, query alone: LIKE (the earlier search) against the full-text index")
        print(f"{'search':16} {'matches':>8} {'':6} {'quiet p50':>9} {'p99 ms':>7} {'live p50':>9} {'p99 ms':>7}")
        for name in SEARCHES:
            decisions, acts = notes[name]
            quiet, live = searches["quiet"][name], searches["live"][name]
            for i, kind in enumerate(("LIKE", "FTS5")):
                print(
                    f"{name if i == 0 else '':16} {f'{decisions:,}' if i == 0 else '':>8} {kind:6} "
                    f"{quiet[2 * i]:9.2f} {quiet[2 * i + 1]:7.2f} {live[2 * i]:9.2f} {live[2 * i + 1]:7.2f}"
                )
            print(
                f"{'':16} {'':8} {'ratio':6} {quiet[0] / quiet[2]:8.1f}x {quiet[1] / quiet[3]:6.1f}x "
                f"{live[0] / live[2]:8.1f}x {live[1] / live[3]:6.1f}x   ({acts:,} notes match)"
            )
        offset = args.decisions - deep
        t0 = time.perf_counter()
        for _ in range(args.requests):
            conn.execute(
                "SELECT seq, body FROM decisions ORDER BY seq DESC LIMIT 15 OFFSET ?", (offset,)
            ).fetchall()  # fmt: skip
        baseline_ms = (time.perf_counter() - t0) * 1000 / args.requests
        t0 = time.perf_counter()
        for _ in range(args.requests):
            conn.execute("SELECT seq, body FROM decisions WHERE seq < ? ORDER BY seq DESC LIMIT 15", (deep,)).fetchall()
        keyset_ms = (time.perf_counter() - t0) * 1000 / args.requests
        conn.close()
        print(
            f"baseline, 1000 pages deep: LIMIT/OFFSET {baseline_ms:.2f} ms, keyset (the console's) {keyset_ms:.2f} ms "
            f"per query: {baseline_ms / keyset_ms:.0f}x"
        )
        print(f"worst p99 {worst:.1f} ms: {'meets' if worst < 100 else 'MISSES'} the 100 ms target")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
        return 1 if worst >= 100 or stream_failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
