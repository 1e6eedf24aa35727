"""Hostile and faulty clients against a service with keys, as real processes on real sockets.

One site for the module: the service (``lanewatch run``), a simulated portal and its RPM driver on
lane1, and two lanes without a driver (lane2 and lane3), all with the CURVE keys ``lanewatch keys
init`` makes. Each test attacks from this process (no key, a key not listed, a console key, the key
of another lane, the real driver's key sending a forged lane, a poisoned ``seq``, future stamps, the
messages that used to crash the service) and checks that the attempt is counted, that nothing it
sent was decided, that the real lane keeps deciding and that the service is still the same process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from support import flood_replies

from lanewatch.edge.bus import ingest
from lanewatch.edge.bus.driver import RecordPublisher
from lanewatch.edge.bus.records import Kind, Record
from lanewatch.edge.bus.security import Keys
from lanewatch.edge.commands.demo import free_ports
from lanewatch.edge.config import Config, load
from lanewatch.edge.decisions.subscriber import JournalClient
from lanewatch.edge.ops import status
from lanewatch.edge.ops.keyfiles import KeyInfo
from lanewatch.edge.ops.metrics import DriverMetrics

pytestmark = pytest.mark.slow

WAIT_S = 120.0
"""Longest wait (s) for any condition: the first start of the service compiles kernels."""


@dataclass
class Site:
    config: Config
    root: Path
    service: subprocess.Popen[bytes]
    procs: list[subprocess.Popen[bytes]]
    ctx: zmq.Context

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://{self.config.service.http}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(
            v
            for (n, lbls), v in self.metrics().items()
            if n == name and all(dict(lbls).get(k) == want for k, want in labels.items())
        )

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://{self.config.service.http}/healthz", timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def keys(self, name: str) -> Keys:
        keys = Keys.load(self.config.bus, name)
        assert keys is not None
        return keys

    def decided(self, lane: str) -> float:
        return self.value("lanewatch_decisions_total", lane=lane)

    def journaled(self, lane: str) -> list[dict[str, Any]]:
        client = JournalClient(self.ctx, self.config.bus.query, keys=self.keys("console"))
        try:
            return [json.loads(bytes(raw)) for raw in client.query(timeout_s=10, lane=lane).records or []]
        finally:
            client.close()


def wait_until(what: str, check: Callable[[], bool], site: Site | None = None, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if site is not None:
            assert site.service.poll() is None, f"the service exited ({site.service.returncode}) waiting for {what}"
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("hostile")
    sim, http, ingest_port, alerts, query = free_ports(5)
    path = root / "lanewatch.toml"
    path.write_text(
        f"""
[service]
journal = "{root / "journal.db"}"
http = "127.0.0.1:{http}"
[bus]
ingest = "tcp://127.0.0.1:{ingest_port}"
alerts = "tcp://127.0.0.1:{alerts}"
query = "tcp://127.0.0.1:{query}"
keys = "{root / "keys"}"
[[lanes]]
id = "lane1"
rpm = "socket://127.0.0.1:{sim}"
[[lanes]]
id = "lane2"
[[lanes]]
id = "lane3"
"""
    )
    config = load(path)
    me = [sys.executable, "-m", "lanewatch.edge"]
    subprocess.run([*me, "keys", "--config", str(path), "init"], check=True, capture_output=True)
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *argv: str) -> subprocess.Popen[bytes]:
        with (root / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen([*me, *argv], stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    ctx = zmq.Context()
    try:
        start("sim", "sim", "lane", "--port", str(sim), "--speedup", "10", "--gap", "2", "--seed", "5")
        service = start("service", "run", "--config", str(path))
        start("driver", "driver", "rpm", "--config", str(path), "--lane", "lane1", "--wait-service", "120")
        s = Site(config, root, service, procs, ctx)
        wait_until("the first decision of lane1", lambda: s.decided("lane1") >= 1, s)
        yield s
        assert service.poll() is None, "the service stayed up through every attack"
        assert s.journaled("lane2") == [], "no forged decision was journaled"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        ctx.destroy(linger=0)


def publisher(site: Site, keys: Keys | None, lane: str, source: str = "rpm") -> tuple[zmq.Socket, RecordPublisher]:
    sock = ingest.driver_publisher(site.ctx, site.config.bus.ingest, keys)
    sock.setsockopt(zmq.LINGER, 0)
    return sock, RecordPublisher(sock, lane, source, DriverMetrics(CollectorRegistry()))


def forge_occupancy(pub: RecordPublisher) -> None:
    """Background, then a strong gamma source passing, then the end of the occupancy: an ALARM if decided."""
    quiet = np.full((4, 1), 200, dtype=np.uint32)
    for _ in range(5):
        pub.emit(Kind.GAMMA_BACKGROUND, dt_s=1.0, counts=quiet)
        pub.emit(Kind.NEUTRON_BACKGROUND, dt_s=1.0, counts=np.full((4, 1), 1, dtype=np.uint32))
    for i in range(25):
        hot = quiet * (1 + 10 * np.exp(-(((i - 12) / 3) ** 2)))
        pub.emit(Kind.GAMMA_SCAN, dt_s=0.2, counts=(hot / 5).astype(np.uint32))
    pub.emit(Kind.OCCUPANCY_END, values={"device_occupancy": 1, "neutron_background_cps": 1.0})


def keeps_deciding(site: Site, since: float) -> None:
    wait_until("lane1 to decide another vehicle", lambda: site.decided("lane1") > since, site)


def refused(site: Site, keys: Keys | None, endpoint: str = "ingest") -> None:
    """A publisher with ``keys`` gets no subscription, the handshake is counted, and lane2 sees nothing of it."""
    before = site.value("lanewatch_bus_auth_failures_total", endpoint=endpoint)
    sock, pub = publisher(site, keys, "lane2")
    try:
        assert not ingest.wait_for_subscriber(sock, 2.0), "a refused client gets no subscription"
        forge_occupancy(pub)
        wait_until(
            "the refused handshake to be counted",
            lambda: site.value("lanewatch_bus_auth_failures_total", endpoint=endpoint) > before,
            site,
        )
    finally:
        sock.close(0)


def test_a_client_without_a_key_is_refused(site: Site) -> None:
    decided = site.decided("lane1")
    refused(site, None)
    keeps_deciding(site, decided)


def test_a_key_the_service_does_not_list_is_refused(site: Site) -> None:
    public, secret = zmq.curve_keypair()
    own = KeyInfo("stranger", "driver", public, ("lane2",), "rpm")
    refused(site, Keys(own=own, secret=secret, service=site.keys("console").service, clients={}))


def test_a_console_key_cannot_publish(site: Site) -> None:
    refused(site, site.keys("console"))


def test_a_key_of_another_lane_cannot_publish_for_this_one(site: Site) -> None:
    before = site.value("lanewatch_bus_unauthorized_records_total", key="rpm-lane2")
    records = site.value("lanewatch_bus_records_total", lane="lane1")
    decided = site.decided("lane1")
    sock, pub = publisher(site, site.keys("rpm-lane2"), "lane1")
    try:
        assert ingest.wait_for_subscriber(sock, 10.0), "the key is admitted: it is lane2's driver key"
        forge_occupancy(pub)
        wait_until(
            "the forged records to be counted",
            lambda: site.value("lanewatch_bus_unauthorized_records_total", key="rpm-lane2") >= before + 36,
            site,
        )
    finally:
        sock.close(0)
    assert site.value("lanewatch_bus_records_total", lane="lane1", source="rpm") >= records
    keeps_deciding(site, decided)


def test_a_portal_key_cannot_publish_as_the_lanes_xray_driver(site: Site) -> None:
    """A key is bound to its source too: lane1's portal key sending X-ray records for lane1 is refused."""
    before = site.value("lanewatch_bus_unauthorized_records_total", key="rpm-lane1")
    sock, pub = publisher(site, site.keys("rpm-lane1"), "lane1", source="xray")
    try:
        assert ingest.wait_for_subscriber(sock, 10.0)
        pub.emit(Kind.XRAY_SCAN_START, values={"scan_id": 1, "energies": 1, "pixels": 8})
        pub.emit(Kind.XRAY_SCAN_END, values={"scan_id": 1, "lines": 0, "complete": True})
        wait_until(
            "the X-ray records to be refused",
            lambda: site.value("lanewatch_bus_unauthorized_records_total", key="rpm-lane1") >= before + 2,
            site,
        )
    finally:
        sock.close(0)
    assert site.value("lanewatch_bus_records_total", lane="lane1", source="xray") == 0


def test_a_driver_key_cannot_forge_another_lane(site: Site) -> None:
    """The real lane1 driver's key, used to send a whole occupancy for lane2: counted, never decided; the same
    records from lane3's own key are decided, so the check can fail."""
    before = site.value("lanewatch_bus_unauthorized_records_total", key="rpm-lane1")
    sock, pub = publisher(site, site.keys("rpm-lane1"), "lane2")
    try:
        assert ingest.wait_for_subscriber(sock, 10.0)
        forge_occupancy(pub)
        wait_until(
            "the forged lane's records to be counted",
            lambda: site.value("lanewatch_bus_unauthorized_records_total", key="rpm-lane1") >= before + 36,
            site,
        )
    finally:
        sock.close(0)
    control, pub = publisher(site, site.keys("rpm-lane3"), "lane3")
    try:
        assert ingest.wait_for_subscriber(control, 10.0)
        forge_occupancy(pub)
        wait_until("lane3's own occupancy to be decided", lambda: site.decided("lane3") >= 1, site)
    finally:
        control.close(0)
    assert site.decided("lane2") == 0 and site.journaled("lane2") == []


def test_a_poisoned_seq_does_not_blind_the_lane(site: Site) -> None:
    """One record from the real key with seq 10**15: a source restart, and the real stream is not dropped."""
    stale = site.value("lanewatch_bus_stale_records_total", lane="lane1")
    restarts = site.value("lanewatch_bus_source_restarts_total", lane="lane1")
    decided = site.decided("lane1")
    _one_record_numbered(site, 10**15, restarts)
    keeps_deciding(site, decided)
    keeps_deciding(site, site.decided("lane1"))
    assert site.value("lanewatch_bus_stale_records_total", lane="lane1") == stale, "no real record dropped as stale"


def _one_record_numbered(site: Site, seq: int, restarts: float) -> None:
    """One record numbered ``seq`` with the real driver's key; waits until the service counted the restart of the
    numbering and the real driver's next record as another (``restarts``: the count before)."""
    sock, pub = publisher(site, site.keys("rpm-lane1"), "lane1")
    try:
        assert ingest.wait_for_subscriber(sock, 10.0)
        pub.seq = seq
        pub.emit(Kind.SETUP, values={"line": "SN2", "fields": []})
        wait_until(
            "the restarts to be counted",
            lambda: site.value("lanewatch_bus_source_restarts_total", lane="lane1") >= restarts + 2,
            site,
        )
    finally:
        sock.close(0)


def test_a_large_seq_from_a_valid_key_is_a_restart_not_records_missed(site: Site) -> None:
    """The real driver's key sends one record numbered 999,999 (under any fixed cap on a jump): the service
    cannot have missed that many records of the portal in the time since its last one, so it is a restart of the
    numbering and ``lanewatch_bus_records_missed_total`` does not take it."""
    missed = site.value("lanewatch_bus_records_missed_total", lane="lane1")
    restarts = site.value("lanewatch_bus_source_restarts_total", lane="lane1")
    decided = site.decided("lane1")
    _one_record_numbered(site, 999_999, restarts)
    keeps_deciding(site, decided)
    assert site.value("lanewatch_bus_records_missed_total", lane="lane1") - missed < 1000


def test_future_stamps_are_rejected_and_the_lane_says_why(site: Site) -> None:
    rejected = site.value("lanewatch_bus_rejected_records_total", lane="lane1", reason="clock-ahead")
    decided = site.decided("lane1")
    sock, pub = publisher(site, site.keys("rpm-lane1"), "lane1")
    try:
        assert ingest.wait_for_subscriber(sock, 10.0)
        tomorrow = time.time_ns() + 24 * 3600 * 10**9
        pub.emit(Kind.GAMMA_SCAN, t_wall_ns=tomorrow, dt_s=0.2, counts=np.full((4, 1), 50, dtype=np.uint32))
        pub.emit(Kind.OCCUPANCY_END, t_wall_ns=tomorrow, values={"device_occupancy": 9})
        wait_until(
            "the future records to be rejected",
            lambda: (
                site.value("lanewatch_bus_rejected_records_total", lane="lane1", reason="clock-ahead") >= rejected + 2
            ),
            site,
        )
        health = site.health()
        assert not health["ok"] and "ahead of the service clock" in health["lanes"]["lane1"]["rejected"]
        report = status.check(site.config, 5.0)
        assert any("records rejected" in p for p in report["lanes"]["lane1"]["problems"]), report
    finally:
        sock.close(0)
    keeps_deciding(site, decided)
    latest = site.journaled("lane1")[-1]
    assert latest["end_ns"] < time.time_ns() + 60 * 10**9, "nothing dated tomorrow was decided"


def _header(**fields: Any) -> dict[str, Any]:
    base = Record(Kind.GAMMA_SCAN, "lane1", "rpm", 1, time.time_ns(), time.monotonic_ns(), 0.2).encode()[1]
    return {**json.loads(bytes(base)), **fields}


CRASH_MESSAGES = {
    "nested 100,000 deep": [b"rpm/lane1", b"[" * 100_000],
    "seq Infinity": [b"rpm/lane1", json.dumps(_header(seq=float("inf"))).encode()],
    "shape 1e3098": [
        b"rpm/lane1",
        json.dumps(_header(arrays=[{"name": "counts", "dtype": "<u4", "shape": [1e3098, 1]}])).encode(),
        b"\0" * 4,
    ],
    "dtype ,<u4": [
        b"rpm/lane1",
        json.dumps(_header(arrays=[{"name": "counts", "dtype": ",<u4", "shape": [1, 1]}])).encode(),
        b"\0" * 4,
    ],
}


def test_messages_that_crashed_the_service_are_counted(site: Site) -> None:
    errors = site.value("lanewatch_bus_decode_errors_total")
    bugs = site.value("lanewatch_handler_errors_total")
    decided = site.decided("lane1")
    pid = site.health()["pid"]
    sock, _ = publisher(site, site.keys("rpm-lane1"), "lane1")
    try:
        assert ingest.wait_for_subscriber(sock, 10.0)
        for _ in range(5):  # five were enough to stop the service for good under StartLimitBurst=5
            for frames in CRASH_MESSAGES.values():
                sock.send_multipart(frames)
        wait_until(
            "every message to be counted as undecodable",
            lambda: site.value("lanewatch_bus_decode_errors_total") >= errors + 5 * len(CRASH_MESSAGES),
            site,
        )
    finally:
        sock.close(0)
    assert site.value("lanewatch_handler_errors_total") == bugs, "refused by the decoder, not caught as bugs"
    query = console_socket(site)
    try:
        query.send(b"[" * 100_000)
        assert query.poll(10_000), "the query endpoint answers a hostile request"
        assert json.loads(query.recv())["ok"] is False
    finally:
        query.close(0)
    assert site.health()["pid"] == pid == site.service.pid
    keeps_deciding(site, decided)


def console_socket(site: Site) -> zmq.Socket:
    """A DEALER on the query endpoint holding the site's console key (which every console of the site may hold)."""
    sock = site.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    keys = site.keys("console")
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = keys.service, keys.own.public, keys.secret
    sock.connect(site.config.bus.query)
    return sock


def test_a_client_flooding_with_the_console_key_does_not_starve_the_consoles_sharing_it(site: Site) -> None:
    """One connection holding the console key floods the query endpoint past its budget; another connection with
    the same key is still answered: the budget is each connection's under its key, not the key's."""
    flood, console = console_socket(site), console_socket(site)
    try:
        replies = flood_replies(flood, b'{"op": "last"}', 200, WAIT_S)
        assert any(r.get("error") == "rate limited" for r in replies), "the flooding connection is over its budget"
        console.send(b'{"op": "last"}')
        assert console.poll(int(WAIT_S * 1000))
        reply = json.loads(console.recv())
        assert reply["ok"] is True, f"the other console is answered, not limited: {reply}"
    finally:
        flood.close(0)
        console.close(0)


def test_a_client_without_a_key_cannot_query(site: Site) -> None:
    before = site.value("lanewatch_bus_auth_failures_total", endpoint="query")
    sock = site.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(site.config.bus.query)
    try:
        sock.send(b'{"op": "last"}')
        assert not sock.poll(2000), "no answer without a key"
        wait_until(
            "the refused query handshake to be counted",
            lambda: site.value("lanewatch_bus_auth_failures_total", endpoint="query") > before,
            site,
        )
    finally:
        sock.close(0)


def test_the_service_refuses_plaintext_off_loopback(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[bus]\nplaintext = true\ningest = "tcp://0.0.0.0:7600"\n[[lanes]]\nid = "a"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "lanewatch.edge", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert proc.returncode == 2 and "plaintext = true is allowed only on loopback" in proc.stderr
