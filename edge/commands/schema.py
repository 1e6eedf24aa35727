"""``lanewatch schema decision|record|adjudication|config``: print a contract as JSON Schema (draft 2020-12).

``decision`` is what the journal stores and the alert bus publishes, ``record`` the header frame of a bus
record (``values`` typed by ``kind``), ``adjudication`` an operator's act on a decision (journaled, and published
on the alert bus), ``config`` the configuration file.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lanewatch.edge.contracts import json_schema


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema of the contract ``name`` (decision, record, config or adjudication)."""
    if name == "decision":
        from lanewatch.edge.decisions.decision import Decision

        return json_schema(Decision, "lanewatch decision")
    if name == "record":
        from lanewatch.edge.bus.records import AnyHeader

        return json_schema(AnyHeader, "lanewatch bus record header")
    if name == "adjudication":
        from lanewatch.edge.decisions.adjudication import Adjudication

        return json_schema(Adjudication, "lanewatch adjudication (an act on a decision)")
    if name == "config":
        from lanewatch.edge.config import NOT_KEYS, Config

        return json_schema(Config, "lanewatch configuration (TOML)", leave_out=tuple(NOT_KEYS))
    raise ValueError(f"no contract named {name!r}")


CONTRACTS = ("decision", "record", "adjudication", "config")


def _type(prop: dict[str, Any]) -> str:
    """A short type name of a JSON Schema property, for the README."""
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[1]
    if "enum" in prop:
        return " \\| ".join(json.dumps(v) for v in prop["enum"])
    if "anyOf" in prop:
        return " \\| ".join(_type(p) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return f"array of {_type(prop.get('items', {}))}"
    return str(prop.get("type", "any"))


def field_table(name: str = "decision", part: str | None = None) -> str:
    """The fields of contract ``name`` (of its definition ``part``, default its top) as a Markdown table: field,
    type, required, meaning."""
    doc = schema(name)
    top = doc["$defs"][part or doc["$ref"].rsplit("/", 1)[1]]
    rows = ["| field | type | required | meaning |", "|---|---|---|---|"]
    for key, prop in top["properties"].items():
        meaning = " ".join(prop.get("description", "").split()).replace("|", "\\|")
        required = "yes" if key in top.get("required", []) else "no"
        rows.append(f"| `{key}` | {_type(prop)} | {required} | {meaning} |")
    return "\n".join(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lanewatch schema``."""
    parser.add_argument("contract", choices=CONTRACTS, help="which contract")


README_MARKERS = ("<!-- decision-fields -->\n", "<!-- /decision-fields -->")
"""The README's generated decision tables lie between these lines."""


def readme_tables() -> str:
    """The README's decision tables, as :func:`field_table` makes them from the schema."""
    alarms = field_table("decision", "Alarm")
    model = field_table("decision", "ModelScore")
    return (
        f"{field_table()}\n\nEach `alarms` entry (further fields, by reason, are allowed):\n\n{alarms}\n\n"
        f"The `model` section:\n\n{model}\n"
    )


def run(args: argparse.Namespace) -> int:
    """Print the schema; 0."""
    print(json.dumps(schema(args.contract), indent=2))
    return 0


if __name__ == "__main__":  # python -m lanewatch.edge.commands.schema: the README's decision tables
    print(readme_tables())
