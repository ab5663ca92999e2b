"""A run's last calls land on the process's tail thread while its next message starts."""

from __future__ import annotations

import threading

from tests.helpers import add_orders, new_payload
from worker.db import transaction
from worker.pipeline.run import RunResult
from worker.pipeline.tail import Tail
from worker.repository import load


def _statuses(db_url: str, ids: list[str]) -> dict[str, str]:
    with transaction(db_url) as session:
        return {o.id: o.status for o in load(session, ids)}


def test_a_run_hands_its_last_calls_to_the_tail_and_returns(
    runtime_factory, caller_id, stub, clean_db
):
    """Ten orders, four permits: once the calls still out are no more than the permits, the
    run returns; the tail lands them and then hands over the result, once."""
    rt = runtime_factory(upstream_max_in_flight=4)
    stub.configure(latency_ms=150)
    ids = add_orders(clean_db, caller_id, [new_payload(i) for i in range(10)])
    results: list[RunResult] = []

    handed = rt.pipeline.run_overlapped(ids, tail=rt.tail, then=results.append)

    assert handed
    assert not results
    assert set(_statuses(clean_db, ids).values()) - {"complete"}
    assert rt.tail.join(20)
    assert set(_statuses(clean_db, ids).values()) == {"complete"}
    assert len(results) == 1
    assert results[0].moved == 20  # previewed, then complete, each order


def test_a_run_with_permits_to_spare_lands_its_own_calls(
    runtime_factory, caller_id, stub, clean_db
):
    """Fewer calls than the allotment: the permits were never the limit, nothing to overlap."""
    rt = runtime_factory()
    stub.configure(latency_ms=100)
    ids = add_orders(clean_db, caller_id, [new_payload(i) for i in range(6)])
    results: list[RunResult] = []
    assert not rt.pipeline.run_overlapped(ids, tail=rt.tail, then=results.append)
    assert set(_statuses(clean_db, ids).values()) == {"complete"}
    assert [r.moved for r in results] == [12]


def test_while_a_tail_lands_the_next_run_lands_its_own(runtime_factory, caller_id, stub, clean_db):
    rt = runtime_factory(upstream_max_in_flight=2)
    stub.configure(latency_ms=50)
    release = threading.Event()
    assert rt.tail.hand_off(release.wait)
    try:
        ids = add_orders(clean_db, caller_id, [new_payload(i) for i in range(4)])
        results: list[RunResult] = []
        assert not rt.pipeline.run_overlapped(ids, tail=rt.tail, then=results.append)
        assert set(_statuses(clean_db, ids).values()) == {"complete"}
        assert [r.moved for r in results] == [8]
    finally:
        release.set()
    assert rt.tail.join(5)


def test_closing_the_runtime_waits_for_the_tail(runtime_factory, caller_id, stub, clean_db):
    """A warm shutdown: the tail's calls and their answers are not cut off."""
    rt = runtime_factory(upstream_max_in_flight=2)
    stub.configure(latency_ms=200)
    ids = add_orders(clean_db, caller_id, [new_payload(i) for i in range(4)])
    assert rt.pipeline.run_overlapped(ids, tail=rt.tail, then=lambda _: None)
    rt.close()
    assert set(_statuses(clean_db, ids).values()) == {"complete"}


def test_a_failing_tail_is_logged_and_frees_the_thread():
    tail = Tail()
    ran = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    assert tail.hand_off(boom)
    assert tail.join(5)
    assert tail.hand_off(ran.set)
    assert tail.join(5)
    assert ran.is_set()
