"""Unit tests of adapters.sms against recorded provider replies served by a local test server."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from libs.common.adapters.sms import (
    Activation,
    ActivationNotActive,
    ActivationStatus,
    BadAction,
    BadKey,
    BadRentTime,
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
    Rental,
    RentCatalog,
    RentEnded,
    RentMessage,
    RentOffer,
    Service,
    SmsProvider,
    TextReply,
    TooEarlyToCancel,
    ban_wait_seconds,
    metric_code,
    parse_activation,
    parse_countries,
    parse_provider_time,
    parse_rent_messages,
    parse_rental,
    parse_reply,
    parse_status_v2,
)
from libs.common.adapters.sms.limiter import ProviderLimiter, rate_limited
from libs.common.core.config import Settings
from libs.common.core.metrics import PROVIDER_ERRORS

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
        # HeroSMS has no ban action: a bad number is given back by cancelling it.
        ("report_bad", "8", "ACCESS_CANCEL"),
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


# ------------------------------------------------------------------------- recorded bodies

DATA = Path(__file__).parent / "data" / "provider"


def recorded(name: str, status: int = 200) -> Canned:
    """A reply body recorded from a provider, stored under tests/unit/data/provider."""
    suffix = name.rsplit(".", 1)[-1]
    content_type = {"json": "application/json", "html": "text/html"}.get(suffix, "text/plain")
    return Canned((DATA / name).read_text(), status, content_type=content_type)


# ---------------------------------------------------------------------------------- rentals


async def test_rent_offers_coerces_and_skips_malformed(env: Env) -> None:
    env.upstream.on("getRentServicesAndCountries", recorded("getRentServicesAndCountries.json"))
    catalog = await env.client.rent_offers(24, country=187)
    assert env.upstream.requests[0]["rent_time"] == "24"
    assert env.upstream.requests[0]["country"] == "187"
    assert catalog == RentCatalog(
        countries=[0, 16, 43, 187],
        offers=[
            RentOffer(187, "full", 24, Decimal("42.93"), 20),
            RentOffer(187, "tg", 24, Decimal("1.5"), 20),
            RentOffer(187, "wa", 24, Decimal("2.25"), 0),
        ],
    )


async def test_rent_offers_without_country_are_the_first_country(env: Env) -> None:
    env.upstream.on("getRentServicesAndCountries", recorded("getRentServicesAndCountries.json"))
    catalog = await env.client.rent_offers(4)
    assert "country" not in env.upstream.requests[0]
    assert {o.country for o in catalog.offers} == {0}
    assert {o.hours for o in catalog.offers} == {4}


@pytest.mark.parametrize(
    "reply",
    [
        recorded("rent_bad_time_herosms.json", 400),
        js({"status": "error", "message": "BAD_TIME"}),
        Canned("INVALID_TIME"),
    ],
    ids=["herosms", "json", "text"],
)
async def test_rent_offers_bad_time(env: Env, reply: Canned) -> None:
    env.upstream.on("getRentServicesAndCountries", reply)
    with pytest.raises(BadRentTime) as info:
        await env.client.rent_offers(5)
    assert not info.value.transient


async def test_rent_hours_must_be_positive_without_asking(env: Env) -> None:
    with pytest.raises(BadRentTime):
        await env.client.rent_offers(0)
    with pytest.raises(BadRentTime):
        await env.client.rent(service="tg", country=187, hours=-1)
    assert env.upstream.requests == []


async def test_rent_number(env: Env) -> None:
    env.upstream.on("getRentNumber", recorded("getRentNumber.json"))
    rental = await env.client.rent(
        service="tg", country=187, hours=4, webhook_url="https://example.test/hook?t=1"
    )
    assert rental == Rental(
        rent_id="7200000123",
        phone="14155550134",
        ends_at=datetime(2026, 11, 23, 10, 15, tzinfo=UTC),
    )
    sent = env.upstream.requests[0]
    assert (sent["service"], sent["country"], sent["rent_time"]) == ("tg", "187", "4")
    assert sent["url"] == "https://example.test/hook?t=1"


async def test_rent_number_without_webhook_sends_no_url(env: Env) -> None:
    env.upstream.on("getRentNumber", recorded("getRentNumber.json"))
    await env.client.rent(service="tg", country=187, hours=4)
    assert "url" not in env.upstream.requests[0]


@pytest.mark.parametrize(
    ("reply", "exc_type"),
    [
        (js({"status": "error", "message": "NO_NUMBERS"}), NoNumbers),
        (Canned("NO_NUMBERS"), NoNumbers),
        (hero("NO_BALANCE", 402), InsufficientBalance),
        (js({"status": "success", "phone": {"id": 1, "number": "1"}}), ProviderUnavailable),
    ],
    ids=["json", "text", "herosms", "no-end-date"],
)
async def test_rent_number_errors(env: Env, reply: Canned, exc_type: type[ProviderError]) -> None:
    env.upstream.on("getRentNumber", reply)
    with pytest.raises(exc_type):
        await env.client.rent(service="tg", country=187, hours=4)


async def test_rent_messages_oldest_first(env: Env) -> None:
    env.upstream.on("getRentStatus", recorded("getRentStatus_two.json"))
    messages = await env.client.rent_messages("7200000123")
    assert env.upstream.requests[0]["id"] == "7200000123"
    assert messages == [
        RentMessage(
            phone_from="+447700900123",
            text="Your code is 4410",
            received_at=datetime(2026, 11, 22, 10, 19, 55, tzinfo=UTC),
            service=None,
        ),
        RentMessage(
            phone_from="Telegram",
            text="Telegram code 77812",
            received_at=datetime(2026, 11, 22, 10, 21, 7, tzinfo=UTC),
            service="tg",
        ),
    ]


@pytest.mark.parametrize(
    "reply",
    [
        recorded("getRentStatus_wait.json"),
        Canned("STATUS_WAIT_CODE"),
        hero("STATUS_WAIT_CODE", 400),
    ],
    ids=["json", "text", "herosms"],
)
async def test_rent_messages_none_yet(env: Env, reply: Canned) -> None:
    env.upstream.on("getRentStatus", reply)
    assert await env.client.rent_messages("1") == []


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (recorded("getRentStatus_finish.json"), "STATUS_FINISH"),
        (Canned("STATUS_FINISH"), "STATUS_FINISH"),
        (Canned("STATUS_CANCEL"), "STATUS_CANCEL"),
        (js({"status": "error", "message": "STATUS_CANCEL"}), "STATUS_CANCEL"),
    ],
)
async def test_rent_messages_after_the_end(env: Env, reply: Canned, code: str) -> None:
    env.upstream.on("getRentStatus", reply)
    with pytest.raises(RentEnded) as info:
        await env.client.rent_messages("1")
    assert info.value.code == code and not info.value.transient


@pytest.mark.parametrize(("method", "status"), [("finish_rent", "1"), ("cancel_rent", "2")])
async def test_set_rent_status(env: Env, method: str, status: str) -> None:
    env.upstream.on("setRentStatus", recorded("setRentStatus_success.json"))
    await getattr(env.client, method)("55")
    assert env.upstream.requests[0]["id"] == "55"
    assert env.upstream.requests[0]["status"] == status


async def test_finish_rent_already_over(env: Env) -> None:
    env.upstream.on("setRentStatus", recorded("setRentStatus_already_finish.json"))
    with pytest.raises(RentEnded) as info:
        await env.client.finish_rent("55")
    assert info.value.code == "ALREADY_FINISH"


async def test_set_rent_status_unexpected(env: Env) -> None:
    env.upstream.on("setRentStatus", js({"status": "maybe"}))
    with pytest.raises(ProviderUnavailable):
        await env.client.cancel_rent("55")


# ----------------------------------------------------------------------------- reactivation


async def test_reactivate(env: Env) -> None:
    env.upstream.on("reactivate", recorded("reactivate.json"))
    act = await env.client.reactivate("3100000100")
    assert env.upstream.requests[0]["id"] == "3100000100"
    assert act == Activation(
        id="3100000457",
        phone="14155550134",
        cost_usd=Decimal("0.21"),
        country_id=187,
        ends_at=datetime(2026, 11, 22, 10, 20, tzinfo=UTC),
    )


async def test_reactivate_refused(env: Env) -> None:
    env.upstream.on("reactivate", recorded("reactivate_not_available.json", 409))
    with pytest.raises(ReactivationNotAvailable) as info:
        await env.client.reactivate("3100000100")
    assert not info.value.transient


# ---------------------------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (recorded("nginx_502.html", 200), "GARBAGE_REPLY"),
        (recorded("nginx_502.html", 502), "HTTP_502"),
        (recorded("cloudflare_403.html", 403), "HTTP_403"),
        (recorded("getNumberV2_truncated.json"), "BAD_JSON"),
        (Canned(""), "EMPTY_REPLY"),
        (Canned("   \n"), "EMPTY_REPLY"),
        (js([1, 2, 3]), "BAD_REPLY"),
        (js({"activationId": "1"}), "BAD_REPLY"),
    ],
)
async def test_garbage_is_transient(env: Env, reply: Canned, code: str) -> None:
    env.upstream.on("getNumberV2", reply)
    with pytest.raises(ProviderUnavailable) as info:
        await env.client.buy(service="tg", country_id=187)
    assert info.value.code == code and info.value.transient


# --------------------------------------------------------------------- every reference code

# Each code of the reference (§1, §2) with its class and whether retrying may help.
REFERENCE_CODES: list[tuple[str, type[ProviderError], bool]] = [
    ("NO_NUMBERS", NoNumbers, False),
    ("NO_BALANCE", InsufficientBalance, False),
    ("BAD_KEY", BadKey, False),
    ("NO_KEY", BadKey, False),
    ("BAD_ACTION", BadAction, False),
    ("BAD_SERVICE", BadService, False),
    ("BAD_STATUS", BadStatus, False),
    ("NO_ACTIVATION", NotFound, False),
    ("WRONG_ACTIVATION_ID", NotFound, False),
    ("EARLY_CANCEL_DENIED", TooEarlyToCancel, True),
    ("WRONG_MAX_PRICE:0.35", PriceTooLow, False),
    ("BANNED:2099-01-01 00:00:00", Banned, True),
    ("CHANNELS_LIMIT", Banned, True),
    ("ACCOUNT_INACTIVE", Banned, False),
    ("ERROR_SQL", ProviderUnavailable, True),
    ("ORDER_ALREADY_EXISTS", OrderAlreadyExists, False),
    ("RENEW_ACTIVATION_NOT_AVAILABLE", ReactivationNotAvailable, False),
    ("SERVICE_NOT_AVAILABLE", BadService, False),
    ("OTP_RECEIVED", CodeAlreadyReceived, False),
    ("ACTIVATION_NOT_ACTIVE", ActivationNotActive, False),
    ("NOT_FOUND", NotFound, False),
]


@pytest.mark.parametrize(("raw", "exc_type", "transient"), REFERENCE_CODES)
@pytest.mark.parametrize("style", ["text", "herosms"])
def test_every_reference_code(
    raw: str, exc_type: type[ProviderError], transient: bool, style: str
) -> None:
    code, _, value = raw.partition(":")
    if style == "text":
        status, body = 200, raw
    else:
        info: dict[str, Any] = {"min": value} if code == "WRONG_MAX_PRICE" else {}
        if code == "BANNED":
            info = {"endDate": value}
        status, body = 403, json.dumps({"title": code, "details": "d", "info": info})
    with pytest.raises(ProviderError) as caught:
        parse_reply(status, body)
    err = caught.value
    assert type(err) is exc_type
    assert err.code == code
    assert err.transient is transient
    assert metric_code(err.code) == code  # a known code is its own metric label


def test_unknown_codes_share_one_metric_label() -> None:
    assert metric_code("SOMETHING_NEW_42") == "OTHER"
    assert metric_code("HTTP_503") == "HTTP_503"
    assert metric_code("HTTP_5030") == "OTHER"


def _errors_counted(code: str) -> float:
    PROVIDER_ERRORS.labels(code)  # make the sample exist before the first error
    value = REGISTRY.get_sample_value("sms4sats_provider_errors_total", {"code": code})
    assert value is not None
    return value


async def test_errors_are_counted_once(env: Env) -> None:
    before = _errors_counted("NO_NUMBERS")
    env.upstream.on("getNumberV2", "NO_NUMBERS")
    with pytest.raises(NoNumbers):
        await env.client.buy(service="tg", country_id=187)
    assert _errors_counted("NO_NUMBERS") == before + 1


async def test_refined_cancel_error_is_counted_once(env: Env) -> None:
    before = _errors_counted("NO_ACTIVATION")
    env.upstream.on("setStatus", "NO_ACTIVATION")
    env.upstream.on("getStatus", "STATUS_CANCEL")
    with pytest.raises(ActivationNotActive):
        await env.client.report_bad("7")
    assert _errors_counted("NO_ACTIVATION") == before + 1


async def test_network_errors_are_counted() -> None:
    before = _errors_counted("NETWORK_ERROR")
    client = HeroSmsClient("http://127.0.0.1:9", API_KEY, timeout=2.0)
    try:
        with pytest.raises(ProviderUnavailable):
            await client.balance_usd()
    finally:
        await client.close()
    assert _errors_counted("NETWORK_ERROR") == before + 1


# ------------------------------------------------------------------- rate limits and bans


class FakeClock:
    """Monotonic time that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        """Start at 1000 s."""
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        """Current time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Advance instead of waiting."""
        self.sleeps.append(seconds)
        self.now += seconds


async def test_limiter_paces_after_the_burst() -> None:
    clock = FakeClock()
    limiter = ProviderLimiter(40, clock=clock, sleep=clock.sleep)
    for _ in range(4):  # the burst: a tenth of a second's worth
        await limiter.acquire(urgent=True)
    assert clock.sleeps == []
    for _ in range(40):
        await limiter.acquire(urgent=True)
    # 40 more calls need 40 new tokens: one second at 40/s, never a burst over 50 in a second.
    assert sum(clock.sleeps) == pytest.approx(1.0)


async def test_limiter_pause_holds_every_call() -> None:
    clock = FakeClock()
    limiter = ProviderLimiter(0, clock=clock, sleep=clock.sleep)
    await limiter.pause(5, rate_limited)
    await limiter.acquire(urgent=True)
    assert clock.sleeps == [5]


async def test_limiter_refuses_a_pause_longer_than_max_wait() -> None:
    clock = FakeClock()
    limiter = ProviderLimiter(40, max_wait=30, clock=clock, sleep=clock.sleep)
    await limiter.pause(120, lambda left: Banned("BANNED", retry_after=left, transient=True))
    with pytest.raises(Banned) as info:
        await limiter.acquire(urgent=True)
    assert info.value.retry_after == 120 and info.value.transient
    assert clock.sleeps == []
    clock.now += 91  # 29 s left: now it is worth waiting
    await limiter.acquire(urgent=True)
    assert clock.sleeps == [pytest.approx(29)]


async def test_429_with_short_retry_after_is_retried(env: Env) -> None:
    env.upstream.on(
        "getBalance",
        recorded("too_many_requests_herosms.json", 429),
        "ACCESS_BALANCE:3.50",
    )
    env.upstream.replies["getBalance"][0].headers["Retry-After"] = "0.05"
    client = HeroSmsClient(env.base_url, API_KEY)
    try:
        assert await client.balance_usd() == Decimal("3.50")
    finally:
        await client.close()
    assert env.upstream.calls("getBalance") == 2


async def test_429_retry_after_from_the_body(env: Env) -> None:
    env.upstream.on("getBalance", recorded("too_many_requests_herosms.json", 429))
    with pytest.raises(RateLimited) as info:
        await env.client.balance_usd()
    assert info.value.retry_after == 10


async def test_long_retry_after_stops_every_call_without_asking(env: Env) -> None:
    too_many = recorded("too_many_requests_herosms.json", 429)
    too_many.headers["Retry-After"] = "120"
    env.upstream.on("getBalance", too_many)
    client = HeroSmsClient(env.base_url, API_KEY)
    try:
        with pytest.raises(RateLimited) as first:
            await client.balance_usd()
        assert first.value.retry_after == 120 and first.value.transient
        with pytest.raises(RateLimited) as second:
            await client.countries()
        assert second.value.retry_after is not None and second.value.retry_after > 100
    finally:
        await client.close()
    assert len(env.upstream.requests) == 1  # the paused call never reached the provider


async def test_banned_until_soon_is_waited_out(env: Env) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
    env.upstream.on("getPrices", f"BANNED:{soon}", js({"187": {"tg": {"cost": 0.1, "count": 1}}}))
    client = HeroSmsClient(env.base_url, API_KEY)
    try:
        assert len(await client.prices()) == 1
    finally:
        await client.close()


async def test_long_ban_is_raised_and_pauses_the_client(env: Env) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
    env.upstream.on("getNumberV2", f"BANNED:{later}")
    client = HeroSmsClient(env.base_url, API_KEY)
    try:
        with pytest.raises(Banned) as info:
            await client.buy(service="tg", country_id=187)
        assert info.value.until == later and info.value.transient
        assert info.value.retry_after is not None and 3500 < info.value.retry_after <= 3600
        with pytest.raises(Banned):
            await client.balance_usd()
    finally:
        await client.close()
    assert len(env.upstream.requests) == 1


async def test_account_inactive_is_not_a_pause(env: Env) -> None:
    env.upstream.on("getNumberV2", "ACCOUNT_INACTIVE")
    env.upstream.on("getBalance", "ACCESS_BALANCE:1")
    with pytest.raises(Banned) as info:
        await env.client.buy(service="tg", country_id=187)
    assert not info.value.transient
    assert await env.client.balance_usd() == Decimal("1")


@pytest.mark.parametrize(
    ("until", "expected"),
    [
        ("2026-11-22 10:00:30", 30.0),
        ("2026-11-22T10:01:00+00:00", 60.0),
        ("45", 45.0),
        (str(int(datetime(2026, 11, 22, 10, 2, tzinfo=UTC).timestamp())), 120.0),
        ("2026-11-22 09:00:00", 0.0),
        ("soon", None),
        (None, None),
    ],
)
def test_ban_wait_seconds(until: str | None, expected: float | None) -> None:
    now = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert ban_wait_seconds(until, now) == expected


def test_client_from_settings() -> None:
    settings = Settings(
        provider_url="http://sms.test", provider_rate_per_second=7.5, provider_timeout_seconds=3
    )
    client = HeroSmsClient.from_settings(settings)
    assert isinstance(client.budget, ProviderLimiter) and client.budget.rate == 7.5
    assert repr(client) == "HeroSmsClient('http://sms.test/stubs/handler_api.php')"


EDGE_TIMES = [
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
    "9999-12-31T23:59:59-01:00",  # past year 9999 in UTC
    "0001-01-01T00:00:00+23:59",  # the largest offset ISO 8601 allows
    "9999-12-31T23:59:59.999999-23:59",
    "0001-01-01 00:30:00",  # naive, read in a zone east of UTC (below)
    "9999-12-31T23:59:59.999999+00:00",  # in range, but its epoch float rounds past 9999
    "0001-01-01T01:00:00+01:00",  # exactly the first instant: any zone applied overflows
]


@pytest.mark.parametrize("value", EDGE_TIMES)
def test_a_time_out_of_range_in_utc_is_unusable(value: str) -> None:
    moscow = timezone(timedelta(hours=3))
    assert parse_provider_time(value, moscow) is None


@pytest.mark.parametrize(
    "value",
    ["0001-01-01T00:00:00+24:00", "2026-05-08T10:20:00+99:99", "2026-05-08T10:20:00+1000000:00"],
)
def test_a_huge_offset_is_unusable(value: str) -> None:
    assert parse_provider_time(value) is None


def test_times_a_year_from_the_ends_are_kept_in_utc() -> None:
    assert parse_provider_time("0002-01-01T01:00:00+01:00") == datetime(2, 1, 1, tzinfo=UTC)
    assert parse_provider_time("9998-12-31T22:59:59-01:00") == datetime(
        9998, 12, 31, 23, 59, 59, tzinfo=UTC
    )
    # Whatever zone it came in, the result is in UTC (callers compare and store it).
    parsed = parse_provider_time("2026-05-08T10:20:00+03:00")
    assert parsed is not None and parsed.tzinfo is UTC


@pytest.mark.parametrize("value", EDGE_TIMES[:3])
def test_edge_times_elsewhere_in_the_provider_replies(value: str) -> None:
    now = datetime(2026, 5, 8, tzinfo=UTC)
    # A ban whose end cannot be read is not a pause we can time.
    assert ban_wait_seconds(value, now) is None
    # A rental SMS with such a date is left out, never an overflow while sorting or storing.
    messages = parse_rent_messages(
        {"values": [{"text": "a", "date": value}, {"text": "b", "date": "2026-05-08 10:00:00"}]}
    )
    assert [m.text for m in messages] == ["b"]
    with pytest.raises(ProviderUnavailable):
        parse_rental({"phone": {"id": "1", "number": "+1 555", "endDate": value}})
    activation = parse_activation(
        {
            "activationId": "7",
            "phoneNumber": "1555",
            "activationCost": "0.5",
            "activationEndTime": value,
        },
        fallback_country=187,
    )
    assert activation.ends_at is None
