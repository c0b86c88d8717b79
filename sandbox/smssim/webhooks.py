"""SMS pushed to webhooks, retried like HeroSMS does, with a log of every delivery for the
control API: rental SMS to the rental's URL (or the account one), activation SMS to the
account webhook URL."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from sandbox.smssim.state import (
    RentSms,
    Settings,
    SimActivation,
    SimRental,
    Sms,
    fmt_time,
    iso_time,
)

log = logging.getLogger("sandbox.smssim")

MAX_LOG = 1000


@dataclass
class Delivery:
    """One webhook push (of a rental or an activation SMS) and how its attempts went."""

    rent_id: int | None
    url: str
    body: dict[str, Any]
    attempts: int = 0
    delivered: bool = False
    gave_up: bool = False
    last_status: int | None = None
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)
    activation_id: int | None = None

    @property
    def subject(self) -> str:
        """What the push is about, for logs."""
        if self.activation_id is not None:
            return f"activation {self.activation_id}"
        return f"rent {self.rent_id}"

    def to_json(self) -> dict[str, Any]:
        """Control-API representation: `activationId` or `rentId`."""
        if self.activation_id is not None:
            subject = {"activationId": str(self.activation_id)}
        else:
            subject = {"rentId": str(self.rent_id)}
        return {
            **subject,
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


def activation_webhook_body(
    activation: SimActivation, sms: Sms, *, hero: bool = True
) -> dict[str, Any]:
    """The JSON the account webhook receives for one activation SMS (reference §4).

    HeroSMS documents a string id and an ISO 8601 time with microseconds; SMS-Activate a
    numeric id and "YYYY-MM-DD HH:MM:SS": the error style picks the provider.
    """
    if hero:
        received = datetime.fromtimestamp(sms.at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    else:
        received = fmt_time(sms.at)
    return {
        "activationId": str(activation.id) if hero else activation.id,
        "service": activation.service,
        "text": sms.text,
        "code": sms.code,
        "country": activation.country,
        "receivedAt": received,
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
        return self._start(Delivery(rental.id, url, rent_webhook_body(rental, sms)))

    def push_activation(self, activation: SimActivation, sms: Sms) -> Delivery | None:
        """Start delivering one activation SMS to the account webhook URL (if one is set)."""
        url = self.settings.webhook_url
        if not url:
            return None
        hero = self.settings.error_style == "herosms"
        body = activation_webhook_body(activation, sms, hero=hero)
        return self._start(Delivery(None, url, body, activation_id=activation.id))

    def _start(self, delivery: Delivery) -> Delivery:
        self.deliveries.append(delivery)
        if len(self.deliveries) > 2 * MAX_LOG:
            # Trimmed in batches: one slice per MAX_LOG pushes, not one per push.
            del self.deliveries[:-MAX_LOG]
        task = asyncio.get_running_loop().create_task(self._deliver(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return delivery

    def log(self) -> list[Delivery]:
        """The most recent deliveries (at most MAX_LOG), oldest first."""
        return self.deliveries[-MAX_LOG:]

    async def _deliver(self, delivery: Delivery) -> None:
        headers = {}
        if self.settings.webhook_secret:
            headers["X-Webhook-Secret"] = self.settings.webhook_secret
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        while delivery.attempts < max(1, self.settings.webhook_tries):
            if delivery.attempts:
                # HeroSMS retries 20-30 s apart: the configured pause plus up to half again.
                pause = self.settings.webhook_retry_seconds
                await asyncio.sleep(pause * (1.0 + 0.5 * random.random()))
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
                "webhook for %s: attempt %d failed (%s)",
                delivery.subject,
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
