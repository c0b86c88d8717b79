"""The life of a rented number: collect its SMS (polling backs up the webhook), then end it.

Its timing (time left, an early end by the provider and the unused share it refunds, when
to stop waiting for a last poll) is pure policy in `libs.common.domain.activation_policy`,
judged by the database clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from libs.common.adapters import sms
from libs.common.domain.activation_policy import (
    ended_early,
    rent_early_by,
    rent_poll_given_up,
    unused_rent_refund,
)
from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.messages import Message
from libs.common.domain.orders import Order, Status
from libs.common.messaging.bus import Retry
from services.provider.part import ProviderPart

log = logging.getLogger(__name__)


class Rentals(ProviderPart):
    """Polls active rentals for SMS and completes them when their time is up."""

    async def collect(self, order: Order) -> bool:
        """Store the rental's SMS not seen yet; False once the provider says it has ended."""
        if order.activation_id is None:
            return True  # an active rental always has its rent id
        try:
            received = await self._provider.rent_messages(order.activation_id)
        except sms.RentEnded:
            return False
        new = 0
        for m in received:
            msg = Message(m.received_at, m.text, phone_from=m.phone_from)
            new += await self._stores.messages.record(order.id, msg)
        if new:
            log.info("%d rental SMS received by polling", new, extra={"order_id": order.id})
        return True

    async def end(self, order_id: str, *, ended_at_provider: bool = False) -> None:
        """The rental time is up (or the provider ended it): take the last SMS, complete.

        Ended by the provider well before its time, it is refunded the unused share instead.
        """
        order = await self._stores.orders.get(order_id)
        if order is None or order.status is not Status.RENT_ACTIVE or order.rent_ends_at is None:
            return
        ends_at = order.rent_ends_at
        early = rent_early_by(ends_at, await self._stores.orders.now())
        if early > 0 and not ended_at_provider:
            # Too soon (the timer was armed from a rounded time left, or the event came
            # early): the database clock says the rental is still on, so look again later.
            raise Retry("the rental has not ended yet", delay=min(early + 1.0, 60.0))
        try:
            await self.collect(order)
        except sms.ProviderError as exc:
            if exc.transient and not rent_poll_given_up(
                ends_at, await self._stores.orders.now(), self._settings.provider_giveup_seconds
            ):
                raise Retry(f"provider error {exc.code}", delay=5.0) from exc
            log.warning("last rental poll failed (%s)", exc.code, extra={"order_id": order_id})
        if ended_at_provider and ended_early(early):
            if await self._refund_unused(order, early):
                return
        async with self._stores.transaction() as tx:
            done = await tx.orders.complete(
                order_id,
                code_retention=self._settings.code_retention_seconds,
                current=Status.RENT_ACTIVE,
            )
        if done:
            log.info("rental ended", extra={"order_id": order_id})

    async def _refund_unused(self, order: Order, early: float) -> bool:
        """The provider ended the rental `early` seconds before its end: refund the unused time.

        The customer cannot end a rental, so time the provider took away is paid back. False
        when nothing is owed or the order cannot be paid back by a refund payment.
        """
        order_id = order.id
        amount = unused_rent_refund(
            price_sats=order.price_sats,
            rent_hours=order.rent_hours or 0,
            payment_mode=order.payment_mode,
            early_seconds=early,
            poll_interval_seconds=self._settings.rent_poll_interval_seconds,
        )
        if amount <= 0:
            return False
        async with self._stores.transaction() as tx:
            moved = await tx.orders.transition(order_id, Status.RENT_ACTIVE, Status.REFUND_PENDING)
            if moved is None:
                return True  # already ended by another worker
            await tx.timers.cancel(order_id, Timer.RENT_END)
            # The rental's SMS are purged after the retention, as for a completed one.
            await tx.timers.set(order_id, Timer.PURGE_CODE, self._settings.code_retention_seconds)
            # The intent row, with the partial amount, makes the payments worker pay it once.
            await tx.refunds.insert(order_id, amount)
            await tx.outbox.enqueue(Event(EventType.REFUND_REQUESTED, order_id))
        log.warning(
            "the provider ended the rental %.0f s early; refunding %d of %d sats",
            early,
            amount,
            order.price_sats,
            extra={"order_id": order_id},
        )
        return True

    async def poll_forever(self) -> None:
        """Claim due rentals and poll them at the provider until stop."""
        interval = self._settings.rent_poll_interval_seconds

        async def poll_due() -> None:
            orders = await self._stores.orders.claim_rent_poll(50, interval)
            results = await asyncio.gather(
                *(self.collect(o) for o in orders), return_exceptions=True
            )
            for order, result in zip(orders, results, strict=True):
                if result is False:
                    # Over at the provider before its time: nothing more can arrive.
                    with contextlib.suppress(Retry):  # its end timer tries again
                        await self.end(order.id, ended_at_provider=True)
                elif isinstance(result, sms.ProviderError):
                    log.info("rent poll failed: %s", result.code, extra={"order_id": order.id})
                elif isinstance(result, BaseException):
                    log.error("rent poll failed: %r", result, extra={"order_id": order.id})

        await self._every(min(interval, 1.0), poll_due, beat="rent-poller", what="rent poll")
