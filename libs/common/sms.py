"""Async SMS provider port and its HeroSMS / SMS-Activate (handler_api) implementation."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Any, ClassVar, Literal, Protocol, Self, runtime_checkable

import aiohttp

log = logging.getLogger(__name__)

HANDLER_PATH = "/stubs/handler_api.php"
USD_CURRENCY = 840

StatusState = Literal["waiting", "retry_wait", "received", "cancelled"]


# =============================================================================== errors


class ProviderError(Exception):
    """Any error reported by (or about) the upstream SMS provider; `.code` is the provider code."""

    default_code: ClassVar[str] = "PROVIDER_ERROR"
    description: ClassVar[str] = "provider error"

    def __init__(self, code: str | None = None, *, detail: str | None = None) -> None:
        """Create the error; `detail` (provider free text) is kept out of str() on purpose."""
        self.code: str = code or self.default_code
        self.detail = detail
        super().__init__(f"{self.code}: {self.description}")


class NoNumbers(ProviderError):
    """No number in stock for the requested country/service."""

    default_code = "NO_NUMBERS"
    description = "no numbers available"


class InsufficientBalance(ProviderError):
    """Our provider account balance is too low."""

    default_code = "NO_BALANCE"
    description = "provider balance too low"


class BadKey(ProviderError):
    """API key missing or rejected."""

    default_code = "BAD_KEY"
    description = "API key rejected"


class Banned(ProviderError):
    """Our provider account is blocked (possibly until `.until`)."""

    default_code = "BANNED"
    description = "provider account blocked"

    def __init__(
        self, code: str | None = None, *, until: str | None = None, detail: str | None = None
    ) -> None:
        """Create the error with the ban end as reported by the provider (free text)."""
        super().__init__(code, detail=detail)
        self.until = until


class PriceTooLow(ProviderError):
    """maxPrice is below the provider's current price (`.min_price`, USD)."""

    default_code = "WRONG_MAX_PRICE"
    description = "max price below current price"

    def __init__(
        self, code: str | None = None, *, min_price: float | None = None, detail: str | None = None
    ) -> None:
        """Create the error with the minimum acceptable price if known."""
        super().__init__(code, detail=detail)
        self.min_price = min_price


class TooEarlyToCancel(ProviderError):
    """Cancel refused: the activation is younger than `.seconds` (provider's minimum age)."""

    default_code = "EARLY_CANCEL_DENIED"
    description = "too early to cancel"

    def __init__(
        self, code: str | None = None, *, seconds: int | None = None, detail: str | None = None
    ) -> None:
        """Create the error with the provider's minimum activation age in seconds if known."""
        super().__init__(code, detail=detail)
        self.seconds = seconds


class CodeAlreadyReceived(ProviderError):
    """Cancel refused: a code already arrived (finish the activation instead)."""

    default_code = "OTP_RECEIVED"
    description = "a code was already received"


class NotFound(ProviderError):
    """Unknown activation id."""

    default_code = "NOT_FOUND"
    description = "activation not found"


class ActivationNotActive(ProviderError):
    """Activation already cancelled, finished or expired (treat a cancel as done)."""

    default_code = "ACTIVATION_NOT_ACTIVE"
    description = "activation is not active"


class RateLimited(ProviderError):
    """Too many requests; retry after `.retry_after` seconds if known."""

    default_code = "RATE_LIMITED"
    description = "rate limited by provider"

    def __init__(
        self,
        code: str | None = None,
        *,
        retry_after: float | None = None,
        detail: str | None = None,
    ) -> None:
        """Create the error with the suggested back-off if the provider sent one."""
        super().__init__(code, detail=detail)
        self.retry_after = retry_after


class BadService(ProviderError):
    """Unknown or unavailable service code."""

    default_code = "BAD_SERVICE"
    description = "unknown or unavailable service"


class ProviderUnavailable(ProviderError):
    """Transient failure: network error, timeout, 5xx or an unparseable reply."""

    default_code = "UNAVAILABLE"
    description = "provider unavailable"


# Every error string of the protocol reference, plus a few variants seen in the wild.
_ERROR_CLASSES: dict[str, type[ProviderError]] = {
    "NO_NUMBERS": NoNumbers,
    "NO_BALANCE": InsufficientBalance,
    "BAD_KEY": BadKey,
    "NO_KEY": BadKey,
    "BANNED": Banned,
    "CHANNELS_LIMIT": Banned,
    "ACCOUNT_INACTIVE": Banned,
    "WRONG_MAX_PRICE": PriceTooLow,
    "EARLY_CANCEL_DENIED": TooEarlyToCancel,
    "OTP_RECEIVED": CodeAlreadyReceived,
    "NO_ACTIVATION": NotFound,
    "WRONG_ACTIVATION_ID": NotFound,
    "NOT_FOUND": NotFound,
    "ACTIVATION_NOT_ACTIVE": ActivationNotActive,
    "BAD_SERVICE": BadService,
    "WRONG_SERVICE": BadService,
    "SERVICE_NOT_AVAILABLE": BadService,
    "TOO_MANY_REQUESTS": RateLimited,
    "RATE_LIMIT": RateLimited,
    "ERROR_SQL": ProviderUnavailable,
    "BAD_ACTION": ProviderError,
    "BAD_STATUS": ProviderError,
    "ORDER_ALREADY_EXISTS": ProviderError,
    "RENEW_ACTIVATION_NOT_AVAILABLE": ProviderError,
}

_TOKEN = re.compile(r"[A-Z][A-Z0-9_]*")


# =============================================================================== models


@dataclass(frozen=True)
class Activation:
    """A purchased number."""

    id: str
    phone: str
    cost_usd: Decimal
    country_id: int
    ends_at: datetime | None


@dataclass(frozen=True)
class ActivationStatus:
    """Where an activation stands; `code`/`text` are set once an SMS arrived."""

    state: StatusState
    code: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class Offer:
    """Price and stock of one country/service pair."""

    country_id: int
    service: str
    cost_usd: Decimal
    count: int


@dataclass(frozen=True)
class Country:
    """A provider country."""

    id: int
    name: str
    visible: bool
    rent: bool


@dataclass(frozen=True)
class Service:
    """A provider service code and display name."""

    code: str
    name: str


@runtime_checkable
class SmsProvider(Protocol):
    """The port the workers use to talk to an upstream SMS provider."""

    async def buy(
        self, *, service: str, country_id: int, max_price_usd: Decimal | None = None
    ) -> Activation:
        """Buy a number for one-time verification."""
        ...

    async def poll(self, activation_id: str) -> ActivationStatus:
        """Return the activation's current status."""
        ...

    async def request_another(self, activation_id: str) -> None:
        """Ask for another SMS on the same number (after a code arrived)."""
        ...

    async def finish(self, activation_id: str) -> None:
        """Mark the activation as successfully used."""
        ...

    async def cancel(self, activation_id: str) -> None:
        """Cancel an activation that received no code (refunded by the provider)."""
        ...

    async def prices(
        self, *, service: str | None = None, country_id: int | None = None
    ) -> list[Offer]:
        """List offers, optionally filtered by service and/or country."""
        ...

    async def countries(self) -> list[Country]:
        """List the provider's countries."""
        ...

    async def services(self) -> list[Service]:
        """List the provider's service codes."""
        ...

    async def balance_usd(self) -> Decimal:
        """Return our account balance in USD."""
        ...

    async def close(self) -> None:
        """Release network resources."""
        ...


# =============================================================================== parsing


@dataclass(frozen=True)
class TextReply:
    """A successful plain-text reply `KEY[:value]`."""

    key: str
    value: str | None


@dataclass(frozen=True)
class JsonReply:
    """A successful JSON reply (floats parsed as Decimal)."""

    data: Any


Reply = TextReply | JsonReply

_NOT_JSON = object()


def _loads(text: str) -> Any:
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError:
        return _NOT_JSON


def _to_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, int | float | str):
        try:
            result = Decimal(str(value).strip())
        except InvalidOperation:
            return None
        return result if result.is_finite() else None
    return None


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    dec = _to_decimal(value)
    if dec is None or dec != dec.to_integral_value():
        return None
    return int(dec)


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "on")
    if isinstance(value, int | float | Decimal):
        return value != 0
    return bool(value)


def _to_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    as_int = _to_int(value)
    if as_int is not None:
        return str(as_int)
    text = str(value).strip()
    return text or None


def _to_str(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def parse_provider_time(value: Any, tz: tzinfo = UTC) -> datetime | None:
    """Parse "YYYY-MM-DD HH:MM:SS" (naive → `tz`) or ISO 8601; None if absent or invalid."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=tz)


def _error(
    code: str,
    *,
    value: str | None = None,
    info: Mapping[str, Any] | None = None,
    detail: str | None = None,
    retry_after: float | None = None,
) -> ProviderError:
    """Build the typed error for a provider error code."""
    info = info or {}
    cls = _ERROR_CLASSES.get(code, ProviderError)
    if cls is Banned:
        until = value or _to_str(
            info.get("endDate") or info.get("until") or info.get("bannedUntil") or info.get("date")
        )
        return Banned(code, until=until, detail=detail)
    if cls is PriceTooLow:
        price = _to_decimal(value) if value else _to_decimal(info.get("min"))
        return PriceTooLow(code, min_price=None if price is None else float(price), detail=detail)
    if cls is TooEarlyToCancel:
        seconds = _to_int(value) if value else _to_int(info.get("minActivationTime"))
        return TooEarlyToCancel(code, seconds=seconds, detail=detail)
    if cls is RateLimited:
        return RateLimited(code, retry_after=retry_after, detail=detail)
    return cls(code, detail=detail)


def _error_from_json(data: Any, retry_after: float | None) -> ProviderError | None:
    """Recognise JSON error bodies: HeroSMS {"title", "details", "info"} or {"status": "error"}."""
    if not isinstance(data, dict):
        return None
    title = data.get("title")
    if isinstance(title, str) and _TOKEN.fullmatch(title) and "activationId" not in data:
        info = data.get("info")
        return _error(
            title,
            info=info if isinstance(info, dict) else None,
            detail=_to_str(data.get("details")),
            retry_after=retry_after,
        )
    if str(data.get("status", "")).lower() == "error":
        raw = data.get("error") or data.get("message") or data.get("msg") or ""
        key, _, value = str(raw).strip().partition(":")
        if _TOKEN.fullmatch(key):
            return _error(key, value=value or None, retry_after=retry_after)
        return ProviderError("ERROR", detail=str(raw)[:200] or None)
    return None


def _retry_after(header: str | None) -> float | None:
    if header is None:
        return None
    try:
        seconds = float(header.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def parse_reply(status: int, body: str, retry_after_header: str | None = None) -> Reply:
    """Turn an HTTP status + body into a reply, raising the typed error for either error style."""
    text = body.strip()
    retry_after = _retry_after(retry_after_header)
    payload = _loads(text) if text[:1] in ("{", "[") else _NOT_JSON
    if status == 429:
        err = _error_from_json(payload, retry_after)
        code = err.code if err is not None else "RATE_LIMITED"
        raise RateLimited(code, retry_after=retry_after)
    if status >= 500:
        raise ProviderUnavailable(f"HTTP_{status}")
    key, sep, value = text.partition(":")
    if not 200 <= status < 300:
        err = _error_from_json(payload, retry_after)
        if err is not None:
            raise err
        if _TOKEN.fullmatch(key):
            raise _error(key, value=value if sep else None, retry_after=retry_after)
        # No recognisable code (e.g. a proxy's HTML page): never guess NotFound from a bare 404.
        by_status: dict[int, type[ProviderError]] = {401: BadKey, 402: InsufficientBalance}
        raise by_status.get(status, ProviderError)(f"HTTP_{status}")
    if not text:
        raise ProviderUnavailable("EMPTY_REPLY")
    if text[:1] in ("{", "["):
        if payload is _NOT_JSON:
            raise ProviderUnavailable("BAD_JSON")
        err = _error_from_json(payload, retry_after)
        if err is not None:
            raise err
        return JsonReply(payload)
    if not _TOKEN.fullmatch(key):
        raise ProviderUnavailable("GARBAGE_REPLY")
    if key in _ERROR_CLASSES:
        raise _error(key, value=value if sep else None, retry_after=retry_after)
    return TextReply(key, value if sep else None)


def _unexpected(action: str, reply: Reply) -> ProviderError:
    """An unknown but well-formed reply: unknown UPPER_CASE codes become ProviderError(code)."""
    if isinstance(reply, TextReply):
        log.warning("provider %s: unexpected reply %s", action, reply.key)
        return ProviderError(reply.key)
    log.warning("provider %s: unexpected JSON reply shape", action)
    return ProviderUnavailable("BAD_REPLY")


def parse_status_text(reply: TextReply) -> ActivationStatus | None:
    """Parse a getStatus reply (STATUS_*); None if the key is not a status."""
    key, value = reply.key, reply.value
    if key == "STATUS_WAIT_CODE":
        return ActivationStatus("waiting")
    if key in ("STATUS_WAIT_RETRY", "STATUS_WAIT_RESEND"):
        return ActivationStatus("retry_wait", code=value or None)
    if key == "STATUS_OK":
        return ActivationStatus("received", code=value or None)
    if key == "STATUS_CANCEL":
        return ActivationStatus("cancelled")
    return None


def _last(value: Any) -> Any:
    if isinstance(value, list):
        return value[-1] if value else None
    return value


def parse_status_v2(reply: Reply) -> ActivationStatus | None:
    """Parse a getStatusV2 reply: older `sms` or newer `data` shape, or plain STATUS_*."""
    if isinstance(reply, TextReply):
        return parse_status_text(reply)
    data = reply.data
    if not isinstance(data, dict):
        return None
    for key in ("sms", "data"):
        sms = _last(data.get(key))
        if isinstance(sms, dict):
            code = _to_str(sms.get("code"))
            text = _to_str(sms.get("text"))
            if code or text:
                return ActivationStatus("received", code=code or None, text=text)
    status = data.get("status")
    if isinstance(status, str) and status.startswith("STATUS_"):
        key, _, value = status.partition(":")
        parsed = parse_status_text(TextReply(key, value or None))
        if parsed is not None:
            return parsed
    return ActivationStatus("waiting")


def parse_activation(data: Any, *, fallback_country: int, tz: tzinfo = UTC) -> Activation:
    """Parse a getNumberV2 JSON object into an Activation (coercing field types)."""
    if not isinstance(data, dict):
        raise ProviderUnavailable("BAD_REPLY")
    activation_id = _to_id(data.get("activationId"))
    phone = re.sub(r"\D", "", str(data.get("phoneNumber") or ""))
    cost = _to_decimal(data.get("activationCost"))
    if activation_id is None or not phone or cost is None:
        raise ProviderUnavailable("BAD_REPLY")
    currency = _to_int(data.get("currency"))
    if currency is not None and currency != USD_CURRENCY:
        log.error("provider account currency is %s, not USD: cost_usd is wrong", currency)
    country = _to_int(data.get("countryCode"))
    return Activation(
        id=activation_id,
        phone=phone,
        cost_usd=cost,
        country_id=fallback_country if country is None else country,
        ends_at=parse_provider_time(data.get("activationEndTime"), tz),
    )


def parse_prices(data: Any) -> list[Offer]:
    """Parse getPrices: {"<country>": {"<service>": {"cost", "count"}}} (malformed rows skipped)."""
    offers: list[Offer] = []
    if not isinstance(data, dict):
        return offers
    for country_key, services in data.items():
        country_id = _to_int(country_key)
        if country_id is None or not isinstance(services, dict):
            continue
        for service, entry in services.items():
            if not isinstance(entry, dict):
                continue
            cost = _to_decimal(entry.get("cost", entry.get("price")))
            count = _to_int(entry.get("count", entry.get("qty", 0)))
            if cost is None or count is None:
                continue
            offers.append(Offer(country_id, str(service), cost, count))
    offers.sort(key=lambda o: (o.country_id, o.service))
    return offers


def parse_countries(data: Any) -> list[Country]:
    """Parse getCountries: an object keyed by id or an array of country objects."""
    if isinstance(data, dict):
        items: list[tuple[Any, Any]] = list(data.items())
    elif isinstance(data, list):
        items = [(None, item) for item in data]
    else:
        return []
    countries: list[Country] = []
    for key, item in items:
        if not isinstance(item, dict):
            continue
        country_id = _to_int(item.get("id", key))
        name = _to_str(item.get("eng") or item.get("name") or item.get("rus"))
        if country_id is None or not name:
            continue
        countries.append(
            Country(
                id=country_id,
                name=name,
                visible=_to_bool(item.get("visible", True)),
                rent=_to_bool(item.get("rent", False)),
            )
        )
    countries.sort(key=lambda c: c.id)
    return countries


def parse_services(data: Any) -> list[Service]:
    """Parse getServicesList: {"status", "services": [...]}, a bare array, or {code: name}."""
    raw: Any = data.get("services", data) if isinstance(data, dict) else data
    if isinstance(raw, dict):
        raw = [{"code": k, "name": v} for k, v in raw.items()]
    if not isinstance(raw, list):
        return []
    services: list[Service] = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        code, name = _to_str(item.get("code")), _to_str(item.get("name"))
        if code:
            services.append(Service(code=code, name=name or code))
    return services


# =============================================================================== client


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
        bad_status = cancelling and type(err) is ProviderError and err.code == "BAD_STATUS"
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
