"""Static, offline checks of the Kubernetes and Istio manifests in deploy/ and of the OCI
image `make wasm-oci` writes.

No cluster runs here, so each manifest is checked against the schemas an API server would
apply (kubernetes-validate for Kubernetes kinds, Istio's CRD schemas vendored in
tests/fixtures/istio-crds), and against the one gatehouse.yaml: the service must accept the
ConfigMap's file (check-config), and the filter and ext_authz settings the Istio manifests
carry must be what `gatehouse envoy-config` renders from it. Every check returns the problems
it found; the `*_catch_*` tests feed it a broken copy to show that it fails.
"""

from __future__ import annotations

import gzip
import hashlib
import io
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

import pytest
import yaml

from harness import deploy as d
from harness import paths
from harness.envoy import start_envoy
from harness.procs import ProcessSet, free_port
from harness.stack import Stack, envoy_env, initialize_request

ROOT = paths.REPO
README = d.DEPLOY / "README.md"
ENVOYFILTER = d.ISTIO / "envoyfilter-everything.yaml"
WASM_OCI = d.DEPLOY / "wasm_oci.py"
RENDER_ENVOYFILTER = d.ISTIO / "render_envoyfilter.py"
GEN_SECRETS = d.DEPLOY / "gen-secrets.sh"

WASM_FILTER = "envoy.filters.http.wasm"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
MCP_SERVER_LABEL = "gatehouse.io/mcp-server"
SIDECAR_LABEL = "security.istio.io/tlsMode"
CLUSTER_DOMAIN = "svc.cluster.local"


def cargo_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M)
    assert match
    return match.group(1)


def gatehouse_config() -> dict[str, Any]:
    return yaml.safe_load(d.configmap_gatehouse_yaml())


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def pod_spec(m: d.Manifest) -> dict[str, Any]:
    return m.doc["spec"]["template"]["spec"]


def container(m: d.Manifest, name: str) -> dict[str, Any]:
    (found,) = [c for c in pod_spec(m)["containers"] if c["name"] == name]
    return found


def service_port(service: d.Manifest, name: str) -> int:
    (found,) = [p["port"] for p in service.doc["spec"]["ports"] if p["name"] == name]
    return found


def selected(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- every manifest against its schema ---------------------------------------------------

KUBERNETES_MANIFESTS = [m for m in d.all_manifests() if not d.is_istio(m)]
ISTIO_MANIFESTS = [m for m in d.all_manifests() if d.is_istio(m)]


@pytest.mark.parametrize("version", d.KUBERNETES_VERSIONS)
@pytest.mark.parametrize("manifest", KUBERNETES_MANIFESTS, ids=str)
def test_kubernetes_manifest_validates(manifest: d.Manifest, version: str) -> None:
    assert d.kubernetes_problems(manifest, version) == []


@pytest.mark.parametrize("manifest", ISTIO_MANIFESTS, ids=str)
def test_istio_manifest_validates_against_its_crd(manifest: d.Manifest) -> None:
    assert d.istio_problems(manifest) == []


def test_there_is_something_to_validate() -> None:
    kinds = {m.kind for m in d.all_manifests()}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert {"EnvoyFilter", "Gateway", "VirtualService"} <= kinds


def _changed(m: d.Manifest, change) -> d.Manifest:  # type: ignore[no-untyped-def]
    doc = d.deep_copy(m.doc)
    change(doc)
    return d.Manifest(m.path, m.index, doc)


def test_schema_checks_catch_broken_manifests() -> None:
    deployment = d.find("Deployment", "gatehouse")
    typo = _changed(deployment, lambda doc: doc["spec"].update(replica=3))
    assert "'replica' was unexpected" in " ".join(d.kubernetes_problems(typo, "1.31"))
    # The preStop sleep action is not in Kubernetes 1.28's API: why 1.31 is the oldest checked.
    assert "'sleep' was unexpected" in " ".join(d.kubernetes_problems(deployment, "1.28"))

    envoyfilter = d.find("EnvoyFilter", "gatehouse-everything")
    wildcard = _changed(envoyfilter, lambda doc: doc["spec"]["workloadSelector"]["labels"].update(app="*"))
    assert "wildcard is not supported in selector" in " ".join(d.istio_problems(wildcard))
    unknown = _changed(envoyfilter, lambda doc: doc["spec"].update(configPatch=[]))
    assert "'configPatch' was unexpected" in " ".join(d.istio_problems(unknown))
    first_filter = [p["applyTo"] for p in envoyfilter.doc["spec"]["configPatches"]].index("HTTP_FILTER")
    bad_operation = _changed(
        envoyfilter, lambda doc: doc["spec"]["configPatches"][first_filter]["patch"].update(operation="INSERT")
    )
    assert "'INSERT' is not one of" in " ".join(d.istio_problems(bad_operation))
    sub_without_hcm = _changed(
        envoyfilter,
        lambda doc: doc["spec"]["configPatches"][first_filter]["match"]["listener"]["filterChain"]["filter"].update(
            name="tcp"
        ),
    )
    assert "subfilter match requires filter match with" in " ".join(d.istio_problems(sub_without_hcm))

    route = d.find("VirtualService", "mcp")
    no_unit = _changed(route, lambda doc: doc["spec"]["http"][1].update(timeout="30"))
    assert "must be a valid duration greater than 1ms" in " ".join(d.istio_problems(no_unit))
    gateway = d.find("Gateway", "gatehouse")
    two_ways = _changed(gateway, lambda doc: doc["spec"]["servers"][0]["tls"].update(credentialNames=["a", "b"]))
    assert "only one of credentialName or credentialNames can be set" in " ".join(d.istio_problems(two_ways))
    bad_mode = _changed(gateway, lambda doc: doc["spec"]["servers"][0]["tls"].update(mode="MTLS"))
    assert "'MTLS' is not one of" in " ".join(d.istio_problems(bad_mode))


def test_kustomization_lists_every_kubernetes_manifest() -> None:
    kustomization = yaml.safe_load((d.KUBERNETES / "kustomization.yaml").read_text())
    files = sorted(p.name for p in d.KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files


# --- the service's Deployment --------------------------------------------------------------


def test_the_service_runs_three_replicas_that_roll_without_a_gap() -> None:
    spec = d.find("Deployment", "gatehouse").doc["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] >= 1


def test_probes_ask_the_rest_ports_healthz() -> None:
    deployment = d.find("Deployment", "gatehouse")
    c = container(deployment, "gatehouse")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    config = gatehouse_config()
    assert ports["http"] == port_of(config["service"]["rest_listen"])
    assert ports["grpc"] == port_of(config["service"]["grpc_listen"])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    # Liveness gives up later than readiness: a database outage makes replicas unready,
    # not a restart storm.
    ready, live = c["readinessProbe"], c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > ready["periodSeconds"] * ready["failureThreshold"]


def test_termination_grace_outlasts_a_held_check() -> None:
    deployment = d.find("Deployment", "gatehouse")
    pause = container(deployment, "gatehouse")["lifecycle"]["preStop"]["sleep"]["seconds"]
    service = gatehouse_config()["service"]
    hold = gatehouse_config()["envoy"]["ext_authz_timeout_ms"] / 1000
    # A held Check may run its whole timeout after SIGTERM, and the drain comes first.
    assert service["shutdown_grace_seconds"] >= hold
    needed = pause + service["drain_seconds"] + service["shutdown_grace_seconds"] + 5
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= needed


def restricted_problems(m: d.Manifest) -> list[str]:
    """Pod Security Standards, restricted profile (the parts these pods can get wrong)."""
    spec = pod_spec(m)
    pod = spec.get("securityContext", {})
    problems = []
    if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("pod: seccompProfile must be RuntimeDefault")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        if not (sc.get("runAsNonRoot") or pod.get("runAsNonRoot")):
            problems.append(f"{c['name']}: runAsNonRoot")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation must be false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{c['name']}: capabilities must drop ALL")
    for v in spec.get("volumes", []):
        if not {"configMap", "secret", "emptyDir", "projected", "downwardAPI"} & v.keys():
            problems.append(f"volume {v['name']}: not a restricted volume type")
    return problems


def test_the_service_runs_non_root_on_a_read_only_root() -> None:
    deployment = d.find("Deployment", "gatehouse")
    assert restricted_problems(deployment) == []
    c = container(deployment, "gatehouse")
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec(deployment)["securityContext"]["runAsUser"] != 0
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= c["resources"][kind].keys(), kind
    assert d.find("Namespace", "gatehouse").doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
        "restricted"
    )
    # And the check can fail.
    loose = _changed(deployment, lambda doc: pod_spec_of(doc)["containers"][0]["securityContext"].pop("capabilities"))
    assert restricted_problems(loose) == ["gatehouse: capabilities must drop ALL"]


def pod_spec_of(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def test_writer_id_comes_from_the_pod_name_and_the_password_from_a_secret() -> None:
    c = container(d.find("Deployment", "gatehouse"), "gatehouse")
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "secretKeyRef" in env["PGPASSWORD"]["valueFrom"]
    config = gatehouse_config()
    assert "${POD_NAME}" in config["audit"]["writer_id"]
    database = config["audit"]["database"]
    assert database.startswith("postgres://gatehouse@")  # a user, no password
    assert ":" not in database.split("://", 1)[1].split("@", 1)[0]
    assert "sslmode=verify-full" in database
    root_cert = re.search(r"sslrootcert=([^&]+)", database)
    assert root_cert and root_cert.group(1) in mounted_files()


def test_the_service_is_outside_the_mesh() -> None:
    template = d.find("Deployment", "gatehouse").doc["spec"]["template"]
    assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert d.find("Namespace", "gatehouse").doc["metadata"]["labels"]["istio-injection"] == "disabled"


def mounted_files() -> dict[str, dict[str, Any]]:
    """Each file path the service's container sees under /etc/gatehouse, with its volume."""
    deployment = d.find("Deployment", "gatehouse")
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    out: dict[str, dict[str, Any]] = {}
    for mount in container(deployment, "gatehouse")["volumeMounts"]:
        out[mount["mountPath"]] = volumes[mount["name"]]
    files = {}
    for path in d.mounted_paths(d.configmap_gatehouse_yaml()):
        for mount_path, volume in out.items():
            if path.startswith(mount_path + "/"):
                files[path] = volume
    return files


def test_every_file_the_config_names_is_mounted() -> None:
    config = gatehouse_config()
    deployment = d.find("Deployment", "gatehouse")
    args = container(deployment, "gatehouse")["args"]
    assert args[args.index("--config") + 1] == d.CONFIG_PATH
    files = mounted_files()
    # Envoy's client pair is for the sidecars (they mount it); the service never reads it,
    # and its pod does not hold it.
    tls = config["service"]["grpc_tls"]
    not_mounted = {tls["client_cert_file"], tls["client_key_file"], config["envoy"]["wasm"]}
    for path in d.mounted_paths(d.configmap_gatehouse_yaml()):
        if path in not_mounted:
            assert path not in files, path
            continue
        assert path in files, f"{path} is not under any volumeMount"
        volume = files[path]
        if path == d.CONFIG_PATH:
            assert volume["configMap"]["name"] == "gatehouse-config"
        else:
            assert "secret" in volume, f"{path}: a key must come from a Secret"


# --- the Services, the PodDisruptionBudget, the NetworkPolicy --------------------------------


def pod_labels() -> dict[str, str]:
    return d.find("Deployment", "gatehouse").doc["spec"]["template"]["metadata"]["labels"]


def test_services_reach_the_pods_on_their_named_ports() -> None:
    container_ports = {p["name"] for p in container(d.find("Deployment", "gatehouse"), "gatehouse")["ports"]}
    for name in ("gatehouse", "gatehouse-grpc"):
        service = d.find("Service", name)
        assert selected(service.doc["spec"]["selector"], pod_labels()), name
        for port in service.doc["spec"]["ports"]:
            assert port["targetPort"] in container_ports
            if port["name"] == "grpc":
                # HTTP/2 to the service: ext_authz and the filter's gRPC calls need it.
                assert port["appProtocol"] == "grpc"
    grpc = d.find("Service", "gatehouse-grpc")
    assert grpc.doc["spec"]["clusterIP"] == "None", "headless: its name resolves to every replica"
    assert service_port(grpc, "grpc") == port_of(gatehouse_config()["service"]["grpc_listen"])
    # The sidecars reach the replicas by that name (service.grpc_endpoints).
    host = f"{grpc.name}.{grpc.namespace}.{CLUSTER_DOMAIN}:{service_port(grpc, 'grpc')}"
    assert gatehouse_config()["service"]["grpc_endpoints"] == [host]


def test_disruptions_leave_two_replicas() -> None:
    pdb = d.find("PodDisruptionBudget", "gatehouse").doc["spec"]
    replicas = d.find("Deployment", "gatehouse").doc["spec"]["replicas"]
    available = pdb.get("minAvailable", replicas - pdb.get("maxUnavailable", replicas))
    assert available == 2 and replicas - available >= 1
    assert selected(pdb["selector"]["matchLabels"], pod_labels())


def network_policy_problems(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    problems = []
    if not selected(spec["podSelector"]["matchLabels"], pod_labels()):
        problems.append("the policy does not select the service's pods")
    if set(spec["policyTypes"]) != {"Ingress", "Egress"}:
        problems.append("both directions must be restricted")
    for rule in spec["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        if "grpc" in ports:
            for peer in rule["from"]:
                labels = peer.get("podSelector", {}).get("matchLabels", {})
                if labels.get(MCP_SERVER_LABEL) != "true" or labels.get(SIDECAR_LABEL) != "istio":
                    problems.append(f"gRPC is open to pods that are not MCP servers with a sidecar: {peer}")
                if "namespaceSelector" not in peer:
                    problems.append(f"gRPC peer without a namespace selector: {peer}")
        if not rule.get("from"):
            problems.append(f"ports {sorted(ports)} are open to everyone")
    egress = {(p["port"], p.get("protocol", "TCP")) for rule in spec["egress"] for p in rule["ports"]}
    database_port = int(re.search(r"@[^/:]+:(\d+)/", gatehouse_config()["audit"]["database"]).group(1))
    for needed in [(53, "UDP"), (53, "TCP"), (database_port, "TCP"), (443, "TCP")]:
        if needed not in egress:
            problems.append(f"no egress to {needed}")
    return problems


def test_network_policy_lets_only_the_mcp_sidecars_reach_grpc() -> None:
    policy = d.find("NetworkPolicy", "gatehouse").doc
    assert network_policy_problems(policy) == []
    opened = d.deep_copy(policy)
    opened["spec"]["ingress"][0]["from"].append({"namespaceSelector": {}})
    assert any("not MCP servers" in p for p in network_policy_problems(opened))


def test_the_example_mcp_server_is_what_every_selector_picks() -> None:
    example = d.find("Deployment", "mcp-everything")
    labels = example.doc["spec"]["template"]["metadata"]["labels"]
    assert labels[MCP_SERVER_LABEL] == "true"
    namespace = d.find("Namespace", example.namespace).doc["metadata"]["labels"]
    assert namespace.get("istio-injection") == "enabled"
    envoyfilter = d.find("EnvoyFilter", "gatehouse-everything")
    assert envoyfilter.namespace == example.namespace
    assert selected(envoyfilter.doc["spec"]["workloadSelector"]["labels"], labels)
    # The NetworkPolicy's gRPC peers need these labels (the sidecar label comes from injection).
    grpc_rule = d.find("NetworkPolicy", "gatehouse").doc["spec"]["ingress"][0]
    for peer in grpc_rule["from"]:
        wanted = dict(peer["podSelector"]["matchLabels"])
        assert wanted.pop(SIDECAR_LABEL) == "istio"
        assert selected(wanted, labels)
    # The filter reads the token key from the sidecar's environment.
    proxy = container(example, "istio-proxy")
    assert proxy["image"] == "auto"
    assert [e["name"] for e in proxy["env"]] == ["GATEHOUSE_MASK_TOKEN_KEY"]
    # The example runs the server-everything the tests use.
    version = json.loads((ROOT / "tests" / "package.json").read_text())["dependencies"][
        "@modelcontextprotocol/server-everything"
    ]
    assert f"@modelcontextprotocol/server-everything@{version}" in " ".join(
        container(example, "mcp-everything")["args"]
    )


def test_the_upstream_is_the_example_mcp_service() -> None:
    service = d.find("Service", "mcp-everything")
    (upstream,) = [u for u in gatehouse_config()["upstreams"] if u["name"] == "everything"]
    host_port = upstream["url"].split("://", 1)[1].split("/", 1)[0]
    assert host_port == f"{service.name}.{service.namespace}.{CLUSTER_DOMAIN}:{service_port(service, 'http-mcp')}"
    assert service.doc["spec"]["ports"][0]["appProtocol"] == "http"


def test_ingress_routes_match_the_public_names() -> None:
    config = gatehouse_config()
    public = config["service"]["public_url"].split("://", 1)[1].split("/", 1)[0]
    approvers = config["approvals"]["ui_url"].split("://", 1)[1].split("/", 1)[0]
    gateway = d.find("Gateway", "gatehouse")
    assert {public, approvers} <= set(gateway.doc["spec"]["servers"][0]["hosts"])
    mcp = d.find("VirtualService", "mcp").doc["spec"]
    assert mcp["hosts"] == [public]
    rest_host = f"gatehouse.gatehouse.{CLUSTER_DOMAIN}"
    routes = {r["name"]: r for r in mcp["http"]}
    assert routes["oauth-protected-resource"]["route"][0]["destination"]["host"] == rest_host
    (upstream,) = [u for u in config["upstreams"] if u["name"] == "everything"]
    assert routes["everything"]["match"][0]["uri"] == {"exact": upstream["path"]}
    rest = d.find("VirtualService", "gatehouse-rest").doc["spec"]
    assert rest["hosts"] == [approvers]
    prefixes = {m["uri"]["prefix"] for r in rest["http"] for m in r["match"]}
    assert "/ui" in prefixes and not {"/metrics", "/healthz", "/"} & prefixes


# --- the Secrets the manifests name, and the commands that create them ------------------------


def readme_secret_commands() -> dict[tuple[str, str], set[str]]:
    """(namespace, name) -> keys, for each `kubectl -n NS create secret` in deploy/README.md."""
    text = README.read_text().replace("\\\n", " ")
    secrets = {}
    for line in text.splitlines():
        m = re.search(r"kubectl -n (\S+) create secret (generic|tls) (\S+)(.*)", line)
        if not m:
            continue
        namespace, kind, name, rest = m.groups()
        keys = set(re.findall(r"--from-(?:file|literal)=([\w.-]+)=", rest))
        if kind == "tls":
            keys |= {"tls.crt", "tls.key"}
        secrets[(namespace, name)] = keys
    return secrets


def referenced_secrets() -> Iterator[tuple[str, str, str | None, str]]:
    """(namespace, Secret, key or None, where) for each Secret a manifest names."""
    config_paths = d.mounted_paths(d.configmap_gatehouse_yaml())
    for m in d.all_manifests():
        if m.kind == "Deployment":
            spec = pod_spec(m)
            mounted = {}
            for c in spec["containers"]:
                for mount in c.get("volumeMounts", []):
                    mounted[mount["name"]] = mount["mountPath"]
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        yield m.namespace, ref["name"], ref["key"], f"{m} env {e['name']}"
            for v in spec.get("volumes", []):
                if "secret" not in v:
                    continue
                name, where = v["secret"]["secretName"], f"{m} volume {v['name']}"
                if "items" in v["secret"]:
                    for item in v["secret"]["items"]:
                        yield m.namespace, name, item["key"], where
                    continue
                prefix = mounted[v["name"]] + "/"
                keys = [p[len(prefix) :] for p in config_paths if p.startswith(prefix)]
                for key in keys or [None]:
                    yield m.namespace, name, key, where
        if m.kind == "Gateway":
            for server in m.doc["spec"]["servers"]:
                for key in ("tls.crt", "tls.key"):
                    yield m.namespace, server["tls"]["credentialName"], key, str(m)


def test_every_secret_named_is_created_in_the_readme() -> None:
    created = readme_secret_commands()
    assert created, "deploy/README.md has no `kubectl -n NS create secret` commands"
    missing = []
    for namespace, name, key, where in referenced_secrets():
        keys = created.get((namespace, name))
        if keys is None:
            missing.append(f"{where}: Secret {namespace}/{name} is never created")
        elif key is not None and key not in keys:
            missing.append(f"{where}: Secret {namespace}/{name} is created without the key {key}")
    assert missing == []


def test_the_secret_material_is_what_the_service_and_sidecars_accept(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    subprocess.run(["bash", str(GEN_SECRETS), str(out)], check=True, capture_output=True, timeout=60)

    def openssl(*args: str) -> str:
        return subprocess.run(["openssl", *args], check=True, capture_output=True, text=True).stdout

    ca = str(out / "grpc-ca.crt")
    assert "OK" in openssl("verify", "-CAfile", ca, str(out / "grpc-server.crt"), str(out / "grpc-client.crt"))
    server = openssl("x509", "-in", str(out / "grpc-server.crt"), "-noout", "-ext", "subjectAltName,extendedKeyUsage")
    assert "TLS Web Server Authentication" in server
    client = openssl("x509", "-in", str(out / "grpc-client.crt"), "-noout", "-ext", "extendedKeyUsage")
    assert "TLS Web Client Authentication" in client
    # Named for the headless Service the sidecars dial.
    grpc = d.find("Service", "gatehouse-grpc")
    assert f"DNS:{grpc.name}.{grpc.namespace}.{CLUSTER_DOMAIN}" in server
    for key in ("session-key", "mask-token-key"):
        assert len(bytes.fromhex((out / key).read_text().strip())) == 32
    assert (out / "grpc-ca.key").stat().st_mode & 0o077 == 0


@pytest.mark.gateway
def test_the_service_reads_the_generated_checkpoint_key(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    subprocess.run(["bash", str(GEN_SECRETS), str(out)], check=True, capture_output=True, timeout=60)
    root = tmp_path / "pod"
    config = d.materialize(d.configmap_gatehouse_yaml(), root)
    key = Path(f"{root}/etc/gatehouse/checkpoint-key/checkpoint-key.pem")
    key.parent.mkdir(parents=True)
    shutil.copy(out / "checkpoint-key.pem", key)
    public = d.gatehouse("audit", "public-key", "--config", config, env={"POD_NAME": d.POD_NAME}).stdout
    expected = subprocess.run(
        ["openssl", "pkey", "-in", str(out / "checkpoint-key.pem"), "-pubout"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert public.strip() == expected.strip()


# --- the ConfigMap's gatehouse.yaml and what envoy-config renders from it ------------------------


@pytest.mark.gateway
def test_check_config_accepts_the_configmap(tmp_path: Path) -> None:
    config = d.materialize(d.configmap_gatehouse_yaml(), tmp_path)
    result = d.gatehouse("check-config", config, env={"POD_NAME": d.POD_NAME})
    assert result.stdout.strip().endswith(": OK"), result.stdout
    # The writer id needs the pod's name: without it the service refuses to start.
    env = {k: v for k, v in os.environ.items() if k != "POD_NAME"}
    unset = subprocess.run(
        [str(paths.gatehouse_bin()), "check-config", str(config)], capture_output=True, text=True, env=env
    )
    assert unset.returncode == 1
    assert "audit.writer_id" in unset.stderr and "POD_NAME" in unset.stderr


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return d.render_bootstrap(d.configmap_gatehouse_yaml(), tmp_path_factory.mktemp("render"))


def patches(envoyfilter: dict[str, Any], apply_to: str) -> list[dict[str, Any]]:
    return [p for p in envoyfilter["spec"]["configPatches"] if p["applyTo"] == apply_to]


def envoyfilter_problems(envoyfilter: dict[str, Any], bootstrap: dict[str, Any]) -> list[str]:
    """Where the EnvoyFilter differs from what envoy-config renders: the filter, ext_authz,
    the two clusters to the service, the local reply and the buffer limit must be the same;
    only the filter's code comes from the OCI image. Also: the order, the route's upstream."""
    problems = []
    want_wasm = d.rendered_filter(bootstrap, WASM_FILTER)["config"]
    (ecds,) = patches(envoyfilter, "EXTENSION_CONFIG")
    wasm_name = ecds["patch"]["value"]["name"]
    wasm = d.deep_copy(ecds["patch"]["value"]["typed_config"]["config"])
    code = wasm["vm_config"].pop("code")
    uri = code.get("remote", {}).get("http_uri", {}).get("uri", "")
    if not uri.startswith("oci://") or not uri.endswith(f"/gatehouse-filter:{cargo_version()}"):
        problems.append(f"wasm image {uri!r} is not gatehouse-filter:{cargo_version()}")
    want = d.deep_copy(want_wasm)
    want["vm_config"].pop("code")
    for key in sorted(wasm.keys() | want.keys()):
        if key == "configuration":
            have_plugin = json.loads(wasm[key]["value"])
            want_plugin = json.loads(want[key]["value"])
            for field in sorted(have_plugin.keys() | want_plugin.keys()):
                if have_plugin.get(field) != want_plugin.get(field):
                    problems.append(
                        f"plugin config {field}: {have_plugin.get(field)!r}, rendered {want_plugin.get(field)!r}"
                    )
        elif wasm.get(key) != want.get(key):
            problems.append(f"wasm {key}: {wasm.get(key)!r}, rendered {want.get(key)!r}")

    want_authz = d.rendered_filter(bootstrap, EXT_AUTHZ_FILTER)
    inserted = [p["patch"]["value"] for p in patches(envoyfilter, "HTTP_FILTER")]
    names = [v["name"] for v in inserted]
    (authz_value,) = [v for v in inserted if "typed_config" in v]
    authz = authz_value["typed_config"]
    for key in sorted(authz.keys() | want_authz.keys()):
        if authz.get(key) != want_authz.get(key):
            problems.append(f"ext_authz {key}: {authz.get(key)!r}, rendered {want_authz.get(key)!r}")
    if names != [wasm_name, authz_value["name"]]:
        problems.append(f"the filter must come first, then ext_authz: {names}")
    for p in patches(envoyfilter, "HTTP_FILTER"):
        sub = p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
        if (p["patch"]["operation"], sub) != ("INSERT_BEFORE", "envoy.filters.http.router"):
            problems.append(f"{p['patch']['value']['name']} is not inserted just before the router")

    clusters = {p["patch"]["value"]["name"]: p["patch"]["value"] for p in patches(envoyfilter, "CLUSTER")}
    plugin = json.loads(want_wasm["configuration"]["value"])
    for name in (want_authz["grpc_service"]["envoy_grpc"]["cluster_name"], plugin["ingest_cluster"]):
        if clusters.get(name) != d.rendered_cluster(bootstrap, name):
            problems.append(f"cluster {name} differs from the rendered one")
    for p in patches(envoyfilter, "CLUSTER"):
        if (p["match"].get("context"), p["patch"]["operation"]) != ("SIDECAR_OUTBOUND", "ADD"):
            problems.append(f"cluster {p['patch']['value']['name']}: not added to the sidecar's clusters")

    (vhost,) = patches(envoyfilter, "VIRTUAL_HOST")
    per_route = vhost["patch"]["value"]["typed_per_filter_config"]
    if set(per_route) != {authz_value["name"]}:
        problems.append(f"the route's ext_authz settings must be keyed {authz_value['name']}: {sorted(per_route)}")
    upstream = next(iter(per_route.values()))["check_settings"]["context_extensions"]["upstream"]
    if upstream not in {u["name"] for u in gatehouse_config()["upstreams"]}:
        problems.append(f"the route names upstream {upstream!r}, which gatehouse.yaml lacks")
    ports = {p["match"]["listener"]["portNumber"] for p in patches(envoyfilter, "HTTP_FILTER")}
    ports.add(vhost["match"]["routeConfiguration"]["portNumber"])
    if len(ports) != 1:
        problems.append(f"the patches name different ports: {sorted(ports)}")

    (hcm,) = patches(envoyfilter, "NETWORK_FILTER")
    if hcm["patch"]["value"]["typed_config"]["local_reply_config"] != d.rendered_hcm(bootstrap)["local_reply_config"]:
        problems.append("local_reply_config differs from the rendered one")
    (listener,) = patches(envoyfilter, "LISTENER")
    limit = listener["patch"]["value"]["per_connection_buffer_limit_bytes"]
    if limit != d.rendered_listener(bootstrap)["per_connection_buffer_limit_bytes"]:
        problems.append(f"per_connection_buffer_limit_bytes {limit} differs from the rendered one")
    return problems


@pytest.mark.gateway
def test_envoyfilter_carries_the_rendered_filter_and_ext_authz_settings(rendered: dict[str, Any]) -> None:
    envoyfilter = d.find("EnvoyFilter", "gatehouse-everything").doc
    assert envoyfilter_problems(envoyfilter, rendered) == []
    # What the comparison holds to, seen in the rendered config itself.
    wasm = d.rendered_filter(rendered, WASM_FILTER)["config"]
    assert (wasm["failure_policy"], wasm["allow_on_headers_stop_iteration"]) == ("FAIL_CLOSED", True)
    authz = d.rendered_filter(rendered, EXT_AUTHZ_FILTER)
    assert authz["failure_mode_allow"] is False
    assert authz["with_request_body"]["pack_as_bytes"] is True
    assert d.seconds(authz["grpc_service"]["timeout"]) * 1000 == gatehouse_config()["envoy"]["ext_authz_timeout_ms"]


def _mutations() -> list[tuple[str, Any, str]]:
    def wasm(doc: dict[str, Any]) -> dict[str, Any]:
        return patches(doc, "EXTENSION_CONFIG")[0]["patch"]["value"]["typed_config"]["config"]

    def authz(doc: dict[str, Any]) -> dict[str, Any]:
        return patches(doc, "HTTP_FILTER")[1]["patch"]["value"]["typed_config"]

    def plugin(doc: dict[str, Any], change) -> None:  # type: ignore[no-untyped-def]
        value = json.loads(wasm(doc)["configuration"]["value"])
        change(value)
        wasm(doc)["configuration"]["value"] = json.dumps(value)

    return [
        ("timeout", lambda doc: authz(doc)["grpc_service"].update(timeout="20s"), "ext_authz grpc_service"),
        ("fail open", lambda doc: authz(doc).update(failure_mode_allow=True), "ext_authz failure_mode_allow"),
        (
            "body limit",
            lambda doc: authz(doc)["with_request_body"].update(max_request_bytes=1048576),
            "ext_authz with_request_body",
        ),
        ("partial body", lambda doc: authz(doc)["with_request_body"].update(allow_partial_message=True), "with_req"),
        ("filter fails open", lambda doc: wasm(doc).update(failure_policy="FAIL_OPEN"), "wasm failure_policy"),
        (
            "no stop iteration",
            lambda doc: wasm(doc).pop("allow_on_headers_stop_iteration"),
            "wasm allow_on_headers_stop_iteration",
        ),
        (
            "ingest cluster",
            lambda doc: plugin(doc, lambda v: v.update(ingest_cluster="outbound|9091||gatehouse.gatehouse.svc")),
            "plugin config ingest_cluster",
        ),
        ("masking", lambda doc: plugin(doc, lambda v: v["masking"]["styles"].pop("email")), "plugin config masking"),
        ("order", lambda doc: doc["spec"]["configPatches"].insert(3, doc["spec"]["configPatches"].pop(4)), "first"),
        (
            "check cluster",
            lambda doc: authz(doc)["grpc_service"]["envoy_grpc"].update(cluster_name="outbound|9091||gatehouse"),
            "ext_authz grpc_service",
        ),
        (
            "breaker",
            lambda doc: patches(doc, "CLUSTER")[0]["patch"]["value"]["circuit_breakers"]["thresholds"][0].update(
                max_requests=1024
            ),
            "cluster gatehouse_grpc differs",
        ),
        (
            "client certificate",
            lambda doc: patches(doc, "CLUSTER")[1]["patch"]["value"].pop("transport_socket"),
            "cluster gatehouse_ingest differs",
        ),
    ]


@pytest.mark.gateway
@pytest.mark.parametrize(("change", "expected"), [(m[1], m[2]) for m in _mutations()], ids=[m[0] for m in _mutations()])
def test_envoyfilter_comparison_catches_a_changed_setting(rendered: dict[str, Any], change, expected: str) -> None:  # type: ignore[no-untyped-def]
    envoyfilter = d.deep_copy(d.find("EnvoyFilter", "gatehouse-everything").doc)
    change(envoyfilter)
    problems = envoyfilter_problems(envoyfilter, rendered)
    assert any(expected in p for p in problems), problems


@pytest.mark.gateway
def test_envoyfilter_is_what_the_generator_renders_now(rendered: dict[str, Any], tmp_path: Path) -> None:
    bootstrap = tmp_path / "envoy.yaml"
    bootstrap.write_text(yaml.safe_dump(rendered))
    result = subprocess.run(
        [
            sys.executable,
            str(RENDER_ENVOYFILTER),
            "--envoy-config",
            str(bootstrap),
            "--upstream",
            "everything",
            "--namespace",
            "mcp",
            "--workload",
            "mcp-everything",
            "--port",
            "3001",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == ENVOYFILTER.read_text(), (
        "deploy/istio/envoyfilter-everything.yaml is stale: regenerate it (deploy/README.md, "
        '"When gatehouse.yaml changes")'
    )


def test_the_sidecars_hold_the_files_their_clusters_read() -> None:
    """The clusters to the service read the client pair and the CA at gatehouse.yaml's paths:
    each must be mounted into the sidecar (only) of every MCP server, from the Secret."""
    envoyfilter = d.find("EnvoyFilter", "gatehouse-everything").doc
    files = set()
    for p in patches(envoyfilter, "CLUSTER"):
        context = p["patch"]["value"]["transport_socket"]["typed_config"]["common_tls_context"]
        files |= {context["validation_context"]["trusted_ca"]["filename"]}
        for pair in context["tls_certificates"]:
            files |= {pair["certificate_chain"]["filename"], pair["private_key"]["filename"]}
    tls = gatehouse_config()["service"]["grpc_tls"]
    assert files == {tls["ca_file"], tls["client_cert_file"], tls["client_key_file"]}
    example = d.find("Deployment", "mcp-everything")
    volumes = {v["name"]: v for v in pod_spec(example)["volumes"]}
    proxy = container(example, "istio-proxy")
    for path in sorted(files):
        folder, name = path.rsplit("/", 1)
        (mount,) = [m for m in proxy["volumeMounts"] if m["mountPath"] == folder]
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == "gatehouse-grpc-client", path
        assert name in [item["path"] for item in secret["items"]], path
    # The MCP server's own container mounts none of it.
    assert not container(example, "mcp-everything").get("volumeMounts")


def sidecar_bootstrap(
    envoyfilter: dict[str, Any],
    *,
    files: dict[str, str],
    listener_port: int = 0,
    admin_port: int = 0,
    service: tuple[str, int] | None = None,
    upstream_port: int = 9,
) -> dict[str, Any]:
    """The EnvoyFilter's pieces assembled as the sidecar holds them once Istio has applied it:
    on the inbound listener the filter (from a local file, where istio-agent puts the OCI
    image's), then ext_authz, before the router; the route's context extension; the local
    reply mapper; the buffer limit; and the two clusters to the service. `files`: where the
    files the sidecar mounts are here; `service`: another address for the service (else the
    headless Service's name, as in the cluster)."""
    wasm = d.deep_copy(patches(envoyfilter, "EXTENSION_CONFIG")[0]["patch"]["value"])
    wasm["typed_config"]["config"]["vm_config"]["code"] = {"local": {"filename": str(paths.gatehouse_wasm())}}
    chain = [
        wasm if "config_discovery" in p["patch"]["value"] else p["patch"]["value"]
        for p in patches(envoyfilter, "HTTP_FILTER")
    ]
    vhost = patches(envoyfilter, "VIRTUAL_HOST")[0]["patch"]["value"]
    hcm_patch = patches(envoyfilter, "NETWORK_FILTER")[0]["patch"]["value"]["typed_config"]
    listener_patch = patches(envoyfilter, "LISTENER")[0]["patch"]["value"]
    port = patches(envoyfilter, "HTTP_FILTER")[0]["match"]["listener"]["portNumber"]
    text = yaml.safe_dump([p["patch"]["value"] for p in patches(envoyfilter, "CLUSTER")])
    for mounted, here in files.items():
        text = text.replace(mounted, here)
    clusters = yaml.safe_load(text)
    if service:
        for c in clusters:
            c.update(type="STATIC")
            c.pop("dns_lookup_family", None)
            c.pop("dns_refresh_rate", None)
            address = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            address["socket_address"] = {"address": service[0], "port_value": service[1]}

    def address(p: int) -> dict[str, Any]:
        return {"socket_address": {"address": "127.0.0.1", "port_value": p}}

    inbound = f"inbound|{port}||"
    hcm = {
        **hcm_patch,
        "stat_prefix": f"inbound_0.0.0.0_{port}",
        "route_config": {
            "name": inbound,
            "virtual_hosts": [
                {
                    "name": f"inbound|http|{port}",
                    "domains": ["*"],
                    **vhost,
                    "routes": [
                        {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": inbound, "timeout": "0s"}}
                    ],
                }
            ],
        },
        "http_filters": [
            *chain,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    upstream = {
        "name": inbound,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": inbound,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(upstream_port)}}]}],
        },
    }
    return {
        "admin": {"address": address(admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "virtualInbound",
                    "address": address(listener_port),
                    **listener_patch,
                    "filter_chains": [{"filters": [{"name": d.HCM, "typed_config": hcm}]}],
                }
            ],
            "clusters": [*clusters, upstream],
        },
    }


def sidecar_files(secrets: Path) -> dict[str, str]:
    """gatehouse.yaml's client pair and CA (the sidecar's mounts) in a gen-secrets.sh folder."""
    tls = gatehouse_config()["service"]["grpc_tls"]
    return {
        tls["client_cert_file"]: str(secrets / "grpc-client.crt"),
        tls["client_key_file"]: str(secrets / "grpc-client.key"),
        tls["ca_file"]: str(secrets / "grpc-ca.crt"),
    }


@pytest.mark.gateway
def test_envoy_accepts_the_envoyfilter_as_the_sidecar_gets_it(tmp_path: Path) -> None:
    """Envoy 1.40 loads the EnvoyFilter's pieces, assembled as in the sidecar, with key
    material from gen-secrets.sh; the filter itself parses its configuration here (a bad
    field would stop Envoy)."""
    secrets = tmp_path / "secrets"
    subprocess.run(["bash", str(GEN_SECRETS), str(secrets)], check=True, capture_output=True, timeout=60)
    bootstrap = sidecar_bootstrap(d.find("EnvoyFilter", "gatehouse-everything").doc, files=sidecar_files(secrets))
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump(bootstrap))
    result = subprocess.run(
        [str(paths.envoy_bin()), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GATEHOUSE_MASK_TOKEN_KEY": (secrets / "mask-token-key").read_text().strip()},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK" in result.stdout


@pytest.mark.gateway
def test_the_sidecar_configuration_gates_calls_through_the_real_service(
    stack: Stack, procs: ProcessSet, tmp_path: Path
) -> None:
    """An Envoy running the EnvoyFilter's configuration, in front of a real MCP server and the
    real service (the stack's; its gRPC CA and client pair stand in for the Secret): an MCP
    call goes through, its request recorded by the Check and its answer's record shipped by
    the filter over gatehouse_ingest; without a token the caller gets the service's 401; a
    Host the ConfigMap does not allow gets the filter's 403."""
    tls = stack.dir / "tls"
    files = {
        "/etc/gatehouse/grpc-client/tls.crt": str(tls / "grpc-client.crt"),
        "/etc/gatehouse/grpc-client/tls.key": str(tls / "grpc-client.key"),
        "/etc/gatehouse/grpc-tls/ca.crt": str(tls / "grpc-ca.crt"),
    }
    assert set(files) == set(sidecar_files(tmp_path))
    listener_port, admin_port = free_port(), free_port()
    config = tmp_path / "sidecar.yaml"
    bootstrap = sidecar_bootstrap(
        d.find("EnvoyFilter", "gatehouse-everything").doc,
        files=files,
        listener_port=listener_port,
        admin_port=admin_port,
        service=("127.0.0.1", stack.grpc_port),
        upstream_port=stack.upstream_port,
    )
    config.write_text(yaml.safe_dump(bootstrap))
    # The filter reads the token key from its environment (the istio-proxy container's, on Istio).
    key = {"GATEHOUSE_MASK_TOKEN_KEY": "00" * 32, **envoy_env(stack.config_path)}
    start_envoy(procs, "envoy-sidecar", config, admin_port, env=key)
    url = f"http://127.0.0.1:{listener_port}/mcp"
    host = {"host": "mcp-everything.mcp.svc.cluster.local:3001"}

    answer = stack.post(initialize_request(), token=stack.token(), headers=host, url=url)
    assert answer.status_code == 200, answer.text
    record = stack.audit.wait_complete(answer.headers["x-gatehouse-request-id"])
    assert record["complete"] is True
    assert [r["data"]["upstream"] for r in record["records"] if r["kind"] == "request"] == ["everything"]

    anonymous = stack.post(initialize_request(), headers=host, url=url)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.json()["error"]["code"] == -32001

    foreign = stack.post(initialize_request(), token=stack.token(), headers={"host": "evil.example"}, url=url)
    assert foreign.status_code == 403, foreign.text


# --- the filter's OCI image ------------------------------------------------------------------------

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def blob(layout: Path, digest: str) -> bytes:
    algorithm, hexdigest = digest.split(":", 1)
    return (layout / "blobs" / algorithm / hexdigest).read_bytes()


def layout_problems(layout: Path, tag: str) -> list[str]:
    """Whether `layout` is a well-formed OCI image layout whose `tag` is an image istio-agent
    can take the filter from; the problems found."""
    problems = []
    layout_file = json.loads((layout / "oci-layout").read_text())
    problems += d.oci_schema_problems("oci-layout", layout_file)
    index = json.loads((layout / "index.json").read_text())
    problems += d.oci_schema_problems("index", index)
    # Every blob is named by its digest.
    for path in sorted((layout / "blobs" / "sha256").iterdir()):
        if hashlib.sha256(path.read_bytes()).hexdigest() != path.name:
            problems.append(f"blob {path.name} does not have that digest")

    def fetch(descriptor: dict[str, Any]) -> bytes:
        data = blob(layout, descriptor["digest"])
        if len(data) != descriptor["size"]:
            problems.append(f"{descriptor['digest']}: size {len(data)}, descriptor says {descriptor['size']}")
        if "sha256:" + hashlib.sha256(data).hexdigest() != descriptor["digest"]:
            problems.append(f"{descriptor['digest']}: content does not match its digest")
        return data

    tagged = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    if len(tagged) != 1:
        return [*problems, f"index.json has {len(tagged)} manifests tagged {tag}"]
    if tagged[0]["mediaType"] != OCI_MANIFEST:
        problems.append(f"manifest media type {tagged[0]['mediaType']}")
    manifest = json.loads(fetch(tagged[0]))
    problems += d.oci_schema_problems("manifest", manifest)
    if manifest.get("mediaType") != OCI_MANIFEST or manifest["config"]["mediaType"] != OCI_CONFIG:
        problems.append("the manifest and its config must have the OCI image media types")
    config = json.loads(fetch(manifest["config"]))
    problems += d.oci_schema_problems("config", config)
    layers = [fetch(layer) for layer in manifest["layers"]]
    if [layer["mediaType"] for layer in manifest["layers"]] != [OCI_LAYER]:
        problems.append(f"one {OCI_LAYER} layer expected: {[x['mediaType'] for x in manifest['layers']]}")
    if problems:
        return problems
    tar = gzip.decompress(layers[0])
    if config["rootfs"] != {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]}:
        problems.append("the config's diff_ids do not match the layer")
    return problems


def istio_extract(layout: Path, tag: str) -> bytes:
    """The Wasm module as istio-agent 1.30 takes it from an image (pkg/wasm/imagefetcher.go):
    a compat image's last layer, of type OCI tar+gzip, holding plugin.wasm; or an *oci*
    variant image of exactly two layers, one of type application/vnd.module.wasm.content.layer.v1+wasm."""
    index = json.loads((layout / "index.json").read_text())
    (ref,) = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag]
    layers = json.loads(blob(layout, ref["digest"]))["layers"]
    if not layers:
        raise ValueError("number of layers must be greater than zero")
    last = layers[-1]
    if last["mediaType"] == OCI_LAYER:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layout, last["digest"])))) as tar:
            for member in tar.getmembers():
                if Path(member.name).name == "plugin.wasm":
                    return tar.extractfile(member).read()  # type: ignore[union-attr]
        raise ValueError("plugin.wasm not found in the archive")
    if len(layers) != 2:
        raise ValueError(f"number of layers must be 2 but got {len(layers)}")
    for layer in layers:
        if layer["mediaType"] == "application/vnd.module.wasm.content.layer.v1+wasm":
            return blob(layout, layer["digest"])
    raise ValueError("could not find the layer of type application/vnd.module.wasm.content.layer.v1+wasm")


def write_layout(out: Path, tag: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(WASM_OCI), "--wasm", str(paths.gatehouse_wasm()), "--out", str(out), "--tag", tag],
        capture_output=True,
        text=True,
        check=True,
    )


@pytest.mark.gateway
def test_wasm_oci_writes_an_image_istio_takes_the_filter_from(tmp_path: Path) -> None:
    tag = cargo_version()
    layout = tmp_path / "gatehouse-filter"
    printed = write_layout(layout, tag).stdout
    assert layout_problems(layout, tag) == []
    assert istio_extract(layout, tag) == paths.gatehouse_wasm().read_bytes()
    # Reproducible: the same module gives the same manifest digest, and it is the one printed.
    index = json.loads((layout / "index.json").read_text())
    again = tmp_path / "again"
    write_layout(again, tag)
    assert json.loads((again / "index.json").read_text()) == index
    assert index["manifests"][0]["digest"] in printed
    # The manifests name the same image tag.
    envoyfilter = d.find("EnvoyFilter", "gatehouse-everything").doc
    uri = patches(envoyfilter, "EXTENSION_CONFIG")[0]["patch"]["value"]["typed_config"]["config"]["vm_config"]
    assert uri["code"]["remote"]["http_uri"]["uri"].endswith(f":{tag}")
    assert container(d.find("Deployment", "gatehouse"), "gatehouse")["image"].endswith(f":{tag}")


@pytest.mark.gateway
def test_layout_checks_catch_a_bad_image(tmp_path: Path) -> None:
    tag = cargo_version()
    layout = tmp_path / "gatehouse-filter"
    write_layout(layout, tag)
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads(blob(layout, manifest_digest))
    layer = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]
    good = layer.read_bytes()
    layer.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert any("does not have that digest" in p for p in layout_problems(layout, tag))
    layer.write_bytes(good)
    assert layout_problems(layout, "9.9.9") == ["index.json has 0 manifests tagged 9.9.9"]

    # A single raw-wasm layer (the "wasm OCI artifact" form) is neither of Istio's variants.
    wasm = paths.gatehouse_wasm().read_bytes()
    wasm_digest = "sha256:" + hashlib.sha256(wasm).hexdigest()
    (layout / "blobs" / "sha256" / wasm_digest.split(":")[1]).write_bytes(wasm)
    manifest["layers"] = [
        {"mediaType": "application/vnd.module.wasm.content.layer.v1+wasm", "digest": wasm_digest, "size": len(wasm)}
    ]
    artifact = json.dumps(manifest).encode()
    artifact_digest = "sha256:" + hashlib.sha256(artifact).hexdigest()
    (layout / "blobs" / "sha256" / artifact_digest.split(":")[1]).write_bytes(artifact)
    index["manifests"][0].update(digest=artifact_digest, size=len(artifact))
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="number of layers must be 2 but got 1"):
        istio_extract(layout, tag)
    assert any("one application/vnd.oci.image.layer.v1.tar+gzip layer" in p for p in layout_problems(layout, tag))


def test_make_wasm_oci_writes_the_layout_the_docs_push() -> None:
    # Alone, not as a sub-make of `make test` (whose flags would add "Entering directory" lines).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "wasm-oci"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    assert "cargo build -p gatehouse-filter --target wasm32-wasip1 --release" in dry
    command = dry.splitlines()[-1]
    assert "deploy/wasm_oci.py" in command
    assert "--out target/oci/gatehouse-filter" in command
    assert command.endswith(f"--tag {cargo_version()}")
    assert f"oras cp --from-oci-layout target/oci/gatehouse-filter:{cargo_version()}" in README.read_text()


@pytest.mark.gateway
@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed (apt-get install skopeo)")
def test_skopeo_reads_and_copies_the_layout(tmp_path: Path) -> None:
    # An independent reader (containers/image, Go): it checks every digest while copying.
    tag = cargo_version()
    layout = tmp_path / "gatehouse-filter"
    write_layout(layout, tag)
    inspect = subprocess.run(
        ["skopeo", "inspect", f"oci:{layout}:{tag}"], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(inspect)["Os"] == "wasip1"
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"dir:{tmp_path / 'copy'}"],
        capture_output=True,
        text=True,
        check=True,
    )
