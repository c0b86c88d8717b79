"""Only the payments worker holds a macaroon that can send: the dev stack bakes one per role."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from libs.common.adapters.lightning import LndClient, LndError, PaymentNotInitiated
from tests.e2e.test_l402_order import _refund_invoice

pytestmark = pytest.mark.e2e


async def test_the_gateway_macaroon_cannot_send_and_the_payments_one_can(
    stack: dict[str, Any], payer: LndClient
) -> None:
    baked = json.loads((Path(stack["state_dir"]) / "lnd-macaroons.json").read_text())
    rest_url = stack["merchant_lnd"]["rest_url"]
    assert baked["gateway"] != stack["merchant_lnd"]["macaroon_hex"]
    gateway = LndClient(rest_url, baked["gateway"])
    payments = LndClient(rest_url, baked["payments"])
    try:
        refund, refund_hash = await _refund_invoice(payer)
        with pytest.raises(LndError) as denied:
            async for _ in gateway.send_payment(
                refund, amt_sat=100, fee_limit_sat=0, timeout_seconds=30
            ):
                pass
        assert denied.value.message == "permission denied"
        with pytest.raises(LndError, match="permission denied"):
            async for _ in gateway.track_payment(refund_hash):
                pass
        # The gateway still creates the invoices it needs (the stack's own orders prove the
        # hold invoices), and payments may track and send.
        assert (await gateway.add_invoice(value_msat=1000, memo="x", expiry=60)).payment_request
        with pytest.raises(PaymentNotInitiated):
            async for _ in payments.track_payment(refund_hash):
                pass
        assert (await payer.lookup_invoice(refund_hash)).state == "OPEN"
    finally:
        await gateway.close()
        await payments.close()
