"""Test support shared by the end-to-end tests: a real service running in a thread of the test process."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from edge.config import Config
from edge.service import Service


class Running:
    """A service in a thread of this process, with its own metrics registry."""

    def __init__(self, config: Config) -> None:
        self.registry = CollectorRegistry()
        self.service = Service(config, self.registry)
        self.service.start()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.service.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def value(self, name: str, **labels: str) -> float:
        """A sample of the service's metrics (0 when absent)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.service.close()
