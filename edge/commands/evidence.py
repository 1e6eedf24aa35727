"""``lanewatch evidence SEQ --out DIR``: the evidence bundle of one journaled decision, as the console serves it.

Reads decision ``SEQ`` from the journal file of the configuration (read-only; ``--journal`` names
another file), or from the service's query endpoint (``--query``, or when there is no journal file
here), and writes ``DIR/evidence-SEQ.zip``: the same bundle the operators' console gives for the
decision (:func:`lanewatch.edge.console.evidence.bundle`: the decision JSON, the profile as CSV, the
evidence figure, the X-ray preview, the occupancy as N42.42, the adjudication history with the handheld
identifiers' N42 files attached to it, and a SHA-256 manifest; its figure's times in ``[console] timezone``). The
history is read from the journal file whenever it is here, also with ``--query``; without it the bundle's
``adjudications.json`` says the history is not included and why (``history`` null), and so does stderr.

Prints the bundle's path; errors go to stderr. Exit status 0 when the bundle was written, 1 when the decision
cannot be read (or its preview cannot be decoded) or the bundle cannot be written, 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec
import zmq

from lanewatch.edge.bus.security import Keys
from lanewatch.edge.config import Config
from lanewatch.edge.console.adjudication import Adjudication, Adjudications
from lanewatch.edge.console.evidence import bundle
from lanewatch.edge.console.present import Clock
from lanewatch.edge.decisions.journal import Journal, JournalError
from lanewatch.edge.decisions.subscriber import JournalClient, QueryError, ServiceUnreachable

QUERY_TIMEOUT_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lanewatch evidence``."""
    parser.add_argument("seq", type=int, help="journal sequence number of the decision")
    parser.add_argument("--out", required=True, type=Path, help="directory to write evidence-SEQ.zip to (created)")
    parser.add_argument("--journal", type=Path, help="journal file to read (default: the configuration's)")
    parser.add_argument("--query", action="store_true", help="ask the service's query endpoint, not the file")
    parser.add_argument("--key", default="console", help="CURVE key name for --query (default console)")


def _read(args: argparse.Namespace, config: Config) -> bytes | None:
    """The decision's JSON as journaled, from the journal file or else the query endpoint; None when there is
    none."""
    path = args.journal or Path(config.service.journal)
    if not args.query and (args.journal is not None or path.exists()):
        with Journal(path, readonly=True) as journal:
            return journal.get_json(args.seq)
    ctx = zmq.Context()
    client = JournalClient(ctx, config.bus.query, keys=Keys.load(config.bus, args.key))
    try:
        return client.get_json(args.seq, timeout_s=QUERY_TIMEOUT_S)
    finally:
        client.close()
        ctx.term()


def _history(
    args: argparse.Namespace, config: Config
) -> tuple[list[Adjudication] | None, dict[int, tuple[str, bytes]], str]:
    """The decision's adjudications and the files attached to them from the journal file when it is here, else None,
    no files and why they are not included (the query endpoint serves decisions only)."""
    path = args.journal or Path(config.service.journal)
    if path.exists():
        return Adjudications.read_history(path, args.seq), Adjudications.read_attachments(path, args.seq), ""
    return (
        None,
        {},
        (
            f"the adjudication history is not included: it is kept in the journal file ({path}), which is not on this "
            "machine, and the service's query endpoint serves decisions only; run lanewatch evidence where the journal "
            "is or download the bundle from the console"
        ),
    )


def run(args: argparse.Namespace, config: Config) -> int:
    """Write the evidence files of decision ``args.seq`` into ``args.out``."""
    if args.seq < 1:
        print(f"lanewatch evidence: SEQ must be a journal sequence number (1 or more), got {args.seq}", file=sys.stderr)
        return 2
    where = f"the query endpoint {config.bus.query}" if args.query else str(args.journal or config.service.journal)
    try:
        journaled = _read(args, config)
    except (JournalError, QueryError, ServiceUnreachable) as exc:
        print(f"lanewatch evidence: cannot read decision {args.seq}: {exc}", file=sys.stderr)
        return 1
    if journaled is None:
        print(f"lanewatch evidence: no decision numbered {args.seq} in {where}", file=sys.stderr)
        return 1
    history, attachments, missing = _history(args, config)
    if history is None:
        print(f"lanewatch evidence: decision {args.seq}: {missing}", file=sys.stderr)
    try:
        body = bundle(journaled, history, missing, attachments, Clock.named(config.console.timezone))
    except msgspec.ValidationError as exc:
        print(f"lanewatch evidence: decision {args.seq} does not fit the decision contract: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"lanewatch evidence: decision {args.seq}: its X-ray preview cannot be decoded: {exc}", file=sys.stderr)
        return 1
    path = args.out / f"evidence-{args.seq}.zip"
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    except OSError as exc:
        print(f"lanewatch evidence: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(path)
    return 0
