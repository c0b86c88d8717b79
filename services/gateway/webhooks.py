"""Provider webhooks: authenticated by a shared secret, treated as at-least-once."""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from services.gateway.errors import ApiError, read_json
from services.gateway.keys import SETTINGS

log = logging.getLogger(__name__)


async def rent_sms(request: web.Request) -> web.Response:
    """POST /v2/l402/webhooks/rent: an incoming SMS pushed by the provider."""
    secret = request.app[SETTINGS].webhook_secret
    given = request.headers.get("X-Webhook-Secret", "")
    # Unsigned at the provider, so the shared secret is the only proof of origin.
    # aiohttp keeps undecodable header bytes as surrogates; encode them back, never crash.
    given_bytes = given.encode("utf-8", "surrogateescape")
    if not secret or not hmac.compare_digest(given_bytes, secret.encode()):
        raise ApiError(401, "UNAUTHORIZED", "missing or wrong X-Webhook-Secret")
    body = await read_json(request)
    if not isinstance(body, dict) or not ("rentId" in body or "activationId" in body):
        raise ApiError(400, "VALIDATION_ERROR", "body: needs rentId or activationId")
    # Rentals are not sold yet, so no order can match; polling stays the source of truth
    # for one-time activations. Acknowledge so the provider stops retrying.
    log.info("webhook received for an unknown rental or activation")
    return web.json_response({"status": "ok", "matched": False})
