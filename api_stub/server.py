"""Serve the stub with uvicorn: one process (state is in memory), no access log."""

from __future__ import annotations

from typing import Final

import uvicorn
from starlette.applications import Starlette

from api_stub.app import create_app
from api_stub.config import StubConfig

__all__ = ["DEFAULT_PORT", "run", "server_config"]

DEFAULT_PORT: Final = 8080
# Held (ambiguous/timeout) requests must not delay a shutdown for their whole hold time.
_GRACEFUL_SHUTDOWN_S: Final = 1


def server_config(
    app: Starlette, host: str = "127.0.0.1", port: int = DEFAULT_PORT
) -> uvicorn.Config:
    """Uvicorn settings for the stub: uvloop/httptools when installed, quiet, no lifespan."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
    )


def run(
    host: str = "127.0.0.1", port: int = DEFAULT_PORT, config: StubConfig | None = None
) -> None:
    """Serve the stub until interrupted.

    Args:
        host: Interface to bind.
        port: TCP port to bind.
        config: Behaviour of the stub; default read from ``STUB_*`` environment variables.
    """
    app = create_app(config if config is not None else StubConfig.from_env())
    uvicorn.Server(server_config(app, host, port)).run()
