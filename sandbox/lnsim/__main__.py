"""CLI: python -m sandbox.lnsim --node merchant=8181 --node payer=8182 --state-dir DIR."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .runner import start_network


def _node_arg(text: str) -> tuple[str, int]:
    name, sep, port = text.partition("=")
    name = name.strip()
    if not sep or not name or not port.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=PORT, got {text!r}")
    if not all(c.isalnum() or c in "-_" for c in name):
        raise argparse.ArgumentTypeError(f"node name must be [A-Za-z0-9_-]: {name!r}")
    return name, int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.lnsim",
        description="Simulated LND nodes (REST subset) sharing one in-process network.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--advertise-host", default=None, help="host written into nodes.json rest_url"
    )
    parser.add_argument(
        "--node",
        action="append",
        type=_node_arg,
        required=True,
        metavar="NAME=PORT",
        help="a node and its REST port (0 = any free port); repeatable",
    )
    parser.add_argument("--state-dir", required=True, help="keys, macaroons, state, nodes.json")
    parser.add_argument(
        "--block-time-seconds",
        type=float,
        default=600.0,
        help="one block per this many seconds (0 = blocks only via POST /sim/mine)",
    )
    parser.add_argument(
        "--initial-balance-sat",
        type=int,
        default=10_000_000,
        help="local channel balance of a node created for the first time",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    names = [n for n, _p in args.node]
    if len(set(names)) != len(names):
        parser.error("duplicate node names")
    return args


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running = await start_network(
        args.state_dir,
        args.node,
        host=args.host,
        advertise_host=args.advertise_host,
        block_time_seconds=args.block_time_seconds,
        initial_balance_sat=args.initial_balance_sat,
    )
    logging.getLogger("lnsim").info("lnsim ready: %s", ", ".join(running.nodes_info))
    try:
        await stop.wait()
    finally:
        await running.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGINT/SIGTERM."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
