"""Provider webhooks (rental and activation SMS): authenticated by a secret, at-least-once."""

from __future__ import annotations

import hmac
import logging
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from libs.common.adapters.sms import parse_provider_time
from libs.common.domain.messages import Message
from libs.common.domain.orders import Status
from libs.common.persistence.stores import PgStores
from libs.common.usecases.sms_arrival import Outcome, SmsArrival
from services.gateway.errors import ApiError, read_json
from services.gateway.keys import SETTINGS, STORES

log = logging.getLogger(__name__)


def _authentic(request: web.Request, secret: str) -> bool:
    """The shared secret, from the X-Webhook-Secret header or else the URL's token parameter."""
    # The header is preferred: a caller that sends it is judged by it, whatever the URL says.
    # HeroSMS cannot send headers of ours, so the URL we give it carries the token instead
    # (redacted from every log line: libs/common/core/logs.py).
    if "X-Webhook-Secret" in request.headers:
        given = request.headers["X-Webhook-Secret"]
    else:
        given = request.query.get("token", "")
    # aiohttp keeps undecodable header bytes as surrogates; encode them back, never crash.
    given_bytes = given.encode("utf-8", "surrogateescape")
    return bool(secret) and hmac.compare_digest(given_bytes, secret.encode())


def _text(value: Any, field: str, limit: int = 2000) -> str | None:
    """An optional string field of the webhook body, bounded."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) > limit:
        raise ApiError(400, "VALIDATION_ERROR", f"{field}: must be a string")
    return value  # stored cleaned (messages.storable): the provider retries a refused push


def _storable(value: str) -> bool:
    """Whether PostgreSQL can store the string (no NUL, no lone surrogate)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _provider_id(value: Any, field: str) -> str:
    """The rental or activation id, as the provider gives it (string or number)."""
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise ApiError(400, "VALIDATION_ERROR", f"{field}: must be an id")
    text = str(value).strip()
    if len(text) > 64 or not _storable(text):
        raise ApiError(400, "VALIDATION_ERROR", f"{field}: must be an id")
    return text


def _rental_message(body: dict[str, Any]) -> Message:
    """The SMS a rental push carries."""
    sms = body.get("sms")
    if not isinstance(sms, dict):
        raise ApiError(400, "VALIDATION_ERROR", "sms: must be an object")
    # No usable date (absent, garbage, out of range in UTC): when we saw it, kept out
    # of the de-duplication key so a retried push is stored once.
    sent_at = parse_provider_time(_text(sms.get("date"), "sms.date"))
    return Message(
        received_at=sent_at or datetime.now(UTC),
        text=_text(sms.get("text"), "sms.text"),
        phone_from=_text(sms.get("phoneFrom"), "sms.phoneFrom", 64),
        dated=sent_at is not None,
    )


async def _record_rental_sms(stores: PgStores, rent_id: str, msg: Message) -> bool:
    """Store the SMS of an active rental; False when the rental is not ours or is over."""
    order = await stores.orders.by_rent_id(rent_id)
    if order is None or order.status is not Status.RENT_ACTIVE:
        return False
    if await stores.messages.record(order.id, msg):
        log.info("rental SMS received by webhook", extra={"order_id": order.id})
    return True


def _code(value: Any) -> str | None:
    """The activation push's code: digits as a string or a number; absent or empty: None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) > 32 or not _storable(value):
        raise ApiError(400, "VALIDATION_ERROR", "code: must be a short string")
    return value.strip() or None


def _activation_sms(body: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(activation id, code, text) of an activation push, every field's type checked.

    The provider's body: activationId, service, text, code, country, receivedAt.
    """
    activation_id = _provider_id(body["activationId"], "activationId")
    code = _code(body.get("code"))
    text = _text(body.get("text"), "text")
    # The order knows its own service and country, and the code's time is when we record it:
    # these fields are only checked, so a malformed push is refused whole.
    _text(body.get("service"), "service", 64)
    _text(body.get("country"), "country", 64)
    _text(body.get("receivedAt"), "receivedAt", 64)
    return activation_id, code, text


async def _record_activation_sms(request: web.Request, body: dict[str, Any]) -> bool:
    """Hand an activation push to the SMS arrival use case; whether the activation is ours."""
    activation_id, code, text = _activation_sms(body)
    arrival = SmsArrival(request.app[STORES], request.app[SETTINGS])
    if code is None:
        # No code to record (a push without one): the pollers ask the provider now instead.
        return await arrival.look_now(activation_id)
    outcome = await arrival.for_activation(activation_id, code, text, source="webhook")
    return outcome is not Outcome.UNKNOWN


async def rent_sms(request: web.Request) -> web.Response:
    """POST /v2/l402/webhooks/rent (and /sms): an incoming SMS pushed by the provider.

    A rental SMS is stored once per message; an activation SMS goes to the SMS arrival use
    case, which records it exactly once whether this push or a poll sees it first. Every
    replay answers 200 and changes nothing; `matched` says whether the id is ours.
    """
    if not _authentic(request, request.app[SETTINGS].webhook_secret):
        raise ApiError(401, "UNAUTHORIZED", "missing or wrong webhook secret")
    body = await read_json(request)
    if not isinstance(body, dict) or not ("rentId" in body or "activationId" in body):
        raise ApiError(400, "VALIDATION_ERROR", "body: needs rentId or activationId")
    stores = request.app[STORES]
    if "rentId" in body:
        rent_id = _provider_id(body["rentId"], "rentId")
        msg = _rental_message(body)
        # Not ours, or over: acknowledged all the same, so the provider stops retrying.
        matched = await _record_rental_sms(stores, rent_id, msg)
        return web.json_response({"status": "ok", "matched": matched})
    matched = await _record_activation_sms(request, body)
    return web.json_response({"status": "ok", "matched": matched})
