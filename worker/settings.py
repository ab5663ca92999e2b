"""One typed configuration object, read once from ``ORDERS_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.batches import HaltOn

DEFAULT_HOME = Path(".orders")
DEFAULT_STUB_PORT = 18080


class ConfigError(RuntimeError):
    """The environment holds an invalid ``ORDERS_*`` value; the message names it."""


class Settings(BaseSettings):
    """Everything the services read from the environment (see the README's table)."""

    model_config = SettingsConfigDict(env_prefix="ORDERS_", extra="ignore", frozen=True)

    home: Path = DEFAULT_HOME
    database_url: str = ""
    redis_url: str | None = None

    upstream_url: str = f"http://127.0.0.1:{DEFAULT_STUB_PORT}"
    upstream_client_id: str = "demo-client"
    upstream_client_secret: SecretStr = SecretStr("demo-secret")
    upstream_preview_path: str = "/api/partner/order/preview"
    upstream_submit_path: str = "/api/partner/order"
    upstream_connect_timeout_s: float = Field(5.0, gt=0)
    upstream_read_timeout_s: float = Field(15.0, gt=0)
    upstream_write_timeout_s: float = Field(5.0, gt=0)
    upstream_pool_timeout_s: float = Field(5.0, gt=0)
    # How upstream calls travel: the standard library's http.client (a third of httpx's CPU
    # per call), or httpx (chosen by itself when an HTTP(S)_PROXY applies to the upstream).
    upstream_http: Literal["stdlib", "httpx"] = "stdlib"
    token_refresh_margin_s: float = Field(60.0, ge=0)

    retry_max_attempts: int = Field(8, ge=1)
    retry_max_age_s: float = Field(6 * 3600.0, gt=0)
    retry_base_s: float = Field(2.0, gt=0)
    retry_cap_s: float = Field(300.0, gt=0)
    # Every wait is a due_at in the database; one up to this long also gets a countdown tick (a
    # dispatch pass when it ends), far below the broker's 1 h visibility timeout. Longer ones
    # are sent by the sweep's pass once due.
    retry_countdown_max_s: float = Field(30.0, ge=0)
    # An operator's retry of many orders releases this many per second (0: all at once).
    retry_spread_per_s: float = Field(50.0, ge=0)

    # Detects dead workers, not slow calls: a run renews the leases of the orders still waiting
    # on a call every third of it (worker/pipeline/flight.py), so a live worker keeps them, yet
    # a dead one's orders come back within minutes.
    lease_s: float = Field(120.0, gt=0)
    sweep_interval_s: float = Field(5.0, gt=0)
    enqueue_grace_s: float = Field(30.0, gt=0)
    follow_interval_s: float = Field(2.0, gt=0)
    follow_max_age_s: float = Field(24 * 3600.0, gt=0)
    submit_unknown_policy: Literal["hold", "resubmit"] = "hold"
    reconcile_delay_s: float = Field(5.0, ge=0)
    reconcile_max_pages: int = Field(50, ge=0)

    # At most 50 ids per message: all of a chunk's upstream calls fit in one round of
    # http_concurrency (64), and a lost message delays only 50 orders. The dispatcher sends
    # fewer when three shares of the upstream's learned limit per live worker process are fewer
    # (worker/queue/dispatcher.py CHUNK_SHARES).
    chunk_size: int = Field(50, ge=1, le=1000)
    # A dispatch pass fills the broker's orders queue up to this many chunks per live worker
    # process; the rest of the backlog waits in the database (shared fairly between callers).
    # One is enough: every process refills the queue after each chunk it ran, and a newcomer
    # waits behind half as much (bench/flow.py --matrix row g: 1.3-1.5 s -> 0.85-1.05 s).
    dispatch_chunks_per_process: int = Field(1, ge=1, le=100)
    http_concurrency: int = Field(64, ge=1, le=512)
    # Four hosts of the default worker (4 processes x 64 calls): binding only for a larger
    # fleet; the limit the fleet runs at is learned below it from the upstream's answers.
    upstream_max_in_flight: int = Field(1024, ge=1, le=100_000)
    upstream_max_rps: float = Field(0.0, ge=0, le=1_000_000)

    webhook_allow_private: bool = False
    webhook_timeout_s: float = Field(10.0, gt=0)
    webhook_max_attempts: int = Field(8, ge=1)
    webhook_chunk_size: int = Field(20, ge=1, le=200)
    webhook_max_in_flight_per_endpoint: int = Field(4, ge=1)
    webhook_max_endpoints_per_caller: int = Field(10, ge=1)
    webhook_resolve_timeout_s: float = Field(2.0, gt=0)
    webhook_registrations_per_minute: int = Field(10, ge=1)

    max_body_bytes: int = Field(1_000_000, gt=0)
    max_batch_bytes: int = Field(32_000_000, gt=0)
    max_batch_items: int = Field(10_000, gt=0)
    max_batches_in_flight_per_caller: int = Field(2, ge=1)
    """Batches of one caller taken in at once by one API process (429 beyond)."""
    idempotency_ttl_s: float = Field(24 * 3600.0, gt=0)
    # Retention (0 = keep forever): finished orders with their history, and webhook deliveries
    # that reached a final state, are deleted by the sweeper once older than these.
    retention_orders_days: float = Field(90.0, ge=0)
    retention_deliveries_days: float = Field(14.0, ge=0)
    retention_batch: int = Field(500, ge=1, le=10_000)
    # A batch's stop rule when it is posted without "halt_on" (JSON {"failed_share", "after"});
    # per caller id in batch_halt_on_by_caller, for every caller in batch_halt_on.
    batch_halt_on: HaltOn | None = None
    batch_halt_on_by_caller: dict[str, HaltOn] = Field(default_factory=dict)

    http_max_header_bytes: int = Field(64 * 1024, ge=4096, le=1024 * 1024)
    """Request line plus headers of one request (``orders api``; beyond: 400, closed)."""
    http_header_timeout_s: float = Field(10.0, gt=0)
    """A request's headers must arrive within this after its first byte (``orders api``)."""
    api_read_connections: int = Field(16, ge=1, le=200)
    """PostgreSQL connections per API process answering polls of an order view on the event
    loop (opened on demand; SQLite: the route's worker threads)."""

    console_secret: SecretStr | None = None
    """Signs console sessions; unset: a random secret kept in ``$ORDERS_HOME/console.secret``."""
    console_session_s: float = Field(8 * 3600.0, gt=0)
    console_secure_cookie: bool = False
    """Mark the session cookie ``Secure`` whatever the request's scheme (behind a TLS proxy)."""
    console_signin_failures_per_minute: int = Field(10, ge=1)

    api_url: str = "http://127.0.0.1:8000"
    api_key: SecretStr | None = None

    log_level: str = "INFO"
    log_json: bool = False

    def halt_on_for(self, caller_id: str) -> HaltOn | None:
        """The stop rule of a batch posted by ``caller_id`` without its own."""
        return self.batch_halt_on_by_caller.get(caller_id, self.batch_halt_on)

    @field_validator("console_secret")
    @classmethod
    def _strong_console_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            problem = weak_secret(value.get_secret_value())
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("upstream_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _normalise_db_url(cls, value: str) -> str:
        return normalise_database_url(value) if value else value

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if not self.database_url:
            db_file = (self.home / "orders.db").resolve()
            object.__setattr__(self, "database_url", f"sqlite:///{db_file}")
        if self.retry_cap_s < self.retry_base_s:
            raise ValueError("ORDERS_RETRY_CAP_S must be >= ORDERS_RETRY_BASE_S")
        return self


MIN_SECRET_CHARS = 32
# Placeholders seen in examples and in older versions of docker-compose.yml.
KNOWN_DEFAULT_SECRETS = frozenset(
    {"change-me-console-secret", "change-me", "changeme", "secret", "console-secret"}
)


def weak_secret(value: str) -> str | None:
    """Why ``value`` must not sign console sessions (empty, short, a known default), or None."""
    if value.strip().lower() in KNOWN_DEFAULT_SECRETS:
        return "is a published default: set a random one (openssl rand -hex 32)"
    if len(value.strip()) < MIN_SECRET_CHARS:
        return (
            f"is empty or shorter than {MIN_SECRET_CHARS} characters: "
            "set a random one (openssl rand -hex 32), or unset it for $ORDERS_HOME/console.secret"
        )
    return None


def normalise_database_url(url: str) -> str:
    """Map ``postgres://`` and ``postgresql://`` URLs to the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def load_settings() -> Settings:
    """Read the environment, turning a validation error into one readable ``ConfigError``."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"ORDERS_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
