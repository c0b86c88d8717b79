"""Watching an activation for its SMS: poll, deliver the code, another SMS, close the window."""

from __future__ import annotations

import asyncio
import logging

from libs.common.adapters import sms
from libs.common.domain.activation_policy import code_window_seconds
from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.messages import Message
from libs.common.domain.orders import Order, Status
from libs.common.messaging.bus import Retry
from libs.common.persistence.order_store import NOW
from libs.common.persistence.ports import Stores
from services.provider.outcomes import no_sms
from services.provider.part import ProviderPart

log = logging.getLogger(__name__)


class SmsWatch(ProviderPart):
    """Drives orders through waiting_for_sms and code_received: the code, and another one."""

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
            if order.status is Status.CODE_RECEIVED:
                await self._another_code(order, status.code, status.text)
            else:
                await self.deliver(order.id, status.code, status.text)
        elif status.state == "cancelled" and order.status is Status.WAITING_FOR_SMS:
            # The provider ended the activation on its own (expiry); nothing can arrive now.
            await no_sms(self._stores, order, "provider cancelled the activation")

    async def deliver(self, order_id: str, code: str, text: str | None) -> None:
        """Record the code and, in the same transaction, start the order's way to its end.

        A hold order's settle is asked for at once (the classic API shows the code only once
        the invoice is settled); an L402 order stays open for its another-SMS window; any
        other order completes now. Finishing the activation at the provider is housekeeping
        armed here too, never a condition of the outcome.
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
                return
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
                await self._complete(tx, order_id)
        log.info("code received", extra={"order_id": order_id})

    async def _complete(self, tx: Stores, order_id: str) -> bool:
        """code_received -> completed, with the provider finish armed (caller's transaction)."""
        done = await tx.orders.complete(
            order_id,
            code_retention=self._settings.code_retention_seconds,
            current=Status.CODE_RECEIVED,
        )
        if done:
            await tx.orders.arm_finish(order_id)
        return done

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

    async def _another_code(self, order: Order, code: str, text: str | None) -> None:
        """A code arrived after the customer asked for another: keep both, show the new one."""
        if code == order.code and text == order.sms_text:
            return  # still the first SMS; the provider reports it until the next arrives
        async with self._stores.transaction() as tx:
            updated = await tx.orders.record_new_code(order.id, code, text)
            if updated is None or updated.sms_received_at is None:
                return
            await tx.orders.stop_polling(order.id)
            await tx.messages.record(order.id, Message(updated.sms_received_at, text, code=code))
        log.info("another code received", extra={"order_id": order.id})

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
                done = await self._complete(tx, order_id)
        if done:
            log.info("order completed", extra={"order_id": order_id})

    async def poll_forever(self) -> None:
        """Claim due orders and poll them at the provider until stop."""
        interval = self._settings.sms_poll_interval_seconds

        async def poll_due() -> None:
            orders = await self._stores.orders.claim_sms_poll(50, interval)
            await asyncio.gather(*(self.check(o) for o in orders))

        await self._every(min(interval, 1.0), poll_due, beat="sms-poller", what="SMS poll")
