"""A representative part of the chaos matrix (`make chaos` runs all of it): a server killed,
a simulator down, and the gateway's and scheduler's crash points, each under a steady stream
of every order type and payment mode, each followed by the money checks of
`tests/chaos/matrix.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from libs.common.persistence import db
from tests.chaos.matrix import Chaos, PhaseResult, chaos_env, crash, kill, run_phase, setup
from tests.chaos.traffic import Traffic
from tests.e2e.conftest import node_client, running_stack
from tests.e2e.test_prepaid import _new_account

pytestmark = pytest.mark.e2e

GATEWAY_POINTS = (
    "gateway.order_invoiced",
    "gateway.hold_order_invoiced",
    "gateway.balance_debited",
    "gateway.funding_invoiced",
)


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Path]]:
    """A stack with every crash point armed but disarmed by its marker."""
    crash_dir = tmp_path_factory.mktemp("chaos-crashes")
    with running_stack(tmp_path_factory.mktemp("chaos-stack"), chaos_env(crash_dir)) as info:
        yield info, crash_dir


@pytest.fixture(scope="module")
async def chaos(chaos_stack: tuple[dict[str, Any], Path]) -> AsyncIterator[Chaos]:
    """Customers of every kind against the chaos stack, with a funded prepaid account."""
    stack, crash_dir = chaos_stack
    payer, merchant = node_client(stack["payer_lnd"]), node_client(stack["merchant_lnd"])
    pool = await db.create_pool(stack["database_url"], min_size=0)  # no floor to refill mid-outage
    async with aiohttp.ClientSession() as http:
        traffic = Traffic(http, stack, payer, merchant, _new_account(stack))
        ctx = Chaos(stack, http, payer, merchant, pool, traffic, crash_dir)
        await setup(ctx)
        yield ctx
    await pool.close()
    await payer.close()
    await merchant.close()


def _every_kind_ended(result: PhaseResult) -> None:
    """The phase saw orders of every outcome the stream makes, and no finding."""
    # Money findings first; a code shown before settlement is reported separately so it
    # cannot hide the others.
    early_codes = [f for f in result.findings if f.startswith("code shown")]
    assert [f for f in result.findings if f not in early_codes] == [], result.findings
    assert early_codes == []
    assert result.recovered_in is not None, "no fresh order was served after the fault"
    for outcome in ("completed", "refunded", "rent_active"):
        assert result.outcomes[outcome] > 0, result.outcomes


async def test_postgresql_killed_mid_stream_loses_nothing(chaos: Chaos) -> None:
    result = await run_phase(chaos, kill("postgres", 3))
    _every_kind_ended(result)


async def test_lightning_node_down_mid_stream_loses_nothing(chaos: Chaos) -> None:
    # The full matrix keeps it down 30 s; 10 s crosses the same paths within the CI budget.
    result = await run_phase(chaos, kill("lnsim", 10))
    assert result.refused > 0  # no invoice could be made while it was down
    _every_kind_ended(result)


async def test_gateway_killed_after_the_invoice_before_the_order_row(chaos: Chaos) -> None:
    result = await run_phase(chaos, crash(*GATEWAY_POINTS))
    # The killed requests were refused (the customer never saw an invoice to pay): the
    # invoices they left at the node carry no money (checked by the phase).
    assert result.refused >= len(GATEWAY_POINTS)
    # Three of the points die after the node made the invoice; none of those holds money.
    assert result.orphans >= 3
    for point in GATEWAY_POINTS:
        assert (chaos.crash_dir / f"crashed-{point}").exists()
    _every_kind_ended(result)


async def test_scheduler_killed_with_a_timer_batch_uncommitted(chaos: Chaos) -> None:
    result = await run_phase(chaos, crash("scheduler.timers_claimed"))
    _every_kind_ended(result)
