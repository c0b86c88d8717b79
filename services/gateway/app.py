"""The gateway's aiohttp application: routes, middleware and the resources it opens."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from libs.common.adapters.lightning import LndClient
from libs.common.core import metrics
from libs.common.core.config import Settings
from libs.common.core.logs import ACCESS_LOGGER, LOG_CONTEXT, AccessLogger, register_secret
from libs.common.domain.events import CORRELATION_HEADER
from libs.common.domain.refund_invoices import currency_for_network
from libs.common.messaging import bus
from libs.common.messaging.runtime import close_all, provider_client, start_background
from libs.common.persistence import db
from libs.common.persistence.stores import PgStores
from services.gateway import classic, classic_prices, discovery, views, webhooks
from services.gateway.errors import error_middleware, mark_classic
from services.gateway.keys import JS_CONN, LND, NETWORK, POOL, PROVIDER, SETTINGS, STORES
from services.gateway.limits import rate_limit_middleware

MAX_BODY_BYTES = 16 * 1024
CLASSIC_OPENAPI_PATH = Path(__file__).with_name("openapi-classic.json")
CLASSIC_OPENAPI_ROUTE = "/classic/openapi.json"
# A caller's correlation id is taken as is only if it is short and plain (it goes into logs).
_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


@web.middleware
async def observe_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Give the request a correlation id (logs, events it causes) and count it by route."""
    given = request.headers.get(CORRELATION_HEADER, "")
    correlation_id = given if _CORRELATION_ID.match(given) else uuid.uuid4().hex
    LOG_CONTEXT.set({"correlation_id": correlation_id})
    # The route's template, never the raw path, so the label set stays bounded.
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    try:
        resp = await handler(request)
    except web.HTTPException as exc:  # redirects and the like pass through the error middleware
        metrics.HTTP_REQUESTS.labels(route, str(exc.status)).inc()
        exc.headers[CORRELATION_HEADER] = correlation_id
        raise
    metrics.HTTP_REQUESTS.labels(route, str(resp.status)).inc()
    if not resp.prepared:
        resp.headers[CORRELATION_HEADER] = correlation_id
    return resp


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The runner the service serves the app with: our redacted access log, or none."""
    access = {"access_log_class": AccessLogger, "access_log": logging.getLogger(ACCESS_LOGGER)}
    # Headers up to 16 KiB reach our code, which answers oversized credentials with JSON.
    return web.AppRunner(
        app,
        handle_signals=False,
        max_field_size=16384,
        **(access if settings.access_log else {"access_log": None}),
    )


async def classic_openapi(request: web.Request) -> web.Response:
    """GET /classic/openapi.json: the classic API's OpenAPI 3.1 document."""
    del request
    return web.Response(body=CLASSIC_OPENAPI_PATH.read_bytes(), content_type="application/json")


def setup_routes(app: web.Application) -> None:
    """Register every route."""
    app.router.add_get("/health", views.health)
    app.router.add_get("/.well-known/402index-verify.txt", discovery.index_verify)
    app.router.add_get("/.well-known/l402-services", discovery.l402_services)
    app.router.add_get("/v2/l402", discovery.discovery)
    app.router.add_get("/v2/l402/openapi.json", discovery.openapi)
    app.router.add_get("/v2/l402/services", views.services)
    app.router.add_get("/v2/l402/catalog", discovery.catalog)
    app.router.add_post("/v2/l402/webhooks/rent", webhooks.rent_sms)
    # The same handler under a name that fits the account-wide webhook (activations too).
    app.router.add_post("/v2/l402/webhooks/sms", webhooks.rent_sms)
    # The classic API: hold invoices, paid only when the code is delivered. Marked, so that
    # the gateway-wide errors (413, 429, 503, 500) answer its routes in its own error body.
    for route in (
        app.router.add_get(CLASSIC_OPENAPI_ROUTE, classic_openapi),
        app.router.add_post("/createorder", classic.create_order),
        app.router.add_get("/orderstatus", classic.order_status),
        app.router.add_get("/cancelorder", classic.cancel_order),
        app.router.add_post("/fund", classic.fund),
        app.router.add_get("/balance", classic.balance),
        app.router.add_get("/history", classic.history),
        app.router.add_get("/getCountries", classic_prices.get_countries),
        app.router.add_get("/getnumbersstatus", classic_prices.get_numbers_status),
        app.router.add_get("/getRentalCountries", classic_prices.get_rental_countries),
        app.router.add_get("/price", classic_prices.price),
    ):
        mark_classic(app, route)
    app.router.add_post("/v2/l402/order", views.create_order)
    app.router.add_get("/v2/l402/order/{order_id}", views.get_order)
    app.router.add_post("/v2/l402/order/{order_id}/cancel", views.cancel_order)
    app.router.add_post("/v2/l402/order/{order_id}/another-sms", views.another_sms)


def init_app(settings: Settings, stop: asyncio.Event) -> web.Application:
    """Build the application; connections open on startup and close on cleanup."""
    # The secret also travels in the webhook URL's ?token=: never write it in a log line.
    register_secret(settings.webhook_secret)
    app = web.Application(
        middlewares=[observe_middleware, error_middleware, rate_limit_middleware(settings)],
        client_max_size=MAX_BODY_BYTES,
    )
    app[SETTINGS] = settings
    app[discovery.CACHE] = discovery.CatalogCache(settings.catalog_ttl_seconds)
    app[NETWORK] = currency_for_network(settings.lnd_network)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await db.create_pool(settings.database_url)
        nc = await bus.connect(settings.nats_url, "gateway")
        lnd = LndClient(
            settings.lnd_rest_url, settings.macaroon_hex(), settings.lnd_tls_cert_path or None
        )
        provider = provider_client(pool, settings)
        app[POOL], app[JS_CONN], app[LND], app[PROVIDER] = pool, nc, lnd, provider
        app[STORES] = PgStores(pool, settings.subject_prefix)
        background = start_background(pool, nc, settings, stop)
        yield
        stop.set()
        await provider.close()
        await lnd.close()
        await close_all(background, nc, pool, stop, settings.shutdown_grace_seconds)

    app.cleanup_ctx.append(resources)
    setup_routes(app)
    return app
