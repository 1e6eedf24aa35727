"""``lanewatch demo``: simulated lanes, their drivers, the service, and a live view of decisions.

Everything runs as the real processes of a deployment (``lanewatch sim lane`` and ``lanewatch sim
xray``, ``lanewatch driver rpm`` and ``lanewatch driver xray`` per lane, ``lanewatch run``) on
loopback ports, with a configuration and the bus's CURVE keys (service, every driver, this view's
console key, as ``lanewatch keys init`` makes them) written to the work directory; this process
follows the alert bus and prints each decision as it is journaled. The operators' web console runs
over the same lanes (HTTPS with a self-signed certificate; an operator and a supervisor whose passwords are
printed once the console answers).
Every lane has both sensors: the X-ray simulator runs with the lane simulator's seed, mix, gap and
speedup, so it images the vehicles whose radiation the portal reports, and the decisions are fused.
Ctrl-C stops them all.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zoneinfo
from pathlib import Path

import zmq

from lanewatch.edge.bus.security import Keys
from lanewatch.edge.commands import alerts
from lanewatch.edge.config import Config, load
from lanewatch.edge.decisions.decision import Decision, ProvisionalAlarm
from lanewatch.edge.decisions.subscriber import AlertSubscriber
from lanewatch.edge.ops import keyfiles

WINDOWS_KEV = "30,400,3000"
DEMO_MIX = (
    "none=0.40,k40-fertilizer=0.12,ceramics=0.05,tc99m=0.04,i131=0.03,cs137=0.09,co60=0.05,"
    "heu=0.05,pu=0.05,shielded-cs137=0.07,shielded-co60=0.05"
)
DEMO_USERS = ("operator", "supervisor")
"""The console users the demo makes, each with the role of its name; their passwords are new on every start and
printed (a supervisor also reads the reports and amends adjudications)."""
PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal a process gets when its parent dies."""
READY_TIMEOUT_S = 120.0
"""Longest wait (s) for the service to answer: the first start compiles the kernels."""
STOP_TIMEOUT_S = 15.0
"""Longest wait (s) for every part together to stop after SIGTERM before the rest are killed."""


def free_ports(count: int, consecutive: bool = False) -> list[int]:
    """Free loopback TCP ports (``consecutive``: a run of adjacent ones)."""
    for _ in range(200):
        with contextlib.ExitStack() as stack:
            socks = []
            first = socket.socket()
            stack.enter_context(first)
            first.bind(("127.0.0.1", 0))
            socks.append(first)
            base = first.getsockname()[1]
            try:
                for i in range(1, count):
                    s = socket.socket()
                    stack.enter_context(s)
                    s.bind(("127.0.0.1", base + i if consecutive else 0))
                    socks.append(s)
            except OSError:
                continue
            return [s.getsockname()[1] for s in socks]
    raise OSError("no free loopback ports")


XRAY_PIXELS = 512
"""Detector pixels of the simulated scanners (9 mm pitch): enough to see a shield, light on two cores."""
GAP_S = 4.0
"""Empty time (s, simulated) between vehicles, the same for both simulators of a lane."""


def host_zone() -> str:
    """This machine's IANA time zone: ``TZ`` when it names one, else where /etc/localtime links into the zone
    database; UTC when neither says."""
    names = [os.environ.get("TZ", "").removeprefix(":")]
    with contextlib.suppress(OSError):
        names.append(os.readlink("/etc/localtime").partition("zoneinfo/")[2])
    for name in names:
        if name:
            with contextlib.suppress(ValueError, zoneinfo.ZoneInfoNotFoundError):
                zoneinfo.ZoneInfo(name)
                return name
    return "UTC"


def write_config(path: Path, lanes: int, sim_base: int, xray_base: int) -> None:
    """The demo's configuration at ``path``: loopback ports, keys beside it, the console in this machine's time zone
    (times are shown in it, as at a site)."""
    ingest, alerts, query, http, console, console_http, *drivers = free_ports(6 + 2 * lanes)
    lines = [
        "# lanewatch demo configuration (written by `lanewatch demo`)",
        "[service]",
        f'journal = "{path.parent / "journal.db"}"',
        f'http = "127.0.0.1:{http}"',
        "",
        "[bus]",
        f'ingest = "tcp://127.0.0.1:{ingest}"',
        f'alerts = "tcp://127.0.0.1:{alerts}"',
        f'query = "tcp://127.0.0.1:{query}"',
        f'keys = "{path.parent / "keys"}"',
        "",
        "[detection]",
        f"energy_windows_kev = [{WINDOWS_KEV.replace(',', ', ')}]",
        "",
        "[console]",
        f'listen = "127.0.0.1:{console}"',
        f'http = "127.0.0.1:{console_http}"',
        f'certificate = "{path.parent / "console-cert.pem"}"',
        f'key = "{path.parent / "console-key.pem"}"',
        f'timezone = "{host_zone()}"',
    ]
    for i in range(lanes):
        lines += [
            "",
            "[[lanes]]",
            f'id = "lane{i + 1}"',
            f'rpm = "socket://127.0.0.1:{sim_base + i}"',
            f'driver_http = "127.0.0.1:{drivers[i]}"',
            f'xray = "127.0.0.1:{xray_base + i}"',
            f'xray_http = "127.0.0.1:{drivers[lanes + i]}"',
        ]
    path.write_text("\n".join(lines) + "\n")


def _console_site(config: Config) -> dict[str, str]:
    """The console's self-signed certificate and the demo's users with fresh passwords; {name: password}."""
    from lanewatch.edge.console.users import UserStore, users_path
    from lanewatch.edge.ops.units import self_signed_pair

    cert, key = Path(config.console.certificate), Path(config.console.key)
    if not cert.exists() or not key.exists():
        cert_pem, key_pem = self_signed_pair("localhost")
        cert.write_bytes(cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(key_pem)
    passwords = {name: secrets.token_urlsafe(9) for name in DEMO_USERS}
    store = UserStore(users_path(config))
    try:
        for name, password in passwords.items():
            if store.get(name) is None:
                store.add(name, name, password, by="demo")
            else:
                store.set_password(name, password, by="demo")
    finally:
        store.close()
    return passwords


def _die_with_parent() -> None:
    """In a child before it runs: SIGTERM to it when the demo dies (Linux's PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_http(address: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{address}/healthz", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(0.3)
    return False


def demo(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lanewatch-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "lanewatch.toml"
    ports = free_ports(2 * args.lanes, consecutive=True)
    sim_base, xray_base = ports[0], ports[args.lanes]
    write_config(cfg_path, args.lanes, sim_base, xray_base)
    config = load(cfg_path)
    for info in keyfiles.site_keys(config.lanes):  # the bus is authenticated here as at a lane
        if not (Path(config.bus.keys) / "secret" / f"{info.name}.key_secret").exists():
            keyfiles.create(Path(config.bus.keys), info)
    users = _console_site(config) if args.console else {}
    me = [sys.executable, "-m", "lanewatch.edge", "--log-level", "INFO"]
    same = ["--lanes", str(args.lanes), "--seed", str(args.seed), "--mix", DEMO_MIX]
    same += ["--gap", str(GAP_S), "--speedup", str(args.speedup)]
    sim = ["sim", "lane", *same, "--port", str(sim_base), "--windows-kev", WINDOWS_KEV]
    sim += ["--truth", str(workdir / "truth.jsonl")]
    xsim = ["sim", "xray", *same, "--port", str(xray_base), "--pixels", str(XRAY_PIXELS)]
    xsim += ["--truth", str(workdir / "xray-truth.jsonl")]
    commands = {
        "service": [*me, "run", "--config", str(cfg_path)],
        "sim": [*me, *sim],
        "xray-sim": [*me, *xsim],
    }
    if users:
        commands["console"] = [*me, "console", "--config", str(cfg_path)]
    for lane in config.lanes:
        for driver in ("rpm", "xray"):
            commands[f"driver-{driver}-{lane.id}"] = [
                *me, "driver", driver, "--config", str(cfg_path), "--lane", lane.id
            ]  # fmt: skip
    exe = shutil.which("lanewatch") or str(Path(sys.executable).with_name("lanewatch"))
    print(f"lanewatch demo: {args.lanes} simulated lanes with a portal monitor and an X-ray scanner each")
    print(f"  config, journal and logs in {workdir}")
    print(f"  follow from another terminal: {exe} alerts --config {cfg_path} --follow")
    print(f"  health of every part:         {exe} status --config {cfg_path}")
    print(f"  evidence of a decision:       {exe} evidence SEQ --out DIR --config {cfg_path}")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # Ctrl-C stops the demo even when it was started with SIGINT ignored (a background job of a shell script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:

        def start(name: str) -> None:
            log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the child
            # Ctrl-C reaches the demo alone, which then stops every part in order; a demo killed outright takes
            # its parts with it.
            procs[name] = subprocess.Popen(
                commands[name],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

        # The service first, ready before the devices stream: a lane's first vehicles are then decided with
        # both sensors, not lost to a first start that compiles the kernels.
        start("service")
        print("  compiling kernels and starting the service (the first run takes longer)...")
        if not _wait_http(config.service.http, time.monotonic() + READY_TIMEOUT_S):
            print(f"lanewatch demo: the service did not start; see {workdir / 'service.log'}", file=sys.stderr)
            return 1
        for name in commands:
            if name != "service":
                start(name)
        if users:
            if not _wait_http(config.console.http, time.monotonic() + READY_TIMEOUT_S):
                print(f"lanewatch demo: the console did not start; see {workdir / 'console.log'}", file=sys.stderr)
                return 1
            print(f"  web console:                  https://{config.console.listen}/  (self-signed certificate)")
            for name, password in users.items():
                print(f"                                user {name}, password {password} (role {name})")
        print("  live decisions (Ctrl-C to stop):\n")
        return _follow(config, args.duration, procs)
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        # Every part stops at once: one deadline for all of them, not one per part in turn.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for name, proc in procs.items():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                print(f"  {name} did not stop in {STOP_TIMEOUT_S:.0f} s; killing it", file=sys.stderr)
                proc.kill()
                proc.wait()
        print(f"\nlanewatch demo stopped; journal kept at {config.service.journal}")


def _follow(config: Config, duration: float, procs: dict[str, subprocess.Popen[bytes]]) -> int:
    """The live view: ``lanewatch alerts --follow``'s table (:class:`lanewatch.edge.commands.alerts.Table`) of every
    decision and provisional alarm, until ``duration`` (s; 0: until stopped) passed or a part of the demo exited."""
    table = alerts.Table.of(config, color=sys.stdout.isatty())
    print(table.header(), flush=True)
    ctx = zmq.Context()
    sub = AlertSubscriber(ctx, config.bus.alerts, config.bus.query, since=0, keys=Keys.load(config.bus, "console"))
    end = time.monotonic() + duration if duration else None
    try:
        for item in sub.decisions(follow=True, timeout_s=1.0, provisional=True):
            if isinstance(item, Decision | ProvisionalAlarm):
                print(table.line(item), flush=True)
            dead = [name for name, p in procs.items() if p.poll() is not None]
            if dead:
                logs = os.path.dirname(config.service.journal)
                print(f"lanewatch demo: {', '.join(dead)} exited; see the logs in {logs}", file=sys.stderr)
                return 1
            if end is not None and time.monotonic() > end:
                return 0
    finally:
        sub.close()
        ctx.term()
    return 0
