"""The gateway's use cases on the in-memory twin, with a fake Lightning node: no servers.

Creation writes the order, its credential, its invoice-expiry timer and its `created` event
in one transaction (or nothing); the unpaid cap, cancel, another SMS and reactivation refuse
what the rules refuse, with the API error each API answers.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from libs.common.adapters.lightning import AddedInvoice, LndError
from libs.common.core.config import Settings
from libs.common.domain.alarms import Alarm
from libs.common.domain.countries import AUTO, Country, CountryIndex, Offer
from libs.common.domain.events import EventType, Timer
from libs.common.domain.orders import NewOrder, Order, OrderType, PaymentMode, Status
from libs.common.domain.refund_invoices import RefundInvoice
from libs.common.persistence.catalog_store import Catalog, ServiceRow
from libs.common.persistence.memory import MemoryStores
from services.gateway import usecases
from services.gateway.errors import ApiError
from services.gateway.order_requests import OrderRequest
from services.gateway.usecases import Gateway, Market, NewClassicOrder, NewL402Order

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CLIENT = "198.51.100.4"
US = Country(187, "USA", "US")
CATALOG = Catalog(
    countries=CountryIndex([US]),
    services=[ServiceRow("tg", "Telegram")],
    offers=[Offer(187, "tg", Decimal("0.10"), 5)],
    refreshed_at=T0,
)
SETTINGS = Settings(max_unpaid_per_client=2, invoice_expiry_seconds=600)


class FakeNode:
    """A Lightning node that makes invoices on preimages it remembers."""

    def __init__(self) -> None:
        self.preimages: dict[bytes, bytes] = {}
        self.cancelled: list[bytes] = []
        self.fail = False
        # Runs when an invoice is made: a concurrent request's work can happen here.
        self.on_invoice: Callable[[], Awaitable[None]] | None = None

    async def _made(self, payment_hash: bytes) -> AddedInvoice:
        if self.fail:
            raise LndError("node down")
        if self.on_invoice is not None:
            await self.on_invoice()
        return AddedInvoice(payment_hash, f"lnbcrt{payment_hash.hex()[:12]}", 1, b"a" * 32)

    async def add_invoice(self, *, value_msat: int, memo: str, expiry: int) -> AddedInvoice:
        """A standard invoice."""
        preimage = secrets.token_bytes(32)
        payment_hash = hashlib.sha256(preimage).digest()
        self.preimages[payment_hash] = preimage
        return await self._made(payment_hash)

    async def add_hold_invoice(
        self, *, payment_hash: bytes, value_msat: int, memo: str, expiry: int, cltv_expiry: int
    ) -> AddedInvoice:
        """A hold invoice on the caller's hash."""
        return await self._made(payment_hash)

    async def cancel_invoice(self, payment_hash: bytes, *, money: bool = True) -> None:
        """Remember the cancel."""
        self.cancelled.append(payment_hash)


class World:
    """The twin, the fake node and a clock the test moves."""

    def __init__(self, settings: Settings = SETTINGS) -> None:
        self.now = T0
        self.stores = MemoryStores(lambda: self.now)
        self.node = FakeNode()
        self.gw = Gateway(self.stores, self.node, settings, lambda: self.now)
        self.rate: Decimal | None = Decimal("100000")  # None: too stale to quote with

    def market(self) -> Market:
        """The catalog at the current rate."""

        def rate() -> Decimal:
            if self.rate is None:
                raise ApiError(503, "UNAVAILABLE", "the BTC/USD rate is out of date")
            return self.rate

        return Market(CATALOG, rate)

    async def order(self, **changes: object) -> Order:
        """An order in the twin (pending, standard, receive-sms unless told)."""
        new = NewOrder(
            id=str(uuid.uuid4()),
            type=OrderType.RECEIVE_SMS,
            service="tg",
            country_id=187,
            price_sats=100,
            provider_cost_usd=Decimal("0.10"),
            payment_hash=secrets.token_bytes(32),
            payment_request="lnbcrt1",
            invoice_expires_at=self.now + timedelta(minutes=10),
            refund_invoice="lnbcrt1refund",
            refund_payment_hash=secrets.token_bytes(32),
        )
        order = await self.stores.orders.insert(new)
        order = replace(order, **changes)  # type: ignore[arg-type]
        self.stores.state.orders[order.id] = order
        return order


def refund_invoice() -> RefundInvoice:
    """A refund invoice nobody uses yet."""
    return RefundInvoice("lnbcrt1refund", secrets.token_bytes(32), 2_000_000_000, "02" * 33)


def receive_sms(**changes: object) -> NewL402Order:
    """An L402 receive-sms order for tg in the US."""
    req = OrderRequest(OrderType.RECEIVE_SMS, US, "tg", refund_invoice())
    return replace(NewL402Order(req, CLIENT), **changes)  # type: ignore[arg-type]


def reactivate(earlier_id: str, owned: Order | None) -> NewL402Order:
    """An L402 reactivation of earlier_id, with the credential of `owned`."""
    req = OrderRequest(
        OrderType.RECEIVE_SMS_REACTIVATE, AUTO, "", refund_invoice(), reactivates=earlier_id
    )
    return NewL402Order(req, CLIENT, owned)


async def refusal(call: Awaitable[object]) -> tuple[int, str]:
    """(status, code) of the ApiError the call raises."""
    with pytest.raises(ApiError) as info:
        await call
    return info.value.status, info.value.code


async def test_creation_writes_order_credential_timer_and_event_together() -> None:
    w = World()
    created = await usecases.create_l402_order(w.gw, w.market(), receive_sms())
    order = w.stores.state.orders[created.order_id]
    assert order.status is Status.PENDING_PAYMENT and order.payment_mode is PaymentMode.STANDARD
    assert order.price_sats == created.price_sats and order.client_addr == CLIENT
    assert order.invoice_expires_at == created.expires_at == T0 + timedelta(seconds=600)
    assert w.stores.timer_due(order.id, Timer.INVOICE_EXPIRED) == created.expires_at
    assert [(e.type, e.order_id) for e in w.stores.events()] == [(EventType.CREATED, order.id)]
    # The macaroon it answers unlocks the order, once paid (the preimage proves payment).
    preimage = w.node.preimages[order.payment_hash].hex()
    header = [f"L402 {created.macaroon}:{preimage}"]
    found = await usecases.read_order(w.gw, header, order.id)
    assert found.order == order and found.refund is None and found.messages == []
    assert await refusal(usecases.read_order(w.gw, header, str(uuid.uuid4()))) == (
        403,
        "INVALID_MACAROON",
    )


async def test_a_failed_creation_leaves_nothing_behind() -> None:
    w = World()
    w.node.fail = True
    assert await refusal(usecases.create_l402_order(w.gw, w.market(), receive_sms())) == (
        503,
        "UNAVAILABLE",
    )
    assert w.stores.state.orders == {} and w.stores.events() == []
    assert w.stores.state.tokens == {}


async def test_a_creation_that_fails_midway_writes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = World()

    async def broken(key_id: bytes, root_key: bytes, order_id: str) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(w.stores.tokens, "insert", broken)
    with pytest.raises(RuntimeError):
        await usecases.create_l402_order(w.gw, w.market(), receive_sms())
    # The order, its timer and its event went with the token: one transaction.
    assert w.stores.state.orders == {} and w.stores.state.timers == {}
    assert w.stores.events() == []


async def test_a_client_at_the_unpaid_cap_gets_429_before_any_invoice() -> None:
    w = World()
    for _ in range(2):
        await usecases.create_l402_order(w.gw, w.market(), receive_sms())
    w.node.fail = True  # an invoice asked for now would be a 503, not the 429
    assert await refusal(usecases.create_l402_order(w.gw, w.market(), receive_sms())) == (
        429,
        "RATE_LIMITED",
    )
    # Another address has its own slots.
    w.node.fail = False
    await usecases.create_l402_order(w.gw, w.market(), receive_sms(client="203.0.113.9"))
    # An order whose invoice expired frees its slot.
    w.now += timedelta(seconds=601)
    await usecases.create_l402_order(w.gw, w.market(), receive_sms())


async def test_losing_the_race_for_the_last_slot_cancels_the_invoice_and_inserts_nothing() -> None:
    w = World()
    await usecases.create_l402_order(w.gw, w.market(), receive_sms())

    async def a_concurrent_create_takes_the_last_slot() -> None:
        w.node.on_invoice = None
        await usecases.create_l402_order(w.gw, w.market(), receive_sms())

    w.node.on_invoice = a_concurrent_create_takes_the_last_slot
    before = set(w.stores.state.orders)
    with pytest.raises(ApiError) as info:
        await usecases.create_l402_order(w.gw, w.market(), receive_sms())
    assert info.value.status == 429 and int(info.value.headers["Retry-After"]) == 600
    assert len(w.stores.state.orders) == len(before) + 1  # only the concurrent one
    lost = [
        h
        for h in w.node.preimages
        if h not in {o.payment_hash for o in w.stores.state.orders.values()}
    ]
    assert w.node.cancelled == lost and len(lost) == 1
    assert len(w.stores.events(EventType.CREATED)) == 2


async def test_a_refund_invoice_is_used_by_one_order_only() -> None:
    w = World()
    first = receive_sms()
    await usecases.create_l402_order(w.gw, w.market(), first)
    w.rate = None  # a stale rate: the refusal comes before pricing all the same
    again = receive_sms(request=first.request, client="203.0.113.9")
    assert await refusal(usecases.create_l402_order(w.gw, w.market(), again)) == (
        400,
        "INVALID_REFUND_INVOICE",
    )


async def test_no_order_is_taken_while_the_provider_has_no_balance() -> None:
    w = World()
    await w.stores.alarms.raise_(Alarm.NO_BALANCE, "empty")
    new = NewClassicOrder("tg", US, CLIENT)
    assert await refusal(usecases.create_hold_order(w.gw, w.market(), new)) == (503, "UNAVAILABLE")
    assert await refusal(usecases.create_l402_order(w.gw, w.market(), receive_sms())) == (
        503,
        "UNAVAILABLE",
    )
    assert w.stores.state.orders == {} and w.node.preimages == {}


async def test_a_hold_order_keeps_our_preimage_and_is_announced() -> None:
    w = World()
    created = await usecases.create_hold_order(
        w.gw, w.market(), NewClassicOrder("tg", AUTO, CLIENT)
    )
    order = w.stores.state.orders[created.order_id]
    assert order.payment_mode is PaymentMode.HOLD and order.preimage is not None
    assert hashlib.sha256(order.preimage).digest() == order.payment_hash
    assert order.refund_invoice is None and order.client_addr == CLIENT
    assert created.payment_request == order.payment_request
    assert w.stores.timer_due(order.id, Timer.INVOICE_EXPIRED) == T0 + timedelta(seconds=600)
    assert [e.type for e in w.stores.events()] == [EventType.CREATED]


async def test_only_the_owner_of_a_completed_order_may_reactivate_it() -> None:
    w = World()
    earlier = await w.order(status=Status.COMPLETED, activation_id="77", service="tg")
    stranger = await w.order(status=Status.COMPLETED, activation_id="78")
    for owned in (None, stranger):
        call = usecases.create_l402_order(w.gw, w.market(), reactivate(earlier.id, owned))
        assert await refusal(call) == (403, "INVALID_MACAROON")
    created = await usecases.create_l402_order(w.gw, w.market(), reactivate(earlier.id, earlier))
    again = w.stores.state.orders[created.order_id]
    assert again.reactivates == earlier.id and again.type is OrderType.RECEIVE_SMS_REACTIVATE
    assert (again.service, again.country_id) == (earlier.service, earlier.country_id)
    # Paid and not over yet: a second reactivation must wait.
    w.stores.state.orders[again.id] = replace(again, status=Status.WAITING_FOR_SMS)
    call = usecases.create_l402_order(w.gw, w.market(), reactivate(earlier.id, earlier))
    assert await refusal(call) == (409, "UNAVAILABLE")


async def test_cancel_refusals_and_the_request() -> None:
    w = World()
    rental = await w.order(type=OrderType.RENT_NUMBER, status=Status.RENT_ACTIVE, paid_at=T0)
    assert await refusal(usecases.cancel(w.gw, rental, 60)) == (400, "VALIDATION_ERROR")
    waiting = await w.order(status=Status.WAITING_FOR_SMS, paid_at=T0)
    assert await refusal(usecases.cancel(w.gw, waiting, 60)) == (409, "CANCEL_TOO_SOON")
    arrived = await w.order(status=Status.CODE_RECEIVED, paid_at=T0)
    assert await refusal(usecases.cancel(w.gw, arrived, 0)) == (409, "CANCEL_SMS_RECEIVED")
    assert w.stores.events() == []
    w.now += timedelta(seconds=61)
    await usecases.cancel(w.gw, waiting, 60)
    assert [(e.type, e.order_id) for e in w.stores.events()] == [
        (EventType.CANCEL_REQUESTED, waiting.id)
    ]


async def test_another_sms_refusals_and_the_request() -> None:
    w = World()
    hold = await w.order(status=Status.CODE_RECEIVED, payment_mode=PaymentMode.HOLD)
    assert await refusal(usecases.another_sms(w.gw, hold)) == (400, "VALIDATION_ERROR")
    waiting = await w.order(status=Status.WAITING_FOR_SMS)
    assert await refusal(usecases.another_sms(w.gw, waiting)) == (409, "ANOTHER_SMS_NOT_ALLOWED")
    assert w.stores.events() == []
    arrived = await w.order(status=Status.CODE_RECEIVED)
    await usecases.another_sms(w.gw, arrived)
    assert [(e.type, e.order_id) for e in w.stores.events()] == [
        (EventType.ANOTHER_SMS_REQUESTED, arrived.id)
    ]


async def test_only_classic_orders_are_found_by_the_classic_api() -> None:
    w = World()
    standard = await w.order()
    hold = await w.order(payment_mode=PaymentMode.HOLD)
    assert await usecases.classic_order(w.stores, standard.id) is None
    assert await usecases.classic_order(w.stores, hold.id) == hold
    assert await usecases.classic_order(w.stores, "f" * 64) is None
