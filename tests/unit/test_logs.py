"""JSON log lines: known fields only, and the per-event context."""

from __future__ import annotations

import json
import logging

from libs.common.logs import LOG_CONTEXT, JsonFormatter


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
