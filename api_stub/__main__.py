"""``python -m api_stub --port 8080 [--latency-ms 20 --fail-rate-502 0.1 ...]``.

Each option sets the :class:`~api_stub.config.StubConfig` field of the same name
(``--fail-rate-S`` sets ``fail_rates[S]``); options not given on the command line come from
``STUB_*`` environment variables.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from api_stub.config import StubConfig
from api_stub.server import DEFAULT_PORT, run

_FAULT_STATUSES = (429, 502, 503, 504)
_OPTIONS: dict[str, type] = {
    "latency_ms": float,
    "token_ttl_s": float,
    "complete_after_s": float,
    "async_fail_rate": float,
    "retry_after_s": int,
    "ambiguous_rate": float,
    "ambiguous_hold_s": float,
    "seed": int,
    "client_id": str,
    "client_secret": str,
    "payload_errors": str,
    "capacity": int,
    "over_capacity_status": int,
    "capacity_retry_after_s": float,
    "latency_per_in_flight_ms": float,
}
_CHOICES: dict[str, tuple[object, ...]] = {
    "payload_errors": ("400", "502"),
    "over_capacity_status": (429, 503),
}
_SWITCHES = ("outage",)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m api_stub", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    for name, kind in _OPTIONS.items():
        flag = f"--{name.replace('_', '-')}"
        parser.add_argument(flag, dest=name, type=kind, choices=_CHOICES.get(name))
    for name in _SWITCHES:
        parser.add_argument(f"--{name}", dest=name, action="store_true", default=None)
    for status in _FAULT_STATUSES:
        parser.add_argument(f"--fail-rate-{status}", dest=f"fail_rate_{status}", type=float)
    parser.add_argument("--subscriptions", help="comma-separated subscription ids")

    parser.add_argument("--config-json", help="a JSON object of StubConfig fields")
    return parser


def config_from_args(args: argparse.Namespace, base: StubConfig) -> StubConfig:
    """Apply the options given on the command line over ``base``."""
    changes: dict[str, Any] = orjson.loads(args.config_json) if args.config_json else {}
    changes.update(
        {
            name: getattr(args, name)
            for name in (*_OPTIONS, *_SWITCHES)
            if getattr(args, name) is not None
        }
    )
    rates = {s: getattr(args, f"fail_rate_{s}") for s in _FAULT_STATUSES}
    if any(rate is not None for rate in rates.values()):
        merged = {**base.fail_rates, **changes.get("fail_rates", {})}
        changes["fail_rates"] = merged | {s: r for s, r in rates.items() if r is not None}
    if args.subscriptions:
        changes["subscriptions"] = [s.strip() for s in args.subscriptions.split(",") if s.strip()]
    return base.updated(changes)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the stub."""
    args = _parser().parse_args(argv)
    run(args.host, args.port, config_from_args(args, StubConfig.from_env()))


if __name__ == "__main__":
    main()
