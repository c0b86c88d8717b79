"""Country resolution over the provider's catalog rows, plus service aliases (pure).

The provider (HeroSMS / SMS-Activate) numbers countries and names them in English its own way
("England", "USA"). What we know beyond that (ISO alpha-2 codes, the names customers type) is
the static table below; everything else comes from the catalog rows loaded from PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

# One offer type for the provider port and the catalog alike.
from libs.common.domain.sms_port import Offer as Offer

AUTO = "auto"


@dataclass(frozen=True)
class Known:
    """What we know about one provider country beyond the provider's own row."""

    id: int
    iso: str
    name: str
    aliases: tuple[str, ...] = ()


# SMS-Activate / HeroSMS numbering. "England" is the provider's own name for the UK.
KNOWN: tuple[Known, ...] = (
    Known(0, "RU", "Russia", ("russian federation",)),
    Known(1, "UA", "Ukraine"),
    Known(2, "KZ", "Kazakhstan"),
    Known(3, "CN", "China"),
    Known(4, "PH", "Philippines"),
    Known(6, "ID", "Indonesia"),
    Known(7, "MY", "Malaysia"),
    Known(10, "VN", "Vietnam", ("viet nam",)),
    Known(12, "US", "USA (virtual)", ("usa virtual",)),
    Known(15, "PL", "Poland"),
    Known(16, "GB", "United Kingdom", ("england", "uk", "great britain")),
    Known(22, "IN", "India"),
    Known(32, "RO", "Romania"),
    Known(36, "CA", "Canada"),
    Known(43, "DE", "Germany"),
    Known(48, "NL", "Netherlands"),
    Known(52, "TH", "Thailand"),
    Known(56, "ES", "Spain"),
    Known(62, "TR", "Turkey", ("turkiye",)),
    Known(73, "BR", "Brazil"),
    Known(78, "FR", "France"),
    Known(86, "IT", "Italy"),
    Known(117, "PT", "Portugal"),
    Known(151, "CL", "Chile"),
    Known(175, "AU", "Australia"),
    Known(187, "US", "United States", ("usa", "united states of america", "america")),
)

_KNOWN_BY_ID: dict[int, Known] = {k.id: k for k in KNOWN}
_KNOWN_BY_NAME: dict[str, Known] = {name: k for k in KNOWN for name in (k.name.lower(), *k.aliases)}
# 12 (virtual) and 187 share "US"; the physical numbers win for ISO lookups.
_PREFERRED_FOR_ISO: dict[str, int] = {"US": 187}


def _key(text: str) -> str:
    """A name as compared: case-insensitive, whitespace collapsed."""
    return " ".join(text.lower().split())


def static_iso(country_id: int, provider_name: str) -> str | None:
    """The ISO alpha-2 code of a provider country: by id, else by its English name; or None."""
    known = _KNOWN_BY_ID.get(country_id) or _KNOWN_BY_NAME.get(_key(provider_name))
    return known.iso if known is not None else None


@dataclass(frozen=True)
class Country:
    """One provider country as the catalog holds it."""

    id: int
    name: str  # the provider's English spelling
    iso: str | None
    visible: bool = True
    rent: bool = False
    retry: bool | None = None

    @property
    def display_name(self) -> str:
        """Our English name for it (the static table's), else the provider's."""
        known = _KNOWN_BY_ID.get(self.id)
        return known.name if known is not None else self.name


class CountryIndex:
    """Resolves what a customer typed to one of the provider's countries."""

    def __init__(self, rows: Iterable[Country]) -> None:
        """Index the catalog's countries by id, ISO code and every name we know for them."""
        self._by_id: dict[int, Country] = {c.id: c for c in rows}
        self._by_iso: dict[str, Country] = {}
        self._by_name: dict[str, Country] = {}
        for c in sorted(self._by_id.values(), key=lambda c: c.id):
            if c.iso is not None:
                iso = c.iso.upper()
                if iso not in self._by_iso or _PREFERRED_FOR_ISO.get(iso) == c.id:
                    self._by_iso[iso] = c
            known = _KNOWN_BY_ID.get(c.id)
            names = [c.name] if known is None else [c.name, known.name, *known.aliases]
            for name in names:
                self._by_name.setdefault(_key(name), c)
        # The provider's own spelling always wins over an alias of another country.
        for c in self._by_id.values():
            self._by_name[_key(c.name)] = c

    def __len__(self) -> int:
        """How many countries the catalog lists."""
        return len(self._by_id)

    def all(self) -> list[Country]:
        """Every country, by id."""
        return sorted(self._by_id.values(), key=lambda c: c.id)

    def by_id(self, country_id: int) -> Country | None:
        """The country with this provider id, if the catalog lists it."""
        return self._by_id.get(country_id)

    def resolve(self, value: str | int) -> Country | str | None:
        """Resolve an id, ISO alpha-2 code or English name; "auto" stays "auto"; None if unknown."""
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return self._by_id.get(value)
        text = value.strip()
        if text.lower() == AUTO:
            return AUTO
        if text.isascii() and text.isdigit():
            # Provider ids are small; a huge digit string is not worth int()'s time (or error).
            return self._by_id.get(int(text)) if len(text) <= 6 else None
        if len(text) == 2 and text.upper() in self._by_iso:
            return self._by_iso[text.upper()]
        return self._by_name.get(_key(text))  # also two-letter aliases such as "UK"


def auto_key(offer: Offer) -> tuple[Decimal, int, int, str]:
    """Order of preference: lowest price, then most stock, then lowest id (deterministic)."""
    return (offer.cost_usd, -offer.count, offer.country_id, offer.service)


def choose_offer(
    offers: Iterable[Offer], service: str | None, country: Country | str | None
) -> Offer | None:
    """The offer to sell: in stock, matching service and country; `auto`/None picks the best."""
    wanted = country.id if isinstance(country, Country) else None
    candidates = [
        o
        for o in offers
        if o.count > 0
        and (service is None or o.service == service)
        and (wanted is None or o.country_id == wanted)
    ]
    return min(candidates, key=auto_key) if candidates else None


SERVICE_ALIASES: dict[str, str] = {
    "telegram": "tg",
    "whatsapp": "wa",
    "google": "go",
    "gmail": "go",
    "youtube": "go",
    "facebook": "fb",
    "discord": "ds",
    "other": "ot",
    "any": "ot",
}


def normalize_service(value: str) -> str:
    """Normalise a service name or alias to the provider's code (telegram -> tg)."""
    key = value.strip().lower()
    return SERVICE_ALIASES.get(key, key)
