"""Unit tests of libs.common.sms against recorded provider replies served by a local test server."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from libs.common.sms import (
    Activation,
    ActivationNotActive,
    ActivationStatus,
    BadAction,
    BadKey,
    BadService,
    BadStatus,
    Banned,
    CodeAlreadyReceived,
    Country,
    HeroSmsClient,
    InsufficientBalance,
    JsonReply,
    NoNumbers,
    NotFound,
    Offer,
    OrderAlreadyExists,
    PriceTooLow,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    ReactivationNotAvailable,
    Service,
    SmsProvider,
    TextReply,
    TooEarlyToCancel,
    parse_countries,
    parse_provider_time,
    parse_reply,
    parse_status_v2,
)

API_KEY = "unit-secret-key-123"


@dataclass
class Canned:
    """One recorded reply."""

    body: str
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "text/plain"
    delay: float = 0.0


def hero(title: str, status: int, info: dict[str, Any] | None = None) -> Canned:
    """A HeroSMS style error reply."""
    body = json.dumps({"title": title, "details": "some details", "info": info or {}})
    return Canned(body, status, content_type="application/json")


def js(data: Any) -> Canned:
    """A JSON success reply."""
    return Canned(json.dumps(data), content_type="application/json")


class FakeUpstream:
    """Serves canned replies per action; the last reply of an action repeats."""

    def __init__(self) -> None:
        """Start empty."""
        self.replies: dict[str, list[Canned]] = {}
        self.requests: list[dict[str, str]] = []
        self.query_strings: list[str] = []

    def on(self, action: str, *replies: Canned | str) -> None:
        """Queue replies for an action (plain strings are 200 text bodies)."""
        self.replies[action] = [Canned(r) if isinstance(r, str) else r for r in replies]

    def calls(self, action: str) -> int:
        """Number of requests received for an action."""
        return sum(1 for r in self.requests if r.get("action") == action)

    async def handle(self, request: web.Request) -> web.Response:
        """The fake handler_api endpoint."""
        form = await request.post()
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        self.requests.append(params)
        self.query_strings.append(request.query_string)
        queue = self.replies.get(params.get("action", ""))
        if not queue:
            return web.Response(text="BAD_ACTION")
        canned = queue.pop(0) if len(queue) > 1 else queue[0]
        if canned.delay:
            await asyncio.sleep(canned.delay)
        return web.Response(
            status=canned.status,
            text=canned.body,
            content_type=canned.content_type,
            headers=canned.headers,
        )


@dataclass
class Env:
    """A fake upstream and a client pointed at it."""

    upstream: FakeUpstream
    client: HeroSmsClient
    base_url: str


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    """Start a fake provider and a client talking to it."""
    upstream = FakeUpstream()
    app = web.Application()
    app.router.add_route("*", "/stubs/handler_api.php", upstream.handle)
    server = TestServer(app)
    await server.start_server()
    base_url = str(server.make_url("")).rstrip("/")
    # No retries: each test sees the first answer's error (retries have their own tests).
    client = HeroSmsClient(base_url, API_KEY, timeout=2.0, max_retries=0)
    try:
        yield Env(upstream, client, base_url)
    finally:
        await client.close()
        await server.close()


# ------------------------------------------------------------------------------ success shapes


async def test_balance(env: Env) -> None:
    env.upstream.on("getBalance", "ACCESS_BALANCE:100.50\n")
    assert await env.client.balance_usd() == Decimal("100.50")
    sent = env.upstream.requests[0]
    assert sent == {"api_key": API_KEY, "action": "getBalance"}


async def test_buy_herosms_types(env: Env) -> None:
    env.upstream.on(
        "getNumberV2",
        js(
            {
                "activationId": "3100000001",
                "phoneNumber": "14155550123",
                "activationCost": 0.1,
                "currency": 840,
                "countryCode": 187,
                "canGetAnotherSms": True,
                "activationTime": "2026-05-08 10:00:00",
                "activationEndTime": "2026-05-08 10:20:00",
                "activationOperator": "tmobile",
            }
        ),
    )
    act = await env.client.buy(service="tg", country_id=187, max_price_usd=Decimal("0.25"))
    assert act == Activation(
        id="3100000001",
        phone="14155550123",
        cost_usd=Decimal("0.1"),
        country_id=187,
        ends_at=datetime(2026, 5, 8, 10, 20, tzinfo=UTC),
    )
    sent = env.upstream.requests[0]
    assert sent["service"] == "tg" and sent["country"] == "187" and sent["maxPrice"] == "0.25"


async def test_buy_smsactivate_types(env: Env) -> None:
    env.upstream.on(
        "getNumberV2",
        js(
            {
                "activationId": 635468024,
                "phoneNumber": "+44 7700 900123",
                "activationCost": "12.50",
                "currency": "840",
                "countryCode": "16",
                "canGetAnotherSms": "1",
                "activationTime": "2022-06-01 17:30:57",
                "activationOperator": "ee",
            }
        ),
    )
    act = await env.client.buy(service="wa", country_id=16)
    assert act.id == "635468024"
    assert act.phone == "447700900123"
    assert act.cost_usd == Decimal("12.50")
    assert act.country_id == 16
    assert act.ends_at is None
    assert "maxPrice" not in env.upstream.requests[0]


async def test_buy_without_country_code_uses_requested(env: Env) -> None:
    env.upstream.on(
        "getNumberV2", js({"activationId": 5, "phoneNumber": 79001234567, "activationCost": 1})
    )
    act = await env.client.buy(service="tg", country_id=0)
    assert (act.id, act.phone, act.cost_usd, act.country_id) == ("5", "79001234567", Decimal(1), 0)


async def test_buy_provider_timezone(env: Env) -> None:
    env.upstream.on(
        "getNumberV2",
        js(
            {
                "activationId": 1,
                "phoneNumber": "1",
                "activationCost": 0.1,
                "activationEndTime": "2026-05-08 13:20:00",
            }
        ),
    )
    msk = timezone(timedelta(hours=3))
    client = HeroSmsClient(env.base_url, API_KEY, provider_tz=msk)
    try:
        act = await client.buy(service="tg", country_id=0)
    finally:
        await client.close()
    assert act.ends_at == datetime(2026, 5, 8, 10, 20, tzinfo=UTC)


@pytest.mark.parametrize(
    "body",
    [
        js({"activationId": None, "phoneNumber": "1", "activationCost": 1}),
        js({"activationId": 1, "phoneNumber": "", "activationCost": 1}),
        js({"activationId": 1, "phoneNumber": "1", "activationCost": "cheap"}),
        js([1, 2, 3]),
        Canned("ACCESS_NUMBER:1:79001234567"),
    ],
)
async def test_buy_bad_shapes(env: Env, body: Canned) -> None:
    env.upstream.on("getNumberV2", body)
    with pytest.raises(ProviderError):
        await env.client.buy(service="tg", country_id=0)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("STATUS_WAIT_CODE", ActivationStatus("waiting")),
        ("STATUS_WAIT_RETRY:12345", ActivationStatus("retry_wait", code="12345")),
        ("STATUS_WAIT_RESEND", ActivationStatus("retry_wait")),
        ("STATUS_CANCEL", ActivationStatus("cancelled")),
        (" STATUS_OK:012345 \r\n", ActivationStatus("received", code="012345")),
    ],
)
async def test_poll_v1(env: Env, reply: str, expected: ActivationStatus) -> None:
    env.upstream.on("getStatus", reply)
    env.upstream.on("getStatusV2", "BAD_ACTION")  # text not available: still fine
    assert await env.client.poll("42") == expected
    assert env.upstream.requests[0]["id"] == "42"


async def test_poll_received_fetches_text_old_shape(env: Env) -> None:
    env.upstream.on("getStatus", "STATUS_OK:54321")
    env.upstream.on(
        "getStatusV2",
        js(
            {
                "verificationType": 0,
                "sms": {
                    "dateTime": "2026-05-08 10:01:00",
                    "code": "54321",
                    "text": "Your code 54321",
                },
                "call": None,
            }
        ),
    )
    status = await env.client.poll("42")
    assert status == ActivationStatus("received", code="54321", text="Your code 54321")


async def test_poll_received_fetches_text_new_shape(env: Env) -> None:
    env.upstream.on("getStatus", "STATUS_OK:777888")
    env.upstream.on(
        "getStatusV2",
        js(
            {
                "data": {
                    "id": 42,
                    "phoneFrom": "Telegram",
                    "code": 777888,
                    "text": "Telegram code 777888",
                    "service": "tg",
                    "date": "2026-05-08 10:01:00",
                }
            }
        ),
    )
    status = await env.client.poll("42")
    assert status == ActivationStatus("received", code="777888", text="Telegram code 777888")


async def test_poll_text_mismatch_or_failure_keeps_v1(env: Env) -> None:
    env.upstream.on("getStatus", "STATUS_OK:111111")
    env.upstream.on(
        "getStatusV2", js({"sms": {"code": "222222", "text": "other"}}), Canned("", 500)
    )
    assert await env.client.poll("1") == ActivationStatus("received", code="111111")
    assert await env.client.poll("1") == ActivationStatus("received", code="111111")


async def test_poll_without_text_fetch(env: Env) -> None:
    env.upstream.on("getStatus", "STATUS_OK:111111")
    client = HeroSmsClient(env.base_url, API_KEY, fetch_sms_text=False)
    try:
        assert await client.poll("1") == ActivationStatus("received", code="111111")
    finally:
        await client.close()
    assert env.upstream.calls("getStatusV2") == 0


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (TextReply("STATUS_CANCEL", None), ActivationStatus("cancelled")),
        (
            JsonReply({"verificationType": 0, "sms": None, "call": None}),
            ActivationStatus("waiting"),
        ),
        (
            JsonReply({"sms": [{"code": "1", "text": "a"}, {"code": "2", "text": "b"}]}),
            ActivationStatus("received", code="2", text="b"),
        ),
        (JsonReply({"status": "STATUS_WAIT_RETRY:55"}), ActivationStatus("retry_wait", "55")),
        (JsonReply([1]), None),
    ],
)
def test_parse_status_v2(reply: TextReply | JsonReply, expected: ActivationStatus | None) -> None:
    assert parse_status_v2(reply) == expected


@pytest.mark.parametrize(
    ("method", "status", "reply"),
    [
        ("request_another", "3", "ACCESS_RETRY_GET"),
        ("finish", "6", "ACCESS_ACTIVATION"),
        ("cancel", "8", "ACCESS_CANCEL"),
    ],
)
async def test_set_status_success(env: Env, method: str, status: str, reply: str) -> None:
    env.upstream.on("setStatus", reply)
    await getattr(env.client, method)("99")
    assert env.upstream.requests[0]["status"] == status
    assert env.upstream.requests[0]["id"] == "99"


async def test_set_status_unexpected_reply(env: Env) -> None:
    env.upstream.on("setStatus", "ACCESS_ACTIVATION")
    with pytest.raises(ProviderError) as info:
        await env.client.cancel("1")
    assert info.value.code == "ACCESS_ACTIVATION"


async def test_prices(env: Env) -> None:
    env.upstream.on(
        "getPrices",
        js(
            {
                "187": {"tg": {"cost": 0.08, "count": 25}, "wa": {"cost": "0.5", "count": "3"}},
                "16": {"tg": {"cost": 0.3, "count": 0}, "junk": "x"},
                "bad": {"tg": {"cost": 1, "count": 1}},
            }
        ),
    )
    offers = await env.client.prices()
    assert offers == [
        Offer(16, "tg", Decimal("0.3"), 0),
        Offer(187, "tg", Decimal("0.08"), 25),
        Offer(187, "wa", Decimal("0.5"), 3),
    ]
    # Filters are sent to the provider and re-applied locally.
    filtered = await env.client.prices(service="tg", country_id=187)
    assert filtered == [Offer(187, "tg", Decimal("0.08"), 25)]
    assert env.upstream.requests[1]["service"] == "tg"
    assert env.upstream.requests[1]["country"] == "187"


async def test_countries_object(env: Env) -> None:
    env.upstream.on(
        "getCountries",
        js(
            {
                "187": {"id": 187, "eng": "USA", "visible": 1, "retry": 1, "rent": 1},
                "16": {"id": "16", "eng": "England", "rus": "Англия", "visible": "1", "rent": "0"},
                "12": {"id": 12, "eng": "USA (virtual)", "visible": False, "rent": False},
            }
        ),
    )
    assert await env.client.countries() == [
        Country(12, "USA (virtual)", visible=False, rent=False),
        Country(16, "England", visible=True, rent=False),
        Country(187, "USA", visible=True, rent=True),
    ]


def test_countries_array_and_fallbacks() -> None:
    parsed = parse_countries(
        [
            {"id": 0, "rus": "Россия", "visible": True, "rent": True},
            {"id": 6, "name": "Indonesia", "visible": "true"},
            {"eng": "no id"},
            "junk",
        ]
    )
    assert parsed == [
        Country(0, "Россия", visible=True, rent=True),
        Country(6, "Indonesia", visible=True, rent=False),
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"status": "success", "services": [{"code": "tg", "name": "Telegram"}, {"code": "ot"}]},
        [{"code": "tg", "name": "Telegram"}, {"code": "ot", "name": None}],
        {"tg": "Telegram", "ot": "ot"},
    ],
)
async def test_services_shapes(env: Env, body: Any) -> None:
    env.upstream.on("getServicesList", js(body))
    assert await env.client.services() == [Service("tg", "Telegram"), Service("ot", "ot")]


def test_parse_provider_time() -> None:
    assert parse_provider_time("2026-05-08 10:20:00") == datetime(2026, 5, 8, 10, 20, tzinfo=UTC)
    assert parse_provider_time("2026-05-08T10:20:00+03:00") == datetime(
        2026, 5, 8, 7, 20, tzinfo=UTC
    )
    assert parse_provider_time("soon") is None
    assert parse_provider_time(None) is None


def test_client_satisfies_port() -> None:
    assert isinstance(HeroSmsClient("http://127.0.0.1:1", "k"), SmsProvider)


# ------------------------------------------------------------------------------ error shapes

ErrorCase = tuple[Canned, type[ProviderError], str, dict[str, Any]]

HEROSMS_ERRORS: list[ErrorCase] = [
    (hero("BAD_KEY", 401), BadKey, "BAD_KEY", {}),
    (hero("NO_KEY", 401), BadKey, "NO_KEY", {}),
    (hero("NO_BALANCE", 402), InsufficientBalance, "NO_BALANCE", {}),
    (
        hero("BANNED", 403, {"endDate": "2026-06-01 00:00:00"}),
        Banned,
        "BANNED",
        {"until": "2026-06-01 00:00:00"},
    ),
    (hero("CHANNELS_LIMIT", 403), Banned, "CHANNELS_LIMIT", {"until": None}),
    (hero("SERVICE_NOT_AVAILABLE", 403), BadService, "SERVICE_NOT_AVAILABLE", {}),
    (
        hero("WRONG_MAX_PRICE", 400, {"min": 0.3}),
        PriceTooLow,
        "WRONG_MAX_PRICE",
        {"min_price": 0.3},
    ),
    (hero("NOT_FOUND", 404), NotFound, "NOT_FOUND", {}),
    (hero("BAD_ACTION", 404), BadAction, "BAD_ACTION", {}),
    (
        hero("EARLY_CANCEL_DENIED", 409, {"minActivationTime": 120}),
        TooEarlyToCancel,
        "EARLY_CANCEL_DENIED",
        {"seconds": 120},
    ),
    (hero("OTP_RECEIVED", 409), CodeAlreadyReceived, "OTP_RECEIVED", {}),
    (hero("ACTIVATION_NOT_ACTIVE", 409), ActivationNotActive, "ACTIVATION_NOT_ACTIVE", {}),
    (hero("SOMETHING_NEW", 409), ProviderError, "SOMETHING_NEW", {}),
    (Canned("NO_NUMBERS"), NoNumbers, "NO_NUMBERS", {}),
    (
        Canned("slow down", 429, {"Retry-After": "10"}),
        RateLimited,
        "RATE_LIMITED",
        {"retry_after": 10.0},
    ),
    # Without Retry-After the client's own first backoff step is reported.
    (hero("TOO_MANY_REQUESTS", 429), RateLimited, "TOO_MANY_REQUESTS", {"retry_after": 0.5}),
    (Canned("", 500), ProviderUnavailable, "HTTP_500", {}),
    (Canned("<html>Bad Gateway</html>", 502), ProviderUnavailable, "HTTP_502", {}),
    (hero("ERROR_SQL", 503), ProviderUnavailable, "HTTP_503", {}),
    (Canned("<html>Not Found</html>", 404), ProviderUnavailable, "HTTP_404", {}),
    (Canned("Unauthorized", 401), BadKey, "HTTP_401", {}),
    (Canned("BAD_KEY", 401), BadKey, "BAD_KEY", {}),
]

SMSACTIVATE_ERRORS: list[ErrorCase] = [
    (Canned("BAD_KEY"), BadKey, "BAD_KEY", {}),
    (Canned("NO_KEY"), BadKey, "NO_KEY", {}),
    (Canned("NO_BALANCE"), InsufficientBalance, "NO_BALANCE", {}),
    (Canned("NO_NUMBERS"), NoNumbers, "NO_NUMBERS", {}),
    (Canned("BANNED:2026-06-01 00:00:00"), Banned, "BANNED", {"until": "2026-06-01 00:00:00"}),
    (Canned("CHANNELS_LIMIT"), Banned, "CHANNELS_LIMIT", {"until": None}),
    (Canned("ACCOUNT_INACTIVE"), Banned, "ACCOUNT_INACTIVE", {}),
    (Canned("WRONG_MAX_PRICE:0.1"), PriceTooLow, "WRONG_MAX_PRICE", {"min_price": 0.1}),
    (Canned("WRONG_MAX_PRICE"), PriceTooLow, "WRONG_MAX_PRICE", {"min_price": None}),
    (Canned("EARLY_CANCEL_DENIED"), TooEarlyToCancel, "EARLY_CANCEL_DENIED", {"seconds": None}),
    (Canned("NO_ACTIVATION"), NotFound, "NO_ACTIVATION", {}),
    (Canned("WRONG_ACTIVATION_ID"), NotFound, "WRONG_ACTIVATION_ID", {}),
    (Canned("BAD_ACTION"), BadAction, "BAD_ACTION", {}),
    (Canned("BAD_SERVICE"), BadService, "BAD_SERVICE", {}),
    (Canned("BAD_STATUS"), BadStatus, "BAD_STATUS", {}),
    (Canned("ERROR_SQL"), ProviderUnavailable, "ERROR_SQL", {}),
    (Canned("ORDER_ALREADY_EXISTS"), OrderAlreadyExists, "ORDER_ALREADY_EXISTS", {}),
    (
        Canned("RENEW_ACTIVATION_NOT_AVAILABLE"),
        ReactivationNotAvailable,
        "RENEW_ACTIVATION_NOT_AVAILABLE",
        {},
    ),
    (js({"status": "error", "error": "NO_NUMBERS"}), NoNumbers, "NO_NUMBERS", {}),
    (js({"status": "error", "message": "whatever happened"}), ProviderError, "ERROR", {}),
    (Canned("SOME_NEW_ERROR"), ProviderError, "SOME_NEW_ERROR", {}),
    (Canned(""), ProviderUnavailable, "EMPTY_REPLY", {}),
    (Canned("<html><body>maintenance</body></html>"), ProviderUnavailable, "GARBAGE_REPLY", {}),
    (Canned('{"activationId": 1,'), ProviderUnavailable, "BAD_JSON", {}),
]


def _ids(cases: list[ErrorCase]) -> list[str]:
    return [f"{c[0].status}-{c[2]}" for c in cases]


@pytest.mark.parametrize(
    ("reply", "exc_type", "code", "attrs"),
    HEROSMS_ERRORS + SMSACTIVATE_ERRORS,
    ids=_ids(HEROSMS_ERRORS) + _ids(SMSACTIVATE_ERRORS),
)
async def test_error_mapping(
    env: Env, reply: Canned, exc_type: type[ProviderError], code: str, attrs: dict[str, Any]
) -> None:
    env.upstream.on("getNumberV2", reply)
    with pytest.raises(ProviderError) as info:
        await env.client.buy(service="tg", country_id=187)
    assert type(info.value) is exc_type
    assert info.value.code == code
    for name, value in attrs.items():
        assert getattr(info.value, name) == value


def test_parse_reply_is_pure() -> None:
    assert parse_reply(200, "ACCESS_BALANCE:1") == TextReply("ACCESS_BALANCE", "1")
    assert parse_reply(200, "STATUS_WAIT_CODE") == TextReply("STATUS_WAIT_CODE", None)
    assert parse_reply(200, '{"a": 0.1}') == JsonReply({"a": Decimal("0.1")})
    with pytest.raises(RateLimited) as info:
        parse_reply(429, "", "2.5")
    assert info.value.retry_after == 2.5


async def test_unknown_success_key_on_balance(env: Env) -> None:
    env.upstream.on("getBalance", "ACCESS_BALANCE:lots", "SURPRISE")
    with pytest.raises(ProviderUnavailable):
        await env.client.balance_usd()
    with pytest.raises(ProviderError) as info:
        await env.client.balance_usd()
    assert info.value.code == "SURPRISE"


async def test_network_error_is_unavailable() -> None:
    client = HeroSmsClient("http://127.0.0.1:9", API_KEY, timeout=2.0)
    try:
        with pytest.raises(ProviderUnavailable) as info:
            await client.balance_usd()
    finally:
        await client.close()
    assert info.value.code == "NETWORK_ERROR"


async def test_timeout_is_unavailable(env: Env) -> None:
    env.upstream.on("getBalance", Canned("ACCESS_BALANCE:1", delay=1.0))
    client = HeroSmsClient(env.base_url, API_KEY, timeout=0.2)
    try:
        with pytest.raises(ProviderUnavailable) as info:
            await client.balance_usd()
    finally:
        await client.close()
    assert info.value.code == "TIMEOUT" and info.value.transient


# ------------------------------------------------------------------------------ cancel semantics


async def test_cancel_smsactivate_no_activation_on_cancelled(env: Env) -> None:
    env.upstream.on("setStatus", "NO_ACTIVATION")
    env.upstream.on("getStatus", "STATUS_CANCEL")
    with pytest.raises(ActivationNotActive):
        await env.client.cancel("7")


async def test_cancel_smsactivate_bad_status_after_code(env: Env) -> None:
    env.upstream.on("setStatus", "BAD_STATUS")
    env.upstream.on("getStatus", "STATUS_OK:123456")
    with pytest.raises(CodeAlreadyReceived):
        await env.client.cancel("7")


async def test_cancel_unknown_id_stays_not_found(env: Env) -> None:
    env.upstream.on("setStatus", "NO_ACTIVATION")
    env.upstream.on("getStatus", "NO_ACTIVATION")
    with pytest.raises(NotFound):
        await env.client.cancel("7")


async def test_cancel_bad_status_while_waiting_stays_generic(env: Env) -> None:
    env.upstream.on("setStatus", "BAD_STATUS")
    env.upstream.on("getStatus", "STATUS_WAIT_CODE")
    with pytest.raises(ProviderError) as info:
        await env.client.cancel("7")
    assert type(info.value) is BadStatus and info.value.code == "BAD_STATUS"


async def test_cancel_already_variant(env: Env) -> None:
    env.upstream.on("setStatus", "ACCESS_CANCEL_ALREADY")
    with pytest.raises(ActivationNotActive):
        await env.client.cancel("7")


async def test_finish_on_cancelled_is_not_active(env: Env) -> None:
    env.upstream.on("setStatus", "NO_ACTIVATION")
    env.upstream.on("getStatus", "STATUS_CANCEL")
    with pytest.raises(ActivationNotActive):
        await env.client.finish("7")


async def test_finish_without_code_is_generic(env: Env) -> None:
    env.upstream.on("setStatus", hero("BAD_STATUS", 400))
    with pytest.raises(ProviderError) as info:
        await env.client.finish("7")
    assert info.value.code == "BAD_STATUS"
    assert env.upstream.calls("getStatus") == 0


async def test_cancel_herosms_specific_errors_need_no_lookup(env: Env) -> None:
    env.upstream.on("setStatus", hero("ACTIVATION_NOT_ACTIVE", 409))
    with pytest.raises(ActivationNotActive):
        await env.client.cancel("7")
    assert env.upstream.calls("getStatus") == 0


# ------------------------------------------------------------------------------ secrets


async def test_key_and_code_never_leak(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    env.upstream.on("getStatus", "STATUS_OK:918273")
    env.upstream.on("getStatusV2", js({"sms": {"code": "918273", "text": "code 918273"}}))
    env.upstream.on("getBalance", hero("BAD_KEY", 401))
    status = await env.client.poll("1")
    assert status.code == "918273"
    with pytest.raises(BadKey) as info:
        await env.client.balance_usd()
    assert API_KEY not in str(info.value) and API_KEY not in repr(env.client)
    assert API_KEY not in caplog.text
    assert "918273" not in caplog.text
    assert all(API_KEY not in q for q in env.upstream.query_strings)
    assert "getBalance" in caplog.text  # logging does happen, just without secrets
