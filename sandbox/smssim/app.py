"""aiohttp application of the SMS provider simulator: handler_api protocol plus /sim control API."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from sandbox.smssim.catalog import COUNTRIES, COUNTRIES_BY_ID, SERVICES, SERVICES_BY_CODE
from sandbox.smssim.state import (
    CANCEL,
    ERROR_STYLES,
    FAULT_MODES,
    FINISHED,
    OK,
    WAIT_CODE,
    WAIT_RETRY,
    WAITING_STATES,
    Fault,
    SimActivation,
    SimError,
    SimRental,
    SimState,
    err_bad_action,
    err_no_balance,
    fmt_time,
)
from sandbox.smssim.webhooks import WebhookPusher

log = logging.getLogger("sandbox.smssim")

HANDLER_PATH = "/stubs/handler_api.php"
USD_CURRENCY = 840


class AutoSms:
    """Schedules automatic SMS delivery for waiting activations (one loop timer each)."""

    def __init__(self, state: SimState, pusher: WebhookPusher) -> None:
        """Bind to the simulator state and the webhook pusher for rental and activation SMS."""
        self.state = state
        self.pusher = pusher
        self._handles: dict[int, asyncio.TimerHandle] = {}
        self._rent_handles: dict[int, asyncio.TimerHandle] = {}

    def schedule_rent(self, rental: SimRental) -> None:
        """One SMS for a new rental after the configured delay (if auto mode is on)."""
        delay = self.state.settings.auto_sms_delay
        if delay is None:
            return
        loop = asyncio.get_running_loop()
        self._rent_handles[rental.id] = loop.call_later(max(delay, 0.0), self._fire_rent, rental.id)

    def _fire_rent(self, rent_id: int) -> None:
        self._rent_handles.pop(rent_id, None)
        rental = self.state.rentals.get(rent_id)
        if rental is None:
            return
        try:
            sms = self.state.deliver_rent_sms(rental)
        except SimError:
            return  # ended meanwhile
        self.pusher.push(rental, sms)
        log.info("auto SMS delivered to rental %s", rent_id)

    def schedule(self, activation: SimActivation, *, new: bool = True) -> None:
        """Deliver an SMS to the activation after delay + uniform(0, spread) (if auto mode is on).

        A new activation gets one only with probability `share`; another SMS asked for on an
        activation that had one (setStatus 3) always comes.
        """
        settings = self.state.settings
        delay = settings.auto_sms_delay
        if delay is None:
            return
        self.cancel(activation.id)
        rng = self.state.rng
        if new and settings.auto_sms_share < 1.0 and rng.random() >= settings.auto_sms_share:
            return
        if settings.auto_sms_spread > 0:
            delay += rng.uniform(0.0, settings.auto_sms_spread)
        loop = asyncio.get_running_loop()
        self._handles[activation.id] = loop.call_later(max(delay, 0.0), self._fire, activation.id)

    def _fire(self, activation_id: int) -> None:
        self._handles.pop(activation_id, None)
        activation = self.state.activations.get(activation_id)
        if activation is None:
            return
        self.state.refresh(activation)
        if activation.status in WAITING_STATES:
            sms = self.state.deliver_sms(activation)
            self.pusher.push_activation(activation, sms)
            log.debug("auto SMS delivered to activation %s", activation_id)

    def cancel(self, activation_id: int) -> None:
        """Drop a pending delivery."""
        handle = self._handles.pop(activation_id, None)
        if handle is not None:
            handle.cancel()

    def cancel_all(self) -> None:
        """Drop every pending delivery."""
        for handle in [*self._handles.values(), *self._rent_handles.values()]:
            handle.cancel()
        self._handles.clear()
        self._rent_handles.clear()

    def reschedule(self) -> None:
        """Re-plan deliveries for all waiting activations after a delay change."""
        self.cancel_all()
        for activation in self.state.active_page(0, None):
            if activation.status in WAITING_STATES:
                self.schedule(activation, new=not activation.sms)


STATE_KEY = web.AppKey("smssim_state", SimState)
AUTO_KEY = web.AppKey("smssim_auto", AutoSms)
PUSHER_KEY = web.AppKey("smssim_pusher", WebhookPusher)
RENT_ACTIONS = frozenset(
    {
        "getRentServicesAndCountries",
        "getRentNumber",
        "getRentStatus",
        "setRentStatus",
        "continueRentNumber",
    }
)
RATE_ACTION = "simple/price"

GARBAGE: dict[str, tuple[str, str]] = {
    "html": (
        "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>"
        "<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>",
        "text/html",
    ),
    "truncated": ('{"activationId": "3100000', "application/json"),
    "empty": ("", "text/plain"),
}


# --------------------------------------------------------------------------- rendering


def _text(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/plain")


def _render_error(state: SimState, err: SimError, action: str = "") -> web.Response:
    if state.settings.error_style == "smsactivate" and action in RENT_ACTIONS:
        # SMS-Activate's rent actions answer JSON even for errors.
        return web.json_response({"status": "error", "message": err.text})
    if state.settings.error_style == "smsactivate" or err.http_status == 200:
        return _text(err.text)
    return web.json_response(
        {"title": err.title, "details": err.details, "info": err.info}, status=err.http_status
    )


def _control_error(status: int, code: str, details: str) -> web.Response:
    return web.json_response({"error": code, "details": details}, status=status)


def _number_v2(state: SimState, act: SimActivation) -> dict[str, Any]:
    hero = state.settings.error_style == "herosms"
    # Field types deliberately differ per style (as they do between real providers).
    return {
        "activationId": str(act.id) if hero else act.id,
        "phoneNumber": act.phone,
        "activationCost": float(act.cost),
        "currency": USD_CURRENCY,
        "countryCode": act.country if hero else str(act.country),
        "canGetAnotherSms": True if hero else "1",
        "activationTime": fmt_time(act.created_at),
        "activationEndTime": fmt_time(act.ends_at),
        "activationOperator": act.operator,
    }


def _status_v1(act: SimActivation) -> str:
    last = act.last_sms
    if act.status == CANCEL:
        return "STATUS_CANCEL"
    if last is None:
        return "STATUS_WAIT_CODE"
    if act.status == WAIT_RETRY:
        return f"STATUS_WAIT_RETRY:{last.code}"
    return f"STATUS_OK:{last.code}"


def _status_v2(act: SimActivation) -> dict[str, Any]:
    last = act.last_sms
    sender = SERVICES_BY_CODE[act.service].sender if act.service in SERVICES_BY_CODE else ""
    return {
        "verificationType": 0,
        "sms": None
        if last is None
        else {"dateTime": fmt_time(last.at), "code": last.code, "text": last.text},
        "call": None,
        "data": None
        if last is None
        else {
            "id": str(act.id),
            "phoneFrom": sender,
            "code": last.code,
            "text": last.text,
            "service": act.service,
            "date": fmt_time(last.at),
        },
    }


# activationStatus numbers of public clients: 4 waiting for the SMS, 2 SMS received,
# 3 waiting for another SMS (after setStatus 3).
_ACTIVE_STATUS = {WAIT_CODE: "4", OK: "2", WAIT_RETRY: "3"}


def _active_row(state: SimState, act: SimActivation) -> dict[str, Any]:
    """One getActiveActivations row, typed as the configured provider types it."""
    hero = state.settings.error_style == "herosms"
    last = act.last_sms
    country = COUNTRIES_BY_ID.get(act.country)
    row: dict[str, Any] = {
        "activationId": str(act.id),
        "serviceCode": act.service,
        "phoneNumber": act.phone,
        "activationCost": float(act.cost),
        "activationStatus": _ACTIVE_STATUS.get(act.status, "4"),
        "activationTime": fmt_time(act.created_at),
        "discount": "0.00",
        "repeated": "0",
        "countryCode": str(act.country),
        "countryName": country.eng if country is not None else "",
        "canGetAnotherSms": "1",
        "currency": USD_CURRENCY,
    }
    if hero:
        # HeroSMS: the latest SMS as plain strings (null before one), plus its time and the end.
        row["smsCode"] = last.code if last is not None else None
        row["smsText"] = last.text if last is not None else None
        row["receiveSmsDate"] = fmt_time(last.at) if last is not None else None
        row["estDate"] = fmt_time(act.ends_at)
    else:
        # SMS-Activate: every code in a list, the texts as a list inside a string.
        row["smsCode"] = [s.code for s in act.sms] or None
        row["smsText"] = json.dumps([s.text for s in act.sms]) if act.sms else None
    return row


def _int_param(raw: str | None) -> int | None:
    """A non-negative integer parameter; None when absent or not one."""
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw.strip())


def _active_activations(state: SimState, params: dict[str, str]) -> web.Response:
    """getActiveActivations: HeroSMS {"status", "data": [...]}, SMS-Activate
    {"status", "activeActivations": [...]}, or NO_ACTIVATIONS (SMS-Activate, none at all)."""
    start = _int_param(params.get("start")) or 0
    page = state.active_page(start, _int_param(params.get("limit")))
    rows = [_active_row(state, act) for act in page]
    if state.settings.error_style == "herosms":
        return web.json_response({"status": "success", "data": rows})
    if not rows:
        return _text("NO_ACTIVATIONS")
    return web.json_response({"status": "success", "activeActivations": rows})


def _countries(state: SimState) -> dict[str, Any]:
    hero = state.settings.error_style == "herosms"

    def flag(value: bool) -> bool | int:
        return value if hero else int(value)

    return {
        str(c.id): {
            "id": c.id,
            "rus": c.rus,
            "eng": c.eng,
            "visible": flag(True),
            "retry": flag(c.retry),
            "rent": flag(c.rent),
            "multiService": flag(True),
        }
        for c in COUNTRIES
    }


# --------------------------------------------------------------------------- handler_api


async def _params(request: web.Request) -> dict[str, str]:
    params = {k: v for k, v in request.query.items()}
    if request.method == "POST" and request.can_read_body:
        if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        elif request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                params.update({str(k): str(v) for k, v in body.items() if v is not None})
    return params


def _rate_limited(state: SimState, seconds: float) -> web.Response:
    """The answer to a request of a blocked key, in the configured style."""
    wait = math.ceil(seconds)
    if state.settings.error_style == "smsactivate":
        # Whole seconds, rounded up: the block is surely over at the time named.
        return _text(f"BANNED:{fmt_time(math.ceil(state.clock() + seconds))}")
    return web.json_response(
        {
            "title": "TOO_MANY_REQUESTS",
            "details": "Too many requests, the API key is blocked for a while",
            "info": {"retryAfter": wait},
        },
        status=429,
        headers={"Retry-After": str(wait)},
    )


async def _apply_fault(state: SimState, action: str) -> web.Response | None:
    """Play the fault matching the action: an answer to send, or None to go on normally."""
    fault = state.take_fault(action)
    if fault is None:
        return None
    if fault.delay_seconds > 0:
        await asyncio.sleep(fault.delay_seconds)
    if fault.mode == "delay":
        return None
    if fault.mode == "no_balance":
        raise err_no_balance()
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = f"{fault.retry_after:g}"
    return web.Response(
        status=fault.status, text=fault.body, content_type=fault.content_type, headers=headers
    )


def _rent_phone(rental: SimRental) -> dict[str, Any]:
    return {"id": rental.id, "endDate": fmt_time(rental.ends_at), "number": rental.phone}


def _rent_status(state: SimState, rental: SimRental) -> web.Response:
    """getRentStatus: the messages, or STATUS_WAIT_CODE / STATUS_FINISH / STATUS_CANCEL."""
    if rental.status == WAIT_CODE and rental.sms:
        values = {
            str(i): {
                "phoneFrom": m.phone_from,
                "text": m.text,
                "service": m.service,
                "date": fmt_time(m.at),
            }
            for i, m in enumerate(rental.sms)  # in arrival order: dates have whole seconds
        }
        return web.json_response(
            {"status": "success", "quantity": str(len(values)), "values": values}
        )
    if rental.status == WAIT_CODE:
        code = "STATUS_WAIT_CODE"
    else:
        code = "STATUS_FINISH" if rental.status == FINISHED else "STATUS_CANCEL"
    if state.settings.error_style == "smsactivate":
        return _text(code)
    return web.json_response({"status": "error", "message": code})


async def _rent_action(
    request: web.Request, state: SimState, action: str, params: dict[str, str]
) -> web.Response:
    """The rent actions of handler_api."""
    if action == "getRentServicesAndCountries":
        return web.json_response(state.rent_catalog(params.get("rent_time"), params.get("country")))
    if action == "getRentNumber":
        rental = state.rent(
            params.get("service"), params.get("country"), params.get("rent_time"), params.get("url")
        )
        request.app[AUTO_KEY].schedule_rent(rental)
        return web.json_response({"status": "success", "phone": _rent_phone(rental)})
    rental = state.get_rental(params.get("id"))
    if action == "getRentStatus":
        return _rent_status(state, rental)
    if action == "setRentStatus":
        state.set_rent_status(rental, (params.get("status") or "").strip())
        return web.json_response({"status": "success"})
    state.continue_rent(rental, params.get("rent_time"))
    return web.json_response({"status": "success", "phone": _rent_phone(rental)})


async def handler_api(request: web.Request) -> web.Response:
    """The SMS-Activate compatible endpoint: dispatches on ?action=."""
    state = request.app[STATE_KEY]
    auto = request.app[AUTO_KEY]
    params = await _params(request)
    action = params.get("action", "")
    state.stats[action or "<none>"] += 1
    log.debug("handler_api action=%s", action)

    blocked = state.rate_check(params.get("api_key") or "")
    if blocked is not None:
        state.rate_limited += 1
        return _rate_limited(state, blocked)
    try:
        faulty = await _apply_fault(state, action)
        if faulty is not None:
            return faulty
        state.check_key(params.get("api_key"))
        if action == "getBalance":
            return _text(f"ACCESS_BALANCE:{state.balance:.2f}")
        if action in ("getNumber", "getNumberV2"):
            act = state.buy(params.get("service"), params.get("country"), params.get("maxPrice"))
            auto.schedule(act)
            if action == "getNumber":
                return _text(f"ACCESS_NUMBER:{act.id}:{act.phone}")
            return web.json_response(_number_v2(state, act))
        if action in ("reactivate", "getExtraActivation"):
            act = state.reactivate(params.get("activationId") or params.get("id"))
            auto.schedule(act)
            if action == "getExtraActivation":
                return _text(f"ACCESS_NUMBER:{act.id}:{act.phone}")
            return web.json_response(_number_v2(state, act))
        if action == "getActiveActivations":
            return _active_activations(state, params)
        if action == "getStatus":
            return _text(_status_v1(state.get(params.get("id"))))
        if action == "getStatusV2":
            act = state.get(params.get("id"))
            if act.status == CANCEL:
                return _text("STATUS_CANCEL")
            return web.json_response(_status_v2(act))
        if action == "setStatus":
            act = state.get(params.get("id"))
            reply = state.set_status(act, (params.get("status") or "").strip())
            if reply == "ACCESS_RETRY_GET":
                auto.schedule(act, new=False)
            elif reply in ("ACCESS_CANCEL", "ACCESS_ACTIVATION"):
                auto.cancel(act.id)
            return _text(reply)
        if action == "getPrices":
            return web.json_response(state.prices(params.get("service"), params.get("country")))
        if action == "getCountries":
            return web.json_response(_countries(state))
        if action == "getServicesList":
            services = [{"code": s.code, "name": s.name} for s in SERVICES]
            return web.json_response({"status": "success", "services": services})
        if action in RENT_ACTIONS:
            return await _rent_action(request, state, action, params)
        raise err_bad_action()
    except SimError as err:
        return _render_error(state, err, action)


async def simple_price(request: web.Request) -> web.Response:
    """GET /api/v3/simple/price?ids=bitcoin&vs_currencies=usd: CoinGecko's shape."""
    state = request.app[STATE_KEY]
    state.stats[RATE_ACTION] += 1
    try:
        faulty = await _apply_fault(state, RATE_ACTION)
    except SimError:
        faulty = None  # no_balance means nothing for a price feed
    if faulty is not None:
        return faulty
    ids = {i.strip().lower() for i in request.query.get("ids", "").split(",") if i.strip()}
    currencies = {
        c.strip().lower() for c in request.query.get("vs_currencies", "").split(",") if c.strip()
    }
    if not ids or not currencies:
        return web.json_response({"error": "Missing parameter ids or vs_currencies"}, status=400)
    body: dict[str, Any] = {}
    if "bitcoin" in ids:
        price: dict[str, Any] = {}
        if "usd" in currencies:
            rate = state.settings.btc_usd
            price["usd"] = int(rate) if rate == rate.to_integral_value() else float(rate)
        if request.query.get("include_last_updated_at", "").lower() == "true":
            price["last_updated_at"] = int(state.rate_updated_at)
        body["bitcoin"] = price
    return web.json_response(body)


# --------------------------------------------------------------------------- control API


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "BAD_JSON", "details": "body must be a JSON object"}),
            content_type="application/json",
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "BAD_JSON", "details": "body must be a JSON object"}),
            content_type="application/json",
        )
    return body


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        return None
    return result if result.is_finite() and result >= 0 else None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value >= 0 else None


async def sim_stock(request: web.Request) -> web.Response:
    """POST /sim/stock {"country", "service", "count"?, "cost"?}."""
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    country, service = body.get("country"), body.get("service")
    try:
        country_id = int(country) if isinstance(country, int | str) else -1
    except ValueError:
        country_id = -1
    if country_id not in COUNTRIES_BY_ID or service not in SERVICES_BY_CODE:
        return _control_error(404, "UNKNOWN_PAIR", "unknown country or service")
    pair = state.stock[(country_id, str(service))]
    if "count" in body:
        count = body["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            return _control_error(400, "BAD_COUNT", "count must be a non-negative integer")
        pair.count = count
    if "cost" in body:
        cost = _decimal(body["cost"])
        if cost is None:
            return _control_error(400, "BAD_COST", "cost must be a non-negative number")
        pair.cost = cost
    return web.json_response(
        {"country": country_id, "service": service, "count": pair.count, "cost": float(pair.cost)}
    )


def _auto_sms_json(state: SimState) -> dict[str, Any]:
    s = state.settings
    return {
        "delaySeconds": s.auto_sms_delay,
        "spreadSeconds": s.auto_sms_spread,
        "share": s.auto_sms_share,
    }


def _share(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value <= 1 else None


async def sim_auto_sms(request: web.Request) -> web.Response:
    """POST /sim/auto-sms {"delaySeconds": 3 | null, "spreadSeconds"?: 0, "share"?: 1}.

    Each new activation gets its SMS after delaySeconds + uniform(0, spreadSeconds), with
    probability `share`; omitted keys keep their value. Nothing changes unless all are valid.
    """
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    if "delaySeconds" not in body:
        return _control_error(400, "BAD_DELAY", "delaySeconds is required (number or null)")
    raw = body["delaySeconds"]
    delay = None if raw is None else _seconds(raw)
    if raw is not None and delay is None:
        return _control_error(400, "BAD_DELAY", "delaySeconds must be >= 0 or null")
    spread = _seconds(body.get("spreadSeconds", state.settings.auto_sms_spread))
    if spread is None:
        return _control_error(400, "BAD_SPREAD", "spreadSeconds must be a number >= 0")
    share = _share(body.get("share", state.settings.auto_sms_share))
    if share is None:
        return _control_error(400, "BAD_SHARE", "share must be a number between 0 and 1")
    state.settings.auto_sms_delay = delay
    state.settings.auto_sms_spread = spread
    state.settings.auto_sms_share = share
    request.app[AUTO_KEY].reschedule()
    return web.json_response(_auto_sms_json(state))


async def sim_deliver_sms(request: web.Request) -> web.Response:
    """POST /sim/activations/{id}/sms {"text"?, "code"?}: deliver an SMS now."""
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    text, code = body.get("text"), body.get("code")
    if (text is not None and not isinstance(text, str)) or (
        code is not None and not isinstance(code, str | int)
    ):
        return _control_error(400, "BAD_SMS", "text and code must be strings")
    try:
        act = state.get(request.match_info["activation_id"])
        request.app[AUTO_KEY].cancel(act.id)
        sms = state.deliver_sms(act, text=text, code=None if code is None else str(code))
    except SimError as err:
        status = 409 if err.title == "ACTIVATION_NOT_ACTIVE" else 404
        return _control_error(status, err.title, err.details)
    request.app[PUSHER_KEY].push_activation(act, sms)
    return web.json_response(act.to_json())


async def sim_list_activations(request: web.Request) -> web.Response:
    """GET /sim/activations."""
    state = request.app[STATE_KEY]
    state.refresh_all()
    return web.json_response([a.to_json() for a in sorted(state.activations.values(), key=_id)])


def _id(act: SimActivation) -> int:
    return act.id


async def sim_get_activation(request: web.Request) -> web.Response:
    """GET /sim/activations/{id}."""
    state = request.app[STATE_KEY]
    try:
        act = state.get(request.match_info["activation_id"])
    except SimError as err:
        return _control_error(404, err.title, err.details)
    return web.json_response(act.to_json())


def _config_json(state: SimState) -> dict[str, Any]:
    s = state.settings
    return {
        "errorStyle": s.error_style,
        "earlyCancelSeconds": s.early_cancel_seconds,
        "autoSmsDelaySeconds": s.auto_sms_delay,
        "autoSmsSpreadSeconds": s.auto_sms_spread,
        "autoSmsShare": s.auto_sms_share,
        "activationLifetimeSeconds": s.lifetime_seconds,
        "bannedUntil": s.banned_until,
        "balance": float(state.balance),
        "rentHours": list(s.rent_hours),
        "rentCancelSeconds": s.rent_cancel_seconds,
        "webhookUrl": s.webhook_url,
        "webhookSecretSet": bool(s.webhook_secret),
        "webhookTries": s.webhook_tries,
        "webhookRetrySeconds": s.webhook_retry_seconds,
        "webhookTimeoutSeconds": s.webhook_timeout_seconds,
        "rateLimitPerSecond": s.rate_limit_per_second,
        "rateBlockSeconds": s.rate_block_seconds,
        "activeActivationsPageLimit": s.active_page_limit,
        "btcUsd": float(s.btc_usd),
    }


def _apply_config(state: SimState, body: dict[str, Any]) -> str | None:
    """Apply the rent, webhook, rate-limit and BTC/USD settings; return an error or None."""
    s = state.settings
    if "rentHours" in body:
        hours = body["rentHours"]
        if (
            not isinstance(hours, list)
            or not hours
            or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hours)
        ):
            return "rentHours must be a non-empty list of positive integers"
        s.rent_hours = tuple(sorted(set(hours)))
    for key in ("rentCancelSeconds", "webhookRetrySeconds", "webhookTimeoutSeconds"):
        if key in body and _seconds(body[key]) is None:
            return f"{key} must be a number >= 0"
    if "rentCancelSeconds" in body:
        s.rent_cancel_seconds = float(body["rentCancelSeconds"])
    if "webhookRetrySeconds" in body:
        s.webhook_retry_seconds = float(body["webhookRetrySeconds"])
    if "webhookTimeoutSeconds" in body:
        s.webhook_timeout_seconds = float(body["webhookTimeoutSeconds"])
    for key in ("webhookUrl", "webhookSecret"):
        if key in body and body[key] is not None and not isinstance(body[key], str):
            return f"{key} must be a string or null"
    if "webhookUrl" in body:
        s.webhook_url = body["webhookUrl"] or None
    if "webhookSecret" in body:
        s.webhook_secret = body["webhookSecret"] or None
    if "webhookTries" in body:
        tries = body["webhookTries"]
        if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
            return "webhookTries must be an integer >= 1"
        s.webhook_tries = tries
    if "rateLimitPerSecond" in body:
        limit = body["rateLimitPerSecond"]
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            return "rateLimitPerSecond must be an integer or null (off)"
        s.rate_limit_per_second = limit if limit else None
    if "rateBlockSeconds" in body:
        block = _seconds(body["rateBlockSeconds"])
        if block is None:
            return "rateBlockSeconds must be a number >= 0"
        s.rate_block_seconds = block
    if "activeActivationsPageLimit" in body:
        cap = body["activeActivationsPageLimit"]
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            return "activeActivationsPageLimit must be an integer >= 1 or null (all)"
        s.active_page_limit = cap
    if "btcUsd" in body:
        rate = _decimal(body["btcUsd"])
        if rate is None or rate == 0:
            return "btcUsd must be a positive number"
        s.btc_usd = rate
        state.rate_updated_at = state.clock()
    return None


async def sim_config(request: web.Request) -> web.Response:
    """GET/POST /sim/config: read or change settings at runtime."""
    state = request.app[STATE_KEY]
    if request.method == "GET":
        return web.json_response(_config_json(state))
    body = await _json_body(request)
    s = state.settings
    spread = _seconds(body.get("autoSmsSpreadSeconds", s.auto_sms_spread))
    if spread is None:
        return _control_error(400, "BAD_SPREAD", "autoSmsSpreadSeconds must be a number >= 0")
    share = _share(body.get("autoSmsShare", s.auto_sms_share))
    if share is None:
        return _control_error(400, "BAD_SHARE", "autoSmsShare must be a number between 0 and 1")
    if "errorStyle" in body:
        if body["errorStyle"] not in ERROR_STYLES:
            return _control_error(400, "BAD_STYLE", "errorStyle must be herosms or smsactivate")
        s.error_style = body["errorStyle"]
    for key in ("earlyCancelSeconds", "activationLifetimeSeconds"):
        if key in body and _seconds(body[key]) is None:
            return _control_error(400, "BAD_SECONDS", f"{key} must be a number >= 0")
    if "earlyCancelSeconds" in body:
        s.early_cancel_seconds = float(body["earlyCancelSeconds"])
    if "activationLifetimeSeconds" in body:
        s.lifetime_seconds = float(body["activationLifetimeSeconds"])
    if "balance" in body:
        balance = _decimal(body["balance"])
        if balance is None:
            return _control_error(400, "BAD_BALANCE", "balance must be a number >= 0")
        state.balance = balance
    if "bannedUntil" in body:
        until = body["bannedUntil"]
        if until is not None and not isinstance(until, str):
            return _control_error(400, "BAD_BAN", "bannedUntil must be a string or null")
        s.banned_until = until or None
    problem = _apply_config(state, body)
    if problem is not None:
        return _control_error(400, "BAD_CONFIG", problem)
    if "autoSmsDelaySeconds" in body:
        raw = body["autoSmsDelaySeconds"]
        delay = None if raw is None else _seconds(raw)
        if raw is not None and delay is None:
            return _control_error(400, "BAD_DELAY", "autoSmsDelaySeconds must be >= 0 or null")
        s.auto_sms_delay = delay
    if {"autoSmsDelaySeconds", "autoSmsSpreadSeconds", "autoSmsShare"} & body.keys():
        s.auto_sms_spread, s.auto_sms_share = spread, share
        request.app[AUTO_KEY].reschedule()
    return web.json_response(_config_json(state))


async def sim_reset(request: web.Request) -> web.Response:
    """POST /sim/reset: clear activations, stats and faults; restore stock and balance."""
    request.app[AUTO_KEY].cancel_all()
    request.app[STATE_KEY].reset()
    request.app[PUSHER_KEY].clear()
    return web.json_response({"ok": True})


async def sim_stats(request: web.Request) -> web.Response:
    """GET /sim/stats: handler_api calls per action, 429s, the busiest second of one key
    (`peakPerSecond`, refused requests included) and how many blocks started (`blocks`)."""
    state = request.app[STATE_KEY]
    stats = state.stats
    return web.json_response(
        {
            "actions": dict(stats),
            "total": sum(stats.values()),
            "rateLimited": state.rate_limited,
            "peakPerSecond": state.peak_per_second,
            "blocks": state.blocks,
        }
    )


def _fault_from_body(body: dict[str, Any]) -> Fault | str:
    """Build a Fault from a POST /sim/faults body, or return what is wrong with it."""
    mode = body.get("mode", "custom")
    if mode not in FAULT_MODES:
        return f"mode must be one of {', '.join(FAULT_MODES)}"
    raw_actions = body.get("actions", [body["action"]] if body.get("action") else [])
    if not isinstance(raw_actions, list) or not all(isinstance(a, str) for a in raw_actions):
        return "actions must be a list of action names (action: one name)"
    times = body.get("times", None if mode == "no_balance" else 1)
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        return "times must be an integer >= 1 or null (until cleared)"
    probability = body.get("probability", 1.0)
    if isinstance(probability, bool) or not isinstance(probability, int | float):
        return "probability must be a number in (0, 1]"
    if not 0 < probability <= 1:
        return "probability must be a number in (0, 1]"
    delay = _seconds(body.get("seconds", body.get("delaySeconds", 0)))
    if delay is None:
        return "seconds must be a number >= 0"
    if mode == "delay" and delay <= 0:
        return "a delay fault needs seconds > 0"
    status = body.get("status", 503 if mode in ("custom", "error") else 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        return "status must be an HTTP status code"
    content = str(body.get("body", ""))
    content_type = str(body.get("contentType", "text/plain"))
    if mode == "error":
        code = body.get("code")
        if code is not None:
            if not isinstance(code, str) or not code:
                return "code must be a provider error string such as ERROR_SQL"
            content, status = code, body.get("status", 200)
        elif "body" not in body:
            content = "Service Temporarily Unavailable"
    elif mode == "garbage":
        kind = body.get("kind", "html")
        if kind not in GARBAGE:
            return f"kind must be one of {', '.join(GARBAGE)}"
        content, content_type = GARBAGE[kind]
    return Fault(
        mode=mode,
        actions=frozenset(raw_actions),
        status=status,
        body=content,
        content_type=content_type,
        times=times,
        retry_after=_seconds(body.get("retryAfter")),
        delay_seconds=delay,
        probability=float(probability),
    )


async def sim_faults(request: web.Request) -> web.Response:
    """POST /sim/faults adds an injected failure; DELETE clears them; GET lists them."""
    state = request.app[STATE_KEY]
    if request.method == "DELETE":
        state.faults.clear()
    elif request.method == "POST":
        fault = _fault_from_body(await _json_body(request))
        if isinstance(fault, str):
            return _control_error(400, "BAD_FAULT", fault)
        state.faults.append(fault)
    return web.json_response([f.to_json() for f in state.faults])


async def sim_rent_sms(request: web.Request) -> web.Response:
    """POST /sim/rent-sms {"rentId", "text"?, "phoneFrom"?, "service"?}: an SMS for a rental
    arrives now (and is pushed to its webhook)."""
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    fields = [body.get(k) for k in ("text", "phoneFrom", "service")]
    if any(v is not None and not isinstance(v, str) for v in fields):
        return _control_error(400, "BAD_SMS", "text, phoneFrom and service must be strings")
    text, phone_from, service = (v if isinstance(v, str) else None for v in fields)
    try:
        rental = state.get_rental(str(body.get("rentId", "")))
        sms = state.deliver_rent_sms(rental, text=text, phone_from=phone_from, service=service)
    except SimError as err:
        status = 409 if err.title == "ACTIVATION_NOT_ACTIVE" else 404
        return _control_error(status, err.title, err.details)
    delivery = request.app[PUSHER_KEY].push(rental, sms)
    return web.json_response({**rental.to_json(), "webhook": delivery is not None})


async def sim_list_rentals(request: web.Request) -> web.Response:
    """GET /sim/rentals."""
    state = request.app[STATE_KEY]
    rentals = [state.get_rental(str(i)) for i in sorted(state.rentals)]
    return web.json_response([r.to_json() for r in rentals])


async def sim_get_rental(request: web.Request) -> web.Response:
    """GET /sim/rentals/{id}."""
    try:
        rental = request.app[STATE_KEY].get_rental(request.match_info["rent_id"])
    except SimError as err:
        return _control_error(404, err.title, err.details)
    return web.json_response(rental.to_json())


async def sim_end_rental(request: web.Request) -> web.Response:
    """POST /sim/rentals/{id}/end {"status": "finish" | "cancel"}: the provider ends an active
    rental before its time; getRentStatus answers STATUS_FINISH / STATUS_CANCEL from now on."""
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    status = {"finish": FINISHED, "cancel": CANCEL}.get(str(body.get("status", "finish")))
    if status is None:
        return _control_error(400, "BAD_STATUS", "status must be finish or cancel")
    try:
        rental = state.get_rental(request.match_info["rent_id"])
    except SimError as err:
        return _control_error(404, err.title, err.details)
    try:
        state.end_rent_early(rental, status)
    except SimError as err:
        return _control_error(409, err.title, err.details)
    return web.json_response(rental.to_json())


async def sim_webhooks(request: web.Request) -> web.Response:
    """GET /sim/webhooks: the latest webhook pushes (rental and activation SMS) with their
    attempts; DELETE forgets them."""
    pusher = request.app[PUSHER_KEY]
    if request.method == "DELETE":
        pusher.clear()
    return web.json_response([d.to_json() for d in pusher.log()])


async def sim_health(request: web.Request) -> web.Response:
    """GET /sim/health."""
    return web.json_response({"ok": True})


async def _on_cleanup(app: web.Application) -> None:
    app[AUTO_KEY].cancel_all()
    await app[PUSHER_KEY].close()


def build_app(state: SimState | None = None) -> web.Application:
    """Build the simulator's aiohttp application around a (possibly fresh) state."""
    app = web.Application()
    app[STATE_KEY] = state or SimState()
    app[PUSHER_KEY] = WebhookPusher(app[STATE_KEY].settings)
    app[AUTO_KEY] = AutoSms(app[STATE_KEY], app[PUSHER_KEY])
    app.router.add_get(HANDLER_PATH, handler_api)
    app.router.add_post(HANDLER_PATH, handler_api)
    app.router.add_post("/sim/stock", sim_stock)
    app.router.add_post("/sim/auto-sms", sim_auto_sms)
    app.router.add_get("/sim/activations", sim_list_activations)
    app.router.add_get("/sim/activations/{activation_id}", sim_get_activation)
    app.router.add_post("/sim/activations/{activation_id}/sms", sim_deliver_sms)
    app.router.add_get("/sim/config", sim_config)
    app.router.add_post("/sim/config", sim_config)
    app.router.add_post("/sim/reset", sim_reset)
    app.router.add_get("/sim/stats", sim_stats)
    app.router.add_get("/sim/faults", sim_faults)
    app.router.add_post("/sim/faults", sim_faults)
    app.router.add_delete("/sim/faults", sim_faults)
    app.router.add_get("/sim/health", sim_health)
    app.router.add_post("/sim/rent-sms", sim_rent_sms)
    app.router.add_get("/sim/rentals", sim_list_rentals)
    app.router.add_get("/sim/rentals/{rent_id}", sim_get_rental)
    app.router.add_post("/sim/rentals/{rent_id}/end", sim_end_rental)
    app.router.add_get("/sim/webhooks", sim_webhooks)
    app.router.add_delete("/sim/webhooks", sim_webhooks)
    app.router.add_get("/api/v3/simple/price", simple_price)
    app.on_cleanup.append(_on_cleanup)
    return app
