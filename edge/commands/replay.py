"""``lanewatch replay FILE.n42``: the decision the service makes for one N42 portal file, dated by the file.

Runs a private service (journal in a temp dir unless ``--journal``, sockets on ``ipc://``)
and the ``n42`` replay driver found by name, then prints the decision of the occupancy: as a table with its
column titles (``lanewatch alerts``' table, times in UTC), or as journaled (``--format json``). Errors go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq
from prometheus_client import CollectorRegistry

from lanewatch.edge.bus import ingest
from lanewatch.edge.bus.driver import RecordPublisher, load_driver
from lanewatch.edge.config import BusConfig, Config, DetectionConfig, LaneConfig, ServiceConfig
from lanewatch.edge.decisions.decision import decode
from lanewatch.edge.ops.metrics import DriverMetrics
from lanewatch.edge.service import Service

log = logging.getLogger("lanewatch.replay")

LANE = "replay"
DECISION_WAIT_S = 30.0
"""How long (s) to wait for the decision once the file has been replayed."""


def parse_edges(text: str | None) -> list[float]:
    """``"30,400,3000"`` -> ``[30.0, 400.0, 3000.0]`` (keV); empty for None."""
    return [float(v) for v in text.split(",")] if text else []


def replay(args: argparse.Namespace) -> int:
    from lanewatch.edge.commands import alerts

    path = Path(args.file)
    with tempfile.TemporaryDirectory(prefix="lanewatch-replay-") as tmp:
        config = Config(
            # The records carry the file's own times, however old: no age limit on them.
            service=ServiceConfig(
                journal=args.journal or str(Path(tmp) / "journal.db"), http="", max_record_age_s=math.inf
            ),
            bus=BusConfig(
                ingest=f"ipc://{tmp}/ingest", alerts=f"ipc://{tmp}/alerts", query=f"ipc://{tmp}/query", plaintext=True
            ),
            detection=DetectionConfig(energy_windows_kev=parse_edges(args.windows_kev)),
            lanes=[LaneConfig(id=LANE)],
            source=f"replay of {path}",
        )
        cls = load_driver("n42")
        driver_parser = argparse.ArgumentParser(prog="lanewatch replay")
        cls.add_arguments(driver_parser)
        driver_args = ["--file", str(path), "--speedup", str(args.speedup)]
        if args.windows_kev:
            driver_args += ["--windows-kev", args.windows_kev]
        ns = driver_parser.parse_args(driver_args)
        ns.lane = LANE

        service = Service(config, http=False)
        ctx = zmq.Context()
        sock = ingest.driver_publisher(ctx, config.bus.ingest)
        try:
            driver = cls.from_args(
                ns, config, RecordPublisher(sock, LANE, cls.name, DriverMetrics(CollectorRegistry()))
            )
        except ValueError as exc:
            sock.close(linger=0)
            ctx.term()
            print(f"lanewatch replay: {exc}", file=sys.stderr)
            return 2
        service.start()
        stop = threading.Event()
        errors: list[BaseException] = []

        def play() -> None:
            try:
                ingest.wait_for_subscriber(sock, 5.0)
                driver.run(stop)
            except Exception as exc:  # reported below, in the main thread
                errors.append(exc)

        player = threading.Thread(target=play, name="n42-replay", daemon=True)
        player.start()
        first_seq = service.last_seq
        deadline = None
        try:
            while service.last_seq == first_seq and not errors:
                service.step(0.05)
                if not player.is_alive():
                    deadline = deadline or time.monotonic() + DECISION_WAIT_S
                    if time.monotonic() > deadline:
                        break
            journaled = service.journal.since_json(first_seq)
        finally:
            stop.set()
            player.join(5)
            service.close()
            sock.close(linger=0)
            ctx.term()
    if errors:
        print(f"lanewatch replay: {errors[0]}", file=sys.stderr)
        return 2
    if not journaled:
        print(f"lanewatch replay: {path} produced no decision (no occupancy in the file?)", file=sys.stderr)
        return 1
    table = alerts.Table()  # the file's times in UTC: a replay has no site
    if args.format != "json":
        print(table.header())
    for raw in journaled:  # as journaled (json), or a table line of the typed decision
        print(raw.decode() if args.format == "json" else table.line(decode(raw)))
    return 0
