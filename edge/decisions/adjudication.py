"""An operator's act on a journaled decision: the contract the journal keeps and the alert bus publishes.

A console appends each act to the journal's ``adjudications`` table (append-only) and, once that
transaction is committed, hands it to the service, which publishes it on the alert bus under the topic
``adjudication`` (see :mod:`lanewatch.edge.decisions.alertbus`): every open console learns it at once, and a
console that missed the message finds it in the journal by its ``id``. ``lanewatch schema adjudication``
prints the JSON Schema.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta

DISPOSITIONS: dict[str, str] = {
    "threat": "Threat confirmed",
    "norm": "NORM (naturally occurring radioactive material)",
    "medical": "Medical isotope",
    "innocent": "Other innocent source",
    "background": "Background or false alarm",
    "fault": "Tamper or device fault",
    "test": "Test source",
}
"""Disposition codes and what they mean."""
DISPOSITION_SHORT: dict[str, str] = {
    "threat": "threat",
    "norm": "NORM",
    "medical": "medical isotope",
    "innocent": "innocent source",
    "background": "false alarm",
    "fault": "device fault",
    "test": "test source",
}
"""Each disposition in a few words, for a table column."""
SECONDARY: dict[str, str] = {
    "not-performed": "Not performed",
    "no-source": "Performed: no source found",
    "source-found": "Performed: source found and identified",
}
"""Results of the secondary inspection."""
KINDS = ("acknowledge", "adjudicate", "amend")
MAX_NOTES = 4000
"""Longest note (characters) an act may carry."""

Kind = Literal["acknowledge", "adjudicate", "amend"]
Disposition = Literal["threat", "norm", "medical", "innocent", "background", "fault", "test"]
Secondary = Literal["not-performed", "no-source", "source-found"]
assert set(get_args(Disposition)) == set(DISPOSITIONS) and set(get_args(Secondary)) == set(SECONDARY)


class Adjudication(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One act on a decision, as journaled: an acknowledgement, an adjudication or a supervisor's amendment."""

    id: Annotated[int, Meta(ge=1)]
    """Number of the act in the journal's ``adjudications`` table (ascending in the order they were recorded)."""
    seq: Annotated[int, Meta(ge=1)]
    """Journal seq of the decision acted on."""
    kind: Kind
    """``acknowledge`` (an operator has seen the alarm), ``adjudicate`` (the alarm's disposition) or ``amend`` (a
    supervisor's correction of an earlier adjudication or amendment, named by ``amends``)."""
    disposition: Disposition | None = None
    """Disposition code of an adjudication or amendment (None for an acknowledgement)."""
    secondary: Secondary | None = None
    """Result of the secondary inspection, when one is recorded."""
    notes: Annotated[str, Meta(max_length=MAX_NOTES)] = ""
    """The officer's notes."""
    user: str
    """Console user who acted."""
    role: Literal["operator", "supervisor", "admin"]
    """That user's role when they acted."""
    time: str
    """When the act was recorded: UTC, ISO 8601 (``2026-12-02T03:04:05.678901Z``)."""
    attachment_name: str | None = None
    """File name of the handheld identifier's N42 file attached (its bytes stay in the journal)."""
    nuclides: list[str] = []
    """Nuclides the attached N42 file's analysis results name."""
    amends: Annotated[int, Meta(ge=1)] | None = None
    """For an amendment: the ``id`` of the act it corrects."""
