"""``lanewatch console --config FILE``: the operators' web console under uvicorn, over HTTPS.

The certificate and key come from ``[console]``; a relative path is looked up in systemd's credentials
directory (``$CREDENTIALS_DIRECTORY``, from the unit's ``LoadCredential=``) when there is one, else in the
working directory. Plain HTTP is served only when ``plain_http`` is set, and the configuration refuses
it on any address but loopback. ``[console].http`` serves /metrics and /healthz. "serving" is logged once
both sockets are bound; exit status 1 when the certificate or key cannot be found or an address cannot be
bound (the message names its configuration key).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from lanewatch.edge.config import Config

if TYPE_CHECKING:
    import uvicorn

    from lanewatch.edge.console.live import Hub

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5
"""On SIGTERM or SIGINT, the longest wait (s) for requests in progress before they are cancelled. The event streams
end at once (:func:`end_streams_on_exit`); this bounds anything else still being sent (a download), so systemd's stop
never waits for ``TimeoutStopSec``."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lanewatch console`` (the CLI adds ``--config``)."""
    parser.add_argument("--listen", help="host:port to serve on (default: [console].listen)")
    parser.add_argument("--key", default="console", help="name of the console's CURVE key (default console)")


def credential(path: str) -> Path:
    """Where the certificate or key named ``path`` is: absolute as given, else in the credentials directory
    when systemd passed one and it holds the file, else relative to the working directory."""
    given = Path(path)
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if not given.is_absolute() and credentials and (Path(credentials) / given).is_file():
        return Path(credentials) / given
    return given


def run(args: argparse.Namespace, config: Config) -> int:
    """Serve the console until SIGINT or SIGTERM."""
    import uvicorn
    from prometheus_client import CollectorRegistry

    from lanewatch.edge.bus.security import Keys
    from lanewatch.edge.config import ConfigError, loopback
    from lanewatch.edge.console.adjudication import SearchUnavailable
    from lanewatch.edge.console.app import create_app
    from lanewatch.edge.ops.metrics import serve_http

    listen = args.listen or config.console.listen
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or not host:
        raise ConfigError(f"--listen: expected host:port, got {listen!r}")
    tls: dict[str, str] = {}
    if config.console.plain_http:
        if not loopback(f"tcp://{listen}"):
            raise ConfigError(f"{config.source}: console.plain_http: refused on the non-loopback address {listen}")
    else:
        cert, key = credential(config.console.certificate), credential(config.console.key)
        for name, path in (("certificate", cert), ("key", key)):
            if not path.is_file():
                print(
                    f"lanewatch console: the {name} {path} does not exist: `lanewatch install-units` creates a "
                    f"self-signed pair, or set [console].{name} (configuration: {config.source})",
                    file=sys.stderr,
                )
                return 1
        tls = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    keys = Keys.load(config.bus, args.key)  # a missing key is a configuration error, reported by the CLI
    option = "--listen" if args.listen else "console.listen"
    try:
        listener = bind(host.strip("[]"), int(port))
    except OSError as exc:
        print(f"lanewatch console: {option}: cannot bind {listen}: {exc.strerror} ({config.source})", file=sys.stderr)
        return 1
    registry = CollectorRegistry()
    try:
        app = create_app(config, secure=not config.console.plain_http, keys=keys, registry=registry)
    except SearchUnavailable as exc:
        listener.close()
        print(f"lanewatch console: {exc}", file=sys.stderr)
        return 1
    # What start-up made (about 44,000 objects) lives as long as the process: out of the collector's sight, a full
    # collection inside a request takes microseconds instead of 10-25 ms.
    gc.collect()
    gc.freeze()
    http = None
    if config.console.http:
        try:
            http, _ = serve_http(config.console.http, registry, app.state.console.health)
        except OSError as exc:
            listener.close()
            print(
                f"lanewatch console: console.http: cannot bind {config.console.http}: {exc.strerror} "
                f"({config.source})",
                file=sys.stderr,
            )
            return 1
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_level="warning", proxy_headers=False, timeout_graceful_shutdown=SHUTDOWN_GRACE_S, **tls
        )
    )
    end_streams_on_exit(server, app.state.console.hub)
    scheme = "http" if config.console.plain_http else "https"
    log.info("console: serving %s://%s (metrics and health: %s)", scheme, listen, config.console.http or "off")
    try:
        server.run(sockets=[listener])
    finally:
        listener.close()
        if http is not None:
            http.shutdown()
            http.server_close()
    return 0


def end_streams_on_exit(server: uvicorn.Server, hub: Hub) -> None:
    """On SIGTERM or SIGINT, end the event streams at once (each browser is told the console is closing), before
    uvicorn's graceful shutdown waits for the responses still open: the walls' streams never end by themselves."""
    handle_exit = server.handle_exit

    def exiting(sig: int, frame: FrameType | None) -> None:
        hub.close()
        handle_exit(sig, frame)

    server.handle_exit = exiting  # type: ignore[method-assign]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6); raises OSError when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on connections of a socket that says it is TCP, and
    # without it every response waited about 40 ms for the client's delayed acknowledgement (Nagle's algorithm).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
