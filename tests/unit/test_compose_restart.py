"""Compose restarts what exits: every long-running service has a restart policy (a stalled
worker exits non-zero by itself; Compose does not restart an unhealthy container)."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def test_long_running_services_restart_unless_stopped() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("redis", "postgres", "stub", "api", "worker", "beat"):
        assert services[name].get("restart") == "unless-stopped", name
    assert services["migrate"]["restart"] == "no"  # one-shot
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "orders", "health"]
