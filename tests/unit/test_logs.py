"""JSON log lines: known fields only, and the per-event context."""

from __future__ import annotations

import json
import logging
import sys

from libs.common.core import logs
from libs.common.core.logs import LOG_CONTEXT, JsonFormatter, redact, register_secret


def _line(**extra: object) -> dict[str, object]:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    record.__dict__.update(extra)
    return dict(json.loads(JsonFormatter("svc").format(record)))


def test_known_fields_only() -> None:
    line = _line(order_id="o1", macaroon="secret", preimage="ff" * 32)
    assert line["msg"] == "hello x" and line["service"] == "svc" and line["order_id"] == "o1"
    assert "macaroon" not in line and "preimage" not in line


def test_context_of_the_event_being_handled() -> None:
    token = LOG_CONTEXT.set({"order_id": "o2", "correlation_id": "c2"})
    try:
        line = _line()
        assert (line["order_id"], line["correlation_id"]) == ("o2", "c2")
        assert _line(order_id="explicit")["order_id"] == "explicit"
    finally:
        LOG_CONTEXT.reset(token)
    assert "order_id" not in _line()


def test_token_query_parameters_are_redacted_from_every_line() -> None:
    record = logging.LogRecord(
        "t", logging.ERROR, __file__, 1, "POST %s failed", ("/hook?a=1&token=s3cr%2Ft&b=2",), None
    )
    try:
        raise RuntimeError("while calling https://gw.example/hook?TOKEN=s3cr%2Ft")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    text = JsonFormatter("svc").format(record)
    assert "s3cr" not in text
    line = json.loads(text)
    assert line["msg"] == "POST /hook?a=1&token=REDACTED&b=2 failed"
    assert "?TOKEN=REDACTED" in line["exc"]


def test_redact_leaves_other_text_alone() -> None:
    plain = "tokens=3 and ?tokenx=1 and no_token=2"
    assert redact(plain) == plain
    quoted = '{"url": "http://h/p?token=abc"}'
    assert redact(quoted) == '{"url": "http://h/p?token=REDACTED"}'


def test_a_registered_secret_is_masked_in_any_form() -> None:
    register_secret("sixteen/chars+ab")
    try:
        for form in ("sixteen/chars+ab", "sixteen%2Fchars%2Bab"):
            assert redact(f"header was {form}!") == "header was REDACTED!"
    finally:
        logs._SECRETS.clear()
    register_secret("")  # nothing to mask: an unset secret
    assert redact("a b") == "a b" and not logs._SECRETS
