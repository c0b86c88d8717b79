"""Typed application keys of the gateway app, and the use cases' context built from them."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS

from libs.common.adapters.lightning import LndClient
from libs.common.adapters.sms import SmsProvider
from libs.common.core.config import Settings
from libs.common.persistence.stores import PgStores
from services.gateway.usecases import Gateway, Prepaid

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
STORES = web.AppKey("stores", PgStores)
LND = web.AppKey("lnd", LndClient)
PROVIDER = web.AppKey("provider", SmsProvider)
JS_CONN = web.AppKey("nats", NATS)
NETWORK = web.AppKey("bolt11_currency", str)


def gateway(request: web.Request) -> Gateway:
    """What the order use cases run on, for this request's app."""
    app = request.app
    return Gateway(app[STORES], app[LND], app[SETTINGS])


def prepaid(request: web.Request) -> Prepaid:
    """What the prepaid-account use cases run on, for this request's app."""
    app = request.app
    return Prepaid(app[STORES], app[LND], app[SETTINGS])
