"""Settings from the environment."""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.common.core.config import Settings, load_settings


def test_defaults_match_the_seed() -> None:
    s = load_settings({})
    assert s.order_timeout_seconds == 1200
    assert s.cancel_min_age_seconds == 180
    assert s.refund_min_validity_seconds == 1800


def test_environment_overrides_with_types() -> None:
    s = load_settings(
        {
            "SMS4SATS_ORDER_TIMEOUT_SECONDS": "30",
            "SMS4SATS_PRICE_MULTIPLIER": "2.5",
            "SMS4SATS_TRUST_FORWARDED_FOR": "yes",
            "SMS4SATS_SMS_POLL_INTERVAL_SECONDS": "0.5",
        }
    )
    assert s.order_timeout_seconds == 30
    assert s.price_multiplier == Decimal("2.5")
    assert s.trust_forwarded_for is True
    assert s.sms_poll_interval_seconds == 0.5


@pytest.mark.parametrize(
    ("name", "value"),
    [("SMS4SATS_ORDER_TIMEOUT_SECONDS", "soon"), ("SMS4SATS_TRUST_FORWARDED_FOR", "maybe")],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        load_settings({name: value})


def test_secrets_stay_out_of_repr() -> None:
    s = Settings(lnd_macaroon_hex="deadbeef", provider_api_key="k3y", webhook_secret="s3cret")
    text = repr(s)
    assert "deadbeef" not in text and "k3y" not in text and "s3cret" not in text
