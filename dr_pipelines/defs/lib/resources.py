"""Resources built from the one Settings object; secrets arrive through EnvVar, never as literals."""

from __future__ import annotations

import os
from typing import Optional

import dagster as dg

from dr_pipelines.core import context as core_context
from dr_pipelines.core.settings import Settings, env_name, load_settings
from dr_pipelines.core.storage import Storage

SECRET_FIELDS = ("source_dsn", "s3_access_key_id", "s3_secret_access_key", "notify_webhook_url")


class DrpSettingsResource(dg.ConfigurableResource):
    """Settings for core calls: YAML (config_path) and DRP_* env, secrets bound with EnvVar."""

    config_path: Optional[str] = None
    source_dsn: Optional[str] = None
    s3_access_key_id: Optional[str] = None
    s3_secret_access_key: Optional[str] = None
    notify_webhook_url: Optional[str] = None

    def settings(self) -> Settings:
        env = dict(os.environ)
        for field in SECRET_FIELDS:
            value = getattr(self, field)
            if value:
                env[env_name(field)] = value
        return load_settings(self.config_path, env=env)

    def storage(self) -> Storage:
        return core_context.storage(self.settings())


def drp_resource() -> DrpSettingsResource:
    """The resource as deployed: each secret is an EnvVar when that variable is set."""
    secrets = {f: dg.EnvVar(env_name(f)) for f in SECRET_FIELDS if env_name(f) in os.environ}
    return DrpSettingsResource(config_path=os.environ.get("DRP_CONFIG"), **secrets)
