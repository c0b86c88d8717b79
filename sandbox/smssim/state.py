"""In-memory state and business rules of the SMS provider simulator (no I/O)."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
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


@dataclass
class Settings:
    """Runtime-changeable simulator settings."""

    api_key: str = "sim-key"
    error_style: ErrorStyle = "herosms"
    early_cancel_seconds: float = 120.0
    auto_sms_delay: float | None = 3.0
    lifetime_seconds: float = 1200.0
    banned_until: str | None = None
    initial_balance: Decimal = DEFAULT_BALANCE


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
            "createdAt": iso_time(self.created_at),
            "endsAt": iso_time(self.ends_at),
            "cost": float(self.cost),
        }


@dataclass
class Fault:
    """An injected failure returned instead of the next matching handler_api call(s)."""

    action: str | None
    status: int
    body: str
    content_type: str
    times: int
    retry_after: float | None
    delay_seconds: float


def default_stock() -> dict[tuple[int, str], Pair]:
    """Return the default stock: every country/service pair, 50 numbers, deterministic price."""
    return {
        (c.id, s.code): Pair(DEFAULT_STOCK, default_cost(c.id, s.code))
        for c in COUNTRIES
        for s in SERVICES
    }


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

    def reset(self) -> None:
        """Clear activations, stats and faults; restore default stock and balance."""
        self.balance = self.settings.initial_balance
        self.stock = default_stock()
        self.activations.clear()
        self.stats.clear()
        self.faults.clear()

    # ----------------------------------------------------------------- faults

    def take_fault(self, action: str) -> Fault | None:
        """Pop (or count down) the first fault matching the action."""
        for fault in self.faults:
            if fault.action in (None, action):
                if fault.times > 0:
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                return fault
        return None

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
        self.next_id += 1
        self.activations[activation.id] = activation
        return activation

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
                activation.status = FINISHED
            else:
                self._cancel(activation)

    def refresh_all(self) -> None:
        """Apply expiry to every activation."""
        for activation in self.activations.values():
            self.refresh(activation)

    def _cancel(self, activation: SimActivation) -> None:
        activation.status = CANCEL
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
            activation.status = FINISHED
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
