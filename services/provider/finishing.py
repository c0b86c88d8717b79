"""The end of an activation: the housekeeping finish at the provider, and the cancel that refunds.

Finishing (setStatus 6) follows an order's outcome and never decides it: it is leased,
retried with a backoff and given up at the activation's end plus the give-up grace. A cancel
(customer or SMS deadline) first makes sure no SMS came, then cancels at the provider and
refunds; an SMS that did come is delivered instead.
"""

from __future__ import annotations

import asyncio
import logging

from libs.common.adapters import sms
from libs.common.core.config import Settings
from libs.common.core.faults import crash_point
from libs.common.domain.activation_policy import (
    FINISH_LEASE_SECONDS,
    finish_retry_in,
    provider_give_up_at,
    provider_given_up,
)
from libs.common.domain.orders import Order, Status
from libs.common.messaging.bus import Retry
from libs.common.persistence.ports import Stores
from services.provider.outcomes import no_number, no_sms
from services.provider.part import ProviderPart
from services.provider.sms_watch import SmsWatch

log = logging.getLogger(__name__)


class Finisher(ProviderPart):
    """Tells the provider that done activations are done, as bounded housekeeping."""

    async def finish_due(self, limit: int = 50) -> int:
        """Finish the activations whose finish is due at the provider; returns how many."""
        orders = await self._stores.orders.claim_finish(limit, FINISH_LEASE_SECONDS)
        await asyncio.gather(*(self._finish(order) for order in orders))
        return len(orders)

    async def _finish(self, order: Order) -> None:
        """Tell the provider one activation is done (setStatus 6); back off when it fails."""
        try:
            if order.activation_id is not None:
                await self._provider.finish(order.activation_id)
        except (sms.ActivationNotActive, sms.NotFound):
            pass  # already over at the provider
        except sms.ProviderError as exc:
            delay = finish_retry_in(
                attempts=order.finish_attempts,
                now=await self._stores.orders.now(),
                give_up_at=provider_give_up_at(
                    order.deadline_at, self._settings.provider_giveup_seconds
                ),
                base=self._settings.provider_finish_retry_seconds,
            )
            if delay is not None:
                await self._stores.orders.retry_finish(order.id, delay)
                log.info(
                    "finish failed (%s); retrying in %.1f s",
                    exc.code,
                    delay,
                    extra={"order_id": order.id},
                )
                return
            # The activation's lifetime is over: the provider closes it itself.
            log.warning("finish failed (%s); giving up", exc.code, extra={"order_id": order.id})
        else:
            crash_point("provider.activation_finished")
        await self._stores.orders.finish_done(order.id)

    async def finish_forever(self) -> None:
        """Finish done activations at the provider until stop.

        A loop of its own: a provider that hangs on finishing must not slow the SMS poller,
        which the next codes (and their settlement) wait for.
        """
        await self._every(
            1.0, self.finish_due, beat="activation-finisher", what="finishing activations"
        )


class Cancellation(ProviderPart):
    """Ends an order whose SMS deadline passed or whose customer cancelled it."""

    def __init__(
        self,
        stores: Stores,
        settings: Settings,
        provider: sms.SmsProvider,
        stop: asyncio.Event,
        *,
        watch: SmsWatch,
    ) -> None:
        super().__init__(stores, settings, provider, stop)
        # An SMS found while cancelling is delivered as the poller would.
        self._watch = watch

    async def cancel(self, order_id: str, reason: str) -> None:
        """Verify no SMS came, cancel at the provider, then refund (or fail, if non-refundable)."""
        order = await self._stores.orders.get(order_id)
        if order is None:
            return
        if order.status is Status.PAID:
            # The deadline passed before any number was bought (its paid event was lost or
            # is still queued): never buy one now, pay back. A purchase racing this loses
            # its guarded transition and cancels its spare number.
            async with self._stores.transaction() as tx:
                order = await tx.orders.transition(order_id, Status.PAID, Status.ALLOCATING_NUMBER)
            if order is None:
                order = await self._stores.orders.get(order_id)
                if order is None:
                    return
        if order.status is Status.ALLOCATING_NUMBER:
            await no_number(self._stores, order_id, reason)
            return
        if order.status is not Status.WAITING_FOR_SMS or order.activation_id is None:
            return
        activation_id = order.activation_id
        try:
            status = await self._provider.poll(activation_id)
            if status.state == "received" and status.code:
                await self._watch.deliver(order_id, status.code, status.text)
                return
            if status.state != "cancelled":
                await self._provider.cancel(activation_id)
        except sms.TooEarlyToCancel as exc:
            raise Retry("provider refuses an early cancel", delay=float(exc.seconds or 5)) from exc
        except sms.CodeAlreadyReceived:
            status = await self._provider.poll(activation_id)
            if status.code:
                await self._watch.deliver(order_id, status.code, status.text)
                return
            raise Retry("code reported but not readable yet", delay=2.0) from None
        except (sms.ActivationNotActive, sms.NotFound):
            pass  # already over at the provider; nothing more can arrive
        except sms.ProviderError as exc:
            if not provider_given_up(
                order.deadline_at,
                await self._stores.orders.now(),
                self._settings.provider_giveup_seconds,
            ):
                raise Retry(f"provider error {exc.code}", delay=5.0) from exc
            # Past the deadline and the provider's own activation lifetime: no SMS can reach
            # the customer any more, so an unreachable provider must not hold the money.
            log.warning(
                "provider unreachable past the deadline (%s)",
                exc.code,
                extra={"order_id": order_id},
            )
        await no_sms(self._stores, order, reason)
