"""In-memory state of the stub: tokens, subscriptions, orders, counters, load, fault script.

Only the event loop of the serving process touches it, so it needs no locks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import string
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from api_stub.config import StubConfig
from api_stub.faults import FaultScript
from api_stub.load import LoadGauge
from api_stub.outage import OutageLog, OutageMode, OutageRequest, outage_mode
from api_stub.records import STATE_COMPLETE, STATE_FAILED, StoredOrder
from api_stub.tokens import TokenStore
from schemas.upstream import OrderPayload

if TYPE_CHECKING:
    from api_stub.listeners import PublicPort

__all__ = ["StubState", "Subscription"]

_REFERENCE_ALPHABET: Final = string.ascii_uppercase + string.digits


@dataclass(frozen=True, slots=True)
class Subscription:
    """A subscription change orders may name, by ``id`` or by ``reference``."""

    id: str
    reference: str
    owner: str


def _demo_subscription(sub_id: str) -> Subscription:
    digest = hashlib.sha256(sub_id.encode()).hexdigest()
    reference = "".join(
        _REFERENCE_ALPHABET[int(digest[i : i + 2], 16) % 36] for i in range(0, 24, 2)
    )
    return Subscription(sub_id, reference, f"id-{digest[24:56]}")


class StubState:
    """Everything the stub remembers between calls."""

    def __init__(self, config: StubConfig) -> None:
        self.config = config
        self.tokens = TokenStore()
        # Outlives resets: calls in flight during a reset still leave through it.
        self.load = LoadGauge()
        self.outages = OutageLog()
        # Set by the server when it has a control port: refusing connections needs one.
        self.public_port: PublicPort | None = None
        self._armed: tuple[OutageRequest, int] | None = None
        self._outage_end: asyncio.TimerHandle | None = None
        self.reset()

    def reset(self, config: StubConfig | None = None) -> None:
        """Forget orders, tokens, script and counters; optionally replace the config."""
        if config is not None:
            self._check(config)
            self.config = config
        self.rng = random.Random(self.config.seed)
        # Its own generator: jitter on or off leaves the seeded ids and faults unchanged.
        self.jitter_rng = random.Random(self.config.seed)
        self._disarm()
        self._apply()
        self.tokens.forget()
        self.orders: dict[str, StoredOrder] = {}
        self.order_list: list[StoredOrder] = []
        self.subscriptions: dict[str, Subscription] = {}
        self.by_reference: dict[str, Subscription] = {}
        self.script = FaultScript()
        self.reset_stats()
        self._add_demo_subscriptions()

    def reset_stats(self) -> None:
        """Zero every counter and restart the in-flight peak; orders, tokens and script stay."""
        self.requests: Counter[str] = Counter()
        self.responses: dict[str, Counter[str]] = {}
        self.outage_requests: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.load.reset_peak()
        self.stats_since = time.time()
        self.outages.reset(self.stats_since)

    def configure(self, config: StubConfig) -> None:
        """Switch to ``config``, reseeding when the seed changed; state is kept.

        Raises:
            ValueError: ``refuse_connections`` without a control port to undo it from.
        """
        self._check(config)
        if config.seed != self.config.seed:
            self.rng = random.Random(config.seed)
            self.jitter_rng = random.Random(config.seed)
        self.config = config
        self._add_demo_subscriptions()
        self._apply()

    def _check(self, config: StubConfig) -> None:
        if config.refuse_connections and self.public_port is None:
            raise ValueError(
                "refuse_connections: this stub has no control port (start it with --control-port)"
            )

    def _apply(self) -> None:
        """Make the listener and the outage log follow the config."""
        if self.public_port is not None:
            self.public_port.set_open(not self.config.refuse_connections)
        self.outages.switch(outage_mode(self.config), time.time())

    def schedule_outage(self, request: OutageRequest) -> None:
        """Begin an outage now or after ``after_calls`` calls; end it after ``for_s``."""
        self._check(self.config.updated({"refuse_connections": request.mode == "refuse"}))
        self._disarm()
        if request.after_calls:
            self._armed = (request, request.after_calls)
        else:
            self._begin(request)

    def count_call(self) -> None:
        """One more non-control call arrived: an armed outage may begin with it."""
        if self._armed is None:
            return
        request, left = self._armed
        if left > 1:
            self._armed = (request, left - 1)
        else:
            self._armed = None
            self._begin(request)

    def _begin(self, request: OutageRequest) -> None:
        mode: OutageMode = request.mode
        self.configure(
            self.config.updated({"outage": mode == "502", "refuse_connections": mode == "refuse"})
        )
        if request.for_s is not None:
            loop = asyncio.get_running_loop()
            self._outage_end = loop.call_later(request.for_s, self.end_outage)

    def end_outage(self) -> None:
        """Switch every outage off (and cancel a scheduled one)."""
        self._disarm()
        self.configure(self.config.updated({"outage": False, "refuse_connections": False}))

    def _disarm(self) -> None:
        self._armed = None
        if self._outage_end is not None:
            self._outage_end.cancel()
            self._outage_end = None

    def count_response(self, endpoint: str, status: int) -> None:
        """Count an answer by endpoint and status."""
        by_status = self.responses.get(endpoint)
        if by_status is None:
            by_status = self.responses[endpoint] = Counter()
        by_status[str(status)] += 1

    def _add_demo_subscriptions(self) -> None:
        for sub_id in self.config.subscriptions:
            if sub_id not in self.subscriptions:
                self._add_subscription(_demo_subscription(sub_id))

    def _add_subscription(self, subscription: Subscription) -> None:
        self.subscriptions[subscription.id] = subscription
        self.by_reference[subscription.reference] = subscription

    def _hex32(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def _reference(self) -> str:
        return "".join(self.rng.choices(_REFERENCE_ALPHABET, k=12))

    def issue_token(self) -> str:
        """Mint a bearer token that stops working ``token_ttl_s`` from now."""
        config = self.config
        token = self.tokens.issue(
            client_id=config.client_id, ttl_s=config.token_ttl_s, jti=self._hex32()
        )
        self.counters["tokens_issued"] += 1
        return token

    def token_valid(self, token: str) -> bool:
        """Whether ``token`` was issued here and has not expired."""
        return self.tokens.valid(token)

    def expire_tokens(self) -> int:
        """Make every issued token expire now; return how many were still valid."""
        return self.tokens.expire_all()

    def create_order(
        self,
        order: OrderPayload,
        payload: dict[str, Any],
        *,
        endpoint: str,
        subscription: Subscription | None,
        ambiguous: bool,
    ) -> StoredOrder:
        """Record an order; a ``new`` order creates the subscription it returns."""
        if subscription is None and order.order_type == "new":
            subscription = Subscription(
                f"sub-{self._hex32()}", self._reference(), f"id-{self._hex32()}"
            )
            self._add_subscription(subscription)
        now = time.time()
        queued = not order.process_immediately
        fail_rate = self.config.async_fail_rate
        fails = queued and fail_rate > 0 and self.rng.random() < fail_rate
        stored = StoredOrder(
            seq=len(self.order_list) + 1,
            id=f"order-{self._hex32()}",
            payload=payload,
            order_type=order.order_type,
            external_id=order.external_id,
            order_reference=self._reference(),
            subscription_id=subscription.id if subscription else None,
            subscription_reference=subscription.reference if subscription else None,
            owner=subscription.owner if subscription else f"id-{self._hex32()}",
            endpoint=endpoint,
            created_at=now,
            settles_at=now + self.config.complete_after_s if queued else now,
            final_state=STATE_FAILED if fails else STATE_COMPLETE,
            ambiguous=ambiguous,
        )
        self.orders[stored.id] = stored
        self.order_list.append(stored)
        self.counters["orders_created"] += 1
        return stored

    def duplicates(self) -> dict[str, int]:
        """``external_id`` -> count, for every external id used by more than one order."""
        seen = Counter(o.external_id for o in self.orders.values() if o.external_id is not None)
        return {external_id: count for external_id, count in seen.items() if count > 1}

    def stats(self) -> dict[str, Any]:
        """Counters for the control API (see :mod:`api_stub.control`)."""
        return {
            "tokens_issued": self.counters["tokens_issued"],
            "tokens_active": self.tokens.active(),
            "token_denied": self.counters["token_denied"],
            "unauthorized": self.counters["unauthorized"],
            "orders_created": self.counters["orders_created"],
            "rejected": {
                status: self.counters[f"rejected_{status}"] for status in ("400", "404", "502")
            },
            "requests": dict(self.requests),
            "outage_requests": dict(self.outage_requests),
            "refused": dict(self.refused),
            "responses": {endpoint: dict(c) for endpoint, c in self.responses.items()},
            "in_flight": self.load.in_flight,
            "peak_in_flight": self.load.peak,
            "mean_in_flight": round(self.load.mean_in_flight(), 3),
            "queued": self.load.queued,
            "peak_queued": self.load.peak_queued,
            "faults": dict(self.faults),
            "outage": self.outages.view(),
            "connections_aborted": self.public_port.aborted if self.public_port else 0,
            "since": self.stats_since,
            "now": time.time(),
            "process": {"pid": os.getpid(), "cpu_s": time.process_time()},
        }
