"""Which fault, if any, the stub serves on a call: scripted faults first, then rates.

Fault kinds:

* ``status``: answer at once with an HTTP error status and a JSON ``{"message"}`` body
  (``Retry-After`` on 429/503 when configured).
* ``ambiguous``: process the call normally (a submit creates its order), then withhold the
  answer for the hold time and send a 504, by which time the client has given up.
* ``timeout``: hold the call without processing it, then send a 504.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api_stub.config import StubConfig

__all__ = [
    "ENDPOINTS",
    "Fault",
    "FaultKind",
    "FaultScript",
    "ScriptEntry",
    "ScriptRequest",
    "choose_fault",
]

FaultKind = Literal["status", "ambiguous", "timeout"]
Endpoint = Literal["token", "preview", "submit", "object", "list", "any"]
ENDPOINTS: Final = frozenset({"token", "preview", "submit", "object", "list", "any"})
_RETRY_AFTER_STATUSES: Final = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault to serve; ``hold_s`` ``None`` means the configured ambiguous hold."""

    kind: FaultKind
    status: int | None = None
    retry_after_s: int | None = None
    hold_s: float | None = None

    @property
    def label(self) -> str:
        """Counter key: the status code for ``status`` faults, else the kind."""
        return str(self.status) if self.kind == "status" else self.kind


class ScriptEntry(BaseModel):
    """``{"status": 502, "times": 3}`` or ``{"kind": "ambiguous", "times": 1}``."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind | None = None
    status: int | None = Field(default=None, ge=400, le=599)
    times: int = Field(default=1, ge=1)
    retry_after_s: int | None = Field(default=None, ge=0)
    hold_s: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check_kind(self) -> Self:
        kind = self.kind or ("status" if self.status is not None else None)
        if kind is None:
            raise ValueError("give a status or a kind")
        if (kind == "status") != (self.status is not None):
            raise ValueError("a status is required by, and only allowed with, kind 'status'")
        self.kind = kind
        return self

    def to_fault(self, config: StubConfig) -> Fault:
        """The fault this entry serves, ``Retry-After`` defaulting to the configured one."""
        retry_after_s = self.retry_after_s
        if retry_after_s is None and self.status in _RETRY_AFTER_STATUSES:
            retry_after_s = config.retry_after_s
        kind: FaultKind = self.kind or "status"
        return Fault(kind, self.status, retry_after_s, self.hold_s)


class ScriptRequest(BaseModel):
    """Body of ``POST /_stub/script``; ``replace`` drops what is pending for the endpoint."""

    model_config = ConfigDict(extra="forbid")

    endpoint: Endpoint
    faults: list[ScriptEntry] = Field(min_length=1)
    replace: bool = False


@dataclass(slots=True)
class _Pending:
    fault: Fault
    remaining: int


class FaultScript:
    """Per-endpoint queues of faults, each served exactly the scripted number of times."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[_Pending]] = {}

    def add(self, endpoint: str, faults: list[tuple[Fault, int]], *, replace: bool) -> None:
        """Queue ``faults`` (fault, times) after those pending for ``endpoint``."""
        queue = self._queues.setdefault(endpoint, deque())
        if replace:
            queue.clear()
        queue.extend(_Pending(fault, times) for fault, times in faults)

    def take(self, endpoint: str) -> Fault | None:
        """Consume the next fault for ``endpoint``, else for ``any``, else ``None``."""
        for key in (endpoint, "any"):
            queue = self._queues.get(key)
            if queue:
                head = queue[0]
                head.remaining -= 1
                if head.remaining <= 0:
                    queue.popleft()
                return head.fault
        return None

    def pending(self) -> dict[str, list[dict[str, object]]]:
        """What is left to serve, per endpoint: ``[{"fault": "502", "times": 2}, ...]``."""
        return {
            endpoint: [{"fault": p.fault.label, "times": p.remaining} for p in queue]
            for endpoint, queue in self._queues.items()
            if queue
        }

    def clear(self) -> None:
        """Forget every pending fault."""
        self._queues.clear()


def choose_fault(
    config: StubConfig, script: FaultScript, rng: random.Random, endpoint: str
) -> Fault | None:
    """Decide the fault for one call of ``endpoint``; scripted faults beat rates.

    Rates apply to ``/api`` endpoints only (not ``token``); ``ambiguous_rate`` to submits.
    """
    scripted = script.take(endpoint)
    if scripted is not None or endpoint == "token":
        return scripted
    ambiguous_rate = config.ambiguous_rate if endpoint == "submit" else 0.0
    if not config.fail_rates and not ambiguous_rate:
        return None
    draw = rng.random()
    for status in sorted(config.fail_rates):
        draw -= config.fail_rates[status]
        if draw < 0:
            retry_after_s = config.retry_after_s if status in _RETRY_AFTER_STATUSES else None
            return Fault("status", status, retry_after_s)
    if draw < ambiguous_rate:
        return Fault("ambiguous")
    return None
