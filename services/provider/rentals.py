"""The life of a rented number: collect its SMS (polling backs up the webhook), then end it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

import asyncpg

from libs.common.adapters import sms
from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.messages import Message
from libs.common.domain.orders import Status
from libs.common.domain.pricing import unused_rent_sats
from libs.common.messaging import ops
from libs.common.messaging.bus import Retry
from libs.common.messaging.runtime import Worker
from libs.common.persistence import message_store as messages
from libs.common.persistence import order_store as store
from libs.common.persistence.db import Q, transaction
from libs.common.persistence.outbox_store import enqueue

log = logging.getLogger(__name__)

# A rental the provider ends less than this before its end counts as ended on time: our
# clock and the provider's differ by a few seconds, which must not cost a refund payment.
EARLY_END_TOLERANCE_SECONDS = 60.0


class Rentals:
    """Polls active rentals for SMS and completes them when their time is up."""

    def __init__(self, worker: Worker, provider: sms.SmsProvider) -> None:
        self._w = worker
        self._provider = provider

    async def collect(self, order: asyncpg.Record) -> bool:
        """Store the rental's SMS not seen yet; False once the provider says it has ended."""
        try:
            received = await self._provider.rent_messages(order["activation_id"])
        except sms.RentEnded:
            return False
        new = 0
        for m in received:
            msg = Message(m.received_at, m.text, phone_from=m.phone_from)
            new += await messages.record(self._w.pool, order["id"], msg)
        if new:
            log.info("%d rental SMS received by polling", new, extra={"order_id": order["id"]})
        return True

    async def end(self, order_id: str, *, ended_at_provider: bool = False) -> None:
        """The rental time is up (or the provider ended it): take the last SMS, complete.

        Ended by the provider well before its time, it is refunded the unused share instead.
        """
        order = await store.get(self._w.pool, order_id)
        if order is None or order["status"] != Status.RENT_ACTIVE:
            return
        early: float = (order["rent_ends_at"] - datetime.now(UTC)).total_seconds()
        if early > 0 and not ended_at_provider:
            # The timer runs on the database's clock; this worker's may be a little behind.
            raise Retry("the rental has not ended yet", delay=min(early + 1.0, 60.0))
        try:
            await self.collect(order)
        except sms.ProviderError as exc:
            if exc.transient and not self._given_up(order):
                raise Retry(f"provider error {exc.code}", delay=5.0) from exc
            log.warning("last rental poll failed (%s)", exc.code, extra={"order_id": order_id})
        if ended_at_provider and early > EARLY_END_TOLERANCE_SECONDS:
            if await self._refund_unused(order, early):
                return
        async with transaction(self._w.pool) as conn:
            done = await store.complete(
                conn,
                order_id,
                code_retention=self._w.settings.code_retention_seconds,
                prefix=self._w.settings.subject_prefix,
                current=Status.RENT_ACTIVE,
            )
        if done:
            log.info("rental ended", extra={"order_id": order_id})

    async def _refund_unused(self, order: asyncpg.Record, early: float) -> bool:
        """The provider ended the rental `early` seconds before its end: refund the unused time.

        The customer cannot end a rental, so time the provider took away is paid back. It may
        have ended up to one poll interval before we saw it; that interval counts as unused.
        False when nothing is owed or the order cannot be paid back by a refund payment.
        """
        order_id: str = order["id"]
        amount = unused_rent_sats(
            order["price_sats"],
            total_seconds=int(order["rent_hours"]) * 3600,
            unused_seconds=early + self._w.settings.rent_poll_interval_seconds,
        )
        if amount <= 0 or order["payment_mode"] != "standard":
            return False
        settings = self._w.settings
        async with transaction(self._w.pool) as conn:
            moved = await store.transition(
                conn, order_id, Status.RENT_ACTIVE, Status.REFUND_PENDING
            )
            if moved is None:
                return True  # already ended by another worker
            await store.cancel_timer(conn, order_id, Timer.RENT_END)
            # The rental's SMS are purged after the retention, as for a completed one.
            await store.set_timer(conn, order_id, Timer.PURGE_CODE, settings.code_retention_seconds)
            # The intent row, with the partial amount, makes the payments worker pay it once.
            await conn.execute(Q.refund_insert_amount, order_id, amount)
            await enqueue(
                conn, Event(EventType.REFUND_REQUESTED, order_id), prefix=settings.subject_prefix
            )
        log.warning(
            "the provider ended the rental %.0f s early; refunding %d of %d sats",
            early,
            amount,
            order["price_sats"],
            extra={"order_id": order_id},
        )
        return True

    def _given_up(self, order: asyncpg.Record) -> bool:
        """Whether the rental ended long enough ago to stop waiting for the provider."""
        age: float = (datetime.now(UTC) - order["rent_ends_at"]).total_seconds()
        return age >= self._w.settings.provider_giveup_seconds

    async def poll_forever(self) -> None:
        """Claim due rentals and poll them at the provider until stop."""
        interval = self._w.settings.rent_poll_interval_seconds
        while not self._w.stop.is_set():
            ops.beat("rent-poller")
            try:
                orders = await self._w.pool.fetch(Q.orders_claim_rent_poll, 50, interval)
                results = await asyncio.gather(
                    *(self.collect(o) for o in orders), return_exceptions=True
                )
                for order, result in zip(orders, results, strict=True):
                    if result is False:
                        # Over at the provider before its time: nothing more can arrive.
                        with contextlib.suppress(Retry):  # its end timer tries again
                            await self.end(order["id"], ended_at_provider=True)
                    elif isinstance(result, sms.ProviderError):
                        log.info(
                            "rent poll failed: %s", result.code, extra={"order_id": order["id"]}
                        )
                    elif isinstance(result, BaseException):
                        log.error("rent poll failed: %r", result, extra={"order_id": order["id"]})
            except Exception:
                log.exception("rent poll failed")
            try:
                await asyncio.wait_for(self._w.stop.wait(), min(interval, 1.0))
            except TimeoutError:
                pass
