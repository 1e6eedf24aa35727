"""Test support shared by several test files: a real service in a thread, and a real ingest bus."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import zmq
from prometheus_client import CollectorRegistry

from lanewatch.edge.bus import ingest
from lanewatch.edge.bus.driver import RecordPublisher
from lanewatch.edge.bus.records import Record, decode
from lanewatch.edge.commands.demo import free_ports
from lanewatch.edge.config import Config
from lanewatch.edge.decisions.decision import Decision
from lanewatch.edge.ops.metrics import DriverMetrics
from lanewatch.edge.service import Service

TIMEOUT_S = 5.0


def typed(decision: dict[str, Any]) -> Decision:
    """A decision as journaled (a dict with its seq) as the typed :class:`Decision` its readers get."""
    return msgspec.convert(decision, Decision)


def free_port() -> int:
    """A free TCP port on loopback."""
    return free_ports(1)[0]


def flood_replies(sock: zmq.Socket, request: bytes, count: int, wait_s: float) -> list[dict[str, Any]]:
    """Send ``request`` ``count`` times at once on the query socket ``sock`` and read every reply (JSON), each within
    ``wait_s`` (failing otherwise)."""
    for _ in range(count):
        sock.send(request)
    replies = []
    while len(replies) < count:
        assert sock.poll(int(wait_s * 1000)), f"{len(replies)} replies of {count}"
        replies.append(json.loads(sock.recv()))
    return replies


def service_toml(journal: Path) -> str:
    """The ``[service]`` and ``[bus]`` tables of a plaintext loopback service journaling to ``journal``, on free
    ports; a test appends its own ``[detection]``, ``[fusion]``, ``[model]`` and ``[[lanes]]`` tables."""
    ingest, alerts, query, http = free_ports(4)
    return f"""
        [service]
        journal = "{journal}"
        http = "127.0.0.1:{http}"
        [bus]
        ingest = "tcp://127.0.0.1:{ingest}"
        alerts = "tcp://127.0.0.1:{alerts}"
        query = "tcp://127.0.0.1:{query}"
        plaintext = true
"""


class IngestBus:
    """The service's SUB bound on loopback and a driver's publisher connected to it, subscription settled."""

    def __init__(self, lane: str, source: str, registry: CollectorRegistry) -> None:
        self.ctx = zmq.Context()
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.sub = ingest.service_ingest(self.ctx, self.endpoint)
        self.pub = ingest.driver_publisher(self.ctx, self.endpoint)
        self.pub.setsockopt(zmq.LINGER, 0)
        deadline = time.monotonic() + TIMEOUT_S
        while not ingest.wait_for_subscriber(self.pub, 0.02):  # a bound SUB attaches a peer only when used
            assert self.sub.poll(0) == 0 and time.monotonic() < deadline, "the SUB never subscribed"
        self.publisher = RecordPublisher(self.pub, lane, source, DriverMetrics(registry))
        self.records: list[Record] = []

    def collect(self, done: Callable[[list[Record]], bool], timeout_s: float = TIMEOUT_S) -> list[Record]:
        """Receive records (into ``self.records``) until ``done(self.records)``; fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not done(self.records):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out with {Counter(r.kind.value for r in self.records)}"
            if self.sub.poll(int(min(remaining, 0.1) * 1000)):
                self.records.append(decode(self.sub.recv_multipart()))
        return self.records

    def drain(self, duration_s: float) -> list[Record]:
        """Receive whatever arrives within ``duration_s``."""
        deadline = time.monotonic() + duration_s
        return self.collect(lambda _: time.monotonic() >= deadline, duration_s + TIMEOUT_S)

    def close(self) -> None:
        self.pub.close(0)
        self.sub.close(0)
        self.ctx.term()


class Running:
    """A service in a thread of this process, with its own metrics registry."""

    def __init__(self, config: Config) -> None:
        self.registry = CollectorRegistry()
        self.service = Service(config, self.registry)
        self.service.start()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.service.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def value(self, name: str, **labels: str) -> float:
        """A sample of the service's metrics (0 when absent)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.service.close()
