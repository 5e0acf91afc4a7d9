"""`drp` as the on-call engineer meets it: real subprocesses, errors without tracebacks, --json."""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import version
from pathlib import Path

from dr_pipelines.core.pg.binaries import find_pg_binaries
from dr_pipelines.core.pg.cluster import free_port
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.procs import drp


def assert_clean_error(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert "error:" in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_help_and_version() -> None:
    result = drp("--help")
    assert result.returncode == 0
    for command in ("demo", "storage", "config", "db"):
        assert command in result.stdout
    assert drp("--version").stdout.startswith("drp ")


def test_version_names_drp_the_postgresql_client_and_dagster() -> None:
    pg_dump = find_pg_binaries().tool("pg_dump")
    client = subprocess.run([pg_dump, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert client.startswith(f"pg_dump (PostgreSQL) {find_pg_binaries().major}.")
    result = drp("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"drp {version('dr_pipelines')}",
        f"PostgreSQL client: {client} ({pg_dump})",
        f"Dagster: {version('dagster')}",
    ]


def test_config_show_json_masks_secrets() -> None:
    result = drp("config", "show", "--json", env={"DRP_SOURCE_DSN": "postgresql://app:hunter2@db:5432/clinic"})
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["source_dsn"] == "user=app password=******** dbname=clinic host=db port=5432"
    assert "hunter2" not in result.stdout


def test_invalid_setting_is_a_clean_error() -> None:
    result = drp("config", "show", env={"DRP_RPO_MINUTES": "-5"})
    assert result.returncode == 2
    assert_clean_error(result, "rpo_minutes", "DRP_RPO_MINUTES", "fix:")


def test_invalid_config_file_is_a_clean_error(tmp_path: Path) -> None:
    bad = tmp_path / "drp.yaml"
    bad.write_text("rpo_minutes: [\n")
    assert_clean_error(drp("--config", str(bad), "config", "show"), "not valid YAML", str(bad))
    assert_clean_error(drp("--config", str(tmp_path / "missing.yaml"), "config", "show"), "does not exist")


def test_malformed_dsn_is_a_clean_error() -> None:
    result = drp("db", "profile", env={"DRP_SOURCE_DSN": "postgresql://u:pw@host:notaport/db"})
    assert_clean_error(result, "source_dsn", "port")
    assert "pw@" not in result.stderr


def test_unreachable_database_is_a_clean_error() -> None:
    port = free_port()
    result = drp("db", "profile", env={"DRP_SOURCE_DSN": f"host=127.0.0.1 port={port} dbname=x user=u password=pw"})
    assert_clean_error(result, f"127.0.0.1:{port}/x", "fix:")
    assert "pw" not in result.stderr.replace("password", "")


def test_db_profile_json(demo_db: str) -> None:
    result = drp("db", "profile", "--json", env=drp_env(source=demo_db))
    assert result.returncode == 0, result.stderr
    profile = json.loads(result.stdout)
    assert profile["schema_version"] == 6
    names = {t["name"] for t in profile["tables"]}
    assert {"public.clinics", "public.patients", "public.audit_log", "drp.schema_migrations"} <= names


def test_storage_ls_json_on_local_dir(tmp_path: Path) -> None:
    from dr_pipelines.core.storage import open_storage

    storage = open_storage(str(tmp_path))
    storage.put_bytes("backups/a/manifest.json", b"{}")
    storage.put_bytes("backups/b/data.bin", b"12345")
    result = drp("storage", "ls", "backups/", "--json", env=drp_env(storage=tmp_path))
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [(o["key"], o["size"]) for o in listed] == [("backups/a/manifest.json", 2), ("backups/b/data.bin", 5)]


def test_storage_check_missing_bucket_is_a_clean_error(s3_server) -> None:  # type: ignore[no-untyped-def]
    env = drp_env(storage="s3://no-such-bucket-here/backups", s3=s3_server)
    result = drp("storage", "check", env=env)
    assert_clean_error(result, "no-such-bucket-here")
    assert s3_server.secret_key not in result.stderr


def test_storage_check_ok_on_s3(s3_server, s3_bucket) -> None:  # type: ignore[no-untyped-def]
    env = drp_env(storage=f"s3://{s3_bucket}/backups", s3=s3_server)
    result = drp("storage", "check", env=env)
    assert result.returncode == 0, result.stderr
    assert f"s3://{s3_bucket}/backups" in result.stdout


def test_db_profile_sizes_plain_and_partitioned_tables(fresh_db: str) -> None:
    """Every table gets its real size and (after ANALYZE) its row count, partitioned or not."""
    import psycopg

    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE plain (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO plain SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g")
        conn.execute("CREATE TABLE parted (id int, at date) PARTITION BY RANGE (at)")
        conn.execute("CREATE TABLE parted_2025 PARTITION OF parted FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')")
        conn.execute("CREATE TABLE parted_2026 PARTITION OF parted FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
        conn.execute("INSERT INTO parted SELECT g, date '2025-06-01' + (g % 400) FROM generate_series(1, 3000) g")
        conn.execute("CREATE TABLE never_analyzed (id int)")
        # VACUUM too: it writes the visibility map and free space map now, else autovacuum may add them (+8 KiB)
        # between the sizes read here and drp's (seen under load).
        conn.execute("VACUUM (ANALYZE) plain, parted")
        sizes = dict(conn.execute(
            "SELECT relname, pg_total_relation_size(oid) FROM pg_class WHERE relname IN ('plain', 'never_analyzed')"
        ).fetchall())
        sizes["parted"] = conn.execute(
            "SELECT sum(pg_total_relation_size(relid))::bigint FROM pg_partition_tree('parted')").fetchone()[0]
    result = drp("db", "profile", "--json", env=drp_env(source=fresh_db))
    assert result.returncode == 0, result.stderr
    tables = {t["name"]: t for t in json.loads(result.stdout)["tables"]}
    assert set(tables) == {"public.plain", "public.parted", "public.never_analyzed"}  # partitions fold into parents
    assert (tables["public.plain"]["bytes"], tables["public.plain"]["estimated_rows"]) == (sizes["plain"], 5000)
    assert tables["public.plain"]["bytes"] > 500_000
    assert (tables["public.parted"]["bytes"], tables["public.parted"]["estimated_rows"]) == (sizes["parted"], 3000)
    assert tables["public.never_analyzed"]["bytes"] == sizes["never_analyzed"]
    assert tables["public.never_analyzed"]["estimated_rows"] == 0


# -- the README's CLI lines against the real command tree ---------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_command_lines() -> list[str]:
    """Every `drp ...` / `scripts/drp ...` command in the README: the CLI block's lines (up to the
    two-space gap before their description) and inline code spans."""
    import re

    text = README.read_text()
    block = text.split("## The CLI", 1)[1].split("## ", 1)[0]
    lines = []
    for fenced in re.findall(r"```[a-z]*\n(.*?)```", block, re.S):
        lines += [re.split(r"\s{2,}", line.strip())[0] for line in fenced.splitlines() if line.startswith(("drp ", "scripts/drp "))]
    lines += re.findall(r"`((?:scripts/)?drp [^`]+)`", text)
    return [line.removeprefix("scripts/") for line in lines]


def check_readme_line(root, line: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Problems with one README command line: unknown commands or options, missing required ones.

    `a | b` after a command names a sibling (`pin ID --reason TEXT | unpin ID`); `[...]` is optional;
    upper-case words are placeholders for arguments or option values.
    """
    tokens = line.split()[1:]
    problems: list[str] = []
    alternatives: list[dict] = []
    parent, cmd, path = None, root, ["drp"]
    current = {"cmd": cmd, "path": path, "flags": set(), "args": 0}
    i = 0
    while i < len(tokens):
        raw = tokens[i]
        tok = raw.strip("[]")
        nxt = tokens[i + 1].strip("[]") if i + 1 < len(tokens) else ""
        subcommands = getattr(current["cmd"], "commands", {})
        if raw == "|":
            siblings = getattr(parent, "commands", {}) if parent is not None else {}
            if nxt in siblings:
                alternatives.append(current)
                current = {"cmd": siblings[nxt], "path": current["path"][:-1] + [nxt], "flags": set(), "args": 0}
                i += 2
                continue
        elif tok.startswith("-"):
            params = {o: p for p in current["cmd"].params if p.param_type_name == "option"
                      for o in (*p.opts, *p.secondary_opts)}
            if tok == "--help":
                pass
            elif tok not in params:
                problems.append(f"`{line}`: {' '.join(current['path'])} has no option {tok}")
            else:
                current["flags"].add(params[tok].name)
                if not params[tok].is_flag:
                    i += 1  # its value
        elif tok in subcommands:
            parent = current["cmd"]
            current = {"cmd": subcommands[tok], "path": current["path"] + [tok], "flags": set(), "args": 0}
        elif tok.isupper() or "_" in tok:
            current["args"] += 1
        else:
            problems.append(f"`{line}`: {' '.join(current['path'])} has no command {tok!r}")
        i += 1
    alternatives.append(current)
    for alt in alternatives:
        cmd, where = alt["cmd"], " ".join(alt["path"])
        if hasattr(cmd, "commands") and len(tokens) > 0 and alt["path"] != ["drp"]:
            problems.append(f"`{line}`: {where} is a group, name one of its commands")
            continue
        for p in cmd.params:
            if p.required and p.param_type_name == "option" and p.name not in alt["flags"]:
                problems.append(f"`{line}`: {where} requires {p.opts[0]}")
        required_args = sum(1 for p in cmd.params if p.required and p.param_type_name == "argument")
        all_args = sum(1 for p in cmd.params if p.param_type_name == "argument")
        if not required_args <= alt["args"] <= all_args:
            problems.append(f"`{line}`: {where} takes {required_args}..{all_args} arguments, the README shows {alt['args']}")
    return problems


def test_readme_cli_lines_match_the_real_commands() -> None:
    import typer.main

    from dr_pipelines.cli import app

    root = typer.main.get_command(app)
    lines = readme_command_lines()
    assert len(lines) >= 20 and any(line.startswith("drp backup pin") for line in lines)
    problems = [p for line in lines for p in check_readme_line(root, line)]
    assert problems == []
    # The checker itself catches what it must:
    assert check_readme_line(root, "drp backup pin | unpin ID") == [
        "`drp backup pin | unpin ID`: drp backup pin requires --reason",
        "`drp backup pin | unpin ID`: drp backup pin takes 1..1 arguments, the README shows 0"]
    assert check_readme_line(root, "drp backup lst") == ["`drp backup lst`: drp backup has no command 'lst'",
                                                         "`drp backup lst`: drp backup is a group, name one of its commands"]
    assert check_readme_line(root, "drp status [--jsn]") == ["`drp status [--jsn]`: drp status has no option --jsn"]
