"""Rate limits per client address on challenge issuance and polling (429 + Retry-After)."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from libs.common.config import Settings
from libs.common.ratelimit import RateLimiter
from services.gateway.errors import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def client_address(request: web.Request, *, trust_forwarded_for: bool) -> str:
    """The address a limit is counted against."""
    if trust_forwarded_for:
        # Our proxy appends the address it saw; anything to its left is client-controlled.
        forwarded = request.headers.get("X-Forwarded-For", "")
        last = forwarded.split(",")[-1].strip()
        if last:
            return last
    return request.remote or "unknown"


def rate_limit_middleware(settings: Settings) -> Middleware:
    """Build the middleware: unauthenticated order creation and polls are limited per client."""
    challenges = RateLimiter(settings.rate_challenges_per_minute)
    polls = RateLimiter(settings.rate_polls_per_minute)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        limiter = None
        route = request.match_info.route.resource
        canonical = route.canonical if route is not None else ""
        if canonical == "/v2/l402/order" and request.method == "POST":
            # A credential-carrying re-POST reads an existing order: it counts as a poll.
            limiter = polls if "Authorization" in request.headers else challenges
        elif canonical == "/createorder":
            limiter = challenges
        elif canonical.startswith("/v2/l402/order/") or canonical in (
            "/orderstatus",
            "/cancelorder",
        ):
            limiter = polls
        if limiter is not None:
            key = client_address(request, trust_forwarded_for=settings.trust_forwarded_for)
            wait = limiter.hit(key, time.monotonic())
            if wait is not None:
                resp = error_response(429, "RATE_LIMITED", "too many requests; slow down")
                resp.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return resp
        return await handler(request)

    return middleware
