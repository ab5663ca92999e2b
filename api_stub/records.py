"""Orders the stub created, and the views the upstream gives of them (upstream-api.md §5.1).

A queued order (``process_immediately`` false) reads ``submitted`` until ``settles_at``,
then its final state; the state is computed from timestamps on each read, so nothing runs
in the background.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["STATE_COMPLETE", "STATE_FAILED", "STATE_SUBMITTED", "StoredOrder", "iso_time"]

STATE_SUBMITTED: Final = "submitted"
STATE_COMPLETE: Final = "complete"
STATE_FAILED: Final = "failed"


def iso_time(epoch_s: float) -> str:
    """UTC ISO 8601 with milliseconds and a ``Z``, as Limio writes ``created``."""
    moment = datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")


@dataclass(slots=True)
class StoredOrder:
    """One order created by the stub, with the payload it was created from."""

    seq: int
    id: str
    payload: dict[str, Any]
    order_type: str
    external_id: str | None
    order_reference: str
    subscription_id: str | None
    subscription_reference: str | None
    owner: str
    endpoint: str
    created_at: float
    settles_at: float
    final_state: str
    ambiguous: bool

    def state_at(self, now: float) -> str:
        """``submitted`` before ``settles_at``, the final state from then on."""
        return self.final_state if now >= self.settles_at else STATE_SUBMITTED

    def submit_response(self, now: float) -> dict[str, Any]:
        """The body of the submit answer."""
        return {
            "id": self.id,
            "order_reference": self.order_reference,
            "status": self.state_at(now),
            "external_id": self.external_id,
            "subscriptionReference": self.subscription_reference,
            "owner": self.owner,
        }

    def object_view(self, now: float) -> dict[str, Any]:
        """The stored order object of ``GET /api/objects/limio/orders/{id}``."""
        state = self.state_at(now)
        updated = self.settles_at if state != STATE_SUBMITTED else self.created_at
        view = dict(self.payload)
        view.setdefault("__spec_version", "2")
        view.setdefault("mode", "production")
        view.update(
            id=self.id,
            record_type="order",
            service="limio",
            orderState=state,
            status=state,
            order_type=self.order_type,
            external_id=self.external_id,
            order_reference=self.order_reference,
            sub_reference=self.subscription_reference,
            subscriptionReference=self.subscription_reference,
            owner=self.owner,
            created=iso_time(self.created_at),
            updated=iso_time(updated),
        )
        return view

    def summary(self, now: float) -> dict[str, Any]:
        """The short form listed by ``GET /api/objects/limio/orders``."""
        return {
            "id": self.id,
            "external_id": self.external_id,
            "order_reference": self.order_reference,
            "orderState": self.state_at(now),
            "created": iso_time(self.created_at),
        }

    def record(self, now: float) -> dict[str, Any]:
        """What the control API shows of the order, stub bookkeeping included."""
        return {
            **self.summary(now),
            "order_type": self.order_type,
            "subscriptionId": self.subscription_id,
            "subscriptionReference": self.subscription_reference,
            "owner": self.owner,
            "endpoint": self.endpoint,
            "ambiguous": self.ambiguous,
            "payload": self.payload,
        }
