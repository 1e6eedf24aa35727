"""``lanewatch keys``: the CURVE keys of the bus (see :mod:`lanewatch.edge.bus.security`).

::

    lanewatch keys init                          the service's key, one per configured driver, and "console"
    lanewatch keys service                       the service's keypair
    lanewatch keys driver SOURCE --lane ID ...   a driver's keypair, allowed to publish as SOURCE for those lanes
    lanewatch keys console NAME                  a console's or subscriber's keypair (reads decisions, never publishes)
    lanewatch keys list                          the public keys the service admits

Keys go to ``--dir`` (default ``bus.keys``), every file mode 0600. A light command: it imports no
numerical library.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lanewatch.edge.config import Config
from lanewatch.edge.ops import keyfiles
from lanewatch.edge.ops.keyfiles import KeyInfo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="configuration file (TOML), also before ACTION")
    common.add_argument("--dir", help="key directory (default: [bus].keys)")
    common.add_argument("--force", action="store_true", help="replace keys that exist (the old ones stop working)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser(
        "init", parents=[common], help="the service's key, a key per configured lane driver (rpm, xray) and 'console'"
    )
    sub.add_parser("service", parents=[common], help="the service's keypair")
    driver = sub.add_parser("driver", parents=[common], help="a driver's keypair, bound to its source and lanes")
    driver.add_argument("source", help="the driver's source name (rpm, xray, n42, dicos...)")
    driver.add_argument("--lane", action="append", required=True, help="a lane the key may publish for (repeat)")
    driver.add_argument("--name", help="key name (default SOURCE-LANE)")
    console = sub.add_parser("console", parents=[common], help="a console's or subscriber's keypair")
    console.add_argument("name", help="key name, e.g. console or ops-desk")
    sub.add_parser("list", parents=[common], help="the public keys in the directory, with role, source and lanes")


def _planned(args: argparse.Namespace, config: Config) -> list[KeyInfo]:
    """The keys the action makes (their ``public`` is filled when made)."""
    if args.action == "service":
        return [KeyInfo(keyfiles.SERVICE, "service", b"")]
    if args.action == "console":
        return [KeyInfo(args.name, "console", b"")]
    if args.action == "driver":
        name = args.name or keyfiles.driver_key_name(args.source, args.lane[0])
        return [KeyInfo(name, "driver", b"", lanes=tuple(args.lane), source=args.source)]
    return keyfiles.site_keys(config.lanes)


def run(args: argparse.Namespace, config: Config) -> int:
    directory = Path(args.dir or config.bus.keys)
    if args.action == "list":
        for info in sorted(keyfiles.public_keys_in(directory), key=lambda i: (i.role, i.name)):
            scope = f" source {info.source} lanes {','.join(info.lanes)}" if info.role == "driver" else ""
            print(f"{info.name:24} {info.role:8}{scope}")
        return 0
    made = 0
    for info in _planned(args, config):
        if not keyfiles.valid_name(info.name):
            print(f"lanewatch keys: {info.name!r} is not a valid key name", file=sys.stderr)
            return 2
        try:
            keyfiles.create(directory, info, overwrite=args.force)
        except FileExistsError:
            if args.action != "init":
                print(
                    f"lanewatch keys: {info.name} has keys in {directory} already (--force replaces them)",
                    file=sys.stderr,
                )
                return 1
            continue
        made += 1
        print(f"{info.name}: {directory / 'secret' / (info.name + '.key_secret')} ({info.role})")
    if args.action == "init":
        print(f"{made} keys made in {directory}; keys that existed were kept")
    return 0
