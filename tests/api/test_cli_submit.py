"""``orders submit FILE``: JSON Lines and CSV files through the API, idempotent on re-runs."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.api.conftest import CallerKey, order, row_counts
from worker.cli.api_client import ApiClient, ApiUnavailable, read_orders
from worker.cli.output import follow_batches, submit_file


def _client(client, caller: CallerKey) -> ApiClient:  # type: ignore[no-untyped-def]
    return ApiClient(str(client.base_url), caller.key, http=client)


def test_jsonl_file_is_submitted_once_even_when_run_twice(client, alpha, clean_db, tmp_path):
    """Valid lines are accepted, the bad one reported; a second run creates nothing new."""
    lines = [order(f"F-{i}") for i in range(5)] + [{"order_type": "new", "external_id": "bad"}]
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(p) for p in lines) + b"\n")
    api = _client(client, alpha)
    counts = submit_file(api, path, batch_size=2, follow=False, timeout_s=1)
    assert counts["rejected_at_intake"] == 1
    assert row_counts(clean_db)["orders"] == 5
    submit_file(api, path, batch_size=2, follow=False, timeout_s=1)
    assert row_counts(clean_db)["orders"] == 5


def test_chunk_with_no_valid_line_does_not_stop_the_file(client, alpha, clean_db, tmp_path):
    """A batch of only invalid lines is reported and the following batches still go in."""
    lines = [{"order_type": "new"}, {"order_type": "nope"}, order("G-1"), order("G-2")]
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(p) for p in lines))
    counts = submit_file(_client(client, alpha), path, batch_size=2, follow=False, timeout_s=1)
    assert counts["rejected_at_intake"] == 2
    assert row_counts(clean_db)["orders"] == 2


def test_csv_with_dotted_columns(tmp_path: Path):
    """Dotted CSV columns become nested JSON; ``:json`` columns hold typed values."""
    path = tmp_path / "orders.csv"
    path.write_text(
        "order_type,external_id,process_immediately:json,orderItems.0.offer.id,"
        "orderItems.0.quantity:json,billingDetails.postalCode\n"
        "new,C-1,true,abc,2,01234\n"
    )
    [payload] = read_orders(path)
    assert payload == {
        "order_type": "new",
        "external_id": "C-1",
        "process_immediately": True,
        "orderItems": [{"offer": {"id": "abc"}, "quantity": 2}],
        "billingDetails": {"postalCode": "01234"},
    }


def test_csv_payload_column_and_bad_jsonl_line(tmp_path: Path):
    """A ``payload`` column holds whole orders; a broken JSON line names its line number."""
    csv_path = tmp_path / "orders.csv"
    csv_path.write_text('payload\n"{""order_type"": ""new""}"\n')
    assert read_orders(csv_path) == [{"order_type": "new"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"order_type": "new"}\n{not json\n')
    with pytest.raises(ValueError, match=":2:"):
        read_orders(bad)


def test_follow_says_when_nothing_moves(client, alpha, tmp_path, capsys):
    """With no worker running, following a batch prints the no-progress hint once."""
    from worker.cli.output import NO_PROGRESS_HINT, follow_batches

    path = tmp_path / "orders.jsonl"
    path.write_bytes(orjson.dumps(order("S-1")))
    api = _client(client, alpha)
    answer = api.submit_batch(read_orders(path), "stall-1")
    counts = follow_batches(api, [answer["batch_id"]], total=1, timeout_s=2.5, stall_hint_s=1.0)
    assert counts == {"received": 1}
    assert capsys.readouterr().err.count(NO_PROGRESS_HINT) == 1


class _Flaky(httpx.BaseTransport):
    """The app's transport behind a script of failures: a response status, or an exception
    class, per request, in order; once the script is used up, every request reaches the app."""

    def __init__(self, inner: httpx.BaseTransport, script: list[int | type[Exception]]) -> None:
        self.inner, self.script, self.failed = inner, list(script), 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.script:
            return self.inner.handle_request(request)
        step = self.script.pop(0)
        self.failed += 1
        if isinstance(step, int):
            return httpx.Response(step, json={"message": "internal server error"})
        raise step("connection refused", request=request)


def _flaky_client(client, caller: CallerKey, script) -> tuple[ApiClient, _Flaky]:  # type: ignore[no-untyped-def]
    transport = _Flaky(client._transport, script)
    http = httpx.Client(transport=transport, base_url=client.base_url)
    return ApiClient(str(client.base_url), caller.key, http=http), transport


def test_follow_outlasts_a_500_and_a_refused_connection(client, alpha, tmp_path, capsys):
    """A poll answered 500, then one refused, are retried: following goes on and says why."""
    api = _client(client, alpha)
    answer = api.submit_batch([order("R-1")], "flaky-1")
    flaky, transport = _flaky_client(client, alpha, [500, httpx.ConnectError])
    counts = follow_batches(flaky, [answer["batch_id"]], total=1, timeout_s=1.0)
    assert counts == {"received": 1}
    assert transport.failed == 2
    err = capsys.readouterr().err
    assert "HTTP 500" in err and "ConnectError" in err and "retrying" in err


def test_follow_gives_up_on_an_api_that_stays_down_saying_why(client, alpha):
    """Polls failing for longer than the give-up bound end with one error naming the cause."""
    api = _client(client, alpha)
    answer = api.submit_batch([order("R-2")], "flaky-2")
    flaky, transport = _flaky_client(client, alpha, [503] * 100)
    started = time.monotonic()
    with pytest.raises(ApiUnavailable, match=r"following the orders: gave up .* HTTP 503"):
        follow_batches(flaky, [answer["batch_id"]], total=1, timeout_s=60, give_up_after_s=1.5)
    assert time.monotonic() - started < 10
    assert 2 <= transport.failed < 100


def test_submit_resends_a_batch_after_a_500_without_duplicates(client, alpha, clean_db, tmp_path):
    """A batch POST answered 500 (or refused) is sent again with its key: each order once."""
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(order(f"RS-{i}")) for i in range(3)))
    flaky, transport = _flaky_client(client, alpha, [500, httpx.ConnectError])
    submit_file(flaky, path, batch_size=2, follow=False, timeout_s=1)
    assert transport.failed == 2
    assert row_counts(clean_db)["orders"] == 3


def test_csv_path_indexes_are_capped_naming_the_cell(tmp_path: Path):
    """``orderItems.300000000.quantity:json`` is refused at once (not gigabytes of list),
    naming the file, line and column; an index up to 10,000 is fine."""
    import time

    path = tmp_path / "orders.csv"
    path.write_text("order_type,orderItems.300000000.quantity:json\nnew,1\n")
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"orders\.csv:2, column 'orderItems\.300000000") as bad:
        read_orders(path)
    assert "above 10000" in str(bad.value) and time.monotonic() - start < 1
    ok = tmp_path / "ok.csv"
    ok.write_text("order_type,orderItems.2.quantity:json\nnew,1\n")
    assert read_orders(ok) == [{"order_type": "new", "orderItems": [None, None, {"quantity": 1}]}]
    broken = tmp_path / "broken.csv"
    broken.write_text("order_type,orderItems.0.quantity:json\nnew,{one\n")
    with pytest.raises(ValueError, match=r"broken\.csv:2, column 'orderItems\.0\.quantity:json'"):
        read_orders(broken)
