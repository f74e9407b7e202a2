"""Settings of the web console (`CATALOGAN_CONSOLE_*`), read once when the app is built."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from db.settings import BaseSettings  # pydantic-settings whose errors name the CATALOGAN_* variable


class ConsoleSettings(BaseSettings):
    """The console under `/console/`: session lifetime, HTTPS detection behind a proxy, operator keys."""

    model_config = SettingsConfigDict(env_prefix="CATALOGAN_CONSOLE_", extra="ignore", frozen=True)

    session_ttl_seconds: int = Field(
        default=8 * 3600, ge=60, le=30 * 24 * 3600, description="How long a sign-in lasts."
    )
    trust_forwarded_proto: bool = Field(
        default=False,
        description="Behind a TLS-terminating proxy: treat `X-Forwarded-Proto: https` as HTTPS (Secure cookies).",
    )
    operator_key_ids: list[str] = Field(
        default_factory=list,
        description="API key ids (from `catalogan keys ls`) allowed to promote and retire model versions.",
    )
    page_size: int = Field(default=60, ge=1, le=500, description="Image tiles per page of a job's grid.")
    jobs_page_size: int = Field(default=25, ge=1, le=200, description="Jobs per page of the jobs list.")
