"""deploy/Dockerfile, checked without a container engine: what it copies and installs exists,
and the command it runs is the one the manifests and the package declare."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()


def test_dockerfile_installs_plugins_that_exist() -> None:
    installed = re.findall(r"/src/plugins/([a-z_]+)", DOCKERFILE)
    assert installed, "no plugin is installed"
    for name in installed:
        assert (ROOT / "plugins" / name / "pyproject.toml").is_file(), name


def test_dockerfile_runs_the_prism_command_as_an_unprivileged_user() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert 'ENTRYPOINT ["prism"]' in DOCKERFILE
    assert "prism" in scripts
    (user,) = re.findall(r"^USER (\d+):(\d+)$", DOCKERFILE, re.M)
    pods = [
        d
        for path in (ROOT / "deploy" / "k8s").glob("*.yaml")
        for d in yaml.safe_load_all(path.read_text())
        if d and d["kind"] == "Deployment"
    ]
    for pod in pods:
        context = pod["spec"]["template"]["spec"]["securityContext"]
        assert (str(context["runAsUser"]), str(context["runAsGroup"])) == user


def test_dockerfile_image_is_the_one_the_manifests_run() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"prism-proxy:{version}" in DOCKERFILE
    for path in (ROOT / "deploy" / "k8s").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Deployment":
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    assert container["image"] == f"prism-proxy:{version}"
