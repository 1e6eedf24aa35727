"""``lanewatch alerts``: list or follow the journaled decisions, as a table or as JSON lines.

Without ``--since`` it prints the newest ``--last`` decisions matching ``--lane`` /
``--verdict``; ``--since SEQ`` prints every decision after journal seq ``SEQ`` instead (0:
all of them). ``--follow`` then goes on with each new decision as it is journaled, never
missing one (see :mod:`lanewatch.edge.decisions.subscriber`), and in table mode shows provisional mid-passage
alarms as they are raised. ``--format jsonl`` prints each decision as one JSON object per
line, exactly as journaled. Exit status 1 when the service does not answer within
``--timeout`` seconds.

The table's columns: SEQ, END (in the site's time zone), LANE, VERDICT, FIELDED (the classic n-sigma rule on the
same counts: ALARM, CLEAR, or ``not eval.`` without the portal's background to compare with), PORTAL (the portal's
own alarm), MODEL (the anomaly model's score, ``find`` for a finding), NORM (the NORM release: ``release``, ``held``
or ``unconfirmed``), ADJUDICATION (the state), DISPOSITION (in a few words), and the reasons in words.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
import zoneinfo
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TextIO

import msgspec
import zmq

from lanewatch.edge.bus.security import Keys
from lanewatch.edge.config import Config
from lanewatch.edge.console.adjudication import adjudication_state
from lanewatch.edge.console.present import fielded_short, norm_state, reason_text, reasons
from lanewatch.edge.decisions.adjudication import DISPOSITION_SHORT
from lanewatch.edge.decisions.decision import Decision, ProvisionalAlarm, decode, seq_of
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
    ("FIELDED", 10, "<"),
    ("PORTAL", 7, "<"),
    ("MODEL", 11, "<"),
    ("NORM", 11, "<"),
    ("ADJUDICATION", 14, "<"),
    ("DISPOSITION", 15, "<"),
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


def _at_least(lowest: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``lowest``, else an error naming ``what`` was expected."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lowest:
            raise argparse.ArgumentTypeError(f"expected a {what} >= {lowest}, got {text!r}")
        return value

    return parse


_non_negative_int = _at_least(0, "seq")
_positive_int = _at_least(1, "count")


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


def _time(value: str, zone: tzinfo = UTC) -> str:
    """An ISO 8601 time as ``YYYY-MM-DD HH:MM:SS`` in ``zone`` (naive times are UTC; unparseable values as given)."""
    try:
        when = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return str(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def _model(decision: Decision) -> str:
    """``4.04 find`` (a finding), ``1.2`` (scored, no finding), ``warming`` (the lane's calibration warms up) or
    ``-``."""
    model = decision.model
    if model is None or model.score is None:
        return "warming" if model is not None and model.calibration == "warming-up" else "-"
    return f"{model.score:.3g} find" if model.finding else f"{model.score:.3g}"


def _norm(decision: Decision) -> str:
    """The NORM release (:func:`lanewatch.edge.console.present.norm_state`), ``-`` without a NORM-consistent excess."""
    return norm_state(decision) or "-"


def format_row(
    decision: Decision, color: bool = False, zone: tzinfo = UTC, state: str = "", disposition: str | None = None
) -> str:
    """One table line: seq, end time (in ``zone``), lane, verdict, the fielded rule's verdict, the portal's own
    alarm, the anomaly model's score and finding, NORM release, the adjudication ``state`` and ``disposition`` (its
    code), then the reasons in plain words (the console's, :func:`lanewatch.edge.console.present.reasons`)."""
    verdict = decision.verdict
    baseline = fielded_short(decision)
    values = (str(decision.seq), _time(decision.end, zone), decision.lane, verdict)
    portal = "ALARM" if decision.device_alarm else "-"
    disposed = DISPOSITION_SHORT.get(disposition or "", disposition or "-")
    extra = (portal, _model(decision), _norm(decision), state or "-", disposed)
    row = _cells((*values, baseline, *extra), {3: verdict, 4: baseline, 5: portal}, color, zone)
    return f"{row}  {'; '.join(reasons(decision)) or '-'}"


def format_provisional(alarm: ProvisionalAlarm, color: bool = False, zone: tzinfo = UTC) -> str:
    """One table line for a provisional (mid-passage) alarm, as it arrives: no seq, marked PROVISIONAL."""
    values = ("~", _time(datetime.now(UTC).isoformat(), zone), alarm.lane, "PROVISIONAL", "", "", "", "", "", "")
    tail = f"  (occupancy {alarm.occupancy_id})" if alarm.occupancy_id else ""
    return f"{_cells(values, {3: 'PROVISIONAL'}, color, zone)}  {reason_text(alarm)}{tail}"


@dataclass(frozen=True)
class Table:
    """The table ``lanewatch alerts`` prints, and the demo's live view: the columns of :func:`format_row`, times in
    the site's time zone (``[console].timezone``), each decision's adjudication state read from the journal file
    (``states``; None: no state column values)."""

    zone: tzinfo = UTC
    states: Callable[[Decision], tuple[str, str | None]] | None = None
    color: bool = False

    @classmethod
    def of(cls, config: Config, journal: Path | None = None, color: bool = False) -> Table:
        """The table of the site ``config`` names, with states from ``journal`` (default: the service's journal)."""
        zone = zoneinfo.ZoneInfo(config.console.timezone)
        return cls(zone, _states(journal or Path(config.service.journal)), color)

    def header(self) -> str:
        return header(self.color, self.zone)

    def line(self, item: Decision | ProvisionalAlarm) -> str:
        """A decision's row (with its adjudication state) or a provisional alarm's."""
        if isinstance(item, ProvisionalAlarm):
            return format_provisional(item, self.color, self.zone)
        state, disposition = self.states(item) if self.states else ("", None)
        return format_row(item, self.color, self.zone, state, disposition)


def _matches(item: Decision | ProvisionalAlarm, args: argparse.Namespace) -> bool:
    if args.lane is not None and item.lane != args.lane:
        return False
    if isinstance(item, ProvisionalAlarm):
        return args.verdict in (None, "ALARM")
    return args.verdict is None or item.verdict == args.verdict


def _emit(
    item: Decision | ProvisionalAlarm, journaled: bytes, args: argparse.Namespace, out: TextIO
) -> None:
    """One line: a decision as ``journaled`` (jsonl) or as a table row, or a provisional alarm's table row."""
    if args.format == "jsonl" and isinstance(item, Decision):
        out.write(journaled.decode() + "\n")
    else:
        out.write(args.table.line(item) + "\n")
    if args.follow:
        out.flush()


def _typed(journaled: Iterable[bytes]) -> Iterator[tuple[Decision, bytes]]:
    """Each decision's JSON with its typed decision; one that does not fit the decision contract is named on stderr
    and passed over."""
    for raw in journaled:
        try:
            yield decode(raw), bytes(raw)
        except msgspec.ValidationError as exc:
            why = f"decision {seq_of(raw)} does not fit the decision contract, passed over: {exc}"
            print(f"lanewatch alerts: {why}", file=sys.stderr)


def _states(path: Path) -> Callable[[Decision], tuple[str, str | None]]:
    """The adjudication state and disposition of a decision, read from the journal file at ``path`` ("" while there
    is none here: the service may run on another machine, or not have started yet)."""

    def state(decision: Decision) -> tuple[str, str | None]:
        if not path.exists():
            return "", None
        try:
            return adjudication_state(path, decision.seq, decision.verdict)
        except sqlite3.Error:
            return "?", None

    return state


def _unknown_lane(args: argparse.Namespace, config: Config, known: Callable[[str], bool]) -> str:
    """Why ``--lane`` names no lane ("" when it names one): not in the configuration, or never in the journal."""
    if args.lane is None:
        return ""
    if config.lanes:
        ids = [lane.id for lane in config.lanes]
        return "" if args.lane in ids else f"no lane {args.lane!r} in {config.source} (lanes: {', '.join(ids)})"
    return "" if known(args.lane) else f"no decision of lane {args.lane!r} in the journal"


def _offline(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    """The decisions of the journal file ``args.journal``; with ``--follow``, new ones as they are written."""
    try:
        journal = Journal(args.journal, readonly=True)
    except JournalError as exc:
        print(f"lanewatch alerts: {exc}", file=sys.stderr)
        return 1
    with journal:
        problem = _unknown_lane(args, config, lambda lane: bool(journal.query_json(lane=lane, limit=1)))
        if problem:
            print(f"lanewatch alerts: {problem}", file=sys.stderr)
            return 2
        if args.format == "table":
            out.write(args.table.header() + "\n")
        if args.since is None:
            for decision, raw in _typed(journal.query_json(lane=args.lane, verdict=args.verdict, limit=args.last)):
                _emit(decision, raw, args, out)
            cursor = journal.last_seq()
        else:
            cursor = args.since
        while True:
            batch = journal.since_json(cursor, 500) if args.since is not None or args.follow else []
            for decision, raw in _typed(batch):
                if _matches(decision, args):
                    _emit(decision, raw, args, out)
            if batch:
                cursor = seq_of(batch[-1])
            if not args.follow:
                return 0
            time.sleep(FOLLOW_POLL_S)


def run(args: argparse.Namespace, config: Config) -> int:
    """List (and with ``--follow`` keep listing) decisions from the service named by ``config.bus``, or from the
    journal file ``--journal``."""
    out = sys.stdout
    args.table = Table.of(config, args.journal, color=args.format == "table" and out.isatty())
    if args.journal is not None:
        try:
            return _offline(args, config, out)
        except KeyboardInterrupt:
            return 0
    keys = Keys.load(config.bus, args.key)
    ctx = zmq.Context()
    client = JournalClient(ctx, config.bus.query, keys=keys)
    subscriber: AlertSubscriber | None = None
    try:
        client.last_seq(timeout_s=args.timeout)  # the service answers: the table can start
        problem = _unknown_lane(args, config, lambda lane: bool(client.query(lane=lane, limit=1).records))
        if problem:
            print(f"lanewatch alerts: {problem}", file=sys.stderr)
            return 2
        if args.format == "table":
            out.write(args.table.header() + "\n")
        since = args.since
        if since is None:
            reply = client.query(lane=args.lane, verdict=args.verdict, limit=args.last)
            for decision, raw in _typed(reply.records or []):
                _emit(decision, raw, args, out)
            if not args.follow:
                return 0
            since = reply.last_seq
        subscriber = AlertSubscriber(
            ctx, config.bus.alerts, config.bus.query, since, connect_timeout_s=args.timeout, keys=keys
        )
        live_alarms = args.follow and args.format == "table"
        for item in subscriber.decisions(follow=args.follow, provisional=live_alarms):
            if isinstance(item, Decision | ProvisionalAlarm) and _matches(item, args):
                _emit(item, subscriber.journaled, args, out)
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
