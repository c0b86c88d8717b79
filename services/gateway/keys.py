"""Typed application keys of the gateway app."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS

from libs.common.adapters.lightning import LndClient
from libs.common.adapters.sms import SmsProvider
from libs.common.core.config import Settings
from libs.common.persistence.stores import PgStores

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
STORES = web.AppKey("stores", PgStores)
LND = web.AppKey("lnd", LndClient)
PROVIDER = web.AppKey("provider", SmsProvider)
JS_CONN = web.AppKey("nats", NATS)
NETWORK = web.AppKey("bolt11_currency", str)
