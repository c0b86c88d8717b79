"""Choosing the offer to sell from the catalog snapshot, and pricing it in sats."""

from __future__ import annotations

from decimal import Decimal

from libs.common.core.config import Settings
from libs.common.domain import countries
from libs.common.domain.countries import Country, Offer
from libs.common.domain.pricing import quote_sats
from libs.common.persistence.catalog_store import Catalog
from services.gateway.errors import ApiError
from services.gateway.order_requests import bad_field


def best_offer(catalog: Catalog, service: str, country: Country | str) -> Offer:
    """The offer to sell: the country's, or for auto the cheapest in stock (ties: most stock)."""
    offer = countries.choose_offer(catalog.sellable_offers(), service, country)
    if offer is None:
        raise ApiError(409, "UNAVAILABLE", f"no numbers available for {service} in that country")
    return offer


def rent_offer(catalog: Catalog, service: str, country: Country | str, hours: int) -> Offer:
    """The rental to sell for these hours; 400 naming the offered durations if hours is not one."""
    wanted = country.id if isinstance(country, Country) else None
    matching = [
        r
        for r in catalog.sellable_rent()
        if r.service == service and (wanted is None or r.country_id == wanted)
    ]
    if not matching:
        raise ApiError(409, "UNAVAILABLE", f"no rentals available for {service} in that country")
    offers = [
        Offer(r.country_id, r.service, r.cost_usd, r.count) for r in matching if r.hours == hours
    ]
    if not offers:
        offered = ", ".join(str(h * 60) for h in sorted({r.hours for r in matching}))
        raise bad_field("durationMinutes", f"not offered; choose one of {offered}")
    return min(offers, key=countries.auto_key)


def reactivation_offer(catalog: Catalog, country_id: int, service: str) -> Offer:
    """The price of reusing a number: the catalog's for its country and service (no stock)."""
    for offer in catalog.offers:
        if offer.country_id == country_id and offer.service == service:
            return offer
    raise ApiError(409, "UNAVAILABLE", f"{service} numbers of that country are not sold now")


def price_for(cost_usd: Decimal, btc_usd: Decimal, settings: Settings) -> int:
    """The customer's price in sats for a provider cost in USD at a BTC/USD rate."""
    return quote_sats(
        Decimal(cost_usd),
        btc_usd=btc_usd,
        multiplier=settings.price_multiplier,
        min_sats=settings.min_price_sats,
    )
