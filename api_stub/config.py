"""Settings of the upstream stub: latency, token lifetime, faults, capacity, subscriptions."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final, Literal, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["DEMO_CLIENT_ID", "DEMO_CLIENT_SECRET", "DEMO_SUBSCRIPTIONS", "ENV_PREFIX", "StubConfig"]

ENV_PREFIX: Final = "STUB_"
DEMO_CLIENT_ID: Final = "demo-client"
DEMO_CLIENT_SECRET: Final = "demo-secret"
DEMO_SUBSCRIPTIONS: Final = (
    "sub-00000000000000000000000000000001",
    "sub-00000000000000000000000000000002",
    "sub-00000000000000000000000000000003",
)
_JSON_FIELDS: Final = frozenset({"fail_rates", "subscriptions"})


class StubConfig(BaseModel):
    """How the stub behaves; immutable, replaced as a whole by the control API.

    Attributes:
        latency_ms: Added to every ``/api`` call before anything else.
        token_ttl_s: Real lifetime of issued tokens; ``expires_in`` is its floor (min 1).
        complete_after_s: Delay after which a ``submitted`` order reads as settled.
        async_fail_rate: Share of queued orders that settle as ``failed``, not ``complete``.
        client_id: Accepted client-credentials id.
        client_secret: Accepted client-credentials secret (a demo value, not a secret).
        fail_rates: Share of ``/api`` calls answered with each HTTP status, e.g. ``{502: 0.1}``.
        retry_after_s: ``Retry-After`` header value sent with 429 and 503, if set.
        ambiguous_rate: Share of submits that create the order, then never answer.
        ambiguous_hold_s: How long an ambiguous or timed-out request is held before a 504.
        subscriptions: Subscription ids that exist from the start.
        seed: Seed of the random generator (faults and ids); ``None`` for a random one.
        payload_errors: Status of a submit whose payload is malformed or invalid: ``"400"``
            (documented "Invalid order payload.") or ``"502"`` (the documented 502 "typically
            indicates an issue with the request payload"). Preview always answers 502.
        capacity: Most ``/api`` calls in flight at once (0: no limit); a call beyond it is
            refused at once. The token endpoint has no capacity.
        over_capacity_status: Status of that refusal, 429 or 503.
        capacity_retry_after_s: ``Retry-After`` of that refusal, rounded up to whole seconds;
            0 sends none.
        outage: Every call but the control API and the token endpoint (unknown paths
            included) answers 502 at once and changes nothing; tokens still work.
        latency_per_in_flight_ms: Added to ``latency_ms`` for each other ``/api`` call in
            flight when a call is admitted, so latency grows with load.
        jitter_sigma: Each call's latency is multiplied by ``exp(N(0, sigma))``: log-normal
            around the median ``latency_ms`` (0: no jitter).
        capacity_mode: Beyond ``capacity``, ``"refuse"`` answers ``over_capacity_status`` at
            once; ``"queue"`` holds the call in a first-come queue inside the stub until a
            slot frees (latency grows, nothing is refused).
        order_list: Whether ``GET /api/objects/limio/orders`` exists; when off it answers
            404 like an upstream without it (GET by id still works).
        outage_token: The outage covers the token endpoint too.
        refuse_connections: The public port stops accepting connections (and drops the
            open ones) so calls fail with "connection refused"; needs a control port.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(default=0.0, ge=0)
    token_ttl_s: float = Field(default=3600.0, gt=0)
    complete_after_s: float = Field(default=0.5, ge=0)
    async_fail_rate: float = Field(default=0.0, ge=0, le=1)
    client_id: str = DEMO_CLIENT_ID
    client_secret: str = DEMO_CLIENT_SECRET
    fail_rates: dict[int, float] = Field(default_factory=dict)
    retry_after_s: int | None = Field(default=None, ge=0)
    ambiguous_rate: float = Field(default=0.0, ge=0, le=1)
    ambiguous_hold_s: float = Field(default=30.0, ge=0)
    subscriptions: list[str] = Field(default_factory=lambda: list(DEMO_SUBSCRIPTIONS))
    seed: int | None = None
    payload_errors: Literal["400", "502"] = "400"
    capacity: int = Field(default=0, ge=0)
    over_capacity_status: Literal[429, 503] = 429
    capacity_retry_after_s: float = Field(default=1.0, ge=0)
    outage: bool = False
    latency_per_in_flight_ms: float = Field(default=0.0, ge=0)
    jitter_sigma: float = Field(default=0.0, ge=0, le=3)
    capacity_mode: Literal["refuse", "queue"] = "refuse"
    order_list: bool = True
    outage_token: bool = False
    refuse_connections: bool = False

    @field_validator("payload_errors", mode="before")
    @classmethod
    def _status_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("over_capacity_status", mode="before")
    @classmethod
    def _status_as_number(cls, value: Any) -> Any:
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    @field_validator("fail_rates")
    @classmethod
    def _check_rates(cls, rates: dict[int, float]) -> dict[int, float]:
        for status, rate in rates.items():
            if not 400 <= status <= 599:
                raise ValueError(f"status {status} is not an HTTP error status")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"rate {rate} of status {status} is not within [0, 1]")
        return rates

    @model_validator(mode="after")
    def _check_total(self) -> Self:
        if sum(self.fail_rates.values()) + self.ambiguous_rate > 1.0 + 1e-9:
            raise ValueError("fail_rates and ambiguous_rate add up to more than 1")
        return self

    def updated(self, changes: Mapping[str, Any]) -> StubConfig:
        """Return a validated copy with ``changes`` applied (a partial update)."""
        return StubConfig.model_validate({**self.model_dump(), **changes})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StubConfig:
        """Read ``STUB_<FIELD>`` variables; JSON for ``fail_rates``, JSON or CSV for ids.

        Example: ``STUB_LATENCY_MS=20 STUB_FAIL_RATES='{"502": 0.1}'``.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(f"{ENV_PREFIX}{name.upper()}")
            if raw is None:
                continue
            if name in _JSON_FIELDS and raw.lstrip().startswith(("{", "[")):
                values[name] = orjson.loads(raw)
            elif name == "subscriptions":
                values[name] = [part.strip() for part in raw.split(",") if part.strip()]
            else:
                values[name] = None if raw.lower() in {"", "none", "null"} else raw
        return cls.model_validate(values)
