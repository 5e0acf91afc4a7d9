"""Settings: YAML + env, validated with messages that name the key, and secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from dr_pipelines.core.errors import ConfigError
from dr_pipelines.core.retention.segment import ArchiveKeys
from dr_pipelines.core.settings import load_settings

AGE_KEY = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def test_defaults_yaml_then_env_precedence(tmp_path: Path) -> None:
    config = tmp_path / "drp.yaml"
    config.write_text("rpo_minutes: 30\nstorage_url: s3://bucket/backups\nencryption_recipients: [" + AGE_KEY + "]\n")
    s = load_settings(config, env={"DRP_RPO_MINUTES": "15"})
    assert s.rpo_minutes == 15  # env wins over the file
    assert s.storage_url == "s3://bucket/backups"
    assert s.encryption_recipients == [AGE_KEY]
    assert s.rto_minutes == 240  # default


def test_config_file_from_env_var(tmp_path: Path) -> None:
    config = tmp_path / "drp.yaml"
    config.write_text("rto_minutes: 120\n")
    assert load_settings(env={"DRP_CONFIG": str(config)}).rto_minutes == 120


def test_recipients_comma_separated_in_env() -> None:
    s = load_settings(env={"DRP_ENCRYPTION_RECIPIENTS": f"{AGE_KEY}, {AGE_KEY}"})
    assert s.encryption_recipients == [AGE_KEY, AGE_KEY]


@pytest.mark.parametrize(
    ("env", "key", "expected"),
    [
        ({"DRP_RPO_MINUTES": "0"}, "rpo_minutes", "greater than 0"),
        ({"DRP_RPO_MINUTES": "soon"}, "rpo_minutes", "valid integer"),
        ({"DRP_SOURCE_DSN": "host=db port"}, "source_dsn", "not a valid PostgreSQL connection string"),
        ({"DRP_BACKUP_CRON": "every day"}, "backup_cron", "5-field cron"),
        ({"DRP_STORAGE_URL": "ftp://host/x"}, "storage_url", "unsupported scheme 'ftp'"),
        ({"DRP_STORAGE_URL": "s3://"}, "storage_url", "no bucket"),
        ({"DRP_S3_ENDPOINT_URL": "localhost:9000"}, "s3_endpoint_url", "http://host:port"),
        ({"DRP_ENCRYPTION_RECIPIENTS": "ssh-rsa AAAA"}, "encryption_recipients", "not an age public key"),
        ({"DRP_SCHEDULES_RUNNING": "perhaps"}, "schedules_running", "valid boolean"),
        ({"DRP_S3_SSE": "aes"}, "s3_sse", "AES256 (SSE-S3), aws:kms (SSE-KMS) or none"),
        ({"DRP_S3_SSE_KMS_KEY_ID": "key-1"}, "s3_sse_kms_key_id", "s3_sse is not aws:kms"),
        ({"DRP_EXPORT_TTL_DAYS": "-1"}, "export_ttl_days", "greater than or equal to 0"),
    ],
)
def test_invalid_values_name_key_source_and_expectation(env: dict[str, str], key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    message = str(info.value)
    assert key in message
    assert expected in message
    assert "environment variable DRP_" in message
    assert "fix:" in message


def test_encryption_at_rest_defaults() -> None:
    s = load_settings(env={})
    assert (s.s3_sse, s.s3_sse_kms_key_id, s.export_ttl_days, s.archive_allow_plaintext) == ("AES256", None, 7, False)
    assert ArchiveKeys.from_settings(s).recipients == () and ArchiveKeys.from_settings(s).identities == ()


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "drp.yaml"
    config.write_text("rpo_minutes: 30\nrpo_minuets: 10\n")
    with pytest.raises(ConfigError, match="unknown key.*rpo_minuets"):
        load_settings(config, env={})


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    config = tmp_path / "drp.yaml"
    config.write_text("rpo_minutes: 30\nstorage_url: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_settings(config, env={})


def test_duplicate_key_names_key_and_both_lines(tmp_path: Path) -> None:
    """A repeated key used to be silently last-wins: the first value vanished without a word."""
    config = tmp_path / "drp.yaml"
    config.write_text("rpo_minutes: 30\nstorage_url: /srv/backups\n# later, someone appends:\nrpo_minutes: 600\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config, env={})
    assert err.value.problem == f"settings file {config} has duplicate key 'rpo_minutes' at line 4 (first at line 1)"
    assert "keep one" in (err.value.fix or "")
    nested = tmp_path / "policies.yaml"  # the same loader guards nested mappings of every config file
    nested.write_text("policies:\n  - name: a\n    table: t\n    table: u\n")
    from dr_pipelines.core.errors import read_config_yaml

    with pytest.raises(ConfigError, match=r"duplicate key 'table' at line 4 \(first at line 3\)"):
        read_config_yaml(nested, "policy file", missing_fix="-")


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(tmp_path, env={})  # a directory
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(not_mapping, env={})


def test_secrets_never_in_repr_describe_or_errors() -> None:
    secret = "s3cr3t-Pa55"
    s = load_settings(
        env={
            "DRP_SOURCE_DSN": f"postgresql://app:{secret}@db.internal:5432/clinic",
            "DRP_S3_SECRET_ACCESS_KEY": secret,
            "DRP_NOTIFY_WEBHOOK_URL": f"https://hooks.example/{secret}",
        }
    )
    assert secret not in repr(s)
    assert secret not in str(s.describe())
    assert "db.internal" in s.describe()["source_dsn"]
    assert s.dsn.endswith("/clinic")  # usable for connecting
    for bad in (f"postgresql://app:{secret}@db:notaport/clinic", f"postgresql://app:{secret}@db/clinic?bogus=1"):
        with pytest.raises(ConfigError) as info:
            load_settings(env={"DRP_SOURCE_DSN": bad})
        assert "source_dsn" in str(info.value)
        assert secret not in str(info.value)
