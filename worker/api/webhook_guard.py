"""What one webhook registration may cost the API: a bounded DNS look-up and a rate.

Checking a target resolves its name. ``getaddrinfo`` blocks for as long as the caller's
nameserver takes and cannot be cancelled, so it never runs on the pool that serves key
look-ups and intake: it runs on a few threads of its own, and the registration waits at most
``ORDERS_WEBHOOK_RESOLVE_TIMEOUT_S`` for it (then 422: the name did not resolve in time). A
caller may register at most ``ORDERS_WEBHOOK_REGISTRATIONS_PER_MINUTE`` endpoints a minute
per API process (429 with ``Retry-After`` beyond).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from worker.webhooks.targets import Resolver, TargetUnresolved, check_target, system_resolve

RESOLVER_THREADS = 4
WINDOW_S = 60.0


class RegistrationGuard:
    """Per-process rate of registrations per caller, and target checks off the shared pool."""

    def __init__(
        self,
        *,
        per_minute: int,
        resolve_timeout_s: float,
        resolve: Resolver = system_resolve,
    ) -> None:
        self.per_minute = per_minute
        self.resolve_timeout_s = resolve_timeout_s
        self.resolve = resolve
        self._pool = ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="webhook-dns")
        self._lock = threading.Lock()
        self._recent: dict[str, deque[float]] = {}

    def admit(self, caller_id: str) -> float | None:
        """Count a registration of ``caller_id``; None, or seconds to wait when over the rate."""
        now = time.monotonic()
        with self._lock:
            recent = self._recent.setdefault(caller_id, deque())
            while recent and recent[0] <= now - WINDOW_S:
                recent.popleft()
            if len(recent) >= self.per_minute:
                return max(1.0, math.ceil(recent[0] + WINDOW_S - now))
            recent.append(now)
            return None

    async def check(self, url: str, *, allow_private: bool) -> None:
        """``check_target`` on the resolver threads, waiting at most ``resolve_timeout_s``.

        Raises:
            TargetRefused: as ``check_target``; ``TargetUnresolved`` also when the name did
                not resolve in time.
        """
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(
            self._pool, lambda: check_target(url, allow_private, resolve=self.resolve)
        )
        try:
            await asyncio.wait_for(job, self.resolve_timeout_s)
        except TimeoutError:
            raise TargetUnresolved(
                f"target not allowed: host did not resolve within {self.resolve_timeout_s:g} s"
            ) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
