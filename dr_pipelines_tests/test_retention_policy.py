"""Retention policies and legal-hold predicates: bad input is refused with the problem and the fix named."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dr_pipelines.core.retention.holds import HoldError, place_hold, validate_predicate
from dr_pipelines.core.retention.policy import PolicyError, bind, load_policies, parse_policies
from dr_pipelines_tests.support.retention import POLICY

REPO = Path(__file__).resolve().parents[1]
COLUMNS = {"entity", "entity_id", "action", "occurred_at", "details"}


def _with(**table: Any) -> dict[str, Any]:
    data = copy.deepcopy(POLICY)
    data["tables"]["public.audit_log"].update(table)
    return data


def test_the_demo_policy_file_parses() -> None:
    p = load_policies(REPO / "dr_pipelines" / "demo" / "retention.yaml")
    assert "public.audit_log" in p.tables


def test_rules_resolve_tenant_before_jurisdiction_before_table() -> None:
    audit = parse_policies(POLICY).tables["public.audit_log"]
    assert audit.rule_for("1", "DE").period and str(audit.rule_for("1", "DE").period) == "18 months"
    assert str(audit.rule_for("2", "IE").period) == "20 months"
    assert audit.rule_for("3", "IE").action == "keep" and audit.rule_for("3", "IE").source == "tenant 3 override"


@pytest.mark.parametrize(("change", "message"), [
    ({"period": "0 days"}, "not positive"),
    ({"period": "-3 months"}, "not positive"),
    ({"period": "soon"}, "is not '<N> days|months|years'"),
    ({"action": "shred"}, "is not one of archive-then-delete, delete, keep"),
    ({"action": "keep"}, "keep conflicts with a period"),
    ({"colour": "red"}, "unknown key"),
    ({"overrides": [{"tenant": "1", "period": "1 year"}, {"tenant": "1", "period": "2 years"}]}, "conflicting rules"),
    ({"overrides": [{"tenant": "1", "jurisdiction": "DE", "period": "1 year"}]}, "exactly one of tenant or jurisdiction"),
])
def test_malformed_policies_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message) as info:
        parse_policies(_with(**change), source="p.yaml")
    assert info.value.fix


def test_a_table_named_twice_is_a_conflict() -> None:
    data = copy.deepcopy(POLICY)
    data["tables"]["audit_log"] = data["tables"]["public.audit_log"]
    with pytest.raises(PolicyError, match="named twice"):
        parse_policies(data)


@pytest.mark.parametrize(("table", "body", "message"), [
    ("public.nope", {"timestamp_column": "x", "period": "1 year", "action": "delete"}, "unknown table"),
    ("public.audit_log", {"timestamp_column": "when", "period": "1 year", "action": "delete"}, "unknown column"),
    ("public.audit_log", {"timestamp_column": "entity", "period": "1 year", "action": "delete"}, "not a timestamp"),
    ("public.appointments", {"timestamp_column": "starts_at", "period": "1 year", "action": "delete"},
     "referenced by"),
])
def test_policies_that_do_not_fit_the_database_are_refused(demo_db: str, table: str, body: dict[str, Any],
                                                           message: str) -> None:
    policies = parse_policies({"version": 1, "tables": {table: body}})
    with psycopg.connect(demo_db) as conn, pytest.raises(PolicyError, match=message):
        bind(conn, policies)


@pytest.mark.parametrize("predicate", [
    "entity = 'patient' AND entity_id IN (1, 2, 3)",
    "lower(action) LIKE 're%' OR occurred_at < '2024-06-01'::timestamptz",
    "details ->> 'ip' IS NOT NULL",
])
def test_safe_predicates_pass(predicate: str) -> None:
    """Returned (and stored) in the parser's rendering: a cast is spelled CAST, and that form is a fixed point."""
    deparsed = validate_predicate(predicate, COLUMNS)
    assert deparsed == predicate.replace("'2024-06-01'::timestamptz", "CAST('2024-06-01' AS timestamptz)")
    assert validate_predicate(deparsed + "  -- a note", COLUMNS) == deparsed


@pytest.mark.parametrize(("predicate", "message"), [
    ("entity_id IN (SELECT id FROM patients)", "subqueries are not allowed"),
    ("pg_terminate_backend(42)", "function pg_terminate_backend"),
    ("true; DROP TABLE audit_log", "single boolean expression"),
    ("nope = 1", "unknown column"),
    ("audit_log.entity = 'x'", "plain column names"),
    ("entity::regclass IS NULL", "cast to regclass"),
    ("entity = 'x' ORDER BY 1", "single boolean expression"),
    ("entity = (", "does not parse"),
])
def test_unsafe_or_wrong_predicates_are_refused(predicate: str, message: str) -> None:
    with pytest.raises(HoldError, match=message):
        validate_predicate(predicate, COLUMNS)


def test_place_hold_validates_against_the_table(demo_db: str) -> None:
    with psycopg.connect(demo_db, autocommit=True) as conn:
        with pytest.raises(HoldError, match="unknown column"):
            place_hold(conn, "1", "case 1", table="audit_log", predicate="colour = 'red'")
        with pytest.raises(HoldError, match="unknown tenant"):
            place_hold(conn, "999", "case 1", table="audit_log")
        with pytest.raises(HoldError, match="needs a table"):
            place_hold(conn, "1", "case 1", predicate="entity = 'x'")
        assert place_hold(conn, "1", "case 1", table="audit_log", predicate="entity = 'x'").table_name == \
            "public.audit_log"
