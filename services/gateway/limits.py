"""Rate limits per client address on challenge issuance and polling (429 + Retry-After)."""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from libs.common.core.config import Settings
from libs.common.core.ratelimit import RateLimiter
from services.gateway.errors import rate_limited

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# An X-Forwarded-For entry: an address, maybe with a port ("1.2.3.4:80", "[2001:db8::1]:80").
_BRACKETED = re.compile(r"\[([^\]]+)\](?::[0-9]{1,5})?")
_V4_WITH_PORT = re.compile(r"([0-9.]+):[0-9]{1,5}")
# Anyone with one IPv6 subscriber line is handed at least a /64: rotating addresses inside it
# must not buy fresh buckets or a fresh unpaid-order cap.
_V6_CLIENT_PREFIX = 64


def proxy_hops(settings: Settings) -> int:
    """How many proxies we run in front of the gateway (the deprecated boolean means one)."""
    if settings.trusted_proxy_hops > 0:
        return settings.trusted_proxy_hops
    return 1 if settings.trust_forwarded_for else 0


def address_key(text: str) -> str | None:
    """The key an address is counted by, or None when text is not one address (maybe with a port).

    IPv4 is counted by the address, IPv6 by its /64 (e.g. "2001:db8:1:2::/64"), and an
    IPv4-mapped IPv6 address ("::ffff:1.2.3.4") as the IPv4 address it carries. Whatever else
    a client writes (junk, undecodable bytes, which aiohttp keeps as lone surrogates) is None,
    so it can neither become a key of its own nor reach the database.
    """
    text = text.strip()
    if (match := _BRACKETED.fullmatch(text) or _V4_WITH_PORT.fullmatch(text)) is not None:
        text = match.group(1)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    # From the integer, so a scope id ("fe80::1%eth0") does not survive into the key.
    prefix = int(address) >> (128 - _V6_CLIENT_PREFIX) << (128 - _V6_CLIENT_PREFIX)
    return str(ipaddress.IPv6Network((prefix, _V6_CLIENT_PREFIX)))


def client_address(request: web.Request, settings: Settings) -> str:
    """The client as the outermost of our trusted proxies saw it (the socket peer for 0 hops).

    Each trusted proxy appends the address it received the request from, so the rightmost
    `hops` entries of X-Forwarded-For are ours and the hops-th from the right is the client;
    everything to its left was sent by the client and is never trusted. With fewer entries
    than hops (a request that skipped our outer proxies), the leftmost entry is used; the
    client may have written it, so it counts only if it is an address, else the socket peer
    does. The result is `address_key`'s (an IPv6 client is its /64).
    """
    peer = request.remote or "unknown"
    peer = address_key(peer) or peer
    hops = proxy_hops(settings)
    if hops == 0:
        return peer
    # Several X-Forwarded-For headers are one comma-separated list, in order (RFC 9110 5.3).
    entries = ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")
    if entries == [""]:
        return peer
    chosen = entries[-hops] if len(entries) >= hops else entries[0]
    return address_key(chosen) or peer


class ChallengeBudget:
    """One client's order-creation budget for one request, charged at most once."""

    def __init__(self, limiter: RateLimiter, key: str) -> None:
        self._limiter = limiter
        self._key = key
        self.charged = False

    def charge(self) -> None:
        """Take a token from the client's challenge bucket; 429 RATE_LIMITED when it is empty."""
        if self.charged:
            return
        self.charged = True
        wait = self._limiter.hit(self._key, time.monotonic())
        if wait is not None:
            raise rate_limited(wait)


CHALLENGE_BUDGET = web.RequestKey("challenge_budget", ChallengeBudget)


def charge_challenge(request: web.Request) -> None:
    """Charge the request to the challenge bucket before it mints an order (once per request).

    A credentialed POST /v2/l402/order is first counted as a poll, since it may only read its
    order; the handler calls this as soon as it is going to mint instead, so a forged or stale
    credential buys no extra orders.
    """
    budget = request.get(CHALLENGE_BUDGET)
    if budget is not None:
        budget.charge()


def rate_limit_middleware(settings: Settings) -> Middleware:
    """Build the middleware: unauthenticated order creation and polls are limited per client."""
    challenges = RateLimiter(settings.rate_challenges_per_minute)
    polls = RateLimiter(settings.rate_polls_per_minute)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        canonical = route.canonical if route is not None else ""
        if canonical == "/v2/l402/order" and request.method == "POST":
            key = client_address(request, settings)
            budget = ChallengeBudget(challenges, key)
            request[CHALLENGE_BUDGET] = budget
            if "Authorization" in request.headers:
                # It may only read an existing order (a poll); charge_challenge if it mints.
                _charge(polls, key)
            else:
                budget.charge()
        elif canonical == "/createorder":
            _charge(challenges, client_address(request, settings))
        elif canonical.startswith("/v2/l402/order/") or canonical in (
            "/orderstatus",
            "/cancelorder",
        ):
            _charge(polls, client_address(request, settings))
        return await handler(request)

    return middleware


def _charge(limiter: RateLimiter, key: str) -> None:
    """Take a token for key from limiter; 429 RATE_LIMITED when there is none."""
    wait = limiter.hit(key, time.monotonic())
    if wait is not None:
        raise rate_limited(wait)
