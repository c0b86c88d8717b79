"""The SMS provider port: what the workers may ask of any upstream, and the values it returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal, Protocol, runtime_checkable

StatusState = Literal["waiting", "retry_wait", "received", "cancelled"]


@dataclass(frozen=True)
class Activation:
    """A purchased (or reactivated) number."""

    id: str
    phone: str
    cost_usd: Decimal
    country_id: int
    ends_at: datetime | None


@dataclass(frozen=True)
class ActivationStatus:
    """Where an activation stands; `code`/`text` are set once an SMS arrived."""

    state: StatusState
    code: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class ActiveActivation:
    """One entry of the bulk status answer: an active activation and its latest SMS, if any.

    `state` is what `poll` would say for it; `code`/`text` are the latest SMS (None before
    the first); `received_at` is when the provider says that SMS arrived, when it says.
    """

    id: str
    state: StatusState
    phone: str | None = None
    code: str | None = None
    text: str | None = None
    received_at: datetime | None = None


@dataclass(frozen=True)
class Offer:
    """Price and stock of one country/service pair."""

    country_id: int
    service: str
    cost_usd: Decimal
    count: int


@dataclass(frozen=True)
class Country:
    """A provider country."""

    id: int
    name: str
    visible: bool
    rent: bool


@dataclass(frozen=True)
class Service:
    """A provider service code and display name."""

    code: str
    name: str


@dataclass(frozen=True)
class RentOffer:
    """Price and stock of renting a number for one service in one country for `hours`."""

    country: int
    service: str
    hours: int
    cost_usd: Decimal
    count: int


@dataclass(frozen=True)
class RentCatalog:
    """What can be rented for one duration: the rent countries and the offers of one country."""

    countries: list[int]
    offers: list[RentOffer]


@dataclass(frozen=True)
class Rental:
    """A rented number, ours until `ends_at`."""

    rent_id: str
    phone: str
    ends_at: datetime


@dataclass(frozen=True)
class RentMessage:
    """One SMS received by a rented number."""

    phone_from: str
    text: str
    received_at: datetime
    service: str | None


@runtime_checkable
class SmsProvider(Protocol):
    """The port the workers use to talk to an upstream SMS provider.

    Every method raises a `ProviderError` subclass on failure (see libs.common.adapters.sms.errors);
    `.transient` on the error says whether retrying the same call later may help.
    """

    async def buy(
        self, *, service: str, country_id: int, max_price_usd: Decimal | None = None
    ) -> Activation:
        """Buy a number for one-time verification."""
        ...

    async def poll(self, activation_id: str) -> ActivationStatus:
        """Return the activation's current status."""
        ...

    async def active_activations(self) -> list[ActiveActivation]:
        """Every active activation of the account with its latest SMS, in one call.

        The bulk poll (getActiveActivations). Raises BadAction when the provider lacks the
        action: the caller then polls each activation with `poll`.
        """
        ...

    async def request_another(self, activation_id: str) -> None:
        """Ask for another SMS on the same number (after a code arrived)."""
        ...

    async def finish(self, activation_id: str) -> None:
        """Mark the activation as successfully used."""
        ...

    async def cancel(self, activation_id: str) -> None:
        """Cancel an activation that received no code (refunded by the provider)."""
        ...

    async def report_bad(self, activation_id: str) -> None:
        """Give back a number that is unusable (e.g. already registered at the service).

        5sim: /user/ban/{id}. HeroSMS has no ban action, so it cancels (setStatus 8) with the
        same rules as `cancel` (TooEarlyToCancel, CodeAlreadyReceived, ActivationNotActive).
        """
        ...

    async def reactivate(self, activation_id: str) -> Activation:
        """Buy a new activation on the number of an earlier one that received a code."""
        ...

    async def prices(
        self, *, service: str | None = None, country_id: int | None = None
    ) -> list[Offer]:
        """List offers, optionally filtered by service and/or country."""
        ...

    async def countries(self) -> list[Country]:
        """List the provider's countries."""
        ...

    async def services(self) -> list[Service]:
        """List the provider's service codes."""
        ...

    async def balance_usd(self) -> Decimal:
        """Return our account balance in USD."""
        ...

    async def rent_offers(self, hours: int, country: int | None = None) -> RentCatalog:
        """List rent offers for `hours` (BadRentTime if the duration is not offered)."""
        ...

    async def rent(
        self, *, service: str, country: int, hours: int, webhook_url: str | None = None
    ) -> Rental:
        """Rent a number; incoming SMS are pushed to `webhook_url` if given (and polled)."""
        ...

    async def rent_messages(self, rent_id: str) -> list[RentMessage]:
        """Every SMS the rental received so far (empty if none); RentEnded once it is over."""
        ...

    async def finish_rent(self, rent_id: str) -> None:
        """End a rental early (setRentStatus 1)."""
        ...

    async def cancel_rent(self, rent_id: str) -> None:
        """Cancel a rental (setRentStatus 2; the provider refunds only in its first minutes)."""
        ...

    async def close(self) -> None:
        """Release network resources."""
        ...
