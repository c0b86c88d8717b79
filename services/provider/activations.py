"""The provider stage of an order: allocate a number, deliver the code, or cancel and refund."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from libs.common.adapters import sms
from libs.common.core.faults import crash_point
from libs.common.core.metrics import PROVIDER_NO_BALANCE
from libs.common.domain.alarms import Alarm
from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.messages import Message
from libs.common.domain.orders import REFUNDABLE_WITHOUT_SMS, OrderType, Status
from libs.common.messaging import ops
from libs.common.messaging.bus import Retry
from libs.common.messaging.runtime import Worker
from libs.common.persistence import message_store as messages
from libs.common.persistence import order_store as store
from libs.common.persistence.db import Q, transaction
from libs.common.persistence.order_store import NOW
from libs.common.persistence.outbox_store import enqueue

log = logging.getLogger(__name__)


def _needed(detail: str) -> Decimal:
    """The USD amount a NO_BALANCE alarm waits for (any money at all if it is unknown)."""
    try:
        return max(Decimal(detail), Decimal("0.01"))
    except ArithmeticError:
        return Decimal("0.01")


# A claimed finish that is neither done nor rescheduled (its worker died) is tried again
# after this long: longer than a provider call with its retries and rate-limit waits.
FINISH_LEASE_SECONDS = 120.0
# The longest wait between two tries at finishing an activation.
FINISH_RETRY_CAP_SECONDS = 300.0


def provider_give_up_at(deadline: datetime | None, giveup_seconds: float) -> datetime | None:
    """When an unreachable provider stops mattering: the order's deadline plus the grace."""
    return None if deadline is None else deadline + timedelta(seconds=giveup_seconds)


def finish_retry_in(
    *, attempts: int, now: datetime, give_up_at: datetime | None, base: float
) -> float | None:
    """Seconds until the next try at a finish that failed `attempts` + 1 times, None: give up.

    The wait doubles per failure (at most FINISH_RETRY_CAP_SECONDS); the last try is made
    at the give-up time itself.
    """
    if give_up_at is None or now >= give_up_at:
        return None
    wait = min(base * 2.0 ** min(attempts, 32), FINISH_RETRY_CAP_SECONDS)
    return min(wait, (give_up_at - now).total_seconds())


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
        """Get a number for a paid order (buy, reactivate or rent), or send it to refund."""
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
        if order["type"] == OrderType.RENT_NUMBER:
            await self._rent(order)
            return
        try:
            activation = await self._obtain(order)
        except sms.ProviderError as exc:
            await self._allocation_error(order, exc)
            return
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

    def _price_cap(self, order: asyncpg.Record) -> Decimal:
        """The most we pay the provider for this order: the quoted cost x PRICE_MULTIPLIER."""
        cap: Decimal = order["provider_cost_usd"] * self._w.settings.price_multiplier
        return cap

    async def _obtain(self, order: asyncpg.Record) -> sms.Activation:
        """Buy a new activation, or reactivate the earlier order's number."""
        if order["type"] == OrderType.RECEIVE_SMS_REACTIVATE:
            earlier = await store.get(self._w.pool, order["reactivates"])
            if earlier is None or not earlier["activation_id"]:
                raise sms.NotFound("NO_ACTIVATION", detail="the earlier activation is unknown")
            if earlier["finish_due_at"] is not None:
                await self._finish_before_reactivating(earlier)
            activation = await self._provider.reactivate(earlier["activation_id"])
            # `reactivate` takes no maxPrice: check the cost it reports against our quote.
            if activation.cost_usd > self._price_cap(order):
                log.warning(
                    "reactivation cost %s USD is above the quote; cancelling it",
                    activation.cost_usd,
                    extra={"order_id": order["id"]},
                )
                # Unused activations the provider refuses to cancel now are refunded to us
                # when they expire.
                await self._cancel_quietly(activation.id)
                raise sms.PriceTooLow(detail=f"reactivation cost {activation.cost_usd} USD")
            return activation
        # Never pay the provider more than the customer paid us.
        return await self._provider.buy(
            service=order["service"],
            country_id=order["country_id"],
            max_price_usd=self._price_cap(order),
        )

    async def _finish_before_reactivating(self, earlier: asyncpg.Record) -> None:
        """Finish the earlier activation now: the provider reactivates only a finished one, and
        its housekeeping finish may not have run yet (a provider error here is the purchase's:
        transient ones retry, others refund)."""
        try:
            await self._provider.finish(earlier["activation_id"])
        except (sms.ActivationNotActive, sms.NotFound):
            pass  # already over at the provider
        await self._w.pool.execute(Q.order_finish_done, earlier["id"])

    async def _check_rent_price(self, order: asyncpg.Record) -> None:
        """Refuse (PriceTooLow) to rent when the provider's current price is above our quote.

        getRentNumber takes no maxPrice and its reply names no price, so the price list is
        read right before renting; a number not listed for this service counts as none.
        """
        offers = await self._provider.rent_offers(order["rent_hours"], order["country_id"])
        listed = [
            o.cost_usd
            for o in offers.offers
            if o.service == order["service"] and o.hours == order["rent_hours"]
        ]
        if not listed:
            raise sms.NoNumbers(detail="no rent offer listed for the service")
        if min(listed) > self._price_cap(order):
            raise sms.PriceTooLow(detail=f"rent price {min(listed)} USD")

    async def _allocation_error(self, order: asyncpg.Record, exc: sms.ProviderError) -> None:
        """A failed purchase: a transient error is retried until the deadline, others refund.

        Permanent errors (no stock, a price over our quote, a bad key, no balance, ...) cannot
        be helped by buying again; a temporary ban or an outage can.
        """
        if isinstance(exc, sms.InsufficientBalance):
            await self.raise_no_balance(order["provider_cost_usd"])
        if not exc.transient:
            await self._allocation_failed(order, exc.code)
            return
        paid_at: datetime = order["paid_at"]
        deadline = paid_at + timedelta(seconds=self._w.settings.allocation_deadline_seconds)
        if datetime.now(UTC) >= deadline:
            await self._allocation_failed(order, exc.code)
            return
        raise Retry(f"provider error {exc.code}", delay=3.0) from exc

    async def _rent(self, order: asyncpg.Record) -> None:
        """Rent a number for the order's hours; SMS then arrive by webhook and polling."""
        order_id = order["id"]
        try:
            await self._check_rent_price(order)
            rental = await self._provider.rent(
                service=order["service"],
                country=order["country_id"],
                hours=order["rent_hours"],
                webhook_url=self._w.settings.webhook_url(),
            )
        except sms.ProviderError as exc:
            await self._allocation_error(order, exc)
            return
        crash_point("provider.number_bought")
        seconds = max(0.0, (rental.ends_at - datetime.now(UTC)).total_seconds())
        async with transaction(self._w.pool) as conn:
            moved = await store.transition(
                conn,
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
                await store.cancel_timer(conn, order_id, Timer.SMS_TIMEOUT)
                await store.set_timer(conn, order_id, Timer.RENT_END, seconds)
        if moved is None:
            log.warning("spare rental; cancelling it", extra={"order_id": order_id})
            try:
                await self._provider.cancel_rent(rental.rent_id)
            except sms.ProviderError as cancel_exc:
                log.info("could not cancel spare rental: %s", cancel_exc.code)
            return
        log.info("number rented", extra={"order_id": order_id})

    async def raise_no_balance(self, needed_usd: Decimal) -> None:
        """Our provider account is empty: stop selling and tell the operator (once).

        The alarm keeps what the refused purchase needed: it lifts only once the balance
        covers that, so an account a few cents short does not flap between the two.
        """
        PROVIDER_NO_BALANCE.set(1)
        since = await self._w.pool.fetchval(Q.alarm_raise, Alarm.NO_BALANCE, str(needed_usd))
        if since is not None:
            log.error(
                "ALARM: the provider account has no balance (a purchase of %s USD was refused); "
                "new orders are refused with UNAVAILABLE until it is topped up",
                needed_usd,
            )

    async def watch_balance(self) -> None:
        """While the NO_BALANCE alarm is up, lift it as soon as the account has money again."""
        while not self._w.stop.is_set():
            try:
                alarm = await self._w.pool.fetchrow(Q.alarm_active, Alarm.NO_BALANCE)
                if alarm is None:
                    PROVIDER_NO_BALANCE.set(0)
                elif await self._provider.balance_usd() >= _needed(alarm["detail"]):
                    if await self._w.pool.fetchval(Q.alarm_clear, Alarm.NO_BALANCE) is not None:
                        log.warning("provider balance restored; selling again")
                    PROVIDER_NO_BALANCE.set(0)
            except sms.ProviderError as exc:
                log.info("balance check failed: %s", exc.code)
            except Exception:
                log.exception("balance check failed")
            try:
                await asyncio.wait_for(self._w.stop.wait(), self._w.settings.balance_check_seconds)
            except TimeoutError:
                pass

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
        if order["status"] == Status.CODE_RECEIVED and order["another_sms_at"] is None:
            # Only a row left polling by an older release (which finished before completing)
            # gets here: its code stage is over.
            await self.close(order["id"])
            return
        try:
            status = await self._provider.poll(order["activation_id"])
        except sms.ProviderError as exc:
            log.info("poll failed: %s", exc.code, extra={"order_id": order["id"]})
            return
        if status.state == "received" and status.code:
            if order["status"] == Status.CODE_RECEIVED:
                await self._another_code(order, status.code, status.text)
            else:
                await self.deliver(order["id"], status.code, status.text)
        elif status.state == "cancelled" and order["status"] == Status.WAITING_FOR_SMS:
            # The provider ended the activation on its own (expiry); nothing can arrive now.
            await self._no_sms(order, "provider cancelled the activation")

    async def deliver(self, order_id: str, code: str, text: str | None) -> None:
        """Record the code and, in the same transaction, start the order's way to its end.

        A hold order's settle is asked for at once (the classic API shows the code only once
        the invoice is settled); an L402 order stays open for its another-SMS window; any
        other order completes now. Finishing the activation at the provider is housekeeping
        armed here too, never a condition of the outcome.
        """
        async with transaction(self._w.pool) as conn:
            moved = await store.transition(
                conn,
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
            await store.cancel_timer(conn, order_id, Timer.SMS_TIMEOUT)
            await messages.record(
                conn, order_id, Message(moved["sms_received_at"], text, code=code)
            )
            window = self._code_window(moved)
            if moved["payment_mode"] == "hold":
                # The payments worker settles the held payment, then completes the order.
                await self._emit(conn, EventType.CODE_DELIVERED, order_id)
                await conn.execute(Q.order_finish_arm, order_id)
            elif window > 0:
                # L402 orders keep the number open for a while: the customer may ask for
                # another SMS on it. The window never outlives the order's deadline.
                await store.set_timer(conn, order_id, Timer.CODE_WINDOW, window)
            else:
                await self._complete(conn, order_id)
        log.info("code received", extra={"order_id": order_id})

    async def _complete(self, conn: asyncpg.Connection, order_id: str) -> bool:
        """code_received -> completed, with the provider finish armed (caller's transaction)."""
        done = await store.complete(
            conn,
            order_id,
            code_retention=self._w.settings.code_retention_seconds,
            prefix=self._w.settings.subject_prefix,
        )
        if done:
            await conn.execute(Q.order_finish_arm, order_id)
        return done

    def _code_window(self, order: asyncpg.Record) -> float:
        """How long a code_received order stays open for another SMS (0: complete now)."""
        if order["payment_mode"] != "standard":
            return 0.0  # classic orders have no way to ask for another SMS
        left: float = (order["deadline_at"] - order["sms_received_at"]).total_seconds()
        return max(0.0, min(self._w.settings.another_sms_window_seconds, left))

    async def request_another(self, order_id: str) -> None:
        """The customer asked for another SMS on the same number (setStatus 3)."""
        order = await store.get(self._w.pool, order_id)
        if order is None or order["status"] != Status.CODE_RECEIVED:
            return  # the window closed meanwhile; the gateway already answered 202
        try:
            await self._provider.request_another(order["activation_id"])
        except (sms.ActivationNotActive, sms.NotFound) as exc:
            log.info("another SMS refused: %s", exc.code, extra={"order_id": order_id})
            return
        except sms.ProviderError as exc:
            if exc.transient:
                raise Retry(f"provider error {exc.code}", delay=3.0) from exc
            log.info("another SMS refused: %s", exc.code, extra={"order_id": order_id})
            return
        async with transaction(self._w.pool) as conn:
            await conn.execute(Q.order_another_sms, order_id)
        log.info("another SMS requested", extra={"order_id": order_id})

    async def _another_code(self, order: asyncpg.Record, code: str, text: str | None) -> None:
        """A code arrived after the customer asked for another: keep both, show the new one."""
        if code == order["code"] and text == order["sms_text"]:
            return  # still the first SMS; the provider reports it until the next arrives
        async with transaction(self._w.pool) as conn:
            if await conn.execute(Q.order_new_code, order["id"], code, text) != "UPDATE 1":
                return
            await conn.execute(Q.order_stop_polling, order["id"])
            await messages.record(conn, order["id"], Message(datetime.now(UTC), text, code=code))
        log.info("another code received", extra={"order_id": order["id"]})

    async def close(self, order_id: str) -> None:
        """The code stage is over (the another-SMS window closed): complete the order now.

        Whatever the provider says: the code was delivered, and finishing the activation is
        housekeeping that follows. A hold order is completed by the payments worker after
        its settle instead; here it only stops being polled and gets its finish armed.
        """
        async with transaction(self._w.pool) as conn:
            order = await store.get(conn, order_id)
            if order is None or order["status"] != Status.CODE_RECEIVED:
                return
            await conn.execute(Q.order_stop_polling, order_id)
            if order["payment_mode"] == "hold":
                await conn.execute(Q.order_finish_arm, order_id)
                done = False
            else:
                done = await self._complete(conn, order_id)
        if done:
            log.info("order completed", extra={"order_id": order_id})

    async def finish_due(self, limit: int = 50) -> int:
        """Finish the activations whose finish is due at the provider; returns how many."""
        rows = await self._w.pool.fetch(Q.orders_claim_finish, limit, FINISH_LEASE_SECONDS)
        await asyncio.gather(*(self._finish(row) for row in rows))
        return len(rows)

    async def _finish(self, row: asyncpg.Record) -> None:
        """Tell the provider one activation is done (setStatus 6); back off when it fails."""
        order_id = row["id"]
        try:
            await self._provider.finish(row["activation_id"])
        except (sms.ActivationNotActive, sms.NotFound):
            pass  # already over at the provider
        except sms.ProviderError as exc:
            settings = self._w.settings
            give_up_at = provider_give_up_at(row["deadline_at"], settings.provider_giveup_seconds)
            delay = finish_retry_in(
                attempts=row["finish_attempts"],
                now=datetime.now(UTC),
                give_up_at=give_up_at,
                base=settings.provider_finish_retry_seconds,
            )
            if delay is not None:
                await self._w.pool.execute(Q.order_finish_retry, order_id, delay)
                log.info(
                    "finish failed (%s); retrying in %.1f s",
                    exc.code,
                    delay,
                    extra={"order_id": order_id},
                )
                return
            # The activation's lifetime is over: the provider closes it itself.
            log.warning("finish failed (%s); giving up", exc.code, extra={"order_id": order_id})
        else:
            crash_point("provider.activation_finished")
        await self._w.pool.execute(Q.order_finish_done, order_id)

    async def cancel(self, order_id: str, reason: str) -> None:
        """Verify no SMS came, cancel at the provider, then refund (or fail, if non-refundable)."""
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
            if not self._provider_given_up(order):
                raise Retry(f"provider error {exc.code}", delay=5.0) from exc
            # Past the deadline and the provider's own activation lifetime: no SMS can reach
            # the customer any more, so an unreachable provider must not hold the money.
            log.warning(
                "provider unreachable past the deadline (%s)",
                exc.code,
                extra={"order_id": order_id},
            )
        await self._no_sms(order, reason)

    def _provider_given_up(self, order: asyncpg.Record) -> bool:
        """Whether an order is far enough past its deadline to stop waiting for the provider."""
        give_up_at = provider_give_up_at(
            order["deadline_at"], self._w.settings.provider_giveup_seconds
        )
        return give_up_at is not None and datetime.now(UTC) >= give_up_at

    async def _no_sms(self, order: asyncpg.Record, reason: str) -> None:
        """The activation ended without an SMS: refund, or fail a non-refundable order."""
        order_id = order["id"]
        if OrderType(order["type"]) in REFUNDABLE_WITHOUT_SMS:
            await self._to_refund(order_id, Status.WAITING_FOR_SMS, f"no SMS ({reason})")
            return
        async with transaction(self._w.pool) as conn:
            moved = await store.transition(conn, order_id, Status.WAITING_FOR_SMS, Status.FAILED)
            if moved is not None:
                await store.cancel_timer(conn, order_id, Timer.SMS_TIMEOUT)
        if moved is not None:
            log.warning(
                "no SMS on a non-refundable order: %s", reason, extra={"order_id": order_id}
            )

    async def poll_forever(self) -> None:
        """Claim due orders and poll them at the provider until stop."""
        interval = self._w.settings.sms_poll_interval_seconds
        while not self._w.stop.is_set():
            ops.beat("sms-poller")
            try:
                orders = await self._w.pool.fetch(Q.orders_claim_sms_poll, 50, interval)
                await asyncio.gather(*(self.check(o) for o in orders))
            except Exception:
                log.exception("SMS poll failed")
            try:
                await asyncio.wait_for(self._w.stop.wait(), min(interval, 1.0))
            except TimeoutError:
                pass

    async def finish_forever(self) -> None:
        """Finish done activations at the provider until stop.

        A loop of its own: a provider that hangs on finishing must not slow the SMS poller,
        which the next codes (and their settlement) wait for.
        """
        while not self._w.stop.is_set():
            ops.beat("activation-finisher")
            try:
                await self.finish_due()
            except Exception:
                log.exception("finishing activations failed")
            try:
                await asyncio.wait_for(self._w.stop.wait(), 1.0)
            except TimeoutError:
                pass
