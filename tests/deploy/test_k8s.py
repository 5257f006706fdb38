"""deploy/k8s: render the kustomizations, validate every object offline against the Kubernetes schemas
(kubernetes-validate, strict) and the CRDs against typed models (cloudcoil, extra fields forbidden), then
check the properties the daemon depends on in the rendered objects."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploytools import DEPLOY, load_toml, load_yaml, load_yaml_all, read_text, require, run, tool, used
from kustomize_lite import UnsupportedKustomization
from kustomize_lite import render as render_with

from streamer import config

K8S = DEPLOY / "k8s"
BASE = K8S / "base"
KEDA = K8S / "overlays" / "keda"
K8S_VERSION = "1.30"  # oldest Kubernetes release still in wide use; kubernetes-validate bundles its schemas
CRD_GROUPS = ("monitoring.coreos.com/", "keda.sh/")

kubernetes_validate = require("kubernetes_validate")
SchemaNotFoundError = require("kubernetes_validate.utils").SchemaNotFoundError


def render(directory: Path) -> list[dict]:
    """kustomize_lite's rendering, every file it reads recorded as loaded by the running test."""
    return render_with(directory, read_text)


def one(objects: list[dict], kind: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def key(obj: dict) -> tuple[str, str, str, str]:
    return (obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


@pytest.fixture(scope="module", params=[BASE, KEDA], ids=["base", "keda"])
def rendered(request: pytest.FixtureRequest) -> list[dict]:
    return render(request.param)


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(BASE)


@pytest.fixture(scope="module")
def keda() -> list[dict]:
    return render(KEDA)


def statefulset_pod(objects: list[dict]) -> dict:
    return one(objects, "StatefulSet")["spec"]["template"]["spec"]


@pytest.mark.parametrize("directory", [BASE, KEDA], ids=["base", "keda"])
def test_python_rendering_equals_kubectl_kustomize(directory: Path) -> None:
    out = run([tool("kubectl"), "kustomize", directory]).stdout
    theirs = {key(o): o for o in yaml.safe_load_all(out) if o}
    ours = {key(o): o for o in render(directory)}
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        assert ours[k] == theirs[k], k


def test_renderer_refuses_features_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(UnsupportedKustomization, match="commonLabels"):
        render(tmp_path)


def test_every_object_validates_against_the_kubernetes_schemas(rendered: list[dict]) -> None:
    for obj in rendered:
        if obj["apiVersion"].startswith(CRD_GROUPS):
            continue  # see test_custom_resources_match_their_typed_models
        # A missing schema raises SchemaNotFoundError: fatal for core kinds, as it should be.
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_schema_validation_rejects_a_misspelt_field(base: list[dict]) -> None:
    sts = copy.deepcopy(one(base, "StatefulSet"))
    sts["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)
    with pytest.raises(SchemaNotFoundError):
        kubernetes_validate.validate({**sts, "kind": "StatefulSett"}, K8S_VERSION, strict=True)


def crd_model(obj: dict) -> Any:
    if obj["kind"] == "PodMonitor":
        return require("cloudcoil.models.prometheus_operator.v1").PodMonitor
    if obj["kind"] == "ScaledObject":
        return require("cloudcoil.models.keda.v1alpha1").ScaledObject
    raise AssertionError(f"no typed model for {obj['apiVersion']} {obj['kind']}")


def test_custom_resources_match_their_typed_models(rendered: list[dict]) -> None:
    crds = [o for o in rendered if o["apiVersion"].startswith(CRD_GROUPS)]
    assert crds
    for obj in crds:
        model = crd_model(obj)
        # cloudcoil models ignore unknown fields by default: forbid them, recursively, at validation time.
        parsed = model.model_validate(obj, extra="forbid")
        assert parsed.api_version == obj["apiVersion"] and parsed.kind == obj["kind"]


@pytest.mark.parametrize("kind,path,typo", [
    ("PodMonitor", ("spec",), "podMetricEndpoints"),
    ("PodMonitor", ("spec", "podMetricsEndpoints", 0), "pth"),
    ("ScaledObject", ("spec",), "maxReplicaCuont"),
    ("ScaledObject", ("spec", "triggers", 0), "metdata"),
])
def test_typed_models_reject_a_misspelt_field(keda: list[dict], kind: str, path: tuple, typo: str) -> None:
    from pydantic import ValidationError

    obj = copy.deepcopy(one(keda, kind))
    node = obj
    for part in path:
        node = node[part]
    node[typo] = node.get(typo, "x")
    with pytest.raises(ValidationError, match=typo):
        crd_model(obj).model_validate(obj, extra="forbid")


def test_security_context(base: list[dict]) -> None:
    pod = statefulset_pod(base)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_probes_grace_period_and_resources(base: list[dict]) -> None:
    pod = statefulset_pod(base)
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9108}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # SIGTERM handling takes up to 10 s (finish batch, commit): the grace period must exceed it.
    assert pod["terminationGracePeriodSeconds"] == 30 > 10
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"},
                                      "limits": {"cpu": "2", "memory": "1Gi"}}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["STREAMER_METRICS__HOST"] == "0.0.0.0"
    assert env["STREAMER_CHECKPOINT__PATH"] == "/var/lib/streamer"


def test_volumes_config_and_state(base: list[dict]) -> None:
    sts = one(base, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    # --config points into the ConfigMap mount, and the mount is the generated (hash-suffixed) ConfigMap
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    config_volume = volumes[mounts[str(config_path.parent)]]
    cm = one(base, "ConfigMap")
    assert config_volume["configMap"]["name"] == cm["metadata"]["name"] != "streamer-config"
    assert cm["metadata"]["name"].startswith("streamer-config-")
    assert config_path.name in cm["data"]
    # every mount has a volume; checkpoints go to a per-replica claim; /tmp is writable scratch
    assert set(mounts.values()) <= set(volumes) | claims
    assert mounts["/var/lib/streamer"] in claims
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_config_toml_loads_with_the_daemon_settings(base: list[dict], monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    for name in [k for k in os.environ if k.startswith("STREAMER_")]:
        monkeypatch.delenv(name)
    (container,) = statefulset_pod(base)["containers"]
    for env in container["env"]:
        if env["name"].startswith("STREAMER_"):
            # $(POD_NAME) is expanded by the kubelet
            monkeypatch.setenv(env["name"], env["value"].replace("$(POD_NAME)", "streamer-0"))
    path = tmp_path / "config.toml"
    path.write_text(one(base, "ConfigMap")["data"]["config.toml"])
    settings = config.load_settings(path)
    assert settings.metrics.host == "0.0.0.0"
    assert settings.metrics.port == 9108
    assert settings.kafka.consumer == {"group_instance_id": "streamer-0"}


def test_secret_example_is_valid_but_not_deployed(base: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    (secret,) = load_yaml_all(BASE / "secret.example.yaml")
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    assert not any(o["kind"] == "Secret" for o in base)
    (container,) = statefulset_pod(base)["containers"]
    assert {"secretRef": {"name": secret["metadata"]["name"], "optional": True}} in container["envFrom"]
    for name in [k for k in os.environ if k.startswith("STREAMER_")]:
        monkeypatch.delenv(name)
    for name, value in secret["stringData"].items():
        monkeypatch.setenv(name, value)
    settings = config.load_settings(used(BASE / "config.toml"))
    assert settings.kafka.sasl_plain_password.get_secret_value() == "change-me"


def test_selectors_match_the_pods(rendered: list[dict]) -> None:
    sts = one(rendered, "StatefulSet")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    matches = lambda selector: selector.items() <= labels.items()  # noqa: E731
    assert matches(sts["spec"]["selector"]["matchLabels"])
    service = one(rendered, "Service")
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert matches(service["spec"]["selector"])
    assert service["spec"]["ports"][0]["port"] == 9108
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert matches(one(rendered, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    monitor = one(rendered, "PodMonitor")
    assert matches(monitor["spec"]["selector"]["matchLabels"])
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # the alert rules select job="streamer"
    assert {"action": "replace", "targetLabel": "job", "replacement": "streamer"} in endpoint["relabelings"]
    assert sts["spec"]["template"]["spec"]["serviceAccountName"] == one(rendered, "ServiceAccount")["metadata"]["name"]
    assert {o["metadata"]["namespace"] for o in rendered} == {"streamer"}


# Parameters of KEDA's kafka scaler (keda.sh docs, scalers/apache-kafka); the trigger's metadata is a free-form
# string map in the CRD, so a misspelt key would only show up as a scaler that ignores it.
KAFKA_SCALER_KEYS = {"bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
                     "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset",
                     "excludePersistentLag", "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions",
                     "partitionLimitation", "version", "sasl", "tls", "unsafeSsl"}


def test_keda_scales_the_statefulset_on_the_daemons_consumer_group(keda: list[dict]) -> None:
    scaled = one(keda, "ScaledObject")
    sts = one(keda, "StatefulSet")
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                "name": sts["metadata"]["name"]}
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert set(meta) <= KAFKA_SCALER_KEYS
    kafka = load_toml(BASE / "config.toml")["kafka"]
    assert meta["consumerGroup"] == kafka["group_id"]
    assert meta["topic"] in kafka["topics"]
    assert meta["bootstrapServers"].split(",") == kafka["bootstrap_servers"]
    assert int(meta["lagThreshold"]) > 0
    # never more replicas than partitions: KEDA caps at the partition count, maxReplicaCount documents it
    assert meta["allowIdleConsumers"] == "false"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    # `kubectl apply` must not reset the replica count KEDA chose
    assert "replicas" not in sts["spec"]


def test_base_resources_are_all_rendered() -> None:
    listed = load_yaml(BASE / "kustomization.yaml")["resources"]
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(listed) == on_disk
