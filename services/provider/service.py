"""The provider worker: its event handler, the SMS poller and the activation finisher."""

from __future__ import annotations

import asyncio

from libs.common.config import Settings
from libs.common.events import Event, EventType
from libs.common.runtime import open_worker, run_loops
from libs.common.sms import HeroSmsClient
from services.provider.activations import Activations
from services.provider.rentals import Rentals


async def main(settings: Settings, stop: asyncio.Event) -> None:
    """Run the provider worker until stop."""
    provider = HeroSmsClient.from_settings(settings)
    try:
        async with open_worker("provider", settings, stop) as worker:
            activations = Activations(worker, provider)
            rentals = Rentals(worker, provider)

            async def handle(event: Event) -> None:
                if event.type is EventType.PAID:
                    await activations.allocate(event.order_id)
                elif event.type is EventType.SMS_TIMEOUT:
                    await activations.cancel(event.order_id, "no SMS before the deadline")
                elif event.type is EventType.CANCEL_REQUESTED:
                    await activations.cancel(event.order_id, "cancelled by the customer")
                elif event.type is EventType.ANOTHER_SMS_REQUESTED:
                    await activations.request_another(event.order_id)
                elif event.type is EventType.CODE_WINDOW_ENDED:
                    await activations.close(event.order_id)
                elif event.type is EventType.RENT_ENDED:
                    await rentals.end(event.order_id)

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
