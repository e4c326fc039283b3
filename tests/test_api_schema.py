"""The running API held to its own OpenAPI document by property-based testing (schemathesis, in pytest).

Requests are generated from /api/v1/openapi.json — valid ones and, in negative mode, ones that break the
document — and sent to the WSGI app over a filled temp DB with a valid token. Every answer must be no
server error, a documented status, and conform to the documented schema (the error shape included).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
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


def operations(app) -> list:
    config = schemathesis.Config.from_dict({"generation": {"mode": "all", "deterministic": True}})
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, config=config)
    return [result.ok() for result in schema.get_all_operations()]


# Driven by hypothesis directly rather than schemathesis's pytest plugin, whose lazy fixtures break with each
# new pytest (9.2: "'Function' object has no attribute '_nodeid'"); the checks are the same.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_api_conforms_to_its_openapi_document(api_app, mode):
    app, token = api_app
    checked = 0
    for operation in operations(app):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def conforms(case):
            response = case.call_and_validate(headers={"Authorization": token}, checks=CHECKS)
            if mode == GenerationMode.NEGATIVE:
                # a request that breaks the document is refused, in the error shape: never served, never a 500
                assert response.status_code in (200, 304, 400, 401, 404, 405), (case.path, case.query, response.text)

        try:
            conforms()
        except Unsatisfiable:
            # an operation without parameters has no request that breaks the document (the plugin skips these too)
            assert mode == GenerationMode.NEGATIVE and not operation.query and not operation.path_parameters
            continue
        checked += 1
    assert checked >= (6 if mode == GenerationMode.POSITIVE else 3)  # the operations were exercised
