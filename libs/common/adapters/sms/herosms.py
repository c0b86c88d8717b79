"""HeroSmsClient: the SmsProvider port over the HeroSMS / SMS-Activate handler_api protocol."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar

import aiohttp

from libs.common.adapters.sms.errors import (
    ERROR_CLASSES,
    ActivationNotActive,
    BadRentTime,
    BadStatus,
    Banned,
    CodeAlreadyReceived,
    NotFound,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    RentEnded,
)
from libs.common.adapters.sms.limiter import BUDGET_UNAVAILABLE, ProviderLimiter, RequestBudget
from libs.common.adapters.sms.parsing import (
    NO_ACTIVATIONS_CODES,
    JsonReply,
    Reply,
    TextReply,
    _to_decimal,
    _unexpected,
    active_activation_rows,
    ban_wait_seconds,
    parse_activation,
    parse_active_activations,
    parse_countries,
    parse_prices,
    parse_rent_catalog,
    parse_rent_messages,
    parse_rental,
    parse_reply,
    parse_services,
    parse_status_text,
    parse_status_v2,
)
from libs.common.core.metrics import PROVIDER_ERRORS
from libs.common.domain.sms_port import (
    Activation,
    ActivationStatus,
    ActiveActivation,
    Country,
    Offer,
    Rental,
    RentCatalog,
    RentMessage,
    Service,
)

if TYPE_CHECKING:
    from libs.common.core.config import Settings

log = logging.getLogger("libs.common.adapters.sms")

HANDLER_PATH = "/stubs/handler_api.php"

# Our own codes for failures the provider never named; with ERROR_CLASSES they bound the
# metric's label values (an unknown upstream code is counted as OTHER).
_OWN_CODES = frozenset(
    {
        "PROVIDER_ERROR",
        "UNAVAILABLE",
        "NETWORK_ERROR",
        "TIMEOUT",
        "EMPTY_REPLY",
        "BAD_JSON",
        "BAD_REPLY",
        "GARBAGE_REPLY",
        "RATE_LIMITED",
        "ERROR",
        "STATUS_FINISH",
        "STATUS_CANCEL",
        "ACCESS_CANCEL_ALREADY",
        "ACCESS_ACTIVATION_ALREADY",
        BUDGET_UNAVAILABLE,
    }
)
_RENT_STATUS_CODES = frozenset({"STATUS_WAIT_CODE", "STATUS_FINISH", "STATUS_CANCEL"})
# getActiveActivations pages: HeroSMS documents `start`/`limit` with at most 100 rows a page;
# the page bound only stops a provider that ignores `start` from looping forever.
ACTIVE_PAGE_SIZE = 100
_MAX_ACTIVE_PAGES = 1000

# Purchases and cancels go before polls: these actions take a slot of the request budget ahead
# of every other call. Any action not named here (polls, bulk poll, finish, balance, catalog,
# and any action added later) waits behind them.
URGENT_ACTIONS = frozenset(
    {
        "getNumber",
        "getNumberV2",
        "reactivate",
        "getExtraActivation",
        "getRentNumber",
        "setRentStatus",
        "continueRentNumber",
    }
)
# setStatus is urgent for a cancel (8) and for another SMS (3); finishing (6) is housekeeping.
URGENT_SET_STATUS = frozenset({"3", "8"})


def is_urgent(action: str, params: dict[str, str]) -> bool:
    """Whether a call takes a slot before the polls (purchases, cancels, another SMS, rent)."""
    if action == "setStatus":
        return params.get("status") in URGENT_SET_STATUS
    return action in URGENT_ACTIONS


P = ParamSpec("P")
R = TypeVar("R")


def metric_code(code: str) -> str:
    """The label under which an error code is counted (bounded set)."""
    if code in ERROR_CLASSES or code in _OWN_CODES:
        return code
    if code.startswith("HTTP_") and code[5:].isdigit() and len(code) == 8:
        return code
    return "OTHER"


def record_error(err: ProviderError) -> None:
    """Count a provider error once in sms4sats_provider_errors_total."""
    if err.counted:
        return
    err.counted = True
    PROVIDER_ERRORS.labels(metric_code(err.code)).inc()


def _counted(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Count every ProviderError a public method raises (each error once)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except ProviderError as err:
            record_error(err)
            raise

    return wrapper


def _pause_error(err: RateLimited | Banned) -> Callable[[float], ProviderError]:
    """What callers get while a pause too long to sleep through is on."""
    if isinstance(err, Banned):
        code, until = err.code, err.until
        return lambda remaining: Banned(code, until=until, retry_after=remaining, transient=True)
    rl_code = err.code
    return lambda remaining: RateLimited(rl_code, retry_after=remaining)


class HeroSmsClient:
    """SmsProvider over the HeroSMS / SMS-Activate handler_api protocol.

    Requests are POSTed form-encoded so the API key never appears in a URL (and thus not in
    proxy/access logs or aiohttp exception messages). `poll` uses getStatus because only the v1
    reply distinguishes "waiting for another SMS" (STATUS_WAIT_RETRY) from "received"; getStatusV2
    repeats the previous SMS in both cases. Once a code is there, one getStatusV2 call fetches the
    SMS text (best effort, `fetch_sms_text=False` disables it).

    Every call takes a slot of the account's request budget first: `budget` (the services pass
    the PostgreSQL one, shared by every replica), else an in-process ProviderLimiter at
    `rate_per_second`. Purchases, cancels, another-SMS and rent calls take theirs before polls
    (`is_urgent`). A 429 or a `BANNED:<until>` pauses the budget (so every caller sharing it)
    for the announced time (Retry-After, the ban end, else an exponential backoff) and the call
    is retried; a pause longer than `max_wait` is not slept but raised (RateLimited / Banned,
    transient) to the caller. Both answers mean the request was not carried out, so retrying a
    purchase cannot buy twice.

    Reactivation uses HeroSMS's `reactivate` action, whose reply has getNumberV2's shape (so the
    price is known); the simulator also serves SMS-Activate's `getExtraActivation`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        provider_tz: tzinfo = UTC,
        fetch_sms_text: bool = True,
        rate_per_second: float = 40.0,
        max_wait: float = 30.0,
        max_retries: int = 3,
        budget: RequestBudget | None = None,
    ) -> None:
        """Configure the client; base_url is e.g. "http://127.0.0.1:8090".

        `rate_per_second` and `max_wait` configure the in-process budget made when `budget`
        is None; a given budget brings its own.
        """
        self._url = base_url.rstrip("/") + HANDLER_PATH
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._tz = provider_tz
        self._fetch_sms_text = fetch_sms_text
        self._session: aiohttp.ClientSession | None = None
        self.budget: RequestBudget = budget or ProviderLimiter(rate_per_second, max_wait=max_wait)
        self._max_retries = max_retries

    @classmethod
    def from_settings(
        cls, settings: Settings, budget: RequestBudget | None = None
    ) -> HeroSmsClient:
        """Build the client from SMS4SATS_PROVIDER_* settings, over `budget` if given."""
        return cls(
            settings.provider_url,
            settings.provider_api_key,
            timeout=settings.provider_timeout_seconds,
            rate_per_second=settings.provider_rate_per_second,
            max_wait=settings.provider_budget_max_wait_seconds,
            budget=budget,
        )

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
        """One logical call with form parameters."""
        return await self._request(action, params)

    async def _request(
        self, action: str, params: dict[str, str], *, passthrough: frozenset[str] = frozenset()
    ) -> Reply:
        """One logical call: paced by the budget, retried through announced pauses."""
        attempt = 0
        urgent = is_urgent(action, params)
        while True:
            await self.budget.acquire(urgent)
            try:
                return await self._once(action, passthrough, params)
            except (RateLimited, Banned) as err:
                record_error(err)
                wait = self._pause_for(err, attempt)
                if wait is None:
                    raise
                await self.budget.pause(wait, _pause_error(err))
                attempt += 1
                if wait > self.budget.max_wait or attempt > self._max_retries:
                    if isinstance(err, RateLimited) and err.retry_after is None:
                        err.retry_after = wait
                    raise
                log.warning("provider %s: %s, pausing calls for %.1f s", action, err.code, wait)

    def _pause_for(self, err: RateLimited | Banned, attempt: int) -> float | None:
        """How long all calls should wait after a 429 / BANNED (None: not a pause)."""
        if isinstance(err, RateLimited):
            if err.retry_after is not None:
                return err.retry_after
            return min(self.budget.max_wait, 0.5 * 2.0**attempt)
        if err.code != "BANNED":
            return None
        if err.retry_after is None:
            wait = ban_wait_seconds(err.until, datetime.now(UTC), self._tz)
            # Ban ends have whole seconds: never retry sooner than a second after the last try.
            err.retry_after = None if wait is None else max(wait, 1.0)
            err.transient = err.retry_after is not None or err.until is not None
        return err.retry_after

    async def _once(
        self, action: str, passthrough: frozenset[str], params: dict[str, str]
    ) -> Reply:
        form = {"api_key": self._api_key, "action": action, **params}
        started = time.monotonic()
        try:
            async with self._get_session().post(self._url, data=form) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError as exc:
            log.warning("provider %s timed out", action)
            raise ProviderUnavailable("TIMEOUT", detail=type(exc).__name__) from exc
        except aiohttp.ClientError as exc:
            log.warning("provider %s failed: %s", action, type(exc).__name__)
            raise ProviderUnavailable("NETWORK_ERROR", detail=type(exc).__name__) from exc
        elapsed_ms = (time.monotonic() - started) * 1000
        log.debug("provider %s -> HTTP %s in %.0f ms", action, status, elapsed_ms)
        try:
            return parse_reply(
                status, raw.decode("utf-8", errors="replace"), retry_after, passthrough=passthrough
            )
        except ProviderError as err:
            log.info("provider %s -> %s (HTTP %s)", action, err.code, status)
            raise

    @_counted
    async def balance_usd(self) -> Decimal:
        """Return our account balance (getBalance → ACCESS_BALANCE:<usd>)."""
        reply = await self._call("getBalance")
        if isinstance(reply, TextReply) and reply.key == "ACCESS_BALANCE":
            amount = _to_decimal(reply.value)
            if amount is not None:
                return amount
            raise ProviderUnavailable("BAD_REPLY")
        raise _unexpected("getBalance", reply)

    @_counted
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

    @_counted
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

    # Rows asked for per getActiveActivations page; an attribute so that a provider known to
    # allow bigger pages (the simulator does) can be read in fewer requests.
    active_page_size: int = ACTIVE_PAGE_SIZE

    @_counted
    async def active_activations(self) -> list[ActiveActivation]:
        """Every active activation with its latest SMS (getActiveActivations), page by page.

        Pages (`start`/`limit`, HeroSMS documents at most 100 rows) are fetched until one comes
        back short or brings no new id (a provider ignoring `start`). "No activations" (text
        NO_ACTIVATIONS or {"status": "error", ...}) is []. BadAction when the provider lacks the
        action. An activation ending between two pages may shift the next page past one row:
        the caller polls what the answer lacks with `poll`.
        """
        found: dict[str, ActiveActivation] = {}
        start = 0
        for _ in range(_MAX_ACTIVE_PAGES):
            try:
                reply = await self._call(
                    "getActiveActivations", start=str(start), limit=str(self.active_page_size)
                )
            except ProviderError as err:
                if err.code in NO_ACTIVATIONS_CODES:
                    break
                raise
            if isinstance(reply, TextReply):
                if reply.key in NO_ACTIVATIONS_CODES:
                    break
                raise _unexpected("getActiveActivations", reply)
            if not isinstance(reply.data, dict | list):
                raise _unexpected("getActiveActivations", reply)
            rows = active_activation_rows(reply.data)
            fresh = [a for a in parse_active_activations(rows, self._tz) if a.id not in found]
            found.update((a.id, a) for a in fresh)
            if len(rows) < self.active_page_size or not fresh:
                break
            start += len(rows)
        return list(found.values())

    async def _set_status(
        self,
        activation_id: str,
        status: int,
        expected: tuple[str, ...],
        *,
        cancelling: bool = False,
    ) -> None:
        """setStatus, with SMS-Activate's vague refusals made specific by a status lookup."""
        try:
            await self._set_status_once(activation_id, status, expected)
        except ProviderError as err:
            refined = await self._refine(activation_id, err, cancelling=cancelling)
            if refined is not None:
                raise refined from err
            raise

    async def _set_status_once(
        self, activation_id: str, status: int, expected: tuple[str, ...]
    ) -> None:
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

    @_counted
    async def request_another(self, activation_id: str) -> None:
        """Ask for another SMS (setStatus 3 → ACCESS_RETRY_GET)."""
        await self._set_status(activation_id, 3, ("ACCESS_RETRY_GET", "ACCESS_READY"))

    @_counted
    async def finish(self, activation_id: str) -> None:
        """Finish the activation (setStatus 6 → ACCESS_ACTIVATION)."""
        await self._set_status(activation_id, 6, ("ACCESS_ACTIVATION",))

    @_counted
    async def cancel(self, activation_id: str) -> None:
        """Cancel (setStatus 8 → ACCESS_CANCEL); ActivationNotActive if already cancelled/done."""
        await self._set_status(activation_id, 8, ("ACCESS_CANCEL",), cancelling=True)

    @_counted
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

    @_counted
    async def countries(self) -> list[Country]:
        """List countries (getCountries)."""
        reply = await self._call("getCountries")
        if not isinstance(reply, JsonReply):
            raise _unexpected("getCountries", reply)
        return parse_countries(reply.data)

    @_counted
    async def services(self) -> list[Service]:
        """List services (getServicesList)."""
        reply = await self._call("getServicesList")
        if not isinstance(reply, JsonReply):
            raise _unexpected("getServicesList", reply)
        return parse_services(reply.data)

    @_counted
    async def report_bad(self, activation_id: str) -> None:
        """HeroSMS has no ban action: give the number back by cancelling it (setStatus 8).

        So the cancel rules apply: TooEarlyToCancel in the first minutes, CodeAlreadyReceived
        once a code arrived, ActivationNotActive when it is already over.
        """
        await self._set_status(activation_id, 8, ("ACCESS_CANCEL",), cancelling=True)

    @_counted
    async def reactivate(self, activation_id: str) -> Activation:
        """Reactivate a finished activation that received a code (action `reactivate`).

        ReactivationNotAvailable when the provider refuses (not finished, too old, not offered).
        """
        reply = await self._call("reactivate", id=activation_id, activationId=activation_id)
        if isinstance(reply, JsonReply):
            # -1: the reply should name the country; nothing else would be right here.
            return parse_activation(reply.data, fallback_country=-1, tz=self._tz)
        raise _unexpected("reactivate", reply)

    @_counted
    async def rent_offers(self, hours: int, country: int | None = None) -> RentCatalog:
        """Rent offers for `hours` (getRentServicesAndCountries); BadRentTime if not offered."""
        if hours <= 0:
            raise BadRentTime(detail="hours must be positive")
        params = {"rent_time": str(hours)}
        if country is not None:
            params["country"] = str(country)
        reply = await self._call("getRentServicesAndCountries", **params)
        if not isinstance(reply, JsonReply):
            raise _unexpected("getRentServicesAndCountries", reply)
        return parse_rent_catalog(reply.data, hours=hours, country=country)

    @_counted
    async def rent(
        self, *, service: str, country: int, hours: int, webhook_url: str | None = None
    ) -> Rental:
        """Rent a number (getRentNumber); SMS are pushed to `webhook_url` when given."""
        if hours <= 0:
            raise BadRentTime(detail="hours must be positive")
        params = {"service": service, "country": str(country), "rent_time": str(hours)}
        if webhook_url:
            params["url"] = webhook_url
        reply = await self._call("getRentNumber", **params)
        if not isinstance(reply, JsonReply):
            raise _unexpected("getRentNumber", reply)
        return parse_rental(reply.data, tz=self._tz)

    @_counted
    async def rent_messages(self, rent_id: str) -> list[RentMessage]:
        """Every SMS of the rental (getRentStatus); [] before the first, RentEnded once over."""
        reply = await self._request(
            "getRentStatus", {"id": rent_id}, passthrough=_RENT_STATUS_CODES
        )
        if isinstance(reply, TextReply):
            if reply.key == "STATUS_WAIT_CODE":
                return []
            if reply.key in ("STATUS_FINISH", "STATUS_CANCEL"):
                raise RentEnded(reply.key)
            raise _unexpected("getRentStatus", reply)
        return parse_rent_messages(reply.data, tz=self._tz)

    async def _set_rent_status(self, rent_id: str, status: int) -> None:
        reply = await self._call("setRentStatus", id=rent_id, status=str(status))
        if isinstance(reply, JsonReply):
            data = reply.data
            if isinstance(data, dict) and str(data.get("status", "")).lower() == "success":
                return
        if isinstance(reply, TextReply) and reply.key in ("SUCCESS", "STATUS_SUCCESS"):
            return
        raise _unexpected("setRentStatus", reply)

    @_counted
    async def finish_rent(self, rent_id: str) -> None:
        """End a rental early (setRentStatus 1); RentEnded if it is already over."""
        await self._set_rent_status(rent_id, 1)

    @_counted
    async def cancel_rent(self, rent_id: str) -> None:
        """Cancel a rental (setRentStatus 2); RentEnded if it is already over."""
        await self._set_rent_status(rent_id, 2)
