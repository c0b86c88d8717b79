"""Unit tests of the bulk status (getActiveActivations): parsing of recorded bodies in the
SMS-Activate and HeroSMS shapes, and HeroSmsClient.active_activations against a fake upstream."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from libs.common.adapters.sms import (
    ActiveActivation,
    BadAction,
    ProviderUnavailable,
    parse_active_activations,
)
from tests.unit.test_sms_client import Canned, Env, _errors_counted, env, hero, js

__all__ = ["env"]  # the fixture, imported for this module's tests

# SMS-Activate's documented answer (api.sms-activate.ae "Request active activations"): numeric
# or string ids, smsCode a list, smsText a list written inside a string.
SMS_ACTIVATE_BODY: dict[str, Any] = {
    "status": "success",
    "activeActivations": [
        {
            "activationId": 635468021,
            "serviceCode": "vk",
            "phoneNumber": "79000000001",
            "activationCost": 12.50,
            "activationStatus": "4",
            "smsCode": ["CODE"],
            "smsText": "[Your CODE registration code]",
            "activationTime": "2022-06-01 16:59:16",
            "discount": "0.00",
            "repeated": "0",
            "countryCode": "2",
            "countryName": "Kazakhstan",
            "canGetAnotherSms": "1",
            "currency": 840,
        },
        {
            "activationId": "635468022",
            "serviceCode": "tg",
            "phoneNumber": "79000000002",
            "activationStatus": 4,
            "smsCode": None,
            "smsText": None,
        },
        {
            "activationId": "635468023",
            "phoneNumber": "79000000003",
            "activationStatus": "2",
            "smsCode": [11111, 22222],
            "smsText": '["Code 11111", "Code 22222"]',
        },
    ],
}

# HeroSMS's documented answer: rows under `data`, plain strings, a string id.
HEROSMS_DOC_BODY: dict[str, Any] = {
    "status": "success",
    "data": [
        {
            "activationId": "635468021",
            "serviceCode": "vk",
            "phoneNumber": "79000000001",
            "activationCost": 12.5,
            "activationStatus": "4",
            "smsCode": "12345",
            "smsText": "Your code is 12345",
            "activationTime": "2022-06-01 16:59:16",
            "countryCode": "2",
            "canGetAnotherSms": "1",
            "currency": 840,
        }
    ],
}

# What HeroSMS was seen answering (a public client's note): `data` empty, the rows nested in
# `activeActivations` with `row` (the first) and `rows`, plus estDate / receiveSmsDate.
HEROSMS_OBSERVED_BODY: dict[str, Any] = {
    "status": "success",
    "data": [],
    "activeActivations": {
        "affected_rows": 2,
        "num_rows": 2,
        "row": {"activationId": "700", "phoneNumber": "4471", "activationStatus": "4"},
        "rows": [
            {"activationId": "700", "phoneNumber": "4471", "activationStatus": "4"},
            {
                "activationId": 701,
                "phoneNumber": "+44 72",
                "activationStatus": "3",
                "smsCode": "654321",
                "smsText": "Telegram code 654321",
                "receiveSmsDate": "2026-12-01 10:00:05",
                "estDate": "2026-12-01 10:20:00",
            },
        ],
    },
}


def row(**fields: Any) -> dict[str, Any]:
    """A minimal row with an id."""
    return {"activationId": "9", **fields}


# ----------------------------------------------------------------------------------- parsing


def test_sms_activate_shape() -> None:
    first, second, third = parse_active_activations(SMS_ACTIVATE_BODY)
    assert first == ActiveActivation(
        id="635468021",
        state="received",
        phone="79000000001",
        code="CODE",
        text="Your CODE registration code",
    )
    assert second == ActiveActivation(id="635468022", state="waiting", phone="79000000002")
    # Several SMS: the latest one counts.
    assert (third.state, third.code, third.text) == ("received", "22222", "Code 22222")


def test_herosms_documented_shape() -> None:
    [only] = parse_active_activations(HEROSMS_DOC_BODY)
    assert only == ActiveActivation(
        id="635468021",
        state="received",
        phone="79000000001",
        code="12345",
        text="Your code is 12345",
    )


def test_herosms_observed_nested_shape_in_the_provider_zone() -> None:
    moscow = timezone(timedelta(hours=3))
    waiting, retry = parse_active_activations(HEROSMS_OBSERVED_BODY, moscow)
    assert waiting == ActiveActivation(id="700", state="waiting", phone="4471")
    # activationStatus 3: waiting for another SMS; the code is the previous one, as getStatus
    # says STATUS_WAIT_RETRY:<previous>.
    assert retry == ActiveActivation(
        id="701",
        state="retry_wait",
        phone="4472",
        code="654321",
        text="Telegram code 654321",
        received_at=datetime(2026, 12, 1, 7, 0, 5, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("fields", "state"),
    [
        ({"activationStatus": "1"}, "waiting"),
        ({"activationStatus": "4"}, "waiting"),
        ({"activationStatus": None}, "waiting"),
        ({}, "waiting"),
        ({"activationStatus": "99"}, "waiting"),
        ({"activationStatus": "2", "smsCode": "1"}, "received"),
        ({"activationStatus": 4, "smsCode": "1"}, "received"),
        ({"activationStatus": "3", "smsCode": "1"}, "retry_wait"),
        ({"activationStatus": "8"}, "cancelled"),
        ({"activationStatus": "6"}, "cancelled"),
        ({"activationStatus": "6", "smsText": "code 4321"}, "received"),
        ({"status": "8"}, "cancelled"),
    ],
)
def test_status_numbers(fields: dict[str, Any], state: str) -> None:
    [parsed] = parse_active_activations({"data": [row(**fields)]})
    assert parsed.state == state


@pytest.mark.parametrize(
    ("fields", "code", "text"),
    [
        ({"smsCode": 12345}, "12345", None),
        ({"smsCode": "", "smsText": ""}, None, None),
        ({"smsCode": "null", "smsText": "null"}, None, None),
        ({"smsCode": [], "smsText": "[]"}, None, None),
        ({"sms": [{"code": "1", "text": "a"}, {"code": "2", "text": "b"}]}, "2", "b"),
        ({"sms": {"code": 777, "text": "code 777"}}, "777", "code 777"),
        ({"sms": "just a text"}, None, "just a text"),
        ({"sms": '["first", "second"]'}, None, "second"),
        ({"sms": None}, None, None),
    ],
)
def test_sms_in_every_shape(fields: dict[str, Any], code: str | None, text: str | None) -> None:
    [parsed] = parse_active_activations([row(**fields)])
    assert (parsed.code, parsed.text) == (code, text)
    assert parsed.state == ("waiting" if code is None and text is None else "received")


def test_sms_time_from_an_sms_object() -> None:
    body = [row(sms={"code": "1", "dateTime": "2026-12-01 10:00:00"})]
    [parsed] = parse_active_activations(body)
    assert parsed.received_at == datetime(2026, 12, 1, 10, tzinfo=UTC)


def test_malformed_rows_are_skipped_without_their_content(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    body = {
        "data": [
            "garbage",
            None,
            42,
            {"phoneNumber": "1", "smsCode": "SECRET1"},
            {"activationId": True, "smsCode": "SECRET2"},
            {"activationId": {"nested": 1}, "smsCode": "SECRET3"},
            {"activationId": "", "smsCode": "SECRET4"},
            row(smsCode="55555"),
            row(smsCode="66666"),  # the same id again: kept once
        ]
    }
    [good] = parse_active_activations(body)
    assert (good.id, good.code) == ("9", "55555")
    assert caplog.text.count("skipped a malformed row") == 7
    assert "SECRET" not in caplog.text


@pytest.mark.parametrize(
    "body",
    [{"status": "success", "data": []}, {"status": "success"}, [], {}, "text", None, 5],
)
def test_nothing_active(body: Any) -> None:
    assert parse_active_activations(body) == []


def test_rows_keyed_by_id() -> None:
    body = {"activeActivations": {"1": row(activationId=1), "2": row(activationId="2")}}
    assert [a.id for a in parse_active_activations(body)] == ["1", "2"]


# ------------------------------------------------------------------------------------ client


def page(first: int, count: int) -> Canned:
    """A HeroSMS page of `count` waiting activations with ids from `first`."""
    rows = [{"activationId": str(i), "activationStatus": "4"} for i in range(first, first + count)]
    return js({"status": "success", "data": rows})


async def test_client_reads_every_page(env: Env) -> None:
    env.upstream.on("getActiveActivations", page(1, 100), page(101, 3))
    found = await env.client.active_activations()
    assert [a.id for a in found] == [str(i) for i in range(1, 104)]
    sent = [r for r in env.upstream.requests if r["action"] == "getActiveActivations"]
    assert [(r["start"], r["limit"]) for r in sent] == [("0", "100"), ("100", "100")]


async def test_client_page_size_can_be_raised(env: Env) -> None:
    env.client.active_page_size = 500
    env.upstream.on("getActiveActivations", page(1, 500), page(501, 20))
    assert len(await env.client.active_activations()) == 520
    sent = [r for r in env.upstream.requests if r["action"] == "getActiveActivations"]
    assert [(r["start"], r["limit"]) for r in sent] == [("0", "500"), ("500", "500")]


async def test_client_stops_when_the_provider_ignores_start(env: Env) -> None:
    env.upstream.on("getActiveActivations", page(1, 150))
    found = await env.client.active_activations()
    assert len(found) == 150
    assert env.upstream.calls("getActiveActivations") == 2


async def test_client_in_sms_activate_style(env: Env) -> None:
    env.upstream.on("getActiveActivations", js(SMS_ACTIVATE_BODY))
    found = await env.client.active_activations()
    assert [(a.id, a.state, a.code) for a in found] == [
        ("635468021", "received", "CODE"),
        ("635468022", "waiting", None),
        ("635468023", "received", "22222"),
    ]


@pytest.mark.parametrize(
    "reply",
    [
        Canned("NO_ACTIVATIONS"),
        Canned("NO_ACTIVATIONS\n"),
        js({"status": "error", "error": "NO_ACTIVATIONS"}),
        js({"status": "error", "message": "NO_ACTIVATIONS"}),
        js({"status": "success", "data": []}),
        js({"status": "success", "activeActivations": []}),
    ],
)
async def test_client_no_activations(env: Env, reply: Canned) -> None:
    env.upstream.on("getActiveActivations", reply)
    assert await env.client.active_activations() == []


@pytest.mark.parametrize(
    "reply", [Canned("BAD_ACTION"), hero("BAD_ACTION", 404)], ids=["smsactivate", "herosms"]
)
async def test_client_provider_without_the_action(env: Env, reply: Canned) -> None:
    env.upstream.on("getActiveActivations", reply)
    before = _errors_counted("BAD_ACTION")
    with pytest.raises(BadAction):
        await env.client.active_activations()
    assert _errors_counted("BAD_ACTION") == before + 1


async def test_client_unexpected_reply(env: Env) -> None:
    env.upstream.on("getActiveActivations", js("just a string"))
    with pytest.raises(ProviderUnavailable):
        await env.client.active_activations()
