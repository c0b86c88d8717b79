"""The ends of an order that got no code: refund it, or fail one that is not refundable."""

from __future__ import annotations

import logging

from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.orders import REFUNDABLE_WITHOUT_SMS, Order, Status
from libs.common.persistence.ports import Stores

log = logging.getLogger(__name__)


async def send_to_refund(stores: Stores, order_id: str, expected: Status, why: str) -> bool:
    """Move an order to refund_pending with its refund intent, in one transaction."""
    async with stores.transaction() as tx:
        moved = await tx.orders.transition(order_id, expected, Status.REFUND_PENDING)
        if moved is None:
            return False
        await tx.timers.cancel(order_id, Timer.SMS_TIMEOUT)
        # The intent row makes the payments worker pay even if the event below is lost.
        await tx.refunds.insert(order_id)
        await tx.outbox.enqueue(Event(EventType.REFUND_REQUESTED, order_id))
    log.warning("refunding: %s", why, extra={"order_id": order_id})
    return True


async def no_number(stores: Stores, order_id: str, reason: str) -> bool:
    """Refund an order that got no number: every paid type is paid back then."""
    return await send_to_refund(stores, order_id, Status.ALLOCATING_NUMBER, f"no number ({reason})")


async def no_sms(stores: Stores, order: Order, reason: str) -> None:
    """The activation ended without an SMS: refund, or fail a non-refundable order.

    Only receive-sms is paid back when no SMS comes; a reactivation is not.
    """
    if order.type in REFUNDABLE_WITHOUT_SMS:
        await send_to_refund(stores, order.id, Status.WAITING_FOR_SMS, f"no SMS ({reason})")
        return
    async with stores.transaction() as tx:
        moved = await tx.orders.transition(order.id, Status.WAITING_FOR_SMS, Status.FAILED)
        if moved is not None:
            await tx.timers.cancel(order.id, Timer.SMS_TIMEOUT)
    if moved is not None:
        log.warning("no SMS on a non-refundable order: %s", reason, extra={"order_id": order.id})
