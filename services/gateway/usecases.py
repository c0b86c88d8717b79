"""The gateway's use cases, shared by the L402 and the classic API.

Create an order (L402 receive-sms, reactivation or rental; a classic hold order; a classic
order paid from a prepaid balance), read it, cancel it, ask for another SMS, fund an account.
Each takes plain typed values and returns typed results. It reads and writes through the
stores and calls the Lightning node; it never sees SQL or the HTTP request. A refusal is an
`ApiError` (status, code, message), which the error middleware answers in the body of the
API the route belongs to.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol

import asyncpg

from libs.common.adapters.lightning import AddedInvoice, LndError
from libs.common.core.config import Settings
from libs.common.core.faults import crash_point
from libs.common.core.metrics import PROVIDER_NO_BALANCE
from libs.common.domain import l402
from libs.common.domain.alarms import Alarm
from libs.common.domain.api_keys import key_hash, plausible_key
from libs.common.domain.countries import Country, Offer
from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.orders import (
    CancelRefused,
    NewOrder,
    Order,
    OrderType,
    PaymentMode,
    Status,
    check_another_sms,
    check_customer_cancel,
)
from libs.common.persistence.account_store import Account, LedgerEntry, NewFunding
from libs.common.persistence.catalog_store import Catalog
from libs.common.persistence.ports import Alarms, CredentialedOrder, Stores
from libs.common.persistence.stores import PgStores
from services.gateway import unpaid
from services.gateway.errors import ApiError, StaleCredential
from services.gateway.offers import best_offer, price_for, reactivation_offer, rent_offer
from services.gateway.order_requests import OrderRequest, bad_field

log = logging.getLogger(__name__)

# The hold invoice's final CLTV delta (classic API): LND cancels a held HTLC on its own this
# many blocks before it expires; a block is about ten minutes.
LND_HOLD_EXPIRY_DELTA = 18
BLOCK_SECONDS = 600
# How many balance movements /history lists.
HISTORY_LIMIT = 500
INVOICE_UNAVAILABLE = "cannot create an invoice now; retry later"


def _utcnow() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


class Node(Protocol):
    """The Lightning node calls the use cases make (`LndClient`; a fake in unit tests)."""

    async def add_invoice(self, *, value_msat: int, memo: str, expiry: int) -> AddedInvoice:
        """A standard invoice."""

    async def add_hold_invoice(
        self, *, payment_hash: bytes, value_msat: int, memo: str, expiry: int, cltv_expiry: int
    ) -> AddedInvoice:
        """A hold invoice on our own preimage's hash."""

    async def cancel_invoice(self, payment_hash: bytes, *, money: bool = True) -> None:
        """Cancel an invoice."""


@dataclass(frozen=True)
class Gateway:
    """What the order use cases run on: the stores, the node, the settings and the clock."""

    stores: Stores
    node: Node
    settings: Settings
    clock: Callable[[], datetime] = _utcnow


@dataclass(frozen=True)
class Prepaid:
    """What the prepaid-account use cases run on (accounts live in PostgreSQL only)."""

    stores: PgStores
    node: Node
    settings: Settings
    clock: Callable[[], datetime] = _utcnow


@dataclass(frozen=True)
class Market:
    """The catalog snapshot to sell from and the BTC/USD rate to price with.

    The rate is read only when an order is priced, so its 503 (missing or too stale) comes
    after the refusals checked before pricing.
    """

    catalog: Catalog
    rate: Callable[[], Decimal]

    def price(self, offer: Offer, settings: Settings) -> int:
        """The offer's price in sats at the usable rate."""
        return price_for(offer.cost_usd, self.rate(), settings)


@dataclass(frozen=True)
class NewL402Order:
    """An L402 order to create: the validated body, who asks, and the credential's order."""

    request: OrderRequest
    client: str  # the client address the unpaid cap counts
    owned: Order | None = None  # the order the request's credential unlocks, if any


@dataclass(frozen=True)
class Challenge:
    """A new L402 order awaiting payment: what the 402 answer carries."""

    order_id: str
    invoice: str
    macaroon: str
    price_sats: int
    expires_at: datetime


@dataclass(frozen=True)
class NewClassicOrder:
    """A classic one-time number to create: service and country already checked."""

    service: str
    country: Country | str  # a catalog country or "auto"
    client: str  # the client address the unpaid cap counts
    account_id: int | None = None  # paid from this prepaid balance; None: a hold invoice


@dataclass(frozen=True)
class Invoiced:
    """A classic order or top-up created: its id and the invoice to pay ("paid" if none)."""

    order_id: str
    payment_request: str


class _Insufficient(Exception):
    """The balance does not cover the order."""


def _refund_invoice_in_use() -> ApiError:
    """The refusal of a refundInvoice another order already names."""
    return ApiError(
        400, "INVALID_REFUND_INVOICE", "this refundInvoice is already used by another order"
    )


def _refused(exc: CancelRefused) -> ApiError:
    """The API error of a request the order's rules refuse."""
    return ApiError(400 if exc.code == "VALIDATION_ERROR" else 409, exc.code, exc.message)


async def ensure_selling(alarms: Alarms) -> None:
    """503 UNAVAILABLE while the provider account has no balance (the operator is alarmed)."""
    try:
        alarm = await alarms.active(Alarm.NO_BALANCE)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise ApiError(503, "UNAVAILABLE", "cannot take orders now; retry later") from exc
    PROVIDER_NO_BALANCE.set(0 if alarm is None else 1)
    if alarm is not None:
        raise ApiError(503, "UNAVAILABLE", "numbers cannot be bought right now; retry later")


def check_reactivation(earlier: Order | None, req: OrderRequest) -> None:
    """Refuse a reactivation unless the credential's order is the completed one named."""
    if earlier is None or earlier.id != req.reactivates:
        raise ApiError(
            403,
            "INVALID_MACAROON",
            "reactivating needs the earlier order's credential: "
            "Authorization: L402 <macaroon>:<preimage> of orderId",
        )
    if (
        earlier.status is not Status.COMPLETED
        or earlier.type is OrderType.RENT_NUMBER
        or earlier.payment_mode is not PaymentMode.STANDARD
        or not earlier.activation_id
    ):
        raise bad_field("orderId", "only a completed receive-sms order can be reactivated")


def credential_lifetime(settings: Settings, rent_hours: int | None) -> int:
    """Seconds a new order's macaroon stays valid: the TTL, or a rental's whole life."""
    if rent_hours is None:
        return settings.macaroon_ttl_seconds
    # A rental's messages must stay readable until it ends and its SMS are purged.
    rental = settings.invoice_expiry_seconds + rent_hours * 3600 + settings.code_retention_seconds
    return max(settings.macaroon_ttl_seconds, rental)


def cltv_expiry_blocks(invoice_expiry: int, order_timeout: int) -> int:
    """A final CLTV delta that outlives the longest hold (payment window + SMS wait) safely."""
    hold_blocks = math.ceil((invoice_expiry + order_timeout + BLOCK_SECONDS) / BLOCK_SECONDS)
    return max(40, LND_HOLD_EXPIRY_DELTA + hold_blocks + 12)


async def _l402_offer(
    gw: Gateway, market: Market, req: OrderRequest, owned: Order | None
) -> tuple[OrderRequest, Offer]:
    """The offer an L402 order buys (a reactivation's is its earlier order's number)."""
    if req.type is OrderType.RECEIVE_SMS_REACTIVATE:
        check_reactivation(owned, req)
        assert owned is not None
        if await gw.stores.orders.reactivation_in_progress(owned.id):
            raise ApiError(409, "UNAVAILABLE", "a reactivation of this order is in progress")
        offer = reactivation_offer(market.catalog, owned.country_id, owned.service)
        return replace(req, service=owned.service), offer
    if req.service not in market.catalog.service_codes():
        raise ApiError(
            400, "VALIDATION_ERROR", f"service: unknown code {req.service!r}; see /v2/l402/services"
        )
    if req.rent_hours is not None:
        return req, rent_offer(market.catalog, req.service, req.country, req.rent_hours)
    return req, best_offer(market.catalog, req.service, req.country)


async def _open_unpaid(gw: Gateway, tx: Stores, new: NewOrder, client: str) -> None:
    """In the caller's transaction: claim a slot of the client's unpaid cap, insert the order,
    arm its invoice expiry and announce it. At the cap, the order's invoice is cancelled."""
    try:
        await unpaid.claim(tx.orders, gw.settings.max_unpaid_per_client, client, gw.clock())
    except ApiError:
        try:
            await gw.node.cancel_invoice(new.payment_hash, money=False)
        except (LndError, OSError, TimeoutError) as exc:
            # Unpaid and unlisted anywhere: the node cancels it at its expiry all the same.
            log.warning("could not cancel the invoice of a refused order: %s", exc)
        raise
    await tx.orders.insert(new)
    await tx.timers.set(new.id, Timer.INVOICE_EXPIRED, gw.settings.invoice_expiry_seconds)
    await tx.outbox.enqueue(Event(EventType.CREATED, new.id))


async def create_l402_order(gw: Gateway, market: Market, new: NewL402Order) -> Challenge:
    """Quote, invoice and record an L402 order; the challenge the client pays."""
    req, settings, refund = new.request, gw.settings, new.request.refund_invoice
    assert refund is not None  # every L402 order names one
    await ensure_selling(gw.stores.alarms)
    if await gw.stores.orders.refund_invoice_in_use(refund.payment_hash):
        raise _refund_invoice_in_use()
    req, offer = await _l402_offer(gw, market, req, new.owned)
    # The quote is what the invoice asks for and what the order row stores.
    price = market.price(offer, settings)
    await unpaid.refuse(gw.stores.orders, settings.max_unpaid_per_client, new.client, gw.clock())
    order_id = str(uuid.uuid4())
    try:
        invoice = await gw.node.add_invoice(
            value_msat=price * 1000,
            memo=f"sms4sats {req.service} order {order_id}",
            expiry=settings.invoice_expiry_seconds,
        )
    except (TimeoutError, LndError, OSError) as exc:
        log.error("invoice creation failed: %s", exc)
        raise ApiError(503, "UNAVAILABLE", INVOICE_UNAVAILABLE) from exc
    identifier, root_key = l402.new_identifier(invoice.r_hash), l402.new_root_key()
    now = gw.clock()
    macaroon = l402.mint(
        root_key=root_key,
        identifier=identifier,
        order_id=order_id,
        valid_until=int(now.timestamp()) + credential_lifetime(settings, req.rent_hours),
    )
    expires_at = now + timedelta(seconds=settings.invoice_expiry_seconds)
    order = NewOrder(
        id=order_id,
        type=req.type,
        service=req.service,
        country_id=offer.country_id,
        price_sats=price,
        provider_cost_usd=offer.cost_usd,
        payment_hash=invoice.r_hash,
        payment_request=invoice.payment_request,
        invoice_expires_at=expires_at,
        refund_invoice=refund.payment_request,
        refund_payment_hash=refund.payment_hash,
        rent_hours=req.rent_hours,
        reactivates=req.reactivates,
    )
    try:
        async with gw.stores.transaction() as tx:
            await _open_unpaid(gw, tx, order, new.client)
            await tx.tokens.insert(l402.root_key_id(identifier), root_key, order_id)
            crash_point("gateway.order_invoiced")
    except asyncpg.UniqueViolationError as exc:
        # Two concurrent orders with the same refundInvoice: only one may keep it.
        raise _refund_invoice_in_use() from exc
    log.info("order created", extra={"order_id": order_id})
    return Challenge(order_id, invoice.payment_request, macaroon, price, expires_at)


async def _hold_invoice(
    node: Node, settings: Settings, amount_sats: int, memo: str, hold_seconds: int
) -> tuple[bytes, bytes, AddedInvoice]:
    """A hold invoice on our own fresh preimage: (preimage, payment hash, invoice); 503 when
    the node cannot make it."""
    preimage = secrets.token_bytes(32)
    payment_hash = hashlib.sha256(preimage).digest()
    try:
        invoice = await node.add_hold_invoice(
            payment_hash=payment_hash,
            value_msat=amount_sats * 1000,
            memo=memo,
            expiry=settings.invoice_expiry_seconds,
            cltv_expiry=cltv_expiry_blocks(settings.invoice_expiry_seconds, hold_seconds),
        )
    except (TimeoutError, LndError, OSError) as exc:
        raise ApiError(503, "UNAVAILABLE", INVOICE_UNAVAILABLE) from exc
    return preimage, payment_hash, invoice


async def _classic_offer(
    stores: Stores, market: Market, settings: Settings, new: NewClassicOrder
) -> tuple[Offer, int]:
    """The offer a classic order buys and its price in sats."""
    await ensure_selling(stores.alarms)
    offer = best_offer(market.catalog, new.service, new.country)
    # The quote is what the invoice (or the debit) asks for and what the order row stores.
    return offer, market.price(offer, settings)


async def create_hold_order(gw: Gateway, market: Market, new: NewClassicOrder) -> Invoiced:
    """A classic order paid by a hold invoice, settled only once its code is delivered."""
    settings = gw.settings
    offer, price = await _classic_offer(gw.stores, market, settings, new)
    await unpaid.refuse(gw.stores.orders, settings.max_unpaid_per_client, new.client, gw.clock())
    order_id = secrets.token_hex(32)
    memo = f"sms4sats {new.service} order"
    preimage, payment_hash, invoice = await _hold_invoice(
        gw.node, settings, price, memo, settings.order_timeout_seconds
    )
    order = NewOrder(
        id=order_id,
        type=OrderType.RECEIVE_SMS,
        service=new.service,
        country_id=offer.country_id,
        price_sats=price,
        provider_cost_usd=offer.cost_usd,
        payment_hash=payment_hash,
        payment_request=invoice.payment_request,
        invoice_expires_at=gw.clock() + timedelta(seconds=settings.invoice_expiry_seconds),
        payment_mode=PaymentMode.HOLD,
        preimage=preimage,
    )
    async with gw.stores.transaction() as tx:
        await _open_unpaid(gw, tx, order, new.client)
        crash_point("gateway.hold_order_invoiced")
    return Invoiced(order_id, invoice.payment_request)


async def create_balance_order(pp: Prepaid, market: Market, new: NewClassicOrder) -> Invoiced:
    """A classic order paid from the prepaid balance: debited and paid in one transaction."""
    assert new.account_id is not None
    settings = pp.settings
    offer, price = await _classic_offer(pp.stores, market, settings, new)
    order_id = secrets.token_hex(32)
    order = NewOrder(
        id=order_id,
        type=OrderType.RECEIVE_SMS,
        service=new.service,
        country_id=offer.country_id,
        price_sats=price,
        provider_cost_usd=offer.cost_usd,
        payment_hash=secrets.token_bytes(32),  # no invoice; the column wants a unique hash
        payment_request="paid",
        invoice_expires_at=None,
        payment_mode=PaymentMode.BALANCE,
        account_id=new.account_id,
    )
    try:
        async with pp.stores.transaction() as tx:
            await tx.orders.insert(order)
            if await tx.accounts.move(new.account_id, -price, "order", order_id) is None:
                raise _Insufficient
            await tx.orders.mark_paid(order_id, deadline=settings.order_timeout_seconds)
            crash_point("gateway.balance_debited")
    except _Insufficient:
        raise ApiError(
            402, "PAYMENT_REQUIRED", f"insufficient balance: this order costs {price} sats"
        ) from None
    return Invoiced(order_id, "paid")


async def read_order(
    gw: Gateway, authorization: list[str], order_id: str | None
) -> CredentialedOrder:
    """The order an L402 credential unlocks (and must name, when order_id is given).

    403 for a credential that is not good for it; `StaleCredential` (a 403 too) when the
    token expired or no longer exists.
    """
    try:
        credential = l402.parse_authorization(authorization)
        key_id = l402.root_key_id(credential.identifier.raw)
        found = await gw.stores.tokens.order_for_key(key_id)
        if found is None:
            raise StaleCredential(403, l402.INVALID_MACAROON, "unknown or revoked token")
        if order_id is not None and found.order.id != order_id:
            raise l402.L402Error(l402.INVALID_MACAROON, "token is for another order")
        now = int(gw.clock().timestamp())
        l402.verify(credential, root_key=found.root_key, order_id=found.order.id, now=now)
    except l402.L402Error as exc:
        kind = StaleCredential if exc.code == l402.EXPIRED_MACAROON else ApiError
        raise kind(403, exc.code, exc.message) from exc
    # Order binding twice over: the caveat names the order, the identifier names its invoice.
    if found.order.payment_hash != credential.identifier.payment_hash:
        raise ApiError(403, l402.INVALID_MACAROON, "token is for another invoice")
    return found


async def classic_order(stores: Stores, order_id: str) -> Order | None:
    """The classic (hold or prepaid) order of this id, or None."""
    order = await stores.orders.get(order_id)
    if order is None or order.payment_mode is PaymentMode.STANDARD:
        return None
    return order


async def cancel(gw: Gateway, order: Order, min_age_seconds: float) -> None:
    """Queue the customer's cancel (the workers cancel at the provider, then refund)."""
    try:
        check_customer_cancel(
            order_type=order.type,
            status=order.status,
            paid_at=order.paid_at,
            now=gw.clock(),
            min_age=timedelta(seconds=min_age_seconds),
        )
    except CancelRefused as exc:
        raise _refused(exc) from exc
    async with gw.stores.transaction() as tx:
        await tx.outbox.enqueue(Event(EventType.CANCEL_REQUESTED, order.id))


async def another_sms(gw: Gateway, order: Order) -> None:
    """Queue the customer's request for another SMS on the order's number."""
    try:
        check_another_sms(
            order_type=order.type, status=order.status, payment_mode=order.payment_mode
        )
    except CancelRefused as exc:
        raise _refused(exc) from exc
    async with gw.stores.transaction() as tx:
        await tx.outbox.enqueue(Event(EventType.ANOTHER_SMS_REQUESTED, order.id))


def check_api_key(api_key: str) -> None:
    """Refuse, before any database read, an API key that is missing or could never be ours."""
    if not api_key:
        raise ApiError(400, "VALIDATION_ERROR", "X-API-Key header is required")
    if not plausible_key(api_key):
        # Non-ASCII bytes, control characters, absurd length: no key we issued looks so.
        raise ApiError(401, "UNAUTHORIZED", "unknown or revoked API key")


async def account(pp: Prepaid, api_key: str) -> Account:
    """The prepaid account of an API key; 401 when none is active."""
    check_api_key(api_key)
    found = await pp.stores.accounts.by_key(key_hash(api_key))
    if found is None:
        raise ApiError(401, "UNAUTHORIZED", "unknown or revoked API key")
    return found


async def fund(pp: Prepaid, account_id: int, amount_sats: int) -> Invoiced:
    """A hold invoice that credits the balance once when paid."""
    preimage, payment_hash, invoice = await _hold_invoice(
        pp.node, pp.settings, amount_sats, "sms4sats balance top-up", 0
    )
    funding_id = secrets.token_hex(32)
    crash_point("gateway.funding_invoiced")
    expires_at = pp.clock() + timedelta(seconds=pp.settings.invoice_expiry_seconds)
    await pp.stores.accounts.insert_funding(
        NewFunding(
            funding_id,
            account_id,
            amount_sats,
            payment_hash,
            preimage,
            invoice.payment_request,
            expires_at,
        )
    )
    return Invoiced(funding_id, invoice.payment_request)


async def history(pp: Prepaid, account_id: int) -> list[LedgerEntry]:
    """The account's balance movements, newest first."""
    return await pp.stores.accounts.history(account_id, HISTORY_LIMIT)
