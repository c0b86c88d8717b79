"""The NO_BALANCE alarm: stop selling when the provider account is empty, resume once refilled."""

from __future__ import annotations

import logging
from decimal import Decimal

from libs.common.adapters import sms
from libs.common.core.metrics import PROVIDER_NO_BALANCE
from libs.common.domain.activation_policy import balance_needed
from libs.common.domain.alarms import Alarm
from services.provider.part import ProviderPart

log = logging.getLogger(__name__)


class BalanceAlarm(ProviderPart):
    """Raises the alarm on a refused purchase and lifts it when the balance covers it again."""

    async def raise_(self, needed_usd: Decimal) -> None:
        """Our provider account is empty: stop selling and tell the operator (once).

        The alarm keeps what the refused purchase needed: it lifts only once the balance
        covers that, so an account a few cents short does not flap between the two.
        """
        PROVIDER_NO_BALANCE.set(1)
        if await self._stores.alarms.raise_(Alarm.NO_BALANCE, str(needed_usd)) is not None:
            log.error(
                "ALARM: the provider account has no balance (a purchase of %s USD was refused); "
                "new orders are refused with UNAVAILABLE until it is topped up",
                needed_usd,
            )

    async def check(self) -> None:
        """Lift the alarm if it is up and the account now covers what it waits for."""
        alarm = await self._stores.alarms.active(Alarm.NO_BALANCE)
        if alarm is None:
            PROVIDER_NO_BALANCE.set(0)
            return
        detail, _ = alarm
        if await self._provider.balance_usd() >= balance_needed(detail):
            if await self._stores.alarms.clear(Alarm.NO_BALANCE):
                log.warning("provider balance restored; selling again")
            PROVIDER_NO_BALANCE.set(0)

    async def watch_forever(self) -> None:
        """While the alarm is up, lift it as soon as the account has money again, until stop."""

        async def check_quietly() -> None:
            try:
                await self.check()
            except sms.ProviderError as exc:
                log.info("balance check failed: %s", exc.code)

        await self._every(
            self._settings.balance_check_seconds,
            check_quietly,
            beat=None,  # it waits BALANCE_CHECK_SECONDS, which may exceed the liveness limit
            what="balance check",
        )
