"""``lanewatch console --config FILE``: the operators' web console under uvicorn, over HTTPS.

The certificate and key come from ``[console]``; a relative path is looked up in systemd's credentials
directory (``$CREDENTIALS_DIRECTORY``, from the unit's ``LoadCredential=``) when there is one, else in the
working directory. Plain HTTP is served only when ``plain_http`` is set, and the configuration refuses
it on any address but loopback. Exit status 1 when the certificate or key cannot be found.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from lanewatch.edge.config import Config

log = logging.getLogger(__name__)


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

    from lanewatch.edge.bus.security import Keys
    from lanewatch.edge.config import ConfigError, loopback
    from lanewatch.edge.console.app import create_app

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
    app = create_app(config, secure=not config.console.plain_http, keys=keys)
    scheme = "http" if config.console.plain_http else "https"
    log.info("console: serving %s://%s", scheme, listen)
    uvicorn.run(app, host=host.strip("[]"), port=int(port), log_level="warning", proxy_headers=False, **tls)
    return 0
