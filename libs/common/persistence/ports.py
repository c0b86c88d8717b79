"""The stores' interfaces: what use cases may ask of persistence, met by PostgreSQL and the twin.

Each Protocol is implemented twice: by the PostgreSQL stores (`stores.PgStores`) and by the
in-memory twin (`memory.MemoryStores`); `tests/integration/test_store_contract.py` runs the
same tests against both.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from libs.common.domain.alarms import Alarm
from libs.common.domain.events import Event
from libs.common.domain.fx import CachedRate
from libs.common.domain.messages import Message
from libs.common.domain.orders import NewOrder, Order, Status
from libs.common.domain.refunds import Refund, RefundClaim, RefundStatus
from libs.common.persistence.catalog_store import Catalog, CatalogData


class Orders(Protocol):
    """The orders table and its status log: reads and guarded transitions."""

    async def insert(self, new: NewOrder) -> Order:
        """Create a pending_payment order."""

    async def get(self, order_id: str) -> Order | None:
        """Load one order."""

    async def transition(
        self, order_id: str, expected: Status, target: Status, **changes: Any
    ) -> Order | None:
        """Move an order from expected to target; None when it was not in expected (stale)."""

    async def mark_paid(self, order_id: str, *, deadline: float, **changes: Any) -> bool:
        """pending_payment -> paid: start the SMS deadline and tell the provider worker."""

    async def complete(self, order_id: str, *, code_retention: float, current: Status) -> bool:
        """code_received (or rent_active) -> completed, arming the code purge and the event."""

    # --- gateway: order methods ---

    async def refund_invoice_in_use(self, payment_hash: bytes) -> bool:
        """Whether an order already names this refund invoice (by its payment hash)."""

    async def reactivation_in_progress(self, order_id: str) -> bool:
        """Whether a paid reactivation of this order is not over yet."""

    async def unpaid_of_client(self, address: str) -> UnpaidOrders:
        """The client's unpaid orders that can still be paid (the unpaid cap counts them)."""

    async def tag_client(self, address: str) -> None:
        """Record, for the orders this transaction inserts, the client address they came from."""

    async def lock_client(self, address: str) -> None:
        """Serialise this client's order inserts until the transaction ends."""

    # --- payments: order methods ---

    async def by_payment_hash(self, payment_hash: bytes) -> Order | None:
        """The order whose invoice has this payment hash."""

    async def pending_payment(self, limit: int) -> list[OrderInvoice]:
        """Orders still waiting for their payment, newest first."""

    async def awaiting_payment_by_hash(self, payment_hashes: list[bytes]) -> list[OrderInvoice]:
        """Which of these payment hashes belong to orders still waiting for their payment."""

    async def hold_open(self, limit: int) -> list[OrderInvoice]:
        """Paid hold orders not yet settled or released, oldest first."""

    async def hold_completed_unsettled(self, limit: int) -> list[OrderInvoice]:
        """Completed hold orders still holding a code but no recorded settle."""

    async def mark_settled(self, order_id: str) -> None:
        """Record that the hold invoice was settled (from then on the code is shown)."""

    async def balance_refund_pending(self, limit: int) -> list[str]:
        """Ids of balance orders waiting to be credited back."""

    # --- provider: order methods ---

    async def now(self) -> datetime:
        """The database's clock, which every deadline of the provider stage is judged by."""

    async def claim_sms_poll(self, limit: int, interval: float) -> list[Order]:
        """Due orders with a number to poll, claimed and pushed back by `interval` seconds."""

    async def claim_rent_poll(self, limit: int, interval: float) -> list[Order]:
        """Due active rentals to poll, claimed and pushed back by `interval` seconds."""

    async def claim_sms_poll_missing(
        self, limit: int, interval: float, present: list[str]
    ) -> list[Order]:
        """As claim_sms_poll, only orders whose activation is not in `present` (the bulk answer)."""

    async def claim_bulk_poll(self, account: str, interval: float) -> bool:
        """Claim the account's bulk poll turn; True for one caller per `interval` seconds."""

    async def hurry_bulk_poll(self, account: str) -> None:
        """Make the account's next bulk poll turn due now."""

    async def poll_now(self, activation_id: str) -> str | None:
        """Have the SMS poller look at this activation's order now; its id, or None if none."""

    async def awaiting_sms(self, activation_ids: list[str]) -> list[Order]:
        """Orders of these activations waiting for an SMS (the first, or another asked for)."""

    async def by_activation(self, activation_id: str) -> Order | None:
        """The one-time order of this provider activation, whatever its status."""

    async def record_new_code(self, order_id: str, code: str, text: str | None) -> Order | None:
        """Another SMS (asked for, differing from the code shown) becomes the order's code.

        None when the order is not waiting for another SMS or the code is the one shown.
        """

    async def reopen_for_another_sms(self, order_id: str) -> bool:
        """Poll a code_received order again (another SMS asked for); False when it is not one."""

    async def stop_polling(self, order_id: str) -> None:
        """Stop polling a code_received order."""

    async def arm_finish(self, order_id: str) -> None:
        """Arm the housekeeping finish at the provider, first try now (orders with a number)."""

    async def claim_finish(self, limit: int, lease: float) -> list[Order]:
        """Orders whose finish is due, claimed and pushed back by a `lease` of seconds."""

    async def retry_finish(self, order_id: str, delay: float) -> None:
        """A failed finish: count the attempt and try again in `delay` seconds."""

    async def finish_done(self, order_id: str) -> None:
        """Finished at the provider (or given up on): count the attempt, nothing left to do."""

    # --- scheduler: order methods ---

    async def purge_code(self, order_id: str) -> None:
        """Forget the SMS codes and texts of an ended order (its row's and its messages')."""

    async def history(self, order_id: str) -> list[StatusChange]:
        """The order's status log, oldest first."""


class Timers(Protocol):
    """Durable per-order timers, due by the database clock."""

    async def set(self, order_id: str, kind: str, seconds: float) -> None:
        """Arm (or re-arm) the order's timer of this kind, due in `seconds`."""

    async def cancel(self, order_id: str, kind: str) -> None:
        """Disarm the order's timer of this kind if it has not fired."""

    # --- scheduler: timer methods ---

    async def claim_due(self, limit: int) -> list[DueTimer]:
        """Claim up to `limit` due, unfired timers, earliest first (inside a transaction)."""

    async def mark_fired(self, ids: list[int]) -> None:
        """Mark claimed timers fired (in the claiming transaction)."""


class Tokens(Protocol):
    """The root keys of the L402 credentials, by key id."""

    async def insert(self, key_id: bytes, root_key: bytes, order_id: str) -> None:
        """Store a new credential's root key for the order it unlocks."""

    async def delete_for_order(self, order_id: str) -> None:
        """Forget every credential of the order."""

    # --- gateway: token methods ---

    async def order_for_key(self, key_id: bytes) -> CredentialedOrder | None:
        """The order a credential's key id unlocks, with its root key, refund and messages."""


class Messages(Protocol):
    """The SMS of each order, stored once whichever source reported them."""

    async def record(self, order_id: str, msg: Message) -> bool:
        """Store a message once; False when it was already there."""

    async def for_order(self, order_id: str) -> list[Message]:
        """Every message of an order, oldest first."""


class Outbox(Protocol):
    """Events written in the caller's transaction, relayed to NATS after it commits."""

    async def enqueue(self, event: Event) -> None:
        """Write an event; it is published only if the surrounding transaction commits."""

    async def enqueue_many(self, events: Sequence[Event]) -> None:
        """Write many events in one statement (as enqueue, for a batch of fired timers)."""


class Inbox(Protocol):
    """Which consumer has already handled which message (idempotent consumers)."""

    async def seen(self, consumer: str, message_id: str) -> bool:
        """Whether this consumer already handled this message."""

    async def record(self, consumer: str, message_id: str) -> None:
        """Remember that this consumer handled this message."""


class Refunds(Protocol):
    """The intent to pay a customer back, one per order."""

    async def insert(self, order_id: str, amount_sats: int | None = None) -> None:
        """Write the intent to refund a standard order (the whole price unless amount_sats)."""

    async def get(self, order_id: str) -> Refund | None:
        """The order's refund, if one was ever owed."""

    # --- payments: refund methods ---

    async def claim(
        self, order_id: str, lease_seconds: float, claim_id: uuid.UUID
    ) -> RefundClaim | None:
        """Claim a due refund (or one whose lease ran out) for one attempt; None if not due."""

    async def due(self, limit: int) -> list[str]:
        """Order ids of refunds due for an attempt or whose claim's lease ran out."""

    async def succeeded(self, order_id: str, fee_sat: int) -> bool:
        """Record an in-flight refund as paid, whoever holds the claim; False if it was not."""

    async def retry_later(
        self, order_id: str, claim_id: uuid.UUID, reason: str, delay_seconds: float
    ) -> None:
        """Put a claimed refund back to pending, due after delay_seconds."""

    async def retry_uncounted(
        self, order_id: str, claim_id: uuid.UUID, reason: str, delay_seconds: float
    ) -> None:
        """As retry_later, giving back the attempt the claim counted (nothing reached the node)."""

    async def given_up(self, order_id: str, claim_id: uuid.UUID, reason: str) -> bool:
        """Mark a claimed refund failed for good; False if the claim was no longer held."""

    async def failed(self) -> list[Refund]:
        """Every refund that failed for good (to be paid by hand), oldest first."""

    # --- provider: refund methods ---


class Alarms(Protocol):
    """Operator alarms: raised until cleared."""

    async def raise_(self, alarm: Alarm, detail: str) -> datetime | None:
        """Raise the alarm; returns when it was first raised, None when it already was."""

    async def clear(self, alarm: Alarm) -> bool:
        """Clear the alarm; True when it was raised."""

    async def active(self, alarm: Alarm) -> tuple[str, datetime] | None:
        """(detail, since) of a raised alarm, or None."""


# --- gateway: new store Protocols ---


@dataclass(frozen=True)
class StatusChange:
    """One entry of an order's status log (from None: the order was created)."""

    from_status: Status | None
    to_status: Status
    at: datetime


@dataclass(frozen=True)
class DueTimer:
    """A timer claimed because it is due: its row id, its order, its kind and when it was due."""

    id: int
    order_id: str
    kind: str
    due_at: datetime


@dataclass(frozen=True, slots=True)
class UnpaidOrders:
    """A client's orders still awaiting payment: how many, and when the first one expires."""

    count: int
    first_expiry: datetime | None


@dataclass(frozen=True, slots=True)
class RefundState:
    """What the customer sees of a refund: where it stands, how much, when paid."""

    status: RefundStatus
    amount_sats: int
    paid_at: datetime | None


@dataclass(frozen=True, slots=True)
class CredentialedOrder:
    """An order read through its credential: everything an authenticated poll answers with."""

    order: Order
    root_key: bytes
    refund: RefundState | None
    messages: list[Message]


# --- payments: new store Protocols ---


@dataclass(frozen=True, slots=True)
class OrderInvoice:
    """An order as the invoice sweeps scan it: its id, status and invoice's payment hash."""

    order_id: str
    status: Status
    payment_hash: bytes


@dataclass(frozen=True, slots=True)
class Funding:
    """A pending top-up of a prepaid account: its hold invoice and what it credits."""

    id: str
    account_id: int
    amount_sats: int
    payment_hash: bytes
    preimage: bytes


class AlreadyRecorded(Exception):
    """This ledger movement (kind, ref) is recorded already: it was done before."""


class Accounts(Protocol):
    """Prepaid accounts: balances moved through a ledger that records each movement once."""

    async def move_once(self, account_id: int, delta_sats: int, kind: str, ref: str) -> int | None:
        """Record one balance movement; the new balance, or None if it would overdraw.

        Raises AlreadyRecorded when (kind, ref) is in the ledger; in a transaction, that
        aborts it, so the caller rolls back whatever the movement paid for.
        """

    async def already_recorded(self, kind: str, ref: str) -> bool:
        """Tell whether this movement is in the ledger."""

    async def fundings_pending(self, limit: int) -> list[Funding]:
        """Top-ups neither credited nor expired, oldest first."""

    async def mark_funding(self, funding_id: str, status: str) -> bool:
        """Move a pending top-up to credited or expired; False if it was not pending."""


# --- provider: new store Protocols ---

# --- scheduler: new store Protocols ---


class Catalogs(Protocol):
    """What can be sold, at what USD cost, the BTC/USD rate, and the jobs that refresh them."""

    async def load(self) -> Catalog:
        """The whole catalog, read in one consistent snapshot."""

    async def rate(self) -> CachedRate | None:
        """The stored BTC/USD rate with its age by the database clock; None before the first."""

    async def read(self, known: Catalog | None = None) -> tuple[Catalog, CachedRate | None]:
        """The catalog and the rate; `known` is reused if no refresh replaced it since."""

    async def replace(self, data: CatalogData) -> None:
        """Replace every catalog row (rent prices only when `data.rent` is not None)."""

    async def store_rate(self, rate: Decimal, source: str) -> None:
        """Record a freshly fetched rate, fetched now."""

    def single_flight(self, *, wait: bool) -> AbstractAsyncContextManager[bool]:
        """Hold the catalog refresh lock for the block; yields False if it is held elsewhere."""

    async def claim_job(self, name: str, interval: float) -> bool:
        """Claim a due job; it is then not due again for `interval` seconds."""

    async def job_ok(self, name: str, counts: dict[str, Any], interval: float) -> None:
        """Record a success; the next periodic run is postponed to `interval` from now."""

    async def job_failed(self, name: str, error: str, retry: float) -> None:
        """Record a failure; the job is due again within `retry` seconds."""


class Stores(Protocol):
    """Every store bound to one database (or one transaction) and the subject prefix."""

    @property
    def orders(self) -> Orders:
        """The order store."""

    @property
    def timers(self) -> Timers:
        """The timer store."""

    @property
    def tokens(self) -> Tokens:
        """The credential store."""

    @property
    def messages(self) -> Messages:
        """The message store."""

    @property
    def outbox(self) -> Outbox:
        """The outbox store."""

    @property
    def inbox(self) -> Inbox:
        """The inbox store."""

    @property
    def refunds(self) -> Refunds:
        """The refund store."""

    @property
    def alarms(self) -> Alarms:
        """The alarm store."""

    # --- gateway: more stores ---

    # --- payments: more stores ---

    @property
    def accounts(self) -> Accounts:
        """The prepaid accounts store."""

    # --- provider: more stores ---

    # --- scheduler: more stores ---

    @property
    def catalog(self) -> Catalogs:
        """The catalog store."""

    def transaction(self) -> AbstractAsyncContextManager[Stores]:
        """The same stores inside one transaction that commits when the block succeeds."""
