"""What the payments stage needs from its process and from the merchant's Lightning node.

`messaging.runtime.Worker` and `adapters.lightning.LndClient` meet these Protocols; the unit
tests pass the in-memory stores and a fake node instead (tests/unit/test_payments_*.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from libs.common.adapters.lightning import Invoice, InvoicePage, Payment
from libs.common.core.config import Settings
from libs.common.persistence.ports import Stores


class Host(Protocol):
    """The running worker: its settings, its stores and its stop signal."""

    @property
    def settings(self) -> Settings:
        """The process settings."""

    @property
    def stores(self) -> Stores:
        """The stores, bound to the worker's database and subject prefix."""

    @property
    def stop(self) -> asyncio.Event:
        """Set when the process is stopping."""


class Node(Protocol):
    """The calls the payments stage makes to the merchant's LND (see LndClient)."""

    async def lookup_invoice(self, payment_hash: bytes) -> Invoice:
        """One invoice by payment hash; raises InvoiceNotFound."""

    async def list_invoices(
        self, *, pending_only: bool, index_offset: int = 0, num_max_invoices: int = 100
    ) -> InvoicePage:
        """One page of invoices past index_offset, oldest first."""

    async def settle_invoice(self, preimage: bytes) -> None:
        """Take a held payment."""

    async def cancel_invoice(self, payment_hash: bytes, *, money: bool = True) -> None:
        """Cancel an invoice, giving a held HTLC back."""

    def subscribe_invoices(
        self, *, add_index: int = 0, settle_index: int = 0
    ) -> AsyncIterator[Invoice]:
        """New and settled invoices, replaying after the given indexes."""

    def send_payment(
        self,
        payment_request: str,
        *,
        amt_sat: int | None = None,
        fee_limit_sat: int,
        timeout_seconds: int,
    ) -> AsyncIterator[Payment]:
        """Pay an invoice: updates until SUCCEEDED or FAILED."""

    def track_payment(self, payment_hash: bytes) -> AsyncIterator[Payment]:
        """Our payment to this hash: its state, then updates until final."""
