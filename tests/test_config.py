"""Configuration: every key checked, every error names file, key and expectation."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

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
        ('[bus]\ningst = "x"', r"bad\.toml: bus\.ingst: unknown key \(known: alerts, ingest, query\)"),
        ('[detection]\nbaseline_n_sigma = "5"', r"detection\.baseline_n_sigma: expected a number, got '5'"),
        ('[[lanes]]\nrpm = "loop://"', r"lanes\[0\]\.id: required key is missing"),
        ('[[lanes]]\nid = "a"\n[[lanes]]\nid = "a"', r"duplicate lane id 'a'"),
        ('[[lanes]]\nid = "a/b"', r"lanes\[0\]\.id: expected a non-empty id"),
        ("[detection]\nenergy_windows_kev = [400, 30]", r"energy_windows_kev: expected at least 3 increasing edges"),
        ("[detection]\ngamma_false_alarm_probability = 2", r"gamma_false_alarm_probability: expected a number in"),
        ("[service]\nhttp = 9730", r"service\.http: expected a string, got 9730"),
        ("lanes = 3", r"lanes: expected an array of tables"),
        ("[service", r"bad\.toml: not valid TOML"),
        ("[detection]\nbaseline_neutron_threshold = true", r"expected an integer, got True"),
    ],
)
def test_errors_name_file_key_and_expectation(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.parse(text, "bad.toml")


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
    ]:
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def test_readme_documents_every_key() -> None:
    text = README.read_text()
    missing = [key for key in _keys() if not re.search(rf"`{re.escape(key.split('.')[1])}`", text)]
    assert not missing, f"README.md does not document {missing}"
