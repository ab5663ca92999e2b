"""Tests of the stub's upstream endpoints: token, auth, preview, submit, order objects."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable

import httpx
import pytest

from api_stub.testing import StubControl
from api_stub.tokens import decode_claims
from schemas.upstream import LimioOrderObject, PreviewResponse, SubmitResponse, TokenResponse
from tests.stub.conftest import DEMO_SUB, PREVIEW_PATHS, SUBMIT_PATHS, new_payload

FORM = {
    "grant_type": "client_credentials",
    "client_id": "demo-client",
    "client_secret": "demo-secret",
}
Submit = Callable[..., httpx.Response]


def basic(client_id: str, secret: str) -> dict[str, str]:
    """An HTTP Basic Authorization header."""
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def test_token_with_form_credentials(client: httpx.Client) -> None:
    """Form-body client credentials get a Bearer token with the configured lifetime."""
    response = client.post("/oauth2/token", data=FORM)
    assert response.status_code == 200
    token = TokenResponse.model_validate(response.json())
    assert (token.token_type, token.expires_in) == ("Bearer", 3600)


def test_token_with_basic_credentials(client: httpx.Client) -> None:
    """HTTP Basic client credentials are accepted too."""
    response = client.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers=basic("demo-client", "demo-secret"),
    )
    assert response.status_code == 200
    assert response.json()["access_token"]


def test_token_is_a_signed_jwt_with_iat_and_exp(client: httpx.Client) -> None:
    """The access token is header.claims.signature in base64url, with ``iat``/``exp`` claims."""
    before = int(time.time())
    token = client.post("/oauth2/token", data=FORM).json()["access_token"]
    header_part, _, signature = token.split(".")
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", part) for part in token.split("."))
    header = base64.urlsafe_b64decode(header_part + "=" * (-len(header_part) % 4))
    assert header == b'{"alg":"HS256","typ":"JWT"}'
    claims = decode_claims(token)
    assert before <= claims["iat"] <= time.time()
    assert claims["exp"] - claims["iat"] in (3599, 3600)
    assert claims["sub"] == "demo-client"
    assert len(signature) == 43  # an HMAC-SHA256, unpadded


def test_tampered_jwt_is_refused(client: httpx.Client) -> None:
    """A token whose claims were edited (a later ``exp``) no longer matches its signature."""
    token = client.post("/oauth2/token", data=FORM).json()["access_token"]
    header, claims, signature = token.split(".")
    forged_claims = base64.urlsafe_b64encode(
        base64.urlsafe_b64decode(claims + "==").replace(b'"exp":', b'"exp":9')
    )
    forged = ".".join([header, forged_claims.decode().rstrip("="), signature])
    for candidate, status in ((token, 200), (forged, 401), (f"{token}x", 401)):
        response = client.get(
            "/api/objects/limio/orders", headers={"Authorization": f"Bearer {candidate}"}
        )
        assert response.status_code == status


@pytest.mark.parametrize(
    ("data", "headers"),
    [
        (FORM | {"client_secret": "wrong"}, {}),
        (FORM | {"client_id": "other"}, {}),
        ({"grant_type": "client_credentials"}, {}),
        ({"grant_type": "client_credentials"}, basic("demo-client", "wrong")),
        ({"grant_type": "client_credentials"}, {"Authorization": "Basic !!notbase64"}),
    ],
)
def test_wrong_credentials_get_401(
    client: httpx.Client, data: dict[str, str], headers: dict[str, str]
) -> None:
    """Wrong or missing client credentials are answered 401 with a message."""
    response = client.post("/oauth2/token", data=data, headers=headers)
    assert response.status_code == 401
    assert response.json()["message"]


@pytest.mark.parametrize("grant_type", ["authorization_code", ""])
def test_unsupported_grant_gets_400(client: httpx.Client, grant_type: str) -> None:
    """Only the client-credentials grant is served."""
    response = client.post("/oauth2/token", data=FORM | {"grant_type": grant_type})
    assert response.status_code == 400


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic ZGVtbzpkZW1v"}]
)
def test_api_without_a_valid_token_gets_401(client: httpx.Client, headers: dict[str, str]) -> None:
    """Missing, unknown or non-Bearer credentials are refused on /api routes."""
    for path in (*SUBMIT_PATHS, *PREVIEW_PATHS):
        response = client.post(path, json=new_payload(), headers=headers)
        assert (response.status_code, response.json()) == (401, {"message": "Unauthorized"})
    assert client.get("/api/objects/limio/orders/order-x", headers=headers).status_code == 401
    assert client.get("/api/objects/limio/orders", headers=headers).status_code == 401


def test_token_really_expires_after_its_ttl(control: StubControl, client: httpx.Client) -> None:
    """A token minted with a 1 s TTL works at once and is refused after 1 s."""
    control.configure(token_ttl_s=1.0)
    body = client.post("/oauth2/token", data=FORM).json()
    assert body["expires_in"] == 1
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert client.post(PREVIEW_PATHS[0], json=new_payload(), headers=headers).status_code == 200
    time.sleep(1.2)
    assert client.post(PREVIEW_PATHS[0], json=new_payload(), headers=headers).status_code == 401
    assert control.stats()["unauthorized"] == 1


@pytest.mark.parametrize("path", PREVIEW_PATHS)
def test_preview_is_zuora_shaped_and_deterministic(
    client: httpx.Client, auth: dict[str, str], path: str
) -> None:
    """A preview has ``preview`` and ``schedule``, string amounts, and depends on the payload."""
    first = client.post(path, json=new_payload(orderDate="2024-03-01T00:00:00Z"), headers=auth)
    again = client.post(path, json=new_payload(orderDate="2024-03-01T00:00:00Z"), headers=auth)
    assert first.status_code == 200 and first.json() == again.json()
    preview = PreviewResponse.model_validate(first.json())
    schedule = preview.first_schedule()
    assert schedule is not None and (schedule.amount, schedule.date) == ("19.98", "2024-03-01")
    assert preview.preview.paidAmount == "19.98"


def test_preview_creates_no_order(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """Preview is safe to repeat: nothing is recorded."""
    client.post(PREVIEW_PATHS[0], json=new_payload(), headers=auth)
    assert control.orders()["count"] == 0


@pytest.mark.parametrize("path", SUBMIT_PATHS)
def test_submit_creates_an_order(control: StubControl, submit: Submit, path: str) -> None:
    """Each submit path answers the documented fields and records the order."""
    response = submit(new_payload(), path)
    assert response.status_code == 200
    body = SubmitResponse.model_validate(response.json())
    assert re.fullmatch(r"order-[0-9a-f]{32}", body.id or "")
    assert re.fullmatch(r"[A-Z0-9]{12}", body.order_reference or "")
    assert re.fullmatch(r"[A-Z0-9]{12}", body.subscriptionReference or "")
    assert re.fullmatch(r"id-[0-9a-f]{32}", body.owner or "")
    assert (body.status, body.external_id) == ("submitted", "EXT-1")
    record = control.orders()["orders"]
    assert [(o["id"], o["endpoint"], o["ambiguous"]) for o in record] == [(body.id, path, False)]


def test_process_immediately_answers_complete(submit: Submit) -> None:
    """``process_immediately: true`` gives status ``complete`` at once."""
    assert submit(new_payload(process_immediately=True)).json()["status"] == "complete"


@pytest.mark.parametrize("path", SUBMIT_PATHS)
def test_invalid_payload_gets_400_naming_the_field(
    client: httpx.Client, auth: dict[str, str], path: str
) -> None:
    """A payload missing a required field is a 400 whose only key, ``message``, names it."""
    payload = new_payload()
    del payload["billingDetails"]
    payload["orderItems"] = [{"offer": {"version": "v"}}]
    response = client.post(path, json=payload, headers=auth)
    assert response.status_code == 400
    body = response.json()
    assert list(body) == ["message"]
    assert body["message"].startswith("Invalid order payload: ")
    assert "billingDetails: Field required" in body["message"]
    assert "orderItems.0.offer.id: Field required" in body["message"]


@pytest.mark.parametrize("body", [b"{not json", b'{"order_type": "new", "country": "GB"}'])
def test_payload_errors_502_mode_answers_submit_problems_with_502(
    control: StubControl, client: httpx.Client, auth: dict[str, str], body: bytes
) -> None:
    """With ``payload_errors="502"`` a bad submit payload gets the documented 502 body."""
    control.configure(payload_errors="502")
    response = client.post(SUBMIT_PATHS[0], content=body, headers=auth)
    assert response.status_code == 502
    assert list(response.json()) == ["message"]
    assert response.json()["message"].startswith("Bad Gateway")
    unknown = {"order_type": "cancel_subscription", "subscriptionId": "sub-unknown"}
    assert client.post(SUBMIT_PATHS[0], json=unknown, headers=auth).status_code == 404
    assert control.stats()["rejected"] == {"400": 0, "404": 1, "502": 1}
    assert control.orders()["count"] == 0


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"order_type": "teleport"}'])
def test_malformed_bodies_get_400(client: httpx.Client, auth: dict[str, str], body: bytes) -> None:
    """Malformed JSON, non-objects and unknown order types are 400s."""
    response = client.post(SUBMIT_PATHS[0], content=body, headers=auth)
    assert response.status_code == 400 and response.json()["message"]


def test_unknown_subscription_gets_404_on_submit(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """A change order naming a subscription the stub does not know is a submit 404."""
    payload = {"order_type": "cancel_subscription", "subscriptionId": "sub-unknown"}
    response = client.post(SUBMIT_PATHS[0], json=payload, headers=auth)
    assert (response.status_code, response.json()) == (404, {"message": "Not found."})
    assert control.orders()["count"] == 0


@pytest.mark.parametrize("path", PREVIEW_PATHS)
def test_preview_of_unknown_subscription_is_a_502(
    control: StubControl, client: httpx.Client, auth: dict[str, str], path: str
) -> None:
    """Preview documents only 200/401/502: an unknown subscription is a 502, never a 404."""
    payload = {"order_type": "change_offer", "forSubscription": {"id": "sub-unknown"}}
    response = client.post(path, json=payload, headers=auth)
    assert response.status_code == 502
    assert list(response.json()) == ["message"]
    assert response.json()["message"].startswith("Bad Gateway")
    assert "sub-unknown" in response.json()["message"]
    assert control.stats()["rejected"]["502"] == 1


@pytest.mark.parametrize("path", PREVIEW_PATHS)
@pytest.mark.parametrize("body", [b"{not json", b'{"order_type": "new", "country": "GB"}'])
def test_preview_of_a_bad_payload_is_a_502_naming_the_field(
    client: httpx.Client, auth: dict[str, str], path: str, body: bytes
) -> None:
    """Preview has no documented 400: payload problems answer 502 with the documented body."""
    response = client.post(path, content=body, headers=auth)
    assert response.status_code == 502
    message = response.json()["message"]
    assert message.startswith("Bad Gateway: an upstream service returned an unexpected response")
    assert ("checkoutId: Field required" in message) or ("Malformed JSON" in message)


def test_change_orders_reach_demo_and_created_subscriptions(submit: Submit) -> None:
    """Demo subscriptions and those created by ``new`` orders can be changed, by id or reference."""
    assert (
        submit({"order_type": "change_offer", "forSubscription": {"id": DEMO_SUB}}).status_code
        == 200
    )
    created = submit(new_payload()).json()
    record = submit(
        {"order_type": "cancel_subscription", "subscriptionRef": created["subscriptionReference"]}
    )
    assert record.status_code == 200
    assert record.json()["subscriptionReference"] == created["subscriptionReference"]
    assert record.json()["owner"] == created["owner"]


@pytest.mark.parametrize("field", ["forSubscription", "subscriptionId"])
def test_subscription_ids_are_not_references(
    control: StubControl, client: httpx.Client, auth: dict[str, str], submit: Submit, field: str
) -> None:
    """``forSubscription.id`` and ``subscriptionId`` take the ``sub-…`` id, not the reference."""

    def naming(value: str) -> dict[str, object]:
        if field == "forSubscription":
            return {"order_type": "change_offer", "forSubscription": {"id": value}}
        return {"order_type": "cancel_subscription", "subscriptionId": value}

    created = submit(new_payload()).json()
    by_reference = naming(created["subscriptionReference"])
    assert submit(by_reference).status_code == 404
    assert client.post(PREVIEW_PATHS[0], json=by_reference, headers=auth).status_code == 502
    [record] = control.orders()["orders"]
    assert record["subscriptionId"].startswith("sub-")
    assert submit(naming(record["subscriptionId"])).status_code == 200


def test_order_object_turns_complete_after_delay(
    control: StubControl, client: httpx.Client, submit: Submit
) -> None:
    """A queued order reads ``submitted``, then ``complete`` once complete_after_s has passed."""
    control.configure(complete_after_s=0.5)
    created = submit(new_payload(__spec_version="2", customFields={"a": 1})).json()
    url = f"/api/objects/limio/orders/{created['id']}"
    headers = {"Authorization": f"Bearer {control.token()}"}
    first = LimioOrderObject.model_validate(client.get(url, headers=headers).json())
    assert (first.orderState, first.status) == ("submitted", "submitted")
    assert first.order_reference == created["order_reference"]
    assert first.model_extra is not None and first.model_extra["customFields"] == {"a": 1}
    time.sleep(0.6)
    later = LimioOrderObject.model_validate(client.get(url, headers=headers).json())
    assert (later.orderState, later.status) == ("complete", "complete")
    assert later.updated != later.created


def test_async_fail_rate_settles_orders_as_failed(
    control: StubControl, client: httpx.Client, submit: Submit
) -> None:
    """With async_fail_rate 1 a queued order settles as ``failed``."""
    control.configure(async_fail_rate=1.0, complete_after_s=0.0)
    created = submit(new_payload()).json()
    headers = {"Authorization": f"Bearer {control.token()}"}
    body = client.get(f"/api/objects/limio/orders/{created['id']}", headers=headers).json()
    assert body["orderState"] == "failed"


def test_unknown_order_object_is_404(client: httpx.Client, auth: dict[str, str]) -> None:
    """Reading an order id the stub never created is a 404."""
    response = client.get("/api/objects/limio/orders/order-0000", headers=auth)
    assert (response.status_code, response.json()) == (404, {"message": "Not found."})


def test_list_pages_newest_first(
    client: httpx.Client, auth: dict[str, str], submit: Submit
) -> None:
    """The list is newest first and ``queryMore`` walks every order exactly once."""
    ids = [submit(new_payload(n)).json()["id"] for n in range(5)]
    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 2}
    while True:
        page = client.get("/api/objects/limio/orders", params=params, headers=auth).json()
        assert len(page["items"]) <= 2 and page["totalSize"] == 5
        seen += [item["id"] for item in page["items"]]
        assert set(page["items"][0]) == {
            "id",
            "external_id",
            "order_reference",
            "orderState",
            "created",
        }
        if page["queryMore"] is None:
            break
        params = {"limit": 2, "queryMore": page["queryMore"]}
    assert seen == ids[::-1]
    bad = client.get("/api/objects/limio/orders", params={"queryMore": "%%%"}, headers=auth)
    assert bad.status_code == 502 and list(bad.json()) == ["message"]


def test_list_cursors_are_standard_base64_that_needs_url_encoding(
    client: httpx.Client, auth: dict[str, str], submit: Submit
) -> None:
    """Cursors use ``+``, ``/`` and ``=``: sent URL-encoded they work, sent raw they fail."""
    for n in range(12):
        submit(new_payload(n))
    cursors: list[str] = []
    params: dict[str, str | int] = {"limit": 1}
    while True:
        page = client.get("/api/objects/limio/orders", params=params, headers=auth).json()
        if page["queryMore"] is None:
            break
        cursors.append(page["queryMore"])
        params = {"limit": 1, "queryMore": page["queryMore"]}
    assert len(cursors) == 11
    assert all(re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", cursor) for cursor in cursors)
    assert all("+" in cursor and "/" in cursor for cursor in cursors)
    assert any(cursor.endswith("=") for cursor in cursors)
    assert base64.b64decode(cursors[0], validate=True)
    raw = client.get(f"/api/objects/limio/orders?limit=1&queryMore={cursors[0]}", headers=auth)
    assert raw.status_code == 502
