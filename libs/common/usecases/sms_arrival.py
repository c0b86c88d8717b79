"""An SMS arrived for an activation: record it exactly once, whoever saw it first.

The activation webhook (gateway), the bulk poll and the per-activation getStatus (provider
worker) all hand what they saw here. Every effect is a guarded write inside one transaction:
of two sources reporting the same SMS at once (the webhook and a poll, or two replicas),
exactly one moves the order and stores the message; the other finds it moved and changes
nothing. No provider call is made here: the gateway runs it as well as the provider worker.
"""

from __future__ import annotations

import hashlib
import logging
from enum import StrEnum
from typing import Literal

from libs.common.core import metrics
from libs.common.core.config import Settings
from libs.common.domain.activation_policy import code_window_seconds
from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.messages import Message, storable
from libs.common.domain.orders import Order, Status
from libs.common.persistence.order_store import NOW
from libs.common.persistence.ports import Stores

log = logging.getLogger(__name__)

# Who saw an SMS (the metric's label and the log line say which was first).
Source = Literal["webhook", "bulk", "getStatus"]


class Outcome(StrEnum):
    """What an SMS reported by activation id did."""

    RECORDED = "recorded"  # new: stored, and the order moved on
    KNOWN = "known"  # the activation is ours, but nothing new (a replay, or nothing waits)
    UNKNOWN = "unknown"  # no one-time order of ours has this activation


def provider_account(settings: Settings) -> str:
    """The provider account the bulk poll's turn belongs to: its URL and a digest of its key."""
    digest = hashlib.sha256(settings.provider_api_key.encode()).hexdigest()[:16]
    return f"{settings.provider_url.rstrip('/')}#{digest}"


class SmsArrival:
    """Records incoming SMS on one-time orders: the first code, or another one asked for."""

    def __init__(self, stores: Stores, settings: Settings) -> None:
        self._stores = stores
        self._settings = settings

    async def for_activation(
        self, activation_id: str, code: str, text: str | None, *, source: Source
    ) -> Outcome:
        """An SMS known only by its activation id (a webhook push): find the order, record it."""
        waiting = await self._stores.orders.awaiting_sms([activation_id])
        for order in waiting:
            if await self.arrived(order, code, text, source=source):
                return Outcome.RECORDED
        if waiting or await self._stores.orders.by_activation(activation_id) is not None:
            return Outcome.KNOWN
        return Outcome.UNKNOWN

    async def look_now(self, activation_id: str) -> bool:
        """An SMS is announced without its code: have the pollers look now; whether it is ours.

        The order is due for its own poll at once, and the account's bulk poll (which covers
        it when the provider lists it) is brought forward to now.
        """
        if await self._stores.orders.poll_now(activation_id) is None:
            return await self._stores.orders.by_activation(activation_id) is not None
        await self._stores.orders.hurry_bulk_poll(provider_account(self._settings))
        return True

    async def arrived(self, order: Order, code: str, text: str | None, *, source: Source) -> bool:
        """An SMS for this order (as the caller read it); True when it was new and recorded.

        A waiting order gets its first code; a code_received order that asked for another SMS
        gets the new one (a report of the code it shows is the old SMS, and changes nothing).
        """
        clean_code, clean_text = storable(code), storable(text)
        if not clean_code:
            return False
        if order.status is Status.WAITING_FOR_SMS:
            return await self.deliver(order.id, clean_code, clean_text, source=source)
        if order.status is Status.CODE_RECEIVED and order.another_sms_at is not None:
            if clean_code == order.code and clean_text == order.sms_text:
                return False  # still the first SMS: the provider reports it until the next
            return await self._another_code(order.id, clean_code, clean_text, source=source)
        return False

    async def deliver(
        self, order_id: str, code: str, text: str | None, *, source: Source = "getStatus"
    ) -> bool:
        """Record the first code and, in the same transaction, start the order's way to its end.

        A hold order's settle is asked for at once (the classic API shows the code only once
        the invoice is settled); an L402 order stays open for its another-SMS window; any
        other order completes now. Finishing the activation at the provider is housekeeping
        armed here too, never a condition of the outcome. False when the order was no longer
        waiting (another source recorded this SMS first, or it ended).
        """
        async with self._stores.transaction() as tx:
            moved = await tx.orders.transition(
                order_id,
                Status.WAITING_FOR_SMS,
                Status.CODE_RECEIVED,
                code=code,
                sms_text=text,
                sms_received_at=NOW,
                next_poll_at=None,  # nothing to poll until another SMS is asked for
            )
            if moved is None:
                return False
            await tx.timers.cancel(order_id, Timer.SMS_TIMEOUT)
            assert moved.sms_received_at is not None  # the transition just set it
            await tx.messages.record(order_id, Message(moved.sms_received_at, text, code=code))
            window = code_window_seconds(
                payment_mode=moved.payment_mode,
                deadline_at=moved.deadline_at,
                sms_received_at=moved.sms_received_at,
                window_seconds=self._settings.another_sms_window_seconds,
            )
            if moved.is_hold:
                # The payments worker settles the held payment, then completes the order.
                await tx.outbox.enqueue(Event(EventType.CODE_DELIVERED, order_id))
                await tx.orders.arm_finish(order_id)
            elif window > 0:
                # L402 orders keep the number open for a while: the customer may ask for
                # another SMS on it.
                await tx.timers.set(order_id, Timer.CODE_WINDOW, window)
            else:
                await self.complete(tx, order_id)
        metrics.SMS_ARRIVALS.labels(source).inc()
        log.info("code received (%s)", source, extra={"order_id": order_id})
        return True

    async def _another_code(
        self, order_id: str, code: str, text: str | None, *, source: Source
    ) -> bool:
        """A code arrived after the customer asked for another: keep both, show the new one."""
        async with self._stores.transaction() as tx:
            # Guarded in the store: only while the ask is open and the code differs from the
            # one shown, so a racing source (or a late report of the old SMS) changes nothing.
            updated = await tx.orders.record_new_code(order_id, code, text)
            if updated is None or updated.sms_received_at is None:
                return False
            await tx.orders.stop_polling(order_id)
            await tx.messages.record(order_id, Message(updated.sms_received_at, text, code=code))
        metrics.SMS_ARRIVALS.labels(source).inc()
        log.info("another code received (%s)", source, extra={"order_id": order_id})
        return True

    async def complete(self, tx: Stores, order_id: str) -> bool:
        """code_received -> completed, with the provider finish armed (caller's transaction)."""
        done = await tx.orders.complete(
            order_id,
            code_retention=self._settings.code_retention_seconds,
            current=Status.CODE_RECEIVED,
        )
        if done:
            await tx.orders.arm_finish(order_id)
        return done
