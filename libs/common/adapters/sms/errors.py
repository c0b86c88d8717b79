"""Typed errors of the SMS provider port: one class per kind of answer, with a stable code."""

from __future__ import annotations

from typing import ClassVar


class ProviderError(Exception):
    """Any error reported by (or about) the upstream SMS provider.

    `.code` is the provider's code (e.g. "NO_KEY" for a BadKey) or our own for failures the
    provider never named ("NETWORK_ERROR", "HTTP_503", "BAD_JSON"); `.transient` says whether
    the same call may succeed later without anyone changing anything.
    """

    default_code: ClassVar[str] = "PROVIDER_ERROR"
    description: ClassVar[str] = "provider error"
    default_transient: ClassVar[bool] = False

    def __init__(
        self, code: str | None = None, *, detail: str | None = None, transient: bool | None = None
    ) -> None:
        """Create the error; `detail` (provider free text) is kept out of str() on purpose."""
        self.code: str = code or self.default_code
        self.detail = detail
        self.transient: bool = self.default_transient if transient is None else transient
        self.counted = False  # set once sms4sats_provider_errors_total has counted it
        super().__init__(f"{self.code}: {self.description}")


class NoNumbers(ProviderError):
    """No number in stock for the requested country/service."""

    default_code = "NO_NUMBERS"
    description = "no numbers available"


class InsufficientBalance(ProviderError):
    """Our provider account balance is too low."""

    default_code = "NO_BALANCE"
    description = "provider balance too low"


class BadKey(ProviderError):
    """API key missing or rejected (BAD_KEY, NO_KEY)."""

    default_code = "BAD_KEY"
    description = "API key rejected"


class Banned(ProviderError):
    """Our provider account is blocked, possibly until `.until` (provider free text).

    Transient when the provider named an end (`BANNED:<until>`, a rate-limit block) or for
    CHANNELS_LIMIT (too many open activations); ACCOUNT_INACTIVE and an open-ended ban are not.
    `.retry_after` is the parsed wait in seconds when `.until` could be read as a time.
    """

    default_code = "BANNED"
    description = "provider account blocked"

    def __init__(
        self,
        code: str | None = None,
        *,
        until: str | None = None,
        retry_after: float | None = None,
        detail: str | None = None,
        transient: bool | None = None,
    ) -> None:
        """Create the error with the ban end as reported by the provider."""
        if transient is None:
            transient = code == "CHANNELS_LIMIT" or (
                code in (None, "BANNED") and (until is not None or retry_after is not None)
            )
        super().__init__(code, detail=detail, transient=transient)
        self.until = until
        self.retry_after = retry_after


class PriceTooLow(ProviderError):
    """maxPrice is below the provider's current price (`.min_price`, USD)."""

    default_code = "WRONG_MAX_PRICE"
    description = "max price below current price"

    def __init__(
        self, code: str | None = None, *, min_price: float | None = None, detail: str | None = None
    ) -> None:
        """Create the error with the minimum acceptable price if known."""
        super().__init__(code, detail=detail)
        self.min_price = min_price


class TooEarlyToCancel(ProviderError):
    """Cancel refused: the activation is younger than `.seconds` (provider's minimum age)."""

    default_code = "EARLY_CANCEL_DENIED"
    description = "too early to cancel"
    default_transient = True

    def __init__(
        self, code: str | None = None, *, seconds: int | None = None, detail: str | None = None
    ) -> None:
        """Create the error with the provider's minimum activation age in seconds if known."""
        super().__init__(code, detail=detail)
        self.seconds = seconds


class CodeAlreadyReceived(ProviderError):
    """Cancel refused: a code already arrived (finish the activation instead)."""

    default_code = "OTP_RECEIVED"
    description = "a code was already received"


class NotFound(ProviderError):
    """Unknown activation or rental id (NO_ACTIVATION, WRONG_ACTIVATION_ID, NOT_FOUND)."""

    default_code = "NOT_FOUND"
    description = "activation not found"


class ActivationNotActive(ProviderError):
    """Activation already cancelled, finished or expired (treat a cancel as done)."""

    default_code = "ACTIVATION_NOT_ACTIVE"
    description = "activation is not active"


class RateLimited(ProviderError):
    """Too many requests; retry after `.retry_after` seconds if known."""

    default_code = "RATE_LIMITED"
    description = "rate limited by provider"
    default_transient = True

    def __init__(
        self,
        code: str | None = None,
        *,
        retry_after: float | None = None,
        detail: str | None = None,
    ) -> None:
        """Create the error with the suggested back-off if the provider sent one."""
        super().__init__(code, detail=detail)
        self.retry_after = retry_after


class BadService(ProviderError):
    """Unknown or unavailable service code (BAD_SERVICE, SERVICE_NOT_AVAILABLE)."""

    default_code = "BAD_SERVICE"
    description = "unknown or unavailable service"


class BadAction(ProviderError):
    """The provider does not know the action (an API mismatch: a bug or a provider change)."""

    default_code = "BAD_ACTION"
    description = "unknown action"


class BadStatus(ProviderError):
    """The status change is not allowed in the activation's current state."""

    default_code = "BAD_STATUS"
    description = "status change not allowed"


class OrderAlreadyExists(ProviderError):
    """The provider already has this order (a duplicate purchase request)."""

    default_code = "ORDER_ALREADY_EXISTS"
    description = "order already exists"


class ReactivationNotAvailable(ProviderError):
    """The activation cannot be reactivated (not finished with a code, too old, or not offered)."""

    default_code = "RENEW_ACTIVATION_NOT_AVAILABLE"
    description = "reactivation not available"


class BadRentTime(ProviderError):
    """The provider does not rent for the requested duration."""

    default_code = "BAD_TIME"
    description = "rent duration not offered"


class RentEnded(ProviderError):
    """The rental is over (STATUS_FINISH) or was cancelled (STATUS_CANCEL): no more messages."""

    default_code = "STATUS_FINISH"
    description = "rental has ended"


class ProviderUnavailable(ProviderError):
    """Transient failure: network error, timeout, 5xx, ERROR_SQL or an unparseable reply."""

    default_code = "UNAVAILABLE"
    description = "provider unavailable"
    default_transient = True


# Every error string of the protocol reference (both styles), plus a few variants seen in the
# wild. STATUS_* rent answers are not here: "STATUS_CANCEL" is a normal getStatus reply.
ERROR_CLASSES: dict[str, type[ProviderError]] = {
    "NO_NUMBERS": NoNumbers,
    "NO_BALANCE": InsufficientBalance,
    "BAD_KEY": BadKey,
    "NO_KEY": BadKey,
    "BANNED": Banned,
    "CHANNELS_LIMIT": Banned,
    "ACCOUNT_INACTIVE": Banned,
    "WRONG_MAX_PRICE": PriceTooLow,
    "EARLY_CANCEL_DENIED": TooEarlyToCancel,
    "OTP_RECEIVED": CodeAlreadyReceived,
    "NO_ACTIVATION": NotFound,
    "WRONG_ACTIVATION_ID": NotFound,
    "NOT_FOUND": NotFound,
    "NO_ID_RENT": NotFound,
    "ACTIVATION_NOT_ACTIVE": ActivationNotActive,
    "BAD_SERVICE": BadService,
    "WRONG_SERVICE": BadService,
    "SERVICE_NOT_AVAILABLE": BadService,
    "TOO_MANY_REQUESTS": RateLimited,
    "RATE_LIMIT": RateLimited,
    "ERROR_SQL": ProviderUnavailable,
    "BAD_ACTION": BadAction,
    "BAD_STATUS": BadStatus,
    "ORDER_ALREADY_EXISTS": OrderAlreadyExists,
    "RENEW_ACTIVATION_NOT_AVAILABLE": ReactivationNotAvailable,
    "BAD_TIME": BadRentTime,
    "INVALID_TIME": BadRentTime,
    "ALREADY_FINISH": RentEnded,
    "ALREADY_CANCEL": RentEnded,
    "CANT_CANCEL": BadStatus,
}
