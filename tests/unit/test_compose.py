"""docker-compose.yml describes the whole stack and only names real entry points."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.main import get_command

from worker.cli.commands import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def _cli_commands() -> set[str]:
    return set(get_command(app).commands)  # type: ignore[attr-defined]


def test_every_part_of_the_stack_is_there():
    """redis, postgres, stub, intake api, worker and beat are all services."""
    assert {"redis", "postgres", "stub", "api", "worker", "beat"} <= set(SERVICES)


def test_project_services_run_real_orders_commands():
    """Every project service's command (and healthcheck) is a command of ``orders``."""
    image_built = [n for n, s in SERVICES.items() if "build" in s]
    assert image_built, "no service builds the project image"
    dockerfile = ROOT / SERVICES["api"]["build"]["dockerfile"]
    assert 'ENTRYPOINT ["orders"]' in dockerfile.read_text()
    commands = _cli_commands()
    for name in image_built:
        assert SERVICES[name]["command"][0] in commands, name
        check = SERVICES[name].get("healthcheck", {}).get("test", [])
        if len(check) > 1 and check[1] == "orders":
            assert check[2] in commands, f"{name} healthcheck"


def test_long_running_services_have_healthchecks_and_ordered_start():
    """Long-running services are health-checked; app services wait for their dependencies."""
    for name in ("redis", "postgres", "stub", "api", "worker", "beat"):
        assert "healthcheck" in SERVICES[name], name
    for name in ("api", "worker", "beat"):
        deps = SERVICES[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"


def test_app_services_point_at_the_compose_backends():
    """The ORDERS_* URLs name the compose services, with the psycopg-compatible scheme."""
    env = SERVICES["worker"]["environment"]
    assert env["ORDERS_REDIS_URL"].startswith("redis://redis:")
    assert env["ORDERS_DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in env["ORDERS_DATABASE_URL"]
    pg = SERVICES["postgres"]["environment"]
    assert f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@" in env["ORDERS_DATABASE_URL"]


def test_flower_runs_next_to_the_console():
    """Flower is a service of the stack, on the project image, watching the same broker."""
    flower = SERVICES["flower"]
    assert flower["command"][0] == "flower"
    assert flower["environment"]["ORDERS_REDIS_URL"].startswith("redis://redis:")
    assert "ORDERS_CONSOLE_SECRET" in SERVICES["api"]["environment"]


def test_no_console_secret_default_in_compose():
    """The console secret comes from the environment or the stack does not start: no
    published default in the file."""
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text
    secret = SERVICES["api"]["environment"]["ORDERS_CONSOLE_SECRET"]
    assert secret.startswith("${ORDERS_CONSOLE_SECRET:?"), secret
    for name, service in SERVICES.items():
        env = service.get("environment") or {}
        if name != "api":
            assert "ORDERS_CONSOLE_SECRET" not in env, name


def test_flower_is_not_published_to_the_world():
    """Flower has no authentication: no port of it is published on every interface."""
    for port in SERVICES["flower"].get("ports", []):
        assert str(port).startswith("127.0.0.1:"), port
