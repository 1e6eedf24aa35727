"""What the end-to-end benchmarks share: a service and drivers run as real processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from lanewatch.edge.commands.demo import free_ports
from lanewatch.edge.config import Config, load


def percentiles(values_s: list[float]) -> dict[str, float]:
    """p50, p99 and max of durations given in s, returned in ms."""
    a = np.asarray(values_s) * 1e3
    return {
        "n": len(a),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


class Deployment:
    """A config with ``lanes`` lanes in a temp dir, and the service started from it as a process."""

    def __init__(self, lanes: int, rpm_urls: list[str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lanewatch-bench-"))
        ingest, alerts, query, http = free_ports(4)
        lines = [
            "[service]",
            f'journal = "{self.dir / "journal.db"}"',
            f'http = "127.0.0.1:{http}"',
            "[bus]",
            f'ingest = "tcp://127.0.0.1:{ingest}"',
            f'alerts = "tcp://127.0.0.1:{alerts}"',
            f'query = "tcp://127.0.0.1:{query}"',
            "plaintext = true",
        ]
        for i in range(lanes):
            lines += ["[[lanes]]", f'id = "lane{i + 1}"']
            if rpm_urls:
                lines.append(f'rpm = "{rpm_urls[i]}"')
        self.config_path = self.dir / "lanewatch.toml"
        self.config_path.write_text("\n".join(lines) + "\n")
        self.config: Config = load(self.config_path)
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child; restarts append
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lanewatch.edge",
                "--log-level",
                os.environ.get("LANEWATCH_BENCH_LOG", "WARNING"),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.procs.append(proc)
        return proc

    def start_service(self, timeout_s: float = 120.0) -> None:
        service = self.spawn("service", "run", "--config", str(self.config_path))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and service.poll() is None:
            try:
                urllib.request.urlopen(f"http://{self.config.service.http}/healthz", timeout=1).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.2)
        log = (self.dir / "service.log").read_text()[-2000:]
        raise RuntimeError(f"service did not start; {self.dir / 'service.log'} ends with:\n{log}")

    def health(self) -> dict:
        try:
            with urllib.request.urlopen(f"http://{self.config.service.http}/healthz", timeout=2) as r:
                return json.load(r)
        except urllib.error.HTTPError as exc:
            return json.load(exc)

    def metric_sums(self) -> dict[str, float]:
        """The service's metrics now, each sample by name (labels dropped, values of the same name added)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://{self.config.service.http}/metrics", timeout=5) as r:
            text = r.read().decode()
        sums: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
        return sums

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
