"""A steady stream of orders of every type and payment mode, each remembered for the checks.

Every round places one order of each kind and one top-up, as customers would: L402
`receive-sms` that completes, one that gets no number and is refunded,
`receive-sms-reactivate` of an earlier completed order, a classic hold order paid by the
payer node, and a prepaid `immediate` order debited from an account; a `rent-number` is
bought once per phase (`rent`). A request the stack cannot answer during a fault is
counted as refused, never retried into a second order. Customers poll their orders; the
first answer that shows a code is checked against the merchant node: the invoice behind
it must already be SETTLED.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import bolt11

from libs.common.adapters.lightning import LndClient, LndError
from tests.e2e.test_classic_hold import _classic
from tests.e2e.test_l402_order import TERMINAL, _refund_invoice

KINDS = ("l402", "l402_no_number", "rent", "reactivate", "classic", "prepaid")
# The no-number orders ask for Germany, whose stock the run empties after the catalog loads:
# quoted from the catalog, refused by the provider after payment.
NO_NUMBER_COUNTRY = ("DE", 43)
RENT_MINUTES = 120
# Errors that mean "the stack could not answer", as a client sees them mid-fault.
CLIENT_ERRORS = (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError, ValueError, LndError)
POLL_SECONDS = 0.5


@dataclass
class Placed:
    """One order the stream created (the gateway answered with its id)."""

    kind: str
    order_id: str
    price: int
    payreq: str  # the invoice the customer was asked to pay ("paid" for prepaid orders)
    refund_hash: bytes | None = None  # L402: the customer's refund invoice
    auth: str | None = None  # L402: the credential, once paid
    final: str | None = None  # the last status the customer saw

    @property
    def payment_hash(self) -> bytes | None:
        """The hash of the invoice the customer paid (None for prepaid orders)."""
        if not self.payreq.startswith("ln"):
            return None
        return bytes.fromhex(bolt11.decode(self.payreq).payment_hash)


@dataclass
class Funding:
    """One top-up asked for with POST /fund and paid by the payer node."""

    payreq: str
    amount: int


@dataclass
class Traffic:
    """The customers: place, pay and poll orders; remember everything for the checks."""

    http: aiohttp.ClientSession
    stack: dict[str, Any]
    payer: LndClient
    merchant: LndClient
    api_key: str
    placed: list[Placed] = field(default_factory=list)
    fundings: list[Funding] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    refusal_statuses: Counter[int] = field(default_factory=Counter)  # 0: no answer at all
    violations: list[str] = field(default_factory=list)
    reactivatable: list[Placed] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def reset(self) -> None:
        """Forget the orders of the last phase (completed orders stay reactivatable)."""
        self.placed, self.fundings, self.violations = [], [], []
        self.refused, self.refusal_statuses = Counter(), Counter()

    def refuse(self, kind: str, status: int) -> None:
        """Count a request the stack did not take, by kind and by the HTTP status answered."""
        self.refused[kind] += 1
        self.refusal_statuses[status] += 1

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        """Start a round every `interval` seconds until stop."""
        while not stop.is_set():
            self.round()
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

    def round(self) -> None:
        """One order of each kind, and a top-up that keeps the prepaid account funded."""
        self.spawn(self.l402("l402", {"country": "US", "service": "tg"}))
        self.spawn(self.l402("l402_no_number", {"country": NO_NUMBER_COUNTRY[0], "service": "tg"}))
        if self.reactivatable:
            earlier = self.reactivatable.pop(0)
            self.spawn(
                self.l402(
                    "reactivate",
                    {"type": "receive-sms-reactivate", "orderId": earlier.order_id},
                    auth=earlier.auth,
                )
            )
        self.spawn(self.classic())
        self.spawn(self.prepaid())
        self.spawn(self.fund(1000))  # more than an order costs: never short

    async def rent(self) -> None:
        """Rent a number (once per phase: the provider has a couple of dozen to rent, and a
        rental outlives the run)."""
        body = {"type": "rent-number", "country": "US", "service": "tg"}
        await self.l402("rent", body | {"durationMinutes": RENT_MINUTES})

    def spawn(self, coro: Any) -> None:
        """Run one customer in the background."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self, within: float) -> None:
        """Wait for every customer to finish (paid, polled to the end, or given up)."""
        deadline = time.monotonic() + within
        while self.tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self.tasks), timeout=max(0.1, deadline - time.monotonic()))
        for task in list(self.tasks):
            task.cancel()

    async def l402(self, kind: str, body: dict[str, Any], auth: str | None = None) -> None:
        """Create an L402 order, pay it, poll it to the end."""
        try:
            refund, refund_hash = await _refund_invoice(self.payer)
            headers = {"Authorization": auth} if auth else {}
            async with self.http.post(
                f"{self.stack['gateway_url']}/v2/l402/order",
                json={"type": "receive-sms", "refundInvoice": refund, **body},
                headers=headers,
            ) as resp:
                status, challenge = resp.status, await resp.json()
        except CLIENT_ERRORS:
            self.refuse(kind, 0)
            return
        if status != 402:
            self.refuse(kind, status)
            return
        placed = Placed(
            kind, challenge["orderId"], challenge["priceSats"], challenge["invoice"], refund_hash
        )
        self.placed.append(placed)
        try:
            payment = await self.payer.pay(placed.payreq, fee_limit_sat=10, timeout_seconds=30)
        except CLIENT_ERRORS:
            return  # unknown: the node's record and the order's status tell later
        if payment.status != "SUCCEEDED" or payment.preimage is None:
            return
        placed.auth = f"L402 {challenge['macaroon']}:{payment.preimage.hex()}"
        await self.poll_l402(placed, until=TERMINAL | {"rent_active"})
        if placed.final == "completed" and kind in ("l402", "reactivate"):
            self.reactivatable.append(placed)

    async def poll_l402(self, placed: Placed, until: set[str], within: float = 300) -> None:
        """Poll an L402 order as its customer until it reaches `until` or time runs out."""
        assert placed.auth is not None
        url = f"{self.stack['gateway_url']}/v2/l402/order/{placed.order_id}"
        deadline = time.monotonic() + within
        checked = False
        while time.monotonic() < deadline:
            try:
                async with self.http.get(url, headers={"Authorization": placed.auth}) as resp:
                    order = await resp.json() if resp.status == 200 else None
            except CLIENT_ERRORS:
                order = None
            if order is not None:
                placed.final = order["status"]
                if order.get("code") and not checked:
                    checked = await self.code_settled(placed)
                if order["status"] in until:
                    return
            await asyncio.sleep(POLL_SECONDS)

    async def classic(self) -> None:
        """Create a classic hold order, pay it (held until settle or cancel), poll it."""
        try:
            status, body = await _classic(
                self.http,
                self.stack,
                "POST",
                "/createorder",
                json={"country": "US", "service": "tg"},
            )
        except CLIENT_ERRORS:
            status, body = 0, {}
        if status != 200 or body.get("status") != "OK":
            self.refuse("classic", status)
            return
        price = int(bolt11.decode(body["payreq"]).amount_msat or 0) // 1000
        placed = Placed("classic", body["orderId"], price, body["payreq"])
        self.placed.append(placed)
        pay = asyncio.ensure_future(
            self.payer.pay(placed.payreq, fee_limit_sat=10, timeout_seconds=60)
        )
        await self.poll_classic(placed)
        try:
            await asyncio.wait_for(pay, 120)
        except (*CLIENT_ERRORS, asyncio.CancelledError):
            pass  # the node's record tells how the held payment ended

    async def prepaid(self) -> None:
        """An immediate order debited from the prepaid account, polled to the end."""
        try:
            status, body = await _classic(
                self.http,
                self.stack,
                "POST",
                "/createorder",
                json={"country": "US", "service": "tg", "immediate": True},
                headers={"X-API-Key": self.api_key},
            )
        except CLIENT_ERRORS:
            status, body = 0, {}
        if status != 200 or body.get("payreq") != "paid":
            self.refuse("prepaid", status)
            return
        placed = Placed("prepaid", body["orderId"], 0, "paid")
        self.placed.append(placed)
        await self.poll_classic(placed)

    async def poll_classic(self, placed: Placed, within: float = 300) -> None:
        """Poll /orderstatus until the order ends; check the first code against settlement."""
        deadline = time.monotonic() + within
        checked = False
        while time.monotonic() < deadline:
            try:
                status, body = await _classic(
                    self.http,
                    self.stack,
                    "GET",
                    "/orderstatus",
                    params={"orderId": placed.order_id},
                )
            except CLIENT_ERRORS:
                status, body = 0, {}
            if status == 200:
                placed.final = body.get("orderStatus")
                if "code" in body and not checked:
                    checked = await self.code_settled(placed)
                if placed.final in TERMINAL:
                    return
            await asyncio.sleep(POLL_SECONDS)

    async def code_settled(self, placed: Placed) -> bool:
        """A code was just shown: its invoice must be SETTLED already (settling is final, so a
        later lookup that finds it unsettled proves the code came first). True once checked."""
        payment_hash = placed.payment_hash
        if payment_hash is None:
            return True  # prepaid: no invoice
        try:
            invoice = await self.merchant.lookup_invoice(payment_hash)
        except CLIENT_ERRORS:
            return False  # the node is down: check on the next answer
        if invoice.state != "SETTLED":
            self.violations.append(
                f"code shown while the invoice is {invoice.state}: {placed.kind} {placed.order_id}"
            )
        return True

    async def fund(self, amount: int) -> None:
        """Top the account up with a hold invoice the payer pays."""
        try:
            status, body = await _classic(
                self.http,
                self.stack,
                "POST",
                "/fund",
                json={"amount": amount},
                headers={"X-API-Key": self.api_key},
            )
        except CLIENT_ERRORS:
            status, body = 0, {}
        if status != 200:
            self.refuse("fund", status)
            return
        self.fundings.append(Funding(body["payreq"], amount))
        try:
            await self.payer.pay(body["payreq"], fee_limit_sat=10, timeout_seconds=60)
        except CLIENT_ERRORS:
            pass  # the node's record tells whether it was paid
