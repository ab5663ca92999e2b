"""Taking orders in: checks (pure), the batch plan (pure), storage, idempotency, and the
service that ties them together (the actions on existing orders: ``worker.actions``)."""

from collections.abc import Iterable, Sequence
from typing import Protocol


class Dispatch(Protocol):
    """Called after commit with the order ids due now, the webhook delivery ids, and the
    callers those orders belong to (whose backlog the dispatcher should look at); must not
    raise: orders committed but not dispatched are picked up by the sweep."""

    def __call__(
        self,
        order_ids: Sequence[str],
        delivery_ids: Sequence[str],
        *,
        callers: Iterable[str] = (),
    ) -> object: ...
