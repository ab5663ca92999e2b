"""Taking orders in: checks (pure), the batch plan (pure), storage, idempotency, the service
that ties them together, and the actions callers and operators take on existing orders."""

from collections.abc import Callable, Sequence

Dispatch = Callable[[Sequence[str], Sequence[str]], object]
"""Called after commit with (order ids to enqueue now, webhook delivery ids); must not raise:
orders committed but not enqueued are picked up by the sweeper once their ``due_at`` passes."""
