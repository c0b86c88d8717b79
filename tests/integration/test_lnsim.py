"""Integration tests: LndClient against the lnsim simulator subprocess."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import bolt11
import coincurve
import jsonschema
import pytest

from libs.common.adapters.lightning import (
    AlreadyPaid,
    InvoiceAlreadyExists,
    InvoiceNotFound,
    LndClient,
    LndError,
    Payment,
    PaymentInTransition,
    PaymentNotInitiated,
)
from sandbox.lnsim.macaroons import bake

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SWAGGER_DIR = REPO_ROOT / "tests" / "data" / "lnd-rest"
MACAROON_HEADER = "Grpc-Metadata-macaroon"
NODES = ("merchant", "payer", "carol")

T = TypeVar("T")


@dataclass
class Sim:
    """A running simulator subprocess and what nodes.json says about it."""

    proc: subprocess.Popen[bytes]
    state_dir: Path
    nodes: dict[str, dict[str, Any]]

    def client(self, name: str) -> LndClient:
        """A client for one node."""
        info = self.nodes[name]
        return LndClient(info["rest_url"], info["macaroon_hex"], info["tls_cert_path"], timeout=10)

    def url(self, name: str) -> str:
        """REST base URL of one node."""
        return str(self.nodes[name]["rest_url"])


def start_sim(state_dir: Path, *extra: str) -> Sim:
    """Start `python -m sandbox.lnsim` and wait for nodes.json."""
    state_dir.mkdir(parents=True, exist_ok=True)
    nodes_file = state_dir / "nodes.json"
    nodes_file.unlink(missing_ok=True)
    args = [sys.executable, "-m", "sandbox.lnsim", "--host", "127.0.0.1"]
    for name in NODES:
        args += ["--node", f"{name}=0"]
    args += ["--state-dir", str(state_dir), "--block-time-seconds", "3600", *extra]
    with open(state_dir / "lnsim.log", "ab") as log:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=log, stderr=log)
    deadline = time.monotonic() + 20
    while not nodes_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"lnsim exited early: {(state_dir / 'lnsim.log').read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("lnsim did not write nodes.json")
        time.sleep(0.05)
    return Sim(proc, state_dir, json.loads(nodes_file.read_text()))


def stop_sim(sim: Sim) -> int:
    """SIGTERM the simulator and return its exit code."""
    if sim.proc.poll() is None:
        sim.proc.send_signal(signal.SIGTERM)
        try:
            sim.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.proc.kill()
            sim.proc.wait()
    return int(sim.proc.returncode)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """One simulator (merchant, payer, carol) shared by this module."""
    running = start_sim(tmp_path_factory.mktemp("lnsim"))
    yield running
    assert stop_sim(running) == 0


@pytest.fixture
async def merchant(sim: Sim) -> AsyncIterator[LndClient]:
    """Client of the merchant node."""
    client = sim.client("merchant")
    yield client
    await client.close()


@pytest.fixture
async def payer(sim: Sim) -> AsyncIterator[LndClient]:
    """Client of the payer node."""
    client = sim.client("payer")
    yield client
    await client.close()


async def sim_post(sim: Sim, node: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """Call a /sim/ control endpoint."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.url(node) + path, json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


async def take(it: AsyncIterator[T], n: int, within: float = 5.0) -> list[T]:
    """The next n items of an async iterator (each within `within` seconds)."""
    return [await asyncio.wait_for(anext(it), within) for _ in range(n)]


async def drain(it: AsyncIterator[T], within: float = 5.0) -> list[T]:
    """All remaining items of a finite async iterator."""

    async def collect() -> list[T]:
        return [item async for item in it]

    return await asyncio.wait_for(collect(), within)


@asynccontextmanager
async def closing_stream(it: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close a client stream (an async generator) on exit, ending its HTTP request."""
    try:
        yield it
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()


def new_preimage() -> tuple[bytes, bytes]:
    """A random preimage and its payment hash."""
    preimage = secrets.token_bytes(32)
    return preimage, hashlib.sha256(preimage).digest()


async def pay(client: LndClient, pr: str, amt_sat: int | None = None) -> Payment:
    """Pay with zero fee budget and a short timeout."""
    return await asyncio.wait_for(
        client.pay(pr, amt_sat=amt_sat, fee_limit_sat=0, timeout_seconds=30), 10
    )


# --------------------------------------------------------------------------- client tests


async def test_get_info_and_auth(sim: Sim, merchant: LndClient) -> None:
    info = await merchant.get_info()
    assert info.pubkey == sim.nodes["merchant"]["pubkey"]
    assert info.alias == "merchant"
    assert info.network == "regtest"
    assert info.block_height > 0
    assert sim.nodes["merchant"]["tls_cert_path"] is None

    bad = LndClient(sim.url("merchant"), "00" * 32)
    try:
        with pytest.raises(LndError) as exc:
            await bad.get_info()
        assert exc.value.http_status == 500
        assert exc.value.grpc_code == 2
        assert "verification failed" in exc.value.message
        with pytest.raises(LndError, match="verification failed"):
            await take(bad.subscribe_invoices(), 1)
        # The payer's macaroon is not valid on the merchant.
        other = LndClient(sim.url("merchant"), sim.nodes["payer"]["macaroon_hex"])
        with pytest.raises(LndError, match="verification failed"):
            await other.channel_balance_sat()
        await other.close()
    finally:
        await bad.close()


async def test_standard_invoice_paid(sim: Sim, merchant: LndClient, payer: LndClient) -> None:
    m_before = await merchant.channel_balance_sat()
    p_before = await payer.channel_balance_sat()
    added = await merchant.add_invoice(value_msat=21_000_000, memo="standard", expiry=3600)
    assert added.payment_request.startswith("lnbcrt")
    assert len(added.r_hash) == 32 and len(added.payment_addr) == 32

    decoded = bolt11.decode(added.payment_request)  # really signed by the merchant key
    assert decoded.payee == sim.nodes["merchant"]["pubkey"]
    assert decoded.payment_hash == added.r_hash.hex()

    req = await payer.decode_payreq(added.payment_request)
    assert req.payment_hash == added.r_hash
    assert req.destination == sim.nodes["merchant"]["pubkey"]
    assert req.num_msat == 21_000_000
    assert req.expiry == 3600
    assert req.description == "standard"
    assert req.payment_addr == added.payment_addr

    async with closing_stream(merchant.subscribe_invoice(added.r_hash)) as watch:
        assert [i.state for i in await take(watch, 1)] == ["OPEN"]
        result = await pay(payer, added.payment_request)
        settled = await drain(watch)
    assert [i.state for i in settled] == ["SETTLED"]
    assert settled[0].amt_paid_msat == 21_000_000
    assert result.status == "SUCCEEDED"
    assert result.failure_reason == "FAILURE_REASON_NONE"
    assert result.preimage is not None
    assert hashlib.sha256(result.preimage).digest() == added.r_hash
    assert result.value_sat == 21_000 and result.fee_sat == 0

    inv = await merchant.lookup_invoice(added.r_hash)
    assert inv.state == "SETTLED"
    assert inv.amt_paid_msat == 21_000_000 and inv.value_msat == 21_000_000
    assert inv.settle_index > 0 and inv.settle_date >= inv.creation_date
    assert inv.memo == "standard" and inv.add_index == added.add_index
    assert await merchant.channel_balance_sat() == m_before + 21_000
    assert await payer.channel_balance_sat() == p_before - 21_000

    with pytest.raises(AlreadyPaid) as exc:
        await pay(payer, added.payment_request)
    assert exc.value.grpc_code == 6

    tracked = await drain(payer.track_payment(added.r_hash))
    assert [p.status for p in tracked] == ["SUCCEEDED"]
    assert tracked[0].preimage == result.preimage


async def test_zero_amount_invoice(merchant: LndClient, payer: LndClient) -> None:
    added = await merchant.add_invoice(value_msat=0, memo="refund", expiry=600)
    assert (await payer.decode_payreq(added.payment_request)).num_msat == 0
    with pytest.raises(LndError, match="amount must be specified when paying a zero amount"):
        await pay(payer, added.payment_request)
    result = await pay(payer, added.payment_request, amt_sat=1234)
    assert result.status == "SUCCEEDED" and result.value_sat == 1234
    inv = await merchant.lookup_invoice(added.r_hash)
    assert inv.state == "SETTLED" and inv.amt_paid_msat == 1_234_000 and inv.value_msat == 0

    fixed = await merchant.add_invoice(value_msat=5_000, memo="fixed", expiry=600)
    with pytest.raises(LndError, match="amount must not be specified"):
        await pay(payer, fixed.payment_request, amt_sat=5)

    # An OPEN invoice can be canceled; it cannot be paid afterwards.
    await merchant.cancel_invoice(fixed.r_hash)
    assert (await merchant.lookup_invoice(fixed.r_hash)).state == "CANCELED"
    result = await pay(payer, fixed.payment_request)
    assert result.status == "FAILED"
    assert result.failure_reason == "FAILURE_REASON_INCORRECT_PAYMENT_DETAILS"


async def test_expired_invoice(merchant: LndClient, payer: LndClient) -> None:
    added = await merchant.add_invoice(value_msat=1_000, memo="short-lived", expiry=1)
    await asyncio.sleep(1.1)
    with pytest.raises(LndError, match=r"invoice expired\. Valid until"):
        await pay(payer, added.payment_request)
    # Like LND's invoice expiry watcher, the simulator cancels expired OPEN invoices.
    for _ in range(40):
        if (await merchant.lookup_invoice(added.r_hash)).state == "CANCELED":
            break
        await asyncio.sleep(0.05)
    assert (await merchant.lookup_invoice(added.r_hash)).state == "CANCELED"


async def test_hold_invoice_settle(sim: Sim, merchant: LndClient, payer: LndClient) -> None:
    preimage, payment_hash = new_preimage()
    height = (await merchant.get_info()).block_height
    p_before = await payer.channel_balance_sat()
    m_before = await merchant.channel_balance_sat()
    added = await merchant.add_hold_invoice(
        payment_hash=payment_hash, value_msat=50_000_000, memo="hold", expiry=600, cltv_expiry=40
    )
    assert added.r_hash == payment_hash
    with pytest.raises(LndError, match="invoice still open"):
        await merchant.settle_invoice(preimage)

    async with (
        closing_stream(merchant.subscribe_invoice(payment_hash)) as watch,
        closing_stream(
            payer.send_payment(added.payment_request, fee_limit_sat=0, timeout_seconds=30)
        ) as updates,
    ):
        assert [i.state for i in await take(watch, 1)] == ["OPEN"]
        first = (await take(updates, 1))[0]
        assert first.status == "IN_FLIGHT" and first.preimage is None
        accepted = (await take(watch, 1))[0]
        assert accepted.state == "ACCEPTED"
        assert accepted.htlc_expiry_heights == [height + 40]
        assert accepted.amt_paid_msat == 50_000_000
        # The held amount is locked on the payer and not yet credited to the merchant.
        assert await payer.channel_balance_sat() == p_before - 50_000
        assert await merchant.channel_balance_sat() == m_before
        with pytest.raises(PaymentInTransition):
            await pay(payer, added.payment_request)
        tracked = await take(payer.track_payment(payment_hash), 1)
        assert tracked[0].status == "IN_FLIGHT"

        await merchant.settle_invoice(preimage)
        final = (await take(updates, 1))[0]
        assert final.status == "SUCCEEDED" and final.preimage == preimage
        assert [i.state for i in await drain(watch)] == ["SETTLED"]

    await merchant.settle_invoice(preimage)  # idempotent
    with pytest.raises(LndError, match="invoice already settled"):
        await merchant.cancel_invoice(payment_hash)
    inv = await merchant.lookup_invoice(payment_hash)
    assert inv.state == "SETTLED" and inv.amt_paid_msat == 50_000_000
    assert await payer.channel_balance_sat() == p_before - 50_000
    assert await merchant.channel_balance_sat() == m_before + 50_000


async def test_hold_invoice_cancel(merchant: LndClient, payer: LndClient) -> None:
    preimage, payment_hash = new_preimage()
    p_before = await payer.channel_balance_sat()
    added = await merchant.add_hold_invoice(
        payment_hash=payment_hash, value_msat=7_000_000, memo="hold", expiry=600, cltv_expiry=80
    )
    with pytest.raises(InvoiceAlreadyExists):
        await merchant.add_hold_invoice(
            payment_hash=payment_hash, value_msat=1000, memo="dup", expiry=600, cltv_expiry=80
        )
    async with closing_stream(
        payer.send_payment(added.payment_request, fee_limit_sat=0, timeout_seconds=30)
    ) as updates:
        assert (await take(updates, 1))[0].status == "IN_FLIGHT"
        for _ in range(100):
            if (await merchant.lookup_invoice(payment_hash)).state == "ACCEPTED":
                break
            await asyncio.sleep(0.02)
        assert await payer.channel_balance_sat() == p_before - 7_000
        await merchant.cancel_invoice(payment_hash)
        final = (await take(updates, 1))[0]
    assert final.status == "FAILED"
    assert final.failure_reason == "FAILURE_REASON_INCORRECT_PAYMENT_DETAILS"
    assert final.preimage is None
    await merchant.cancel_invoice(payment_hash)  # idempotent
    with pytest.raises(LndError, match="invoice already canceled"):
        await merchant.settle_invoice(preimage)
    inv = await merchant.lookup_invoice(payment_hash)
    assert inv.state == "CANCELED" and inv.amt_paid_msat == 0
    assert await payer.channel_balance_sat() == p_before

    # A canceled invoice cannot be paid any more (the failed payment may be retried).
    again = await pay(payer, added.payment_request)
    assert again.status == "FAILED"
    assert again.failure_reason == "FAILURE_REASON_INCORRECT_PAYMENT_DETAILS"


async def test_hold_invoice_auto_canceled_near_htlc_expiry(
    sim: Sim, merchant: LndClient, payer: LndClient
) -> None:
    _preimage, payment_hash = new_preimage()
    added = await merchant.add_hold_invoice(
        payment_hash=payment_hash, value_msat=3_000_000, memo="short", expiry=600, cltv_expiry=20
    )
    async with closing_stream(
        payer.send_payment(added.payment_request, fee_limit_sat=0, timeout_seconds=30)
    ) as updates:
        assert (await take(updates, 1))[0].status == "IN_FLIGHT"
        inv = await merchant.lookup_invoice(payment_hash)
        for _ in range(100):
            if inv.state == "ACCEPTED":
                break
            await asyncio.sleep(0.02)
            inv = await merchant.lookup_invoice(payment_hash)
        expiry_height = inv.htlc_expiry_heights[0]
        height = (await merchant.get_info()).block_height
        await sim_post(sim, "carol", "/sim/mine", {"blocks": expiry_height - 18 - height - 1})
        assert (await merchant.lookup_invoice(payment_hash)).state == "ACCEPTED"
        await sim_post(sim, "carol", "/sim/mine", {"blocks": 1})
        final = (await take(updates, 1))[0]
    assert final.status == "FAILED"
    assert final.failure_reason == "FAILURE_REASON_INCORRECT_PAYMENT_DETAILS"
    assert (await merchant.lookup_invoice(payment_hash)).state == "CANCELED"


async def test_subscribe_invoices_add_and_settle(merchant: LndClient, payer: LndClient) -> None:
    first = await merchant.add_invoice(value_msat=1_000_000, memo="backlog", expiry=600)
    async with closing_stream(merchant.subscribe_invoices(add_index=first.add_index - 1)) as stream:
        replay = (await take(stream, 1))[0]
        assert replay.r_hash == first.r_hash and replay.state == "OPEN"
        second = await merchant.add_invoice(value_msat=2_000_000, memo="live", expiry=600)
        added = (await take(stream, 1))[0]
        assert added.r_hash == second.r_hash and added.add_index == second.add_index
        assert (await pay(payer, second.payment_request)).status == "SUCCEEDED"
        settled = (await take(stream, 1))[0]
        assert settled.r_hash == second.r_hash and settled.state == "SETTLED"
        settle_index = settled.settle_index
    # Replay of settles only: everything settled after settle_index - 1.
    async with closing_stream(merchant.subscribe_invoices(settle_index=settle_index - 1)) as stream:
        replay = (await take(stream, 1))[0]
        assert replay.r_hash == second.r_hash and replay.state == "SETTLED"


async def test_payment_failures(sim: Sim, merchant: LndClient, payer: LndClient) -> None:
    # Test hook: the payer's next payment fails with the requested reason, then retry works.
    added = await merchant.add_invoice(value_msat=10_000, memo="retry", expiry=600)
    await sim_post(
        sim, "payer", "/sim/fail-next-payments", {"count": 1, "reason": "FAILURE_REASON_NO_ROUTE"}
    )
    failed = await pay(payer, added.payment_request)
    assert failed.status == "FAILED" and failed.failure_reason == "FAILURE_REASON_NO_ROUTE"
    tracked = await drain(payer.track_payment(added.r_hash))
    assert [p.status for p in tracked] == ["FAILED"]
    assert (await pay(payer, added.payment_request)).status == "SUCCEEDED"

    too_big = await merchant.add_invoice(value_msat=50_000_000_000, memo="big", expiry=600)
    result = await pay(payer, too_big.payment_request)
    assert result.failure_reason == "FAILURE_REASON_INSUFFICIENT_BALANCE"

    # An invoice from a node outside the simulated network has no route.
    stranger = coincurve.PrivateKey()
    tags = bolt11.Tags()
    tags.add(bolt11.TagChar.payment_hash, secrets.token_hex(32))
    tags.add(bolt11.TagChar.payment_secret, secrets.token_hex(32))
    tags.add(bolt11.TagChar.description, "stranger")
    tags.add(bolt11.TagChar.expire_time, 600)
    invoice = bolt11.Bolt11(
        currency="bcrt", date=int(time.time()), amount_msat=bolt11.MilliSatoshi(1000), tags=tags
    )
    unknown = bolt11.encode(invoice, stranger.secret.hex())
    result = await pay(payer, unknown)
    assert result.status == "FAILED" and result.failure_reason == "FAILURE_REASON_NO_ROUTE"

    invoice.currency = "bc"
    mainnet = bolt11.encode(invoice, stranger.secret.hex())
    with pytest.raises(LndError, match="invoice not for current active network 'regtest'"):
        await payer.decode_payreq(mainnet)
    with pytest.raises(LndError):
        await payer.decode_payreq("lnbcrt1notaninvoice")


async def test_not_found_errors(merchant: LndClient, payer: LndClient) -> None:
    _preimage, unknown_hash = new_preimage()
    with pytest.raises(InvoiceNotFound) as exc:
        await merchant.lookup_invoice(unknown_hash)
    assert exc.value.http_status == 404 and exc.value.grpc_code == 5
    with pytest.raises(InvoiceNotFound):
        await merchant.cancel_invoice(unknown_hash)
    with pytest.raises(InvoiceNotFound):
        await merchant.settle_invoice(secrets.token_bytes(32))
    with pytest.raises(PaymentNotInitiated) as exc2:
        await take(payer.track_payment(unknown_hash), 1)
    assert exc2.value.http_status == 404


async def test_restart_keeps_state(tmp_path: Path) -> None:
    first = start_sim(tmp_path / "state")
    try:
        merchant, payer = first.client("merchant"), first.client("payer")
        added = await merchant.add_invoice(value_msat=9_000_000, memo="persist", expiry=3600)
        paid = await pay(payer, added.payment_request)
        assert paid.status == "SUCCEEDED"
        _preimage, payment_hash = new_preimage()
        await merchant.add_hold_invoice(
            payment_hash=payment_hash, value_msat=1000, memo="open", expiry=3600, cltv_expiry=40
        )
        # A hold payment still in flight when the simulator stops.
        held_preimage, held_hash = new_preimage()
        held = await merchant.add_hold_invoice(
            payment_hash=held_hash, value_msat=4_000_000, memo="held", expiry=3600, cltv_expiry=40
        )
        async with closing_stream(
            payer.send_payment(held.payment_request, fee_limit_sat=0, timeout_seconds=30)
        ) as updates:
            assert (await take(updates, 1))[0].status == "IN_FLIGHT"
        assert (await merchant.lookup_invoice(held_hash)).state == "ACCEPTED"
        balance = await payer.channel_balance_sat()
        invoice_only = bake(
            first.nodes["merchant"]["rest_url"],
            first.nodes["merchant"]["macaroon_hex"],
            ("invoices:write",),
        )
        await merchant.close()
        await payer.close()
    finally:
        assert stop_sim(first) == 0
    assert not (tmp_path / "state" / "nodes.json").exists()

    second = start_sim(tmp_path / "state")
    try:
        for name in NODES:
            assert second.nodes[name]["macaroon_hex"] == first.nodes[name]["macaroon_hex"]
            assert second.nodes[name]["pubkey"] == first.nodes[name]["pubkey"]
        merchant, payer = second.client("merchant"), second.client("payer")
        inv = await merchant.lookup_invoice(added.r_hash)
        assert inv.state == "SETTLED" and inv.memo == "persist"
        assert (await merchant.lookup_invoice(payment_hash)).state == "OPEN"
        tracked = await drain(payer.track_payment(added.r_hash))
        assert tracked[-1].status == "SUCCEEDED" and tracked[-1].preimage == paid.preimage
        assert await payer.channel_balance_sat() == balance
        with pytest.raises(AlreadyPaid):
            await pay(payer, added.payment_request)
        added2 = await merchant.add_invoice(value_msat=1000, memo="after", expiry=3600)
        assert added2.add_index == added.add_index + 3
        # A baked macaroon is kept with the node's files, permissions and all.
        baked = LndClient(second.url("merchant"), invoice_only)
        assert (await baked.add_invoice(value_msat=1000, memo="baked", expiry=60)).payment_request
        with pytest.raises(LndError, match="permission denied"):
            await baked.channel_balance_sat()
        await baked.close()

        async with closing_stream(payer.track_payment(held_hash)) as tracking:
            assert (await take(tracking, 1))[0].status == "IN_FLIGHT"
            await merchant.settle_invoice(held_preimage)
            final = (await take(tracking, 1))[0]
        assert final.status == "SUCCEEDED" and final.preimage == held_preimage
        assert await payer.channel_balance_sat() == balance
        await merchant.close()
        await payer.close()
    finally:
        assert stop_sim(second) == 0


# --------------------------------------------------------------------------- swagger conformance


def _swagger_definitions() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    for path in sorted(SWAGGER_DIR.glob("*.swagger.json")):
        defs.update(json.loads(path.read_text())["definitions"])
    return defs


def _is_message(defs: dict[str, Any], ref: str) -> bool:
    target = defs[ref.rsplit("/", 1)[-1]]
    return bool(target.get("type") == "object" or "properties" in target)


def _strict(schema: Any, defs: dict[str, Any], *, nullable_message: bool = False) -> Any:
    """Every declared property required, no undeclared ones; unset sub-messages may be null."""
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        if nullable_message and _is_message(defs, schema["$ref"]):
            return {"anyOf": [{"$ref": schema["$ref"]}, {"type": "null"}]}
        return {"$ref": schema["$ref"]}
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {
            k: _strict(v, defs, nullable_message=True) for k, v in schema["properties"].items()
        }
        out["required"] = sorted(schema["properties"])
        out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(schema["additionalProperties"], defs)
    if "items" in schema:
        out["items"] = _strict(schema["items"], defs)
    return out


_FORMATS = jsonschema.FormatChecker()


def _is_byte(value: object) -> bool:
    if isinstance(value, str):
        base64.b64decode(value, validate=True)
    return True


def _is_int64(value: object) -> bool:
    return not isinstance(value, str) or re.fullmatch(r"-?\d+", value) is not None


def _is_uint64(value: object) -> bool:
    return not isinstance(value, str) or re.fullmatch(r"\d+", value) is not None


_FORMATS.checks("byte", raises=ValueError)(_is_byte)
_FORMATS.checks("int64")(_is_int64)
_FORMATS.checks("uint64")(_is_uint64)


class Conformance:
    """Validates JSON bodies against swagger definitions made strict."""

    def __init__(self) -> None:
        raw = _swagger_definitions()
        self.defs = {name: _strict(d, raw) for name, d in raw.items()}
        self.checked: dict[str, int] = {}

    def check(self, definition: str, instance: Any) -> None:
        """Raise if `instance` does not match the definition."""
        schema = {"$ref": f"#/definitions/{definition}", "definitions": self.defs}
        jsonschema.Draft4Validator(schema, format_checker=_FORMATS).validate(instance)
        self.checked[definition] = self.checked.get(definition, 0) + 1


async def _get_json(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(method, url, json=body) as resp:
        return resp.status, json.loads(await resp.text())


async def _stream_lines(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None, *, limit: int = 10
) -> tuple[int, list[Any]]:
    lines: list[Any] = []
    async with session.request(method, url, json=body) as resp:
        while len(lines) < limit:
            try:
                raw = await asyncio.wait_for(resp.content.readline(), 2.0)
            except TimeoutError:
                break
            if not raw:
                break
            lines.append(json.loads(raw))
        return resp.status, lines


async def test_swagger_conformance(sim: Sim) -> None:
    conf = Conformance()
    m_url, p_url = sim.url("merchant"), sim.url("payer")
    m_headers = {MACAROON_HEADER: sim.nodes["merchant"]["macaroon_hex"]}
    p_headers = {MACAROON_HEADER: sim.nodes["payer"]["macaroon_hex"]}
    async with (
        aiohttp.ClientSession(headers=m_headers) as m,
        aiohttp.ClientSession(headers=p_headers) as p,
    ):
        for url, session in ((m_url, m), (p_url, p)):
            status, body = await _get_json(session, "GET", url + "/v1/getinfo")
            assert status == 200
            conf.check("lnrpcGetInfoResponse", body)
            status, body = await _get_json(session, "GET", url + "/v1/balance/channels")
            conf.check("lnrpcChannelBalanceResponse", body)

        # Standard invoice: add, decode, pay, lookup both ways, stream the payment.
        status, added = await _get_json(
            m, "POST", m_url + "/v1/invoices", {"value": "1500", "memo": "swagger", "expiry": "600"}
        )
        assert status == 200
        conf.check("lnrpcAddInvoiceResponse", added)
        r_hash = base64.b64decode(added["r_hash"])
        status, body = await _get_json(p, "GET", p_url + "/v1/payreq/" + added["payment_request"])
        conf.check("lnrpcPayReq", body)
        status, lines = await _stream_lines(
            p,
            "POST",
            p_url + "/v2/router/send",
            {"payment_request": added["payment_request"], "timeout_seconds": 30},
        )
        assert status == 200 and [ln["result"]["status"] for ln in lines] == [
            "IN_FLIGHT",
            "SUCCEEDED",
        ]
        for line in lines:
            conf.check("lnrpcPayment", line["result"])
        status, body = await _get_json(m, "GET", m_url + "/v1/invoice/" + r_hash.hex())
        conf.check("lnrpcInvoice", body)
        assert body["state"] == "SETTLED" and len(body["htlcs"]) == 1
        url_hash = base64.urlsafe_b64encode(r_hash).decode()
        status, body = await _get_json(
            m, "GET", f"{m_url}/v2/invoices/lookup?payment_hash={url_hash}"
        )
        assert status == 200
        conf.check("lnrpcInvoice", body)
        status, lines = await _stream_lines(p, "GET", f"{p_url}/v2/router/track/{url_hash}")
        assert status == 200 and len(lines) == 1
        conf.check("lnrpcPayment", lines[0]["result"])

        # Hold invoice: add, subscribe, pay (held), settle; then another one canceled.
        preimage, payment_hash = new_preimage()
        status, body = await _get_json(
            m,
            "POST",
            m_url + "/v2/invoices/hodl",
            {
                "hash": base64.b64encode(payment_hash).decode(),
                "value_msat": "2000000",
                "memo": "hold",
                "cltv_expiry": "40",
            },
        )
        assert status == 200
        conf.check("invoicesrpcAddHoldInvoiceResp", body)
        hold_pr = body["payment_request"]
        hold_url_hash = base64.urlsafe_b64encode(payment_hash).decode()
        async with m.get(f"{m_url}/v2/invoices/subscribe/{hold_url_hash}") as watch:
            async with p.post(
                p_url + "/v2/router/send", json={"payment_request": hold_pr, "timeout_seconds": 9}
            ) as send:
                first = json.loads(await asyncio.wait_for(send.content.readline(), 5))
                conf.check("lnrpcPayment", first["result"])
                assert first["result"]["htlcs"][0]["status"] == "IN_FLIGHT"
                status, body = await _get_json(
                    m,
                    "POST",
                    m_url + "/v2/invoices/settle",
                    {"preimage": base64.b64encode(preimage).decode()},
                )
                assert status == 200 and body == {}
                conf.check("invoicesrpcSettleInvoiceResp", body)
                last = json.loads(await asyncio.wait_for(send.content.readline(), 5))
                conf.check("lnrpcPayment", last["result"])
                assert last["result"]["payment_preimage"] == preimage.hex()
            states = []
            while raw := await asyncio.wait_for(watch.content.readline(), 5):
                msg = json.loads(raw)
                conf.check("lnrpcInvoice", msg["result"])
                states.append(msg["result"]["state"])
            assert states == ["OPEN", "ACCEPTED", "SETTLED"]

        _preimage, cancel_hash = new_preimage()
        status, body = await _get_json(
            m,
            "POST",
            m_url + "/v2/invoices/hodl",
            {"hash": base64.b64encode(cancel_hash).decode(), "value": "1000"},
        )
        async with p.post(
            p_url + "/v2/router/send",
            json={"payment_request": body["payment_request"], "timeout_seconds": 9},
        ) as send:
            await asyncio.wait_for(send.content.readline(), 5)
            status, body = await _get_json(
                m,
                "POST",
                m_url + "/v2/invoices/cancel",
                {"payment_hash": base64.b64encode(cancel_hash).decode()},
            )
            conf.check("invoicesrpcCancelInvoiceResp", body)
            failed = json.loads(await asyncio.wait_for(send.content.readline(), 5))["result"]
            conf.check("lnrpcPayment", failed)
            assert failed["htlcs"][0]["failure"]["code"] == "INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS"

        # All-invoices stream with backlog replay of adds and settles.
        status, lines = await _stream_lines(
            m, "GET", m_url + "/v1/invoices/subscribe?add_index=1&settle_index=1", limit=6
        )
        assert status == 200 and lines
        for line in lines:
            conf.check("lnrpcInvoice", line["result"])

        # Errors: plain google.rpc.Status bodies and stream error lines.
        status, body = await _get_json(m, "GET", m_url + "/v1/invoice/" + "00" * 32)
        assert status == 404 and body["message"] == "unable to locate invoice"
        conf.check("rpcStatus", body)
        async with aiohttp.ClientSession() as anon:
            status, body = await _get_json(anon, "GET", m_url + "/v1/getinfo")
            assert status == 500 and body["code"] == 2
            conf.check("rpcStatus", body)
        status, lines = await _stream_lines(p, "GET", f"{p_url}/v2/router/track/{'A' * 43}=")
        assert status == 404 and lines[0]["error"]["message"] == "payment isn't initiated"
        conf.check("rpcStatus", lines[0]["error"])
        status, lines = await _stream_lines(
            p,
            "POST",
            p_url + "/v2/router/send",
            {"payment_request": hold_pr, "timeout_seconds": 9},
        )
        assert status == 409 and lines[0]["error"]["message"] == "invoice is already paid"
        conf.check("rpcStatus", lines[0]["error"])

    assert set(conf.checked) >= {
        "lnrpcGetInfoResponse",
        "lnrpcChannelBalanceResponse",
        "lnrpcAddInvoiceResponse",
        "lnrpcPayReq",
        "lnrpcPayment",
        "lnrpcInvoice",
        "invoicesrpcAddHoldInvoiceResp",
        "invoicesrpcSettleInvoiceResp",
        "invoicesrpcCancelInvoiceResp",
        "rpcStatus",
    }


def test_strict_schema_rejects_missing_and_mistyped_fields() -> None:
    conf = Conformance()
    amount = {"sat": "1", "msat": "1000"}
    conf.check("lnrpcAmount", amount)
    with pytest.raises(jsonschema.ValidationError):
        conf.check("lnrpcAmount", {"sat": "1"})
    with pytest.raises(jsonschema.ValidationError):
        conf.check("lnrpcAmount", {"sat": 1, "msat": "1000"})
    with pytest.raises(jsonschema.ValidationError):
        conf.check("lnrpcAmount", {"sat": "x", "msat": "1000"})
    with pytest.raises(jsonschema.ValidationError):
        conf.check("lnrpcAmount", {**amount, "extra": True})
    added = {"r_hash": "!!", "payment_request": "", "add_index": "1", "payment_addr": ""}
    with pytest.raises(jsonschema.ValidationError):
        conf.check("lnrpcAddInvoiceResponse", added)


# --------------------------------------------------------------------------- ListInvoices


async def test_list_invoices_pages_by_add_index(tmp_path: Path) -> None:
    """GET /v1/invoices: LND's pagination, pending_only = OPEN + ACCEPTED, swagger-valid."""
    fresh = start_sim(tmp_path / "fresh")
    conf = Conformance()
    merchant, payer = fresh.client("merchant"), fresh.client("payer")
    headers = {MACAROON_HEADER: fresh.nodes["merchant"]["macaroon_hex"]}
    url = fresh.url("merchant") + "/v1/invoices"
    try:
        # add_index 1..5: hold h1 (stays OPEN), standard s1 (paid), hold h2 (canceled),
        # standard s2 (stays OPEN), hold h3 (paid and held: ACCEPTED).
        hashes = [new_preimage()[1] for _ in range(3)]
        h1 = await merchant.add_hold_invoice(
            payment_hash=hashes[0], value_msat=1_000_000, memo="h1", expiry=600, cltv_expiry=40
        )
        s1 = await merchant.add_invoice(value_msat=1_000_000, memo="s1", expiry=600)
        h2 = await merchant.add_hold_invoice(
            payment_hash=hashes[1], value_msat=1_000_000, memo="h2", expiry=600, cltv_expiry=40
        )
        s2 = await merchant.add_invoice(value_msat=1_000_000, memo="s2", expiry=600)
        h3 = await merchant.add_hold_invoice(
            payment_hash=hashes[2], value_msat=1_000_000, memo="h3", expiry=600, cltv_expiry=40
        )
        assert [i.add_index for i in (h1, s1, h2, s2, h3)] == [1, 2, 3, 4, 5]
        assert (await pay(payer, s1.payment_request)).status == "SUCCEEDED"
        await merchant.cancel_invoice(hashes[1])
        async with closing_stream(
            payer.send_payment(h3.payment_request, fee_limit_sat=0, timeout_seconds=30)
        ) as updates:
            await take(updates, 1)  # IN_FLIGHT: the merchant holds the HTLC
            for _ in range(250):
                if (await merchant.lookup_invoice(hashes[2])).state == "ACCEPTED":
                    break
                await asyncio.sleep(0.02)

            async with aiohttp.ClientSession(headers=headers) as http:

                async def page(**query: str) -> tuple[list[str], str, str]:
                    status, body = await _get_json(
                        http, "GET", url + "?" + "&".join(f"{k}={v}" for k, v in query.items())
                    )
                    assert status == 200, body
                    conf.check("lnrpcListInvoiceResponse", body)
                    memos = [i["memo"] for i in body["invoices"]]
                    return memos, body["first_index_offset"], body["last_index_offset"]

                assert await page() == (["h1", "s1", "h2", "s2", "h3"], "1", "5")
                assert await page(pending_only="true") == (["h1", "s2", "h3"], "1", "5")
                # Forward pages: the next one starts past the previous page's last offset.
                assert await page(pending_only="true", num_max_invoices="2") == (
                    ["h1", "s2"],
                    "1",
                    "4",
                )
                assert await page(pending_only="true", num_max_invoices="2", index_offset="4") == (
                    ["h3"],
                    "5",
                    "5",
                )
                assert await page(pending_only="true", index_offset="5") == ([], "0", "0")
                # Reversed: the newest first counted, still answered oldest first.
                assert await page(pending_only="true", num_max_invoices="2", reversed="true") == (
                    ["s2", "h3"],
                    "4",
                    "5",
                )
                assert await page(pending_only="true", index_offset="4", reversed="true") == (
                    ["h1"],
                    "1",
                    "1",
                )
                status, body = await _get_json(http, "GET", url + "?num_max_invoices=x")
                assert status == 400
                conf.check("rpcStatus", body)

            # The client's view of the same pages.
            listed = await merchant.list_invoices(pending_only=True, num_max_invoices=2)
            assert [(i.memo, i.state) for i in listed.invoices] == [("h1", "OPEN"), ("s2", "OPEN")]
            assert (listed.first_index_offset, listed.last_index_offset) == (1, 4)
            rest = await merchant.list_invoices(pending_only=True, index_offset=4)
            assert [(i.r_hash, i.state) for i in rest.invoices] == [(hashes[2], "ACCEPTED")]
            assert rest.invoices[0].amt_paid_msat == 1_000_000
            await merchant.cancel_invoice(hashes[2])
    finally:
        await merchant.close()
        await payer.close()
        assert stop_sim(fresh) == 0
    assert conf.checked.get("lnrpcListInvoiceResponse") == 7


async def test_money_calls_have_their_own_connections(sim: Sim, merchant: LndClient) -> None:
    """Streams and lookups filling their pool leave track, settle and cancel untouched."""
    info = sim.nodes["merchant"]
    client = LndClient(info["rest_url"], info["macaroon_hex"], None, timeout=1, other_connections=1)
    try:
        async with closing_stream(client.subscribe_invoices()) as stream:
            waiting = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0.3)  # the stream is open: it holds the only other connection
            added = await merchant.add_invoice(value_msat=1000, memo="fills", expiry=600)
            assert (await asyncio.wait_for(waiting, 5)).r_hash == added.r_hash
            with pytest.raises(LndError, match=r"failed|timed out") as waited:
                await client.lookup_invoice(added.r_hash)
            assert waited.value.http_status == 0  # it never reached the node
            # Money calls go straight through on their own connections.
            with pytest.raises(PaymentNotInitiated):
                await drain(client.track_payment(b"\x02" * 32))
            await client.cancel_invoice(added.r_hash)
            assert (await merchant.lookup_invoice(added.r_hash)).state == "CANCELED"
            assert client.connections() == {"other": 1, "money": 1, "settle": 1}
    finally:
        await client.close()


async def test_baked_macaroons_grant_only_their_permissions(
    sim: Sim, merchant: LndClient, payer: LndClient
) -> None:
    url = sim.url("merchant")
    admin = {MACAROON_HEADER: sim.nodes["merchant"]["macaroon_hex"]}
    async with aiohttp.ClientSession(headers=admin) as http:
        perms = [
            {"entity": "invoices", "action": "read"},
            {"entity": "invoices", "action": "write"},
        ]
        status, body = await _get_json(http, "POST", url + "/v1/macaroon", {"permissions": perms})
        assert status == 200
        Conformance().check("lnrpcBakeMacaroonResponse", body)
        invoice_only = body["macaroon"]
        # LND's validation of what may be baked.
        for bad, message in (
            ([], "permission list cannot be empty"),
            ([{"entity": "invoices", "action": "pay"}], "invalid permission action"),
            ([{"entity": "wallet", "action": "read"}], "invalid permission entity"),
        ):
            status, err = await _get_json(http, "POST", url + "/v1/macaroon", {"permissions": bad})
            assert status in (400, 500) and message in err["message"], err

    gateway = LndClient(url, invoice_only)
    try:
        # What the gateway does: invoices and hold invoices.
        added = await gateway.add_invoice(value_msat=1_000_000, memo="ok", expiry=600)
        _preimage, payment_hash = new_preimage()
        held = await gateway.add_hold_invoice(
            payment_hash=payment_hash, value_msat=2_000_000, memo="held", expiry=600, cltv_expiry=80
        )
        assert held.payment_request
        # What it must not: send money or read payments; nor bake itself a better macaroon.
        refund = await payer.add_invoice(value_msat=0, memo="refund", expiry=600)
        with pytest.raises(LndError) as denied:
            await take(
                gateway.send_payment(
                    refund.payment_request, amt_sat=10, fee_limit_sat=0, timeout_seconds=30
                ),
                1,
            )
        assert (denied.value.http_status, denied.value.grpc_code) == (500, 2)
        assert denied.value.message == "permission denied"
        with pytest.raises(LndError, match="permission denied"):
            await take(gateway.track_payment(added.r_hash), 1)
        with pytest.raises(LndError, match="permission denied"):
            await gateway.channel_balance_sat()
        async with aiohttp.ClientSession(headers={MACAROON_HEADER: invoice_only}) as http:
            everything = [{"entity": "offchain", "action": "write"}]
            status, err = await _get_json(
                http, "POST", url + "/v1/macaroon", {"permissions": everything}
            )
            assert status == 500 and err["message"] == "permission denied"
        # Nothing was paid; the refund invoice is still open.
        assert (await payer.lookup_invoice(refund.r_hash)).state == "OPEN"
        # The admin macaroon still does everything.
        assert await merchant.channel_balance_sat() > 0
    finally:
        await gateway.close()
