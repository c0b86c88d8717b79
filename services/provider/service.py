"""The provider worker: its event handler, the SMS poller and the activation finisher."""

from __future__ import annotations

import asyncio

from libs.common.adapters.sms import HeroSmsClient
from libs.common.core.config import Settings
from libs.common.domain.events import EventType
from libs.common.messaging.bus import dispatch
from libs.common.messaging.runtime import open_worker, run_loops
from services.provider.activations import Activations
from services.provider.rentals import Rentals


async def main(settings: Settings, stop: asyncio.Event) -> None:
    """Run the provider worker until stop."""
    provider = HeroSmsClient.from_settings(settings)
    try:
        async with open_worker("provider", settings, stop) as worker:
            activations = Activations(worker, provider)
            rentals = Rentals(worker, provider)

            async def timed_out(order_id: str) -> None:
                await activations.cancel(order_id, "no SMS before the deadline")

            async def cancelled(order_id: str) -> None:
                await activations.cancel(order_id, "cancelled by the customer")

            handle = dispatch(
                "provider",
                {
                    EventType.PAID: activations.allocate,
                    EventType.SMS_TIMEOUT: timed_out,
                    EventType.CANCEL_REQUESTED: cancelled,
                    EventType.ANOTHER_SMS_REQUESTED: activations.request_another,
                    EventType.CODE_WINDOW_ENDED: activations.close,
                    EventType.RENT_ENDED: rentals.end,
                },
            )

            await run_loops(
                stop,
                worker.consumer(handle).run(stop),
                activations.poll_forever(),
                activations.finish_forever(),
                rentals.poll_forever(),
                activations.watch_balance(),
            )
    finally:
        await provider.close()
