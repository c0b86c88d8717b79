"""The provider stage of an order: allocate a number, deliver the code, or cancel and refund."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from libs.common import sms, store
from libs.common.bus import Retry
from libs.common.db import Q, transaction
from libs.common.events import Event, EventType
from libs.common.faults import crash_point
from libs.common.orders import Status
from libs.common.outbox import enqueue
from libs.common.runtime import Worker
from libs.common.store import NOW, Timer

log = logging.getLogger(__name__)

# Errors after which buying again cannot help: the order is paid back at once.
_PERMANENT = (
    sms.NoNumbers,
    sms.BadService,
    sms.PriceTooLow,
    sms.InsufficientBalance,
    sms.BadKey,
    sms.Banned,
)


class Activations:
    """Drives orders through allocating_number, waiting_for_sms and code_received."""

    def __init__(self, worker: Worker, provider: sms.SmsProvider) -> None:
        self._w = worker
        self._provider = provider

    async def _emit(self, conn: asyncpg.Connection, kind: EventType, order_id: str) -> None:
        """Queue an event in the caller's transaction."""
        await enqueue(conn, Event(kind, order_id), prefix=self._w.settings.subject_prefix)

    async def _to_refund(self, order_id: str, expected: Status, why: str) -> bool:
        """Move an order to refund_pending with its refund intent, in one transaction."""
        async with transaction(self._w.pool) as conn:
            moved = await store.transition(conn, order_id, expected, Status.REFUND_PENDING)
            if moved is None:
                return False
            await store.cancel_timer(conn, order_id, Timer.SMS_TIMEOUT)
            # The intent row makes the payments worker pay even if the event below is lost.
            await conn.execute(Q.refund_insert, order_id)
            await self._emit(conn, EventType.REFUND_REQUESTED, order_id)
        log.warning("refunding: %s", why, extra={"order_id": order_id})
        return True

    async def allocate(self, order_id: str) -> None:
        """Buy a number for a paid order, or send it to refund when none can be had."""
        async with transaction(self._w.pool) as conn:
            order = await store.get(conn, order_id)
            if order is None:
                return
            if order["status"] == Status.PAID:
                order = await store.transition(
                    conn, order_id, Status.PAID, Status.ALLOCATING_NUMBER
                )
        if order is None or order["status"] != Status.ALLOCATING_NUMBER:
            return  # a duplicate of an event already handled
        try:
            # Never pay the provider more than the customer paid us.
            activation = await self._provider.buy(
                service=order["service"],
                country_id=order["country_id"],
                max_price_usd=order["provider_cost_usd"] * self._w.settings.price_multiplier,
            )
        except _PERMANENT as exc:
            await self._allocation_failed(order, exc.code)
            return
        except sms.ProviderError as exc:
            paid_at: datetime = order["paid_at"]
            deadline = paid_at + timedelta(seconds=self._w.settings.allocation_deadline_seconds)
            if datetime.now(UTC) >= deadline:
                await self._allocation_failed(order, exc.code)
                return
            raise Retry(f"provider error {exc.code}", delay=3.0) from exc
        crash_point("provider.number_bought")
        async with transaction(self._w.pool) as conn:
            moved = await store.transition(
                conn,
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

    async def _allocation_failed(self, order: asyncpg.Record, reason: str) -> None:
        """Send an order that got no number to refund (every paid type, per the seed)."""
        await self._to_refund(order["id"], Status.ALLOCATING_NUMBER, f"no number ({reason})")

    async def _cancel_quietly(self, activation_id: str) -> None:
        """Best-effort cancel of an activation nobody needs (the provider refunds unused ones)."""
        try:
            await self._provider.cancel(activation_id)
        except sms.ProviderError as exc:
            log.info("could not cancel spare activation: %s", exc.code)

    async def check(self, order: asyncpg.Record) -> None:
        """Poll one order at the provider and act on what it says."""
        if order["status"] == Status.CODE_RECEIVED:
            await self.finish(order["id"])
            return
        try:
            status = await self._provider.poll(order["activation_id"])
        except sms.ProviderError as exc:
            log.info("poll failed: %s", exc.code, extra={"order_id": order["id"]})
            return
        if status.state == "received" and status.code:
            await self.deliver(order["id"], status.code, status.text)
        elif status.state == "cancelled":
            # The provider ended the activation on its own (expiry); nothing can arrive now.
            await self._refund_after_cancel(order["id"], "provider cancelled the activation")

    async def deliver(self, order_id: str, code: str, text: str | None) -> None:
        """Record the code (the customer can read it from now on), then finish the activation."""
        async with transaction(self._w.pool) as conn:
            moved = await store.transition(
                conn,
                order_id,
                Status.WAITING_FOR_SMS,
                Status.CODE_RECEIVED,
                code=code,
                sms_text=text,
                sms_received_at=NOW,
            )
            if moved is None:
                return
            await store.cancel_timer(conn, order_id, Timer.SMS_TIMEOUT)
        log.info("code received", extra={"order_id": order_id})
        await self.finish(order_id)

    async def finish(self, order_id: str) -> None:
        """Tell the provider the activation is done and complete the order."""
        order = await store.get(self._w.pool, order_id)
        if order is None or order["status"] != Status.CODE_RECEIVED:
            return
        try:
            await self._provider.finish(order["activation_id"])
        except (sms.ActivationNotActive, sms.NotFound):
            pass  # already finished at the provider
        except sms.ProviderError as exc:
            log.info(
                "finish failed (%s); the poller retries", exc.code, extra={"order_id": order_id}
            )
            return
        crash_point("provider.activation_finished")
        async with transaction(self._w.pool) as conn:
            if order["payment_mode"] == "hold":
                # The held payment is settled by the payments worker, which then completes
                # the order; stop polling this activation.
                if await conn.execute(Q.order_stop_polling, order_id) == "UPDATE 1":
                    await self._emit(conn, EventType.CODE_DELIVERED, order_id)
                return
            done = await store.complete(
                conn,
                order_id,
                code_retention=self._w.settings.code_retention_seconds,
                prefix=self._w.settings.subject_prefix,
            )
        if done:
            log.info("order completed", extra={"order_id": order_id})

    async def cancel(self, order_id: str, reason: str) -> None:
        """Verify no SMS came, cancel at the provider, then send the order to refund."""
        order = await store.get(self._w.pool, order_id)
        if order is None:
            return
        if order["status"] == Status.PAID:
            # The deadline passed before any number was bought (its paid event was lost or
            # is still queued): never buy one now, pay back. A purchase racing this loses
            # its guarded transition and cancels its spare number.
            async with transaction(self._w.pool) as conn:
                order = await store.transition(
                    conn, order_id, Status.PAID, Status.ALLOCATING_NUMBER
                )
            if order is None:
                order = await store.get(self._w.pool, order_id)
                if order is None:
                    return
        if order["status"] == Status.ALLOCATING_NUMBER:
            await self._allocation_failed(order, reason)
            return
        if order["status"] != Status.WAITING_FOR_SMS:
            return
        activation_id = order["activation_id"]
        try:
            status = await self._provider.poll(activation_id)
            if status.state == "received" and status.code:
                await self.deliver(order_id, status.code, status.text)
                return
            if status.state != "cancelled":
                await self._provider.cancel(activation_id)
        except sms.TooEarlyToCancel as exc:
            raise Retry("provider refuses an early cancel", delay=float(exc.seconds or 5)) from exc
        except sms.CodeAlreadyReceived:
            status = await self._provider.poll(activation_id)
            if status.code:
                await self.deliver(order_id, status.code, status.text)
                return
            raise Retry("code reported but not readable yet", delay=2.0) from None
        except (sms.ActivationNotActive, sms.NotFound):
            pass  # already over at the provider; nothing more can arrive
        except sms.ProviderError as exc:
            raise Retry(f"provider error {exc.code}", delay=5.0) from exc
        await self._refund_after_cancel(order_id, reason)

    async def _refund_after_cancel(self, order_id: str, reason: str) -> None:
        """Move a cancelled activation's order to refund."""
        await self._to_refund(order_id, Status.WAITING_FOR_SMS, f"activation cancelled ({reason})")

    async def poll_forever(self) -> None:
        """Claim due orders and poll them at the provider until stop."""
        interval = self._w.settings.sms_poll_interval_seconds
        while not self._w.stop.is_set():
            try:
                orders = await self._w.pool.fetch(Q.orders_claim_sms_poll, 50, interval)
                await asyncio.gather(*(self.check(o) for o in orders))
            except Exception:
                log.exception("SMS poll failed")
            try:
                await asyncio.wait_for(self._w.stop.wait(), min(interval, 1.0))
            except TimeoutError:
                pass
