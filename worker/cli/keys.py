"""``orders keys``: create, list, revoke and rotate the API keys of callers and operators.

A key is printed once, alone on the last line of standard output (``create``, ``rotate``);
everything else goes to standard error. A refused request (name taken, unknown name, revoked
key) is one line on standard error and exit status 1.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

import typer

from worker.settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

T = TypeVar("T")
keys_app = typer.Typer(help="API keys of callers and operators.", no_args_is_help=True)


def _key_admin(action: Callable[[], T]) -> T:
    """Run ``action``; a refused request is one line on stderr and exit 1."""
    from sqlalchemy.exc import IntegrityError

    from worker.errors import InvalidInput, KeyAdminError

    messages = {
        "name_taken": "a key named {name!r} already exists (see `orders keys list`)",
        "unknown_name": "no key named {name!r} (see `orders keys list`)",
        "revoked": "the key {name!r} is revoked; create a new one under another name",
    }
    try:
        return action()
    except KeyAdminError as exc:
        typer.echo(f"error: {messages[exc.reason].format(name=exc.name)}", err=True)
    except InvalidInput as exc:
        typer.echo(f"error: {exc.message}", err=True)
    except IntegrityError:  # another process created the same name between check and commit
        typer.echo("error: that name was taken meanwhile (see `orders keys list`)", err=True)
    raise typer.Exit(1)


def _in_transaction(action: Callable[[Session], T]) -> T:
    """Run ``action`` in one transaction, through :func:`_key_admin`."""
    from worker.db import transaction

    def run() -> T:
        with transaction(get_settings().database_url) as session:
            return action(session)

    return _key_admin(run)


@keys_app.command("create")
def keys_create(
    name: str,
    operator: bool = typer.Option(
        False, "--operator", help="An operator key (console, /metrics), not a caller key."
    ),
    weight: int = typer.Option(
        1, min=1, max=1000, help="The caller's share of the upstream when it is the limit."
    ),
) -> None:
    """Create a caller (or operator) and print its new key once, alone on the last line."""
    from worker.intake.callers import ROLE_CALLER, ROLE_OPERATOR, create_caller

    role = ROLE_OPERATOR if operator else ROLE_CALLER
    caller, key = _in_transaction(
        lambda session: create_caller(session, name, role=role, weight=weight)
    )
    typer.echo(f"{role} {caller.id} ({name}) created; its key (shown once):", err=True)
    typer.echo(key)


@keys_app.command("weight")
def keys_weight(
    name: str, weight: int = typer.Argument(..., min=1, max=1000, help="1 = an equal share.")
) -> None:
    """Change a caller's weight: its share of the dispatch slots relative to other callers."""
    from worker.intake.callers import set_weight

    _in_transaction(lambda session: set_weight(session, name, weight))
    typer.echo(f"{name}: weight {weight}", err=True)


@keys_app.command("list")
def keys_list() -> None:
    """Every key: name, role, prefix, created, last used (to the minute), revoked."""
    from rich.console import Console
    from rich.table import Table

    from worker.intake.callers import list_callers

    def stamp(value: datetime | None) -> str:
        return value.strftime("%Y-%m-%d %H:%M") if value else "-"

    table = Table("name", "id", "role", "weight", "key", "created", "last used", "revoked")
    for c in _in_transaction(list_callers):
        table.add_row(
            c.name,
            c.id,
            c.role,
            str(c.weight),
            c.key_prefix + "...",
            stamp(c.created_at),
            stamp(c.last_used_at),
            stamp(c.revoked_at),
        )
    Console(width=160).print(table)


@keys_app.command("revoke")
def keys_revoke(name: str) -> None:
    """Revoke a key: every API process refuses it within seconds. Its orders are kept."""
    import getpass

    from worker.actions import actor as actors
    from worker.actions.revoke import revoke_key

    who = actors.admin(getpass.getuser())
    done = _key_admin(lambda: revoke_key(get_settings().database_url, who, name))
    typer.echo(f"{done.role} {done.id} ({name}) revoked at {done.revoked_at:%Y-%m-%d %H:%M:%S}Z")


@keys_app.command("rotate")
def keys_rotate(name: str) -> None:
    """Replace a key: the old key stops working within seconds; the new one is printed once,
    alone on the last line."""
    from worker.intake.callers import rotate

    caller, key = _in_transaction(lambda session: rotate(session, name))
    typer.echo(f"{caller.role} {caller.id} ({name}) rotated; its new key (shown once):", err=True)
    typer.echo(key)
