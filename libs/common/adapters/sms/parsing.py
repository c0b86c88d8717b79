"""Parsing of handler_api replies (both error styles) into typed values and typed errors."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any

from libs.common.adapters.sms.errors import (
    ERROR_CLASSES,
    BadKey,
    Banned,
    InsufficientBalance,
    PriceTooLow,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    TooEarlyToCancel,
)
from libs.common.domain.sms_port import (
    Activation,
    ActivationStatus,
    ActiveActivation,
    Country,
    Offer,
    Rental,
    RentCatalog,
    RentMessage,
    RentOffer,
    Service,
    StatusState,
)

log = logging.getLogger("libs.common.adapters.sms")

USD_CURRENCY = 840

_TOKEN = re.compile(r"[A-Z][A-Z0-9_]*")


@dataclass(frozen=True)
class TextReply:
    """A successful plain-text reply `KEY[:value]`."""

    key: str
    value: str | None


@dataclass(frozen=True)
class JsonReply:
    """A successful JSON reply (floats parsed as Decimal)."""

    data: Any


Reply = TextReply | JsonReply

_NOT_JSON = object()


def _loads(text: str) -> Any:
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError:
        return _NOT_JSON


def _to_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, int | float | str):
        try:
            result = Decimal(str(value).strip())
        except InvalidOperation:
            return None
        return result if result.is_finite() else None
    return None


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    dec = _to_decimal(value)
    if dec is None or dec != dec.to_integral_value():
        return None
    return int(dec)


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "on")
    if isinstance(value, int | float | Decimal):
        return value != 0
    return bool(value)


def _to_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    as_int = _to_int(value)
    if as_int is not None:
        return str(as_int)
    text = str(value).strip()
    return text or None


def _to_str(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


# Provider times must be at least a year away from datetime's ends (see parse_provider_time).
_FIRST_USABLE_YEAR = 2
_LAST_USABLE_YEAR = 9998


def parse_provider_time(value: Any, tz: tzinfo = UTC) -> datetime | None:
    """Parse "YYYY-MM-DD HH:MM:SS" (naive → `tz`) or ISO 8601, in UTC; None if absent or unusable.

    A time in year 1 or 9999 in UTC is unusable: with its offset it may not exist in UTC at
    all (0001-01-01T00:00:00+01:00 raises OverflowError), and near the ends any later
    conversion (an epoch float rounded up, a zone applied) overflows where it is read.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=tz)
        parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return parsed if _FIRST_USABLE_YEAR <= parsed.year <= _LAST_USABLE_YEAR else None


def _error(
    code: str,
    *,
    value: str | None = None,
    info: Mapping[str, Any] | None = None,
    detail: str | None = None,
    retry_after: float | None = None,
) -> ProviderError:
    """Build the typed error for a provider error code."""
    info = info or {}
    cls = ERROR_CLASSES.get(code, ProviderError)
    if cls is Banned:
        until = value or _to_str(
            info.get("endDate") or info.get("until") or info.get("bannedUntil") or info.get("date")
        )
        return Banned(code, until=until, detail=detail)
    if cls is PriceTooLow:
        price = _to_decimal(value) if value else _to_decimal(info.get("min"))
        return PriceTooLow(code, min_price=None if price is None else float(price), detail=detail)
    if cls is TooEarlyToCancel:
        seconds = _to_int(value) if value else _to_int(info.get("minActivationTime"))
        return TooEarlyToCancel(code, seconds=seconds, detail=detail)
    if cls is RateLimited:
        return RateLimited(code, retry_after=retry_after, detail=detail)
    return cls(code, detail=detail)


def _error_from_json(data: Any, retry_after: float | None) -> ProviderError | None:
    """Recognise JSON error bodies: HeroSMS {"title", "details", "info"} or {"status": "error"}."""
    if not isinstance(data, dict):
        return None
    title = data.get("title")
    if isinstance(title, str) and _TOKEN.fullmatch(title) and "activationId" not in data:
        info = data.get("info")
        return _error(
            title,
            info=info if isinstance(info, dict) else None,
            detail=_to_str(data.get("details")),
            retry_after=retry_after,
        )
    if str(data.get("status", "")).lower() == "error":
        raw = data.get("error") or data.get("message") or data.get("msg") or ""
        key, _, value = str(raw).strip().partition(":")
        if _TOKEN.fullmatch(key):
            return _error(key, value=value or None, retry_after=retry_after)
        return ProviderError("ERROR", detail=str(raw)[:200] or None)
    return None


def _retry_after(header: str | None) -> float | None:
    if header is None:
        return None
    try:
        seconds = float(header.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def parse_reply(
    status: int,
    body: str,
    retry_after_header: str | None = None,
    *,
    passthrough: frozenset[str] = frozenset(),
) -> Reply:
    """Turn an HTTP status + body into a reply, raising the typed error for either error style.

    Codes in `passthrough` (e.g. STATUS_WAIT_CODE for getRentStatus, which answers it as an
    error) come back as a TextReply whichever style carried them.
    """
    text = body.strip()
    retry_after = _retry_after(retry_after_header)
    payload = _loads(text) if text[:1] in ("{", "[") else _NOT_JSON
    passed = _passthrough(payload, passthrough)
    if passed is not None and status < 500 and status != 429:
        return passed
    if status == 429:
        if retry_after is None and isinstance(payload, dict):
            info = payload.get("info")
            if isinstance(info, dict):
                seconds = _to_decimal(info.get("retryAfter"))
                retry_after = float(seconds) if seconds is not None and seconds >= 0 else None
        err = _error_from_json(payload, retry_after)
        code = err.code if err is not None else "RATE_LIMITED"
        raise RateLimited(code, retry_after=retry_after)
    if status >= 500:
        raise ProviderUnavailable(f"HTTP_{status}")
    key, sep, value = text.partition(":")
    if not 200 <= status < 300:
        err = _error_from_json(payload, retry_after)
        if err is not None:
            raise err
        if _TOKEN.fullmatch(key):
            raise _error(key, value=value if sep else None, retry_after=retry_after)
        # No recognisable code (e.g. a proxy's HTML page): never guess NotFound from a bare 404;
        # a page we cannot read is treated like any other garbage, as transient.
        if status == 401:
            raise BadKey(f"HTTP_{status}")
        if status == 402:
            raise InsufficientBalance(f"HTTP_{status}")
        raise ProviderUnavailable(f"HTTP_{status}")
    if not text:
        raise ProviderUnavailable("EMPTY_REPLY")
    if text[:1] in ("{", "["):
        if payload is _NOT_JSON:
            raise ProviderUnavailable("BAD_JSON")
        err = _error_from_json(payload, retry_after)
        if err is not None:
            raise err
        return JsonReply(payload)
    if not _TOKEN.fullmatch(key):
        raise ProviderUnavailable("GARBAGE_REPLY")
    if key in ERROR_CLASSES:
        raise _error(key, value=value if sep else None, retry_after=retry_after)
    return TextReply(key, value if sep else None)


def _passthrough(payload: Any, codes: frozenset[str]) -> TextReply | None:
    """A JSON error whose code the caller wants as a plain reply (e.g. STATUS_WAIT_CODE)."""
    if not codes or not isinstance(payload, dict):
        return None
    raw = payload.get("title")
    if not isinstance(raw, str):
        if str(payload.get("status", "")).lower() != "error":
            return None
        raw = payload.get("message") or payload.get("error") or payload.get("msg")
    key, sep, value = str(raw or "").strip().partition(":")
    return TextReply(key, value if sep else None) if key in codes else None


def ban_wait_seconds(until: str | None, now: datetime, tz: tzinfo = UTC) -> float | None:
    """Seconds until a `BANNED:<until>` ends: a provider time, an epoch, or a number of seconds."""
    if until is None or not until.strip():
        return None
    number = _to_decimal(until)
    if number is not None:
        # Epoch timestamps are large; anything smaller is a duration.
        if number > 1_000_000_000:
            return max(0.0, float(number) - now.timestamp())
        return max(0.0, float(number))
    end = parse_provider_time(until, tz)
    if end is None:
        return None
    return max(0.0, (end - now).total_seconds())


def _unexpected(action: str, reply: Reply) -> ProviderError:
    """An unknown but well-formed reply: unknown UPPER_CASE codes become ProviderError(code)."""
    if isinstance(reply, TextReply):
        log.warning("provider %s: unexpected reply %s", action, reply.key)
        return ProviderError(reply.key)
    log.warning("provider %s: unexpected JSON reply shape", action)
    return ProviderUnavailable("BAD_REPLY")


def parse_status_text(reply: TextReply) -> ActivationStatus | None:
    """Parse a getStatus reply (STATUS_*); None if the key is not a status."""
    key, value = reply.key, reply.value
    if key == "STATUS_WAIT_CODE":
        return ActivationStatus("waiting")
    if key in ("STATUS_WAIT_RETRY", "STATUS_WAIT_RESEND"):
        return ActivationStatus("retry_wait", code=value or None)
    if key == "STATUS_OK":
        return ActivationStatus("received", code=value or None)
    if key == "STATUS_CANCEL":
        return ActivationStatus("cancelled")
    return None


def _last(value: Any) -> Any:
    if isinstance(value, list):
        return value[-1] if value else None
    return value


def parse_status_v2(reply: Reply) -> ActivationStatus | None:
    """Parse a getStatusV2 reply: older `sms` or newer `data` shape, or plain STATUS_*."""
    if isinstance(reply, TextReply):
        return parse_status_text(reply)
    data = reply.data
    if not isinstance(data, dict):
        return None
    for key in ("sms", "data"):
        sms = _last(data.get(key))
        if isinstance(sms, dict):
            code = _to_str(sms.get("code"))
            text = _to_str(sms.get("text"))
            if code or text:
                return ActivationStatus("received", code=code or None, text=text)
    status = data.get("status")
    if isinstance(status, str) and status.startswith("STATUS_"):
        key, _, value = status.partition(":")
        parsed = parse_status_text(TextReply(key, value or None))
        if parsed is not None:
            return parsed
    return ActivationStatus("waiting")


def parse_activation(data: Any, *, fallback_country: int, tz: tzinfo = UTC) -> Activation:
    """Parse a getNumberV2 JSON object into an Activation (coercing field types)."""
    if not isinstance(data, dict):
        raise ProviderUnavailable("BAD_REPLY")
    activation_id = _to_id(data.get("activationId"))
    phone = re.sub(r"\D", "", str(data.get("phoneNumber") or ""))
    cost = _to_decimal(data.get("activationCost"))
    if activation_id is None or not phone or cost is None:
        raise ProviderUnavailable("BAD_REPLY")
    currency = _to_int(data.get("currency"))
    if currency is not None and currency != USD_CURRENCY:
        log.error("provider account currency is %s, not USD: cost_usd is wrong", currency)
    country = _to_int(data.get("countryCode"))
    return Activation(
        id=activation_id,
        phone=phone,
        cost_usd=cost,
        country_id=fallback_country if country is None else country,
        ends_at=parse_provider_time(data.get("activationEndTime"), tz),
    )


def parse_prices(data: Any) -> list[Offer]:
    """Parse getPrices: {"<country>": {"<service>": {"cost", "count"}}} (malformed rows skipped)."""
    offers: list[Offer] = []
    if not isinstance(data, dict):
        return offers
    for country_key, services in data.items():
        country_id = _to_int(country_key)
        if country_id is None or not isinstance(services, dict):
            continue
        for service, entry in services.items():
            if not isinstance(entry, dict):
                continue
            cost = _to_decimal(entry.get("cost", entry.get("price")))
            count = _to_int(entry.get("count", entry.get("qty", 0)))
            if cost is None or count is None:
                continue
            offers.append(Offer(country_id, str(service), cost, count))
    offers.sort(key=lambda o: (o.country_id, o.service))
    return offers


def parse_countries(data: Any) -> list[Country]:
    """Parse getCountries: an object keyed by id or an array of country objects."""
    if isinstance(data, dict):
        items: list[tuple[Any, Any]] = list(data.items())
    elif isinstance(data, list):
        items = [(None, item) for item in data]
    else:
        return []
    countries: list[Country] = []
    for key, item in items:
        if not isinstance(item, dict):
            continue
        country_id = _to_int(item.get("id", key))
        name = _to_str(item.get("eng") or item.get("name") or item.get("rus"))
        if country_id is None or not name:
            continue
        countries.append(
            Country(
                id=country_id,
                name=name,
                visible=_to_bool(item.get("visible", True)),
                rent=_to_bool(item.get("rent", False)),
            )
        )
    countries.sort(key=lambda c: c.id)
    return countries


def parse_services(data: Any) -> list[Service]:
    """Parse getServicesList: {"status", "services": [...]}, a bare array, or {code: name}."""
    raw: Any = data.get("services", data) if isinstance(data, dict) else data
    if isinstance(raw, dict):
        raw = [{"code": k, "name": v} for k, v in raw.items()]
    if not isinstance(raw, list):
        return []
    services: list[Service] = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        code, name = _to_str(item.get("code")), _to_str(item.get("name"))
        if code:
            services.append(Service(code=code, name=name or code))
    return services


def parse_rent_catalog(data: Any, *, hours: int, country: int | None) -> RentCatalog:
    """Parse getRentServicesAndCountries: {"countries", "operators", "services": {code: {cost,
    quant}}}; the services are those of `country` (or, without one, of the provider's default:
    the first country listed)."""
    if not isinstance(data, dict):
        raise ProviderUnavailable("BAD_REPLY")
    raw_countries = data.get("countries")
    values: list[Any]
    if isinstance(raw_countries, dict):
        values = list(raw_countries.values())
    elif isinstance(raw_countries, list):
        values = raw_countries
    else:
        values = []
    countries: list[int] = []
    for value in values:
        as_int = _to_int(value)
        if as_int is not None and as_int not in countries:
            countries.append(as_int)
    offer_country = country if country is not None else (countries[0] if countries else 0)
    services = data.get("services")
    offers: list[RentOffer] = []
    if isinstance(services, dict):
        for code, entry in services.items():
            if not isinstance(entry, dict):
                continue
            cost = _to_decimal(entry.get("cost", entry.get("retail_cost")))
            count = _to_int(entry.get("quant", entry.get("count", 0)))
            if cost is None or count is None:
                continue
            offers.append(RentOffer(offer_country, str(code), hours, cost, count))
    offers.sort(key=lambda o: o.service)
    return RentCatalog(countries=countries, offers=offers)


def parse_rental(data: Any, *, tz: tzinfo = UTC) -> Rental:
    """Parse getRentNumber: {"status": "success", "phone": {"id", "endDate", "number"}}."""
    phone = data.get("phone") if isinstance(data, dict) else None
    if not isinstance(phone, dict):
        raise ProviderUnavailable("BAD_REPLY")
    rent_id = _to_id(phone.get("id"))
    number = re.sub(r"\D", "", str(phone.get("number") or ""))
    ends_at = parse_provider_time(phone.get("endDate"), tz)
    if rent_id is None or not number or ends_at is None:
        raise ProviderUnavailable("BAD_REPLY")
    return Rental(rent_id=rent_id, phone=number, ends_at=ends_at)


def parse_rent_messages(data: Any, *, tz: tzinfo = UTC) -> list[RentMessage]:
    """Parse getRentStatus: {"status": "success", "quantity", "values": {"0": {...}}} (or a
    list), oldest first; rows without a text are skipped."""
    values = data.get("values") if isinstance(data, dict) else None
    if isinstance(values, dict):
        keyed = sorted(values.items(), key=lambda kv: (_to_int(kv[0]) is None, _to_int(kv[0]) or 0))
        items: list[Any] = [v for _, v in keyed]
    elif isinstance(values, list):
        items = values
    elif values is None and isinstance(data, dict):
        items = []
    else:
        raise ProviderUnavailable("BAD_REPLY")
    messages: list[RentMessage] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        text = _to_str(item.get("text"))
        received = parse_provider_time(item.get("date"), tz)
        if text is None or received is None:
            continue
        messages.append(
            RentMessage(
                phone_from=_to_str(item.get("phoneFrom")) or "",
                text=text,
                received_at=received,
                service=_to_str(item.get("service")) or None,
            )
        )
    messages.sort(key=lambda m: m.received_at)
    return messages


# getActiveActivations: where the rows are. SMS-Activate documents `activeActivations: [...]`,
# HeroSMS documents `data: [...]` and was seen answering `activeActivations: {"rows": [...],
# "row": {...}}` too; every place is read and the rows merged by id.
_ACTIVE_LIST_KEYS = ("data", "activeActivations", "activations")
# The `activationStatus` numbers of public clients: 1/4 waiting for the SMS, 2 SMS received,
# 3 waiting for another SMS (after setStatus 3), 6 finished, 8 cancelled.
_RETRY_STATUSES = frozenset({"3"})
_CANCELLED_STATUSES = frozenset({"8"})
_FINISHED_STATUSES = frozenset({"6"})
# Answers that mean "no active activation" rather than an error.
NO_ACTIVATIONS_CODES = frozenset({"NO_ACTIVATIONS", "NO_ACTIVATION"})


def active_activation_rows(data: Any) -> list[Any]:
    """The raw rows of a getActiveActivations answer, whatever shape carries them."""
    if isinstance(data, list):
        return list(data)
    if not isinstance(data, dict):
        return []
    rows: list[Any] = []
    for key in _ACTIVE_LIST_KEYS:
        value = data.get(key)
        if isinstance(value, list):
            rows.extend(value)
        elif isinstance(value, dict):
            nested = value.get("rows")
            if isinstance(nested, list):
                rows.extend(nested)
            elif isinstance(value.get("row"), dict):
                rows.append(value["row"])
            elif _looks_like_activation(value):
                rows.append(value)
            else:
                # An object keyed by id ({"635468021": {...}}), as some providers answer lists.
                rows.extend(v for v in value.values() if _looks_like_activation(v))
    return rows


def _looks_like_activation(value: Any) -> bool:
    return isinstance(value, dict) and ("activationId" in value or "id" in value)


def _unwrap_list_text(value: Any) -> Any:
    """SMS-Activate writes texts as a list inside a string ("[\"Your code …\"]")."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        decoded = _loads(text)
        if isinstance(decoded, list):
            return _last(decoded)
        return text[1:-1].strip()
    return value


def _sms_fields(
    item: Mapping[str, Any], tz: tzinfo
) -> tuple[str | None, str | None, datetime | None]:
    """The latest SMS of a row: (code, text, received_at), from smsCode/smsText or `sms`."""
    code = _to_str(_unwrap_list_text(_last(item.get("smsCode"))))
    text = _to_str(_unwrap_list_text(_last(item.get("smsText"))))
    received = parse_provider_time(
        _to_str(item.get("receiveSmsDate") or item.get("smsDate") or item.get("receivedAt")), tz
    )
    sms = _last(item.get("sms"))
    if isinstance(sms, dict):
        code = code or _to_str(sms.get("code"))
        text = text or _to_str(sms.get("text"))
        received = received or parse_provider_time(
            _to_str(sms.get("dateTime") or sms.get("date") or sms.get("receivedAt")), tz
        )
    elif isinstance(sms, str) and text is None:
        text = _to_str(_unwrap_list_text(sms))
    return _present(code), _present(text), received


def _present(value: str | None) -> str | None:
    """None for an absent SMS field ("", "null")."""
    if value is None or not value.strip() or value.strip().lower() == "null":
        return None
    return value.strip()


def _active_state(status: str | None, has_sms: bool) -> StatusState:
    """What `poll` would say, from activationStatus and whether an SMS is there."""
    if status in _CANCELLED_STATUSES:
        return "cancelled"
    if status in _RETRY_STATUSES:
        return "retry_wait"
    if has_sms:
        return "received"
    if status in _FINISHED_STATUSES:
        # getStatus answers STATUS_CANCEL for "cancelled or completed" without a code.
        return "cancelled"
    return "waiting"


def parse_active_activation(item: Any, tz: tzinfo = UTC) -> ActiveActivation | None:
    """One getActiveActivations row; None when it has no usable id."""
    if not isinstance(item, dict):
        return None
    raw_id = item.get("activationId", item.get("id"))
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int | Decimal):
        return None
    activation_id = _to_id(raw_id)
    if activation_id is None:
        return None
    code, text, received = _sms_fields(item, tz)
    raw_status = item.get("activationStatus", item.get("status"))
    as_int = _to_int(raw_status)
    status = str(as_int) if as_int is not None else _to_str(raw_status)
    phone = re.sub(r"\D", "", str(item.get("phoneNumber") or item.get("phone") or "")) or None
    return ActiveActivation(
        id=activation_id,
        state=_active_state(status, code is not None or text is not None),
        phone=phone,
        code=code,
        text=text,
        received_at=received,
    )


def parse_active_activations(data: Any, tz: tzinfo = UTC) -> list[ActiveActivation]:
    """Parse getActiveActivations (SMS-Activate, HeroSMS documented and observed shapes).

    Ids may be strings or numbers; SMS may be smsCode/smsText (strings, numbers or lists) or
    an `sms` list, object or string. A malformed row is skipped (logged without its content),
    never the whole answer; a row repeated across the shapes is kept once.
    """
    result: list[ActiveActivation] = []
    seen: set[str] = set()
    for item in active_activation_rows(data):
        try:
            parsed = parse_active_activation(item, tz)
        except (TypeError, ValueError, ArithmeticError):
            parsed = None
        if parsed is None:
            log.warning("provider getActiveActivations: skipped a malformed row")
            continue
        if parsed.id not in seen:
            seen.add(parsed.id)
            result.append(parsed)
    return result
