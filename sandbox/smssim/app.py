"""aiohttp application of the SMS provider simulator: handler_api protocol plus /sim control API."""

from __future__ import annotations

import asyncio
import json
import logging
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from sandbox.smssim.catalog import COUNTRIES, COUNTRIES_BY_ID, SERVICES, SERVICES_BY_CODE
from sandbox.smssim.state import (
    CANCEL,
    ERROR_STYLES,
    WAIT_RETRY,
    WAITING_STATES,
    Fault,
    SimActivation,
    SimError,
    SimState,
    err_bad_action,
    fmt_time,
)

log = logging.getLogger("sandbox.smssim")

HANDLER_PATH = "/stubs/handler_api.php"
USD_CURRENCY = 840


class AutoSms:
    """Schedules automatic SMS delivery for waiting activations."""

    def __init__(self, state: SimState) -> None:
        """Bind to the simulator state."""
        self.state = state
        self._handles: dict[int, asyncio.TimerHandle] = {}

    def schedule(self, activation: SimActivation) -> None:
        """Deliver an SMS to the activation after the configured delay (if auto mode is on)."""
        delay = self.state.settings.auto_sms_delay
        if delay is None:
            return
        self.cancel(activation.id)
        loop = asyncio.get_running_loop()
        self._handles[activation.id] = loop.call_later(max(delay, 0.0), self._fire, activation.id)

    def _fire(self, activation_id: int) -> None:
        self._handles.pop(activation_id, None)
        activation = self.state.activations.get(activation_id)
        if activation is None:
            return
        self.state.refresh(activation)
        if activation.status in WAITING_STATES:
            self.state.deliver_sms(activation)
            log.info("auto SMS delivered to activation %s", activation_id)

    def cancel(self, activation_id: int) -> None:
        """Drop a pending delivery."""
        handle = self._handles.pop(activation_id, None)
        if handle is not None:
            handle.cancel()

    def cancel_all(self) -> None:
        """Drop every pending delivery."""
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()

    def reschedule(self) -> None:
        """Re-plan deliveries for all waiting activations after a delay change."""
        self.cancel_all()
        for activation in list(self.state.activations.values()):
            self.state.refresh(activation)
            if activation.status in WAITING_STATES:
                self.schedule(activation)


STATE_KEY = web.AppKey("smssim_state", SimState)
AUTO_KEY = web.AppKey("smssim_auto", AutoSms)


# --------------------------------------------------------------------------- rendering


def _text(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/plain")


def _render_error(state: SimState, err: SimError) -> web.Response:
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


async def handler_api(request: web.Request) -> web.Response:
    """The SMS-Activate compatible endpoint: dispatches on ?action=."""
    state = request.app[STATE_KEY]
    auto = request.app[AUTO_KEY]
    params = await _params(request)
    action = params.get("action", "")
    state.stats[action or "<none>"] += 1
    log.debug("handler_api action=%s", action)

    fault = state.take_fault(action)
    if fault is not None:
        if fault.delay_seconds > 0:
            await asyncio.sleep(fault.delay_seconds)
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        return web.Response(
            status=fault.status, text=fault.body, content_type=fault.content_type, headers=headers
        )

    try:
        state.check_key(params.get("api_key"))
        if action == "getBalance":
            return _text(f"ACCESS_BALANCE:{state.balance:.2f}")
        if action in ("getNumber", "getNumberV2"):
            act = state.buy(params.get("service"), params.get("country"), params.get("maxPrice"))
            auto.schedule(act)
            if action == "getNumber":
                return _text(f"ACCESS_NUMBER:{act.id}:{act.phone}")
            return web.json_response(_number_v2(state, act))
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
                auto.schedule(act)
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
        raise err_bad_action()
    except SimError as err:
        return _render_error(state, err)


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


async def sim_auto_sms(request: web.Request) -> web.Response:
    """POST /sim/auto-sms {"delaySeconds": 3 | null}."""
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    if "delaySeconds" not in body:
        return _control_error(400, "BAD_DELAY", "delaySeconds is required (number or null)")
    raw = body["delaySeconds"]
    delay = None if raw is None else _seconds(raw)
    if raw is not None and delay is None:
        return _control_error(400, "BAD_DELAY", "delaySeconds must be >= 0 or null")
    state.settings.auto_sms_delay = delay
    request.app[AUTO_KEY].reschedule()
    return web.json_response({"delaySeconds": delay})


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
        state.deliver_sms(act, text=text, code=None if code is None else str(code))
    except SimError as err:
        status = 409 if err.title == "ACTIVATION_NOT_ACTIVE" else 404
        return _control_error(status, err.title, err.details)
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
        "activationLifetimeSeconds": s.lifetime_seconds,
        "bannedUntil": s.banned_until,
        "balance": float(state.balance),
    }


async def sim_config(request: web.Request) -> web.Response:
    """GET/POST /sim/config: read or change settings at runtime."""
    state = request.app[STATE_KEY]
    if request.method == "GET":
        return web.json_response(_config_json(state))
    body = await _json_body(request)
    s = state.settings
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
    if "autoSmsDelaySeconds" in body:
        raw = body["autoSmsDelaySeconds"]
        delay = None if raw is None else _seconds(raw)
        if raw is not None and delay is None:
            return _control_error(400, "BAD_DELAY", "autoSmsDelaySeconds must be >= 0 or null")
        s.auto_sms_delay = delay
        request.app[AUTO_KEY].reschedule()
    return web.json_response(_config_json(state))


async def sim_reset(request: web.Request) -> web.Response:
    """POST /sim/reset: clear activations, stats and faults; restore stock and balance."""
    request.app[AUTO_KEY].cancel_all()
    request.app[STATE_KEY].reset()
    return web.json_response({"ok": True})


async def sim_stats(request: web.Request) -> web.Response:
    """GET /sim/stats: handler_api calls per action."""
    stats = request.app[STATE_KEY].stats
    return web.json_response({"actions": dict(stats), "total": sum(stats.values())})


async def sim_faults(request: web.Request) -> web.Response:
    """POST /sim/faults adds an injected failure; DELETE clears them; GET lists them."""
    state = request.app[STATE_KEY]
    if request.method == "DELETE":
        state.faults.clear()
    elif request.method == "POST":
        body = await _json_body(request)
        status = body.get("status", 503)
        times = body.get("times", 1)
        action = body.get("action")
        if not isinstance(status, int) or not 100 <= status <= 599:
            return _control_error(400, "BAD_FAULT", "status must be an HTTP status code")
        if not isinstance(times, int) or times < 1:
            return _control_error(400, "BAD_FAULT", "times must be an integer >= 1")
        if action is not None and not isinstance(action, str):
            return _control_error(400, "BAD_FAULT", "action must be a string or null")
        retry_after = _seconds(body.get("retryAfter"))
        delay = _seconds(body.get("delaySeconds", 0)) or 0.0
        state.faults.append(
            Fault(
                action=action,
                status=status,
                body=str(body.get("body", "")),
                content_type=str(body.get("contentType", "text/plain")),
                times=times,
                retry_after=retry_after,
                delay_seconds=delay,
            )
        )
    return web.json_response(
        [
            {"action": f.action, "status": f.status, "times": f.times, "body": f.body}
            for f in state.faults
        ]
    )


async def sim_health(request: web.Request) -> web.Response:
    """GET /sim/health."""
    return web.json_response({"ok": True})


async def _on_cleanup(app: web.Application) -> None:
    app[AUTO_KEY].cancel_all()


def build_app(state: SimState | None = None) -> web.Application:
    """Build the simulator's aiohttp application around a (possibly fresh) state."""
    app = web.Application()
    app[STATE_KEY] = state or SimState()
    app[AUTO_KEY] = AutoSms(app[STATE_KEY])
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
    app.on_cleanup.append(_on_cleanup)
    return app
