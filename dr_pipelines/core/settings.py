"""One typed, validated settings object for the CLI and the Dagster resources.

Sources, later wins: defaults < YAML file (``DRP_CONFIG`` or ``--config``) < ``DRP_*``
environment variables. Every invalid value is reported with the key's name, where it came
from and what is expected. Secrets (the DSN's password, S3 keys) are SecretStr: they never
appear in a repr, a log line, an error or Dagster metadata. Settings is pure data: the storage
backend, identities, probes and policies it describes are built by core/context.py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator

from dr_pipelines.core.errors import ConfigError, read_config_yaml
from dr_pipelines.core.pg.connect import parse_dsn

ENV_PREFIX = "DRP_"
_CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?LW#]+$")
_AGE_RECIPIENT = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")


def _check_cron(value: str) -> str:
    fields = value.split()
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValueError("expected a 5-field cron expression like '0 2 * * *'")
    return value


class Settings(BaseModel):
    """Everything drp needs to know about its environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_dsn: SecretStr = Field(
        SecretStr("host=127.0.0.1 port=5432 dbname=clinic user=postgres"),
        description="libpq DSN of the database to protect (URI or key=value).",
    )
    storage_url: str = Field(
        ".drp/storage",
        description="Where backups, exports and archives go: a local path, file:///abs/path or s3://bucket/prefix.",
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint for non-AWS services (http(s)://host:port).")
    s3_region: str | None = Field(None, description="S3 region.")
    s3_access_key_id: SecretStr | None = Field(None, description="S3 access key; unset = boto3's default chain.")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key; unset = boto3's default chain.")
    s3_sse: str = Field(
        "AES256", description="S3 server-side encryption of every object drp writes: AES256 (SSE-S3), aws:kms "
        "(SSE-KMS, with s3_sse_kms_key_id or the bucket's default key) or none (an endpoint without SSE)."
    )
    s3_sse_kms_key_id: str | None = Field(None, description="KMS key id or ARN for s3_sse=aws:kms.")
    encryption_recipients: list[str] = Field(
        default_factory=list, description="age public keys (age1...) that can decrypt backups; comma-separated in env."
    )
    age_identity_file: Path | None = Field(
        None, description="age identity (private key) file for restores; keep it off the backup host."
    )
    archive_allow_plaintext: bool = Field(
        False, description="Let data-retention archives be stored unencrypted when no encryption_recipients are "
        "set (by default archiving is refused then: health data is never stored in plaintext)."
    )
    backup_retention: str = Field(
        "last=7,daily=7,weekly=4,monthly=12,yearly=3",
        description="GFS retention applied after each backup (restic semantics, rules OR-ed).",
    )
    verification_probes_file: Path | None = Field(
        None, description="YAML list of {name, sql} probes that must return zero rows on a restored database."
    )
    retention_policies_file: Path | None = Field(
        None, description="YAML data-retention policies (drp retention, the retention assets); see docs/retention.md."
    )
    rpo_minutes: int = Field(60, gt=0, description="Recovery point objective: maximum tolerated data loss.")
    rto_minutes: int = Field(240, gt=0, description="Recovery time objective: maximum time to restored and checked.")
    backup_cron: str = Field("0 2 * * *", description="When the backup schedule runs (cron, UTC).")
    verify_cron: str = Field("0 4 * * 0", description="When the weekly verification restore runs (cron, UTC).")
    drill_cron: str = Field("0 5 1 * *", description="When the monthly DR drill runs (cron, UTC).")
    tenant_drill_cron: str = Field("0 5 8 * *", description="When the monthly tenant-restore drill runs (cron, UTC).")
    base_backup_cron: str = Field("0 1 * * *", description="When the base backup schedule runs (cron, UTC; needs WAL archiving).")
    base_backup_method: Literal["auto", "lowlevel", "pg_basebackup"] = Field(
        "auto", description="How base backups read the cluster: lowlevel (pg_backup_start + the data directory read "
        "on this host), pg_basebackup (from any host), or auto (lowlevel when the data directory here is the source's).")
    schedules_running: bool = Field(
        False, description="Start schedules and sensors RUNNING by default (the demo sets this)."
    )
    work_dir: Path = Field(Path(".drp/work"), description="Scratch space for throwaway clusters (must be world-traversable when root).")
    notify_webhook_url: SecretStr | None = Field(None, description="Optional webhook for alerts (RPO breach, failed runs).")
    migrations_dir: Path | None = Field(
        None, description="Versioned SQL migrations of the source schema (drp migrate); unset = not configured."
    )
    migration_lock_timeout: float = Field(5.0, gt=0, description="Seconds a migration statement may wait for a lock.")
    migration_lock_retries: int = Field(5, ge=0, description="Retries (exponential backoff) after a lock timeout.")
    migration_statement_timeout: float = Field(0.0, ge=0, description="Seconds a migration statement may run; 0 = no limit.")
    export_tenant_root: str = Field("public.clinics", description="Tenant root table (schema.table) that scopes exports.")
    export_tenant_key: str = Field("id", description="Tenant key column of the root table.")
    export_exclude_tables: list[str] = Field(
        default_factory=list, description="Tables (schema.table) never exported; comma-separated in env."
    )
    export_max_per_hour: int = Field(10, ge=0, description="Exports per tenant per hour (audited attempts); 0 = no limit.")
    export_presign_expiry_seconds: int = Field(
        3600, ge=1, le=604800, description="Lifetime of presigned download URLs for exports on S3."
    )
    export_ttl_days: int = Field(
        7, ge=0, description="Exports (under exports/) are deleted this many days after they finished, by the "
        "exports' own housekeeping (audited); 0 = kept until removed by hand."
    )
    export_sweep_after_minutes: float = Field(
        15, ge=0, description="An export unfinished this long whose process is gone is swept (files removed, "
        "audited abandoned) by the exports' housekeeping."
    )
    analytics_export_cron: str = Field("0 3 * * *", description="When the daily all-tenant Parquet export runs (UTC).")
    portal_host: str = Field("127.0.0.1", description="Address the export portal (drp portal serve) binds to; "
                             "loopback unless a reverse proxy in front of it is configured.")
    portal_port: int = Field(8088, ge=1, le=65535, description="Port of the export portal.")
    portal_token_ttl_days: int = Field(90, ge=1, le=3650, description="Default lifetime of a clinic token "
                                       "(drp portal token create --expires overrides).")
    portal_requests_per_minute: int = Field(60, ge=0, description="Portal requests per clinic per minute "
                                            "(429 with Retry-After beyond); 0 = no limit.")
    portal_max_streams: int = Field(8, ge=1, description="Streams and downloads the portal serves at once, all "
                                    "clinics together (429 with Retry-After beyond).")
    portal_export_workers: int = Field(1, ge=1, le=16, description="Full exports the portal's worker runs at once.")
    portal_max_body_bytes: int = Field(65536, ge=1024, description="Largest request body the portal reads (413 beyond).")
    portal_signing_secret: SecretStr | None = Field(
        None, description="Shared HMAC secret with the SaaS backend for short-lived signed clinic tokens "
        "(at least 32 bytes); unset = signed tokens refused.")
    portal_signing_secret_file: Path | None = Field(
        None, description="File holding portal_signing_secret (first line), instead of the environment.")
    portal_signing_key_id: str = Field("k1", pattern=r"^[A-Za-z0-9_-]{1,32}$",
                                       description="Key id a signed token must name (rotation: change both sides).")
    portal_signed_token_max_seconds: int = Field(900, ge=10, le=86400, description="Longest lifetime a signed token "
                                                 "may claim (longer ones are refused).")
    portal_unauthenticated_per_minute: int = Field(
        30, ge=0, description="Portal requests without a valid credential per client address (IPv6: per /64) per "
        "minute (429 with Retry-After beyond; valid credentials are never refused by it); 0 = no limit.")
    portal_dagster_url: str | None = Field(
        None, pattern=r"^https?://", description="Dagster webserver the portal submits full exports to (tenant_export "
        "runs through its GraphQL API, e.g. http://127.0.0.1:3000); unset = the portal's own worker runs them.")
    portal_dagster_location: str = Field("dr_pipelines", description="Code location (workspace.yaml) that defines "
                                         "tenant_export, for portal_dagster_url.")
    wal_lag_alert_seconds: int = Field(
        300, gt=0, description="Alert when the oldest WAL segment waiting to be archived is older (drp wal status)."
    )
    wal_rpo_seconds: int = Field(
        60, gt=0, description="RPO with WAL archiving (product target: 1 minute): the wal_archive asset's freshness."
    )
    wal_pg_wal_alert_bytes: int = Field(
        8 * 1024**3, gt=0, description="Alert when pg_wal grows beyond this many bytes (archiving is behind)."
    )

    @field_validator("source_dsn")
    @classmethod
    def _dsn_parses(cls, v: SecretStr) -> SecretStr:
        parse_dsn(v.get_secret_value(), setting="source_dsn")
        return v

    @field_validator("storage_url")
    @classmethod
    def _storage_url_form(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("expected a local path, file:///abs/path or s3://bucket[/prefix]")
        if "://" in v and not (v.startswith("file://") or v.startswith("s3://")):
            raise ValueError(f"unsupported scheme {v.split('://', 1)[0]!r}; expected a local path, file:// or s3://")
        if v.startswith("s3://") and not v[5:].split("/", 1)[0]:
            raise ValueError("s3:// URL has no bucket; expected s3://bucket[/prefix]")
        return v

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint_form(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("expected http://host:port or https://host")
        return v

    @field_validator("s3_sse")
    @classmethod
    def _sse_kind(cls, v: str) -> str:
        if v not in ("none", "AES256", "aws:kms"):
            raise ValueError("expected AES256 (SSE-S3), aws:kms (SSE-KMS) or none")
        return v

    @field_validator("s3_sse_kms_key_id")
    @classmethod
    def _kms_key_needs_kms(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v and info.data.get("s3_sse") != "aws:kms":
            raise ValueError("set, but s3_sse is not aws:kms: the key would be ignored")
        return v

    @field_validator("encryption_recipients", "export_exclude_tables", mode="before")
    @classmethod
    def _split_recipients(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    @field_validator("encryption_recipients")
    @classmethod
    def _recipients_are_age(cls, v: list[str]) -> list[str]:
        for r in v:
            if not _AGE_RECIPIENT.match(r):
                raise ValueError(f"{r[:12]!r}… is not an age public key (age1 followed by 58 bech32 characters)")
        return v

    @field_validator("backup_retention")
    @classmethod
    def _retention_parses(cls, v: str) -> str:
        from dr_pipelines.core.backup.gfs import RetentionPolicy

        try:
            RetentionPolicy.parse(v)
        except ConfigError as exc:
            raise ValueError(exc.problem) from None
        return v

    @field_validator("backup_cron", "verify_cron", "drill_cron", "base_backup_cron", "analytics_export_cron",
                     "tenant_drill_cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        return _check_cron(v)

    # -- derived ------------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """The source DSN in clear, for connecting only: never log it."""
        return self.source_dsn.get_secret_value()

    def describe(self) -> dict[str, Any]:
        """Settings safe to print or attach as metadata: secrets shown as set/unset."""
        from dr_pipelines.core.pg.connect import redact_dsn

        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(getattr(self, name), SecretStr):
                out[name] = redact_dsn(self.dsn) if name == "source_dsn" else "********"
            else:
                out[name] = str(value) if isinstance(value, Path) else value
        return out


FIELDS = tuple(Settings.model_fields)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(config_path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from an optional YAML file and DRP_* environment variables."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    origin: dict[str, str] = {}
    path = config_path or env.get("DRP_CONFIG")
    if path:
        raw.update(_read_yaml(Path(path)))
        origin.update({k: f"{path}" for k in raw})
    for field in FIELDS:
        name = env_name(field)
        if name in env:
            raw[field] = env[name]
            origin[field] = f"environment variable {name}"
    try:
        return Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, origin), fix=_fix_hint(exc)) from None
    except ConfigError as exc:  # raised inside a validator (parse_dsn)
        field = "source_dsn"
        raise ConfigError(f"{field} (from {origin.get(field, 'defaults')}): {exc.problem}", fix=exc.fix) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_config_yaml(path, "settings file", missing_fix="create it or correct DRP_CONFIG / --config")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path} must be a mapping of keys to values", fix="write `key: value` lines")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"settings file {path} has unknown key(s): {', '.join(map(str, unknown))}",
            fix=f"valid keys are: {', '.join(FIELDS)}",
        )
    return data


def _explain(exc: ValidationError, origin: Mapping[str, str]) -> str:
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "settings"
        source = origin.get(field, "defaults")
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{field} (from {source}): {message}")
    return "invalid settings: " + "; ".join(lines)


def _fix_hint(exc: ValidationError) -> str:
    fields = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]})
    return "correct " + ", ".join(f"{f} (env {env_name(f)})" for f in fields) + "; see docs/settings.md"
