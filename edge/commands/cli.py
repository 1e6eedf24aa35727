"""The ``lanewatch`` command line.

::

    lanewatch demo                          simulated lanes, drivers, service and a live view
    lanewatch run --config FILE             the fusion service
    lanewatch driver NAME --lane ID ...     one device driver (rpm, n42, ...)
    lanewatch sim NAME ...                  a device simulator (lane, ...)
    lanewatch alerts --config FILE ...      decisions from the journal and the alert bus
    lanewatch evidence SEQ --out DIR        one decision's evidence bundle (ZIP), as the console serves it
    lanewatch replay FILE.n42               the decision for one N42 portal file
    lanewatch status --config FILE          health of the service and the drivers
    lanewatch install-units ...             systemd units and an example configuration
    lanewatch schema decision|record|config the JSON Schema of a contract
    lanewatch keys init|driver|console ...  CURVE keys of the bus
    lanewatch model train|check ...         train or check the ONNX anomaly model
    lanewatch console --config FILE         the operators' web console (HTTPS)
    lanewatch users add NAME --role ROLE    manage the console's users

Drivers and simulators are looked up by name in their entry-point groups, so this module
never imports one.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from lanewatch.edge import config as config_mod
from lanewatch.edge.bus.driver import DRIVER_GROUP, SIMULATOR_GROUP, available, load_driver
from lanewatch.edge.config import Config, ConfigError

log = logging.getLogger("lanewatch")


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so loops end cleanly."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _config(path: str | None) -> Config:
    return config_mod.load(path) if path else Config()


# ---- commands ------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from lanewatch.edge.service import Service

    config = _config(args.config)
    config.require_lanes()
    service = Service(config)
    stop = _stop_on_signals()
    signal.signal(signal.SIGHUP, lambda signum, frame: service.model.request_reload())
    service.start()
    try:
        service.run(stop)
    finally:
        service.close()
    return 0


def cmd_driver(args: argparse.Namespace) -> int:
    import zmq
    from prometheus_client import CollectorRegistry

    from lanewatch.edge.bus import ingest
    from lanewatch.edge.bus.driver import RecordPublisher
    from lanewatch.edge.bus.security import Keys
    from lanewatch.edge.ops.keyfiles import driver_key_name
    from lanewatch.edge.ops.metrics import DriverMetrics, serve_http

    config = _config(args.config)
    cls = args.driver_cls
    keys = Keys.load(config.bus, args.key or driver_key_name(cls.name, args.lane))
    registry = CollectorRegistry()
    ctx = zmq.Context()
    sock = ingest.driver_publisher(ctx, args.ingest or config.bus.ingest, keys)
    publisher = RecordPublisher(sock, args.lane, cls.name, DriverMetrics(registry), keep=cls.keep_records)
    driver = cls.from_args(args, config, publisher)
    http = args.http
    if http is None:  # the lane's X-ray driver has its own endpoint, beside the portal's driver
        key = "xray_http" if cls.name == "xray" else "driver_http"
        http = next((getattr(lane, key) for lane in config.lanes if lane.id == args.lane), "")
    server = serve_http(http, registry, driver.health)[0] if http else None
    stop = _stop_on_signals()
    # A driver that keeps its records reads its device at once: a service that subscribes later asks for them.
    if not cls.keep_records and not ingest.wait_for_subscriber(sock, args.wait_service):
        log.warning("no service subscribed at %s yet; publishing anyway", args.ingest or config.bus.ingest)
    try:
        driver.serve(stop)
    finally:
        if server is not None:
            server.shutdown()
        sock.close()
        ctx.term()
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    return int(args.sim_module.run(args))


def cmd_install_units(args: argparse.Namespace) -> int:
    from lanewatch.edge.ops import units

    return units.run(args)


def cmd_replay(args: argparse.Namespace) -> int:
    from lanewatch.edge.commands.replay import replay

    return replay(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from lanewatch.edge.commands.demo import demo

    return demo(args)


# ---- parser --------------------------------------------------------------------------------
def _load_plugin(name: str, group: str) -> Any:
    """A registered driver or simulator; one that fails to import is reported and left out, not fatal."""
    try:
        return load_driver(name, group)
    except Exception as exc:
        print(f"lanewatch: {group} entry {name!r} cannot be loaded and is left out: {exc!r}", file=sys.stderr)
        return None


def _setup_driver(p: argparse.ArgumentParser) -> None:
    names = p.add_subparsers(dest="driver", required=True, metavar="NAME")
    for name in available(DRIVER_GROUP):
        cls = _load_plugin(name, DRIVER_GROUP)
        if cls is None:
            continue
        dp = names.add_parser(name, help=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None)
        dp.add_argument("--config", help="configuration file (TOML); embedded defaults if omitted")
        dp.add_argument("--lane", required=True, help="lane id (a [[lanes]] id of the configuration)")
        dp.add_argument("--ingest", help="service ingest endpoint (default: [bus].ingest)")
        dp.add_argument(
            "--http",
            help="host:port for /metrics and /healthz (default: the lane's driver_http, or xray_http)",
        )
        dp.add_argument("--key", help="name of the driver's CURVE key (default SOURCE-LANE, e.g. rpm-lane1)")
        dp.add_argument(
            "--wait-service",
            type=float,
            default=5.0,
            metavar="S",
            help="seconds to wait for the service to subscribe before reading the device (default 5); a driver "
            "that keeps its records for a replay (rpm) does not wait",
        )
        cls.add_arguments(dp)
        dp.set_defaults(func=cmd_driver, driver_cls=cls)


def _setup_sim(p: argparse.ArgumentParser) -> None:
    names = p.add_subparsers(dest="sim", required=True, metavar="NAME")
    for name in available(SIMULATOR_GROUP):
        module = _load_plugin(name, SIMULATOR_GROUP)
        if module is None:
            continue
        doc = (module.__doc__ or "").strip().splitlines()
        sp = names.add_parser(name, help=doc[0] if doc else None)
        module.add_arguments(sp)
        sp.set_defaults(func=cmd_sim, sim_module=module)


def _setup_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lanes", type=int, default=3, help="simulated lanes (default 3)")
    p.add_argument("--seed", type=int, default=2007, help="simulator seed (default 2007)")
    p.add_argument("--speedup", type=float, default=1.0, help="simulated time per wall second (default 1)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")
    p.add_argument("--workdir", help="where the demo keeps its config and journal (default: a temp dir)")
    p.add_argument(
        "--no-console", dest="console", action="store_false", help="do not start the web console over the lanes"
    )
    p.set_defaults(func=cmd_demo)


def _setup_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="configuration file (TOML)")
    p.set_defaults(func=cmd_run)


def _setup_replay(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="ANSI N42.42 portal occupancy file")
    p.add_argument("--speedup", type=float, default=0.0, help="replay speed; 0 = as fast as possible (default)")
    p.add_argument("--windows-kev", help="energy window edges in keV, e.g. 30,400,3000 (default: gross counts)")
    p.add_argument("--journal", help="journal file to keep (default: a temp file)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_replay)


def _setup_schema(p: argparse.ArgumentParser) -> None:
    module = "lanewatch.edge.commands.schema"
    _module_arguments(p, module)
    p.set_defaults(func=lambda args: int(importlib.import_module(module).run(args)))


def _setup_install_units(p: argparse.ArgumentParser) -> None:
    _module_arguments(p, "lanewatch.edge.ops.units")
    p.set_defaults(func=cmd_install_units)


def _config_command(module: str) -> Callable[[argparse.ArgumentParser], None]:
    """Setup of a command implemented by ``module``'s ``add_arguments(parser)`` and ``run(args, config)``."""

    def setup(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="configuration file (TOML); embedded defaults if omitted")
        _module_arguments(p, module)

        def command(args: argparse.Namespace) -> int:
            return int(importlib.import_module(module).run(args, _config(args.config)))

        p.set_defaults(func=command)

    return setup


def _module_arguments(parser: argparse.ArgumentParser, module: str) -> None:
    """Let ``module`` add the options of the command it implements."""
    add: Callable[[argparse.ArgumentParser], None] = importlib.import_module(module).add_arguments
    add(parser)


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "demo": ("simulated lanes, drivers, service and a live view of decisions", _setup_demo),
    "run": ("run the fusion service", _setup_run),
    "driver": ("run one device driver", _setup_driver),
    "sim": ("run a device simulator", _setup_sim),
    "alerts": ("list or follow journaled decisions", _config_command("lanewatch.edge.commands.alerts")),
    "evidence": (
        "write one decision's evidence bundle (ZIP): decision, profile, figure, image, N42, history, manifest",
        _config_command("lanewatch.edge.commands.evidence"),
    ),
    "status": ("health of the service and the drivers", _config_command("lanewatch.edge.ops.status")),
    "keys": ("make the CURVE keys of the bus", _config_command("lanewatch.edge.commands.keys")),
    "model": ("train or check the ONNX anomaly model", _config_command("lanewatch.edge.commands.model")),
    "console": ("serve the operators' web console", _config_command("lanewatch.edge.console.command")),
    "users": ("add, list, disable or enable console users", _config_command("lanewatch.edge.console.users")),
    "replay": ("replay an N42 portal file and print its decision", _setup_replay),
    "install-units": ("install systemd units and an example configuration", _setup_install_units),
    "schema": ("print the JSON Schema of a contract: decision, record, config or adjudication", _setup_schema),
}
"""Every command: its help line, and the setup that adds its options. Only the command being run is set
up, so ``lanewatch --help`` and light commands import nothing they do not use."""


def _selected(argv: list[str]) -> str | None:
    """The command named in ``argv`` (the first word that is not an option or an option's value)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line; options only for the command ``argv`` names (every command's when ``argv`` is None)."""
    selected = None if argv is None else _selected(argv)
    parser = argparse.ArgumentParser(
        prog="lanewatch", description="Edge sensor fusion for cargo inspection lanes: portal monitors and X-ray."
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, setup) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if argv is None or name == selected:
            setup(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except ConfigError as exc:
        defaults = getattr(args, "config", "") is None  # a command that takes --config, run without it
        hint = " (no --config given: the embedded defaults were used)" if defaults else ""
        print(f"lanewatch: configuration error: {exc}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (``lanewatch alerts ... | head``): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"lanewatch: {exc}", file=sys.stderr)
        return 1
