"""The upstream client against ``httpx.MockTransport``: query encoding and parsed answers."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import httpx
import pytest

from schemas.upstream_responses import OrderListPage, SubmitResponse
from worker.errors import AmbiguousError, PermanentError, RetryableError
from worker.settings import Settings
from worker.upstream.client import UpstreamClient, fetch_token, token_lock_timeout_s

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler) -> UpstreamClient:
    settings = Settings(upstream_url="http://upstream.test")
    context = ssl.create_default_context()
    return UpstreamClient(settings, None, context, transport=httpx.MockTransport(handler))


def test_query_more_cursor_is_url_encoded_and_round_trips():
    """A standard-base64 cursor with ``+``, ``/`` and ``=`` reaches the upstream intact."""
    cursor = "DnF1ZXJ5+VGhlbk/ZldGNo=="
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"items": [], "queryMore": None})

    page = _client(handler).list_orders(limit=100, query_more=cursor)
    [request] = seen
    assert request.url.path == "/api/objects/limio/orders"
    assert request.url.query == b"limit=100&queryMore=DnF1ZXJ5%2BVGhlbk%2FZldGNo%3D%3D"
    assert request.url.params["queryMore"] == cursor
    assert isinstance(page, OrderListPage) and page.items == []


def test_first_page_sends_no_cursor():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"orders": [{"id": "order-1", "external_id": "E"}]})

    page = _client(handler).list_orders(limit=10)
    assert seen[0].url.query == b"limit=10"
    assert [(o.id, o.external_id) for o in page.items] == [("order-1", "E")]


def test_submit_answer_is_parsed_into_its_model():
    """The submit answer comes back as ``SubmitResponse``; unknown fields are kept."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = {"id": "order-1", "status": "submitted", "order_reference": 12, "traceId": "t"}
        return httpx.Response(200, json=body)

    answer = _client(handler).submit({"order_type": "new"})
    assert isinstance(answer, SubmitResponse)
    assert (answer.id, answer.state, answer.order_reference) == ("order-1", "submitted", "12")
    assert answer.model_extra == {"traceId": "t"}


def test_a_submit_answer_that_does_not_fit_is_ambiguous_not_a_success():
    """A 2xx whose fields have impossible types may hide a created order: never re-sent."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": {"nested": True}, "status": ["complete"]})

    with pytest.raises(AmbiguousError) as caught:
        _client(handler).submit({"order_type": "new"})
    assert caught.value.reason == "submit_invalid_response"


def test_a_504_to_a_submit_is_ambiguous_and_to_a_preview_retryable():
    """The client classifies a gateway timeout by the call: submit ambiguous, preview not."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(504, json={"message": "Gateway Timeout"})

    client = _client(handler)
    with pytest.raises(AmbiguousError) as submit:
        client.submit({"order_type": "new"})
    assert submit.value.reason == "submit_504"
    with pytest.raises(RetryableError) as preview:
        client.preview({"order_type": "new"})
    assert not isinstance(preview.value, AmbiguousError)


def test_an_order_object_without_id_is_a_retryable_failure():
    """A stored order object must carry its id; without it the follow-up tries again later."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"orderState": "complete"})

    with pytest.raises(RetryableError) as caught:
        _client(handler).get_order("order-1")
    assert caught.value.reason == "upstream_invalid_response"


def test_token_answer_without_expiry_lives_an_hour():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": "eyJ.a.b", "token_type": "Bearer"})

    settings = Settings(upstream_url="http://upstream.test")
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        assert fetch_token(settings, http) == ("eyJ.a.b", 3600.0)


def test_token_answer_without_a_token_is_retryable():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"token_type": "Bearer", "expires_in": 60})

    settings = Settings(upstream_url="http://upstream.test")
    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as http,
        pytest.raises(RetryableError, match="access_token"),
    ):
        fetch_token(settings, http)


def test_token_lock_outlives_a_worst_case_token_fetch():
    """The refresher's lock must not expire while its fetch may still be running (~25 s)."""
    settings = Settings(
        upstream_pool_timeout_s=5, upstream_connect_timeout_s=5, upstream_read_timeout_s=15
    )
    worst = (
        settings.upstream_pool_timeout_s
        + settings.upstream_connect_timeout_s
        + settings.upstream_write_timeout_s
        + settings.upstream_read_timeout_s
    )
    assert token_lock_timeout_s(settings) > worst >= 25
    slow = Settings(upstream_connect_timeout_s=10, upstream_read_timeout_s=60)
    assert token_lock_timeout_s(slow) > 70


def test_an_overlong_upstream_id_is_never_half_stored():
    """A submit answer whose id cannot be stored is an unusable answer (ambiguous, never a
    success to truncate); a list entry with such an id is skipped, the rest of the page read."""
    long_id = "order-" + "x" * 200

    def submit(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": long_id, "status": "complete"})

    with pytest.raises(AmbiguousError):
        _client(submit).submit({"order_type": "new"})

    def listing(request: httpx.Request) -> httpx.Response:
        items = [{"id": long_id, "external_id": "E1"}, {"id": "order-2", "external_id": "E2"}]
        return httpx.Response(200, json={"orders": items})

    page = _client(listing).list_orders(limit=10)
    assert [o.id for o in page.items] == ["order-2"]


def test_overlong_upstream_fields_are_cut_to_their_columns():
    """Reference, status and owner longer than their columns are cut, not refused: the
    transaction they share with other orders' answers must not fail on PostgreSQL."""
    from worker.pipeline.outcomes import upstream_fields

    answer = SubmitResponse(
        id="order-1", order_reference="R" * 500, status="s" * 500, owner="o" * 500
    )
    fields = upstream_fields(answer)
    assert fields["upstream_id"] == "order-1"
    assert (len(fields["upstream_reference"]), len(fields["upstream_owner"])) == (100, 100)
    assert len(fields["upstream_status"]) == 64


@pytest.mark.parametrize(
    "bad", ["../../../../oauth2/token", "../../../../_stub/config", "a/b", "x?y", "%2e%2e", ""]
)
def test_an_upstream_id_that_could_leave_its_path_is_never_sent(bad):
    """An id of the wrong shape is refused before any request leaves; a good one is sent
    inside its path segment."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "order-1", "external_id": "E"})

    client = _client(handler)
    with pytest.raises(PermanentError) as refused:
        client.get_order(bad)
    assert refused.value.reason == "invalid_upstream_id" and seen == []
    client.get_order("order-4dd195c3eee4297e33aecb5436cf8092")
    assert seen[0].url.path == "/api/objects/limio/orders/order-4dd195c3eee4297e33aecb5436cf8092"
