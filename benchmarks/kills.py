"""No vehicle lost or merged when the portal's driver or the service is killed: real processes, ground truth.

A simulated lane (``lanewatch sim lane --truth``, seeded, time compressed) feeds ``lanewatch driver rpm``,
which publishes to ``lanewatch run``. While the vehicles pass, the driver and the service are killed with
SIGKILL in turn, evenly over the run, and started again at once. At the end every vehicle of the truth file
must have exactly one journaled decision (an INCOMPLETE one says why in ``end_reason`` and ``incomplete``),
no decision may cover two vehicles, the journal's ``seq`` must be contiguous and its file must pass
``PRAGMA integrity_check``.

A decision belongs to the vehicle whose portal counter (``device_occupancy``) it carries; one without a counter
to the vehicle whose passage (truth ``start`` to ``end``) its own span overlaps. A decision whose samples span
two vehicles' passages is merged.

    python -m benchmarks.kills [--vehicles 150] [--driver-kills 20] [--service-kills 20] [--speedup 8]

The baseline is the same traffic (same seed) without kills, in the same run.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import Deployment
from lanewatch.edge.commands.demo import free_ports
from lanewatch.edge.decisions.decision import Decision
from lanewatch.edge.decisions.journal import Journal

TOLERANCE_NS = 50_000_000
"""Slack (ns) between the simulator's stamps of a passage and the driver's stamps of its lines."""
SETTLE_S = 20.0
"""The run is over when the simulator has sent every vehicle and no decision came for this long (s)."""


@dataclass
class KillRun:
    """What a kill run measured."""

    vehicles: int
    driver_kills: int
    service_kills: int
    decisions: int = 0
    decided_once: int = 0
    lost: int = 0
    duplicated: int = 0
    merged: int = 0
    incomplete: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seq_contiguous: bool = False
    integrity: str = ""
    unmatched: int = 0
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.decided_once == self.vehicles
            and not (self.lost or self.duplicated or self.merged or self.unmatched)
            and self.seq_contiguous
            and self.integrity == "ok"
        )


def _ns(iso: str) -> int:
    return round(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1e9)


def score(truth: list[dict[str, Any]], decisions: list[Decision], run: KillRun) -> None:
    """Match ``decisions`` to the ``truth`` vehicles and fill in ``run``'s counts."""
    spans = [(_ns(t["start"]) - TOLERANCE_NS, _ns(t["end"]) + TOLERANCE_NS) for t in truth]
    by_counter = {t["device_occupancy"]: i for i, t in enumerate(truth)}
    per_vehicle: Counter[int] = Counter()
    run.decisions = len(decisions)
    for d in decisions:
        overlapping = [i for i, (a, b) in enumerate(spans) if d.start_ns <= b and d.end_ns >= a]
        counter = d.device_occupancy
        if d.end_reason != "missed" and len(overlapping) > 1:
            run.merged += 1
        if isinstance(counter, int) and counter in by_counter:
            per_vehicle[by_counter[counter]] += 1
        elif len(overlapping) == 1:
            per_vehicle[overlapping[0]] += 1
        else:
            run.unmatched += 1
        if d.verdict == "INCOMPLETE":
            run.incomplete += 1
            why = [d.end_reason, *d.incomplete]
            for reason in dict.fromkeys(r for r in why if r not in ("gx", "background")):
                run.reasons[reason] = run.reasons.get(reason, 0) + 1
    run.decided_once = sum(1 for i in range(len(truth)) if per_vehicle[i] == 1)
    run.lost = sum(1 for i in range(len(truth)) if per_vehicle[i] == 0)
    run.duplicated = sum(1 for i in range(len(truth)) if per_vehicle[i] > 1)


def _journal(path: Path) -> tuple[list[Decision], list[int], str]:
    with Journal(path, readonly=True) as journal:
        decisions = journal.since(0, limit=1_000_000)
    with sqlite3.connect(path) as conn:
        seqs = [row[0] for row in conn.execute("SELECT seq FROM decisions ORDER BY seq")]
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    return decisions, seqs, integrity


def kill_run(
    vehicles: int = 150,
    driver_kills: int = 20,
    service_kills: int = 20,
    speedup: float = 8.0,
    seed: int = 7,
    timeout_s: float = 900.0,
) -> KillRun:
    """One run: ``vehicles`` through a simulated lane, the driver and the service SIGKILLed that many times."""
    t_start = time.monotonic()
    (port,) = free_ports(1)
    dep = Deployment(1, rpm_urls=[f"socket://127.0.0.1:{port}"])
    truth_path = dep.dir / "truth.jsonl"
    run = KillRun(vehicles, driver_kills, service_kills)
    try:
        dep.start_service()
        driver_args = ("driver", "rpm", "--config", str(dep.config_path), "--lane", "lane1", "--backoff-max", "0.2")
        driver = dep.spawn("driver", *driver_args)
        sim_args = ["sim", "lane", "--port", str(port), "--seed", str(seed), "--count", str(vehicles)]
        sim_args += ["--speedup", str(speedup), "--truth", str(truth_path), "--wait-client", "60"]
        sim = dep.spawn("sim", *sim_args)
        kills = []
        for i in range(max(driver_kills, service_kills)):
            kills += ["driver"] * (i < driver_kills) + ["service"] * (i < service_kills)
        deadline = time.monotonic() + timeout_s
        for n, what in enumerate(kills):
            due = (n + 0.5) * vehicles / len(kills)
            while _lines(truth_path) < due and sim.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if sim.poll() is not None:
                break
            if what == "driver":
                driver = _restart(dep, driver, "driver", driver_args)
            else:
                service = next(p for p in reversed(dep.procs) if "run" in p.args[5:6])
                service.send_signal(signal.SIGKILL)
                service.wait(10)
                dep.start_service()
            _progress(dep, sim, deadline)  # the lane decides again before the next kill
        while sim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < SETTLE_S and time.monotonic() < deadline:
            seq = dep.health().get("journal", {}).get("last_seq", -1)
            if seq != last:
                last, quiet_since = seq, time.monotonic()
            time.sleep(0.5)
    finally:
        dep.close()
    truth = [json.loads(line) for line in truth_path.read_text().splitlines() if line.strip()]
    decisions, seqs, run.integrity = _journal(Path(dep.config.service.journal))
    run.seq_contiguous = seqs == list(range(1, len(seqs) + 1))
    run.vehicles = len(truth)
    score(truth, decisions, run)
    run.duration_s = time.monotonic() - t_start
    return run


def _progress(dep: Deployment, sim: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait until the service journals a new decision (or the simulator is done)."""
    first = dep.health().get("journal", {}).get("last_seq", 0)
    while sim.poll() is None and time.monotonic() < deadline:
        if dep.health().get("journal", {}).get("last_seq", 0) > first:
            return
        time.sleep(0.1)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _restart(
    dep: Deployment, proc: subprocess.Popen[bytes], name: str, args: tuple[str, ...]
) -> subprocess.Popen[bytes]:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return dep.spawn(name, *args)


def _report(title: str, run: KillRun) -> None:
    print(f"{title}: kills driver {run.driver_kills}, service {run.service_kills} (SIGKILL, restarted at once)")
    print(f"  decisions {run.decisions}: vehicles decided exactly once {run.decided_once}/{run.vehicles}")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(run.reasons.items())) or "-"
    print(f"  INCOMPLETE {run.incomplete} ({reasons})")
    print(f"  lost {run.lost}, duplicated {run.duplicated}, merged {run.merged}, unmatched {run.unmatched}")
    print(f"  seq contiguous {run.seq_contiguous}, integrity_check {run.integrity}, {run.duration_s:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vehicles", type=int, default=150)
    parser.add_argument("--driver-kills", type=int, default=20)
    parser.add_argument("--service-kills", type=int, default=20)
    parser.add_argument("--speedup", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without kills")
    args = parser.parse_args()
    print(f"{args.vehicles} vehicles, seed {args.seed}, speedup {args.speedup:g}")
    if not args.no_baseline:
        _report("baseline, same traffic", kill_run(args.vehicles, 0, 0, args.speedup, args.seed))
    run = kill_run(args.vehicles, args.driver_kills, args.service_kills, args.speedup, args.seed)
    _report("kill run", run)
    print("OK" if run.ok else "FAILED")
    return 0 if run.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
