"""What every part of the provider worker stands on: stores, settings, the provider, stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from libs.common.adapters import sms
from libs.common.core.config import Settings
from libs.common.messaging import ops
from libs.common.persistence.ports import Stores

log = logging.getLogger(__name__)


class ProviderPart:
    """One lifecycle of an order at the provider, over the worker's stores and provider."""

    def __init__(
        self, stores: Stores, settings: Settings, provider: sms.SmsProvider, stop: asyncio.Event
    ) -> None:
        self._stores = stores
        self._settings = settings
        self._provider = provider
        self._stop = stop

    async def _every(
        self,
        seconds: float,
        step: Callable[[], Awaitable[object]],
        *,
        beat: str | None,
        what: str,
    ) -> None:
        """Run `step` every `seconds` until stop; a failed step is logged and tried next time.

        `beat` names the loop's heartbeat for /livez (None: a loop too slow to be watched).
        """
        while not self._stop.is_set():
            if beat is not None:
                ops.beat(beat)
            try:
                await step()
            except Exception:
                log.exception("%s failed", what)
            try:
                await asyncio.wait_for(self._stop.wait(), seconds)
            except TimeoutError:
                pass
