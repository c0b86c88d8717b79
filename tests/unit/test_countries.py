"""Country resolution over catalog rows, the auto choice, and service aliases."""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.common.domain.countries import (
    AUTO,
    Country,
    CountryIndex,
    Offer,
    choose_offer,
    normalize_service,
    static_iso,
)


def _country(cid: int, name: str, **kw: bool) -> Country:
    return Country(cid, name, static_iso(cid, name), **kw)


# What the provider simulator lists, plus a country the static table does not know.
INDEX = CountryIndex(
    [
        _country(0, "Russia"),
        _country(2, "Kazakhstan"),
        _country(6, "Indonesia"),
        _country(12, "USA (virtual)"),
        _country(16, "England"),
        _country(43, "Germany"),
        _country(187, "USA"),
        _country(999, "Atlantis Minor"),
    ]
)


@pytest.mark.parametrize(
    ("value", "expected_id"),
    [
        (187, 187),
        ("187", 187),
        ("US", 187),
        ("us", 187),
        ("United States", 187),
        ("USA", 187),
        ("usa", 187),
        ("England", 16),
        ("GB", 16),
        ("gb", 16),
        ("united   kingdom", 16),
        ("UK", 16),
        ("DE", 43),
        ("germany", 43),
        (0, 0),
        ("Russia", 0),
        ("USA (virtual)", 12),
        # Unknown to the static table: its id and the provider's spelling still resolve.
        (999, 999),
        ("Atlantis Minor", 999),
        ("atlantis   MINOR", 999),
    ],
)
def test_resolves(value: str | int, expected_id: int) -> None:
    country = INDEX.resolve(value)
    assert isinstance(country, Country)
    assert country.id == expected_id


def test_auto() -> None:
    assert INDEX.resolve(" Auto ") == AUTO


@pytest.mark.parametrize(
    "value",
    ["XX", "Atlantis", "9998", 9998, "", True, "²", "1" * 5000, "Ukraine", "UA", 1],
)
def test_unknown(value: str | int) -> None:
    # Ukraine is in the static table but the provider does not list it: not sellable.
    assert INDEX.resolve(value) is None


def test_iso_and_display_names_come_from_the_static_table() -> None:
    england = INDEX.by_id(16)
    assert england is not None
    assert (england.iso, england.name, england.display_name) == ("GB", "England", "United Kingdom")
    unknown = INDEX.by_id(999)
    assert unknown is not None and unknown.iso is None and unknown.display_name == "Atlantis Minor"
    assert static_iso(5000, "Germany") == "DE"  # by name when the id is new
    assert static_iso(5000, "Nowhere") is None
    assert [c.id for c in INDEX.all()] == [0, 2, 6, 12, 16, 43, 187, 999]


def test_the_provider_spelling_wins_over_another_country_alias() -> None:
    # "America" is an alias of 187; a provider country spelled so must be found by its name.
    index = CountryIndex([_country(187, "USA"), _country(500, "America")])
    found = index.resolve("America")
    assert isinstance(found, Country) and found.id == 500


def _offer(cid: int, service: str, cost: str, count: int) -> Offer:
    return Offer(cid, service, Decimal(cost), count)


OFFERS = [
    _offer(187, "tg", "0.20", 10),
    _offer(16, "tg", "0.10", 0),  # cheapest but out of stock
    _offer(43, "tg", "0.15", 3),
    _offer(6, "tg", "0.15", 9),  # same price as 43, more stock
    _offer(2, "wa", "0.01", 50),  # other service
]


def test_auto_picks_the_cheapest_in_stock_then_the_most_stock() -> None:
    chosen = choose_offer(OFFERS, "tg", AUTO)
    assert chosen == _offer(6, "tg", "0.15", 9)


def test_auto_ties_on_price_and_stock_go_to_the_lowest_id() -> None:
    offers = [_offer(43, "tg", "0.15", 3), _offer(6, "tg", "0.15", 3)]
    chosen = choose_offer(offers, "tg", AUTO)
    assert chosen is not None and chosen.country_id == 6


def test_a_given_country_is_never_swapped_for_a_cheaper_one() -> None:
    us = INDEX.resolve("US")
    assert isinstance(us, Country)
    assert choose_offer(OFFERS, "tg", us) == _offer(187, "tg", "0.20", 10)
    gb = INDEX.resolve("GB")
    assert isinstance(gb, Country)
    assert choose_offer(OFFERS, "tg", gb) is None  # out of stock there
    assert choose_offer(OFFERS, "ds", AUTO) is None
    assert choose_offer(OFFERS, None, None) == _offer(2, "wa", "0.01", 50)


@pytest.mark.parametrize(
    ("value", "code"),
    [("telegram", "tg"), ("Telegram", "tg"), ("other", "ot"), ("tg", "tg"), ("wa", "wa")],
)
def test_service_aliases(value: str, code: str) -> None:
    assert normalize_service(value) == code
