"""Decisions: the record, the journal that keeps them, the alert bus that pushes them, and its followers."""
