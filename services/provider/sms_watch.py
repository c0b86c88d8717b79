"""Watching activations for their SMS: the bulk poll, its per-activation fallback, another SMS.

Each round one replica (per provider account and interval, claimed in PostgreSQL) asks the
provider for every active activation at once (getActiveActivations), matches the answer to
our orders in one query, and hands every new SMS to the SMS arrival use case, which the
activation webhook uses too: whoever sees an SMS first records it, exactly once. Activations
the answer lacks are polled one by one, a few per round (that is also how a cancel or an
expiry at the provider is seen); a provider without the bulk action is polled per order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from libs.common.adapters import sms
from libs.common.core.config import Settings
from libs.common.domain.orders import Order, Status
from libs.common.domain.sms_port import ActiveActivation
from libs.common.messaging.bus import Retry
from libs.common.persistence.ports import Stores
from libs.common.usecases.sms_arrival import SmsArrival, provider_account
from services.provider.outcomes import no_sms
from services.provider.part import ProviderPart

log = logging.getLogger(__name__)

# How often each replica asks whether the bulk poll's turn is due (the claim decides who polls:
# one call per account and interval, whatever the number of replicas).
TURN_TICK_SECONDS = 0.25
# Activations the bulk answer lacked, polled one by one per round: bounded, so a provider
# whose answer is short never turns a round into a burst of getStatus calls.
MISSING_PER_ROUND = 10
# Orders polled one by one per round when the provider has no bulk action (today's pace:
# under the account's limit with one replica).
PER_ORDER_BATCH = 50
# A provider that answered BAD_ACTION to the bulk call is polled per order this long before
# the bulk call is tried again (an upgrade at the provider is then picked up).
BULK_UNSUPPORTED_SECONDS = 600.0
# New SMS of one round recorded at once (each a short transaction on its own connection).
ARRIVALS_AT_ONCE = 8


class SmsWatch(ProviderPart):
    """Drives orders through waiting_for_sms and code_received: the code, and another one."""

    def __init__(
        self, stores: Stores, settings: Settings, provider: sms.SmsProvider, stop: asyncio.Event
    ) -> None:
        super().__init__(stores, settings, provider, stop)
        self.arrival = SmsArrival(stores, settings)
        self._account = provider_account(settings)
        # Monotonic time until which the provider is taken to lack the bulk action.
        self._bulk_off_until = 0.0
        self._next_per_order = 0.0

    def interval(self) -> float:
        """Seconds between polls of one activation: quick, or a safety net behind webhooks."""
        if self._settings.activation_webhooks:
            return self._settings.sms_safety_poll_seconds
        return self._settings.sms_poll_interval_seconds

    async def check(self, order: Order) -> None:
        """Poll one order at the provider and act on what it says."""
        if order.status is Status.CODE_RECEIVED and order.another_sms_at is None:
            # Only a row left polling by an older release (which finished before completing)
            # gets here: its code stage is over.
            await self.close(order.id)
            return
        if order.activation_id is None:
            return  # polled orders always have their number
        try:
            status = await self._provider.poll(order.activation_id)
        except sms.ProviderError as exc:
            log.info("poll failed: %s", exc.code, extra={"order_id": order.id})
            return
        if status.state == "received" and status.code:
            await self.arrival.arrived(order, status.code, status.text, source="getStatus")
        elif status.state == "cancelled" and order.status is Status.WAITING_FOR_SMS:
            # The provider ended the activation on its own (expiry); nothing can arrive now.
            await no_sms(self._stores, order, "provider cancelled the activation")

    async def deliver(self, order_id: str, code: str, text: str | None) -> bool:
        """Record a waiting order's first code (the arrival use case; see SmsArrival.deliver)."""
        order = await self._stores.orders.get(order_id)
        if order is None or order.status is not Status.WAITING_FOR_SMS:
            return False
        return await self.arrival.arrived(order, code, text, source="getStatus")

    async def request_another(self, order_id: str) -> None:
        """The customer asked for another SMS on the same number (setStatus 3)."""
        order = await self._stores.orders.get(order_id)
        if order is None or order.status is not Status.CODE_RECEIVED or not order.activation_id:
            return  # the window closed meanwhile; the gateway already answered 202
        try:
            await self._provider.request_another(order.activation_id)
        except (sms.ActivationNotActive, sms.NotFound) as exc:
            log.info("another SMS refused: %s", exc.code, extra={"order_id": order_id})
            return
        except sms.ProviderError as exc:
            if exc.transient:
                raise Retry(f"provider error {exc.code}", delay=3.0) from exc
            log.info("another SMS refused: %s", exc.code, extra={"order_id": order_id})
            return
        await self._stores.orders.reopen_for_another_sms(order_id)
        log.info("another SMS requested", extra={"order_id": order_id})

    async def close(self, order_id: str) -> None:
        """The code stage is over (the another-SMS window closed): complete the order now.

        Whatever the provider says: the code was delivered, and finishing the activation is
        housekeeping that follows. A hold order is completed by the payments worker after
        its settle instead; here it only stops being polled and gets its finish armed.
        """
        async with self._stores.transaction() as tx:
            order = await tx.orders.get(order_id)
            if order is None or order.status is not Status.CODE_RECEIVED:
                return
            await tx.orders.stop_polling(order_id)
            if order.is_hold:
                await tx.orders.arm_finish(order_id)
                done = False
            else:
                done = await self.arrival.complete(tx, order_id)
        if done:
            log.info("order completed", extra={"order_id": order_id})

    async def poll_round(self, monotonic: float | None = None) -> None:
        """One tick of the poller: the bulk poll if this replica has the account's turn.

        When the provider lacks the bulk action, every order is polled by itself instead, as
        before bulk polling existed (remembered for BULK_UNSUPPORTED_SECONDS).
        """
        now = time.monotonic() if monotonic is None else monotonic
        interval = self.interval()
        if now >= self._bulk_off_until:
            if not await self._stores.orders.claim_bulk_poll(self._account, interval):
                return  # another replica (or this one, earlier) has this interval's turn
            try:
                active = await self._provider.active_activations()
            except sms.BadAction:
                log.warning("the provider has no bulk status; polling each activation")
                self._bulk_off_until = now + BULK_UNSUPPORTED_SECONDS
            except sms.ProviderError as exc:
                log.info("bulk poll failed: %s", exc.code)
                return
            else:
                await self._bulk(active, interval)
                return
        if now >= self._next_per_order:
            # Per-order polling keeps its own pace (per replica, as before bulk polling).
            self._next_per_order = now + min(interval, 1.0)
            orders = await self._stores.orders.claim_sms_poll(PER_ORDER_BATCH, interval)
            await asyncio.gather(*(self.check(o) for o in orders))

    async def _bulk(self, active: Sequence[ActiveActivation], interval: float) -> None:
        """Act on one bulk answer: new SMS to the arrival use case, the rest polled by itself."""
        by_id = {a.id: a for a in active}
        # Only entries with news can concern an order: an SMS, or an end at the provider.
        news = [a.id for a in active if a.code or a.state == "cancelled"]
        orders = await self._stores.orders.awaiting_sms(news) if news else []
        gate = asyncio.Semaphore(ARRIVALS_AT_ONCE)

        async def act(order: Order) -> None:
            assert order.activation_id is not None  # matched by it
            entry = by_id[order.activation_id]
            async with gate:
                if entry.code:
                    await self.arrival.arrived(order, entry.code, entry.text, source="bulk")
                elif entry.state == "cancelled" and order.status is Status.WAITING_FOR_SMS:
                    await no_sms(self._stores, order, "provider cancelled the activation")

        # One failed arrival (a database hiccup) must not hold back the others of the round;
        # the provider lists it again next round.
        failed = [r for r in await asyncio.gather(*map(act, orders), return_exceptions=True) if r]
        for exc in failed:
            # The type only: an error's text could quote the SMS it was recording.
            log.error("recording a polled SMS failed: %s", type(exc).__name__)
        # Orders whose activation the answer lacked: ended at the provider (a cancel or an
        # expiry, which no bulk answer lists), or too new for it. getStatus tells which.
        missing = await self._stores.orders.claim_sms_poll_missing(
            MISSING_PER_ROUND, interval, list(by_id)
        )
        await asyncio.gather(*(self.check(o) for o in missing))

    async def poll_forever(self) -> None:
        """Poll until stop: the bulk turn checked every tick, per-order polling at its pace."""
        # A short interval (tests) is not stretched by the tick: at most half of it.
        tick = max(0.05, min(TURN_TICK_SECONDS, self.interval() / 2))
        await self._every(tick, self.poll_round, beat="sms-poller", what="SMS poll")
