"""The operators' web console: live lane wall, event table, decision detail, adjudication, evidence, reports."""
