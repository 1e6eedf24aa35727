"""CURVE authentication and encryption of every ZeroMQ socket of the bus.

The service's sockets (ingest, alerts, query) are CURVE servers; drivers and consoles are CURVE
clients that know the service's public key. The service admits a client only when its public key
is listed, and only on the endpoints its role may use: a ``driver`` key on ingest, a ``console``
key on alerts and query. A ZAP handler (:class:`Gatekeeper`, in a thread of the service) does the
admitting and names each connection by its key, so every message carries its sender's key name
as the ZeroMQ ``User-Id`` property and the service can check that a driver key publishes only for
the lanes and the source it was made for (:meth:`lanewatch.edge.ops.keyfiles.KeyInfo.may_publish`).

Keys are made by ``lanewatch keys`` (:mod:`lanewatch.edge.commands.keys`) and ``lanewatch install-units``
in the directory ``bus.keys`` (file layout and format: :mod:`lanewatch.edge.ops.keyfiles`).

``bus.plaintext = true`` turns all of this off; the configuration accepts it only when every
endpoint is on the loopback interface or an ``ipc://`` path (see :func:`lanewatch.edge.config.loopback`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import zmq
from prometheus_client import Counter
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from lanewatch.edge.config import BusConfig
from lanewatch.edge.ops.keyfiles import SERVICE, KeyFileError, KeyInfo, key_dirs, public_keys, read
from lanewatch.edge.ops.ratelog import RateLimitedLog

log = logging.getLogger("lanewatch.bus.security")

DOMAINS = {"ingest": "driver", "alerts": "console", "query": "console"}
"""The ZAP domain of each service endpoint, and the role of the keys it admits."""


@dataclass(frozen=True, slots=True)
class Keys:
    """What one process needs to take part in the bus: its own keypair and the service's public key."""

    own: KeyInfo
    secret: bytes
    service: bytes
    """The service's public key (Z85), which clients check the server against."""
    clients: dict[bytes, KeyInfo]
    """Admitted client keys by public key (Z85); filled for the service only."""

    @classmethod
    def load(cls, bus: BusConfig, name: str) -> Keys | None:
        """The keys of the process named ``name`` (``service``, a driver's or a console's key name); None when
        the bus is plaintext. Raises :class:`KeyFileError` when a key it needs is missing or malformed."""
        if bus.plaintext:
            return None
        dirs = key_dirs(bus)
        path = next((d / f"{name}.key_secret" for d in dirs if (d / f"{name}.key_secret").is_file()), None)
        if path is None:
            raise KeyFileError(
                f"no secret key {name}.key_secret in {' or '.join(map(str, dirs))}: make one with `lanewatch keys` "
                f"or set bus.plaintext = true (loopback only)"
            )
        own, secret = read(path)
        if secret is None:
            raise KeyFileError(f"{path}: holds no secret key")
        known = public_keys(bus)
        if name == SERVICE:
            clients = {info.public: info for info in known if info.role != "service"}
            return cls(own=own, secret=secret, service=own.public, clients=clients)
        service = next((info.public for info in known if info.role == "service"), None)
        if service is None:
            raise KeyFileError(f"no public key of the service (role service) in {' or '.join(map(str, dirs))}")
        return cls(own=own, secret=secret, service=service, clients={})


# ---- sockets -------------------------------------------------------------------------------------
def serve(sock: zmq.Socket, keys: Keys | None, endpoint: str) -> None:
    """Make ``sock`` a CURVE server admitting the keys of ``endpoint``'s role; call before ``bind``."""
    if keys is None:
        return
    sock.setsockopt(zmq.ZAP_DOMAIN, endpoint.encode())
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.own.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


def join(sock: zmq.Socket, keys: Keys | None) -> None:
    """Make ``sock`` a CURVE client of the service with ``keys``; call before ``connect``."""
    if keys is None:
        return
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.service)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.own.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


class _Admit:
    """ZAP credentials callback: a listed key of the endpoint's role."""

    def __init__(self, clients: dict[bytes, KeyInfo], role: str) -> None:
        self.clients = clients
        self.role = role

    def callback(self, domain: str, key: bytes) -> bool:
        info = self.clients.get(key)
        return info is not None and info.role == self.role


class Gatekeeper(ThreadAuthenticator):
    """The service's ZAP handler, in its own thread: admits listed keys, names the connection by the key.

    Refused handshakes are not counted here but by the sockets' monitors (:class:`HandshakeMonitor`),
    which also see the clients that never reach ZAP (no key at all, a wrong server key).
    """

    def __init__(self, ctx: zmq.Context, keys: Keys) -> None:
        super().__init__(ctx, log=logging.getLogger("lanewatch.bus.zap"))
        self.keys = keys
        self.start()
        for domain, role in DOMAINS.items():
            self.configure_curve_callback(domain, _Admit(keys.clients, role))

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.keys.clients[z85.encode(client_public_key)].name


HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def user_id(frame: zmq.Frame) -> str | None:
    """The key name the ZAP handler gave the connection ``frame`` came over (None on a plaintext bus)."""
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:
        return None


class HandshakeMonitor:
    """Counts the handshakes the service's sockets refuse, by endpoint, and logs them at a bounded rate.

    Register :attr:`sockets` in the service's poller and call :meth:`handle` with one that is readable.
    """

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.sockets: dict[zmq.Socket, tuple[zmq.Socket, str]] = {}
        """Monitor socket -> (the socket it watches, the endpoint's name)."""
        self._log = RateLimitedLog(log)

    def watch(self, sock: zmq.Socket, endpoint: str) -> zmq.Socket:
        """Start watching ``sock`` (the service's ``endpoint`` socket); returns the monitor socket to poll."""
        monitor = sock.get_monitor_socket(HANDSHAKE_FAILURES)
        self.sockets[monitor] = (sock, endpoint)
        return monitor

    def handle(self, monitor: zmq.Socket) -> None:
        """Count the events waiting on ``monitor``."""
        endpoint = self.sockets[monitor][1]
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            self.counter.labels(endpoint).inc()
            peer = event.get("endpoint", b"")
            self._log.log(
                logging.WARNING,
                endpoint,
                "%s: refused a handshake from %s (%s)",
                endpoint,
                peer.decode(errors="replace") if isinstance(peer, bytes) else peer,
                _REASONS.get(event["event"], "refused"),
            )

    def close(self) -> None:
        for monitor, (sock, _) in self.sockets.items():
            if not sock.closed:
                sock.disable_monitor()
            monitor.close(linger=0)
        self.sockets.clear()


_REASONS = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "key not admitted on this endpoint",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "no key, or not the security the endpoint requires",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed",
}
