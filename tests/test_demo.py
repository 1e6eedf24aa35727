"""`lanewatch demo` as a newcomer runs it: what it prints works once printed; Ctrl-C or a kill stops every part."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

START_S = 240.0
"""Upper bound (s) for the demo to print its console's users: the first start compiles the kernels."""


def _parts(workdir: Path, demo: int) -> list[int]:
    """Pids of the live processes other than the ``demo`` with ``workdir`` in their command line (its parts)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == demo:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(workdir).encode() in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def _wait(what: str, condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _start(workdir: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """The demo with one lane and its console, read until it printed its users' passwords."""
    exe = str(Path(sys.executable).with_name("lanewatch"))
    proc = subprocess.Popen(
        [exe, "demo", "--lanes", "1", "--speedup", "5", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + START_S
    assert proc.stdout is not None
    while not any("user supervisor" in line for line in lines):
        assert time.monotonic() < deadline and proc.poll() is None, "".join(lines) + proc.stderr.read()
        lines.append(proc.stdout.readline())
    return proc, lines


def _console_answers(lines: list[str]) -> bool:
    address = next(m.group(1) for line in lines if (m := re.search(r"web console:\s+https://(\S+)/", line)))
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


def test_the_demo_prints_working_commands_and_ctrl_c_stops_every_part(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc, lines = _start(workdir)
    try:
        text = "".join(lines)
        # printed once the console answers, with both users, and commands that name the real executable
        assert _console_answers(lines), text
        assert re.search(r"user operator, password \S+ \(role operator\)", text), text
        status = re.search(r"health of every part:\s+(\S+) status --config (\S+)", text)
        assert status and Path(status.group(1)).is_file() and Path(status.group(2)).is_file(), text
        parts = _parts(workdir, proc.pid)
        assert len(parts) >= 6, parts  # service, console, two simulators, two drivers
        shown = subprocess.run([status.group(1), "status", "--config", status.group(2)], capture_output=True, text=True)
        assert re.search(r"^lane1\s", shown.stdout, re.M), shown.stdout + shown.stderr
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert "exited; see the logs" not in err and "killing it" not in err, err
    _wait("every part to stop", lambda: not _parts(workdir, proc.pid), 30.0)


def test_a_killed_demo_takes_its_parts_with_it(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc, _ = _start(workdir)
    assert _parts(workdir, proc.pid)
    proc.kill()
    proc.wait()
    _wait("every part to stop", lambda: not _parts(workdir, proc.pid), 60.0)

