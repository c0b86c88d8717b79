"""Getting a number for a paid order: buy, reactivate or rent, under one allocation policy.

The policy (`libs.common.domain.activation_policy`): never pay the provider more than the
quote x PRICE_MULTIPLIER; a permanent error refunds the order; a transient one is retried
until the allocation deadline, judged by the database clock.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

from libs.common.adapters import sms
from libs.common.core.config import Settings
from libs.common.core.faults import crash_point
from libs.common.domain.activation_policy import price_cap, rent_seconds_left, retry_allocation
from libs.common.domain.events import Timer
from libs.common.domain.orders import Order, OrderType, Status
from libs.common.messaging.bus import Retry
from libs.common.persistence.order_store import NOW
from libs.common.persistence.ports import Stores
from services.provider.balance_alarm import BalanceAlarm
from services.provider.outcomes import no_number
from services.provider.part import ProviderPart

log = logging.getLogger(__name__)


class Allocation(ProviderPart):
    """Moves a paid order to waiting_for_sms (or rent_active) with a number, or to refund."""

    def __init__(
        self,
        stores: Stores,
        settings: Settings,
        provider: sms.SmsProvider,
        stop: asyncio.Event,
        *,
        alarm: BalanceAlarm,
    ) -> None:
        super().__init__(stores, settings, provider, stop)
        # A purchase refused for NO_BALANCE raises it.
        self._alarm = alarm

    async def allocate(self, order_id: str) -> None:
        """Get a number for a paid order (buy, reactivate or rent), or send it to refund."""
        async with self._stores.transaction() as tx:
            order = await tx.orders.get(order_id)
            if order is None:
                return
            if order.status is Status.PAID:
                order = await tx.orders.transition(order_id, Status.PAID, Status.ALLOCATING_NUMBER)
        if order is None or order.status is not Status.ALLOCATING_NUMBER:
            return  # a duplicate of an event already handled
        if order.type is OrderType.RENT_NUMBER:
            await self._rent(order)
            return
        try:
            activation = await self._obtain(order)
        except sms.ProviderError as exc:
            await self._failed(order, exc)
            return
        crash_point("provider.number_bought")
        async with self._stores.transaction() as tx:
            moved = await tx.orders.transition(
                order_id,
                Status.ALLOCATING_NUMBER,
                Status.WAITING_FOR_SMS,
                activation_id=activation.id,
                phone_number=activation.phone,
                next_poll_at=NOW,
            )
        if moved is None:
            # Another delivery won the race; this second number is not needed. The provider
            # may refuse an early cancel; it refunds unused activations when they expire.
            log.warning(
                "spare activation bought; trying to cancel it", extra={"order_id": order_id}
            )
            await self._cancel_quietly(activation.id)
            return
        log.info("number allocated", extra={"order_id": order_id})

    def _cap(self, order: Order) -> Decimal:
        """The most we pay the provider for this order."""
        return price_cap(order.provider_cost_usd, self._settings.price_multiplier)

    async def _obtain(self, order: Order) -> sms.Activation:
        """Buy a new activation, or reactivate the earlier order's number."""
        if order.type is OrderType.RECEIVE_SMS_REACTIVATE:
            return await self._reactivate(order)
        # Never pay the provider more than the customer paid us.
        return await self._provider.buy(
            service=order.service, country_id=order.country_id, max_price_usd=self._cap(order)
        )

    async def _reactivate(self, order: Order) -> sms.Activation:
        """Reactivate the number of the order this one reactivates, within our quote."""
        earlier = (
            None if order.reactivates is None else await self._stores.orders.get(order.reactivates)
        )
        if earlier is None or not earlier.activation_id:
            raise sms.NotFound("NO_ACTIVATION", detail="the earlier activation is unknown")
        if earlier.finish_due_at is not None:
            await self._finish_before_reactivating(earlier.id, earlier.activation_id)
        activation = await self._provider.reactivate(earlier.activation_id)
        # `reactivate` takes no maxPrice: check the cost it reports against our quote.
        if activation.cost_usd > self._cap(order):
            log.warning(
                "reactivation cost %s USD is above the quote; cancelling it",
                activation.cost_usd,
                extra={"order_id": order.id},
            )
            # Unused activations the provider refuses to cancel now are refunded to us when
            # they expire.
            await self._cancel_quietly(activation.id)
            raise sms.PriceTooLow(detail=f"reactivation cost {activation.cost_usd} USD")
        return activation

    async def _finish_before_reactivating(self, earlier_id: str, activation_id: str) -> None:
        """Finish the earlier activation now: the provider reactivates only a finished one, and
        its housekeeping finish may not have run yet (a provider error here is the purchase's:
        transient ones retry, others refund)."""
        try:
            await self._provider.finish(activation_id)
        except (sms.ActivationNotActive, sms.NotFound):
            pass  # already over at the provider
        await self._stores.orders.finish_done(earlier_id)

    async def _check_rent_price(self, order: Order, hours: int) -> None:
        """Refuse (PriceTooLow) to rent when the provider's current price is above our quote.

        getRentNumber takes no maxPrice and its reply names no price, so the price list is
        read right before renting; a number not listed for this service counts as none.
        """
        offers = await self._provider.rent_offers(hours, order.country_id)
        listed = [
            o.cost_usd for o in offers.offers if o.service == order.service and o.hours == hours
        ]
        if not listed:
            raise sms.NoNumbers(detail="no rent offer listed for the service")
        if min(listed) > self._cap(order):
            raise sms.PriceTooLow(detail=f"rent price {min(listed)} USD")

    async def _failed(self, order: Order, exc: sms.ProviderError) -> None:
        """A failed purchase: a transient error is retried until the deadline, others refund."""
        if isinstance(exc, sms.InsufficientBalance):
            await self._alarm.raise_(order.provider_cost_usd)
        if retry_allocation(
            transient=exc.transient,
            paid_at=order.paid_at,
            now=await self._stores.orders.now(),
            deadline_seconds=self._settings.allocation_deadline_seconds,
        ):
            raise Retry(f"provider error {exc.code}", delay=3.0) from exc
        await no_number(self._stores, order.id, exc.code)

    async def _rent(self, order: Order) -> None:
        """Rent a number for the order's hours; SMS then arrive by webhook and polling."""
        order_id = order.id
        hours = order.rent_hours or 0  # every rent-number order has its hours
        try:
            await self._check_rent_price(order, hours)
            rental = await self._provider.rent(
                service=order.service,
                country=order.country_id,
                hours=hours,
                webhook_url=self._settings.webhook_url(),
            )
        except sms.ProviderError as exc:
            await self._failed(order, exc)
            return
        crash_point("provider.number_bought")
        async with self._stores.transaction() as tx:
            # The end timer counts from the database's now, the clock it fires by.
            seconds = rent_seconds_left(rental.ends_at, await tx.orders.now())
            moved = await tx.orders.transition(
                order_id,
                Status.ALLOCATING_NUMBER,
                Status.RENT_ACTIVE,
                activation_id=rental.rent_id,
                phone_number=rental.phone,
                rent_ends_at=rental.ends_at,
                # The rental, not the SMS timeout, is what the order now waits for.
                deadline_at=rental.ends_at,
                next_poll_at=NOW,
            )
            if moved is not None:
                await tx.timers.cancel(order_id, Timer.SMS_TIMEOUT)
                await tx.timers.set(order_id, Timer.RENT_END, seconds)
        if moved is None:
            log.warning("spare rental; cancelling it", extra={"order_id": order_id})
            try:
                await self._provider.cancel_rent(rental.rent_id)
            except sms.ProviderError as cancel_exc:
                log.info("could not cancel spare rental: %s", cancel_exc.code)
            return
        log.info("number rented", extra={"order_id": order_id})

    async def _cancel_quietly(self, activation_id: str) -> None:
        """Best-effort cancel of an activation nobody needs (the provider refunds unused ones)."""
        try:
            await self._provider.cancel(activation_id)
        except sms.ProviderError as exc:
            log.info("could not cancel spare activation: %s", exc.code)
