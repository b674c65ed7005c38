"""deploy/: the compose file is valid, and the edge image and extra stay free of torch."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
EDGE_DOCKERFILE = REPO / "deploy" / "edge.Dockerfile"
CLOUD_DOCKERFILE = REPO / "deploy" / "cloud.Dockerfile"


def compose_config() -> str:
    """`docker-compose config` output: the file validated and normalised by Compose itself."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose); "
                    "cannot validate docker-compose.yml")
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], check=False, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return result.stdout


def service_keys(config: str) -> dict[str, set[str]]:
    """Top-level keys of each service in normalised compose output (two-space block YAML)."""
    services: dict[str, set[str]] = {}
    in_services, current = False, None
    for line in config.splitlines():
        if not line.startswith(" "):
            in_services = line.rstrip() == "services:"
        elif in_services and re.fullmatch(r"  [\w.-]+:", line):
            current = line.strip()[:-1]
            services[current] = set()
        elif in_services and current and (m := re.match(r"    ([\w.-]+):", line)):
            services[current].add(m.group(1))
    return services


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, comments dropped, continuations joined."""
    logical, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(pending.strip())
        pending = ""
    return [(word.upper(), rest.strip()) for word, _, rest in (s.partition(" ") for s in logical)]


def pip_install_targets(dockerfile: Path) -> list[str]:
    """What every `pip install` in the Dockerfile installs (options dropped)."""
    targets = []
    for name, args in instructions(dockerfile):
        if name != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", args):
            words = command.split()
            if "pip" in " ".join(words[:3]) and "install" in words:
                after = words[words.index("install") + 1:]
                targets += [w.strip("'\"") for w in after if not w.startswith("-")]
    return targets


def test_compose_config_is_valid_with_both_services_and_a_cloud_healthcheck() -> None:
    services = service_keys(compose_config())
    assert set(services) == {"cloud", "edge"}
    assert "healthcheck" in services["cloud"]
    assert {"build", "command", "ports", "volumes"} <= services["cloud"]
    assert {"build", "command", "depends_on", "restart"} <= services["edge"]


def test_compose_edge_waits_for_a_healthy_cloud() -> None:
    config = compose_config()
    edge = config[config.index("\n  edge:"):]
    assert re.search(r"depends_on:\n\s+cloud:\n\s+condition: service_healthy", edge)
    assert "restart: on-failure" in edge
    assert "/readyz" in config


def test_edge_image_installs_the_edge_extra_only_and_never_torch() -> None:
    steps = instructions(EDGE_DOCKERFILE)
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert pip_install_targets(EDGE_DOCKERFILE) == [".[edge]"]
    for name, args in steps:
        assert "torch" not in args.lower(), f"{name} {args}"
        # one Dockerfile for amd64 and arm64: nothing pinned to an x86 platform or wheel
        assert not re.search(r"x86_64|amd64|--platform", args), f"{name} {args}"
    assert ("ENTRYPOINT", '["infocut"]') in steps
    users = [args for name, args in steps if name == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_cloud_image_installs_the_cloud_extra_as_a_non_root_user() -> None:
    steps = instructions(CLOUD_DOCKERFILE)
    assert pip_install_targets(CLOUD_DOCKERFILE) == [".[cloud]"]
    assert ("ENTRYPOINT", '["infocut"]') in steps
    users = [args for name, args in steps if name == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_edge_extra_pulls_in_no_torch() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def requirements(extra: str) -> list[str]:
        """The extra's requirements with self-references (infocut[x]) expanded."""
        out = []
        for req in extras[extra]:
            name = re.match(r"[A-Za-z0-9._-]+", req).group(0).lower()
            if name == project["name"]:
                for inner in re.search(r"\[(.*)\]", req).group(1).split(","):
                    out += requirements(inner.strip())
            else:
                out.append(name)
        return out

    edge = [re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in project["dependencies"]]
    edge += requirements("edge")
    assert "onnxruntime" in edge
    assert not [name for name in edge if name.startswith("torch")], edge
