"""The polling lane's read on PostgreSQL: a few psycopg async connections on the event loop.

A poll's query takes a fraction of a millisecond; handing it to a worker thread and back cost
more than the query (measured: a fifth of the API's CPU per poll in the thread pool's submit
and the future's callbacks, and as much again in SQLAlchemy's execution context). Here the
query runs on the event loop without blocking it: psycopg's ``AsyncConnection``, autocommit,
the statement prepared once per connection, rows as named tuples for
:func:`worker.views.order_view` (the view the route builds from SQLAlchemy's row: the same
bytes, the same ETag).

The connections are the lane's own (``ORDERS_API_READ_CONNECTIONS`` at most, opened on demand,
per event loop; on a busy host a poll waits on PostgreSQL's share of the CPU, so a few more
than the polls' own concurrency keeps them from queueing behind each other), with
a statement timeout and a connect timeout: a database that is slow or gone makes the read
fail fast, and the lane hands the poll to the route, which answers it the usual way. A
connection that failed is dropped, never reused. SQLite has no async driver here: the lane
reads there as the route does, in a worker thread (:mod:`worker.api.order_lane`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import make_url
from sqlalchemy.dialects import postgresql

from worker.api.order_reads import BY_ID
from worker.views import order_view

CONNECT_TIMEOUT_S = 2
STATEMENT_TIMEOUT_MS = 2000
WAIT_S = 3.0
"""The longest a poll waits for a free connection, or for its read, before the route takes it."""
# UTC session time zone: timestamps come back aware and in UTC, as SQLAlchemy's UTCDateTime
# gives them to the route.
OPTIONS = f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c TimeZone=UTC"


def conninfo(database_url: str) -> str | None:
    """A libpq URI for ``database_url``, or None when it is not PostgreSQL."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _query() -> str:
    compiled = BY_ID.compile(dialect=postgresql.dialect(paramstyle="pyformat"))  # type: ignore[no-untyped-call]
    return str(compiled)


class PgViews:
    """Order views as JSON bytes, read on the event loop (one instance per app)."""

    def __init__(self, uri: str, size: int) -> None:
        self.uri = uri
        self.size = size
        self.query = _query()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(size)

    async def view_bytes(self, caller_id: str, order_id: str) -> bytes | None:
        """The caller's order view as JSON bytes, or None; raises on any database trouble,
        and ``TimeoutError`` when no connection frees up or the read takes too long.

        A slot is given back on every path without awaiting anything (a cancelled poll
        cannot leak one); a connection is reused only after a read that completed.
        """
        self._bind_loop()
        await asyncio.wait_for(self._slots.acquire(), WAIT_S)
        conn = None
        try:
            conn = self._idle.pop() if self._idle else await self._connect()
            row = await asyncio.wait_for(self._read(conn, caller_id, order_id), WAIT_S)
        except BaseException:
            self._slots.release()
            if conn is not None:
                _close_later(conn)
            raise
        self._idle.append(conn)
        self._slots.release()
        return None if row is None else orjson.dumps(order_view(row))

    async def _read(self, conn: psycopg.AsyncConnection[Any], caller_id: str, order_id: str) -> Any:
        params = {"order_id": order_id, "caller_id": caller_id}
        cursor = await conn.execute(self.query, params, prepare=True)
        return await cursor.fetchone()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.uri,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            options=OPTIONS,
            row_factory=namedtuple_row,
        )

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests start one per client): new connections
            self._loop, self._idle = loop, []
            self._slots = asyncio.Semaphore(self.size)

    async def close(self) -> None:
        """Close the idle connections (the app is stopping)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


def _close_later(conn: psycopg.AsyncConnection[Any]) -> None:
    """Close a connection left in an unknown state, without making anyone wait for it."""
    task = asyncio.get_running_loop().create_task(conn.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


_closing: set[asyncio.Task[None]] = set()
