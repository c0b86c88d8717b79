"""The payments unit tests' kit: the in-memory stores on a test clock, and a fake Lightning node.

No server: the worker parts (`services/payments/*`) run against `MemoryStores` and `FakeNode`,
which answers the calls of `services.payments.node.Node` the way LND does.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bolt11 import Bolt11, TagChar, Tags, encode

from libs.common.adapters.lightning import (
    Invoice,
    InvoiceNotFound,
    InvoicePage,
    LndError,
    Payment,
    PaymentNotInitiated,
)
from libs.common.core.config import Settings
from libs.common.domain.orders import NewOrder, Order, OrderType, PaymentMode, Status
from libs.common.persistence.memory import MemoryStores
from libs.common.persistence.order_store import NOW
from services.payments.node import Host, Node

S = Status
PRICE = 2500
# The key the customer's node signs its refund invoices with (any key will do).
_PRIVKEY = "e126f68f7eafcc8b74f54d269fe206be715000f94dac067d1c04a8ca3b2db734"


@dataclass
class Clock:
    """The twin's clock, moved by the test."""

    now: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += timedelta(seconds=seconds)


@dataclass
class FakeHost:
    """What a payments part needs of its worker: settings, stores, stop."""

    settings: Settings
    stores: MemoryStores
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def host(**settings: object) -> tuple[FakeHost, Clock]:
    """A host on the twin, with these settings changed."""
    clock = Clock()
    return FakeHost(replace(Settings(), **settings), MemoryStores(clock)), clock  # type: ignore[arg-type]


def refund_invoice(*, expires_in: int = 3600) -> tuple[str, bytes]:
    """A signed no-amount regtest invoice (the customer's refund invoice) and its hash."""
    payment_hash = secrets.token_bytes(32)
    tags = Tags()
    tags.add(TagChar.payment_hash, payment_hash.hex())
    tags.add(TagChar.payment_secret, "11" * 32)
    tags.add(TagChar.description, "sms4sats refund")
    tags.add(TagChar.expire_time, 3600)
    # Dated so that it expires `expires_in` seconds from now (negative: already expired).
    date = int(time.time()) + expires_in - 3600
    return encode(Bolt11(currency="bcrt", date=date, tags=tags), _PRIVKEY), payment_hash


# How each status is reached from pending_payment, with what the transition writes.
_PATH: dict[Status, list[tuple[Status, dict[str, object]]]] = {
    S.PAID: [],
    S.ALLOCATING_NUMBER: [(S.ALLOCATING_NUMBER, {})],
    S.WAITING_FOR_SMS: [
        (S.ALLOCATING_NUMBER, {}),
        (S.WAITING_FOR_SMS, {"activation_id": "1", "phone_number": "4915112345678"}),
    ],
    S.CODE_RECEIVED: [
        (S.ALLOCATING_NUMBER, {}),
        (S.WAITING_FOR_SMS, {"activation_id": "1", "phone_number": "4915112345678"}),
        (S.CODE_RECEIVED, {"code": "123456", "sms_received_at": NOW}),
    ],
    S.REFUND_PENDING: [(S.ALLOCATING_NUMBER, {}), (S.REFUND_PENDING, {})],
}


async def place(
    stores: MemoryStores,
    status: Status = S.PENDING_PAYMENT,
    *,
    mode: PaymentMode = PaymentMode.STANDARD,
    node: FakeNode | None = None,
    refund_expires_in: int = 3600,
    account_id: int | None = None,
) -> Order:
    """An order of this payment mode, walked to `status` through the real transitions.

    A standard order gets a signed refund invoice, known to `node` when one is given.
    """
    refund_request, refund_hash = refund_invoice(expires_in=refund_expires_in)
    if node is not None:
        node.requests[refund_request] = refund_hash
    preimage = secrets.token_bytes(32)
    order = await stores.orders.insert(
        NewOrder(
            id=str(uuid.uuid4()),
            type=OrderType.RECEIVE_SMS,
            service="tg",
            country_id=187,
            price_sats=PRICE,
            provider_cost_usd=Decimal("0.25"),
            payment_hash=hashlib.sha256(preimage).digest(),
            payment_request="lnbcrt25u1order",
            invoice_expires_at=None,
            payment_mode=mode,
            refund_invoice=refund_request if mode is PaymentMode.STANDARD else None,
            refund_payment_hash=refund_hash if mode is PaymentMode.STANDARD else None,
            preimage=preimage if mode is PaymentMode.HOLD else None,
            account_id=account_id,
        )
    )
    if status is S.PENDING_PAYMENT:
        return order
    assert await stores.orders.mark_paid(order.id, deadline=1200, amt_paid_msat=PRICE * 1000)
    current = S.PAID
    for target, changes in _PATH[status]:
        assert await stores.orders.transition(order.id, current, target, **changes) is not None
        current = target
    if status is S.REFUND_PENDING:
        await stores.refunds.insert(order.id)
    loaded = await stores.orders.get(order.id)
    assert loaded is not None
    return loaded


def invoice(
    payment_hash: bytes, state: str, *, amt_paid_msat: int = 0, heights: list[int] | None = None
) -> Invoice:
    """An invoice as LND reports it."""
    return Invoice(
        r_hash=payment_hash,
        payment_request="lnbcrt1fake",
        state=state,
        value_msat=PRICE * 1000,
        amt_paid_msat=amt_paid_msat,
        creation_date=0,
        settle_date=0,
        expiry=600,
        add_index=1,
        settle_index=0,
        htlc_expiry_heights=heights or [],
        memo="",
    )


# What one send does at the node, as the test scripts it.
SUCCEED = "succeed"  # paid: SUCCEEDED
FAIL = "fail"  # no route: FAILED
REFUSED = "refused"  # the node answered an error; no payment exists
UNREACHED = "unreached"  # the request never reached the node (a full pool, a reset)
IN_FLIGHT = "in_flight"  # the receiver holds the HTLC


class FakeNode:
    """The merchant's LND as the payments stage sees it, in memory."""

    def __init__(self) -> None:
        self.invoices: dict[bytes, Invoice] = {}
        # Outgoing payments by payment hash: what track_payment reports.
        self.payments: dict[bytes, Payment] = {}
        # What the next sends do, in order (SUCCEED when the script runs out).
        self.plan: list[str] = []
        self.sends: list[tuple[str, int | None, int]] = []
        self.settles: list[bytes] = []
        self.cancels: list[bytes] = []
        self.lookups = 0
        # Refund invoices: payment request -> payment hash (what LND decodes).
        self.requests: dict[str, bytes] = {}
        self.fail_settle = False
        self.fail_cancel = False
        # Which track calls (1 = the first) get no answer from the node.
        self.fail_track_at: set[int] = set()
        self.tracks = 0
        # What given track calls report instead of the recorded payment (1 = the first).
        self.track_status_at: dict[int, str] = {}
        # Successful sends per payment hash: a refund paid twice shows 2.
        self.paid: Counter[bytes] = Counter()

    def add(self, inv: Invoice) -> Invoice:
        """Put an invoice at the node."""
        self.invoices[inv.r_hash] = inv
        return inv

    async def lookup_invoice(self, payment_hash: bytes) -> Invoice:
        """LookupInvoice."""
        self.lookups += 1
        found = self.invoices.get(payment_hash)
        if found is None:
            raise InvoiceNotFound("unable to locate invoice", 404)
        return found

    async def list_invoices(
        self, *, pending_only: bool, index_offset: int = 0, num_max_invoices: int = 100
    ) -> InvoicePage:
        """ListInvoices: one page holding every pending invoice."""
        listed = [i for i in self.invoices.values() if i.state in ("OPEN", "ACCEPTED")]
        if index_offset:
            listed = []
        return InvoicePage(listed, 0, len(listed))

    def _state(self, payment_hash: bytes, state: str) -> None:
        inv = self.invoices.get(payment_hash)
        if inv is not None:
            self.invoices[payment_hash] = replace(inv, state=state)

    async def settle_invoice(self, preimage: bytes) -> None:
        """SettleInvoice."""
        payment_hash = hashlib.sha256(preimage).digest()
        if payment_hash not in self.invoices:
            raise InvoiceNotFound("unable to locate invoice", 404)
        if self.fail_settle:
            raise LndError("settle failed", 500)
        self.settles.append(preimage)
        self._state(payment_hash, "SETTLED")

    async def cancel_invoice(self, payment_hash: bytes, *, money: bool = True) -> None:
        """CancelInvoice."""
        if payment_hash not in self.invoices:
            raise InvoiceNotFound("unable to locate invoice", 404)
        if self.fail_cancel:
            raise LndError("cancel failed", 500)
        self.cancels.append(payment_hash)
        self._state(payment_hash, "CANCELED")

    async def subscribe_invoices(
        self, *, add_index: int = 0, settle_index: int = 0
    ) -> AsyncIterator[Invoice]:
        """SubscribeInvoices: nothing new."""
        nothing: list[Invoice] = []
        for inv in nothing:
            yield inv

    def _payment(self, payment_hash: bytes, status: str, amount: int) -> Payment:
        return Payment(
            payment_hash, status, None, amount, 0, "" if status != "FAILED" else "NO_ROUTE"
        )

    async def send_payment(
        self,
        payment_request: str,
        *,
        amt_sat: int | None = None,
        fee_limit_sat: int,
        timeout_seconds: int,
    ) -> AsyncIterator[Payment]:
        """SendPaymentV2, doing what the plan says."""
        step = self.plan.pop(0) if self.plan else SUCCEED
        if step == UNREACHED:
            raise LndError("connection pool wait timed out", 0)
        self.sends.append((payment_request, amt_sat, fee_limit_sat))
        if step == REFUSED:
            raise LndError("internal error", 500)
        payment_hash = self.requests[payment_request]
        status = {SUCCEED: "SUCCEEDED", FAIL: "FAILED", IN_FLIGHT: "IN_FLIGHT"}[step]
        if step == SUCCEED:
            self.paid[payment_hash] += 1
        self.payments[payment_hash] = self._payment(payment_hash, status, amt_sat or 0)
        yield self.payments[payment_hash]

    async def track_payment(self, payment_hash: bytes) -> AsyncIterator[Payment]:
        """TrackPaymentV2."""
        self.tracks += 1
        if self.tracks in self.fail_track_at:
            raise LndError("node unreachable", 0)
        found = self.payments.get(payment_hash)
        if found is not None and self.tracks in self.track_status_at:
            found = replace(found, status=self.track_status_at[self.tracks])
        if found is None:
            raise PaymentNotInitiated("payment isn't initiated", 404)
        yield found


def _parts_meet_the_protocols(node: FakeNode, h: FakeHost) -> tuple[Node, Host]:
    """Never called: mypy checks the fakes stand in for LndClient and Worker."""
    return node, h
