"""Serve the stub with uvicorn: one process (state is in memory), no access log.

With a control port the stub listens on two sockets, one uvicorn server: the public one,
which ``refuse_connections`` closes and reopens (:mod:`api_stub.listeners`), and the
control one, which always stays open (it serves the same app; use it for ``/_stub/``).
"""

from __future__ import annotations

import socket
from typing import Final

import uvicorn
from starlette.applications import Starlette

from api_stub.app import create_app
from api_stub.config import StubConfig
from api_stub.listeners import PublicPort, listening_socket

__all__ = ["DEFAULT_PORT", "StubServer", "run", "server_config"]

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


class StubServer:
    """The stub's uvicorn server on its sockets: public, and control when asked for."""

    def __init__(
        self,
        config: StubConfig | None,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        control_port: int | None = None,
    ) -> None:
        if config is not None and config.refuse_connections:
            raise ValueError(
                "refuse_connections: switch it on at run time, through the control port"
            )
        self.app = create_app(config)
        self.sockets: list[socket.socket] = [listening_socket(host, port)]
        self.port = int(self.sockets[0].getsockname()[1])
        self.control_port: int | None = None
        self.server = uvicorn.Server(server_config(self.app, host, self.port))
        if control_port is not None:
            self.sockets.append(listening_socket(host, control_port))
            self.control_port = int(self.sockets[1].getsockname()[1])
            state = self.app.state.stub
            state.public_port = PublicPort(self.server, host, self.port, self.control_port)

    def run(self) -> None:
        """Serve until ``server.should_exit`` (or a signal, in the main thread)."""
        self.server.run(sockets=self.sockets)

    def close(self) -> None:
        """Close the sockets (after the server stopped)."""
        for sock in self.sockets:
            sock.close()


def run(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    config: StubConfig | None = None,
    control_port: int | None = None,
) -> None:
    """Serve the stub until interrupted.

    Args:
        host: Interface to bind.
        port: TCP port to bind.
        config: Behaviour of the stub; default read from ``STUB_*`` environment variables.
        control_port: A second port for the control API, which stays open while the public
            one refuses connections; ``None`` for none (then ``refuse_connections`` is refused).
    """
    stub = StubServer(
        config if config is not None else StubConfig.from_env(), host, port, control_port
    )
    try:
        stub.run()
    finally:
        stub.close()
