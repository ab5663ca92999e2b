"""``orders submit FILE --results OUT`` and ``orders batch ID`` against the API."""

from __future__ import annotations

import orjson

from tests.api.conftest import order
from worker.cli.api_client import ApiCallError, ApiClient
from worker.cli.output import download_results, show_batch, submit_file


def test_results_file_has_a_line_per_accepted_order_of_every_batch(client, alpha, tmp_path):
    lines = [order(f"R-{i}") for i in range(5)] + [{"order_type": "new", "external_id": "bad"}]
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(p) for p in lines))
    api = ApiClient(str(client.base_url), alpha.key, http=client)
    batch_ids: list[str] = []
    submit_file(api, path, batch_size=4, follow=False, timeout_s=1, batch_ids=batch_ids)
    assert len(batch_ids) == 2
    out = tmp_path / "results.jsonl"
    assert download_results(api, batch_ids, out) == 5
    got = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [(g["batch_id"], g["index"], g["external_id"]) for g in got] == [
        (batch_ids[0], 0, "R-0"),
        (batch_ids[0], 1, "R-1"),
        (batch_ids[0], 2, "R-2"),
        (batch_ids[0], 3, "R-3"),
        (batch_ids[1], 0, "R-4"),
    ]
    view = show_batch(api, batch_ids[0], watch=False)
    assert view["counts"] == {"total": 4, "received": 4}


def test_another_callers_batch_is_an_error_for_the_cli(client, alpha, beta, tmp_path):
    path = tmp_path / "orders.jsonl"
    path.write_bytes(orjson.dumps(order("S-1")))
    mine = ApiClient(str(client.base_url), alpha.key, http=client)
    batch_ids: list[str] = []
    submit_file(mine, path, batch_size=4, follow=False, timeout_s=1, batch_ids=batch_ids)
    theirs = ApiClient(str(client.base_url), beta.key, http=client)
    for call in (
        lambda: theirs.batch(batch_ids[0]),
        lambda: list(theirs.batch_results(batch_ids[0])),
    ):
        try:
            call()
        except ApiCallError as exc:
            assert exc.status_code == 404
        else:
            raise AssertionError("another caller's batch must be 404")
