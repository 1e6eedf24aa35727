"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import zmq

from lanewatch.edge.commands.schema import schema
from lanewatch.edge.decisions.journal import Journal

REPO = Path(__file__).resolve().parents[1]
DECISION_SCHEMA = jsonschema.Draft202012Validator(schema("decision"))
"""The published decision schema (``lanewatch schema decision``) that every journaled decision must fit."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "invalid_decisions: the test journals decisions that break the schema")


@pytest.fixture(autouse=True)
def journaled_decisions_fit_the_schema(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Every decision a test journals in this process is checked against the published JSON Schema."""
    if request.node.get_closest_marker("invalid_decisions"):
        yield
        return
    errors: list[str] = []
    append = Journal._append

    def checked(self: Journal, decision: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        stored, inserted = append(self, decision)
        if inserted:
            found = DECISION_SCHEMA.iter_errors(stored)
            errors.extend(f"seq {stored['seq']}: {e.json_path}: {e.message}" for e in found)
        return stored, inserted

    monkeypatch.setattr(Journal, "_append", checked)
    yield
    assert not errors, "journaled decisions that do not fit the published schema:\n" + "\n".join(errors[:20])


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data files in ``<repo>/../shared/data`` (CI checks out ``shared/`` beside the repository)."""
    path = REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.fail(f"shared data directory {path} is missing: check out shared/ beside the repository", pytrace=False)
    return path


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A ZeroMQ context for the test, destroyed with whatever sockets it still has."""
    context = zmq.Context()
    yield context
    context.destroy(linger=0)
