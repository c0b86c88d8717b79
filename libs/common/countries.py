"""Country and service names: provider ids, ISO alpha-2 codes, English names, aliases (pure)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Country:
    """One country as the provider numbers it."""

    id: int
    iso: str
    name: str
    aliases: tuple[str, ...] = ()


# SMS-Activate / HeroSMS numbering. "England" is the provider's own name for the UK.
COUNTRIES: tuple[Country, ...] = (
    Country(0, "RU", "Russia", ("russian federation",)),
    Country(1, "UA", "Ukraine"),
    Country(2, "KZ", "Kazakhstan"),
    Country(3, "CN", "China"),
    Country(4, "PH", "Philippines"),
    Country(6, "ID", "Indonesia"),
    Country(7, "MY", "Malaysia"),
    Country(10, "VN", "Vietnam", ("viet nam",)),
    Country(12, "US", "USA (virtual)", ("usa virtual",)),
    Country(15, "PL", "Poland"),
    Country(16, "GB", "United Kingdom", ("england", "uk", "great britain")),
    Country(22, "IN", "India"),
    Country(32, "RO", "Romania"),
    Country(36, "CA", "Canada"),
    Country(43, "DE", "Germany"),
    Country(48, "NL", "Netherlands"),
    Country(52, "TH", "Thailand"),
    Country(56, "ES", "Spain"),
    Country(62, "TR", "Turkey", ("turkiye",)),
    Country(73, "BR", "Brazil"),
    Country(78, "FR", "France"),
    Country(86, "IT", "Italy"),
    Country(117, "PT", "Portugal"),
    Country(151, "CL", "Chile"),
    Country(175, "AU", "Australia"),
    Country(187, "US", "United States", ("usa", "united states of america", "america")),
)

# 12 (virtual) and 187 share "US"; the physical numbers win for ISO lookups.
_BY_ISO: dict[str, Country] = {}
for _c in COUNTRIES:
    if _c.iso not in _BY_ISO or _c.id == 187:
        _BY_ISO[_c.iso] = _c
_BY_ID: dict[int, Country] = {c.id: c for c in COUNTRIES}
_BY_NAME: dict[str, Country] = {name: c for c in COUNTRIES for name in (c.name.lower(), *c.aliases)}

AUTO = "auto"


def by_id(country_id: int) -> Country | None:
    """Return the country with this provider id, if we know it."""
    return _BY_ID.get(country_id)


def resolve_country(value: str | int) -> Country | str | None:
    """Resolve an id, ISO alpha-2 code or English name; "auto" stays "auto"; None if unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return _BY_ID.get(value)
    text = value.strip()
    if text.lower() == AUTO:
        return AUTO
    if text.isascii() and text.isdigit():
        # Provider ids are small; a huge digit string is not worth int()'s time (or error).
        return _BY_ID.get(int(text)) if len(text) <= 6 else None
    if len(text) == 2:
        return _BY_ISO.get(text.upper())
    return _BY_NAME.get(" ".join(text.lower().split()))


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
