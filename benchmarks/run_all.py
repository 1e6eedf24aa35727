"""Run every benchmark in turn and print its figures: ``make bench`` or ``python -m benchmarks.run_all``."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = (
    "kernels",
    "contracts",
    "imaging",
    "latency",
    "lanes",
    "detection",
    "robustness",
    "portals",
    "fusion",
    "model",
    "fuzz",
    "console_table",
    "console_latency",
    "kills",
)


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"\n=== benchmarks.{name}", flush=True)
        if subprocess.call([sys.executable, "-m", f"benchmarks.{name}"]) != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
