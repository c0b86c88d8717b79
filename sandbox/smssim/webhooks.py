"""Rental SMS pushed to the rental's webhook URL, retried like HeroSMS does, with a log of
every delivery for the control API."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from sandbox.smssim.state import RentSms, Settings, SimRental, fmt_time, iso_time

log = logging.getLogger("sandbox.smssim")

MAX_LOG = 1000


@dataclass
class Delivery:
    """One webhook push and how its attempts went."""

    rent_id: int
    url: str
    body: dict[str, Any]
    attempts: int = 0
    delivered: bool = False
    gave_up: bool = False
    last_status: int | None = None
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        """Control-API representation."""
        return {
            "rentId": str(self.rent_id),
            "url": self.url,
            "body": self.body,
            "attempts": self.attempts,
            "delivered": self.delivered,
            "gaveUp": self.gave_up,
            "lastStatus": self.last_status,
            "lastError": self.last_error,
            "startedAt": iso_time(self.started_at),
        }


def rent_webhook_body(rental: SimRental, sms: RentSms) -> dict[str, Any]:
    """The JSON a rental's webhook receives for one SMS."""
    return {
        "rentId": rental.id,
        "sms": {"phoneFrom": sms.phone_from, "text": sms.text, "date": fmt_time(sms.at)},
    }


class WebhookPusher:
    """Delivers webhook bodies in background tasks until a 200 or the tries run out."""

    def __init__(self, settings: Settings) -> None:
        """Bind to the (runtime-changeable) simulator settings."""
        self.settings = settings
        self.deliveries: list[Delivery] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def push(self, rental: SimRental, sms: RentSms) -> Delivery | None:
        """Start delivering one rental SMS (to the rental's url, else the default one)."""
        url = rental.url or self.settings.webhook_url
        if not url:
            return None
        delivery = Delivery(rental.id, url, rent_webhook_body(rental, sms))
        self.deliveries.append(delivery)
        del self.deliveries[:-MAX_LOG]
        task = asyncio.get_running_loop().create_task(self._deliver(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return delivery

    async def _deliver(self, delivery: Delivery) -> None:
        headers = {}
        if self.settings.webhook_secret:
            headers["X-Webhook-Secret"] = self.settings.webhook_secret
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        while delivery.attempts < max(1, self.settings.webhook_tries):
            if delivery.attempts:
                await asyncio.sleep(self.settings.webhook_retry_seconds)
            delivery.attempts += 1
            timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_seconds)
            try:
                async with self._session.post(
                    delivery.url, json=delivery.body, headers=headers, timeout=timeout
                ) as resp:
                    delivery.last_status = resp.status
                    delivery.last_error = None
                    if resp.status == 200:
                        delivery.delivered = True
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                delivery.last_error = type(exc).__name__
            log.info(
                "rent webhook for %s: attempt %d failed (%s)",
                delivery.rent_id,
                delivery.attempts,
                delivery.last_status or delivery.last_error,
            )
        delivery.gave_up = True

    def clear(self) -> None:
        """Forget the delivery log and stop pending retries."""
        for task in self._tasks:
            task.cancel()
        self.deliveries.clear()

    async def close(self) -> None:
        """Stop pending deliveries and close the HTTP session."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
