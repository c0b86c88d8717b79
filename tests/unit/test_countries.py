"""Country resolution and service aliases."""

from __future__ import annotations

import pytest

from libs.common.countries import AUTO, Country, normalize_service, resolve_country


@pytest.mark.parametrize(
    ("value", "expected_id"),
    [
        (187, 187),
        ("187", 187),
        ("US", 187),
        ("us", 187),
        ("United States", 187),
        ("England", 16),
        ("GB", 16),
        ("united   kingdom", 16),
        ("DE", 43),
        (0, 0),
        ("Russia", 0),
    ],
)
def test_resolves(value: str | int, expected_id: int) -> None:
    country = resolve_country(value)
    assert isinstance(country, Country)
    assert country.id == expected_id


def test_auto() -> None:
    assert resolve_country(" Auto ") == AUTO


@pytest.mark.parametrize("value", ["XX", "Atlantis", "9999", 9999, "", True, "²", "1" * 5000])
def test_unknown(value: str | int) -> None:
    assert resolve_country(value) is None


@pytest.mark.parametrize(
    ("value", "code"),
    [("telegram", "tg"), ("Telegram", "tg"), ("other", "ot"), ("tg", "tg"), ("wa", "wa")],
)
def test_service_aliases(value: str, code: str) -> None:
    assert normalize_service(value) == code
