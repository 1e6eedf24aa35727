"""``lanewatch alerts``: list or follow the journaled decisions, as a table or as JSON lines.

Without ``--since`` it prints the newest ``--last`` decisions matching ``--lane`` /
``--verdict``; ``--since SEQ`` prints every decision after journal seq ``SEQ`` instead (0:
all of them). ``--follow`` then goes on with each new decision as it is journaled, never
missing one (see :mod:`lanewatch.edge.decisions.subscriber`), and in table mode shows provisional mid-passage
alarms as they are raised. ``--format jsonl`` prints each decision as one JSON object per
line, exactly as journaled. Exit status 1 when the service does not answer within
``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, TextIO

import zmq

from lanewatch.edge.bus.security import Keys
from lanewatch.edge.config import Config
from lanewatch.edge.console.adjudication import adjudication_state
from lanewatch.edge.console.present import norm_state, reason_text, reasons
from lanewatch.edge.decisions.journal import VERDICTS, Journal, JournalError
from lanewatch.edge.decisions.subscriber import AlertSubscriber, JournalClient, QueryError, ServiceUnreachable

DEFAULT_LAST = 20
FOLLOW_POLL_S = 0.5
"""How often (s) ``--journal FILE --follow`` reads the file for new decisions."""
RESET = "\x1b[0m"
COLORS = {"ALARM": "\x1b[1;31m", "CLEAR": "\x1b[32m", "INCOMPLETE": "\x1b[33m", "PROVISIONAL": "\x1b[1;35m"}
"""ANSI colours of the verdict column (used only when writing to a terminal)."""

_COLUMNS = (
    ("SEQ", 6, ">"),
    ("END (UTC)", 19, "<"),
    ("LANE", 10, "<"),
    ("VERDICT", 11, "<"),
    ("BASELINE", 10, "<"),
    ("PORTAL", 7, "<"),
    ("MODEL", 11, "<"),
    ("NORM", 8, "<"),
    ("ADJUDICATION", 14, "<"),
)
"""Column title, width and alignment; the END title names the site's time zone (``[console].timezone``)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``lanewatch alerts`` (the CLI adds ``--config``)."""
    parser.add_argument("--key", default="console", help="name of the console's CURVE key (default console)")
    parser.add_argument(
        "--since",
        type=_non_negative_int,
        metavar="SEQ",
        help=f"every decision after journal seq SEQ (0: all); default: the newest --last ({DEFAULT_LAST})",
    )
    parser.add_argument(
        "--last",
        type=_positive_int,
        default=DEFAULT_LAST,
        metavar="N",
        help=f"without --since, how many of the newest matching decisions to show (default {DEFAULT_LAST})",
    )
    parser.add_argument("--follow", action="store_true", help="keep printing new decisions as they are journaled")
    parser.add_argument("--format", choices=["table", "jsonl"], default="table", help="output format (default table)")
    parser.add_argument("--lane", help="only this lane's decisions (an unknown lane is an error)")
    parser.add_argument(
        "--journal",
        type=Path,
        metavar="FILE",
        help="read this journal file, offline (no service needed; --follow watches the file)",
    )
    parser.add_argument("--verdict", type=str.upper, choices=VERDICTS, help="only decisions with this verdict")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="give up when the service does not answer within S seconds (default 5)",
    )


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a seq >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a count >= 1, got {value}")
    return value


def _paint(text: str, key: str, color: bool) -> str:
    return f"{COLORS[key]}{text}{RESET}" if color and key in COLORS else text


def _columns(zone: tzinfo) -> tuple[tuple[str, int, str], ...]:
    title = f"END ({zone})"
    return (_COLUMNS[0], (title, max(19, len(title)), "<"), *_COLUMNS[2:])


def _cells(values: tuple[str, ...], color_keys: dict[int, str], color: bool, zone: tzinfo = UTC) -> str:
    """Fixed-width columns (padded before colouring, so escapes do not shift them)."""
    cells = []
    for i, (value, (_, width, align)) in enumerate(zip(values, _columns(zone), strict=True)):
        cell = f"{value:{align}{width}}"
        cells.append(_paint(cell, color_keys[i], color) if i in color_keys else cell)
    return "  ".join(cells)


def header(color: bool = False, zone: tzinfo = UTC) -> str:
    """The column titles of :func:`format_row` lines (times in ``zone``)."""
    line = _cells(tuple(name for name, _, _ in _columns(zone)), {}, False, zone) + "  REASONS"
    return f"\x1b[1m{line}{RESET}" if color else line


def _time(value: Any, zone: tzinfo = UTC) -> str:
    """An ISO 8601 time as ``YYYY-MM-DD HH:MM:SS`` in ``zone`` (naive times are UTC; unparseable values as given)."""
    try:
        when = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return str(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def _model(decision: dict[str, Any]) -> str:
    """``4.04 find`` (a finding), ``1.2`` (scored, no finding), ``warming`` (the lane's calibration warms up) or
    ``-``."""
    model = decision.get("model")
    score = model.get("score") if isinstance(model, dict) else None
    if not isinstance(score, int | float):
        return "warming" if isinstance(model, dict) and model.get("calibration") == "warming-up" else "-"
    return f"{score:.3g} find" if model.get("finding") else f"{score:.3g}"


def _norm(decision: dict[str, Any]) -> str:
    """The NORM release (:func:`lanewatch.edge.console.present.norm_state`), ``-`` without a NORM-consistent excess."""
    return norm_state(decision) or "-"


def format_row(decision: dict[str, Any], color: bool = False, zone: tzinfo = UTC, state: str = "") -> str:
    """One table line: seq, end time (in ``zone``), lane, verdict, the fielded rule's verdict, the portal's own
    alarm, the anomaly model's score and finding, NORM release, the adjudication ``state``, then the reasons in
    plain words (the console's, :func:`lanewatch.edge.console.present.reasons`)."""
    verdict = str(decision.get("verdict", "?"))
    baseline = str(decision.get("baseline_verdict") or "-")
    values = (str(decision.get("seq", "?")), _time(decision.get("end"), zone), str(decision.get("lane", "?")), verdict)
    portal = "ALARM" if decision.get("device_alarm") else "-"
    extra = (portal, _model(decision), _norm(decision), state or "-")
    row = _cells((*values, baseline, *extra), {3: verdict, 4: baseline, 5: portal}, color, zone)
    return f"{row}  {'; '.join(reasons(decision)) or '-'}"


def format_provisional(alarm: dict[str, Any], color: bool = False, zone: tzinfo = UTC) -> str:
    """One table line for a provisional (mid-passage) alarm: no seq, marked PROVISIONAL."""
    when = alarm.get("time") or datetime.now(UTC).isoformat()
    values = ("~", _time(when, zone), str(alarm.get("lane", "?")), "PROVISIONAL", "", "", "", "", "")
    occupancy = alarm.get("occupancy_id")
    tail = f"  (occupancy {occupancy})" if occupancy else ""
    return f"{_cells(values, {3: 'PROVISIONAL'}, color, zone)}  {reason_text(alarm)}{tail}"


def _matches(item: dict[str, Any], args: argparse.Namespace) -> bool:
    if args.lane is not None and item.get("lane") != args.lane:
        return False
    if item.get("provisional"):
        return args.verdict in (None, "ALARM")
    return args.verdict is None or item.get("verdict") == args.verdict


def _emit(item: dict[str, Any], args: argparse.Namespace, color: bool, out: TextIO) -> None:
    if args.format == "jsonl":
        out.write(json.dumps(item, separators=(",", ":")) + "\n")
    elif item.get("provisional"):
        out.write(format_provisional(item, color, args.zone) + "\n")
    else:
        state = args.states(item) if args.states else ""
        out.write(format_row(item, color, args.zone, state) + "\n")
    if args.follow:
        out.flush()


def _states(path: Path) -> Callable[[dict[str, Any]], str] | None:
    """The adjudication state of a decision, read from the journal file at ``path`` (None when it is not here)."""
    if not path.exists():
        return None

    def state(decision: dict[str, Any]) -> str:
        try:
            return adjudication_state(path, decision["seq"], str(decision.get("verdict")))
        except sqlite3.Error:
            return "?"

    return state


def _unknown_lane(args: argparse.Namespace, config: Config, known: Callable[[str], bool]) -> str:
    """Why ``--lane`` names no lane ("" when it names one): not in the configuration, or never in the journal."""
    if args.lane is None:
        return ""
    if config.lanes:
        ids = [lane.id for lane in config.lanes]
        return "" if args.lane in ids else f"no lane {args.lane!r} in {config.source} (lanes: {', '.join(ids)})"
    return "" if known(args.lane) else f"no decision of lane {args.lane!r} in the journal"


def _offline(args: argparse.Namespace, config: Config, color: bool, out: TextIO) -> int:
    """The decisions of the journal file ``args.journal``; with ``--follow``, new ones as they are written."""
    try:
        journal = Journal(args.journal, readonly=True)
    except JournalError as exc:
        print(f"lanewatch alerts: {exc}", file=sys.stderr)
        return 1
    with journal:
        problem = _unknown_lane(args, config, lambda lane: bool(journal.query(lane=lane, limit=1)))
        if problem:
            print(f"lanewatch alerts: {problem}", file=sys.stderr)
            return 2
        if args.format == "table":
            out.write(header(color, args.zone) + "\n")
        if args.since is None:
            for decision in journal.query(lane=args.lane, verdict=args.verdict, limit=args.last):
                _emit(decision, args, color, out)
            cursor = journal.last_seq()
        else:
            cursor = args.since
        while True:
            for decision in journal.since(cursor, 500) if args.since is not None or args.follow else []:
                cursor = decision["seq"]
                if _matches(decision, args):
                    _emit(decision, args, color, out)
            if not args.follow:
                return 0
            time.sleep(FOLLOW_POLL_S)


def run(args: argparse.Namespace, config: Config) -> int:
    """List (and with ``--follow`` keep listing) decisions from the service named by ``config.bus``, or from the
    journal file ``--journal``."""
    args.zone = zoneinfo.ZoneInfo(config.console.timezone)
    args.states = _states(args.journal or Path(config.service.journal))
    out = sys.stdout
    color = args.format == "table" and out.isatty()
    if args.journal is not None:
        try:
            return _offline(args, config, color, out)
        except KeyboardInterrupt:
            return 0
    keys = Keys.load(config.bus, args.key)
    ctx = zmq.Context()
    client = JournalClient(ctx, config.bus.query, keys=keys)
    subscriber: AlertSubscriber | None = None
    try:
        client.last_seq(timeout_s=args.timeout)  # the service answers: the table can start
        problem = _unknown_lane(args, config, lambda lane: bool(client.query(lane=lane, limit=1)["records"]))
        if problem:
            print(f"lanewatch alerts: {problem}", file=sys.stderr)
            return 2
        if args.format == "table":
            out.write(header(color, args.zone) + "\n")
        since = args.since
        if since is None:
            reply = client.query(lane=args.lane, verdict=args.verdict, limit=args.last)
            for decision in reply["records"]:
                _emit(decision, args, color, out)
            if not args.follow:
                return 0
            since = reply["last_seq"]
        subscriber = AlertSubscriber(
            ctx, config.bus.alerts, config.bus.query, since, connect_timeout_s=args.timeout, keys=keys
        )
        live_alarms = args.follow and args.format == "table"
        for item in subscriber.decisions(follow=args.follow, provisional=live_alarms):
            if item is not None and _matches(item, args):
                _emit(item, args, color, out)
        return 0
    except ServiceUnreachable as exc:
        print(f"lanewatch alerts: {exc}; is the service running? (configuration: {config.source})", file=sys.stderr)
        return 1
    except QueryError as exc:
        print(f"lanewatch alerts: the service refused the request: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0
    finally:
        if subscriber is not None:
            subscriber.close()
        client.close()
        ctx.term()
        out.flush()
