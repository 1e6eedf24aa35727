"""The published contracts: ``lanewatch schema``, and the README tables generated from the decision schema."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from lanewatch.edge.bus.records import Kind, Record
from lanewatch.edge.commands.schema import README_MARKERS, readme_tables, schema
from lanewatch.edge.decisions import decision
from lanewatch.edge.ops import units

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("name", ["decision", "record", "adjudication", "config"])
def test_schema_command_prints_a_draft_2020_12_schema(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lanewatch.edge", "schema", name], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed == schema(name)
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(printed)


def test_the_decision_builders_fit_the_published_schema() -> None:
    validator = jsonschema.Draft202012Validator(schema("decision"))
    analysis = {
        "alarms": [{"reason": "gamma-window", "alarm": True, "statistic": 6.1, "threshold": 4.9, "location_m": 3.2}],
        "baseline_verdict": "ALARM",
        "baseline": {"max_sigma": 7.0, "n_sigma": 5.0},
        "profile": {"speed_kmh": 8.0, "t_s": [0.0, 0.2]},
        "background": {"origin": "measured", "gamma_total_cps": 950.0},
    }
    built = decision.build(
        lane="lane1",
        occupancy_id="lane1-1-rpm0",
        start_wall_ns=1_764_000_000_000_000_000,
        end_wall_ns=1_764_000_005_000_000_000,
        end_reason="gx",
        device_occupancy=4,
        analysis=analysis,
        samples=25,
        device_alarm=False,
        tamper=True,
        link_interruptions=0,
        xray={"status": "missing"},
    )
    stored = {"seq": 1, **built}
    assert list(validator.iter_errors(stored)) == []
    assert decision.problems(stored) is None
    assert stored["verdict"] == "ALARM" and stored["schema_version"] == decision.SCHEMA_VERSION
    assert decision.problems({**stored, "verdict": "MAYBE"}) is not None
    assert not validator.is_valid({**stored, "verdict": "MAYBE"})
    assert not validator.is_valid({**stored, "extra": 1}), "a new top-level field must be declared in the schema"


def test_a_record_header_fits_the_published_record_schema() -> None:
    validator = jsonschema.Draft202012Validator(schema("record"))
    rec = Record(
        kind=Kind.GAMMA_SCAN, lane="l1", source="rpm", seq=3, t_wall_ns=1, t_mono_ns=2, dt_s=0.2,
        counts=np.ones((4, 2), np.uint32), run_id="ab12",
    )  # fmt: skip
    header = json.loads(bytes(rec.encode()[1]))
    assert list(validator.iter_errors(header)) == []
    assert not validator.is_valid({**header, "kind": "speed"}), "a speed record needs its speed"
    assert not validator.is_valid({**header, "seq": -1})


def test_the_example_configuration_fits_the_published_config_schema() -> None:
    validator = jsonschema.Draft202012Validator(schema("config"))
    example = tomllib.loads(units.example_config())
    assert list(validator.iter_errors(example)) == []
    assert not validator.is_valid({**example, "source": "x"}), "source is not a key of the file"
    bad_lane = {**example["lanes"][0], "gamma_channels": 0}
    assert not validator.is_valid({**example, "lanes": [bad_lane]})


def test_readme_documents_the_decision_fields_from_the_schema() -> None:
    text = README.read_text()
    start, end = README_MARKERS
    assert start in text and end in text, "README lacks the generated decision tables"
    tables = text.split(start, 1)[1].split(end, 1)[0]
    assert tables == readme_tables(), "README decision tables differ: paste `python -m lanewatch.edge.commands.schema`"


def test_a_missed_vehicle_decision_fits_the_published_schema() -> None:
    end = Record(kind=Kind.OCCUPANCY_END, lane="l1", source="rpm", seq=9, t_wall_ns=2_000, t_mono_ns=1, run_id="r")
    stored = {"seq": 3, **decision.build_missed("l1", end, counter=41, since_wall_ns=1_000)}
    assert list(jsonschema.Draft202012Validator(schema("decision")).iter_errors(stored)) == []
    assert decision.problems(stored) is None and stored["verdict"] == "INCOMPLETE"
