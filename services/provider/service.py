"""The provider worker: its event table and loops, wired from one part per order lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from libs.common.adapters import sms
from libs.common.core.config import Settings
from libs.common.domain.events import EventType
from libs.common.messaging.bus import OrderAction, dispatch
from libs.common.messaging.runtime import open_worker, provider_client, run_loops
from libs.common.persistence.ports import Stores
from services.provider.allocation import Allocation
from services.provider.balance_alarm import BalanceAlarm
from services.provider.finishing import Cancellation, Finisher
from services.provider.rentals import Rentals
from services.provider.sms_watch import SmsWatch


@dataclass(frozen=True)
class ProviderStage:
    """The provider worker's parts: allocation, SMS watching, finish and cancel, rentals, alarm."""

    alarm: BalanceAlarm
    allocation: Allocation
    watch: SmsWatch
    finisher: Finisher
    cancels: Cancellation
    rentals: Rentals

    @classmethod
    def build(
        cls, stores: Stores, settings: Settings, provider: sms.SmsProvider, stop: asyncio.Event
    ) -> ProviderStage:
        """Every part over the same stores, settings, provider and stop event."""
        alarm = BalanceAlarm(stores, settings, provider, stop)
        watch = SmsWatch(stores, settings, provider, stop)
        return cls(
            alarm=alarm,
            allocation=Allocation(stores, settings, provider, stop, alarm=alarm),
            watch=watch,
            finisher=Finisher(stores, settings, provider, stop),
            cancels=Cancellation(stores, settings, provider, stop, watch=watch),
            rentals=Rentals(stores, settings, provider, stop),
        )

    async def timed_out(self, order_id: str) -> None:
        """The SMS deadline passed: cancel and refund unless the SMS came after all."""
        await self.cancels.cancel(order_id, "no SMS before the deadline")

    async def cancelled(self, order_id: str) -> None:
        """The customer cancelled: cancel and refund unless the SMS came after all."""
        await self.cancels.cancel(order_id, "cancelled by the customer")

    def actions(self) -> dict[EventType, OrderAction]:
        """The worker's event table: what each event it consumes does to the order."""
        return {
            EventType.PAID: self.allocation.allocate,
            EventType.SMS_TIMEOUT: self.timed_out,
            EventType.CANCEL_REQUESTED: self.cancelled,
            EventType.ANOTHER_SMS_REQUESTED: self.watch.request_another,
            EventType.CODE_WINDOW_ENDED: self.watch.close,
            EventType.RENT_ENDED: self.rentals.end,
        }

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        """The worker's background loops: SMS poller, finisher, rent poller, balance watch."""
        return [
            self.watch.poll_forever(),
            self.finisher.finish_forever(),
            self.rentals.poll_forever(),
            self.alarm.watch_forever(),
        ]


async def main(settings: Settings, stop: asyncio.Event) -> None:
    """Run the provider worker until stop."""
    async with open_worker("provider", settings, stop) as worker:
        provider = provider_client(worker.pool, settings)
        try:
            stage = ProviderStage.build(worker.stores, worker.settings, provider, worker.stop)
            handle = dispatch("provider", stage.actions())
            await run_loops(stop, worker.consumer(handle).run(stop), *stage.loops())
        finally:
            await provider.close()
