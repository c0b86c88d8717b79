"""Start and stop a whole simulated network in the running event loop."""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from .network import Network, SimNode
from .server import make_app
from .util import atomic_write_json

log = logging.getLogger("lnsim")

NODES_FILE = "nodes.json"


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, socktype, proto, _canon, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.setblocking(False)
    return sock


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    if ":" in host:
        return f"[{host}]"
    return host


def _prepare_state_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (path / NODES_FILE).unlink()
    return path


@dataclass
class RunningNetwork:
    """A started simulator: the network plus one HTTP server per node."""

    network: Network
    state_dir: Path
    runners: list[web.AppRunner] = field(default_factory=list)
    nodes_info: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def nodes(self) -> dict[str, SimNode]:
        """Simulated nodes by name."""
        return self.network.nodes

    async def stop(self) -> None:
        """End streams, close the servers and remove nodes.json."""
        await self.network.stop()
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()
        _prepare_state_dir(self.state_dir)


async def start_network(
    state_dir: Path | str,
    nodes: list[tuple[str, int]],
    *,
    host: str = "127.0.0.1",
    advertise_host: str | None = None,
    block_time_seconds: float = 600.0,
    initial_balance_sat: int = 10_000_000,
) -> RunningNetwork:
    """Start the simulated nodes (port 0 picks a free port), then write nodes.json."""
    state_path = _prepare_state_dir(Path(state_dir))
    network = Network(
        state_path,
        block_time_seconds=block_time_seconds,
        initial_balance_sat=initial_balance_sat,
    )
    running = RunningNetwork(network=network, state_dir=state_path)
    url_host = _url_host(advertise_host or host)
    try:
        for name, port in nodes:
            node = network.add_node(name)
            runner = web.AppRunner(
                make_app(node), handler_cancellation=True, shutdown_timeout=2.0, access_log=None
            )
            await runner.setup()
            running.runners.append(runner)
            sock = _bind(host, port)
            site = web.SockSite(runner, sock)
            await site.start()
            actual_port = sock.getsockname()[1]
            node.rest_url = f"http://{url_host}:{actual_port}"
            running.nodes_info[name] = {
                "rest_url": node.rest_url,
                "macaroon_hex": node.macaroon_hex,
                "tls_cert_path": None,
                "pubkey": node.pubkey,
            }
            log.info("node %s (%s) listening on %s", name, node.pubkey, node.rest_url)
        network.start()
    except BaseException:
        await running.stop()
        raise
    atomic_write_json(state_path / NODES_FILE, running.nodes_info)
    return running
