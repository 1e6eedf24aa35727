"""sd_notify over real AF_UNIX datagram sockets, filesystem and abstract, as systemd listens."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from lanewatch.edge.ops.metrics import ServiceMetrics
from lanewatch.edge.ops.sdnotify import Notifier


def _listener(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


def _received(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``sock``, without blocking."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(2.0)


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = _listener(path)
    yield path, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"lanewatch-test-{uuid.uuid4().hex}"
    sock = _listener(b"\0" + name.encode())
    yield "@" + name, sock
    sock.close()


def test_outside_systemd_every_call_is_a_noop() -> None:
    notifier = Notifier.from_env(environ={})
    assert not notifier.enabled
    assert not notifier.watchdog_enabled
    assert notifier.ready("up") is False
    assert notifier.maybe_ping(123.0) is False
    assert notifier.health(123.0) == {"enabled": False, "last_ping_age_s": None, "fed": True}


def test_watchdog_not_fed_before_the_first_ping(path_socket: tuple[str, socket.socket]) -> None:
    notifier = Notifier.from_env(environ={"NOTIFY_SOCKET": path_socket[0], "WATCHDOG_USEC": "1000000"})
    report = notifier.health()
    assert report == {"enabled": True, "last_ping_age_s": None, "fed": False}


def test_watchdog_without_notify_socket_is_disabled() -> None:
    notifier = Notifier.from_env(environ={"WATCHDOG_USEC": "1000000"})
    assert not notifier.watchdog_enabled


@pytest.mark.parametrize("which", ["path_socket", "abstract_socket"])
def test_state_messages_reach_the_socket(which: str, request: pytest.FixtureRequest) -> None:
    address, listener = request.getfixturevalue(which)
    notifier = Notifier.from_env(environ={"NOTIFY_SOCKET": address})
    try:
        assert notifier.enabled
        assert notifier.ready("2 lanes, journal seq 7")
        assert listener.recv(4096) == b"READY=1\nSTATUS=2 lanes, journal seq 7"
        assert notifier.status("lane1 occupied")
        assert listener.recv(4096) == b"STATUS=lane1 occupied"
        assert notifier.stopping()
        assert listener.recv(4096) == b"STOPPING=1"
        assert notifier.ready()
        assert listener.recv(4096) == b"READY=1"
    finally:
        notifier.close()


@pytest.mark.parametrize(
    ("environ", "expected_s"),
    [
        ({"WATCHDOG_USEC": "10000000"}, 10.0),
        ({"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": str(os.getpid())}, 2.5),
        ({"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "ten seconds"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_from_environment(
    environ: dict[str, str], expected_s: float | None, path_socket: tuple[str, socket.socket]
) -> None:
    notifier = Notifier.from_env(environ={"NOTIFY_SOCKET": path_socket[0], **environ})
    assert notifier.watchdog_interval_s == expected_s
    assert notifier.watchdog_enabled == (expected_s is not None)


def test_loop_pings_at_half_the_interval_and_counts(abstract_socket: tuple[str, socket.socket]) -> None:
    address, listener = abstract_socket
    metrics = ServiceMetrics(CollectorRegistry())
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_env(metrics, environ=env)
    try:
        # Loop iterations at these monotonic times (s); the interval is 4 s, so pings go at most every 2 s.
        sent = [t for t in (100.0, 100.5, 101.9, 102.0, 103.0, 104.1, 110.0) if notifier.maybe_ping(t)]
        assert sent == [100.0, 102.0, 104.1, 110.0]
        assert _received(listener) == [b"WATCHDOG=1"] * 4
        assert metrics.registry.get_sample_value("lanewatch_watchdog_pings_total") == 4
        assert notifier.health(111.5) == {"enabled": True, "last_ping_age_s": 1.5, "fed": True}
        # A loop that stops calling maybe_ping starves the watchdog: past one interval it is no longer fed.
        assert notifier.health(114.5) == {"enabled": True, "last_ping_age_s": 4.5, "fed": False}
    finally:
        notifier.close()


def test_vanished_socket_is_reported_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "notify")
    listener = _listener(path)
    metrics = ServiceMetrics(CollectorRegistry())
    notifier = Notifier.from_env(metrics, environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    try:
        assert notifier.maybe_ping(1.0)
        listener.close()
        os.unlink(path)
        assert notifier.maybe_ping(2.0) is False
        assert "sd_notify" in caplog.text and path in caplog.text
        assert metrics.registry.get_sample_value("lanewatch_watchdog_pings_total") == 1
        # A failed ping leaves the last good one as the reference, so the next iteration tries again.
        assert notifier.health(2.0)["last_ping_age_s"] == 1.0
    finally:
        notifier.close()


def test_socket_value_that_is_not_an_address_disables_notification(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_env(environ={"NOTIFY_SOCKET": "vsock:2:1234", "WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and not notifier.watchdog_enabled
    assert notifier.ready() is False
    assert "vsock:2:1234" in caplog.text
