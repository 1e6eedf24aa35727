"""What the typed contracts share: field documentation from docstrings, and their published JSON Schema.

A contract is a :class:`msgspec.Struct` whose fields each have a docstring written under them (the
configuration, the bus record header, the decision). :func:`field_docs` reads those docstrings from the source,
and :func:`json_schema` publishes the contract as JSON Schema (draft 2020-12) with them as descriptions.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import types
import typing
from typing import Any

import msgspec

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a class (a configuration section, a record), by field name."""
    node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(node, ast.ClassDef)
    docs: dict[str, str] = {}
    for stmt, following in zip(node.body, node.body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(following.value.value)
    return docs


def structs(tp: Any, found: dict[str, type] | None = None) -> dict[str, type]:
    """Every Struct class reachable from the type ``tp`` (through fields, lists, unions, Annotated), by name."""
    found = {} if found is None else found
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        if found.get(tp.__name__) is tp:
            return found
        found[tp.__name__] = tp
        for f in msgspec.structs.fields(tp):
            structs(f.type, found)
        return found
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Annotated:
        args = args[:1]
    elif not args and isinstance(tp, types.UnionType):
        args = tp.__args__
    for arg in args:
        structs(arg, found)
    return found


def _docs_of(cls: type) -> dict[str, str]:
    """Field docstrings of ``cls`` and of its Struct bases (a subclass's own win)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if isinstance(base, type) and issubclass(base, msgspec.Struct) and base is not msgspec.Struct:
            try:
                docs.update(field_docs(base))
            except (OSError, TypeError, IndexError):  # no source: a class made by msgspec.defstruct
                continue
    return docs


def json_schema(tp: Any, title: str, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``tp``, each field described by its docstring; ``leave_out`` names
    fields of the top Struct that are not part of the published contract."""
    schema = msgspec.json.schema(tp)
    definitions = schema.get("$defs", {})
    for name, cls in structs(tp).items():
        definition = definitions.get(name)
        if definition is None:
            continue
        for key, doc in _docs_of(cls).items():
            prop = definition.get("properties", {}).get(key)
            if prop is not None:
                prop.setdefault("description", doc)
    top = definitions.get(getattr(tp, "__name__", ""), {})
    for key in leave_out:
        top.get("properties", {}).pop(key, None)
        if key in top.get("required", []):
            top["required"].remove(key)
    return {"$schema": DRAFT, "title": title, **schema}
