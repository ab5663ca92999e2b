"""Tables: callers, orders with their append-only history, idempotency keys, webhooks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")
Id = String(40)


class Base(DeclarativeBase):
    pass


class Caller(Base):
    __tablename__ = "callers"

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # "caller" (the /v1 API) or "operator" (console, /metrics): never both.
    role: Mapped[str] = mapped_column(String(16), default="caller", server_default="caller")
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Share of the dispatch slots relative to other callers with work (1 = an equal share).
    weight: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # Console sessions carry the generation they were issued in; sign-out, rotation and
    # revocation bump it, which ends every session issued before.
    session_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    caller_id: Mapped[str] = mapped_column(ForeignKey("callers.id"))
    batch_id: Mapped[str | None] = mapped_column(Id)
    # The item's position in its batch request (the results file's order).
    batch_index: Mapped[int | None] = mapped_column(Integer)
    external_id: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    order_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)

    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Transient failures since budget_from: what the retry budget counts.
    failures: Mapped[int] = mapped_column(Integer, default=0)
    budget_from: Mapped[datetime] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # due_at: when the sweeper may (re-)drive the order if nothing else has; the lease expiry
    # while a worker holds it. NULL for terminal orders and those held for an operator.
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(64))

    preview: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    upstream_id: Mapped[str | None] = mapped_column(String(100))
    upstream_reference: Mapped[str | None] = mapped_column(String(100))
    upstream_status: Mapped[str | None] = mapped_column(String(64))
    subscription_reference: Mapped[str | None] = mapped_column(String(100))
    upstream_owner: Mapped[str | None] = mapped_column(String(100))
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("caller_id", "external_id", name="uq_orders_caller_external_id"),
        Index("ix_orders_due", "due_at"),
        Index("ix_orders_caller_id_id", "caller_id", "id"),
        Index("ix_orders_caller_status", "caller_id", "status", "id"),
        # The console's filters across callers (migration 0003; EXPLAIN in bench/console.py).
        Index("ix_orders_batch_status", "batch_id", "status"),
        # reason is carried in the index: failed-by-reason counts never touch the table.
        Index("ix_orders_status_id", "status", "id", postgresql_include=["reason"]),
        Index("ix_orders_external_id", "external_id"),
        Index("ix_orders_batch_index", "batch_id", "batch_index"),
    )


class OrderEvent(Base):
    """One row per status change: the order's append-only history."""

    __tablename__ = "order_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_order_events_at", "at"),)


class IdempotencyKey(Base):
    """A caller's ``Idempotency-Key``: what it was first used for, and with which request."""

    __tablename__ = "idempotency_keys"

    caller_id: Mapped[str] = mapped_column(ForeignKey("callers.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(Id)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    caller_id: Mapped[str] = mapped_column(ForeignKey("callers.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(100))
    event_types: Mapped[list[str] | None] = mapped_column(JSONType)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """One event to deliver to one endpoint (an outbox row written with the transition)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"), index=True)
    order_id: Mapped[str] = mapped_column(Id, index=True)
    event_type: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)


class Batch(Base):
    """A batch of orders: its state and rules; its counts are in ``BatchCount`` rows."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    caller_id: Mapped[str] = mapped_column(ForeignKey("callers.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # "run" or "preview_first" (every order previewed, none submitted until approved).
    mode: Mapped[str] = mapped_column(String(20), default="run", server_default="run")
    state: Mapped[str] = mapped_column(String(20))
    state_at: Mapped[datetime] = mapped_column(UTCDateTime)
    halt_on: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    halt: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    totals: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Batch webhook events already written to the outbox (each goes out once).
    notified: Mapped[list[str] | None] = mapped_column(JSONType)

    __table_args__ = (
        Index("ix_batches_caller_id_id", "caller_id", "id"),
        Index("ix_batches_state", "state"),
    )


class BatchEvent(Base):
    """One row per change of a batch's state (who did it, and why)."""

    __tablename__ = "batch_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    batch_id: Mapped[str] = mapped_column(Id, index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class BatchCount(Base):
    """Orders of a batch in a status, as written by one database session (``shard``).

    Kept by triggers on ``orders`` (migration 0005_batches) in the transaction of every
    insert, status change and delete; a batch's count of a status is the sum over shards.
    """

    __tablename__ = "batch_counts"

    batch_id: Mapped[str] = mapped_column(Id, primary_key=True)
    status: Mapped[str] = mapped_column(String(20), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
    first_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class BatchFinal(Base):
    """Orders of a batch that became final within a 5-second bucket (for the rate)."""

    __tablename__ = "batch_finals"

    batch_id: Mapped[str] = mapped_column(Id, primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


ORDERS: Table = Order.__table__  # type: ignore[assignment]
ORDER_EVENTS: Table = OrderEvent.__table__  # type: ignore[assignment]
"""The two tables as Core objects, for bulk statements (ORM objects cost too much there)."""


@dataclass(slots=True)
class StoredOrder:
    """A just-created order as plain data (the ``orders`` columns; see ``views.order_view``)."""

    id: str
    caller_id: str
    batch_id: str | None
    external_id: str | None
    request_hash: str
    order_type: str
    payload: dict[str, Any]
    status: str
    attempts: int
    failures: int
    budget_from: datetime
    due_at: datetime
    created_at: datetime
    updated_at: datetime
    reason: str | None = None
    message: str | None = None
    next_attempt_at: datetime | None = None
    lease_owner: str | None = None
    preview: dict[str, Any] | None = None
    upstream_id: str | None = None
    upstream_reference: str | None = None
    upstream_status: str | None = None
    subscription_reference: str | None = None
    upstream_owner: str | None = None
    submitted_at: datetime | None = None
    batch_index: int | None = None


OrderLike = Order | StoredOrder
"""A stored order, loaded (ORM) or just created (plain data)."""
