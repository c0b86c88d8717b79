"""Bake each service's macaroon on a simulated node, as an operator runs `lncli bakemacaroon`.

CLI (the compose sandbox's one-shot): `python -m sandbox.lnsim.macaroons --state-dir DIR
--node merchant --gateway-dir G --payments-dir P` writes LND's binary macaroon files
`G/invoice.macaroon` and `P/payments.macaroon`, asking the running node (its `nodes.json`)
with its admin macaroon.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.request
from pathlib import Path

# What each role may do (README "LND credentials" has the same lists for a real node).
# The gateway creates invoices and hold invoices (AddInvoice, AddHoldInvoice: invoices:write).
GATEWAY_PERMISSIONS = ("invoices:read", "invoices:write")
# Payments follows invoices (read), looks them up, settles and cancels them (LookupInvoiceV2,
# SettleInvoice, CancelInvoice: invoices:write), tracks and sends refunds (offchain).
PAYMENTS_PERMISSIONS = ("invoices:read", "invoices:write", "offchain:read", "offchain:write")
ROLE_FILES = {"gateway": "invoice.macaroon", "payments": "payments.macaroon"}


def bake(rest_url: str, admin_macaroon_hex: str, permissions: tuple[str, ...]) -> str:
    """POST /v1/macaroon (BakeMacaroon) with the admin macaroon; returns the new one as hex."""
    body = {
        "permissions": [
            {"entity": entity, "action": action}
            for entity, action in (p.split(":", 1) for p in permissions)
        ]
    }
    request = urllib.request.Request(
        rest_url.rstrip("/") + "/v1/macaroon",
        data=json.dumps(body).encode(),
        headers={"Grpc-Metadata-macaroon": admin_macaroon_hex, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        macaroon: str = json.loads(resp.read())["macaroon"]
    return macaroon


def role_macaroons(rest_url: str, admin_macaroon_hex: str) -> dict[str, str]:
    """A freshly baked macaroon (hex) per role: gateway and payments."""
    return {
        "gateway": bake(rest_url, admin_macaroon_hex, GATEWAY_PERMISSIONS),
        "payments": bake(rest_url, admin_macaroon_hex, PAYMENTS_PERMISSIONS),
    }


def write_binary(directory: Path, name: str, macaroon_hex: str) -> Path:
    """Write a macaroon as LND's binary file (what SMS4SATS_LND_MACAROON_PATH reads)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(bytes.fromhex(macaroon_hex))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> None:
    """Bake the gateway's and the payments worker's macaroons into their directories."""
    parser = argparse.ArgumentParser(prog="python -m sandbox.lnsim.macaroons")
    parser.add_argument("--state-dir", required=True, help="the simulator's --state-dir")
    parser.add_argument("--node", default="merchant", help="the node to bake on")
    parser.add_argument("--gateway-dir", required=True, help="where invoice.macaroon goes")
    parser.add_argument("--payments-dir", required=True, help="where payments.macaroon goes")
    args = parser.parse_args(argv)
    node = json.loads((Path(args.state_dir) / "nodes.json").read_text())[args.node]
    baked = role_macaroons(node["rest_url"], node["macaroon_hex"])
    for role, directory in (("gateway", args.gateway_dir), ("payments", args.payments_dir)):
        path = write_binary(Path(directory), ROLE_FILES[role], baked[role])
        print(f"{role}: {path}")


if __name__ == "__main__":
    main()
