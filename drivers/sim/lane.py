"""A simulated radiation portal lane that speaks the Rapiscan-style RPM line protocol over TCP or a pty.

The physics comes from :class:`lanewatch.drivers.sim.physics.Traffic`; this module plays the device: it
tracks its own background, applies the fielded alarm rules, and writes the lines a real RPM
writes, paced in (optionally compressed) real time, to every connected client.

Line protocol (as read by the Rapiscan driver of the OSCAR project, github.com/Botts-Innovative-Research/
osh-oakridge-modules, sensors/sensorhub-driver-rapiscan, and written by Sandia's RPM Lane Simulator,
github.com/sandialabs/SRLS, src/lib/RPMSimulator.ts; a capture of SRLS in shared/data/rpm shows the timing)
    ASCII, comma-separated, CR LF terminated: ``TYPE,dddddd,dddddd,dddddd,dddddd`` with counts
    zero-padded to 6 digits, channels master-upper, master-lower, slave-upper, slave-lower.
    With K energy windows (a lanewatch extension) GB/GL/GH/GS/GA carry 4*K fields, window-major:
    ``GS,c1w1,c2w1,c3w1,c4w1,c1w2,...``.

    - Unoccupied: ``NB`` then ``GB`` (counts per second per channel, a 1 s reading) right after
      each occupancy ends and every ``background_interval_s`` (5 s) while the lane stays empty;
      ``GL``/``GH`` instead of ``GB`` when a channel's gross background is below 50 / above 400 cps,
      ``NH`` instead of ``NB`` when a neutron channel is above 20 cps.
    - Occupied: ``GS`` every 0.2 s (``GA`` when the device's n-sigma rule fires: the last 1 s of
      gross counts over the 4 channels above BG + n sqrt(BG), n = 5 by default); ``NS`` every 1 s
      (``NA`` when the 4-tube sum exceeds the tracked neutron background by more than
      ``neutron_threshold`` counts); ``SP,<s per foot>,<mph>,<km/h>,000000`` every 6 gamma samples;
      ``GX,<occupancy counter>,<neutron background cps * 1000, 4 tubes summed>,000000,000000`` at
      the end (counter 000000 throughout with ``gx_zero``, as SRLS's auto mode sends it).
    - ``SG1``-``SG3``, ``SN1``, ``SN2`` setup lines once to each client on connect.
    - ``TT`` / ``TC`` (tamper on / cleared) in a gap between vehicles, at ``tamper_rate`` per gap.

The device's background is the mean of its last 4 background readings (20 s). A client that
connects mid-occupancy sees the stream from there, as with a real device. The pty is a real
pseudo-terminal in raw mode; while no one reads it, what does not fit in its buffer is discarded,
as bytes on an unread serial line are lost.

Ground truth: with ``truth_path`` one JSON line per occupancy (the passage truth plus
``device_occupancy``, ``start``/``end`` wall clock ISO 8601 UTC, and the device's own alarms) is
appended and flushed as the occupancy's GX line is sent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import termios
import threading
import time
import tty
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from lanewatch.drivers.sim.fanout import StreamingDevice, TcpFanout
from lanewatch.drivers.sim.physics import (
    GAMMA_DT_S,
    HOLD_IN_S,
    NEUTRON_DT_S,
    SOURCES,
    VARIANTS,
    Passage,
    Physics,
    Traffic,
    window_edges,
)

log = logging.getLogger(__name__)

GAMMA_FAULT_LOW_CPS = 50
"""A gamma channel's background below this (cps) is reported as GL."""
GAMMA_FAULT_HIGH_CPS = 400
"""A gamma channel's background above this (cps) is reported as GH."""
NEUTRON_FAULT_HIGH_CPS = 20
"""A neutron channel's background above this (cps) is reported as NH."""
FOOT_M = 0.3048
_SAMPLES_PER_SECOND = round(1.0 / GAMMA_DT_S)
_SAMPLES_PER_SPEED = 6
_BACKGROUND_MEMORY = 4
_FIELD_MAX = 999_999


def _field(value: float) -> str:
    return f"{min(max(round(float(value)), 0), _FIELD_MAX):06d}"


def counts_line(kind: str, counts: np.ndarray) -> str:
    """One protocol line: ``kind`` then the counts, channels within windows (window-major) if 2-D (4, K)."""
    flat = np.asarray(counts).T.reshape(-1)
    return ",".join([kind, *(_field(c) for c in flat)])


def speed_line(speed_kmh: float) -> str:
    """``SP,<s to cross one foot>,<mph>,<km/h>,000000`` as in the SRLS capture."""
    crossing_s = FOOT_M / (speed_kmh / 3.6)
    return f"SP,{crossing_s:.4f},{speed_kmh / 1.609344:06.3f},{speed_kmh:06.2f},000000"


@dataclass
class _Event:
    """Lines due at simulated time ``t_s`` (s), and what they mean for the truth record."""

    t_s: float
    lines: list[str]
    starts: bool = False
    ends: dict[str, Any] | None = None


@dataclass
class _DeviceState:
    gamma_bg: deque[np.ndarray] = field(default_factory=lambda: deque(maxlen=_BACKGROUND_MEMORY))
    neutron_bg: deque[np.ndarray] = field(default_factory=lambda: deque(maxlen=_BACKGROUND_MEMORY))
    occupancy: int = 0

    def gamma_bg_cps(self) -> float:
        """Tracked gross gamma background, 4 channels summed (cps)."""
        return float(np.mean([g.sum() for g in self.gamma_bg]))

    def neutron_bg_cps(self) -> float:
        """Tracked neutron background, 4 tubes summed (cps)."""
        return float(np.mean([n.sum() for n in self.neutron_bg]))


class LaneSimulator(StreamingDevice):
    """One simulated lane serving the RPM line protocol to TCP clients and/or a pty.

    ``gap_s`` is the empty time between occupancies (s, simulated); ``speedup`` compresses time
    (1 = real time, ``math.inf`` = as fast as the clients read); ``count`` stops after that many
    occupancies (``None`` = forever); ``tamper_rate`` is the probability of a TT/TC pair per gap.
    ``n_sigma`` and ``neutron_threshold`` set the device's own alarm rules (GA, NA).
    """

    thread_name = "lane-sim"

    def __init__(
        self,
        seed: int = 0,
        windows_kev: Sequence[float] | None = None,
        mix: Mapping[str, float] | None = None,
        gap_s: float = 4.0,
        speedup: float = 1.0,
        count: int | None = None,
        truth_path: str | os.PathLike[str] | None = None,
        gx_zero: bool = False,
        tamper_rate: float = 0.0,
        *,
        n_sigma: float = 5.0,
        neutron_threshold: float = 12.0,
        background_interval_s: float = 5.0,
        background_scale: float = 1.0,
        physics: Physics | None = None,
    ) -> None:
        if not speedup > 0:
            raise ValueError(f"speedup must be positive, got {speedup!r}")
        if gap_s < 0 or not background_interval_s > 0:
            raise ValueError("gap_s must be >= 0 and background_interval_s > 0")
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0 or None, got {count!r}")
        if not 0.0 <= tamper_rate <= 1.0:
            raise ValueError(f"tamper_rate must be a probability, got {tamper_rate!r}")
        self.seed = seed
        self.traffic = Traffic(seed, windows_kev, mix, background_scale=background_scale, physics=physics or Physics())
        self.windows_kev = self.traffic.windows_kev
        self.gap_s = float(gap_s)
        self.speedup = float(speedup)
        self.count = count
        self.truth_path = Path(truth_path) if truth_path is not None else None
        self.gx_zero = gx_zero
        self.tamper_rate = tamper_rate
        self.n_sigma = n_sigma
        self.neutron_threshold = neutron_threshold
        self.background_interval_s = float(background_interval_s)
        self._rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
        self._device = _DeviceState()

        super().__init__()
        self._tcp = TcpFanout(f"lane simulator (seed {seed})", greeting=self._setup_bytes, nodelay=True)
        self._lock = threading.Lock()
        """Guards the ptys."""
        self._ptys: list[tuple[int, int]] = []
        self._all_sent = threading.Event()
        self.occupancies_sent = 0
        """Occupancies whose GX line has been sent."""
        self.lines_dropped = 0
        """Lines a pty could not take because no one was reading it."""

    # --- serving --------------------------------------------------------------------------
    def serve_pty(self) -> str:
        """Open a pseudo-terminal in raw mode and stream into it; returns the device path to open."""
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        with self._lock:
            self._ptys.append((master, slave))
            self._write_pty(master, slave, self._setup_bytes())
        return os.ttyname(slave)

    def _setup_bytes(self) -> bytes:
        lld, uld = self.windows_kev[0], self.windows_kev[-1]
        hold_in = round(HOLD_IN_S / GAMMA_DT_S)
        lines = [
            f"SG1,{_field(GAMMA_FAULT_HIGH_CPS)},{_field(GAMMA_FAULT_LOW_CPS)},{_field(_SAMPLES_PER_SECOND)},"
            f"{_field(hold_in)},{self.n_sigma:06.2f}",
            f"SG2,000004,{_field(lld)},{_field(uld)},000000,000001,000100",
            f"SG3,{_field(lld)},{_field(uld)},{_field(self.background_interval_s * _BACKGROUND_MEMORY)},"
            f"{self.n_sigma:06.2f},000100",
            f"SN1,{_field(NEUTRON_FAULT_HIGH_CPS)},{_field(_SAMPLES_PER_SECOND)},000000,"
            f"{_field(self.neutron_threshold)},000001,{_field(self.background_interval_s * _BACKGROUND_MEMORY)}",
            "SN2,000070,001700",
        ]
        return "".join(line + "\r\n" for line in lines).encode("ascii")

    def _write_pty(self, master: int, slave: int, data: bytes) -> None:
        """Write into the pty; if its buffer is full (no reader), discard what is buffered and retry once."""
        for attempt in range(2):
            try:
                written = os.write(master, data)
            except BlockingIOError:
                written = 0
            except OSError:
                return
            data = data[written:]
            if not data:
                return
            if attempt == 0:
                termios.tcflush(slave, termios.TCIFLUSH)
        self.lines_dropped += data.count(b"\n")

    def _broadcast(self, data: bytes) -> None:
        self._tcp.broadcast(data)
        with self._lock:
            for master, slave in self._ptys:
                self._write_pty(master, slave, data)

    # --- running --------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop streaming, close every client, listener and pty. Safe to call more than once."""
        super().stop()
        with self._lock:
            for master, slave in self._ptys:
                for fd in (master, slave):
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._ptys = []

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``count`` occupancies were sent (or the simulator stopped); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._all_sent.is_set() or self._stop.is_set():
                return self._all_sent.is_set() or self.count is None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._all_sent.wait(0.05 if remaining is None else min(0.05, remaining))

    def _run(self) -> None:
        t0 = time.monotonic()
        truth_file: TextIO | None = None
        start_wall = ""
        try:
            if self.truth_path is not None:
                truth_file = self.truth_path.open("a", encoding="utf-8")
            for event in self._script():
                if math.isfinite(self.speedup):
                    delay = t0 + event.t_s / self.speedup - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
                if self._stop.is_set():
                    return
                self._broadcast("".join(line + "\r\n" for line in event.lines).encode("ascii"))
                now = datetime.now(UTC).isoformat(timespec="milliseconds")
                if event.starts:
                    start_wall = now
                if event.ends is not None:
                    if truth_file is not None:
                        truth_file.write(json.dumps({**event.ends, "start": start_wall, "end": now}) + "\n")
                        truth_file.flush()
                    self.occupancies_sent += 1
            self._all_sent.set()
        finally:
            if truth_file is not None:
                truth_file.close()

    # --- the device -----------------------------------------------------------------------
    def _script(self) -> Iterator[_Event]:
        """Every line the device sends, with its simulated time (s); ends after ``count`` occupancies."""
        t = 0.0
        sent = 0
        while self.count is None or sent < self.count:
            yield from self._gap(t, t + self.gap_s)
            t += self.gap_s
            passage = self.traffic.next_passage()
            yield from self._occupancy(t, passage)
            t += len(passage.gamma) * GAMMA_DT_S
            sent += 1
        yield _Event(t, self._background_lines())

    def _background_lines(self) -> list[str]:
        gamma, neutron = self.traffic.background_line()
        line_s = self.traffic.physics.background_line_s
        self._device.gamma_bg.append(gamma / line_s)
        self._device.neutron_bg.append(neutron / line_s)
        gross = gamma.sum(axis=1) / line_s
        g_kind = "GL" if gross.min() < GAMMA_FAULT_LOW_CPS else "GH" if gross.max() > GAMMA_FAULT_HIGH_CPS else "GB"
        n_kind = "NH" if neutron.max() / line_s > NEUTRON_FAULT_HIGH_CPS else "NB"
        return [counts_line(n_kind, neutron), counts_line(g_kind, gamma)]

    def _gap(self, t: float, end: float) -> Iterator[_Event]:
        """Background lines from ``t`` to ``end`` (s), maybe a tamper pair; advances the traffic clock to ``end``."""
        events = []
        reading_t = t
        while True:
            events.append(_Event(reading_t, self._background_lines()))
            step = min(self.background_interval_s, end - reading_t)
            self.traffic.idle(step)
            reading_t += step
            if reading_t >= end:
                break
        if self.gap_s > 0 and self._rng.random() < self.tamper_rate:
            on, off = sorted(self._rng.uniform(t, end, 2))
            events += [_Event(on, ["TT,000000,000000,000000,000000"]), _Event(off, ["TC,000000,000000,000000,000000"])]
        yield from sorted(events, key=lambda e: e.t_s)

    def _occupancy(self, t: float, passage: Passage) -> Iterator[_Event]:
        device = self._device
        device.occupancy += 1
        bg_1s = device.gamma_bg_cps()
        n_bg = device.neutron_bg_cps()
        gross = passage.gamma.sum(axis=(1, 2))
        gamma_alarm = neutron_alarm = False
        n = len(passage.gamma)
        for j in range(n):
            window = gross[max(0, j + 1 - _SAMPLES_PER_SECOND) : j + 1]
            expected = bg_1s * GAMMA_DT_S * len(window)
            alarm = (window.sum() - expected) / math.sqrt(expected) > self.n_sigma
            gamma_alarm |= alarm
            lines = [counts_line("GA" if alarm else "GS", passage.gamma[j])]
            if (j + 1) % _SAMPLES_PER_SECOND == 0 or j == n - 1:
                k = j // _SAMPLES_PER_SECOND
                n_alarm = passage.neutron[k].sum() - n_bg * NEUTRON_DT_S > self.neutron_threshold
                neutron_alarm |= n_alarm
                lines.append(counts_line("NA" if n_alarm else "NS", passage.neutron[k]))
            if (j + 1) % _SAMPLES_PER_SPEED == 0:
                lines.append(speed_line(passage.speed_kmh))
            yield _Event(t + (j + 1) * GAMMA_DT_S, lines, starts=j == 0)
        counter = 0 if self.gx_zero else device.occupancy % (_FIELD_MAX + 1)
        gx = f"GX,{counter:06d},{_field(n_bg * 1000.0)},000000,000000"
        truth = {
            **passage.truth,
            "device_occupancy": device.occupancy,
            "device_gamma_alarm": bool(gamma_alarm),
            "device_neutron_alarm": bool(neutron_alarm),
        }
        yield _Event(t + n * GAMMA_DT_S, [gx], ends=truth)


# --- command line --------------------------------------------------------------------------
DEFAULT_PORT = 7700


def _windows_arg(text: str) -> list[float]:
    try:
        return list(window_edges([float(x) for x in text.split(",") if x.strip()]))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected at least 2 comma-separated increasing keV edges like 30,400,3000, got {text!r}"
        ) from None


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, weight = item.partition("=")
        if not sep or name not in SOURCES:
            raise argparse.ArgumentTypeError(
                f"expected NAME=WEIGHT with NAME one of {', '.join(SOURCES)}; got {item!r}"
            )
        try:
            mix[name] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {name!r} is not a number: {weight!r}") from None
        if not mix[name] >= 0:
            raise argparse.ArgumentTypeError(f"weight of {name!r} must be non-negative")
    if not mix or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError(f"mix needs at least one positive weight, got {text!r}")
    return mix


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lanewatch sim lane``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help=f"TCP port of the first lane (default {DEFAULT_PORT})")
    parser.add_argument("--pty", action="store_true", help="serve a pseudo-terminal (no TCP unless --port is given)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the first lane (default 0)")
    parser.add_argument("--windows-kev", type=_windows_arg, default=None, help="energy window edges, e.g. 30,400,3000")
    parser.add_argument("--mix", type=parse_mix, default=None, help="scenario weights, e.g. none=0.5,cs137=0.1")
    parser.add_argument("--gap", type=float, default=4.0, help="seconds between occupancies (default 4)")
    parser.add_argument("--speedup", type=float, default=1.0, help="time compression, 1 = real time (default 1)")
    parser.add_argument("--count", type=int, default=None, help="stop after this many occupancies per lane")
    parser.add_argument("--truth", type=Path, default=None, help="JSON-lines ground truth file, one line per occupancy")
    parser.add_argument("--gx-zero", action="store_true", help="send every GX with counter 000000 (SRLS auto mode)")
    parser.add_argument("--tamper-rate", type=float, default=0.0, help="probability of a TT/TC pair per gap")
    parser.add_argument("--lanes", type=int, default=1, help="independent lanes on consecutive ports (default 1)")
    parser.add_argument(
        "--wait-client",
        type=float,
        default=0.0,
        metavar="S",
        help="start the traffic only once every lane has a TCP client, waiting at most S seconds (default 0)",
    )
    parser.add_argument(
        "--physics",
        choices=sorted(VARIANTS),
        default="default",
        help="physics variant: shadow profile, geometry, speeds, background, device conventions (default: default)",
    )


def truth_path_for(path: Path | None, lane: int, lanes: int) -> Path | None:
    """The truth file of lane ``lane``: ``path`` itself for one lane, else ``<stem>-<lane><suffix>``."""
    if path is None or lanes == 1:
        return path
    return path.with_name(f"{path.stem}-{lane}{path.suffix}")


def run(args: argparse.Namespace) -> int:
    """Serve ``args.lanes`` simulated lanes until ``--count`` occupancies were sent, or SIGINT/SIGTERM."""
    if args.lanes < 1 or (args.count is not None and args.count < 0) or not args.speedup > 0:
        print("lanewatch sim lane: --lanes must be >= 1, --count >= 0 and --speedup > 0")
        return 2
    serve_tcp = args.port is not None or not args.pty
    base_port = DEFAULT_PORT if args.port is None else args.port
    stop = threading.Event()
    sims: list[LaneSimulator] = []
    try:
        for lane in range(args.lanes):
            sim = LaneSimulator(
                seed=args.seed + lane,
                windows_kev=args.windows_kev,
                mix=args.mix,
                gap_s=args.gap,
                speedup=args.speedup,
                count=args.count,
                truth_path=truth_path_for(args.truth, lane, args.lanes),
                gx_zero=args.gx_zero,
                tamper_rate=args.tamper_rate,
                physics=VARIANTS[args.physics],
            )
            sims.append(sim)
            where = []
            if serve_tcp:
                port = sim.serve_tcp(args.host, base_port + lane if base_port else 0)
                where.append(f"socket://{args.host}:{port}")
            if args.pty:
                where.append(sim.serve_pty())
            truth = f", truth {sim.truth_path}" if sim.truth_path else ""
            print(f"lane {lane}: {' '.join(where)} (seed {sim.seed}{truth})", flush=True)
    except (OSError, ValueError) as exc:
        print(f"lanewatch sim lane: {exc}")
        for sim in sims:
            sim.stop()
        return 1

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    deadline = time.monotonic() + args.wait_client
    while serve_tcp and not stop.is_set() and time.monotonic() < deadline and not all(s.clients() for s in sims):
        stop.wait(0.02)
    for sim in sims:
        sim.start()
    try:
        while not stop.is_set():
            if args.count is not None and all(sim.wait(timeout=0) for sim in sims):
                break
            stop.wait(0.1)
    finally:
        for sim in sims:
            sim.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
