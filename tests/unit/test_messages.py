"""SMS messages: code extraction and the identity that de-duplicates webhook and polling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from libs.common.domain.messages import Message, extract_code, storable
from libs.common.persistence.order_store import messages_from_json as from_json


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Your Telegram code is 12345", "12345"),
        ("G-482913 is your Google verification code.", "482913"),
        ("Code: 123-456. Do not share it.", "123456"),
        ("WhatsApp code 987 654", "987654"),
        ("no digits here", None),
        ("call 123", None),  # too short to be a code
        ("ref 1234567890123", None),  # too long: a reference, not a code
        ("", None),
        (None, None),
    ],
)
def test_extract_code(text: str | None, code: str | None) -> None:
    assert extract_code(text) == code


def test_the_same_sms_from_two_sources_has_one_key() -> None:
    at = datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC)
    from_webhook = Message(at, "Code 1234", phone_from="Telegram")
    # Polling may report it with the code parsed, in another zone, with sub-second noise.
    from_poll = Message(
        at.astimezone(timezone(timedelta(hours=3))).replace(microsecond=250_000),
        "Code 1234",
        code="1234",
        phone_from="Telegram",
    )
    assert from_webhook.dedup_key() == from_poll.dedup_key()


@pytest.mark.parametrize(
    "other",
    [
        Message(datetime(2026, 11, 22, 10, 0, 6, tzinfo=UTC), "Code 1234", phone_from="Telegram"),
        Message(datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC), "Code 1235", phone_from="Telegram"),
        Message(datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC), "Code 1234", phone_from="Google"),
    ],
)
def test_different_sms_have_different_keys(other: Message) -> None:
    first = Message(
        datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC), "Code 1234", phone_from="Telegram"
    )
    assert first.dedup_key() != other.dedup_key()


def test_messages_aggregated_with_the_order_read_back_unchanged() -> None:
    at = datetime(2026, 11, 22, 10, 0, 5, 250_000, tzinfo=UTC)
    row = {
        "text": "Code 1234",
        "code": "1234",
        "phoneFrom": "Telegram",
        "receivedAt": at.timestamp(),
    }
    assert from_json([row]) == [Message(at, "Code 1234", code="1234", phone_from="Telegram")]
    assert from_json(None) == []  # an order without messages aggregates to NULL


def test_provider_text_is_made_storable() -> None:
    assert storable("Code\x00 1234") == "Code 1234"
    assert storable("Code \udc80 1234") == "Code ? 1234"
    assert storable(None) is None
    # A key can be made of any text the provider sends.
    assert Message(datetime(2026, 1, 1, tzinfo=UTC), "\udc80\x00").dedup_key()


def test_an_undated_message_keeps_one_key_whenever_it_is_seen() -> None:
    first = Message(datetime(2026, 5, 8, 10, 0, tzinfo=UTC), "code 1234", dated=False)
    retried = Message(datetime(2026, 5, 8, 10, 7, tzinfo=UTC), "code 1234", dated=False)
    assert first.dedup_key() == retried.dedup_key()
    assert first.dedup_key() != Message(first.received_at, "code 1234").dedup_key()


@pytest.mark.parametrize(
    "at",
    [
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-1))),
    ],
)
def test_a_time_out_of_range_in_utc_still_has_a_stable_key(at: datetime) -> None:
    assert Message(at, "x").dedup_key() == Message(at, "x").dedup_key()
