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
from collections.abc import Sequence
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
        "--lifetime-seconds", type=_non_negative, default=1200.0, help="activation lifetime"
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
        lifetime_seconds=args.lifetime_seconds,
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
