"""Benchmark: a decision journaled -> on an open console's event stream, with 50 lanes deciding.

    python -m benchmarks.console_latency [--lanes 50] [--rate-hz 5] [--seconds 20] [--clients 3]

One thread plays the service: it journals decisions (fsynced, as the service does) for ``--lanes`` lanes,
each deciding ``--rate-hz`` times a second (far above real traffic: a stress), and publishes each on a
real alert bus (ZeroMQ XPUB and query ROUTER, plaintext on loopback). The console runs under uvicorn with
its alert thread following that bus; ``--clients`` browsers' worth of server-sent event streams read from
it over HTTP. Latency is from the moment :meth:`Journal.append` returned to the moment a stream delivered
the decision's event; p50 and p99 per run, target p99 <= 250 ms. Baseline in the same run: the alert bus
alone (a plain AlertSubscriber, no console), so the console's own share shows as the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import zmq

from lanewatch.edge import config as config_module
from lanewatch.edge.console.app import create_app
from lanewatch.edge.console.users import UserStore, users_path
from lanewatch.edge.decisions.alertbus import AlertBus
from lanewatch.edge.decisions.decision import SCHEMA_VERSION, Decision
from lanewatch.edge.decisions.journal import Journal
from lanewatch.edge.decisions.subscriber import AlertSubscriber

PASSWORD = "benchmark password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service(threading.Thread):
    """Journals and publishes ``rate`` decisions a second per lane until stopped; ``appended[seq]`` = monotonic
    time the append returned. ``payload`` (e.g. a real decision's profile and X-ray section) goes in every
    decision. Each run's occupancy ids are its own, so that on a journal kept from an earlier run every decision is
    journaled anew (the journal answers an occupancy id it holds with the decision it stored, which the console
    rightly takes for one it has)."""

    def __init__(self, journal_path: Path, lanes: int, rate_hz: float, payload: dict[str, Any] | None = None) -> None:
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.journal = Journal(journal_path)
        self.bus = AlertBus(self.ctx, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", self.journal)
        self.lanes, self.rate_hz = lanes, rate_hz
        self.payload = payload or {}
        self.appended: dict[int, float] = {}
        self.run_id = secrets.token_hex(4)
        """In every occupancy id of this run."""
        self.running = threading.Event()
        self.stopping = threading.Event()
        self.started_s = 0.0
        """When the run last started (monotonic s)."""

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.bus.pub, zmq.POLLIN)
        poller.register(self.bus.router, zmq.POLLIN)
        interval = 1.0 / (self.lanes * self.rate_hz)
        next_at = time.monotonic()
        n = 0
        while not self.stopping.is_set():
            wait_ms = max(0, int((next_at - time.monotonic()) * 1000)) if self.running.is_set() else 50
            ready = dict(poller.poll(wait_ms))  # paused: waits for the bus, not a busy loop
            if self.bus.pub in ready:
                self.bus.handle_pub()
            if self.bus.router in ready:
                self.bus.handle_query()
            if not self.running.is_set():
                next_at = self.started_s = time.monotonic()  # the rate starts with the run, no backlog to catch up
            elif time.monotonic() >= next_at:
                n += 1
                now = time.time()
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
                lane = f"lane{n % self.lanes + 1}"
                verdict = "ALARM" if n % 40 == 0 else "CLEAR"
                alarms = [{"reason": "gamma", "alarm": True, "statistic": 7.0, "threshold": 4.8, "location_m": 5.0}]
                alarms = alarms if n % 40 == 0 else []
                now_ns = time.time_ns()
                stored = self.journal.append(
                    {"schema_version": SCHEMA_VERSION, "lane": lane, "occupancy_id": f"{lane}-{self.run_id}-{n}",
                     "device_occupancy": n, "start": stamp, "end": stamp, "start_ns": now_ns, "end_ns": now_ns,
                     "verdict": verdict, "alarms": alarms, "baseline_verdict": verdict, "baseline": None,
                     "end_reason": "gx", "incomplete": [], "samples": 25, "device_alarm": False, "tamper": False,
                     "link_interruptions": 0, "speed_kmh": 8.0, "background": None, "profile": {}} | self.payload
                )  # fmt: skip
                self.appended[stored["seq"]] = time.monotonic()
                self.bus.publish(stored)
                next_at += interval

    def close(self) -> None:
        self.stopping.set()
        self.join(10)
        self.bus.close()
        self.journal.close()
        self.ctx.term()


def read_stream(url: str, cookies: Any, received: dict[int, float], stop: threading.Event) -> None:
    with (
        httpx.Client(base_url=url, cookies=cookies, timeout=30) as http,
        http.stream("GET", "/events?since=0") as stream,
    ):
        name = ""
        for line in stream.iter_lines():
            if stop.is_set():
                return
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("id: ") and name == "decision":
                received.setdefault(int(line[4:]), time.monotonic())


def percentiles(latencies: list[float]) -> tuple[float, float]:
    latencies = sorted(latencies)
    return statistics.median(latencies), latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lanes", type=int, default=50)
    parser.add_argument("--rate-hz", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work on the machine widens the p99)")
    with tempfile.TemporaryDirectory() as folder:
        service = Service(Path(folder) / "journal.db", args.lanes, args.rate_hz)
        service.start()
        lanes = "".join(f'[[lanes]]\nid = "lane{i + 1}"\n' for i in range(args.lanes))
        port = free_port()
        config = config_module.parse(
            f'[service]\njournal = "{folder}/journal.db"\nhttp = "127.0.0.1:{free_port()}"\n'
            f'[bus]\nalerts = "{service.bus.alerts_endpoint}"\nquery = "{service.bus.query_endpoint}"\n'
            "plaintext = true\n"
            f'[console]\nlisten = "127.0.0.1:{port}"\nplain_http = true\n{lanes}',
            "bench.toml",
        )
        store = UserStore(users_path(config))
        store.add("olga", "operator", PASSWORD)
        store.close()
        server = uvicorn.Server(uvicorn.Config(create_app(config, secure=False), port=port, log_level="error"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url) as http:
            token = re.search(r'name="csrf" value="([^"]+)"', http.get("/login").text).group(1)
            http.post("/login", data={"name": "olga", "password": PASSWORD, "csrf": token})
            cookies = dict(http.cookies)
        stop = threading.Event()
        streams = [{} for _ in range(args.clients)]
        readers = [threading.Thread(target=read_stream, args=(url, cookies, got, stop), daemon=True) for got in streams]
        for reader in readers:
            reader.start()
        ctx = zmq.Context()
        bare: dict[int, float] = {}

        def follow() -> None:
            with AlertSubscriber(ctx, service.bus.alerts_endpoint, service.bus.query_endpoint, 0) as sub:
                for item in sub.decisions(follow=True, timeout_s=0.2):
                    if stop.is_set():
                        return
                    if isinstance(item, Decision):
                        bare.setdefault(item.seq, time.monotonic())

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        time.sleep(2.0)  # subscriptions settle
        service.running.set()
        time.sleep(args.seconds)
        service.running.clear()
        time.sleep(2.0)  # the last decisions arrive
        stop.set()
        follower.join(5)
        server.should_exit = True
        service.close()
        ctx.destroy(linger=0)
        sent = dict(service.appended)
        print(
            f"{len(sent)} decisions in {args.seconds:g} s ({args.lanes} lanes x {args.rate_hz:g} Hz), "
            f"{args.clients} event streams"
        )
        base = [bare[s] - t for s, t in sent.items() if s in bare]
        b50, b99 = percentiles(base)
        print(f"alert bus alone (baseline): p50 {b50 * 1000:.1f} ms, p99 {b99 * 1000:.1f} ms, {len(base)} received")
        worst = 0.0
        for i, got in enumerate(streams):
            latencies = [got[s] - t for s, t in sent.items() if s in got]
            missing = len(sent) - len(latencies)
            p50, p99 = percentiles(latencies) if latencies else (float("nan"), float("nan"))
            worst = max(worst, p99)
            print(f"stream {i + 1}: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, missing {missing}")
        print(json.dumps({"target_p99_ms": 250, "worst_p99_ms": round(worst * 1000, 1)}))
        return 0 if worst <= 0.25 else 1


if __name__ == "__main__":
    raise SystemExit(main())
