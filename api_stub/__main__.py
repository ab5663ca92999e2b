"""``python -m api_stub --port 8080 [--latency-ms 20 --fail-rate-502 0.1 ...]``.

Upstreams that push back: ``--latency-ms 50 --jitter-sigma 0.5`` (log-normal around the
median), ``--capacity 16 --capacity-mode queue`` (or ``refuse``, with ``--over-capacity-status``
and ``--capacity-retry-after-s``), ``--no-order-list`` (the list answers 404), ``--outage``
(every path but the token and control answers 502; ``--outage-token`` covers the token too),
and ``--control-port P`` so that ``refuse_connections`` can be switched at run time.

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
    "jitter_sigma": float,
    "capacity_mode": str,
}
_CHOICES: dict[str, tuple[object, ...]] = {
    "payload_errors": ("400", "502"),
    "over_capacity_status": (429, 503),
    "capacity_mode": ("refuse", "queue"),
}
_SWITCHES = ("outage", "outage_token")
_ON_OFF = ("order_list",)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m api_stub", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    for name, kind in _OPTIONS.items():
        flag = f"--{name.replace('_', '-')}"
        parser.add_argument(flag, dest=name, type=kind, choices=_CHOICES.get(name))
    for name in _SWITCHES:
        parser.add_argument(
            f"--{name.replace('_', '-')}", dest=name, action="store_true", default=None
        )
    for name in _ON_OFF:
        flag = f"--{name.replace('_', '-')}"
        parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--control-port",
        type=int,
        help="a second port for the control API, open while the public one refuses connections",
    )
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
            for name in (*_OPTIONS, *_SWITCHES, *_ON_OFF)
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
    config = config_from_args(args, StubConfig.from_env())
    run(args.host, args.port, config, control_port=args.control_port)


if __name__ == "__main__":
    main()
