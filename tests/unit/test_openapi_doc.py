"""The hand-written OpenAPI document: valid OpenAPI 3.1, in step with the routes, examples true."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from services.gateway.app import setup_routes

DOC_PATH = Path(__file__).resolve().parents[2] / "services" / "gateway" / "openapi.json"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
DOC_URI = "urn:sms4sats:openapi"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    data = json.loads(DOC_PATH.read_text())
    assert isinstance(data, dict)
    return data


def test_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.1.0"
    errors = [str(e.message) for e in OpenAPIV31SpecValidator(doc).iter_errors()]
    assert errors == []


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


CLASSIC_PATHS = {
    "/createorder",
    "/orderstatus",
    "/cancelorder",
    "/fund",
    "/balance",
    "/history",
    "/getCountries",
    "/getnumbersstatus",
    "/getRentalCountries",
    "/price",
    "/classic/openapi.json",
}


def _registered() -> set[tuple[str, str]]:
    app = web.Application()
    setup_routes(app)
    routes: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue  # aiohttp adds HEAD to every GET
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path is not None, f"route without a path: {route!r}"
        if path in CLASSIC_PATHS:
            continue  # the classic hold-invoice API is not part of the L402 document
        # aiohttp's {order_id} is the document's {orderId}: compare the shapes, not the names.
        routes.add((route.method, path))
    return routes


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def test_every_route_is_documented_and_every_documented_route_exists(
    doc: dict[str, Any],
) -> None:
    registered = {(m, _shape(p)) for m, p in _registered()}
    documented = {(m, _shape(p)) for m, p in _documented(doc)}
    assert sorted(registered - documented) == [], "routes missing from openapi.json"
    assert sorted(documented - registered) == [], "documented operations the app lacks"


def test_every_operation_documents_its_errors_as_json(doc: dict[str, Any]) -> None:
    error_codes = set(doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
                      ["code"]["enum"])  # fmt: skip
    resolver = _Resolver(doc)
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            responses = operation["responses"]
            assert "default" not in responses, "explicit status codes only"
            assert "500" in responses, f"{method} {path}: 500 INTERNAL is not documented"
            for status, response in responses.items():
                response = resolver.deref(response)
                if int(status) < 400 or path == "/health":
                    continue
                schema = resolver.deref(response["content"]["application/json"]["schema"])
                codes = _error_codes(resolver, schema)
                assert codes, f"{method} {path} {status}: not an error body"
                assert codes <= error_codes, f"{method} {path} {status}: unknown {codes}"
            if "security" in operation and {"L402": []} in operation["security"]:
                assert "403" in responses, f"{method} {path}: credential errors undocumented"


def _error_codes(resolver: _Resolver, schema: dict[str, Any]) -> set[str]:
    error = resolver.deref(schema["properties"]["error"])
    code = error["properties"]["code"]
    return set(code["enum"]) if "enum" in code else {code["const"]}


def test_limited_operations_document_429_with_retry_after(doc: dict[str, Any]) -> None:
    resolver = _Resolver(doc)
    limited = [
        ("post", "/v2/l402/order"),
        ("get", "/v2/l402/order/{orderId}"),
        ("post", "/v2/l402/order/{orderId}/cancel"),
    ]
    for method, path in limited:
        response = resolver.deref(doc["paths"][path][method]["responses"]["429"])
        assert response["headers"]["Retry-After"]["required"] is True


def test_order_statuses_and_types_match_the_code(doc: dict[str, Any]) -> None:
    from libs.common.domain.orders import OrderType, Status

    schemas = doc["components"]["schemas"]
    assert schemas["OrderStatus"]["enum"] == [s.value for s in Status]
    assert schemas["OrderType"]["enum"] == [t.value for t in OrderType]


def test_order_schema_lists_exactly_what_order_json_returns(doc: dict[str, Any]) -> None:
    from datetime import UTC, datetime
    from decimal import Decimal

    from libs.common.core.config import Settings
    from libs.common.domain.orders import Order, OrderType, PaymentMode, Status
    from libs.common.domain.refunds import RefundStatus
    from libs.common.persistence.ports import RefundState
    from services.gateway.order_view import order_json

    order = Order(
        id="0b8f6c1e-3f2a-4d6e-9a51-2f0c8f9b7d10",
        type=OrderType.RECEIVE_SMS,
        status=Status.WAITING_FOR_SMS,
        payment_mode=PaymentMode.STANDARD,
        country_id=187,
        service="tg",
        price_sats=480,
        provider_cost_usd=Decimal("0.10"),
        payment_hash=b"h" * 32,
        payment_request="lnbcrt1",
        phone_number="12025550143",
        created_at=datetime(2026, 5, 8, 12, 0, tzinfo=UTC),
        updated_at=datetime(2026, 5, 8, 12, 0, 30, tzinfo=UTC),
        paid_at=datetime(2026, 5, 8, 12, 0, 30, tzinfo=UTC),
        deadline_at=datetime(2026, 5, 8, 12, 20, 30, tzinfo=UTC),
        invoice_expires_at=datetime(2026, 5, 8, 12, 10, tzinfo=UTC),
    )
    refund = RefundState(RefundStatus.IN_FLIGHT, 480, None)
    body = order_json(order, Settings(), refund=refund)
    validator = _validator(doc, "Order")
    assert sorted(e.message for e in validator.iter_errors(body)) == []
    assert set(body) == set(doc["components"]["schemas"]["OrderFields"]["required"])
    # A stray field is a mistake the schema catches.
    assert list(validator.iter_errors({**body, "extra": 1}))
    cancel = _validator(doc, "CancelRequested")
    assert list(cancel.iter_errors({**body, "cancel": "requested"})) == []
    assert list(cancel.iter_errors(body))


def test_examples_conform_to_their_schemas(doc: dict[str, Any]) -> None:
    resolver = _Resolver(doc)
    checked = 0
    for where, schema, example in _examples(doc, resolver):
        errors = [e.message for e in _validator_for(doc, schema).iter_errors(example)]
        assert errors == [], f"{where}: {errors}"
        checked += 1
    assert checked >= 10


def _examples(doc: dict[str, Any], resolver: _Resolver) -> Iterator[tuple[str, Any, Any]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            bodies = []
            if "requestBody" in operation:
                bodies.append(("request", operation["requestBody"]))
            for status, response in operation["responses"].items():
                bodies.append((status, resolver.deref(response)))
            for label, body in bodies:
                for media in body.get("content", {}).values():
                    where = f"{method.upper()} {path} {label}"
                    if "example" in media:
                        yield where, media["schema"], media["example"]
                    for name, example in media.get("examples", {}).items():
                        yield f"{where} {name}", media["schema"], example["value"]
    for name, schema in doc["components"]["schemas"].items():
        for example in schema.get("examples", []):
            yield f"schema {name}", {"$ref": f"#/components/schemas/{name}"}, example


class _Resolver:
    """Follows local $refs of the document."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def deref(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node


def _validator_for(doc: dict[str, Any], schema: Any) -> Draft202012Validator:
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)
    if isinstance(schema, dict) and set(schema) == {"$ref"}:
        schema = {"$ref": DOC_URI + schema["$ref"]}
    else:
        schema = _rebase(schema)
    return Draft202012Validator(
        schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def _rebase(node: Any) -> Any:
    """Point the document's local refs at the registered document."""
    if isinstance(node, dict):
        return {
            k: (DOC_URI + v if k == "$ref" and v.startswith("#") else _rebase(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rebase(v) for v in node]
    return node


def _validator(doc: dict[str, Any], name: str) -> Draft202012Validator:
    return _validator_for(doc, {"$ref": f"#/components/schemas/{name}"})
