"""Configuration: every key checked, every error names file, key and expectation."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from lanewatch.edge import config
from lanewatch.edge.config import Config, ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_defaults_parse_from_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    cfg = config.load(path)
    assert cfg.lanes == []
    assert cfg.windows == 1
    assert cfg.source == str(path)


def test_full_file() -> None:
    cfg = config.parse(
        """
        [service]
        journal = "/var/lib/lanewatch/journal.db"
        [bus]
        ingest = "tcp://127.0.0.1:9000"
        [detection]
        energy_windows_kev = [30, 400, 3000]
        baseline_n_sigma = 4
        [[lanes]]
        id = "north-1"
        rpm = "socket://10.0.0.5:1600"
        [[lanes]]
        id = "north-2"
        rpm = "/dev/ttyUSB0"
        baudrate = 19200
        """,
        "lanes.toml",
    )
    assert [lane.id for lane in cfg.lanes] == ["north-1", "north-2"]
    assert cfg.lane("north-2").baudrate == 19200
    assert cfg.windows == 2
    assert cfg.detection.baseline_n_sigma == 4.0 and isinstance(cfg.detection.baseline_n_sigma, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[lanes]]\nid = 3", r"bad\.toml: lanes\[0\]\.id: expected a string, got 3"),
        ('[bus]\ningst = "x"', r"bad\.toml: bus\.ingst: unknown key \(known: alerts, ingest, keys, plaintext, query\)"),
        (
            '[bus]\nplaintext = true\ningest = "tcp://0.0.0.0:7600"',
            r"bus\.ingest: plaintext = true is allowed only on loopback or ipc:// endpoints",
        ),
        ('[bus]\nplaintext = true\nalerts = "tcp://192.0.2.1:7601"', r"bus\.alerts: plaintext = true is allowed only"),
        ("[service]\nclock_skew_s = 0", r"service\.clock_skew_s: expected a number > 0"),
        ('[detection]\nbaseline_n_sigma = "5"', r"detection\.baseline_n_sigma: expected a number, got '5'"),
        ('[[lanes]]\nrpm = "loop://"', r"lanes\[0\]\.id: required key is missing"),
        ('[[lanes]]\nid = "a"\n[[lanes]]\nid = "a"', r"lanes\[1\]\.id: duplicate lane id 'a'"),
        ('[[lanes]]\nid = "a/b"', r"lanes\[0\]\.id: expected a non-empty id without '/' or spaces, got 'a/b'"),
        ('[[lanes]]\nid = ""', r"lanes\[0\]\.id: expected a non-empty id without '/' or spaces, got ''"),
        ("[detection]\nenergy_windows_kev = [400, 30]", r"energy_windows_kev: expected at least 3 increasing edges"),
        ("[detection]\ngamma_false_alarm_probability = 2", r"gamma_false_alarm_probability: expected a number < 1"),
        ("[service]\nstale_after_s = -1", r"bad\.toml: service\.stale_after_s: expected a number > 0(\.0)?, got -1"),
        ("[detection]\ndefault_speed_kmh = 0", r"detection\.default_speed_kmh: expected a number > 0(\.0)?, got 0"),
        (
            '[[lanes]]\nid = "a"\n[[lanes]]\nid = "b"\ngamma_channels = 0',
            r"bad\.toml: lanes\[1\]\.gamma_channels: expected an integer >= 1, got 0",
        ),
        ("[detection]\nbackground_halflife_s = nan", r"background_halflife_s: expected a number > 0.*, got nan"),
        ("[model]\nfinding_threshold = inf", r"model\.finding_threshold: expected a number <= 1000(\.0)?, got inf"),
        ("[detection]\nenergy_windows_kev = [30, nan, 3000]", r"energy_windows_kev\[1\]: expected a number"),
        ('[service]\nhttp = "notaport"', r"bad\.toml: service\.http: expected host:port, got 'notaport'"),
        ('[service]\nhttp = "127.0.0.1:65536"', r"service\.http: expected a port in 0\.\.65535"),
        ('[bus]\ningest = "tcp://127.0.0.1:70000"', r"bus\.ingest: expected a port in 0\.\.65535"),
        ('[bus]\nquery = "127.0.0.1:7602"', r"bus\.query: expected tcp://host:port, ipc://path or inproc://name"),
        ('[bus]\nalerts = "tcp://127.0.0.1:7600"', r"bus\.alerts: expected an address of its own, .*bus\.ingest binds"),
        ('[bus]\nalerts = "tcp://*:7600"', r"bus\.alerts: expected an address of its own"),
        (
            '[service]\nhttp = "localhost:9731"\n[[lanes]]\nid = "a"\ndriver_http = "127.0.0.1:9731"',
            r"lanes\[0\]\.driver_http: expected an address of its own, got '127\.0\.0\.1:9731', which service\.http",
        ),
        ('[[lanes]]\nid = "a"\nxray = "scanner"', r"lanes\[0\]\.xray: expected host:port"),
        ('source = "x"', r"bad\.toml: source: unknown key"),
        ("[model]\nfinding_threshold = 3\nalarm_threshold = 2", r"model\.finding_threshold: expected at most"),
        ("[service]\nhttp = 9730", r"service\.http: expected a string, got 9730"),
        ("lanes = 3", r"lanes: expected an array, got 3"),
        ("[service", r"bad\.toml: not valid TOML"),
        ("[detection]\nbaseline_neutron_threshold = true", r"expected an integer, got True"),
        ('[detection]\ndevice_alarm = "ignore"', r"detection\.device_alarm: Invalid enum value 'ignore'"),
    ],
)
def test_errors_name_file_key_and_expectation(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.parse(text, "bad.toml")


def test_every_address_may_be_off_or_ephemeral() -> None:
    cfg = config.parse(
        '[service]\nhttp = ""\n[bus]\ningest = "tcp://127.0.0.1:0"\nalerts = "tcp://127.0.0.1:0"\n'
        'query = "ipc:///tmp/q"\n[[lanes]]\nid = "a"\ndriver_http = "[::1]:9731"',
        "ok.toml",
    )
    assert [key for key, _ in config.bound_addresses(cfg)] == [
        "bus.ingest",
        "bus.alerts",
        "bus.query",
        "console.listen",
        "console.http",
        "lanes[0].driver_http",
    ]


def test_the_service_needs_lanes() -> None:
    with pytest.raises(ConfigError, match=r"empty\.toml: lanes: expected at least one \[\[lanes\]\] table"):
        config.parse("", "empty.toml").require_lanes()


def test_configuration_is_frozen_and_replaced_whole() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.source = "x"  # type: ignore[misc]
    assert msgspec.structs.replace(cfg, source="x").source == "x"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read configuration"):
        config.load(tmp_path / "nope.toml")


def test_unknown_lane_lookup() -> None:
    with pytest.raises(ConfigError, match="no \\[\\[lanes\\]\\] entry with id = 'x'"):
        Config().lane("x")


def _keys() -> list[str]:
    keys = []
    for section, cls in [
        ("service", config.ServiceConfig),
        ("bus", config.BusConfig),
        ("detection", config.DetectionConfig),
        ("lanes", config.LaneConfig),
        ("fusion", config.FusionConfig),
        ("model", config.ModelConfig),
        ("console", config.ConsoleConfig),
    ]:
        keys += [f"{section}.{f.name}" for f in msgspec.structs.fields(cls)]
    return keys


def test_readme_documents_every_key() -> None:
    text = README.read_text()
    missing = [key for key in _keys() if not re.search(rf"`{re.escape(key.split('.')[1])}`", text)]
    assert not missing, f"README.md does not document {missing}"


def _run_service(config_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "site.toml"
    path.write_text(f'[service]\njournal = "{tmp_path / "journal.db"}"\nhttp = ""\n' + config_text)
    cmd = [sys.executable, "-m", "lanewatch.edge", "run", "--config", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[bus]\nalerts = "tcp://127.0.0.1:7600"\n[[lanes]]\nid = "a"', r"bus\.alerts: expected an address of its own"),
        ("", r"lanes: expected at least one \[\[lanes\]\] table"),
    ],
)
def test_service_refuses_a_bad_file_before_creating_or_binding_anything(
    tmp_path: Path, text: str, message: str
) -> None:
    proc = _run_service(text, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert re.search(rf"configuration error: {re.escape(str(tmp_path))}/site\.toml: {message}", proc.stderr)
    assert not (tmp_path / "journal.db").exists()


def test_a_bind_failure_names_the_key_and_the_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        proc = _run_service(f'[bus]\nquery = "{address}"\nplaintext = true\n[[lanes]]\nid = "a"', tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"site.toml: bus.query: cannot bind the query endpoint {address}" in proc.stderr


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("tcp://127.0.0.1:7600", True),
        ("tcp://127.0.0.53:7600", True),
        ("tcp://[::1]:7600", True),
        ("tcp://localhost:7600", True),
        ("ipc:///run/lanewatch/ingest", True),
        ("tcp://0.0.0.0:7600", False),
        ("tcp://*:7600", False),
        ("tcp://10.0.0.5:7600", False),
        ("tcp://eth0:7600", False),
    ],
)
def test_plaintext_is_accepted_only_on_loopback(endpoint: str, local: bool) -> None:
    assert config.loopback(endpoint) is local
    text = f'[bus]\nplaintext = true\ningest = "{endpoint}"'
    if local:
        assert config.parse(text).bus.plaintext
    else:
        with pytest.raises(ConfigError, match="only on loopback"):
            config.parse(text)


def test_a_configuration_error_without_config_says_the_defaults_were_used(tmp_path: Path) -> None:
    """``lanewatch alerts`` with --config forgotten: the embedded defaults point at /etc/lanewatch/keys, and the
    error says no --config was given, the likelier cause than a missing key."""
    if Path("/etc/lanewatch/keys").exists():
        pytest.skip("this machine has a lanewatch site in /etc/lanewatch")
    cmd = [sys.executable, "-m", "lanewatch.edge", "alerts", "--timeout", "0.2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "configuration error: no secret key console.key_secret" in proc.stderr
    assert proc.stderr.rstrip().endswith("(no --config given: the embedded defaults were used)")
    named = tmp_path / "site.toml"
    named.write_text('[bus]\nkeys = "keys-nowhere"\n')
    proc = subprocess.run([*cmd, "--config", str(named)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "no secret key" in proc.stderr and "no --config given" not in proc.stderr
