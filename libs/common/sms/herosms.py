"""HeroSmsClient: the SmsProvider port over the HeroSMS / SMS-Activate handler_api protocol."""

from __future__ import annotations

import logging
import time
from datetime import UTC, tzinfo
from decimal import Decimal
from types import TracebackType
from typing import Self

import aiohttp

from libs.common.sms.errors import (
    ActivationNotActive,
    BadStatus,
    CodeAlreadyReceived,
    NotFound,
    ProviderError,
    ProviderUnavailable,
)
from libs.common.sms.parsing import (
    JsonReply,
    Reply,
    TextReply,
    _to_decimal,
    _unexpected,
    parse_activation,
    parse_countries,
    parse_prices,
    parse_reply,
    parse_services,
    parse_status_text,
    parse_status_v2,
)
from libs.common.sms.port import (
    Activation,
    ActivationStatus,
    Country,
    Offer,
    Rental,
    RentCatalog,
    RentMessage,
    Service,
)

log = logging.getLogger("libs.common.sms")

HANDLER_PATH = "/stubs/handler_api.php"


class HeroSmsClient:
    """SmsProvider over the HeroSMS / SMS-Activate handler_api protocol.

    Requests are POSTed form-encoded so the API key never appears in a URL (and thus not in
    proxy/access logs or aiohttp exception messages). `poll` uses getStatus because only the v1
    reply distinguishes "waiting for another SMS" (STATUS_WAIT_RETRY) from "received"; getStatusV2
    repeats the previous SMS in both cases. Once a code is there, one getStatusV2 call fetches the
    SMS text (best effort, `fetch_sms_text=False` disables it).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 15.0,
        provider_tz: tzinfo = UTC,
        fetch_sms_text: bool = True,
    ) -> None:
        """Configure the client; base_url is e.g. "http://127.0.0.1:8090"."""
        self._url = base_url.rstrip("/") + HANDLER_PATH
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._tz = provider_tz
        self._fetch_sms_text = fetch_sms_text
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        """Show the endpoint but never the key."""
        return f"HeroSmsClient({self._url!r})"

    async def __aenter__(self) -> Self:
        """Use as an async context manager."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close on exit."""
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _call(self, action: str, **params: str) -> Reply:
        form = {"api_key": self._api_key, "action": action, **params}
        started = time.monotonic()
        try:
            async with self._get_session().post(self._url, data=form) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("provider %s failed: %s", action, type(exc).__name__)
            raise ProviderUnavailable("NETWORK_ERROR", detail=type(exc).__name__) from exc
        elapsed_ms = (time.monotonic() - started) * 1000
        log.debug("provider %s -> HTTP %s in %.0f ms", action, status, elapsed_ms)
        try:
            return parse_reply(status, raw.decode("utf-8", errors="replace"), retry_after)
        except ProviderError as err:
            log.info("provider %s -> %s (HTTP %s)", action, err.code, status)
            raise

    async def balance_usd(self) -> Decimal:
        """Return our account balance (getBalance → ACCESS_BALANCE:<usd>)."""
        reply = await self._call("getBalance")
        if isinstance(reply, TextReply) and reply.key == "ACCESS_BALANCE":
            amount = _to_decimal(reply.value)
            if amount is not None:
                return amount
            raise ProviderUnavailable("BAD_REPLY")
        raise _unexpected("getBalance", reply)

    async def buy(
        self, *, service: str, country_id: int, max_price_usd: Decimal | None = None
    ) -> Activation:
        """Buy a number with getNumberV2.

        A ProviderUnavailable from a timeout is ambiguous: the purchase may have happened.
        """
        params = {"service": service, "country": str(country_id)}
        if max_price_usd is not None:
            params["maxPrice"] = format(max_price_usd, "f")
        reply = await self._call("getNumberV2", **params)
        if isinstance(reply, JsonReply):
            return parse_activation(reply.data, fallback_country=country_id, tz=self._tz)
        raise _unexpected("getNumberV2", reply)

    async def _status_v1(self, activation_id: str) -> ActivationStatus:
        reply = await self._call("getStatus", id=activation_id)
        if isinstance(reply, TextReply):
            status = parse_status_text(reply)
            if status is not None:
                return status
        raise _unexpected("getStatus", reply)

    async def poll(self, activation_id: str) -> ActivationStatus:
        """Return the status (getStatus), with the SMS text from getStatusV2 once received."""
        status = await self._status_v1(activation_id)
        if status.state != "received" or not self._fetch_sms_text:
            return status
        try:
            detailed = parse_status_v2(await self._call("getStatusV2", id=activation_id))
        except ProviderError as err:
            log.info("provider getStatusV2 failed (%s); SMS text unavailable", err.code)
            return status
        if detailed is None or detailed.state != "received" or detailed.text is None:
            return status
        if status.code is not None and detailed.code not in (None, status.code):
            return status  # another SMS raced in between; keep the v1 code, text unknown
        return ActivationStatus("received", code=status.code or detailed.code, text=detailed.text)

    async def _set_status(self, activation_id: str, status: int, expected: tuple[str, ...]) -> None:
        reply = await self._call("setStatus", id=activation_id, status=str(status))
        if isinstance(reply, TextReply) and reply.key in expected:
            return
        if isinstance(reply, TextReply) and reply.key.endswith("_ALREADY"):
            raise ActivationNotActive(reply.key)
        raise _unexpected("setStatus", reply)

    async def _refine(
        self, activation_id: str, err: ProviderError, *, cancelling: bool
    ) -> ProviderError | None:
        """SMS-Activate style answers NO_ACTIVATION/BAD_STATUS where HeroSMS is specific: look."""
        not_found = isinstance(err, NotFound) and err.code == "NO_ACTIVATION"
        bad_status = cancelling and isinstance(err, BadStatus)
        if not (not_found or bad_status):
            return None
        try:
            status = await self._status_v1(activation_id)
        except ProviderError:
            return None
        if status.state == "cancelled":
            return ActivationNotActive(err.code)
        if status.state in ("received", "retry_wait"):
            if err.code == "BAD_STATUS":
                return CodeAlreadyReceived(err.code)
            return ActivationNotActive(err.code)
        return None

    async def request_another(self, activation_id: str) -> None:
        """Ask for another SMS (setStatus 3 → ACCESS_RETRY_GET)."""
        try:
            await self._set_status(activation_id, 3, ("ACCESS_RETRY_GET", "ACCESS_READY"))
        except ProviderError as err:
            refined = await self._refine(activation_id, err, cancelling=False)
            if refined is not None:
                raise refined from err
            raise

    async def finish(self, activation_id: str) -> None:
        """Finish the activation (setStatus 6 → ACCESS_ACTIVATION)."""
        try:
            await self._set_status(activation_id, 6, ("ACCESS_ACTIVATION",))
        except ProviderError as err:
            refined = await self._refine(activation_id, err, cancelling=False)
            if refined is not None:
                raise refined from err
            raise

    async def cancel(self, activation_id: str) -> None:
        """Cancel (setStatus 8 → ACCESS_CANCEL); ActivationNotActive if already cancelled/done."""
        try:
            await self._set_status(activation_id, 8, ("ACCESS_CANCEL",))
        except ProviderError as err:
            refined = await self._refine(activation_id, err, cancelling=True)
            if refined is not None:
                raise refined from err
            raise

    async def prices(
        self, *, service: str | None = None, country_id: int | None = None
    ) -> list[Offer]:
        """List offers (getPrices), filtered server- and client-side."""
        params: dict[str, str] = {}
        if service is not None:
            params["service"] = service
        if country_id is not None:
            params["country"] = str(country_id)
        reply = await self._call("getPrices", **params)
        if not isinstance(reply, JsonReply):
            raise _unexpected("getPrices", reply)
        return [
            offer
            for offer in parse_prices(reply.data)
            if (service is None or offer.service == service)
            and (country_id is None or offer.country_id == country_id)
        ]

    async def countries(self) -> list[Country]:
        """List countries (getCountries)."""
        reply = await self._call("getCountries")
        if not isinstance(reply, JsonReply):
            raise _unexpected("getCountries", reply)
        return parse_countries(reply.data)

    async def services(self) -> list[Service]:
        """List services (getServicesList)."""
        reply = await self._call("getServicesList")
        if not isinstance(reply, JsonReply):
            raise _unexpected("getServicesList", reply)
        return parse_services(reply.data)

    async def report_bad(self, activation_id: str) -> None:
        """HeroSMS has no ban action: give the number back by cancelling it (setStatus 8)."""
        await self.cancel(activation_id)

    async def reactivate(self, activation_id: str) -> Activation:
        """Reactivate a finished activation (not implemented yet)."""
        raise NotImplementedError

    async def rent_offers(self, hours: int, country: int | None = None) -> RentCatalog:
        """List rent offers (not implemented yet)."""
        raise NotImplementedError

    async def rent(
        self, *, service: str, country: int, hours: int, webhook_url: str | None = None
    ) -> Rental:
        """Rent a number (not implemented yet)."""
        raise NotImplementedError

    async def rent_messages(self, rent_id: str) -> list[RentMessage]:
        """List a rental's messages (not implemented yet)."""
        raise NotImplementedError

    async def finish_rent(self, rent_id: str) -> None:
        """Finish a rental (not implemented yet)."""
        raise NotImplementedError

    async def cancel_rent(self, rent_id: str) -> None:
        """Cancel a rental (not implemented yet)."""
        raise NotImplementedError
