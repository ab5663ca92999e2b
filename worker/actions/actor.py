"""Who acts, as the order's history names it, and whose orders it may touch.

The history's ``actor`` column is built here and nowhere else: ``caller:<caller id>``,
``operator:<operator name>``, ``admin:<name>`` (``orders keys`` run on the database host).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["caller", "operator", "admin"]
MAX_LABEL_CHARS = 64
"""The width of the history's ``actor`` column."""


@dataclass(frozen=True, slots=True)
class Actor:
    """A caller acts on its own orders; an operator or an admin on every caller's."""

    role: Role
    name: str
    caller_id: str | None = None
    """The caller's id (callers only): the one owner whose orders it may touch."""

    @property
    def label(self) -> str:
        """The history's ``actor``: ``caller:<id>`` or ``operator:<name>``."""
        who = self.caller_id if self.role == "caller" else self.name
        return f"{self.role}:{who}"[:MAX_LABEL_CHARS]

    @property
    def cancel_reason(self) -> str:
        """The reason a cancel by this actor records (``cancelled_by_caller`` ...)."""
        return f"cancelled_by_{self.role}"

    def scope(self, caller_id: str | None = None) -> str | None:
        """Whose orders an action may touch: a caller its own whatever is asked; an operator
        the caller asked for, or every caller's (None)."""
        return self.caller_id if self.role == "caller" else caller_id


def caller(caller_id: str) -> Actor:
    """A caller, by its id (callers are named by id in histories)."""
    return Actor("caller", caller_id, caller_id)


def operator(name: str) -> Actor:
    """An operator, by its key's name."""
    return Actor("operator", name)


def admin(name: str) -> Actor:
    """Someone running ``orders`` commands against the database directly."""
    return Actor("admin", name)
