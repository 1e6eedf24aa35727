"""The TCP side of a simulated device: the same byte stream to every connected client.

A real portal or scanner streams to whoever is connected, from the moment they connect; a
client that goes away or stops reading for 2 s is dropped, as a device drops a dead link.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import Self

log = logging.getLogger("lanewatch.sim")

SEND_TIMEOUT_S = 2.0
"""A client that cannot take the stream for this long (s) is dropped."""
ACCEPT_POLL_S = 0.1
"""How often (s) an accepting thread looks whether it should stop."""


class TcpFanout:
    """Listeners on one or more ports, and their clients, all sent every :meth:`broadcast`.

    ``greeting`` gives the bytes a client receives first when it connects (a device's setup
    lines); ``nodelay`` sends each write at once (line protocols, where latency matters).
    """

    def __init__(self, name: str, greeting: Callable[[], bytes] | None = None, nodelay: bool = False) -> None:
        self.name = name
        self.greeting = greeting
        self.nodelay = nodelay
        self._lock = threading.Lock()
        self._clients: list[socket.socket] = []
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()

    def listen(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Accept clients on ``host:port`` (0 = any free port); returns the port."""
        listener = socket.create_server((host, port))
        listener.settimeout(ACCEPT_POLL_S)
        port = listener.getsockname()[1]
        thread = threading.Thread(target=self._accept, args=(listener,), name=f"{self.name}-accept-{port}", daemon=True)
        with self._lock:
            self._listeners.append(listener)
            self._threads.append(thread)
        thread.start()
        return port

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                client, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.nodelay:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.settimeout(SEND_TIMEOUT_S)
            log.info("%s: client %s connected", self.name, peer)
            with self._lock:
                if self.greeting is None or self._send(client, self.greeting()):
                    self._clients.append(client)

    def _send(self, client: socket.socket, data: bytes) -> bool:
        """Send to one client; one that is gone or too slow is closed and False returned."""
        try:
            client.sendall(data)
            return True
        except OSError as exc:
            log.info("%s: client dropped (%s)", self.name, exc)
            with contextlib.suppress(OSError):
                client.close()
            return False

    def broadcast(self, data: bytes) -> None:
        """Send ``data`` to every client, dropping those that cannot take it."""
        with self._lock:
            self._clients = [c for c in self._clients if self._send(c, data)]

    def clients(self) -> int:
        """Clients connected now."""
        with self._lock:
            return len(self._clients)

    def close(self) -> None:
        """Stop accepting, close every client and listener. Safe to call more than once."""
        self._closed.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5.0)
        with self._lock:
            for sock in [*self._clients, *self._listeners]:
                with contextlib.suppress(OSError):
                    sock.close()
            self._clients, self._listeners, self._threads = [], [], []


class StreamingDevice:
    """A simulated device: a thread that runs :meth:`_run` and streams through a :class:`TcpFanout`.

    Subclasses set ``_tcp`` and implement ``_run``, which returns when ``_stop`` is set.
    """

    thread_name = "device-sim"
    _tcp: TcpFanout

    def __init__(self) -> None:
        self._runner: threading.Thread | None = None
        self._stop = threading.Event()

    def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0 = any free port); every client gets the stream from then on. Returns the port."""
        return self._tcp.listen(host, port)

    def clients(self) -> int:
        """TCP clients connected now."""
        return self._tcp.clients()

    def start(self) -> None:
        """Start streaming in a background thread."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        self._runner = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._runner.start()

    def stop(self) -> None:
        """Stop streaming, close every client and listener. Safe to call more than once."""
        self._stop.set()
        if self._runner is not None and self._runner is not threading.current_thread():
            self._runner.join(timeout=5.0)
        self._tcp.close()

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
