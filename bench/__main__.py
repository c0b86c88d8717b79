"""Benchmark the gateway (order creation, authenticated polling) against a bare aiohttp server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from libs.common.adapters.lightning import LndClient

ROOT = Path(__file__).resolve().parents[1]

# High rate limits so the limiter never answers 429 to the load generator; a fast SMS so
# the pre-paid orders polled in phase (c) settle before the timed phase starts.
STACK_ENV = {
    "SMS4SATS_RATE_CHALLENGES_PER_MINUTE": "1000000",
    "SMS4SATS_MAX_UNPAID_PER_CLIENT": "0",  # the unpaid cap has its own tests
    "SMS4SATS_RATE_POLLS_PER_MINUTE": "1000000",
    "SMSSIM_AUTO_SMS_DELAY": "1",
}
ORDER_BODY = {"type": "receive-sms", "country": "US", "service": "telegram"}
US_TG = {"country": 187, "service": "tg"}  # the provider's id for ORDER_BODY's pair
TERMINAL = {"completed", "refunded", "refund_failed", "failed", "expired"}
BASELINE_PATH = "/baseline"
BASELINE_BODY = {"status": "ok", "service": "baseline"}
INVOICE_CONCURRENCY = 32
DEVSTACK = [sys.executable, "-m", "sandbox.devstack"]


# ---------------------------------------------------------------- baseline server


async def _serve_baseline(port: int) -> None:
    """Serve BASELINE_BODY on 127.0.0.1:port until SIGINT or SIGTERM."""

    async def handler(_request: web.Request) -> web.Response:
        """Answer the fixed small JSON."""
        return web.json_response(BASELINE_BODY)

    app = web.Application()
    app.router.add_get(BASELINE_PATH, handler)
    # Same runner settings as the gateway (services/gateway/__main__.py).
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


# ---------------------------------------------------------------- processes


def _free_port() -> int:
    """Ask the OS for a free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    """Tell whether something listens on loopback:port."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, or an empty string."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    """Tell whether a process id still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_process(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGINT a child we started, then SIGKILL it if it outlives the grace period."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Processes:
    """The dev stack launcher and the baseline server this run started."""

    state_dir: Path
    stack: subprocess.Popen[bytes] | None = None
    baseline: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    baseline_url: str = ""
    logs: list[Any] = field(default_factory=list)

    def start_stack(self, timeout: float = 180.0) -> dict[str, Any]:
        """Run `python -m sandbox.devstack --auto-ports` and return its stack.json."""
        log = open(self.state_dir / "devstack.out", "wb")  # closed in stop()
        self.logs.append(log)
        self.stack = subprocess.Popen(
            [*DEVSTACK, "--dir", str(self.state_dir / "stack"), "--auto-ports"],
            cwd=ROOT,
            env={**os.environ, **STACK_ENV},
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C reaches only us, and we stop the stack exactly once.
            start_new_session=True,
        )
        stack_file = self.state_dir / "stack" / "stack.json"
        deadline = time.monotonic() + timeout
        while not stack_file.exists():
            if self.stack.poll() is not None or time.monotonic() > deadline:
                out = _tail(self.state_dir / "devstack.out")
                raise RuntimeError(f"the dev stack did not start:\n{out}")
            time.sleep(0.1)
        self.info = json.loads(stack_file.read_text())
        return self.info

    def start_baseline(self, timeout: float = 20.0) -> str:
        """Run the bare aiohttp server in its own process and return its URL."""
        port = _free_port()
        log = open(self.state_dir / "baseline.out", "wb")  # closed in stop()
        self.logs.append(log)
        self.baseline = subprocess.Popen(
            [sys.executable, "-m", "bench", "--serve-baseline", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not _port_open(port):
            if self.baseline.poll() is not None or time.monotonic() > deadline:
                out = _tail(self.state_dir / "baseline.out")
                raise RuntimeError(f"the baseline server did not start:\n{out}")
            time.sleep(0.05)
        self.baseline_url = f"http://127.0.0.1:{port}"
        return self.baseline_url

    def stop(self) -> list[str]:
        """Stop everything (SIGINT, like Ctrl-C on `make run`); returns warnings."""
        warnings: list[str] = []
        if self.baseline is not None:
            _stop_process(self.baseline, 10)
        if self.stack is not None:
            if self.stack.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.stack.send_signal(signal.SIGINT)
                try:
                    self.stack.wait(90)
                except subprocess.TimeoutExpired:
                    warnings.append("the dev stack launcher did not stop in 90 s; killed it")
                    self.stack.kill()
                    self.stack.wait()
            # The launcher's children run in their own sessions: none may outlive it.
            for name, pid in self.info.get("pids", {}).items():
                if _pid_alive(int(pid)):
                    warnings.append(f"{name} (pid {pid}) survived the stack; killed it")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        for log in self.logs:
            log.close()
        return warnings


# ---------------------------------------------------------------- load generator


@dataclass(frozen=True)
class Request:
    """One HTTP request of a benchmark phase."""

    method: str
    url: str
    headers: dict[str, str] | None = None
    json: dict[str, Any] | None = None


@dataclass
class Phase:
    """What one timed window recorded."""

    measure_start: float
    end: float
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    exhausted_at: float | None = None

    @property
    def elapsed(self) -> float:
        """Seconds of the measured window (shorter if the request source ran dry)."""
        end = self.end if self.exhausted_at is None else min(self.end, self.exhausted_at)
        return max(end - self.measure_start, 1e-9)


async def _worker(
    session: aiohttp.ClientSession,
    make: Callable[[], Request | None],
    expected: int,
    phase: Phase,
) -> None:
    """Send requests back to back until the window ends; record those inside it."""
    while True:
        start = time.perf_counter()
        if start >= phase.end:
            return
        req = make()
        if req is None:
            if phase.exhausted_at is None:
                phase.exhausted_at = start
            return
        error: str | None = None
        try:
            async with session.request(
                req.method, req.url, headers=req.headers, json=req.json
            ) as resp:
                await resp.read()
                if resp.status != expected:
                    error = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = type(exc).__name__
        done = time.perf_counter()
        if start < phase.measure_start or done > phase.end:
            continue  # warm-up, or straddles the end of the window
        if error is None:
            phase.latencies.append(done - start)
        else:
            phase.errors[error] += 1


async def run_phase(
    make: Callable[[], Request | None],
    expected: int,
    *,
    concurrency: int,
    warmup: float,
    duration: float,
) -> Phase:
    """Run `concurrency` workers for warmup + duration seconds; measure the last `duration`."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        now = time.perf_counter()
        phase = Phase(measure_start=now + warmup, end=now + warmup + duration)
        await asyncio.gather(*(_worker(session, make, expected, phase) for _ in range(concurrency)))
    return phase


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(path: str, phase: Phase) -> dict[str, Any]:
    """Requests, req/s and latency percentiles of the expected answers; errors apart."""
    lat = sorted(phase.latencies)
    ms = 1000.0
    summary: dict[str, Any] = {
        "path": path,
        "requests": len(lat),
        "elapsed_s": round(phase.elapsed, 3),
        "rps": round(len(lat) / phase.elapsed, 1),
        "p50_ms": round(_percentile(lat, 0.50) * ms, 2),
        "p90_ms": round(_percentile(lat, 0.90) * ms, 2),
        "p99_ms": round(_percentile(lat, 0.99) * ms, 2),
        "max_ms": round((lat[-1] if lat else 0.0) * ms, 2),
        "errors": sum(phase.errors.values()),
        "error_kinds": dict(phase.errors),
    }
    if phase.exhausted_at is not None and phase.exhausted_at < phase.end:
        summary["source_exhausted"] = True
    return summary


# ---------------------------------------------------------------- the gateway's fixtures


async def make_refund_invoices(payer: LndClient, count: int) -> list[str]:
    """Create `count` zero-amount refund invoices on the payer node, concurrently."""
    sem = asyncio.Semaphore(INVOICE_CONCURRENCY)

    async def one(i: int) -> str:
        """Create one refund invoice."""
        async with sem:
            inv = await payer.add_invoice(value_msat=0, memo=f"bench refund {i}", expiry=7200)
            return inv.payment_request

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def make_paid_orders(
    gateway: str, provider_sim: str, payer: LndClient, count: int, settle_within: float = 60.0
) -> list[tuple[str, str]]:
    """Create and pay `count` orders; wait until they settle; return (order id, auth) pairs."""
    async with aiohttp.ClientSession() as http:
        # The provider sim holds 50 numbers per pair by default; make room for every order.
        stock = {**US_TG, "count": max(50, count + 10)}
        async with http.post(f"{provider_sim}/sim/stock", json=stock) as resp:
            resp.raise_for_status()
        refunds = await make_refund_invoices(payer, count)

        async def one(refund: str) -> tuple[str, str]:
            """Create, pay, and build the L402 credential of one order."""
            body = {**ORDER_BODY, "refundInvoice": refund}
            async with http.post(f"{gateway}/v2/l402/order", json=body) as resp:
                if resp.status != 402:
                    text = await resp.text()
                    raise RuntimeError(f"order creation answered {resp.status}: {text}")
                challenge = await resp.json()
            payment = await payer.pay(challenge["invoice"], fee_limit_sat=10, timeout_seconds=30)
            if payment.status != "SUCCEEDED" or payment.preimage is None:
                raise RuntimeError(f"payment failed: {payment.failure_reason}")
            auth = f"L402 {challenge['macaroon']}:{payment.preimage.hex()}"
            return challenge["orderId"], auth

        orders = list(await asyncio.gather(*(one(r) for r in refunds)))
        # Let the orders finish (number, SMS, completion) so the workers are idle when timed.
        deadline = time.monotonic() + settle_within
        pending = dict(orders)
        while pending and time.monotonic() < deadline:
            for order_id, auth in list(pending.items()):
                url = f"{gateway}/v2/l402/order/{order_id}"
                async with http.get(url, headers={"Authorization": auth}) as resp:
                    if resp.status == 200 and (await resp.json())["status"] in TERMINAL:
                        del pending[order_id]
            if pending:
                await asyncio.sleep(0.5)
        if pending:
            print(f"  note: {len(pending)} orders still in flight when polling starts")
        return orders


# ---------------------------------------------------------------- the benchmark


async def measure(
    args: argparse.Namespace, info: dict[str, Any], baseline_url: str
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Run the three phases and return (results, extra config)."""
    gateway = info["gateway_url"]
    node = info["payer_lnd"]
    payer = LndClient(node["rest_url"], node["macaroon_hex"], node["tls_cert_path"])
    timing = {"concurrency": args.concurrency, "warmup": args.warmup, "duration": args.duration}
    results: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    try:
        # Fixtures for phase (c) first, so their background work is over before timing starts.
        print(f"preparing {args.poll_orders} paid orders...")
        orders = await make_paid_orders(gateway, info["provider_sim_url"], payer, args.poll_orders)

        print("(a) baseline: GET", BASELINE_PATH)
        url = baseline_url + BASELINE_PATH
        base = Request("GET", url)
        phase = await run_phase(lambda: base, 200, **timing)
        results["baseline"] = summarize(f"GET {BASELINE_PATH} (bare aiohttp)", phase)

        print("(c) polling: GET /v2/l402/order/{id} with L402 auth")
        ring: Iterator[tuple[str, str]] = itertools.cycle(orders)

        def poll() -> Request:
            """The next order's poll, round-robin."""
            order_id, auth = next(ring)
            return Request("GET", f"{gateway}/v2/l402/order/{order_id}", {"Authorization": auth})

        phase = await run_phase(poll, 200, **timing)
        results["poll_order"] = summarize("GET /v2/l402/order/{id}", phase)

        # (b) Each order needs its own refund invoice, made before the clock runs: a first
        # batch feeds the warm-up, whose rate sizes the pool for the timed window.
        print("(b) order creation: POST /v2/l402/order")
        pool = await make_refund_invoices(payer, args.initial_pool)

        def create() -> Request | None:
            """The next creation request, or None when the refund invoices ran out."""
            if not pool:
                return None
            body = {**ORDER_BODY, "refundInvoice": pool.pop()}
            return Request("POST", f"{gateway}/v2/l402/order", json=body)

        warm = await run_phase(
            create, 402, concurrency=args.concurrency, warmup=0, duration=args.warmup
        )
        warm_rps = len(warm.latencies) / warm.elapsed
        needed = math.ceil(warm_rps * args.duration * 1.5) + 4 * args.concurrency
        print(f"  warm-up {warm_rps:.0f} req/s; {needed} refund invoices for the window")
        pool.extend(await make_refund_invoices(payer, max(0, needed - len(pool))))
        phase = await run_phase(
            create, 402, concurrency=args.concurrency, warmup=0, duration=args.duration
        )
        results["create_order"] = summarize("POST /v2/l402/order", phase)
        extra = {"refund_invoice_pool": needed, "refund_invoices_left": len(pool)}
    finally:
        await payer.close()
    base_rps = results["baseline"]["rps"] or 1e-9
    base_p50 = results["baseline"]["p50_ms"] or 1e-9
    for summary in results.values():
        summary["rps_ratio"] = round(summary["rps"] / base_rps, 4)
        summary["p50_ratio"] = round(summary["p50_ms"] / base_p50, 2)
    ordered = {k: results[k] for k in ("baseline", "create_order", "poll_order")}
    return ordered, extra


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """Print the results as a fixed-width table."""
    head = (
        f"{'path':<34} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>7} {'req/s÷base':>11} {'p50×base':>9}"
    )
    print()
    print(head)
    print("-" * len(head))
    for r in results.values():
        print(
            f"{r['path']:<34} {r['requests']:>9} {r['rps']:>9.1f} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['errors']:>7} {r['rps_ratio']:>11.3f} {r['p50_ratio']:>9.1f}"
        )
        if r["error_kinds"]:
            print(f"{'':<34} errors: {r['error_kinds']}")
        if r.get("source_exhausted"):
            print(f"{'':<34} note: refund invoices ran out; window cut to {r['elapsed_s']} s")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        "note": "load generator, gateway, workers, simulators, PostgreSQL and NATS share the CPUs",
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Start the dev stack and a bare aiohttp server; load-test both.",
    )
    p.add_argument("--duration", type=float, default=10.0, help="timed seconds per phase (10)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent workers (16)")
    p.add_argument("--warmup", type=float, default=2.0, help="untimed seconds first (2)")
    p.add_argument("--poll-orders", type=int, default=20, help="paid orders to poll (20)")
    p.add_argument(
        "--initial-pool",
        type=int,
        default=400,
        help="refund invoices made for the creation warm-up (400)",
    )
    p.add_argument("--out", default="bench-results.json", help="JSON results file")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    p.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.concurrency < 1 or args.poll_orders < 1:
        p.error("--duration > 0, --warmup >= 0, --concurrency >= 1, --poll-orders >= 1")
    return args


def _raise_interrupt(_signum: int, _frame: object) -> None:
    """Turn SIGTERM into KeyboardInterrupt so the stack is always stopped."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark end to end; always stop what it started."""
    args = parse_args(argv)
    if args.serve_baseline is not None:
        asyncio.run(_serve_baseline(args.serve_baseline))
        return 0
    # Explicit handlers: a shell may start us with SIGINT ignored (background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows under make, too
    started = time.monotonic()
    state_dir = Path(tempfile.mkdtemp(prefix="sms4sats-bench-"))
    procs = Processes(state_dir)
    ok = False
    try:
        print(f"starting the dev stack in {state_dir}...")
        info = procs.start_stack()
        baseline_url = procs.start_baseline()
        print(f"  gateway {info['gateway_url']}, baseline {baseline_url}")
        results, extra = asyncio.run(measure(args, info, baseline_url))
        ok = True
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        # A second Ctrl-C must not cut the shutdown short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping the stack...")
        for warning in procs.stop():
            print(f"  warning: {warning}", file=sys.stderr)
        if ok and not args.keep:
            shutil.rmtree(state_dir, ignore_errors=True)
        else:
            print(f"  logs kept in {state_dir}", file=sys.stderr)
    if not ok:
        return 130
    config = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "poll_orders": args.poll_orders,
        "order_body": ORDER_BODY,
        "stack_env": STACK_ENV,
        "success": {"baseline": 200, "create_order": 402, "poll_order": 200},
        **extra,
    }
    doc = {"machine": machine(), "config": config, "results": results}
    print_table(results)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out} ({time.monotonic() - started:.0f} s in all)")
    return 0 if all(r["requests"] > 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
