"""The stub's listening sockets: a public port that can stop accepting, and a control port
that stays open so the control API can reopen it.

Refusing closes the public listener (the kernel then answers a connect with a reset, which
a client sees as "connection refused") and aborts the connections already open on it, as
when an upstream's front goes away. Reopening binds the same port again and serves it with
the same uvicorn protocol as before.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

__all__ = ["PublicPort", "listening_socket"]


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket (``SO_REUSEADDR``), not yet listening; port 0 picks a free one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class PublicPort:
    """Open or close the public listener of a running uvicorn server (``servers[index]``)."""

    def __init__(
        self, server: uvicorn.Server, host: str, port: int, control_port: int, index: int = 0
    ) -> None:
        self.server, self.host, self.port, self.control_port = server, host, port, control_port
        self.index = index
        self.open = True
        self.aborted = 0
        self._reopening: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        """``{"public": {"host", "port", "open"}, "control": {"host", "port"}}``."""
        return {
            "public": {"host": self.host, "port": self.port, "open": self.open},
            "control": {"host": self.host, "port": self.control_port},
        }

    def set_open(self, open_: bool) -> None:
        """Accept connections again, or refuse them and drop the open ones, from now."""
        if open_ == self.open:
            return
        self.open = open_
        if not open_:
            if self._reopening is not None:
                self._reopening.cancel()
                self._reopening = None
            self.server.servers[self.index].close()
            self._abort_connections()
        else:
            self._reopening = asyncio.get_running_loop().create_task(self._reopen())

    async def settled(self) -> None:
        """Wait until a reopening in progress listens again."""
        if self._reopening is not None:
            await asyncio.shield(self._reopening)

    async def _reopen(self) -> None:
        sock = listening_socket(self.host, self.port)
        config = self.server.config
        # uvicorn types the class as a bare asyncio.Protocol; its protocols take these keywords.
        protocol: Callable[..., asyncio.Protocol] = config.http_protocol_class
        factory = functools.partial(
            protocol,
            config=config,
            server_state=self.server.server_state,
            app_state=self.server.lifespan.state,
        )
        loop = asyncio.get_running_loop()
        new = await loop.create_server(factory, sock=sock, backlog=config.backlog)
        self.server.servers[self.index] = new

    def _abort_connections(self) -> None:
        for connection in list(self.server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is None or transport.is_closing():
                continue
            sockname = transport.get_extra_info("sockname")
            if sockname and sockname[1] == self.port:
                transport.abort()
                self.aborted += 1
