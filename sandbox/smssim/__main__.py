"""Command line entry point: ``python -m sandbox.smssim --port 0 --ready-file /tmp/smssim.json``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path

from aiohttp import web

from sandbox.smssim.app import build_app
from sandbox.smssim.state import ERROR_STYLES, Settings, SimState

log = logging.getLogger("sandbox.smssim")


def _delay(raw: str) -> float | None:
    if raw.strip().lower() in ("off", "none", "disabled"):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError("expected seconds or 'off'") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _non_negative(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _count_or_off(what: str, off: str) -> Callable[[str], int | None]:
    """A parser for a positive count, or None for `off` (and its synonyms, and 0)."""

    def parse(raw: str) -> int | None:
        if raw.strip().lower() in (off, "off", "none", "disabled", "0", ""):
            return None
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} or '{off}'") from None
        if value < 0:
            raise argparse.ArgumentTypeError("must be >= 0")
        return value

    return parse


_rate_limit = _count_or_off("requests per second", "off")
_page_limit = _count_or_off("rows per page", "all")


def _share(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number between 0 and 1") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _hours(raw: str) -> tuple[int, ...]:
    try:
        hours = tuple(sorted({int(h) for h in raw.split(",") if h.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated hours, e.g. 4,12,24") from None
    if not hours or min(hours) <= 0:
        raise argparse.ArgumentTypeError("expected positive hours")
    return hours


def _positive_decimal(raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise argparse.ArgumentTypeError("expected a number") from None
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _env(name: str, default: str) -> str:
    return os.environ.get(f"SMSSIM_{name}", default)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the simulator's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.smssim", description="HeroSMS / SMS-Activate provider simulator"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    parser.add_argument("--api-key", default="sim-key")
    parser.add_argument("--error-style", choices=ERROR_STYLES, default="herosms")
    parser.add_argument("--early-cancel-seconds", type=_non_negative, default=120.0)
    parser.add_argument(
        "--auto-sms-delay", type=_delay, default=3.0, help="seconds, or 'off' to disable"
    )
    parser.add_argument(
        "--auto-sms-spread",
        type=_non_negative,
        default=_env("AUTO_SMS_SPREAD", "0"),
        help="each new activation's SMS comes after delay + uniform(0, spread) s "
        "(env SMSSIM_AUTO_SMS_SPREAD)",
    )
    parser.add_argument(
        "--auto-sms-share",
        type=_share,
        default=_env("AUTO_SMS_SHARE", "1"),
        help="share of new activations that get an SMS at all (env SMSSIM_AUTO_SMS_SHARE)",
    )
    parser.add_argument(
        "--lifetime-seconds", type=_non_negative, default=1200.0, help="activation lifetime"
    )
    parser.add_argument(
        "--rent-hours",
        type=_hours,
        default=_env("RENT_HOURS", "2,4,12,24,72,168"),
        help="offered rent durations (env SMSSIM_RENT_HOURS)",
    )
    parser.add_argument(
        "--webhook-url",
        default=_env("WEBHOOK_URL", "") or None,
        help="account webhook: every activation SMS, and rental SMS of rentals without url "
        "(env SMSSIM_WEBHOOK_URL)",
    )
    parser.add_argument(
        "--webhook-tries",
        type=int,
        default=int(_env("WEBHOOK_TRIES", "7")),
        help="webhook attempts until a 200 (env SMSSIM_WEBHOOK_TRIES)",
    )
    parser.add_argument(
        "--webhook-retry-seconds",
        type=_non_negative,
        default=_env("WEBHOOK_RETRY_SECONDS", "20"),
        help="pause between webhook attempts, plus up to half again "
        "(env SMSSIM_WEBHOOK_RETRY_SECONDS)",
    )
    parser.add_argument(
        "--webhook-timeout-seconds",
        type=_non_negative,
        default=_env("WEBHOOK_TIMEOUT_SECONDS", "3"),
        help="how long one webhook attempt may take (env SMSSIM_WEBHOOK_TIMEOUT_SECONDS)",
    )
    parser.add_argument(
        "--active-page-limit",
        type=_page_limit,
        default=_env("ACTIVE_PAGE_LIMIT", "all"),
        help="most rows of one getActiveActivations page, or 'all' (HeroSMS documents 100; "
        "env SMSSIM_ACTIVE_PAGE_LIMIT)",
    )
    parser.add_argument(
        "--rate-limit",
        type=_rate_limit,
        default=_env("RATE_LIMIT", "50"),
        help="requests/s per API key before a block, or 'off' (env SMSSIM_RATE_LIMIT)",
    )
    parser.add_argument(
        "--rate-block-seconds",
        type=_non_negative,
        default=_env("RATE_BLOCK_SECONDS", "10"),
        help="how long a burst over the limit blocks the key (env SMSSIM_RATE_BLOCK_SECONDS)",
    )
    parser.add_argument(
        "--btc-usd",
        type=_positive_decimal,
        default=_env("BTC_USD", "100000"),
        help="BTC/USD served at /api/v3/simple/price (env SMSSIM_BTC_USD)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed phones and codes")
    parser.add_argument("--ready-file", type=Path, default=None, help='write {"url": ...} here')
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def write_ready_file(path: Path, url: str) -> None:
    """Atomically write {"url": url} to path (temp file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"url": url}, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def serve(args: argparse.Namespace) -> None:
    """Run the simulator until SIGINT/SIGTERM."""
    settings = Settings(
        api_key=args.api_key,
        error_style=args.error_style,
        early_cancel_seconds=args.early_cancel_seconds,
        auto_sms_delay=args.auto_sms_delay,
        auto_sms_spread=args.auto_sms_spread,
        auto_sms_share=args.auto_sms_share,
        lifetime_seconds=args.lifetime_seconds,
        rent_hours=args.rent_hours,
        webhook_url=args.webhook_url,
        # The secret only from the environment: command lines are visible to every user.
        webhook_secret=os.environ.get("SMSSIM_WEBHOOK_SECRET") or None,
        webhook_tries=max(1, args.webhook_tries),
        webhook_retry_seconds=args.webhook_retry_seconds,
        webhook_timeout_seconds=args.webhook_timeout_seconds,
        rate_limit_per_second=args.rate_limit,
        rate_block_seconds=args.rate_block_seconds,
        active_page_limit=args.active_page_limit,
        btc_usd=args.btc_usd,
    )
    app = build_app(SimState(settings, seed=args.seed))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    log.info("smssim listening on %s (error style %s)", url, settings.error_style)
    if args.ready_file is not None:
        write_ready_file(args.ready_file, url)
    try:
        await stop.wait()
    finally:
        log.info("smssim shutting down")
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
