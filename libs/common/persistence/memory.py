"""The in-memory twin of the stores: the same contract as PostgreSQL, in dicts, on a given clock.

Like procrastinate's InMemoryConnector, it lets the workers' decisions be unit-tested without a
server: `MemoryStores(clock)` answers every store call the way PostgreSQL would, with `now`
read from the clock the test controls. A transaction takes one lock (so transactions never
interleave, a little stricter than READ COMMITTED) and restores a snapshot if its block fails.
`tests/integration/test_store_contract.py` runs one suite against both.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from libs.common.domain.alarms import Alarm
from libs.common.domain.countries import CountryIndex
from libs.common.domain.events import Event, EventType, Timer
from libs.common.domain.fx import CachedRate
from libs.common.domain.messages import Message, extract_code, storable
from libs.common.domain.orders import (
    NewOrder,
    Order,
    OrderType,
    PaymentMode,
    Status,
    check_transition,
    is_terminal,
)
from libs.common.domain.refunds import Refund, RefundClaim, RefundStatus
from libs.common.persistence.catalog_store import CATALOG_JOB, Catalog, CatalogData
from libs.common.persistence.order_store import NOW, WRITABLE
from libs.common.persistence.ports import (
    AlreadyRecorded,
    CredentialedOrder,
    DueTimer,
    Funding,
    OrderInvoice,
    RefundState,
    StatusChange,
    Stores,
    UnpaidOrders,
)
from libs.common.persistence.stores import PgStores

Clock = Callable[[], datetime]


@dataclass
class TimerRow:
    """One durable timer."""

    id: int
    order_id: str
    kind: str
    due_at: datetime
    fired_at: datetime | None = None


@dataclass
class OutboxRow:
    """One outbox row: the event and where it goes."""

    event: Event
    subject: str
    created_at: datetime
    published_at: datetime | None = None


@dataclass
class JobRow:
    """One refresh_jobs row."""

    next_run_at: datetime
    last_ok_at: datetime | None = None
    last_error: str | None = None
    counts: dict[str, Any] | None = None


@dataclass
class MemoryState:
    """Every table of the twin; copied whole to roll a transaction back."""

    orders: dict[str, Order] = field(default_factory=dict)
    # order_transitions: (order_id, from, to, at), in order.
    status_log: list[tuple[str, Status | None, Status, datetime]] = field(default_factory=list)
    timers: dict[tuple[str, str], TimerRow] = field(default_factory=dict)
    outbox: list[OutboxRow] = field(default_factory=list)
    inbox: set[tuple[str, str]] = field(default_factory=set)
    # order_messages: (order_id, dedup key) -> message, in insertion order.
    messages: dict[tuple[str, str], Message] = field(default_factory=dict)
    alarms: dict[Alarm, tuple[str, datetime]] = field(default_factory=dict)
    refunds: dict[str, Refund] = field(default_factory=dict)
    # l402_tokens: key id -> (root key, order id).
    tokens: dict[bytes, tuple[bytes, str]] = field(default_factory=dict)
    # --- gateway: more tables ---

    # --- payments: more tables ---
    # accounts: id -> balance; ledger: (kind, ref) -> (account id, amount, balance after).
    accounts: dict[int, int] = field(default_factory=dict)
    ledger: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)
    # fundings: id -> (the top-up, status, created_at).
    fundings: dict[str, tuple[Funding, str, datetime]] = field(default_factory=dict)

    # --- provider: more tables ---
    # sms_poll_turns: provider account -> when its next bulk poll is due.
    poll_turns: dict[str, datetime] = field(default_factory=dict)

    # --- scheduler: more tables ---
    # catalog_countries, catalog_services, catalog_prices, catalog_rent_prices.
    catalog: CatalogData = field(default_factory=lambda: CatalogData([], [], [], []))
    # fx_rates: (rate, fetched_at, source) of the one pair, or None.
    fx_rate: tuple[Decimal, datetime, str] | None = None
    jobs: dict[str, JobRow] = field(default_factory=dict)

    next_id: int = 1

    def new_id(self) -> int:
        """A fresh bigserial value."""
        self.next_id += 1
        return self.next_id


class _Base:
    """Shared access to the state and the clock."""

    def __init__(self, stores: MemoryStores) -> None:
        self._stores = stores

    @property
    def _state(self) -> MemoryState:
        return self._stores.state

    def _now(self) -> datetime:
        return self._stores.clock()


class MemoryTimers(_Base):
    """Twin of PgTimers."""

    async def set(self, order_id: str, kind: str, seconds: float) -> None:
        """Arm (or re-arm) the order's timer of this kind, due in `seconds`."""
        due = self._now() + timedelta(seconds=float(seconds))
        row = self._state.timers.get((order_id, kind))
        if row is None:
            self._state.timers[(order_id, kind)] = TimerRow(
                self._state.new_id(), order_id, kind, due
            )
        else:
            row.due_at, row.fired_at = due, None

    async def cancel(self, order_id: str, kind: str) -> None:
        """Disarm the order's timer of this kind if it has not fired."""
        row = self._state.timers.get((order_id, kind))
        if row is not None and row.fired_at is None:
            del self._state.timers[(order_id, kind)]

    # --- scheduler: timer methods ---

    async def claim_due(self, limit: int) -> list[DueTimer]:
        """Up to `limit` due, unfired timers, earliest first (the lock serializes claimers)."""
        now = self._now()
        due = sorted(
            (t for t in self._state.timers.values() if t.fired_at is None and t.due_at <= now),
            key=lambda t: (t.due_at, t.id),
        )
        return [DueTimer(t.id, t.order_id, t.kind, t.due_at) for t in due[:limit]]

    async def mark_fired(self, ids: list[int]) -> None:
        """Mark claimed timers fired."""
        wanted = set(ids)
        for row in self._state.timers.values():
            if row.id in wanted:
                row.fired_at = self._now()


class MemoryMessages(_Base):
    """Twin of PgMessages."""

    async def record(self, order_id: str, msg: Message) -> bool:
        """Store a message once; returns False when it was already there (a redelivery)."""
        key = (order_id, msg.dedup_key())
        if key in self._state.messages:
            return False
        text, phone_from = storable(msg.text), storable(msg.phone_from)
        code = storable(msg.code) or extract_code(text)
        self._state.messages[key] = Message(msg.received_at, text, code, phone_from)
        return True

    async def for_order(self, order_id: str) -> list[Message]:
        """Every message of an order, oldest first."""
        mine = [m for (oid, _), m in self._state.messages.items() if oid == order_id]
        return sorted(mine, key=lambda m: m.received_at)


class MemoryTokens(_Base):
    """Twin of PgTokens."""

    async def insert(self, key_id: bytes, root_key: bytes, order_id: str) -> None:
        """Store a new credential's root key for the order it unlocks."""
        if key_id in self._state.tokens:
            raise KeyError("token exists")  # PostgreSQL: unique violation
        self._state.tokens[key_id] = (root_key, order_id)

    async def delete_for_order(self, order_id: str) -> None:
        """Forget every credential of the order."""
        for key_id, (_, owner) in list(self._state.tokens.items()):
            if owner == order_id:
                del self._state.tokens[key_id]

    # --- gateway: token methods ---

    async def order_for_key(self, key_id: bytes) -> CredentialedOrder | None:
        """The order a credential's key id unlocks, with its root key, refund and messages."""
        found = self._state.tokens.get(key_id)
        if found is None:
            return None
        root_key, order_id = found
        order = self._state.orders[order_id]
        refund = self._state.refunds.get(order_id)
        state = None
        if refund is not None:
            state = RefundState(refund.status, refund.amount_sats, refund.paid_at)
        messages = await self._stores.messages.for_order(order_id)
        return CredentialedOrder(order, root_key, state, messages)


class MemoryOutbox(_Base):
    """Twin of PgOutbox."""

    async def enqueue(self, event: Event) -> None:
        """Write an event; it is 'published' only if the surrounding transaction commits."""
        self._state.outbox.append(OutboxRow(event, event.subject(self._stores.prefix), self._now()))

    async def enqueue_many(self, events: Sequence[Event]) -> None:
        """Write many events at once, in order."""
        for event in events:
            await self.enqueue(event)


class MemoryInbox(_Base):
    """Twin of PgInbox."""

    async def seen(self, consumer: str, message_id: str) -> bool:
        """Whether this consumer already handled this message."""
        return (consumer, message_id) in self._state.inbox

    async def record(self, consumer: str, message_id: str) -> None:
        """Remember that this consumer handled this message."""
        self._state.inbox.add((consumer, message_id))


class MemoryOrders(_Base):
    """Twin of PgOrders."""

    async def insert(self, new: NewOrder) -> Order:
        """Create a pending_payment order."""
        if new.id in self._state.orders:
            raise KeyError(f"order {new.id} exists")  # PostgreSQL: unique violation
        now = self._now()
        values = {f.name: getattr(new, f.name) for f in dataclasses.fields(NewOrder)}
        values["invoice_expires_at"] = new.invoice_expires_at or now
        order = Order(
            **values,
            status=Status.PENDING_PAYMENT,
            created_at=now,
            updated_at=now,
            client_addr=self._stores.client_addr,
        )
        self._state.orders[order.id] = order
        self._state.status_log.append((order.id, None, order.status, now))
        return order

    async def get(self, order_id: str) -> Order | None:
        """Load one order."""
        return self._state.orders.get(order_id)

    async def transition(
        self, order_id: str, expected: Status, target: Status, **changes: Any
    ) -> Order | None:
        """Move an order from expected to target; None when it was not in expected."""
        check_transition(expected, target)
        now = self._now()
        values: dict[str, Any] = {}
        for column, value in changes.items():
            if column not in WRITABLE:
                raise ValueError(f"a transition cannot set {column!r}")
            if value is NOW:
                values[column] = now
            elif isinstance(value, timedelta):
                values[column] = now + value
            else:
                values[column] = value
        order = self._state.orders.get(order_id)
        if order is None or order.status is not expected:
            return None
        values.update(status=target, updated_at=now)
        if is_terminal(target):
            values["finished_at"] = now
        moved = dataclasses.replace(order, **values)
        self._state.orders[order_id] = moved
        self._state.status_log.append((order_id, expected, target, now))
        return moved

    async def mark_paid(self, order_id: str, *, deadline: float, **changes: Any) -> bool:
        """pending_payment -> paid: start the SMS deadline and tell the provider worker."""
        moved = await self.transition(
            order_id,
            Status.PENDING_PAYMENT,
            Status.PAID,
            paid_at=NOW,
            deadline_at=timedelta(seconds=deadline),
            **changes,
        )
        if moved is None:
            return False
        await self._stores.timers.cancel(order_id, Timer.INVOICE_EXPIRED)
        await self._stores.timers.set(order_id, Timer.SMS_TIMEOUT, deadline)
        await self._stores.outbox.enqueue(Event(EventType.PAID, order_id))
        return True

    async def complete(
        self, order_id: str, *, code_retention: float, current: Status = Status.CODE_RECEIVED
    ) -> bool:
        """code_received (or rent_active) -> completed, arming the code purge and the event."""
        if await self.transition(order_id, current, Status.COMPLETED) is None:
            return False
        await self._stores.timers.set(order_id, Timer.PURGE_CODE, code_retention)
        await self._stores.outbox.enqueue(Event(EventType.COMPLETED, order_id))
        return True

    # --- gateway: order methods ---

    async def refund_invoice_in_use(self, payment_hash: bytes) -> bool:
        """Whether an order already names this refund invoice (by its payment hash)."""
        return any(o.refund_payment_hash == payment_hash for o in self._state.orders.values())

    async def reactivation_in_progress(self, order_id: str) -> bool:
        """Whether a paid reactivation of this order is not over yet."""
        return any(
            o.reactivates == order_id
            and o.status is not Status.PENDING_PAYMENT
            and not is_terminal(o.status)
            for o in self._state.orders.values()
        )

    async def unpaid_of_client(self, address: str) -> UnpaidOrders:
        """The client's unpaid orders that can still be paid (the unpaid cap counts them)."""
        now = self._now()
        expiries = [
            o.invoice_expires_at
            for o in self._state.orders.values()
            if o.client_addr == address
            and o.status is Status.PENDING_PAYMENT
            and o.invoice_expires_at > now
        ]
        return UnpaidOrders(len(expiries), min(expiries, default=None))

    async def tag_client(self, address: str) -> None:
        """Record, for the orders this transaction inserts, the client address they came from."""
        self._stores.client_addr = address

    async def lock_client(self, address: str) -> None:
        """Serialise this client's order inserts: the twin runs one transaction at a time."""
        del address

    # --- payments: order methods ---

    async def by_payment_hash(self, payment_hash: bytes) -> Order | None:
        """The order whose invoice has this payment hash."""
        found = [o for o in self._state.orders.values() if o.payment_hash == payment_hash]
        return found[0] if found else None

    def _invoices(self, orders: list[Order]) -> list[OrderInvoice]:
        """Orders as the invoice sweeps see them."""
        return [OrderInvoice(o.id, o.status, o.payment_hash) for o in orders]

    async def pending_payment(self, limit: int) -> list[OrderInvoice]:
        """Orders still waiting for their payment, newest first."""
        waiting = [o for o in self._state.orders.values() if o.status is Status.PENDING_PAYMENT]
        waiting.sort(key=lambda o: o.created_at, reverse=True)
        return self._invoices(waiting[:limit])

    async def awaiting_payment_by_hash(self, payment_hashes: list[bytes]) -> list[OrderInvoice]:
        """Which of these payment hashes belong to orders still waiting for their payment."""
        wanted = set(payment_hashes)
        return self._invoices(
            [
                o
                for o in self._state.orders.values()
                if o.payment_hash in wanted and o.status is Status.PENDING_PAYMENT
            ]
        )

    async def hold_open(self, limit: int) -> list[OrderInvoice]:
        """Paid hold orders not yet settled or released, oldest first."""
        open_ = {
            Status.PAID,
            Status.ALLOCATING_NUMBER,
            Status.WAITING_FOR_SMS,
            Status.CODE_RECEIVED,
            Status.REFUND_PENDING,
        }
        held = [o for o in self._state.orders.values() if o.is_hold and o.status in open_]
        held.sort(key=lambda o: o.created_at)
        return self._invoices(held[:limit])

    async def hold_completed_unsettled(self, limit: int) -> list[OrderInvoice]:
        """Completed hold orders still holding a code but no recorded settle."""
        found = [
            o
            for o in self._state.orders.values()
            if o.is_hold
            and o.status is Status.COMPLETED
            and o.settled_at is None
            and o.code is not None
        ]
        return self._invoices(found[:limit])

    async def mark_settled(self, order_id: str) -> None:
        """Record that the hold invoice was settled (from then on the code is shown)."""
        order = self._state.orders.get(order_id)
        if order is not None and order.is_hold and order.settled_at is None:
            self._state.orders[order_id] = dataclasses.replace(order, settled_at=self._now())

    async def balance_refund_pending(self, limit: int) -> list[str]:
        """Ids of balance orders waiting to be credited back."""
        return [
            o.id
            for o in self._state.orders.values()
            if o.is_balance and o.status is Status.REFUND_PENDING
        ][:limit]

    # --- provider: order methods ---

    def _set(self, order: Order, **values: Any) -> Order:
        """Store a changed copy of the order (an UPDATE without a status change)."""
        changed = dataclasses.replace(order, **values)
        self._state.orders[order.id] = changed
        return changed

    def _claim(
        self, due: Callable[[Order], datetime | None], limit: int
    ) -> list[tuple[Order, datetime]]:
        """The orders due by `due` (soonest first, at most `limit`), each with the claim's now."""
        now = self._now()
        found = [
            (at, o) for o in self._state.orders.values() if (at := due(o)) is not None and at <= now
        ]
        found.sort(key=lambda pair: pair[0])
        return [(o, now) for _, o in found[:limit]]

    async def now(self) -> datetime:
        """The twin's clock, which every deadline of the provider stage is judged by."""
        return self._now()

    async def claim_sms_poll(self, limit: int, interval: float) -> list[Order]:
        """Due orders with a number to poll, claimed and pushed back by `interval` seconds."""
        polled = {Status.WAITING_FOR_SMS, Status.CODE_RECEIVED}
        claimed = self._claim(lambda o: o.next_poll_at if o.status in polled else None, limit)
        return [self._set(o, next_poll_at=now + timedelta(seconds=interval)) for o, now in claimed]

    async def claim_rent_poll(self, limit: int, interval: float) -> list[Order]:
        """Due active rentals to poll, claimed and pushed back by `interval` seconds."""
        claimed = self._claim(
            lambda o: o.next_poll_at if o.status is Status.RENT_ACTIVE else None,
            limit,
        )
        return [self._set(o, next_poll_at=now + timedelta(seconds=interval)) for o, now in claimed]

    async def claim_sms_poll_missing(
        self, limit: int, interval: float, present: list[str]
    ) -> list[Order]:
        """As claim_sms_poll, only orders whose activation is not in `present` (the bulk answer)."""
        polled = {Status.WAITING_FOR_SMS, Status.CODE_RECEIVED}
        seen = set(present)
        claimed = self._claim(
            lambda o: (
                o.next_poll_at if o.status in polled and o.activation_id not in seen else None
            ),
            limit,
        )
        return [self._set(o, next_poll_at=now + timedelta(seconds=interval)) for o, now in claimed]

    async def claim_bulk_poll(self, account: str, interval: float) -> bool:
        """Claim the account's bulk poll turn; True for one caller per `interval` seconds."""
        now = self._now()
        due = self._state.poll_turns.get(account)
        if due is not None and due > now:
            return False
        self._state.poll_turns[account] = now + timedelta(seconds=interval)
        return True

    async def hurry_bulk_poll(self, account: str) -> None:
        """Make the account's next bulk poll turn due now."""
        now = self._now()
        if self._state.poll_turns.get(account, now) > now:
            self._state.poll_turns[account] = now

    async def poll_now(self, activation_id: str) -> str | None:
        """Have the SMS poller look at this activation's order now; its id, or None if none."""
        polled = {Status.WAITING_FOR_SMS, Status.CODE_RECEIVED}
        for o in self._state.orders.values():
            if (
                o.activation_id == activation_id
                and o.type is not OrderType.RENT_NUMBER
                and o.status in polled
                and o.next_poll_at is not None
            ):
                self._set(o, next_poll_at=self._now())
                return o.id
        return None

    async def awaiting_sms(self, activation_ids: list[str]) -> list[Order]:
        """Orders of these activations waiting for an SMS (the first, or another asked for)."""
        wanted = set(activation_ids)
        return [
            o
            for o in self._state.orders.values()
            if o.activation_id in wanted
            and o.type is not OrderType.RENT_NUMBER
            and (
                o.status is Status.WAITING_FOR_SMS
                or (o.status is Status.CODE_RECEIVED and o.another_sms_at is not None)
            )
        ]

    async def by_activation(self, activation_id: str) -> Order | None:
        """The one-time order of this provider activation, whatever its status."""
        for o in self._state.orders.values():
            if o.activation_id == activation_id and o.type is not OrderType.RENT_NUMBER:
                return o
        return None

    async def record_new_code(self, order_id: str, code: str, text: str | None) -> Order | None:
        """Another SMS (asked for, differing from the code shown) becomes the order's code."""
        order = self._state.orders.get(order_id)
        if (
            order is None
            or order.status is not Status.CODE_RECEIVED
            or order.another_sms_at is None
            or (order.code == code and order.sms_text == text)
        ):
            return None
        now = self._now()
        return self._set(
            order,
            code=code,
            sms_text=text,
            sms_received_at=now,
            another_sms_at=None,
            updated_at=now,
        )

    async def reopen_for_another_sms(self, order_id: str) -> bool:
        """Poll a code_received order again (another SMS asked for); False when it is not one."""
        order = self._state.orders.get(order_id)
        if order is None or order.status is not Status.CODE_RECEIVED:
            return False
        now = self._now()
        self._set(order, another_sms_at=now, next_poll_at=now, updated_at=now)
        return True

    async def stop_polling(self, order_id: str) -> None:
        """Stop polling a code_received order."""
        order = self._state.orders.get(order_id)
        if order is not None and order.status is Status.CODE_RECEIVED:
            self._set(order, next_poll_at=None)

    async def arm_finish(self, order_id: str) -> None:
        """Arm the housekeeping finish at the provider, first try now (orders with a number)."""
        order = self._state.orders.get(order_id)
        if order is not None and order.activation_id is not None:
            self._set(order, finish_due_at=self._now(), finish_attempts=0)

    async def claim_finish(self, limit: int, lease: float) -> list[Order]:
        """Orders whose finish is due, claimed and pushed back by a `lease` of seconds."""
        claimed = self._claim(lambda o: o.finish_due_at, limit)
        return [self._set(o, finish_due_at=now + timedelta(seconds=lease)) for o, now in claimed]

    async def retry_finish(self, order_id: str, delay: float) -> None:
        """A failed finish: count the attempt and try again in `delay` seconds."""
        order = self._state.orders.get(order_id)
        if order is not None:
            self._set(
                order,
                finish_due_at=self._now() + timedelta(seconds=delay),
                finish_attempts=order.finish_attempts + 1,
            )

    async def finish_done(self, order_id: str) -> None:
        """Finished at the provider (or given up on): count the attempt, nothing left to do."""
        order = self._state.orders.get(order_id)
        if order is not None:
            self._set(order, finish_due_at=None, finish_attempts=order.finish_attempts + 1)

    # --- scheduler: order methods ---

    async def purge_code(self, order_id: str) -> None:
        """Forget the SMS codes and texts of an ended order (its row's and its messages')."""
        order = self._state.orders.get(order_id)
        ended = {Status.COMPLETED, Status.REFUNDED, Status.REFUND_FAILED}
        if order is not None and order.status in ended:
            self._state.orders[order_id] = dataclasses.replace(
                order, code=None, sms_text=None, updated_at=self._now()
            )
        for key, msg in self._state.messages.items():
            if key[0] == order_id and (msg.text is not None or msg.code is not None):
                self._state.messages[key] = dataclasses.replace(msg, text=None, code=None)

    async def history(self, order_id: str) -> list[StatusChange]:
        """The order's status log, oldest first."""
        return [
            StatusChange(before, after, at)
            for oid, before, after, at in self._state.status_log
            if oid == order_id
        ]


class MemoryRefunds(_Base):
    """Twin of PgRefunds."""

    async def insert(self, order_id: str, amount_sats: int | None = None) -> None:
        """Write the intent to refund a standard order (the whole price unless amount_sats)."""
        order = self._state.orders.get(order_id)
        if order is None or order.payment_mode is not PaymentMode.STANDARD:
            return
        assert order.refund_invoice is not None and order.refund_payment_hash is not None
        taken = any(
            r.payment_hash == order.refund_payment_hash for r in self._state.refunds.values()
        )
        if order_id in self._state.refunds or taken:
            return  # ON CONFLICT DO NOTHING
        now = self._now()
        self._state.refunds[order_id] = Refund(
            order_id=order_id,
            payment_request=order.refund_invoice,
            payment_hash=order.refund_payment_hash,
            amount_sats=order.price_sats if amount_sats is None else amount_sats,
            status=RefundStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )

    async def get(self, order_id: str) -> Refund | None:
        """The order's refund, if one was ever owed."""
        return self._state.refunds.get(order_id)

    # --- payments: refund methods ---

    def _is_due(self, refund: Refund, now: datetime) -> bool:
        """Due for an attempt, or claimed by a worker whose lease ran out."""
        if refund.status is RefundStatus.PENDING:
            return refund.next_attempt_at <= now
        return (
            refund.status is RefundStatus.IN_FLIGHT
            and refund.lease_until is not None
            and refund.lease_until < now
        )

    async def claim(
        self, order_id: str, lease_seconds: float, claim_id: uuid.UUID
    ) -> RefundClaim | None:
        """Claim a due refund (or one whose lease ran out) for one attempt; None if not due."""
        now = self._now()
        refund = self._state.refunds.get(order_id)
        if refund is None or not self._is_due(refund, now):
            return None
        new_attempt = refund.status is RefundStatus.PENDING
        claimed = dataclasses.replace(
            refund,
            status=RefundStatus.IN_FLIGHT,
            attempts=refund.attempts + (1 if new_attempt else 0),
            lease_until=now + timedelta(seconds=float(lease_seconds)),
            claim_id=claim_id,
            updated_at=now,
        )
        self._state.refunds[order_id] = claimed
        return RefundClaim(claimed, new_attempt=new_attempt)

    async def due(self, limit: int) -> list[str]:
        """Order ids of refunds due for an attempt or whose claim's lease ran out."""
        now = self._now()
        due = [r for r in self._state.refunds.values() if self._is_due(r, now)]
        due.sort(key=lambda r: r.next_attempt_at)
        return [r.order_id for r in due[:limit]]

    def _claimed(self, order_id: str, claim_id: uuid.UUID | None) -> Refund | None:
        """The in-flight refund, if it is (still) held by this claim (None: any claim)."""
        refund = self._state.refunds.get(order_id)
        if refund is None or refund.status is not RefundStatus.IN_FLIGHT:
            return None
        if claim_id is not None and refund.claim_id != claim_id:
            return None
        return refund

    async def succeeded(self, order_id: str, fee_sat: int) -> bool:
        """Record an in-flight refund as paid, whoever holds the claim; False if it was not."""
        refund = self._claimed(order_id, None)
        if refund is None:
            return False
        now = self._now()
        self._state.refunds[order_id] = dataclasses.replace(
            refund,
            status=RefundStatus.SUCCEEDED,
            fee_sat=fee_sat,
            paid_at=now,
            updated_at=now,
            lease_until=None,
            claim_id=None,
        )
        return True

    async def _back_to_pending(
        self, order_id: str, claim_id: uuid.UUID, reason: str, delay: float, give_back: int
    ) -> None:
        """Put a claimed refund back to pending, due after delay seconds."""
        refund = self._claimed(order_id, claim_id)
        if refund is None:
            return
        now = self._now()
        self._state.refunds[order_id] = dataclasses.replace(
            refund,
            status=RefundStatus.PENDING,
            last_error=reason,
            lease_until=None,
            claim_id=None,
            attempts=max(refund.attempts - give_back, 0),
            updated_at=now,
            next_attempt_at=now + timedelta(seconds=float(delay)),
        )

    async def retry_later(
        self, order_id: str, claim_id: uuid.UUID, reason: str, delay_seconds: float
    ) -> None:
        """Put a claimed refund back to pending, due after delay_seconds."""
        await self._back_to_pending(order_id, claim_id, reason, delay_seconds, 0)

    async def retry_uncounted(
        self, order_id: str, claim_id: uuid.UUID, reason: str, delay_seconds: float
    ) -> None:
        """As retry_later, giving back the attempt the claim counted (nothing reached the node)."""
        await self._back_to_pending(order_id, claim_id, reason, delay_seconds, 1)

    async def given_up(self, order_id: str, claim_id: uuid.UUID, reason: str) -> bool:
        """Mark a claimed refund failed for good; False if the claim was no longer held."""
        refund = self._claimed(order_id, claim_id)
        if refund is None:
            return False
        self._state.refunds[order_id] = dataclasses.replace(
            refund,
            status=RefundStatus.FAILED,
            last_error=reason,
            lease_until=None,
            claim_id=None,
            updated_at=self._now(),
        )
        return True

    async def failed(self) -> list[Refund]:
        """Every refund that failed for good (to be paid by hand), oldest first."""
        failed = [r for r in self._state.refunds.values() if r.status is RefundStatus.FAILED]
        return sorted(failed, key=lambda r: r.updated_at)

    # --- provider: refund methods ---


class MemoryAlarms(_Base):
    """Twin of PgAlarms."""

    async def raise_(self, alarm: Alarm, detail: str) -> datetime | None:
        """Raise the alarm; returns when it was first raised, None when it already was."""
        if alarm in self._state.alarms:
            return None
        self._state.alarms[alarm] = (detail, self._now())
        return self._now()

    async def clear(self, alarm: Alarm) -> bool:
        """Clear the alarm; True when it was raised."""
        return self._state.alarms.pop(alarm, None) is not None

    async def active(self, alarm: Alarm) -> tuple[str, datetime] | None:
        """(detail, since) of a raised alarm, or None."""
        return self._state.alarms.get(alarm)


# --- gateway: new twin classes ---

# --- payments: new twin classes ---


class MemoryAccounts(_Base):
    """Twin of PgAccounts (what the payments worker uses)."""

    async def move_once(self, account_id: int, delta_sats: int, kind: str, ref: str) -> int | None:
        """Record one balance movement; the new balance, or None if it would overdraw."""
        if (kind, ref) in self._state.ledger:
            raise AlreadyRecorded(kind, ref)
        balance = self._state.accounts.get(account_id)
        if balance is None or balance + delta_sats < 0:
            return None
        self._state.accounts[account_id] = balance + delta_sats
        self._state.ledger[(kind, ref)] = (account_id, delta_sats, balance + delta_sats)
        return balance + delta_sats

    async def already_recorded(self, kind: str, ref: str) -> bool:
        """Tell whether this movement is in the ledger."""
        return (kind, ref) in self._state.ledger

    async def fundings_pending(self, limit: int) -> list[Funding]:
        """Top-ups neither credited nor expired, oldest first."""
        pending = [
            (f, at) for f, status, at in self._state.fundings.values() if status == "pending"
        ]
        pending.sort(key=lambda pair: pair[1])
        return [f for f, _ in pending[:limit]]

    async def mark_funding(self, funding_id: str, status: str) -> bool:
        """Move a pending top-up to credited or expired; False if it was not pending."""
        row = self._state.fundings.get(funding_id)
        if row is None or row[1] != "pending":
            return False
        self._state.fundings[funding_id] = (row[0], status, row[2])
        return True


# --- provider: new twin classes ---

# --- scheduler: new twin classes ---


class MemoryCatalog(_Base):
    """Twin of PgCatalog."""

    async def load(self) -> Catalog:
        """The whole catalog, sorted as PostgreSQL returns it."""
        data = self._state.catalog
        job = self._state.jobs.get(CATALOG_JOB)
        return Catalog(
            countries=CountryIndex(sorted(data.countries, key=lambda c: c.id)),
            services=sorted(data.services, key=lambda s: s.code),
            offers=sorted(data.offers, key=lambda o: (o.country_id, o.service)),
            rent=sorted(data.rent or [], key=lambda r: (r.country_id, r.service, r.hours)),
            refreshed_at=None if job is None else job.last_ok_at,
        )

    async def rate(self) -> CachedRate | None:
        """The stored rate with its age by the clock; None before the first."""
        if self._state.fx_rate is None:
            return None
        rate, fetched_at, source = self._state.fx_rate
        age = max((self._now() - fetched_at).total_seconds(), 0.0)
        return CachedRate(rate, fetched_at, age, source)

    async def read(self, known: Catalog | None = None) -> tuple[Catalog, CachedRate | None]:
        """The catalog and the rate; `known` is reused if no refresh replaced it since."""
        job = self._state.jobs.get(CATALOG_JOB)
        version = None if job is None else job.last_ok_at
        catalog = known
        if catalog is None or catalog.refreshed_at != version:
            catalog = await self.load()
        return catalog, await self.rate()

    async def replace(self, data: CatalogData) -> None:
        """Replace every catalog row (rent prices only when `data.rent` is not None)."""
        rent = self._state.catalog.rent if data.rent is None else list(data.rent)
        self._state.catalog = CatalogData(
            list(data.countries), list(data.services), list(data.offers), rent
        )

    async def store_rate(self, rate: Decimal, source: str) -> None:
        """Record a freshly fetched rate, fetched now."""
        self._state.fx_rate = (rate, self._now(), source)

    @asynccontextmanager
    async def single_flight(self, *, wait: bool) -> AsyncIterator[bool]:
        """Hold the refresh lock for the block; yields False if it is held elsewhere."""
        lock = self._stores.refresh_lock
        if not wait and lock.locked():
            yield False
            return
        async with lock:
            yield True

    async def claim_job(self, name: str, interval: float) -> bool:
        """Claim a due job; it is then not due again for `interval` seconds."""
        next_run = self._now() + timedelta(seconds=interval)
        row = self._state.jobs.get(name)
        if row is None:
            self._state.jobs[name] = JobRow(next_run)
            return True
        if row.next_run_at > self._now():
            return False
        row.next_run_at = next_run
        return True

    async def job_ok(self, name: str, counts: dict[str, Any], interval: float) -> None:
        """Record a success; the next periodic run is postponed to `interval` from now."""
        now = self._now()
        next_run = now + timedelta(seconds=interval)
        row = self._state.jobs.get(name)
        if row is None:
            self._state.jobs[name] = JobRow(next_run, now, None, counts)
            return
        row.last_ok_at, row.last_error, row.counts = now, None, counts
        row.next_run_at = max(row.next_run_at, next_run)

    async def job_failed(self, name: str, error: str, retry: float) -> None:
        """Record a failure; the job is due again within `retry` seconds."""
        row = self._state.jobs.get(name)
        if row is not None:
            row.last_error = error
            row.next_run_at = min(row.next_run_at, self._now() + timedelta(seconds=retry))


class MemoryStores:
    """Every store, in memory, on the given clock."""

    def __init__(self, clock: Clock, prefix: str = "orders") -> None:
        self.clock = clock
        self.prefix = prefix
        # What the unpaid cap's transaction setting would tag new orders with.
        self.client_addr: str | None = None
        self.state = MemoryState()
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self.orders = MemoryOrders(self)
        self.timers = MemoryTimers(self)
        self.outbox = MemoryOutbox(self)
        self.inbox = MemoryInbox(self)
        self.messages = MemoryMessages(self)
        self.tokens = MemoryTokens(self)
        self.alarms = MemoryAlarms(self)
        self.refunds = MemoryRefunds(self)
        # --- gateway: more stores ---

        # --- payments: more stores ---
        self.accounts = MemoryAccounts(self)

        # --- provider: more stores ---

        # --- scheduler: more stores ---
        self.catalog = MemoryCatalog(self)
        # The catalog refresh's advisory lock (outside the state: never rolled back).
        self.refresh_lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryStores]:
        """One transaction at a time; the state is restored if the block raises."""
        if self._lock.locked() and self._owner is asyncio.current_task():
            yield self  # nested: part of the outer transaction
            return
        async with self._lock:
            self._owner = asyncio.current_task()
            snapshot = copy.deepcopy(self.state)
            try:
                yield self
            except BaseException:
                self.state = snapshot
                raise
            finally:
                self._owner = None
                # PostgreSQL's set_config(..., true) ends with the transaction.
                self.client_addr = None

    # Helpers for tests: what the workers would see next.
    def events(self, type_: EventType | None = None) -> list[Event]:
        """Every event written to the outbox so far (optionally of one type), oldest first."""
        return [r.event for r in self.state.outbox if type_ is None or r.event.type is type_]

    def timer_due(self, order_id: str, kind: str) -> datetime | None:
        """When the order's unfired timer of this kind is due, or None when none is armed."""
        row = self.state.timers.get((order_id, kind))
        return None if row is None or row.fired_at is not None else row.due_at


def new_order_id() -> str:
    """A fresh order id, shaped as the gateway makes them."""
    return str(uuid.uuid4())


def _both_meet_the_contract(memory: MemoryStores, postgres: PgStores) -> tuple[Stores, Stores]:
    """Never called: mypy checks here that the twin and PostgreSQL both satisfy `Stores`."""
    return memory, postgres
