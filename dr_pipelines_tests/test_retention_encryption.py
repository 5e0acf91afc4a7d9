"""Archives (years of health data) are age-encrypted at rest; reading them back needs the identity.

No recipients configured: archiving is refused (nothing stored, nothing deleted) unless plaintext
is explicitly allowed; archives written in plaintext before encryption still read and restore.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pyrage import x25519

from dr_pipelines.core.crypto import DecryptionError
from dr_pipelines.core.errors import ConfigError
from dr_pipelines.core.manifest import read_manifest
from dr_pipelines.core.retention.apply import ApplyOptions, apply_policies
from dr_pipelines.core.retention.rehydrate import list_archives, parse_period, restore_archives
from dr_pipelines.core.retention.segment import ArchiveKeys, fetched
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.procs import drp
from dr_pipelines_tests.support.retention import AS_OF, ID, KEYS, POLICY, archived, assert_union, content, policies

NOTES = "public.clinical_notes"


def test_archives_are_sealed_to_the_recipients_and_read_back_with_the_identity(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    original = content(demo_db, NOTES)
    result = apply_policies(demo_db, storage, policies(), ApplyOptions(keys=KEYS, as_of=AS_OF, tables=(NOTES,)))
    assert result.tables[0].archived_rows == result.tables[0].deleted_rows > 0
    objects = list(storage.list("archives/"))
    data = [o.key for o in objects if not o.key.endswith("/manifest.json")]
    assert data and all(k.endswith("/rows.parquet.zst.age") for k in data)
    for key in data:  # no Parquet (magic PAR1) and no row text at rest: age's header, then ciphertext
        stored = storage.get_bytes(key)
        assert stored.startswith(b"age-encryption.org/v1") and b"PAR1" not in stored
        manifest = read_manifest(storage, key.rsplit("/", 1)[0])
        assert manifest.encryption == {"algorithm": "age-x25519", "recipients": list(KEYS.recipients)}
        assert manifest.objects[0].bytes == len(stored) and manifest.objects[0].plain_bytes > 0
    # Every archived row reads back (decrypted) and, with what is left, equals the original table.
    assert assert_union(demo_db, storage, NOTES, original) == result.tables[0].archived_rows

    prefix = data[0].rsplit("/", 1)[0]
    with pytest.raises(ConfigError, match="is encrypted: reading it needs the age identity"):
        with fetched(storage, prefix):
            pass
    with pytest.raises(DecryptionError, match="cannot decrypt"):
        with fetched(storage, prefix, identities=[x25519.Identity.generate()]):
            pass
    archives = list_archives(storage, table=NOTES, identities=ID)
    months = sorted(a.month for a in archives)
    tenant = archives[0].tenant_id
    with pytest.raises(ConfigError, match="age identity"):
        restore_archives(demo_db, storage, NOTES, tenant, parse_period(f"{months[0]}..{months[-1]}"), into="x")
    restored = restore_archives(demo_db, storage, NOTES, tenant, parse_period(f"{months[0]}..{months[-1]}"),
                                into="public.notes_back", identities=ID)
    assert content(demo_db, "public.notes_back")[0] == sum(a.rows for a in restored) > 0


def test_no_recipients_means_no_archive_unless_plaintext_is_allowed(demo_db: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    original = content(demo_db, NOTES)
    with pytest.raises(ConfigError, match="never stored in plaintext"):
        apply_policies(demo_db, storage, policies(), ApplyOptions(as_of=AS_OF, tables=(NOTES,)))
    with pytest.raises(ConfigError, match="no age identity"):  # sealed but unverifiable: refused too
        apply_policies(demo_db, storage, policies(), ApplyOptions(keys=ArchiveKeys(KEYS.recipients), as_of=AS_OF,
                                                                  tables=(NOTES,)))
    assert content(demo_db, NOTES) == original and list(storage.list("")) == []

    # Explicitly allowed: plaintext, as archives were before encryption; they still list, verify and restore.
    plain = ApplyOptions(keys=ArchiveKeys(allow_plaintext=True), as_of=AS_OF, tables=(NOTES,))
    result = apply_policies(demo_db, storage, policies(), plain)
    keys = [o.key for o in storage.list("archives/") if not o.key.endswith("/manifest.json")]
    assert keys and all(k.endswith("/rows.parquet") for k in keys)
    assert read_manifest(storage, keys[0].rsplit("/", 1)[0]).encryption is None
    assert archived(demo_db, storage, NOTES)[0] == result.tables[0].archived_rows
    archives = list_archives(storage, table=NOTES)
    months = sorted(a.month for a in archives)
    for tenant in sorted({a.tenant_id for a in archives}):
        restore_archives(demo_db, storage, NOTES, tenant, parse_period(f"{months[0]}..{months[-1]}"))
    assert content(demo_db, NOTES) == original


def test_the_cli_refuses_to_archive_without_recipients(demo_db: str, tmp_path: Path) -> None:
    policy = tmp_path / "retention.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    env = drp_env(source=demo_db, storage=tmp_path / "store", retention_policies_file=policy)
    refused = drp("retention", "apply", "--json", "--as-of", AS_OF.isoformat(), env=env)
    assert refused.returncode == 2 and "never stored in plaintext" in refused.stderr
    assert "DRP_ENCRYPTION_RECIPIENTS" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "store").exists()
    allowed = drp("retention", "apply", "--json", "--table", NOTES, "--as-of", AS_OF.isoformat(),
                  env={**env, **drp_env(archive_allow_plaintext="true")})
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["tables"][0]["archived_rows"] > 0
