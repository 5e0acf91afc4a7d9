"""Tenant scope from the FK graph: the demo schema, pagila with `store` as root, and a synthetic schema."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from dr_pipelines.core.errors import ConfigError
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.tenancy import TENANTS_SETTING, ScopeError, discover_scope, tenant_select
from dr_pipelines_tests.support.export import pagila_database

DEMO_TABLES = [
    "public.clinics",
    "public.appointments", "public.attachments", "public.audit_log", "public.clinical_notes",
    "public.invoice_lines", "public.invoices", "public.patients", "public.payments", "public.prescriptions",
    "public.staff_users", "public.visits",
]


def test_demo_scope_every_table_direct_on_clinic_id(demo_db: str) -> None:
    with psycopg.connect(demo_db) as conn:
        scope = discover_scope(conn)
    assert scope.root == "public.clinics" and scope.key_column == "id" and scope.key_type == "bigint"
    assert scope.names == DEMO_TABLES
    root = scope.table("public.clinics")
    assert root.is_root and root.tenant_column == "id"
    for t in scope.tables[1:]:
        # Every demo table carries clinic_id with an FK to clinics(id): a direct filter, no join.
        assert t.tenant_column == "clinic_id", t
        assert len(t.path) == 1 and t.path[0].parent == "public.clinics" and t.via == (), t
        assert t.path[0].pairs == (("clinic_id", "id"),)
    assert scope.table("public.audit_log").kind == "partitioned"
    # Leaf partitions are neither exported nor listed as excluded: their parent covers them.
    assert not any("audit_log_" in n for n in scope.names + [e.name for e in scope.excluded])
    assert [(e.name, e.reason) for e in scope.excluded] == [
        ("drp.schema_migrations", "no foreign-key path to the tenant root")]


def test_demo_scope_configured_exclusion_and_bad_root(demo_db: str) -> None:
    with psycopg.connect(demo_db) as conn:
        scope = discover_scope(conn, exclude=("public.audit_log",))
        assert "public.audit_log" not in scope.names
        assert ("public.audit_log", "excluded by configuration") in [(e.name, e.reason) for e in scope.excluded]
        with pytest.raises(ConfigError, match="no such table"):
            discover_scope(conn, exclude=("public.nope",))
        with pytest.raises(ConfigError, match="cannot be excluded"):
            discover_scope(conn, exclude=("public.clinics",))
        with pytest.raises(ScopeError, match="does not exist"):
            discover_scope(conn, root="public.tenants")
        with pytest.raises(ScopeError, match="no column"):
            discover_scope(conn, key_column="uuid")


@pytest.fixture
def pagila_db(pg_cluster: LocalCluster) -> Iterator[str]:
    name, dsn = pagila_database(pg_cluster)
    yield dsn
    pg_cluster.drop_database(name)


def test_pagila_scope_with_store_as_root(pagila_db: str) -> None:
    with psycopg.connect(pagila_db) as conn:
        scope = discover_scope(conn, root="public.store", key_column="store_id")
    assert scope.key_type == "integer"
    got = {t.name: (t.via, t.tenant_column) for t in scope.tables}
    payments = {f"public.payment_p2007_0{m}": (("public.customer",), "store_id") for m in range(1, 7)}
    # What the FK graph says, checked by hand against pagila-schema.sql:
    # - customer, inventory and staff reference store(store_id) directly;
    # - rental reaches a store in two hops through customer, inventory or staff (all equally
    #   short); the tie goes to the parent first in BFS order (customer), the others are
    #   reported as alternatives. A customer can rent another store's inventory, so the
    #   choice defines what "store 1's rentals" means: rentals by store 1's customers.
    # - payment and its inheritance children (not partitions: each is its own table, read
    #   with ONLY) reach a store through customer (or staff, equally short); rental would be
    #   three hops.
    # - film, actor, category, language and the address/city/country chain only ever are
    #   referenced *by* tenant tables (store -> address, inventory -> film): shared
    #   reference data, not tenant-owned, so excluded and listed.
    assert got == {
        "public.store": ((), "store_id"),
        "public.customer": ((), "store_id"),
        "public.inventory": ((), "store_id"),
        "public.staff": ((), "store_id"),
        "public.payment": (("public.customer",), "store_id"),
        **payments,
        "public.rental": (("public.customer",), "store_id"),
    }
    rental = scope.table("public.rental")
    assert [h.constraint for h in rental.path] == ["rental_customer_id_fkey", "customer_store_id_fkey"]
    assert len(rental.alternatives) == 2
    assert any("public.inventory" in a for a in rental.alternatives)
    assert any("public.staff" in a for a in rental.alternatives)
    assert any("public.staff" in a for a in scope.table("public.payment").alternatives)
    assert [e.name for e in scope.excluded] == [
        "public.actor", "public.address", "public.category", "public.city", "public.country", "public.film",
        "public.film_actor", "public.film_category", "public.language",
    ]


SYNTHETIC = """
CREATE SCHEMA "Odd""Schema";
CREATE TABLE tenants (id uuid PRIMARY KEY, slug text UNIQUE NOT NULL);
CREATE TABLE "Odd""Schema"."we""ird tab" (id int PRIMARY KEY, "Tenant Id" uuid NOT NULL REFERENCES tenants (id));
CREATE TABLE lvl2 (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES "Odd""Schema"."we""ird tab" (id));
CREATE TABLE lvl3 (a int, b int REFERENCES lvl2 (id), PRIMARY KEY (a));
CREATE TABLE by_slug (id int PRIMARY KEY, tenant_slug text NOT NULL REFERENCES tenants (slug));
CREATE TABLE events (id int, tenant_id uuid NOT NULL REFERENCES tenants (id), at date NOT NULL)
    PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE lookup (code text PRIMARY KEY);
CREATE TABLE self_ref (id int PRIMARY KEY, parent int REFERENCES self_ref (id));
"""

T1, T2 = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"


def test_synthetic_schema_paths_quoting_and_uuid_key(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        conn.execute(SYNTHETIC)
        conn.execute("INSERT INTO tenants VALUES (%s, 'one'), (%s, 'two')", (T1, T2))
        conn.execute("""INSERT INTO "Odd""Schema"."we""ird tab" VALUES (1, %s), (2, %s)""", (T1, T2))
        conn.execute("INSERT INTO lvl2 VALUES (10, 1), (20, 2)")
        conn.execute("INSERT INTO lvl3 VALUES (100, 10), (200, 20), (300, NULL)")
        conn.execute("INSERT INTO by_slug VALUES (1, 'one'), (2, 'two')")
        conn.execute("INSERT INTO events VALUES (1, %s, '2024-02-01'), (2, %s, '2024-03-01')", (T1, T2))
        conn.commit()
        scope = discover_scope(conn, root="public.tenants", key_column="id")
        got = {t.name: (t.via, t.tenant_column) for t in scope.tables}
        assert got == {
            "public.tenants": ((), "id"),
            "public.by_slug": ((), "id"),  # references the root on slug: joins the root table
            "public.events": ((), "tenant_id"),
            'Odd"Schema.we"ird tab': ((), "Tenant Id"),
            "public.lvl2": (('Odd"Schema.we"ird tab',), "Tenant Id"),
            "public.lvl3": (("public.lvl2", 'Odd"Schema.we"ird tab'), "Tenant Id"),
        }
        assert [e.name for e in scope.excluded] == ["public.lookup", "public.self_ref"]
        # The generated queries run, and return one tenant's rows only (tenant bound as a parameter).
        with conn.transaction():
            conn.execute("SELECT set_config(%s, %s::text[]::text, true)", (TENANTS_SETTING, [T1]))
            counts = {t.name: conn.execute(tenant_select(t, scope)).fetchall() for t in scope.tables}
        assert [r[0] for r in counts["public.lvl3"]] == [100]
        assert [r[0] for r in counts["public.lvl2"]] == [10]
        assert [r[0] for r in counts["public.by_slug"]] == [1]
        assert [r[0] for r in counts["public.events"]] == [1]
        assert all(len(rows) == 1 for rows in counts.values()), counts
