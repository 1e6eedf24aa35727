"""systemd readiness and watchdog notifications (``sd_notify``), without libsystemd.

systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or an abstract socket name written
with a leading ``@``) to a ``Type=notify`` service; the service sends newline-separated
``KEY=value`` datagrams there. With ``WatchdogSec=`` set, systemd also passes
``WATCHDOG_USEC`` (the interval, µs) and ``WATCHDOG_PID`` (the process meant to ping) and
restarts the service when no ``WATCHDOG=1`` arrives within the interval.

The service calls :meth:`Notifier.maybe_ping` once per iteration of its event loop, so
systemd is fed only while that loop really runs: a loop that hangs stops the pings and
systemd restarts the service. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from lanewatch.edge.ops.metrics import ServiceMetrics

log = logging.getLogger(__name__)


def _socket_address(value: str) -> str | bytes:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value (``@name`` is the abstract namespace)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def _watchdog_interval_s(environ: Mapping[str, str]) -> float | None:
    """The watchdog interval (s) systemd asks this process to honour, or None."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        interval_s = int(usec) / 1e6
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer number of microseconds", usec)
        return None
    return interval_s if interval_s > 0 else None


class Notifier:
    """Sends state changes and watchdog keep-alives to systemd.

    ``socket_path`` is the ``NOTIFY_SOCKET`` value (None when not under systemd);
    ``watchdog_interval_s`` the interval (s) systemd expects pings within (None: no watchdog).
    ``metrics`` (optional) counts every keep-alive sent in ``lanewatch_watchdog_pings_total``.
    """

    def __init__(
        self,
        socket_path: str | None,
        watchdog_interval_s: float | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.socket_path = socket_path or None
        self.watchdog_interval_s = watchdog_interval_s if self.socket_path else None
        self.metrics = metrics
        self.last_ping_mono_s: float | None = None
        self._sock: socket.socket | None = None
        if self.socket_path and not self.socket_path.startswith(("/", "@")):
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract name; not notifying", self.socket_path)
            self.socket_path = None
            self.watchdog_interval_s = None

    @classmethod
    def from_env(cls, metrics: ServiceMetrics | None = None, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier configured from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"), _watchdog_interval_s(env), metrics)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notification socket."""
        return self.socket_path is not None

    @property
    def watchdog_enabled(self) -> bool:
        """True when systemd expects watchdog keep-alives from this process."""
        return self.watchdog_interval_s is not None

    def notify(self, **fields: Any) -> bool:
        """Send ``KEY=value`` fields (keys upper-cased) in one datagram; False when not sent."""
        if self.socket_path is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, _socket_address(self.socket_path))
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s (message %r)", self.socket_path, exc, message)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """Tell systemd start-up is complete (``READY=1``), with an optional status line."""
        return self.notify(ready=1, status=status) if status else self.notify(ready=1)

    def status(self, text: str) -> bool:
        """Set the one-line status ``systemctl status`` shows."""
        return self.notify(status=text)

    def stopping(self) -> bool:
        """Tell systemd a clean shutdown has begun (``STOPPING=1``)."""
        return self.notify(stopping=1)

    def watchdog(self, now_mono_s: float | None = None) -> bool:
        """Send one keep-alive (``WATCHDOG=1``) now and count it."""
        if not self.notify(watchdog=1):
            return False
        self.last_ping_mono_s = time.monotonic() if now_mono_s is None else now_mono_s
        if self.metrics is not None:
            self.metrics.watchdog_pings.inc()
        return True

    def maybe_ping(self, now_mono_s: float) -> bool:
        """Ping when half the watchdog interval has passed since the last ping; call once per loop iteration.

        ``now_mono_s`` is ``time.monotonic()`` (s). Returns True when a keep-alive was sent.
        """
        if self.watchdog_interval_s is None:
            return False
        last = self.last_ping_mono_s
        if last is not None and now_mono_s - last < self.watchdog_interval_s / 2:
            return False
        return self.watchdog(now_mono_s)

    def health(self, now_mono_s: float | None = None) -> dict[str, Any]:
        """The ``watchdog`` part of the service's ``/healthz``.

        ``enabled``: systemd expects keep-alives; ``last_ping_age_s``: age (s) of the last one
        sent (None before the first); ``fed``: the last keep-alive is within the watchdog
        interval (always true without a watchdog). ``now_mono_s`` defaults to ``time.monotonic()``.
        """
        now = time.monotonic() if now_mono_s is None else now_mono_s
        last = self.last_ping_mono_s
        age = None if last is None else now - last
        fed = self.watchdog_interval_s is None or (age is not None and age <= self.watchdog_interval_s)
        return {"enabled": self.watchdog_enabled, "last_ping_age_s": age, "fed": fed}

    def close(self) -> None:
        """Close the notification socket (the notifier reopens it if used again)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
