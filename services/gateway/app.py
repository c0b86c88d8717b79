"""The gateway's aiohttp application: routes, middleware and the resources it opens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from libs.common import bus, db
from libs.common.config import Settings
from libs.common.invoices import currency_for_network
from libs.common.lightning import LndClient
from libs.common.outbox import OutboxRelay
from libs.common.runtime import close_nats
from libs.common.sms import HeroSmsClient
from services.gateway import classic, classic_catalog, discovery, views, webhooks
from services.gateway.errors import error_middleware
from services.gateway.keys import JS_CONN, LND, NETWORK, POOL, PROVIDER, SETTINGS
from services.gateway.limits import rate_limit_middleware

MAX_BODY_BYTES = 16 * 1024


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
    # The classic API: hold invoices, paid only when the code is delivered.
    app.router.add_post("/createorder", classic.create_order)
    app.router.add_get("/orderstatus", classic.order_status)
    app.router.add_get("/cancelorder", classic.cancel_order)
    app.router.add_post("/fund", classic.fund)
    app.router.add_get("/balance", classic.balance)
    app.router.add_get("/history", classic.history)
    app.router.add_get("/getCountries", classic_catalog.get_countries)
    app.router.add_get("/getnumbersstatus", classic_catalog.get_numbers_status)
    app.router.add_get("/getRentalCountries", classic_catalog.get_rental_countries)
    app.router.add_get("/price", classic_catalog.price)
    app.router.add_post("/v2/l402/order", views.create_order)
    app.router.add_get("/v2/l402/order/{order_id}", views.get_order)
    app.router.add_post("/v2/l402/order/{order_id}/cancel", views.cancel_order)


def init_app(settings: Settings, stop: asyncio.Event) -> web.Application:
    """Build the application; connections open on startup and close on cleanup."""
    app = web.Application(
        middlewares=[error_middleware, rate_limit_middleware(settings)],
        client_max_size=MAX_BODY_BYTES,
    )
    app[SETTINGS] = settings
    app[discovery.CACHE] = discovery.ProviderCache(settings.catalog_ttl_seconds)
    app[NETWORK] = currency_for_network(settings.lnd_network)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await db.create_pool(settings.database_url)
        nc = await bus.connect(settings.nats_url, "gateway")
        lnd = LndClient(
            settings.lnd_rest_url, settings.macaroon_hex(), settings.lnd_tls_cert_path or None
        )
        provider = HeroSmsClient.from_settings(settings)
        app[POOL], app[JS_CONN], app[LND], app[PROVIDER] = pool, nc, lnd, provider
        relay = asyncio.create_task(
            OutboxRelay(pool, nc.jetstream(), tick=settings.outbox_tick_seconds).run(stop)
        )
        yield
        stop.set()
        await asyncio.wait([relay], timeout=10)
        await provider.close()
        await lnd.close()
        await close_nats(nc)
        await pool.close()

    app.cleanup_ctx.append(resources)
    setup_routes(app)
    return app
