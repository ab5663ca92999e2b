"""Schemathesis fuzzes every operation from the API's own OpenAPI: no answer may be a 5xx,
and every answer must be one the document declares (status code, content type, body schema).

Positive and negative cases (all generation modes), a few dozen examples per operation, with a
valid key so that requests get past authentication. The schema is read at import from an app
with placeholder settings (building it connects to nothing); each test then calls the app
built for its own database and Redis. (``schemathesis.pytest.from_fixture`` would be the
direct way, but it fails with pytest 9: it sets ``Function._nodeid``, which no longer exists.)
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import CallerKey, make_caller
from tests.conftest import settings_from
from worker.api import create_app
from worker.settings import Settings

MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

schema = schemathesis.openapi.from_dict(
    create_app(Settings(database_url="sqlite://", redis_url="redis://127.0.0.1:1/0")).openapi()
)


@pytest.fixture
def fuzz_caller(clean_db: str) -> CallerKey:
    return make_caller(clean_db, "fuzz")


@pytest.fixture
def fuzz_app(env: dict[str, str]) -> FastAPI:
    return create_app(settings_from(env, max_batch_items=50, max_body_bytes=200_000))


@pytest.mark.long
@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_answers_match_the_openapi(case: Any, fuzz_app: FastAPI, fuzz_caller: CallerKey) -> None:
    """Whatever Schemathesis sends, the API answers without a server error, and as documented."""
    response = case.call(app=fuzz_app, headers=fuzz_caller.headers)
    assert response.status_code < 500, (case.method, case.path, response.text)
    case.validate_response(response, checks=CHECKS, headers=fuzz_caller.headers)
