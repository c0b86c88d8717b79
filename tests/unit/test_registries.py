"""The declarative registries agree: every timer, every event and every worker's table.

Adding a timed step touches `libs/common/domain/events.py` and the acting worker's table;
these checks catch the half-done step (a timer without a row, an event nobody consumes, a
worker table that misses or adds an event) before any process starts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from libs.common.domain.events import CONSUMERS, EVENTS, TIMERS, EventType, Timer
from libs.common.messaging.bus import dispatch

ROOT = Path(__file__).resolve().parents[2]


async def _noop(_order_id: str) -> None:
    """An action that does nothing."""


def test_every_timer_kind_has_a_registry_row() -> None:
    assert set(TIMERS) == set(Timer)


def test_every_event_type_has_a_registry_row() -> None:
    assert set(EVENTS) == set(EventType)


def test_every_event_a_timer_fires_has_a_consumer() -> None:
    fired = {event for event in TIMERS.values() if event is not None}
    assert {event: EVENTS[event] for event in fired if EVENTS[event] is None} == {}


def test_every_consumer_is_a_worker_of_the_repository() -> None:
    for consumer in CONSUMERS:
        assert (ROOT / "services" / consumer / "service.py").exists(), consumer


@pytest.mark.parametrize("consumer", sorted(CONSUMERS))
def test_dispatch_accepts_exactly_the_consumers_events(consumer: str) -> None:
    full = dict.fromkeys(CONSUMERS[consumer], _noop)
    dispatch(consumer, full)
    missing = dict(full)
    del missing[CONSUMERS[consumer][0]]
    with pytest.raises(ValueError, match="no action for"):
        dispatch(consumer, missing)
    foreign = next(t for t, owner in EVENTS.items() if owner != consumer)
    with pytest.raises(ValueError, match="not its events"):
        dispatch(consumer, {**full, foreign: _noop})


def _tables_in(path: Path) -> list[set[EventType]]:
    """The event types of every dict literal keyed only by `EventType.<member>` in a module."""
    tables = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Dict) or not node.keys:
            continue
        keys = []
        for key in node.keys:
            if (
                isinstance(key, ast.Attribute)
                and isinstance(key.value, ast.Name)
                and key.value.id == "EventType"
            ):
                keys.append(EventType[key.attr])
        if len(keys) == len(node.keys):
            tables.append(set(keys))
    return tables


@pytest.mark.parametrize("consumer", sorted(CONSUMERS))
def test_each_workers_table_would_be_accepted_by_dispatch(consumer: str) -> None:
    """The worker's own table, read from its source, covers exactly its events."""
    tables = _tables_in(ROOT / "services" / consumer / "service.py")
    assert tables, f"services/{consumer}/service.py has no table keyed by EventType"
    for table in tables:
        dispatch(consumer, dict.fromkeys(table, _noop))
