"""The live gateway against the classic API's OpenAPI document (schemathesis), plus bodies no
generator writes: malformed multipart, unknown charsets, bad gzip, non-UTF-8 API keys.

Same checks and settings as the L402 document's fuzzing (tests/e2e/test_openapi_fuzz.py): no
5xx, documented status codes, content types, headers and bodies. A real prepaid account's key
is the fuzzer's X-API-Key, so the balance, history and top-up answers are reached too.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import pytest
import schemathesis

from services.gateway.app import CLASSIC_OPENAPI_PATH, CLASSIC_OPENAPI_ROUTE
from tests.e2e.test_openapi_fuzz import (
    CHECKS,
    _config,
    _schemathesis_lazy_loader_on_pytest_9,  # noqa: F401 - the autouse fixture, for this module too
)
from tests.e2e.test_prepaid import _new_account

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def classic_schema(stack: dict[str, Any]) -> Any:
    """The classic document as the gateway serves it, authenticated with a real account."""
    key = _new_account(stack)
    config = _config({"openapi": {"ApiKey": {"api_key": key}}})
    schema = schemathesis.openapi.from_url(
        f"{stack['gateway_url']}{CLASSIC_OPENAPI_ROUTE}", config=config, timeout=10
    )
    schema.config.update(base_url=stack["gateway_url"])
    return schema


classic_lazy = schemathesis.pytest.from_fixture("classic_schema")


@classic_lazy.parametrize()
def test_the_classic_api_conforms_to_its_openapi_document(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(checks=CHECKS)


def test_the_served_classic_document_is_the_repository_file(stack: dict[str, Any]) -> None:
    with urllib.request.urlopen(f"{stack['gateway_url']}{CLASSIC_OPENAPI_ROUTE}") as resp:
        assert resp.status == 200
        assert json.loads(resp.read()) == json.loads(CLASSIC_OPENAPI_PATH.read_text())
    with urllib.request.urlopen(f"{stack['gateway_url']}/v2/l402") as resp:
        assert json.loads(resp.read())["classicOpenapi"] == CLASSIC_OPENAPI_ROUTE


# Raw requests the generators never write: each once answered 500 INTERNAL.
RAW = [
    (
        "POST /createorder",
        b"Content-Type: multipart/form-data; boundary=zz\r\n",
        b"--zz\r\ngarbage-here\r\n",
    ),
    ("POST /createorder", b"Content-Type: multipart/form-data\r\n", b"abc"),
    (
        "POST /createorder",
        b"Content-Type: application/x-www-form-urlencoded; charset=nope-9\r\n",
        b"service=tg",
    ),
    (
        "POST /createorder",
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Encoding: gzip\r\n",
        b"notgzip!!!",
    ),
    ("GET /balance", b"X-API-Key: s4s_\xff\xfe\r\n", b""),
    ("GET /history", b"X-API-Key: \xe9\r\n", b""),
    ("POST /fund", b"X-API-Key: \xe9\r\nContent-Type: application/json\r\n", b'{"amount": 5}'),
]

RAW_IDS = [f"{line}-{i}" for i, (line, _, _) in enumerate(RAW)]


async def _raw(stack: dict[str, Any], line: str, headers: bytes, body: bytes) -> tuple[int, Any]:
    host, port = stack["gateway_url"].removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    head = f"{line} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n".encode()
    length = f"Content-Length: {len(body)}\r\n".encode() if body else b""
    writer.write(head + headers + length + b"\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize(("line", "headers", "body"), RAW, ids=RAW_IDS)
async def test_unreadable_requests_get_a_classic_client_error(
    stack: dict[str, Any], line: str, headers: bytes, body: bytes
) -> None:
    status, answer = await _raw(stack, line, headers, body)
    assert status in (400, 401), answer
    assert answer["status"] == "error" and answer["reason"]


async def test_a_valid_key_with_an_unreadable_fund_body_is_a_400(stack: dict[str, Any]) -> None:
    key = _new_account(stack).encode()
    for headers, body in (
        (b"Content-Type: multipart/form-data\r\n", b"abc"),
        (b"Content-Type: application/x-www-form-urlencoded; charset=nope-9\r\n", b"amount=5"),
        (b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n", b"notgzip!!!"),
    ):
        with_key = b"X-API-Key: " + key + b"\r\n" + headers
        status, answer = await _raw(stack, "POST /fund", with_key, body)
        assert (status, answer["status"]) == (400, "error"), answer
