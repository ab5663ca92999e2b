"""Build the budget's objects from settings (shared by workers, the API's metrics, the CLI)."""

from __future__ import annotations

import redis

from worker.flow.gate import Gate
from worker.flow.state import FlowConfig
from worker.flow.store import FlowStore, flow_prefix
from worker.ids import sha256_hex
from worker.settings import Settings

# A process's lease lives this long unless it syncs again (about ten times a second): long
# enough to ride out a stalled moment, short enough that a dead process's permits free soon.
LEASE_TTL_S = 3.0


def flow_config(settings: Settings) -> FlowConfig:
    return FlowConfig(ceiling=settings.upstream_max_in_flight, max_rps=settings.upstream_max_rps)


def build_store(settings: Settings, client: redis.Redis) -> FlowStore:
    """The budget of this upstream (one per upstream URL and client id, like the token)."""
    digest = sha256_hex(f"{settings.upstream_url}|{settings.upstream_client_id}")[:16]
    return FlowStore(client, flow_prefix(digest), flow_config(settings))


def build_gate(settings: Settings, client: redis.Redis) -> Gate:
    return Gate(build_store(settings, client), ttl_s=LEASE_TTL_S)
