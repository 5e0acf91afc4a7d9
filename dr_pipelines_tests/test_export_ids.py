"""Tenant ids must round-trip exactly through the key's type, as PostgreSQL casts them: refused (exit 4) if not."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.procs import drp


def _statuses(dsn: str) -> list[tuple[str, list[str], str | None]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT status, tenant_ids, error FROM drp.export_audit ORDER BY id").fetchall()


def test_an_id_out_of_the_bigint_range_is_refused_not_a_traceback(demo_db: str, tmp_path: Path) -> None:
    env = drp_env(source=demo_db, storage=tmp_path / "store")
    for bad in ("99999999999999999999", "1.5", "01"):
        r = drp("export", "--clinic", bad, env=env)
        assert r.returncode == 4, r.stderr
        assert "Traceback" not in r.stderr and "fix:" in r.stderr and bad in r.stderr
    assert [s for s, _, _ in _statuses(demo_db)] == ["refused"] * 3
    assert not (tmp_path / "store").exists() or not list(LocalStorage(tmp_path / "store").list("exports/"))


def test_a_char3_key_never_exports_a_truncated_id(fresh_db: str, tmp_path: Path) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE countries (code char(3) PRIMARY KEY, name text NOT NULL)")
        conn.execute("CREATE TABLE residents (id int PRIMARY KEY, country char(3) NOT NULL REFERENCES countries,"
                     " name text NOT NULL)")
        conn.execute("INSERT INTO countries VALUES ('FRA', 'France'), ('DEU', 'Germany')")
        conn.execute("INSERT INTO residents VALUES (1, 'FRA', 'Alice'), (2, 'DEU', 'Bernd'), (3, 'FRA', 'Chloé')")
    env = drp_env(source=fresh_db, storage=tmp_path / "store", export_tenant_root="public.countries",
                  export_tenant_key="code")
    for bad in ("FRANCE", "FRA' OR '1'='1", "FRAX"):
        r = drp("export", "--clinic", bad, "--format", "jsonl", "--json", env=env)
        assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
        assert "character(3)" in r.stderr and r.stdout == ""
    assert not (tmp_path / "store").exists() or not list(LocalStorage(tmp_path / "store").list("exports/"))
    assert [(s, t) for s, t, _ in _statuses(fresh_db)] == [
        ("refused", ["FRANCE"]), ("refused", ["FRA' OR '1'='1"]), ("refused", ["FRAX"])]

    ok = drp("export", "--clinic", "FRA", "--format", "jsonl", "--json", env=env)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["tenant_ids"] == ["FRA"]
    storage = LocalStorage(tmp_path / "store")
    lines = storage.get_bytes(f"exports/{summary['export_id']}/public.residents.jsonl").decode().splitlines()
    assert sorted(json.loads(line)["name"] for line in lines) == ["Alice", "Chloé"]
