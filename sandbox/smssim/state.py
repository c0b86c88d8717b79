"""In-memory state and business rules of the SMS provider simulator (no I/O)."""

from __future__ import annotations

import heapq
import random
import re
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from itertools import islice
from typing import Any, Literal

from sandbox.smssim.catalog import (
    COUNTRIES,
    COUNTRIES_BY_ID,
    DEFAULT_BALANCE,
    DEFAULT_STOCK,
    SERVICES,
    SERVICES_BY_CODE,
    default_cost,
    make_code,
    make_phone,
    sms_text,
)

ErrorStyle = Literal["herosms", "smsactivate"]
ERROR_STYLES: tuple[ErrorStyle, ...] = ("herosms", "smsactivate")

WAIT_CODE = "WAIT_CODE"
WAIT_RETRY = "WAIT_RETRY"
OK = "OK"
CANCEL = "CANCEL"
FINISHED = "FINISHED"
ACTIVE_STATES = frozenset({WAIT_CODE, WAIT_RETRY, OK})
WAITING_STATES = frozenset({WAIT_CODE, WAIT_RETRY})

FIRST_ACTIVATION_ID = 3_100_000_001
FIRST_RENT_ID = 7_200_000_001


def fmt_time(epoch: float) -> str:
    """Format an epoch timestamp as the provider does: "YYYY-MM-DD HH:MM:SS" (UTC)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso_time(epoch: float) -> str:
    """Format an epoch timestamp as ISO 8601 UTC for the control API."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class SimError(Exception):
    """A provider error, renderable in both the HeroSMS and the SMS-Activate style."""

    def __init__(
        self,
        title: str,
        http_status: int,
        text: str,
        details: str,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Store the HeroSMS title/status/info and the SMS-Activate text form."""
        super().__init__(title)
        self.title = title
        self.http_status = http_status
        self.text = text
        self.details = details
        self.info = info or {}


def err_no_key() -> SimError:
    """API key missing."""
    return SimError("NO_KEY", 401, "NO_KEY", "API key is required")


def err_bad_key() -> SimError:
    """API key wrong."""
    return SimError("BAD_KEY", 401, "BAD_KEY", "Invalid API key")


def err_bad_action() -> SimError:
    """Unknown action."""
    return SimError("BAD_ACTION", 404, "BAD_ACTION", "Unknown action")


def err_bad_service() -> SimError:
    """Unknown service code."""
    return SimError("BAD_SERVICE", 400, "BAD_SERVICE", "Unknown service")


def err_bad_status() -> SimError:
    """Status change not allowed in the activation's current state."""
    return SimError("BAD_STATUS", 400, "BAD_STATUS", "Status change not allowed")


def err_no_numbers() -> SimError:
    """Out of stock: HTTP 200 text in both styles."""
    return SimError("NO_NUMBERS", 200, "NO_NUMBERS", "No numbers available")


def err_no_balance() -> SimError:
    """Balance too low for the purchase."""
    return SimError("NO_BALANCE", 402, "NO_BALANCE", "Insufficient balance")


def err_banned(until: str) -> SimError:
    """Account temporarily banned."""
    return SimError("BANNED", 403, f"BANNED:{until}", "Account is banned", {"endDate": until})


def err_wrong_max_price(min_price: Decimal) -> SimError:
    """maxPrice below the current price."""
    return SimError(
        "WRONG_MAX_PRICE",
        400,
        f"WRONG_MAX_PRICE:{min_price}",
        "maxPrice is lower than the current price",
        {"min": float(min_price)},
    )


def err_wrong_id() -> SimError:
    """Activation id is not a number."""
    return SimError("NOT_FOUND", 404, "WRONG_ACTIVATION_ID", "Invalid activation id")


def err_no_activation() -> SimError:
    """Activation id unknown."""
    return SimError("NOT_FOUND", 404, "NO_ACTIVATION", "Activation not found")


def err_not_active() -> SimError:
    """Activation already cancelled or finished."""
    return SimError("ACTIVATION_NOT_ACTIVE", 409, "NO_ACTIVATION", "Activation is not active")


def err_early_cancel(min_seconds: int) -> SimError:
    """Cancel refused in the first minutes after purchase."""
    return SimError(
        "EARLY_CANCEL_DENIED",
        409,
        "EARLY_CANCEL_DENIED",
        f"Cancellation is allowed {min_seconds} seconds after purchase",
        {"minActivationTime": min_seconds},
    )


def err_otp_received() -> SimError:
    """Cancel refused because a code already arrived."""
    return SimError("OTP_RECEIVED", 409, "BAD_STATUS", "A code was already received")


def err_bad_time() -> SimError:
    """Rent duration not offered."""
    return SimError("BAD_TIME", 400, "BAD_TIME", "This rent duration is not offered")


def err_no_rent() -> SimError:
    """Rent id unknown."""
    return SimError("NOT_FOUND", 404, "NO_ID_RENT", "Rental not found")


def err_rent_over(status: str) -> SimError:
    """setRentStatus on a rental that already ended."""
    code = "ALREADY_FINISH" if status == FINISHED else "ALREADY_CANCEL"
    return SimError(code, 409, code, "The rental has already ended")


def err_cant_cancel(seconds: int) -> SimError:
    """Rental cancel refused after its refund window."""
    return SimError(
        "CANT_CANCEL", 409, "CANT_CANCEL", f"A rental can be cancelled in its first {seconds} s"
    )


def err_no_reactivation() -> SimError:
    """Reactivation refused: only a finished activation that received a code qualifies."""
    return SimError(
        "RENEW_ACTIVATION_NOT_AVAILABLE",
        409,
        "RENEW_ACTIVATION_NOT_AVAILABLE",
        "Only a finished activation that received a code can be reactivated",
    )


DEFAULT_RENT_HOURS: tuple[int, ...] = (2, 4, 12, 24, 72, 168)
DEFAULT_RENT_STOCK = 20
DEFAULT_BTC_USD = Decimal("100000")


@dataclass
class Settings:
    """Runtime-changeable simulator settings."""

    api_key: str = "sim-key"
    error_style: ErrorStyle = "herosms"
    early_cancel_seconds: float = 120.0
    auto_sms_delay: float | None = 3.0
    # Each new activation's SMS comes after delay + uniform(0, spread) s, and only with
    # probability `share` (the others never get one, so they expire or are cancelled).
    auto_sms_spread: float = 0.0
    auto_sms_share: float = 1.0
    lifetime_seconds: float = 1200.0
    banned_until: str | None = None
    initial_balance: Decimal = DEFAULT_BALANCE
    rent_hours: tuple[int, ...] = DEFAULT_RENT_HOURS
    # A rental may be cancelled (and refunded) only this long after it started.
    rent_cancel_seconds: float = 1200.0
    # Where rental SMS are pushed when the rental named no `url` (None: nowhere).
    # The account webhook: rental SMS of rentals without `url`, and every activation SMS.
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_tries: int = 7
    webhook_retry_seconds: float = 20.0
    webhook_timeout_seconds: float = 3.0
    # Upstream rate limit per API key (None: off) and how long a burst over it blocks the key.
    rate_limit_per_second: int | None = 50
    rate_block_seconds: float = 10.0
    # Most rows one getActiveActivations page returns (HeroSMS documents 100); None: all.
    active_page_limit: int | None = None
    btc_usd: Decimal = DEFAULT_BTC_USD


@dataclass
class Pair:
    """Stock and price of one country/service pair."""

    count: int
    cost: Decimal


@dataclass
class Sms:
    """One SMS delivered to an activation."""

    code: str
    text: str
    at: float


@dataclass
class SimActivation:
    """One purchased number."""

    id: int
    phone: str
    country: int
    service: str
    cost: Decimal
    operator: str
    created_at: float
    ends_at: float
    status: str = WAIT_CODE
    sms: list[Sms] = field(default_factory=list)

    @property
    def last_sms(self) -> Sms | None:
        """The most recent SMS, if any."""
        return self.sms[-1] if self.sms else None

    def to_json(self) -> dict[str, Any]:
        """Control-API representation."""
        return {
            "activationId": str(self.id),
            "phoneNumber": self.phone,
            "country": self.country,
            "service": self.service,
            "operator": self.operator,
            "status": self.status,
            "codes": [s.code for s in self.sms],
            "texts": [s.text for s in self.sms],
            "smsAt": [s.at for s in self.sms],
            "createdAt": iso_time(self.created_at),
            "endsAt": iso_time(self.ends_at),
            "cost": float(self.cost),
        }


@dataclass
class RentSms:
    """One SMS received by a rented number."""

    phone_from: str
    text: str
    service: str
    at: float


@dataclass
class SimRental:
    """One rented number."""

    id: int
    phone: str
    country: int
    service: str
    hours: int
    cost: Decimal
    created_at: float
    ends_at: float
    url: str | None
    status: str = WAIT_CODE
    sms: list[RentSms] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Control-API representation."""
        return {
            "rentId": str(self.id),
            "phoneNumber": self.phone,
            "country": self.country,
            "service": self.service,
            "hours": self.hours,
            "status": self.status,
            "url": self.url,
            "messages": [
                {"phoneFrom": m.phone_from, "text": m.text, "date": fmt_time(m.at)}
                for m in self.sms
            ],
            "createdAt": iso_time(self.created_at),
            "endsAt": iso_time(self.ends_at),
            "cost": float(self.cost),
        }


FaultMode = Literal["custom", "error", "delay", "garbage", "no_balance"]
FAULT_MODES: tuple[FaultMode, ...] = ("custom", "error", "delay", "garbage", "no_balance")
# Actions that spend money: the ones a no_balance fault answers with NO_BALANCE by default.
BUY_ACTIONS = frozenset(
    {
        "getNumber",
        "getNumberV2",
        "getRentNumber",
        "continueRentNumber",
        "reactivate",
        "getExtraActivation",
    }
)


@dataclass
class Fault:
    """An injected failure for matching calls: answered instead of (or, `delay`, before) them.

    `actions` empty matches every handler_api action and the rate endpoint ("simple/price");
    `times` None means until cleared; `probability` applies to each matching call.
    """

    mode: FaultMode
    actions: frozenset[str]
    status: int
    body: str
    content_type: str
    times: int | None
    retry_after: float | None
    delay_seconds: float
    probability: float = 1.0

    def matches(self, action: str) -> bool:
        """Whether this fault is scoped to the action."""
        if self.mode == "no_balance" and not self.actions:
            return action in BUY_ACTIONS
        return not self.actions or action in self.actions

    def to_json(self) -> dict[str, Any]:
        """Control-API representation."""
        return {
            "mode": self.mode,
            "actions": sorted(self.actions),
            "action": next(iter(self.actions)) if len(self.actions) == 1 else None,
            "status": self.status,
            "times": self.times,
            "probability": self.probability,
            "delaySeconds": self.delay_seconds,
            "retryAfter": self.retry_after,
            "body": self.body,
            "contentType": self.content_type,
        }


def default_stock() -> dict[tuple[int, str], Pair]:
    """Return the default stock: every country/service pair, 50 numbers, deterministic price."""
    return {
        (c.id, s.code): Pair(DEFAULT_STOCK, default_cost(c.id, s.code))
        for c in COUNTRIES
        for s in SERVICES
    }


def default_rent_stock() -> dict[tuple[int, str], int]:
    """Rentable numbers per country/service: only in countries that offer rent."""
    return {(c.id, s.code): DEFAULT_RENT_STOCK for c in COUNTRIES if c.rent for s in SERVICES}


def rent_cost(base: Decimal, hours: int) -> Decimal:
    """Rent price: the pair's activation price scaled by duration, cheaper per hour."""
    factor = Decimal(hours) ** Decimal("0.75")
    return (base * 4 * factor).quantize(Decimal("0.01"))


def parse_decimal(raw: str | None) -> Decimal | None:
    """Parse an optional decimal parameter; None for missing or garbage."""
    if raw is None or raw.strip() == "":
        return None
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


class SimState:
    """Everything the simulator knows, with the provider's rules."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Create a fresh state with the default catalog."""
        self.settings = settings or Settings()
        self.rng = random.Random(seed)
        self.clock = clock
        self.balance = self.settings.initial_balance
        self.stock = default_stock()
        self.activations: dict[int, SimActivation] = {}
        self.next_id = FIRST_ACTIVATION_ID
        self.stats: Counter[str] = Counter()
        self.faults: list[Fault] = []
        self.rent_stock = default_rent_stock()
        self.rentals: dict[int, SimRental] = {}
        self.next_rent_id = FIRST_RENT_ID
        self.rate_updated_at = self.clock()
        # Per API key: recent request times (one-second window) and the end of a block.
        self._recent: dict[str, deque[float]] = {}
        self._blocked_until: dict[str, float] = {}
        self.rate_limited = 0
        # Every request of a key in the last second (refused ones too), for the peak.
        self._seen: dict[str, deque[float]] = {}
        self.peak_per_second = 0
        self.blocks = 0
        # Activations still active, in purchase order, and their ends (a heap) so expiry
        # and the bulk status never scan the whole history.
        self._active: dict[int, SimActivation] = {}
        self._ends: list[tuple[float, int]] = []

    def reset(self) -> None:
        """Clear activations, rentals, stats, faults and blocks; restore stock and balance."""
        self.balance = self.settings.initial_balance
        self.stock = default_stock()
        self.activations.clear()
        self.stats.clear()
        self.faults.clear()
        self.rent_stock = default_rent_stock()
        self.rentals.clear()
        self._recent.clear()
        self._blocked_until.clear()
        self.rate_limited = 0
        self._seen.clear()
        self.peak_per_second = 0
        self.blocks = 0
        self._active.clear()
        self._ends.clear()

    # ----------------------------------------------------------------- faults

    def take_fault(self, action: str) -> Fault | None:
        """The first fault matching the action (drawn by its probability), counted down."""
        for fault in list(self.faults):
            if not fault.matches(action):
                continue
            if fault.probability < 1.0 and self.rng.random() >= fault.probability:
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
            return fault
        return None

    # ------------------------------------------------------------- rate limit

    def rate_check(self, api_key: str) -> float | None:
        """Count one request for the key; seconds left in its block if it is (now) blocked."""
        now = self.clock()
        self._count_peak(api_key, now)
        limit = self.settings.rate_limit_per_second
        if limit is None:
            return None
        until = self._blocked_until.get(api_key, 0.0)
        if now < until:
            return until - now
        window = self._recent.setdefault(api_key, deque())
        window.append(now)
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) > limit:
            window.clear()
            block = self.settings.rate_block_seconds
            self._blocked_until[api_key] = now + block
            self.blocks += 1
            return block
        return None

    def _count_peak(self, api_key: str, now: float) -> None:
        """Track the most requests of one key within any sliding second (amortised O(1))."""
        window = self._seen.setdefault(api_key, deque())
        window.append(now)
        while window[0] <= now - 1.0:
            window.popleft()
        self.peak_per_second = max(self.peak_per_second, len(window))

    # ------------------------------------------------------------------ auth

    def check_key(self, api_key: str | None) -> None:
        """Raise NO_KEY/BAD_KEY unless the key matches."""
        if not api_key:
            raise err_no_key()
        if api_key != self.settings.api_key:
            raise err_bad_key()

    # ------------------------------------------------------------ activations

    def buy(
        self, service: str | None, country_raw: str | None, max_price_raw: str | None
    ) -> SimActivation:
        """Buy a number, applying ban, service, stock, price and balance rules."""
        if self.settings.banned_until:
            raise err_banned(self.settings.banned_until)
        if not service or service not in SERVICES_BY_CODE:
            raise err_bad_service()
        try:
            country_id = int(country_raw) if country_raw not in (None, "") else 0
        except ValueError:
            raise err_no_numbers() from None
        country = COUNTRIES_BY_ID.get(country_id)
        pair = self.stock.get((country_id, service))
        if country is None or pair is None or pair.count <= 0:
            raise err_no_numbers()
        max_price = parse_decimal(max_price_raw)
        if max_price is not None and max_price < pair.cost:
            raise err_wrong_max_price(pair.cost)
        if self.balance < pair.cost:
            raise err_no_balance()
        pair.count -= 1
        self.balance -= pair.cost
        now = self.clock()
        activation = SimActivation(
            id=self.next_id,
            phone=make_phone(country, self.rng),
            country=country_id,
            service=service,
            cost=pair.cost,
            operator=self.rng.choice(country.operators),
            created_at=now,
            ends_at=now + self.settings.lifetime_seconds,
        )
        self._register(activation)
        return activation

    def _register(self, activation: SimActivation) -> None:
        self.next_id += 1
        self.activations[activation.id] = activation
        self._active[activation.id] = activation
        heapq.heappush(self._ends, (activation.ends_at, activation.id))

    def get(self, raw_id: str | None) -> SimActivation:
        """Look up an activation by its (string) id, expiring it if due."""
        if not raw_id or not raw_id.strip().isdigit():
            raise err_wrong_id()
        activation = self.activations.get(int(raw_id))
        if activation is None:
            raise err_no_activation()
        self.refresh(activation)
        return activation

    def refresh(self, activation: SimActivation) -> None:
        """Apply lifetime expiry: unused → cancelled and refunded, used → finished."""
        if activation.status in ACTIVE_STATES and self.clock() >= activation.ends_at:
            if activation.sms:
                self._end(activation, FINISHED)
            else:
                self._cancel(activation)

    def refresh_all(self) -> None:
        """Apply expiry to every activation that is due (the others are left alone)."""
        now = self.clock()
        while self._ends and self._ends[0][0] <= now:
            _, activation_id = heapq.heappop(self._ends)
            activation = self.activations.get(activation_id)
            if activation is not None:
                self.refresh(activation)

    def active_page(self, start: int, limit: int | None) -> list[SimActivation]:
        """Active activations in purchase order, `limit` of them from `start` (bulk status)."""
        self.refresh_all()
        cap = self.settings.active_page_limit
        if cap is not None:
            limit = cap if limit is None else min(limit, cap)
        stop = None if limit is None else start + max(limit, 0)
        return list(islice(self._active.values(), max(start, 0), stop))

    def _end(self, activation: SimActivation, status: str) -> None:
        """The activation leaves the active states."""
        activation.status = status
        self._active.pop(activation.id, None)

    def _cancel(self, activation: SimActivation) -> None:
        self._end(activation, CANCEL)
        self.balance += activation.cost
        pair = self.stock.get((activation.country, activation.service))
        if pair is not None:
            pair.count += 1

    def set_status(self, activation: SimActivation, status_raw: str | None) -> str:
        """Apply setStatus (1 ready, 3 another SMS, 6 finish, 8 cancel); return the reply."""
        if activation.status not in ACTIVE_STATES:
            raise err_not_active()
        if status_raw == "8":
            if activation.sms:
                raise err_otp_received()
            min_age = self.settings.early_cancel_seconds
            if self.clock() - activation.created_at < min_age:
                raise err_early_cancel(int(min_age))
            self._cancel(activation)
            return "ACCESS_CANCEL"
        if status_raw == "6":
            if not activation.sms:
                raise err_bad_status()
            self._end(activation, FINISHED)
            return "ACCESS_ACTIVATION"
        if status_raw == "3":
            if not activation.sms:
                raise err_bad_status()
            activation.status = WAIT_RETRY
            return "ACCESS_RETRY_GET"
        if status_raw == "1":
            return "ACCESS_READY"
        raise err_bad_status()

    def deliver_sms(
        self, activation: SimActivation, *, text: str | None = None, code: str | None = None
    ) -> Sms:
        """Deliver an SMS to an active activation; missing code/text are generated."""
        self.refresh(activation)
        if activation.status not in ACTIVE_STATES:
            raise err_not_active()
        if code is None:
            # "Your code is 12345" / WhatsApp style "246-810": first 4-8 digit group wins.
            groups = (m.replace("-", "") for m in re.findall(r"\d(?:[\d-]*\d)?", text or ""))
            candidates = [g for g in groups if 4 <= len(g) <= 8]
            code = candidates[0] if candidates else make_code(self.rng)
        if text is None:
            text = sms_text(activation.service, code)
        sms = Sms(code=code, text=text, at=self.clock())
        activation.sms.append(sms)
        activation.status = OK
        return sms

    # ---------------------------------------------------------------- catalog

    def prices(self, service: str | None, country_raw: str | None) -> dict[str, Any]:
        """getPrices body: {"<country>": {"<service>": {"cost", "count"}}}."""
        result: dict[str, dict[str, Any]] = {}
        for (country_id, code), pair in sorted(self.stock.items()):
            if service and code != service:
                continue
            if country_raw not in (None, "") and str(country_id) != str(country_raw).strip():
                continue
            result.setdefault(str(country_id), {})[code] = {
                "cost": float(pair.cost),
                "count": pair.count,
            }
        return result

    # ----------------------------------------------------------- reactivation

    def reactivate(self, raw_id: str | None) -> SimActivation:
        """A new activation on the number of a finished one that received a code."""
        if self.settings.banned_until:
            raise err_banned(self.settings.banned_until)
        old = self.get(raw_id)
        if old.status != FINISHED or not old.sms:
            raise err_no_reactivation()
        pair = self.stock.get((old.country, old.service))
        cost = pair.cost if pair is not None else old.cost
        if self.balance < cost:
            raise err_no_balance()
        self.balance -= cost
        now = self.clock()
        activation = SimActivation(
            id=self.next_id,
            phone=old.phone,
            country=old.country,
            service=old.service,
            cost=cost,
            operator=old.operator,
            created_at=now,
            ends_at=now + self.settings.lifetime_seconds,
        )
        self._register(activation)
        return activation

    # ---------------------------------------------------------------- rentals

    def _rent_hours(self, raw: str | None) -> int:
        try:
            hours = int(raw) if raw not in (None, "") else 4
        except ValueError:
            raise err_bad_time() from None
        if hours not in self.settings.rent_hours:
            raise err_bad_time()
        return hours

    def rent_price(self, country_id: int, service: str, hours: int) -> Decimal:
        """What renting costs now: follows the pair's price, so /sim/stock `cost` moves it."""
        pair = self.stock.get((country_id, service))
        base = pair.cost if pair is not None else default_cost(country_id, service)
        return rent_cost(base, hours)

    def rent_countries(self) -> list[int]:
        """Ids of the countries that rent numbers."""
        return [c.id for c in COUNTRIES if c.rent]

    def rent_catalog(self, hours_raw: str | None, country_raw: str | None) -> dict[str, Any]:
        """getRentServicesAndCountries body for one duration and country (default: the first)."""
        hours = self._rent_hours(hours_raw)
        countries = self.rent_countries()
        try:
            country_id = int(country_raw) if country_raw not in (None, "") else countries[0]
        except ValueError:
            country_id = -1
        services: dict[str, Any] = {}
        for (cid, code), count in sorted(self.rent_stock.items()):
            if cid == country_id:
                services[code] = {"cost": float(self.rent_price(cid, code, hours)), "quant": count}
        return {
            "countries": {str(i): cid for i, cid in enumerate(countries)},
            "operators": {"0": "any"},
            "services": services,
            "currency": 840,
        }

    def rent(
        self,
        service: str | None,
        country_raw: str | None,
        hours_raw: str | None,
        url: str | None,
    ) -> SimRental:
        """Rent a number, applying ban, service, duration, stock and balance rules."""
        if self.settings.banned_until:
            raise err_banned(self.settings.banned_until)
        if not service or service not in SERVICES_BY_CODE:
            raise err_bad_service()
        hours = self._rent_hours(hours_raw)
        try:
            country_id = int(country_raw) if country_raw not in (None, "") else 0
        except ValueError:
            raise err_no_numbers() from None
        country = COUNTRIES_BY_ID.get(country_id)
        count = self.rent_stock.get((country_id, service), 0)
        if country is None or count <= 0:
            raise err_no_numbers()
        cost = self.rent_price(country_id, service, hours)
        if self.balance < cost:
            raise err_no_balance()
        self.rent_stock[(country_id, service)] = count - 1
        self.balance -= cost
        now = self.clock()
        rental = SimRental(
            id=self.next_rent_id,
            phone=make_phone(country, self.rng),
            country=country_id,
            service=service,
            hours=hours,
            cost=cost,
            created_at=now,
            ends_at=now + hours * 3600,
            url=url or None,
        )
        self.next_rent_id += 1
        self.rentals[rental.id] = rental
        return rental

    def get_rental(self, raw_id: str | None) -> SimRental:
        """Look up a rental by its (string) id, ending it if due."""
        if not raw_id or not raw_id.strip().isdigit():
            raise err_no_rent()
        rental = self.rentals.get(int(raw_id))
        if rental is None:
            raise err_no_rent()
        if rental.status == WAIT_CODE and self.clock() >= rental.ends_at:
            rental.status = FINISHED
        return rental

    def set_rent_status(self, rental: SimRental, status_raw: str | None) -> None:
        """setRentStatus: 1 finishes, 2 cancels (refunded, only early on)."""
        if rental.status != WAIT_CODE:
            raise err_rent_over(rental.status)
        if status_raw == "1":
            rental.status = FINISHED
            return
        if status_raw == "2":
            window = self.settings.rent_cancel_seconds
            if self.clock() - rental.created_at > window:
                raise err_cant_cancel(int(window))
            rental.status = CANCEL
            self.balance += rental.cost
            key = (rental.country, rental.service)
            self.rent_stock[key] = self.rent_stock.get(key, 0) + 1
            return
        raise err_bad_status()

    def end_rent_early(self, rental: SimRental, status: str) -> None:
        """The provider ends an active rental before its time (FINISHED or CANCEL), as its
        support does when a number is withdrawn; the account balance is left as it is."""
        if rental.status != WAIT_CODE:
            raise err_rent_over(rental.status)
        rental.status = status

    def continue_rent(self, rental: SimRental, hours_raw: str | None) -> SimRental:
        """continueRentNumber: extend an active rental, charged like a new one."""
        if rental.status != WAIT_CODE:
            raise err_rent_over(rental.status)
        hours = self._rent_hours(hours_raw)
        cost = self.rent_price(rental.country, rental.service, hours)
        if self.balance < cost:
            raise err_no_balance()
        self.balance -= cost
        rental.ends_at += hours * 3600
        rental.hours += hours
        return rental

    def deliver_rent_sms(
        self,
        rental: SimRental,
        *,
        text: str | None = None,
        phone_from: str | None = None,
        service: str | None = None,
    ) -> RentSms:
        """An SMS arrives on an active rental (text generated when missing)."""
        if rental.status == WAIT_CODE and self.clock() >= rental.ends_at:
            rental.status = FINISHED
        if rental.status != WAIT_CODE:
            raise err_not_active()
        info = SERVICES_BY_CODE.get(service or rental.service)
        if text is None:
            text = sms_text(service or rental.service, make_code(self.rng))
        sms = RentSms(
            phone_from=phone_from or (info.sender if info is not None else "Service"),
            text=text,
            service=service or rental.service,
            at=self.clock(),
        )
        rental.sms.append(sms)
        return sms
