"""Settle first, finish later: every order with a code reaches its outcome whatever setStatus
does, and finishing the activation at the provider is bounded housekeeping (simulator and
real PostgreSQL/NATS; the settle against the Lightning simulator)."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from libs.common.adapters.lightning import Payment
from libs.common.adapters.sms import HeroSmsClient
from libs.common.core.config import Settings
from libs.common.domain.events import Timer
from libs.common.domain.orders import NewOrder, Order, OrderType, PaymentMode, Status
from libs.common.messaging.runtime import Worker, open_worker
from libs.common.persistence.db import Q
from services.payments.hold import HoldInvoices
from services.payments.invoice_watch import InvoiceWatcher
from services.provider.service import ProviderStage
from tests.integration.conftest import Lightning
from tests.integration.helpers import insert_order
from tests.integration.test_provider_stage import (  # noqa: F401  (fixtures)
    API_KEY,
    Sim,
    assert_each_status_entered_once,
    claim_for_poll,
    event_types,
    get,
    provider_stage,
    settings,
    sim,
    smssim_url,
    timers,
)

pytestmark = pytest.mark.integration
S = Status
SET_STATUS_DOWN = {"mode": "error", "status": 503, "actions": ["setStatus"], "times": None}
RETRY = 0.2  # the first wait after a failed finish, in these tests


class Stage:
    """A provider worker whose L402 orders have a 60 s another-SMS window."""

    def __init__(self, worker: Worker, acts: ProviderStage) -> None:
        self.worker = worker
        self.pool = worker.pool
        self.settings = worker.settings
        self.acts = acts


@pytest.fixture
async def stage(settings: Settings, smssim_url: str) -> AsyncIterator[Stage]:  # noqa: F811
    tuned = replace(settings, another_sms_window_seconds=60.0, provider_finish_retry_seconds=RETRY)
    provider = HeroSmsClient(smssim_url, API_KEY, timeout=1.0, max_wait=0.5, max_retries=0)
    try:
        async with open_worker("provider", tuned, asyncio.Event()) as worker:
            yield Stage(worker, provider_stage(worker, provider))
    finally:
        await provider.close()


async def _paid(stage: Stage, order_id: str) -> None:
    async with stage.worker.stores.transaction() as tx:
        assert await tx.orders.mark_paid(order_id, deadline=stage.settings.order_timeout_seconds)


async def l402_order(stage: Stage) -> str:
    """A paid L402 (standard) receive-sms order."""
    order_id = await insert_order(stage.pool)
    await _paid(stage, order_id)
    return order_id


async def hold_order(stage: Stage, preimage: bytes | None = None, *, paid: bool = True) -> str:
    """A classic hold order, made paid unless told (its invoice not checked); returns its id."""
    preimage = preimage or secrets.token_bytes(32)
    order_id = secrets.token_hex(32)
    await stage.worker.stores.orders.insert(
        NewOrder(
            id=order_id,
            type=OrderType.RECEIVE_SMS,
            service="tg",
            country_id=187,
            price_sats=150,
            provider_cost_usd=Decimal("1.00"),
            payment_hash=hashlib.sha256(preimage).digest(),
            payment_request="lnbcrt1fake",
            invoice_expires_at=datetime.now(UTC) + timedelta(minutes=10),
            payment_mode=PaymentMode.HOLD,
            preimage=preimage,
        )
    )
    if paid:
        await _paid(stage, order_id)
    return order_id


async def prepaid_order(stage: Stage) -> str:
    """A classic order paid from a prepaid balance, as the gateway makes it."""
    account = await stage.pool.fetchval(Q.account_create, secrets.token_bytes(32), "t")
    order_id = secrets.token_hex(32)
    async with stage.worker.stores.transaction() as tx:
        assert await tx.accounts.move(account, 1000, "fund", order_id) is not None
        await tx.orders.insert(
            NewOrder(
                id=order_id,
                type=OrderType.RECEIVE_SMS,
                service="tg",
                country_id=187,
                price_sats=150,
                provider_cost_usd=Decimal("1.00"),
                payment_hash=secrets.token_bytes(32),
                payment_request="paid",
                invoice_expires_at=None,
                payment_mode=PaymentMode.BALANCE,
                account_id=account,
            )
        )
        assert await tx.accounts.move(account, -150, "order", order_id) is not None
    await _paid(stage, order_id)
    return order_id


async def code_arrives(stage: Stage, sim: Sim, order_id: str, code: str) -> Order:  # noqa: F811
    """Allocate a number, let an SMS reach it and poll it once."""
    await stage.acts.allocation.allocate(order_id)
    order = await get(stage.pool, order_id)
    assert order.status == S.WAITING_FOR_SMS
    await sim.deliver(order.activation_id, code)
    await stage.acts.watch.check(await claim_for_poll(stage.pool, order_id))
    return await get(stage.pool, order_id)


async def calls(sim: Sim, action: str) -> int:  # noqa: F811
    return int((await sim.request("GET", "/sim/stats"))["actions"].get(action, 0))


async def status_calls(sim: Sim) -> int:  # noqa: F811
    return await calls(sim, "getStatus") + await calls(sim, "getStatusV2")


async def entered_at(pool: asyncpg.Pool, order_id: str) -> dict[str, datetime]:
    rows = await pool.fetch(
        "SELECT to_status, at FROM order_transitions WHERE order_id = $1 ORDER BY id", order_id
    )
    return {r["to_status"]: r["at"] for r in rows}


# ----------------------------------------------------------------------------- outcomes


async def test_a_hold_order_asks_for_its_settle_with_the_code_while_setstatus_fails(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    await sim.request("POST", "/sim/faults", SET_STATUS_DOWN)
    order_id = await hold_order(stage)

    order = await code_arrives(stage, sim, order_id, "424242")

    # The code and the settle request are written by one transaction (same now()); the
    # payments worker completes the order after the settle.
    assert order.status == S.CODE_RECEIVED and order.code == "424242"
    assert await event_types(stage.pool, order_id) == ["paid", "code_delivered"]
    written = await stage.pool.fetchval(
        "SELECT created_at FROM outbox WHERE payload->>'orderId' = $1"
        " AND payload->>'type' = 'code_delivered'",
        order_id,
    )
    assert written == order.sms_received_at
    assert order.settled_at is None and order.next_poll_at is None
    assert order.finish_due_at is not None  # the provider finish is housekeeping
    assert Timer.SMS_TIMEOUT not in await timers(stage.pool, order_id)


async def test_a_prepaid_order_completes_when_its_code_is_recorded_while_setstatus_fails(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    await sim.request("POST", "/sim/faults", SET_STATUS_DOWN)
    order_id = await prepaid_order(stage)

    order = await code_arrives(stage, sim, order_id, "515151")

    assert order.status == S.COMPLETED and order.code == "515151"
    at = await entered_at(stage.pool, order_id)
    assert at["completed"] == at["code_received"]  # one transaction
    assert await event_types(stage.pool, order_id) == ["paid", "completed"]
    assert Timer.PURGE_CODE in await timers(stage.pool, order_id)
    assert order.finish_due_at is not None
    await assert_each_status_entered_once(stage.pool, order_id)


async def test_an_l402_order_whose_sms_came_at_its_deadline_completes_at_once(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    await sim.request("POST", "/sim/faults", SET_STATUS_DOWN)
    order_id = await l402_order(stage)
    await stage.acts.allocation.allocate(order_id)
    # The SMS comes as the deadline passes: no time is left for another SMS (window 0).
    await stage.pool.execute("UPDATE orders SET deadline_at = now() WHERE id = $1", order_id)
    order = await get(stage.pool, order_id)
    await sim.deliver(order.activation_id, "616161")
    await stage.acts.watch.check(await claim_for_poll(stage.pool, order_id))

    order = await get(stage.pool, order_id)
    assert order.status == S.COMPLETED and order.code == "616161"
    assert Timer.CODE_WINDOW not in await timers(stage.pool, order_id)
    assert order.finish_due_at is not None


async def test_an_l402_order_in_its_window_is_not_finished_and_completes_when_it_closes(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    order_id = await l402_order(stage)
    order = await code_arrives(stage, sim, order_id, "717171")
    assert order.status == S.CODE_RECEIVED
    assert order.finish_due_at is None  # the number stays open for another SMS
    window = await timers(stage.pool, order_id)
    assert window[Timer.CODE_WINDOW]["due_at"] <= order.deadline_at
    assert await stage.acts.finisher.finish_due() == 0
    assert (await sim.activation(order.activation_id))["status"] != "FINISHED"

    await sim.request("POST", "/sim/faults", SET_STATUS_DOWN)
    before = await calls(sim, "setStatus")
    await stage.acts.watch.close(order_id)

    order = await get(stage.pool, order_id)
    assert order.status == S.COMPLETED
    assert await calls(sim, "setStatus") == before  # completing asks the provider nothing
    assert order.finish_due_at is not None


# ----------------------------------------------------------------------------- housekeeping


async def test_a_failing_finish_backs_off_and_gives_up_at_the_activation_end_plus_giveup(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    await sim.request("POST", "/sim/faults", SET_STATUS_DOWN)
    order_id = await prepaid_order(stage)
    activation_id = (await code_arrives(stage, sim, order_id, "818181")).activation_id
    before = await calls(sim, "setStatus")

    for attempt in range(3):
        await stage.pool.execute(
            "UPDATE orders SET finish_due_at = now() WHERE id = $1", order_id
        )  # due now, as the backoff would make it
        assert await stage.acts.finisher.finish_due() == 1
        row = await stage.pool.fetchrow(
            "SELECT finish_attempts, extract(epoch FROM finish_due_at - now())::float8 AS wait"
            " FROM orders WHERE id = $1",
            order_id,
        )
        assert row["finish_attempts"] == attempt + 1
        assert row["wait"] == pytest.approx(RETRY * 2**attempt, abs=0.1)
        assert await stage.acts.finisher.finish_due() == 0  # not due again before its wait
    assert await calls(sim, "setStatus") == before + 3

    # Past the activation's end plus the give-up grace, one more failure ends the retries.
    giveup = stage.settings.provider_giveup_seconds
    await stage.pool.execute(
        "UPDATE orders SET deadline_at = now() - make_interval(secs => $2 + 1),"
        " finish_due_at = now() WHERE id = $1",
        order_id,
        giveup,
    )
    assert await stage.acts.finisher.finish_due() == 1
    order = await get(stage.pool, order_id)
    assert order.finish_due_at is None and order.finish_attempts == 4
    assert order.status == S.COMPLETED
    assert (await sim.activation(activation_id))["status"] != "FINISHED"
    assert await calls(sim, "setStatus") == before + 4


async def test_a_finish_claimed_by_a_worker_that_died_is_tried_again_after_its_lease(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    order_id = await prepaid_order(stage)
    activation_id = (await code_arrives(stage, sim, order_id, "919191")).activation_id
    # Another worker claims the finish and dies before calling the provider.
    claimed = await stage.worker.stores.orders.claim_finish(50, 120.0)
    assert [o.id for o in claimed] == [order_id]
    assert await stage.acts.finisher.finish_due() == 0  # leased: nobody else takes it meanwhile
    # The lease runs out.
    await stage.pool.execute(
        "UPDATE orders SET finish_due_at = now() - interval '1 second' WHERE id = $1", order_id
    )
    assert await stage.acts.finisher.finish_due() == 1
    assert (await sim.activation(activation_id))["status"] == "FINISHED"
    assert (await get(stage.pool, order_id)).finish_due_at is None


async def test_the_poller_leaves_orders_with_a_code_alone_while_setstatus_fails(
    stage: Stage,
    sim: Sim,  # noqa: F811
) -> None:
    await sim.request("POST", "/sim/faults", SET_STATUS_DOWN)
    hold_id = await hold_order(stage)
    late_id = await l402_order(stage)
    prepaid_id = await prepaid_order(stage)
    for order_id in (hold_id, late_id, prepaid_id):
        await stage.acts.allocation.allocate(order_id)
    await stage.pool.execute("UPDATE orders SET deadline_at = now() WHERE id = $1", late_id)
    for order_id in (hold_id, late_id, prepaid_id):
        await sim.deliver((await get(stage.pool, order_id)).activation_id, "123123")

    loop = asyncio.gather(stage.acts.watch.poll_forever(), stage.acts.finisher.finish_forever())
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while (await get(stage.pool, prepaid_id)).status != S.COMPLETED or (
            await get(stage.pool, late_id)
        ).status != S.COMPLETED:
            assert asyncio.get_running_loop().time() < deadline, "never completed"
            await asyncio.sleep(0.05)
        polls, finishes = await status_calls(sim), await calls(sim, "setStatus")
        await asyncio.sleep(3.0)  # 15 poll intervals of the worker (0.2 s)
    finally:
        stage.worker.stop.set()
        await asyncio.wait_for(loop, 5)

    assert (await get(stage.pool, hold_id)).status == S.CODE_RECEIVED  # payments settles
    # Nobody polls orders that have their code, and failed finishes back off (0.2, 0.4,
    # 0.8, 1.6 s...): a handful of tries per order, not one per poll interval.
    assert await status_calls(sim) == polls
    assert await calls(sim, "setStatus") - finishes <= 3 * 5


# ----------------------------------------------------------------------------- settle


async def _accepted_hold(stage: Stage, ln: Lightning) -> tuple[str, bytes, asyncio.Task[Payment]]:
    """A hold order whose invoice the payer has paid (ACCEPTED at the merchant node)."""
    preimage = secrets.token_bytes(32)
    payment_hash = hashlib.sha256(preimage).digest()
    added = await ln.merchant.add_hold_invoice(
        payment_hash=payment_hash, value_msat=150_000, memo="t", expiry=600, cltv_expiry=80
    )
    order_id = await hold_order(stage, preimage, paid=False)
    await stage.pool.execute(
        "UPDATE orders SET payment_request = $2 WHERE id = $1", order_id, added.payment_request
    )
    payment = asyncio.create_task(
        ln.payer.pay(added.payment_request, fee_limit_sat=10, timeout_seconds=60)
    )
    for _ in range(100):
        if (await ln.merchant.lookup_invoice(payment_hash)).state == "ACCEPTED":
            break
        await asyncio.sleep(0.05)
    invoices = InvoiceWatcher(stage.worker, ln.merchant)
    assert await invoices.mark_paid(await ln.merchant.lookup_invoice(payment_hash))
    return order_id, payment_hash, payment


async def test_settle_records_when_the_invoice_was_settled_with_the_completion(
    stage: Stage,
    sim: Sim,  # noqa: F811
    ln: Lightning,
) -> None:
    await sim.request("POST", "/sim/faults", SET_STATUS_DOWN)
    order_id, payment_hash, payment = await _accepted_hold(stage, ln)
    await code_arrives(stage, sim, order_id, "246810")
    holds = HoldInvoices(stage.worker, ln.merchant, InvoiceWatcher(stage.worker, ln.merchant))

    await holds.settle(order_id)

    order = await get(stage.pool, order_id)
    assert order.status == S.COMPLETED and order.settled_at is not None
    assert (await ln.merchant.lookup_invoice(payment_hash)).state == "SETTLED"
    assert (await asyncio.wait_for(payment, 10)).status == "SUCCEEDED"


async def test_a_hold_the_node_gave_back_before_the_settle_never_counts_as_settled(
    stage: Stage,
    sim: Sim,  # noqa: F811
    ln: Lightning,
) -> None:
    order_id, payment_hash, payment = await _accepted_hold(stage, ln)
    await code_arrives(stage, sim, order_id, "135790")
    await ln.merchant.cancel_invoice(payment_hash)  # e.g. the HTLC neared its expiry
    holds = HoldInvoices(stage.worker, ln.merchant, InvoiceWatcher(stage.worker, ln.merchant))

    await holds.settle(order_id)

    order = await get(stage.pool, order_id)
    # The code was recorded, so the order ends; it was never paid, so it is never shown.
    assert order.status == S.COMPLETED and order.settled_at is None
    assert (await asyncio.wait_for(payment, 10)).status == "FAILED"
