"""Default catalog of the SMS provider simulator: countries, services, prices and phone formats."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class CountryInfo:
    """A country as the simulator advertises it (SMS-Activate numbering)."""

    id: int
    eng: str
    rus: str
    phone_prefix: str
    national_lengths: tuple[str, int]
    retry: bool
    rent: bool
    operators: tuple[str, ...]


@dataclass(frozen=True)
class ServiceInfo:
    """A service code and its display name."""

    code: str
    name: str
    sender: str


# national_lengths: (leading national digits, number of random digits after them)
COUNTRIES: tuple[CountryInfo, ...] = (
    CountryInfo(0, "Russia", "Россия", "7", ("9", 9), True, True, ("mts", "beeline", "megafon")),
    CountryInfo(2, "Kazakhstan", "Казахстан", "7", ("7", 9), True, False, ("tele2", "beeline")),
    CountryInfo(6, "Indonesia", "Индонезия", "62", ("8", 10), True, False, ("telkomsel", "xl")),
    CountryInfo(12, "USA (virtual)", "США (вирт.)", "1", ("", 10), False, False, ("virtual",)),
    CountryInfo(16, "England", "Англия", "44", ("7", 9), True, True, ("ee", "vodafone", "o2")),
    CountryInfo(43, "Germany", "Германия", "49", ("15", 9), True, True, ("telekom", "o2")),
    CountryInfo(187, "USA", "США", "1", ("", 10), True, True, ("tmobile", "att", "verizon")),
)

SERVICES: tuple[ServiceInfo, ...] = (
    ServiceInfo("tg", "Telegram", "Telegram"),
    ServiceInfo("wa", "WhatsApp", "WhatsApp"),
    ServiceInfo("go", "Google,youtube,Gmail", "Google"),
    ServiceInfo("fb", "facebook", "Facebook"),
    ServiceInfo("ds", "Discord", "Discord"),
    ServiceInfo("ot", "Any other", "Service"),
)

DEFAULT_STOCK = 50
DEFAULT_BALANCE = Decimal("100.50")

COUNTRIES_BY_ID: dict[int, CountryInfo] = {c.id: c for c in COUNTRIES}
SERVICES_BY_CODE: dict[str, ServiceInfo] = {s.code: s for s in SERVICES}


def default_cost(country_id: int, service: str) -> Decimal:
    """Return the deterministic default price (0.05–0.60 USD) of a country/service pair."""
    digest = hashlib.sha256(f"{country_id}:{service}".encode()).digest()
    cents = 5 + int.from_bytes(digest[:4], "big") % 56
    return Decimal(cents) / 100


def make_phone(country: CountryInfo, rng: random.Random) -> str:
    """Return a random phone number (digits only, no '+') with the country's prefix."""
    lead, n_random = country.national_lengths
    tail = "".join(rng.choice("0123456789") for _ in range(n_random))
    if not lead:
        # NANP: area code and exchange must not start with 0 or 1.
        tail = rng.choice("23456789") + tail[1:3] + rng.choice("23456789") + tail[4:]
    return f"{country.phone_prefix}{lead}{tail}"


def make_code(rng: random.Random) -> str:
    """Return a random 5- or 6-digit verification code."""
    return "".join(rng.choice("0123456789") for _ in range(rng.choice((5, 6))))


def sms_text(service: str, code: str) -> str:
    """Return a realistic SMS body carrying the code for the given service."""
    info = SERVICES_BY_CODE.get(service)
    if info is None or info.code == "ot":
        return f"Your verification code is {code}"
    return f"Your {info.sender} code is {code}"
