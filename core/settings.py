"""Deployment settings: one pydantic-settings object, read from ``LATENTOPS_*`` environment variables.

There is exactly one place where the deployment is configured. Jobs carry their own validated
config objects; nothing here is read from ``sys.argv`` or changed at import time.

Two modes:

* ``embedded`` (the default, ``make demo`` and ``latentops up``): SQLite in ``LATENTOPS_HOME``, a
  Redis broker that ``latentops up`` starts on a unix socket in the home folder, an in-process
  policy engine and a local MLflow store.
* ``production``: every URL must be given explicitly and insecure defaults are refused.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from latentops.core.errors import ConfigurationError

INSECURE_SECRET = "latentops-embedded-insecure-secret"
ENV_PREFIX = "LATENTOPS_"


class Settings(BaseSettings):
    """Everything a deployment can set. Field ``foo`` is read from ``LATENTOPS_FOO``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    mode: Literal["embedded", "production"] = "embedded"
    home: Path = Field(default_factory=lambda: Path("~/.latentops"))
    database_url: str = ""
    broker_url: str = ""
    mlflow_tracking_uri: str = Field(default="", validation_alias="MLFLOW_TRACKING_URI")
    policy_engine: Literal["embedded", "opa"] = "embedded"
    opa_url: str = "http://127.0.0.1:8181"
    # push: the process uploads policies to OPA (development). bundle: OPA pulls them from
    # /api/v1/policies/bundle.tar.gz and a decision counts only when OPA made it with the revision
    # in force; OPA gets opa_bundle_wait_s to pull a new revision before decisions fail closed.
    opa_mode: Literal["push", "bundle"] = "push"
    opa_bundle_wait_s: float = Field(default=15.0, gt=0)
    model_store: Path | None = None
    secret_key: str = INSECURE_SECRET
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    # The broker must not redeliver a running job just because it is long: one day.
    visibility_timeout_s: int = Field(default=86_400, ge=60)
    job_heartbeat_s: float = Field(default=5.0, gt=0)
    job_lease_s: float = Field(default=60.0, gt=0)
    # Each worker sweeps for jobs whose lease expired (a crashed worker) or whose broker message
    # may be lost (queued or retrying longer than requeue_after_s since the last dispatch).
    sweep_interval_s: float = Field(default=15.0, gt=0)
    requeue_after_s: float = Field(default=600.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Prometheus endpoint of each worker process (process i listens on port + i); off when unset.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_host: str = "0.0.0.0"
    # Web portal and REST API: browser sessions, login throttling and lockout, upload limits.
    public_url: str = ""  # how browsers reach the API (OIDC redirect URI); derived from the request when empty
    cookie_secure: bool | None = None  # Secure cookies; None: on in production mode and behind https
    session_hours: float = Field(default=12.0, gt=0)
    login_max_failures: int = Field(default=5, ge=1)
    login_lockout_s: int = Field(default=900, ge=1)
    login_rate_per_minute: int = Field(default=20, ge=1)  # login attempts per client address
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)  # one request body
    # JSON request bodies: at most this many bytes (413) and this many levels of nesting (422).
    max_json_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_json_depth: int = Field(default=32, ge=4, le=200)
    # Proxies whose X-Forwarded-For and X-Forwarded-Proto are believed (IPs or CIDRs, comma-separated
    # or a JSON list). Empty: the direct peer is the client, whatever headers it sends.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Enterprise single sign-on (OpenID Connect). Groups map to teams and roles:
    # {"idp-group": {"team": "design", "role": "submitter"}, ...}
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_scopes: str = "openid email profile groups"
    oidc_groups_claim: str = "groups"
    oidc_group_map: dict[str, dict[str, str]] = Field(default_factory=dict)
    # Audit trail: the Ed25519 checkpoint signing key (PEM; its keyring of public keys, old ones
    # kept across rotations, sits beside it) and the external append-only checkpoint sink (a file
    # path or scheme://... for a registered WORM sink). Defaults under LATENTOPS_HOME/audit/.
    audit_signing_key: Path | None = None
    audit_sink: str = ""
    # API servers integrate audit entries in a background thread that gathers the commits of this
    # many milliseconds into one batch; 0 integrates each commit as soon as the thread is free.
    audit_batch_ms: int = Field(default=100, ge=0, le=10_000)
    # Pending audit rows carry an HMAC-SHA256 made with this key (hex, mode 0600, created on first
    # use; default LATENTOPS_HOME/audit/pending-mac-key); every process writing to the database
    # shares it. Keep it off the database host, like the signing key.
    audit_mac_key: Path | None = None
    # How far an entry's time may lie before the entry written just before it (clock differences).
    audit_max_skew_s: float = Field(default=10.0, ge=0)
    # Integrators sign a checkpoint once this many entries, or any entry older than this many
    # seconds, lie beyond the last one (0 turns either rule off).
    audit_checkpoint_entries: int = Field(default=1000, ge=0)
    audit_checkpoint_s: float = Field(default=300.0, ge=0)
    # The log's origin, the first line of every C2SP checkpoint note and its key name: stable for the
    # deployment (e.g. latentops.example/audit/prod). Empty: derived from the first entry's hash.
    audit_origin: str = Field(default="", max_length=100, pattern=r"^[^\s+]*$")
    # Witnesses that cosign each checkpoint (C2SP tlog-witness), as name+keyhash+base64key@url (their
    # vkey, then the submission prefix), comma-separated or a JSON list; each gets this many seconds
    # per request, and is asked again after this many seconds when it missed the latest checkpoint.
    audit_witnesses: Annotated[list[str], NoDecode] = Field(default_factory=list)
    audit_witness_timeout_s: float = Field(default=3.0, gt=0, le=60)
    audit_witness_retry_s: float = Field(default=60.0, ge=0)
    # How many of the witnesses must cosign for the deployment's own policy (evidence packs state
    # it; `audit verify --witnesses-required` is the auditor's). None: all of them.
    audit_witnesses_required: int | None = Field(default=None, ge=0)

    @field_validator("home", "model_store", "audit_signing_key", "audit_mac_key", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxy_networks(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        if isinstance(value, list):
            for item in value:
                try:
                    ipaddress.ip_network(str(item), strict=False)
                except ValueError:
                    raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value

    @field_validator("audit_witnesses", mode="before")
    @classmethod
    def _witness_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        if isinstance(value, list):
            for item in value:
                vkey, at, url = str(item).rpartition("@")
                if not at or len(vkey.split("+", 2)) != 3 or not url.startswith(("http://", "https://")):
                    raise ValueError(f"{item!r} is not name+keyhash+base64key@http(s)://url")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql:// URL")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "redis+socket://", "amqp://", "amqps://")):
            raise ValueError("must be a redis://, rediss://, redis+socket:// or amqp:// URL")
        return value

    @model_validator(mode="after")
    def _defaults_and_safety(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'latentops.db'}"
        if not self.broker_url:
            self.broker_url = f"redis+socket://{self.local_redis_socket}"
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{self.home / 'mlflow.db'}"
        if self.model_store is None:
            self.model_store = self.home / "models"
        if self.audit_signing_key is None:
            self.audit_signing_key = self.home / "audit" / "checkpoint-signing-key.pem"
        if self.audit_mac_key is None:
            self.audit_mac_key = self.home / "audit" / "pending-mac-key"
        if not self.audit_sink:
            self.audit_sink = str(self.home / "audit" / "checkpoints.jsonl")
        if self.mode == "production":
            if self.secret_key == INSECURE_SECRET or len(self.secret_key) < 32:
                raise ValueError(
                    "LATENTOPS_SECRET_KEY: the built-in development secret is refused in production mode; "
                    "set a random value of at least 32 characters"
                )
            if self.database_url.startswith("sqlite"):
                raise ValueError("LATENTOPS_DATABASE_URL: production mode needs PostgreSQL, not SQLite")
        return self

    # Paths derived from the home folder ------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def local_redis_socket(self) -> Path:
        return self.home / "run" / "redis.sock"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def uses_local_broker(self) -> bool:
        return self.broker_url == f"redis+socket://{self.local_redis_socket}"

    def ensure_home(self) -> None:
        for path in (self.home, self.run_dir, self.artifacts_dir, self.jobs_dir):
            path.mkdir(parents=True, exist_ok=True)


def _describe(error: ValidationError) -> str:
    """One line naming the environment variable and what is wrong with it."""
    first = error.errors()[0]
    loc = [str(part) for part in first.get("loc", ())]
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:
        return message
    name = loc[0]
    variable = "MLFLOW_TRACKING_URI" if name == "mlflow_tracking_uri" else f"{ENV_PREFIX}{name.upper()}"
    return f"{variable}: {message} (got {os.environ.get(variable, '<unset>')!r})"


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment; raise ``ConfigurationError`` with one clear line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise ConfigurationError(_describe(error)) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call ``get_settings.cache_clear()``."""
    return load_settings()
