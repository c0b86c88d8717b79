"""The classic API's OpenAPI document: valid 3.1, in step with the classic routes, examples true."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from openapi_spec_validator import OpenAPIV31SpecValidator

from services.gateway.app import CLASSIC_OPENAPI_PATH, CLASSIC_OPENAPI_ROUTE, setup_routes
from tests.unit.test_openapi_doc import (
    CLASSIC_PATHS,
    HTTP_METHODS,
    _documented,
    _examples,
    _Resolver,
    _validator,
    _validator_for,
)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    data = json.loads(CLASSIC_OPENAPI_PATH.read_text())
    assert isinstance(data, dict)
    return data


def test_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.1.0"
    assert [str(e.message) for e in OpenAPIV31SpecValidator(doc).iter_errors()] == []


def test_every_classic_route_is_documented_and_nothing_else(doc: dict[str, Any]) -> None:
    app = web.Application()
    setup_routes(app)
    registered = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        and route.resource.canonical in CLASSIC_PATHS
    }
    assert CLASSIC_OPENAPI_ROUTE in CLASSIC_PATHS
    assert _documented(doc) == registered


def test_every_error_is_the_classic_body(doc: dict[str, Any]) -> None:
    resolver = _Resolver(doc)
    classic = _validator(doc, "ClassicError")
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            responses = operation["responses"]
            assert "default" not in responses, "explicit status codes only"
            assert "500" in responses, f"{method} {path}: 500 is not documented"
            for status, response in responses.items():
                if int(status) < 400:
                    continue
                schema = resolver.deref(response)["content"]["application/json"]["schema"]
                validator = _validator_for(doc, schema)
                # The gateway-wide failures (413, 429, 503, 500) too: the classic body only.
                assert validator.is_valid({"status": "error", "reason": "x"}), (method, path)
                gateway_body = {"error": {"code": _code(status), "message": "x"}}
                assert not validator.is_valid(gateway_body), f"{method} {path} {status}"
                assert not validator.is_valid({"status": "OK"}), f"{method} {path} {status}"
    assert classic.is_valid({"status": "error", "reason": "x"})
    assert not classic.is_valid({"status": "error"})


def _code(status: str) -> str:
    return {
        "413": "PAYLOAD_TOO_LARGE",
        "429": "RATE_LIMITED",
        "500": "INTERNAL",
        "503": "UNAVAILABLE",
    }.get(status, "")


def test_every_operation_that_reads_the_database_documents_503(doc: dict[str, Any]) -> None:
    resolver = _Resolver(doc)
    # Only the document itself is served without PostgreSQL.
    without_database = {("get", CLASSIC_OPENAPI_ROUTE)}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS or (method, path) in without_database:
                continue
            assert "503" in operation["responses"], f"{method} {path}: 503 is not documented"
            response = resolver.deref(operation["responses"]["503"])
            assert "Retry-After" in response["headers"], f"{method} {path}"


def test_limited_operations_document_429_with_retry_after(doc: dict[str, Any]) -> None:
    resolver = _Resolver(doc)
    limited = (("post", "/createorder"), ("get", "/orderstatus"), ("get", "/cancelorder"))
    for method, path in limited:
        response = resolver.deref(doc["paths"][path][method]["responses"]["429"])
        assert response["headers"]["Retry-After"]["required"] is True


def test_examples_conform_to_their_schemas(doc: dict[str, Any]) -> None:
    resolver = _Resolver(doc)
    checked = 0
    for where, schema, example in _examples(doc, resolver):
        errors = [e.message for e in _validator_for(doc, schema).iter_errors(example)]
        assert errors == [], f"{where}: {errors}"
        checked += 1
    assert checked >= 10


def test_the_l402_discovery_links_the_classic_document() -> None:
    from services.gateway.discovery import openapi_document

    schema = openapi_document()["components"]["schemas"]["Discovery"]
    assert "classicOpenapi" in schema["properties"]
