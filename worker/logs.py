"""Structured logs (structlog): key-value events, JSON when ``ORDERS_LOG_JSON=true``.

URLs we call may carry credentials (a webhook's ``https://user:pass@host/h?token=...``):
httpx and httpcore log every request URL at INFO and more at DEBUG, so they are held at
WARNING whatever ``level`` is; we log webhook URLs only through ``redact_url``.
"""

from __future__ import annotations

import logging
import sys

import structlog

QUIET_LOGGERS = ("httpx", "httpcore")


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    """Route structlog and stdlib logging to stderr at ``level``."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
