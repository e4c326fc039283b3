"""The running API held to its own OpenAPI document by property-based testing (schemathesis, in pytest).

Requests are generated from /api/v1/openapi.json — valid ones and, in negative mode, ones that break the
document — and sent to the WSGI app over a filled temp DB with a valid token. Every answer must be no
server error, a documented status, and conform to the documented schema (the error shape included).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from api import create_app
from api.auth import create_token
from sensor.store import Store

from .test_api import fill

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    response_headers_conformance,
]
MAX_EXAMPLES = 40  # per operation and mode: bounded so the suite stays well under a minute


@pytest.fixture(scope="module")
def api_app(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("schema") / "schema.duckdb")
    fill(store)
    token = create_token(store, "schemathesis")
    app = create_app(store, {"rate_limit": 0})
    yield app, token
    store.close()


@pytest.fixture(scope="module")
def api_schema(api_app):
    app, token = api_app
    config = schemathesis.Config.from_dict(
        {"generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True}}
    )
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case, api_app):
    _, token = api_app
    response = case.call_and_validate(headers={"Authorization": token}, checks=CHECKS)
    if case.meta is not None and case.meta.generation.mode == GenerationMode.NEGATIVE:
        # a request that breaks the document is refused, in the error shape — never served, never a 500
        assert response.status_code in (200, 304, 400, 401, 404, 405), (case.path, case.query, response.text)
