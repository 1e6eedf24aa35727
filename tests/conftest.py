"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

REPO = Path(__file__).resolve().parents[1]


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
