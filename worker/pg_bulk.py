"""PostgreSQL's fast path for the repository's bulk writes: one statement for many rows.

Each column travels as one array (in the driver's binary format: the text format quotes every
JSON value with a regular expression, five times the CPU) and ``unnest`` turns the arrays back
into rows, so a chunk's moves cost one round trip and one statement whatever their number,
instead of a statement per row (``executemany``, whose per-row work in SQLAlchemy and the
driver was a fifth of a worker's CPU: bench/RESULTS.md, "Fifth pass"). The statement text
depends only on the columns, so it is built once per set of columns and the driver prepares
it. Values go through each column's own bind processing (UTC datetimes, JSONB), exactly as
SQLAlchemy would send them. SQLite keeps SQLAlchemy's ``executemany`` (see ``repository``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Dialect

Processor = Callable[[Any], Any] | None


def is_postgresql(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


@cache
def _column_sql(table: Table, name: str, dialect: Dialect) -> tuple[str, Processor]:
    """The SQL type of ``table.name`` (for the array cast) and its bind processor."""
    column = table.c[name]
    impl = column.type.dialect_impl(dialect)
    return column.type.compile(dialect=dialect), impl.bind_processor(dialect)


def _values(conn: Connection, table: Table, column: str, values: list[Any]) -> list[Any]:
    """``values`` as the driver must receive them for ``column`` (None stays None)."""
    _, process = _column_sql(table, column, conn.dialect)
    if process is None:
        return values
    return [None if v is None else process(v) for v in values]


def update_many(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    match: Mapping[str, str],
    set_from: Mapping[str, str],
    set_to: Mapping[str, Any],
    where: str = "",
    params: Mapping[str, Any] | None = None,
    returning: str = "id",
) -> list[Any]:
    """Update every row of ``rows`` in one statement; returns ``returning`` of those matched.

    Each row is a dict of fields. ``match`` (``{column: field}``) says which columns must equal
    which field of a row (the primary key among them); ``set_from`` which columns take which
    field; ``set_to`` sets columns to one value for every row; ``where`` adds a condition on
    the table (alias ``t``) with ``params``. A field is typed as the column it goes with.
    """
    if not rows:
        return []
    typed = {f: c for c, f in (*match.items(), *set_from.items())}
    fields = tuple(sorted(typed))
    sql = _update_sql(
        table,
        conn.dialect,
        tuple((f, typed[f]) for f in fields),
        tuple(sorted(match.items())),
        tuple(sorted(set_from.items())),
        tuple(sorted(set_to)),
        where,
        returning,
    )
    bound: dict[str, Any] = {
        f"a_{f}": _values(conn, table, typed[f], [row[f] for row in rows]) for f in fields
    }
    for column, value in set_to.items():
        bound[f"s_{column}"] = _values(conn, table, column, [value])[0]
    bound.update(params or {})
    return [r[0] for r in conn.exec_driver_sql(sql, bound)]


@cache
def _update_sql(
    table: Table,
    dialect: Dialect,
    typed: tuple[tuple[str, str], ...],
    match: tuple[tuple[str, str], ...],
    set_from: tuple[tuple[str, str], ...],
    set_to: tuple[str, ...],
    where: str,
    returning: str,
) -> str:
    casts = ", ".join(f"%(a_{f})b::{_column_sql(table, c, dialect)[0]}[]" for f, c in typed)
    names = ", ".join(f for f, _ in typed)
    sets = [f"{c} = v.{f}" for c, f in set_from] + [f"{c} = %(s_{c})s" for c in set_to]
    conds = [f"t.{c} = v.{f}" for c, f in match] + ([where] if where else [])
    return (
        f"UPDATE {table.name} AS t SET {', '.join(sets)} "
        f"FROM unnest({casts}) AS v({names}) "
        f"WHERE {' AND '.join(conds)} RETURNING t.{returning}"
    )


def insert_many(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """``INSERT INTO table`` every row (all with the same keys, column names) at once."""
    if not rows:
        return
    names = tuple(sorted(rows[0]))
    bound = {f"a_{n}": _values(conn, table, n, [row[n] for row in rows]) for n in names}
    conn.exec_driver_sql(_insert_sql(table, conn.dialect, names), bound)


@cache
def _insert_sql(table: Table, dialect: Dialect, names: tuple[str, ...]) -> str:
    casts = ", ".join(f"%(a_{n})b::{_column_sql(table, n, dialect)[0]}[]" for n in names)
    return f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({casts})"
