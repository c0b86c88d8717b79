"""The provider worker on the twin: a scripted SMS provider, a clock the test moves, the stores.

`Twin` builds the worker's parts (`ProviderStage`) over `MemoryStores` and a `FakeSms`, and
hands events to them through the worker's own event table. No PostgreSQL, NATS or HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from libs.common.adapters import sms
from libs.common.core.config import Settings
from libs.common.domain.events import Event, EventType
from libs.common.domain.orders import NewOrder, Order, OrderType, PaymentMode
from libs.common.domain.sms_port import (
    Activation,
    ActivationStatus,
    ActiveActivation,
    Country,
    Offer,
    Rental,
    RentCatalog,
    RentMessage,
    RentOffer,
    Service,
)
from libs.common.messaging.bus import dispatch
from libs.common.persistence.memory import MemoryStores
from services.provider.service import ProviderStage

START = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    """The twin database's clock; only the test moves it."""

    def __init__(self, at: datetime = START) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.at += timedelta(seconds=seconds)


@dataclass
class FakeSms:
    """An SMS provider that answers what the test scripted and records what it was asked."""

    clock: Clock
    price_usd: Decimal = Decimal("0.50")
    balance: Decimal = Decimal("10")
    # The next error each action raises (kept until cleared), by action name.
    errors: dict[str, sms.ProviderError] = field(default_factory=dict)
    # What a poll answers, by activation id (default: still waiting).
    statuses: dict[str, ActivationStatus] = field(default_factory=dict)
    # A status the next poll of that activation switches to *after* answering (late SMS).
    after_poll: dict[str, ActivationStatus] = field(default_factory=dict)
    rent_offers_listed: bool = True
    rent_inbox: dict[str, list[RentMessage]] = field(default_factory=dict)
    ended_rentals: set[str] = field(default_factory=set)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    # Activations bought (or reactivated) and not ended: what the bulk answer lists.
    active: list[str] = field(default_factory=list)
    # Activations the bulk answer leaves out although active (a short or lagging answer).
    unlisted: set[str] = field(default_factory=set)
    _next: int = 0

    def _call(self, action: str, arg: Any = None) -> None:
        self.calls.append((action, arg))
        if action in self.errors:
            raise self.errors[action]

    def called(self, action: str) -> list[Any]:
        """The arguments of every call of one action, in order."""
        return [arg for name, arg in self.calls if name == action]

    def _new_id(self) -> str:
        self._next += 1
        activation_id = f"act-{self._next}"
        self.active.append(activation_id)
        return activation_id

    async def buy(
        self, *, service: str, country_id: int, max_price_usd: Decimal | None = None
    ) -> Activation:
        """Buy a number, refusing one above max_price_usd as HeroSMS does."""
        self._call("buy", max_price_usd)
        if max_price_usd is not None and self.price_usd > max_price_usd:
            raise sms.PriceTooLow(detail=f"price {self.price_usd}")
        return Activation(self._new_id(), "+15550100", self.price_usd, country_id, None)

    async def poll(self, activation_id: str) -> ActivationStatus:
        """The scripted status (waiting unless told)."""
        self._call("poll", activation_id)
        status = self.statuses.get(activation_id, ActivationStatus("waiting"))
        if activation_id in self.after_poll:
            self.statuses[activation_id] = self.after_poll.pop(activation_id)
        return status

    async def active_activations(self) -> list[ActiveActivation]:
        """The bulk answer: every active activation with its latest SMS, as poll would say.

        Ended ones (cancelled, finished) are not listed, as at the real provider.
        """
        self._call("active_activations")
        listed = []
        for activation_id in self.active:
            status = self.statuses.get(activation_id, ActivationStatus("waiting"))
            if status.state == "cancelled" or activation_id in self.unlisted:
                continue
            listed.append(
                ActiveActivation(activation_id, status.state, "+15550100", status.code, status.text)
            )
        return listed

    async def request_another(self, activation_id: str) -> None:
        """Ask for another SMS."""
        self._call("request_another", activation_id)
        self.statuses[activation_id] = ActivationStatus("retry_wait")

    async def finish(self, activation_id: str) -> None:
        """Finish an activation (it leaves the bulk answer)."""
        self._call("finish", activation_id)
        if activation_id in self.active:
            self.active.remove(activation_id)

    async def cancel(self, activation_id: str) -> None:
        """Cancel an activation (refused once an SMS came, as the provider does)."""
        self._call("cancel", activation_id)
        if self.statuses.get(activation_id, ActivationStatus("waiting")).state == "received":
            raise sms.CodeAlreadyReceived()
        self.statuses[activation_id] = ActivationStatus("cancelled")

    async def report_bad(self, activation_id: str) -> None:
        """Not used by the worker."""
        raise NotImplementedError

    async def reactivate(self, activation_id: str) -> Activation:
        """A new activation on the same number, at today's price."""
        self._call("reactivate", activation_id)
        return Activation(self._new_id(), "+15550100", self.price_usd, 187, None)

    async def prices(
        self, *, service: str | None = None, country_id: int | None = None
    ) -> list[Offer]:
        """Not used by the worker."""
        raise NotImplementedError

    async def countries(self) -> list[Country]:
        """Not used by the worker."""
        raise NotImplementedError

    async def services(self) -> list[Service]:
        """Not used by the worker."""
        raise NotImplementedError

    async def balance_usd(self) -> Decimal:
        """The account balance."""
        self._call("balance_usd")
        return self.balance

    async def rent_offers(self, hours: int, country: int | None = None) -> RentCatalog:
        """One offer for tg at today's price (unless told none is listed)."""
        self._call("rent_offers", hours)
        offers = [RentOffer(country or 187, "tg", hours, self.price_usd, 5)]
        return RentCatalog([187], offers if self.rent_offers_listed else [])

    async def rent(
        self, *, service: str, country: int, hours: int, webhook_url: str | None = None
    ) -> Rental:
        """Rent a number until `hours` from the clock's now."""
        self._call("rent", hours)
        rent_id = self._new_id()
        self.rent_inbox[rent_id] = []
        return Rental(rent_id, "+15550200", self.clock() + timedelta(hours=hours))

    async def rent_messages(self, rent_id: str) -> list[RentMessage]:
        """The rental's SMS so far; RentEnded once it is over."""
        self._call("rent_messages", rent_id)
        if rent_id in self.ended_rentals:
            raise sms.RentEnded()
        return list(self.rent_inbox.get(rent_id, []))

    async def finish_rent(self, rent_id: str) -> None:
        """Not used by the worker."""
        raise NotImplementedError

    async def cancel_rent(self, rent_id: str) -> None:
        """Cancel a rental."""
        self._call("cancel_rent", rent_id)

    async def close(self) -> None:
        """Nothing to close."""


class Twin:
    """The provider worker's parts over the twin stores and a fake provider."""

    def __init__(self, **settings: Any) -> None:
        self.clock = Clock()
        self.stores = MemoryStores(self.clock, "orders")
        self.sms = FakeSms(self.clock)
        self.settings = dataclasses.replace(Settings(), **settings)
        self.stop = asyncio.Event()
        self.stage = ProviderStage.build(self.stores, self.settings, self.sms, self.stop)
        self._handle = dispatch("provider", self.stage.actions())
        # The poller's process clock (BadAction is remembered by it), moved by bulk_round.
        self.monotonic = 0.0

    async def event(self, kind: EventType, order_id: str) -> None:
        """Hand one event to the worker's event table, as its consumer does."""
        await self._handle(Event(kind, order_id))

    async def paid(
        self,
        *,
        type_: OrderType = OrderType.RECEIVE_SMS,
        mode: PaymentMode = PaymentMode.STANDARD,
        cost_usd: str = "1.00",
        price_sats: int = 2500,
        **extra: Any,
    ) -> str:
        """A paid order (its SMS deadline armed), as the payments worker leaves it."""
        standard = mode is PaymentMode.STANDARD
        new = NewOrder(
            id=str(uuid.uuid4()),
            type=type_,
            service="tg",
            country_id=187,
            price_sats=price_sats,
            provider_cost_usd=Decimal(cost_usd),
            payment_hash=uuid.uuid4().bytes * 2,
            payment_request="lnbcrt1",
            invoice_expires_at=self.clock() + timedelta(minutes=10),
            payment_mode=mode,
            refund_invoice="lnbcrt1refund" if standard else None,
            refund_payment_hash=uuid.uuid4().bytes * 2 if standard else None,
            **extra,
        )
        await self.stores.orders.insert(new)
        async with self.stores.transaction() as tx:
            assert await tx.orders.mark_paid(new.id, deadline=self.settings.order_timeout_seconds)
        return new.id

    async def order(self, order_id: str) -> Order:
        """The order as stored now."""
        order = await self.stores.orders.get(order_id)
        assert order is not None
        return order

    async def waiting(self, **kind: Any) -> Order:
        """A paid order that got its number."""
        order_id = await self.paid(**kind)
        await self.event(EventType.PAID, order_id)
        order = await self.order(order_id)
        assert order.activation_id is not None
        return order

    def sms_arrives(self, activation_id: str | None, code: str) -> None:
        """An SMS reaches the provider's number."""
        assert activation_id is not None
        self.sms.statuses[activation_id] = ActivationStatus("received", code, f"Your code {code}")

    async def bulk_round(self) -> None:
        """One round of the bulk poller, its turn due (the clock moved past the interval)."""
        self.clock.advance(self.stage.watch.interval())
        self.monotonic += self.stage.watch.interval()
        await self.stage.watch.poll_round(self.monotonic)

    async def poll_once(self) -> list[str]:
        """One round of the SMS poller; returns the ids it polled."""
        orders = await self.stores.orders.claim_sms_poll(
            50, self.settings.sms_poll_interval_seconds
        )
        for order in orders:
            await self.stage.watch.check(order)
        return [o.id for o in orders]

    def event_types(self, order_id: str) -> list[EventType]:
        """The events written for one order, oldest first."""
        return [e.type for e in self.stores.events() if e.order_id == order_id]
