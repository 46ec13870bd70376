"""deploy/k8s/ checked offline: the official schemas (kubernetes-validate, strict), the proxy's
own config loader on the ConfigMap's text, and the references between the objects.

There is no cluster here; what these tests cannot show (that a kubelet probes as configured,
that a CNI enforces the NetworkPolicy) docs/deployment.md says is unchecked."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prism_plugin_memstore import MemstoreConfig
from prism_plugin_postgres import PostgresConfig

from prism.cli.config import check
from prism.config import ConfigError, load_config
from prism.sdk.config import InvalidConfig, config_from_mapping

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "k8s"
# The oldest Kubernetes the manifests are written for: gRPC probes are GA since 1.27.
KUBERNETES_VERSION = "1.27"


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _proxy_config_text() -> str:
    text: str = _one("ConfigMap", "prism-proxy-config")["data"]["prism.yaml"]
    return text


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _mounts(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath → the volume mounted there."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in _container(deployment)["volumeMounts"]}


def _volume_at(deployment: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume a file or directory at ``path`` lives in (the longest mount prefix)."""
    best = ""
    for mount in _mounts(deployment):
        if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best = mount
    assert best, f"{path} is on no volume of {deployment['metadata']['name']}"
    return _mounts(deployment)[best]


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("doc", _documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_k8s_manifest_is_valid_against_the_official_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_k8s_strict_validation_refuses_an_unknown_field() -> None:
    # The check above would pass anything if strict mode were not on: prove it refuses.
    doc = copy.deepcopy(_one("Deployment", "prism-proxy"))
    _container(doc)["readinessProbe"]["grpcc"] = {"port": 50051}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_k8s_every_manifest_names_the_kinds_the_docs_promise() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in _documents()}
    assert kinds == {
        ("ConfigMap", "prism-proxy-config"),
        ("Deployment", "prism-proxy"),
        ("Service", "prism-proxy"),
        ("PodDisruptionBudget", "prism-proxy"),
        ("Deployment", "prism-plugin-postgres"),
        ("Service", "prism-plugin-postgres"),
        ("NetworkPolicy", "prism-plugin-postgres"),
    }


def _secret_volume_dir(root: Path, files: dict[str, str]) -> Path:
    """A directory laid out as the kubelet lays out a secret volume: the files live in a
    timestamped directory, `..data` links to it, and each name links through `..data`."""
    real = root / "..2026_12_02_00_00_00.000000001"
    real.mkdir(parents=True)
    for name, value in files.items():
        (real / name).write_text(value + "\n")
    os.symlink(real.name, root / "..data")
    for name in files:
        os.symlink(f"..data/{name}", root / name)
    return root


@pytest.fixture
def mounted_config(tmp_path: Path) -> Path:
    """The ConfigMap's prism.yaml as the pod sees it, with its secrets directory moved from
    /etc/prism/secrets to a temporary one laid out like the mounted Secret."""
    secrets = _secret_volume_dir(
        tmp_path / "secrets", {"orders-db-password": "s3cret-db", "admin-token": "s3cret-admin"}
    )
    raw = yaml.safe_load(_proxy_config_text())
    raw["secrets"]["directory"] = str(secrets)
    path = tmp_path / "prism.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_k8s_proxy_config_passes_prism_config_check(mounted_config: Path) -> None:
    status, lines = check(mounted_config)
    assert status == 0, lines
    assert "2 namespace(s)" in lines[0]
    assert "s3cret" not in "\n".join(lines)
    config = load_config(mounted_config)
    orders = next(ns for ns in config.namespaces if ns.name == "orders")
    assert orders.plugin.mode == "remote"
    assert orders.credentials["password"] == "{{ secret:orders-db-password }}"


def test_k8s_proxy_config_fails_check_without_its_secret(tmp_path: Path) -> None:
    # The Secret the Deployment mounts must hold every {{ secret:NAME }} the config uses.
    secrets = _secret_volume_dir(tmp_path / "secrets", {"admin-token": "x"})
    raw = yaml.safe_load(_proxy_config_text())
    raw["secrets"]["directory"] = str(secrets)
    path = tmp_path / "prism.yaml"
    path.write_text(yaml.safe_dump(raw))
    status, lines = check(path)
    assert status == 1
    assert any("orders-db-password" in line for line in lines), lines


def test_k8s_plugin_configs_fit_their_plugins() -> None:
    raw = yaml.safe_load(_proxy_config_text())
    types = {"postgres": PostgresConfig, "memstore": MemstoreConfig}
    for ns in raw["namespaces"]:
        config_from_mapping(types[ns["plugin"]["name"]], ns.get("config", {}))
    with pytest.raises(InvalidConfig):
        config_from_mapping(PostgresConfig, {**raw["namespaces"][0]["config"], "hots": "x"})


def test_k8s_proxy_deployment_mounts_what_its_config_reads() -> None:
    raw = yaml.safe_load(_proxy_config_text())
    deployment = _one("Deployment", "prism-proxy")
    args = _container(deployment)["args"]
    config_path = _flag(args, "--config")
    assert _volume_at(deployment, config_path)["configMap"]["name"] == "prism-proxy-config"
    secrets = _volume_at(deployment, raw["secrets"]["directory"])
    assert secrets["secret"]["secretName"] == "prism-proxy-secrets"
    runtime = _volume_at(deployment, raw["runtime_dir"])
    assert "emptyDir" in runtime  # writable under readOnlyRootFilesystem
    for ns in raw["namespaces"]:
        for path in (ns["plugin"].get("tls") or {}).values():
            assert "secret" in _volume_at(deployment, path), path


def test_k8s_proxy_probes_and_service_reach_the_front_door() -> None:
    raw = yaml.safe_load(_proxy_config_text())
    port = int(raw["listen"].rsplit(":", 1)[1])
    assert raw["listen"].startswith("0.0.0.0:")  # the kubelet probes the pod's address
    assert "tls" not in raw  # kubelet's gRPC probe speaks plaintext h2 only
    container = _container(_one("Deployment", "prism-proxy"))
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == port
    named = {"name": "grpc"}
    service = _one("Service", "prism-proxy")
    assert service["spec"]["ports"][0]["targetPort"] == named["name"]
    labels = _one("Deployment", "prism-proxy")["spec"]["template"]["metadata"]["labels"]
    for selector in (
        service["spec"]["selector"],
        _one("PodDisruptionBudget", "prism-proxy")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()


def test_k8s_proxy_outlives_its_shutdown_grace() -> None:
    raw = yaml.safe_load(_proxy_config_text())
    pod = _one("Deployment", "prism-proxy")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > raw["shutdown_grace"]


def test_k8s_remote_plugin_is_where_the_proxy_looks_for_it() -> None:
    raw = yaml.safe_load(_proxy_config_text())
    orders = next(ns for ns in raw["namespaces"] if ns["name"] == "orders")
    host, port = orders["plugin"]["endpoint"].rsplit(":", 1)
    service = _one("Service", host)
    assert service["spec"]["ports"][0]["port"] == int(port)
    plugin = _one("Deployment", "prism-plugin-postgres")
    container = _container(plugin)
    args = container["args"]
    assert args[:3] == ["plugin", "serve", orders["plugin"]["name"]]
    assert _flag(args, "--listen").endswith(f":{container['ports'][0]['containerPort']}")
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca"):
        assert "secret" in _volume_at(plugin, _flag(args, flag))
    # Absolute paths in the plugin's config are read on the plugin's side, in its pod.
    assert "secret" in _volume_at(plugin, orders["config"]["tls_ca_file"])
    # RFC-008's resource limits per plugin.
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "8Gi"}


def test_k8s_network_policy_admits_only_the_proxy_and_reaches_only_the_backend() -> None:
    policy = _one("NetworkPolicy", "prism-plugin-postgres")["spec"]
    plugin_labels = _one("Deployment", "prism-plugin-postgres")["spec"]["template"]["metadata"][
        "labels"
    ]
    proxy_labels = _one("Deployment", "prism-proxy")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= plugin_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = policy["ingress"]
    (source,) = ingress["from"]
    assert source["podSelector"]["matchLabels"].items() <= proxy_labels.items()
    assert [p["port"] for p in ingress["ports"]] == [7443]
    egress_ports = sorted({p["port"] for rule in policy["egress"] for p in rule["ports"]})
    raw = yaml.safe_load(_proxy_config_text())
    orders = next(ns for ns in raw["namespaces"] if ns["name"] == "orders")
    assert egress_ports == sorted({53, orders["config"].get("port", 5432)})


def test_k8s_containers_run_locked_down() -> None:
    for name in ("prism-proxy", "prism-plugin-postgres"):
        deployment = _one("Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        context = _container(deployment)["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        for volume in pod["volumes"]:
            if "secret" in volume:
                # Group-readable (fsGroup), never world-readable.
                assert volume["secret"]["defaultMode"] & 0o007 == 0


def test_k8s_config_error_for_a_bad_edit_names_the_field(tmp_path: Path) -> None:
    raw = yaml.safe_load(_proxy_config_text())
    raw["secrets"]["directory"] = str(tmp_path)
    raw["namespaces"][0]["traffic"]["rate_limit"]["rate"] = -1
    path = tmp_path / "prism.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any("rate" in error for error in caught.value.errors)


def test_k8s_metrics_port_is_declared_and_scraped() -> None:
    raw = yaml.safe_load(_proxy_config_text())
    host, port = raw["metrics"]["listen"].rsplit(":", 1)
    assert host == "0.0.0.0"  # a scraper reaches the pod's address
    deployment = _one("Deployment", "prism-proxy")
    ports = {p["name"]: p["containerPort"] for p in _container(deployment)["ports"]}
    assert ports["metrics"] == int(port)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == port
    assert annotations["prometheus.io/path"] == "/metrics"
    # The admin API itself stays on loopback.
    assert raw["admin"]["listen"].startswith("127.0.0.1:")
