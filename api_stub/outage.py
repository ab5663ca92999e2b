"""Outage windows: when each began and ended, the calls answered during them, and a
scheduled outage (start after N calls, end after S seconds).

An outage is on while the config has ``outage`` (every path answers 502) or
``refuse_connections`` (the public port refuses connections); its mode is ``"refuse"`` when
both are set, since no call then reaches the stub.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from api_stub.config import StubConfig

__all__ = ["OutageLog", "OutageMode", "OutageRequest", "outage_mode"]

OutageMode = Literal["502", "refuse"]
# A 30 s outage at a few hundred calls/s fits; a runaway client cannot grow the stub forever.
_MAX_CALLS_KEPT: Final = 200_000


def outage_mode(config: StubConfig) -> OutageMode | None:
    """The outage ``config`` describes, if any."""
    if config.refuse_connections:
        return "refuse"
    return "502" if config.outage else None


class OutageRequest(BaseModel):
    """``POST /_stub/outage``: ``{"mode": "502"|"refuse", "for_s": 30, "after_calls": 0}``.

    ``after_calls`` > 0 arms the outage to begin when that many more non-control calls have
    arrived (the last of them already meets it); ``for_s`` ends it that many seconds after it
    began (``null``: it lasts until switched off).
    """

    model_config = ConfigDict(extra="forbid")

    mode: OutageMode = "502"
    for_s: float | None = Field(default=None, gt=0, le=3600)
    after_calls: int = Field(default=0, ge=0)


@dataclass(slots=True)
class _Window:
    mode: OutageMode
    started_at: float
    ended_at: float | None = None


class OutageLog:
    """Outage windows and the wall-clock times of the calls the outage answered."""

    def __init__(self) -> None:
        self._windows: list[_Window] = []
        self._calls_at: list[float] = []

    @property
    def mode(self) -> OutageMode | None:
        """The mode of the outage on now, if any."""
        if self._windows and self._windows[-1].ended_at is None:
            return self._windows[-1].mode
        return None

    def switch(self, mode: OutageMode | None, now: float) -> None:
        """Record that the outage is now ``mode`` (``None``: over)."""
        if mode == self.mode:
            return
        if self.mode is not None:
            self._windows[-1].ended_at = now
        if mode is not None:
            self._windows.append(_Window(mode, now))

    def call(self, now: float) -> None:
        """Record a call answered by the outage."""
        if len(self._calls_at) < _MAX_CALLS_KEPT:
            self._calls_at.append(now)

    def reset(self, now: float) -> None:
        """Forget past windows and calls; an outage on now restarts its window at ``now``."""
        mode = self.mode
        self._windows = [_Window(mode, now)] if mode is not None else []
        self._calls_at = []

    def view(self) -> dict[str, Any]:
        """``{"mode", "windows": [{"mode", "started_at", "ended_at"}], "calls", "calls_at"}``."""
        return {
            "mode": self.mode,
            "windows": [
                {"mode": w.mode, "started_at": w.started_at, "ended_at": w.ended_at}
                for w in self._windows
            ],
            "calls": len(self._calls_at),
            "calls_at": [round(t, 4) for t in self._calls_at],
        }
