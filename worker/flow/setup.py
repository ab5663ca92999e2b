"""Build the budget's objects from settings (shared by workers, the API's metrics, the CLI)."""

from __future__ import annotations

import redis

from worker.flow.gate import Gate
from worker.flow.limit import LimitConfig
from worker.flow.state import FlowConfig
from worker.flow.store import FlowStore, flow_prefix
from worker.ids import sha256_hex
from worker.settings import Settings


def flow_config(settings: Settings) -> FlowConfig:
    return FlowConfig(
        LimitConfig(ceiling=settings.upstream_max_in_flight), max_rps=settings.upstream_max_rps
    )


def build_store(settings: Settings, client: redis.Redis) -> FlowStore:
    """The budget of this upstream (one per upstream URL and client id, like the token)."""
    digest = sha256_hex(f"{settings.upstream_url}|{settings.upstream_client_id}")[:16]
    return FlowStore(client, flow_prefix(digest), flow_config(settings))


# A permit lives this long unless its process renews it (every report, ~10 times a second):
# long enough to ride out a stalled process, short enough that a dead one frees its permits.
PERMIT_TTL_S = 10.0


def build_gate(settings: Settings, client: redis.Redis) -> Gate:
    return Gate(build_store(settings, client), ttl_s=PERMIT_TTL_S)
