"""The deployment manifests under deploy/, read and checked offline.

Kubernetes kinds are validated with `kubernetes-validate` (the API's own schemas, strict:
unknown fields are errors); Istio kinds with Istio's CRD schemas vendored in
tests/fixtures/istio-crds (unknown fields are errors unless the schema keeps them, as the
API server's strict field validation does) and Python equivalents of their CEL rules.
Each check returns the problems it found, so a test can show that a broken manifest is caught.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
import referencing.jsonschema
import yaml

from harness import paths

DEPLOY = paths.REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
ISTIO = DEPLOY / "istio"
FIXTURES = paths.REPO / "tests" / "fixtures"
ISTIO_CRDS = FIXTURES / "istio-crds"
OCI_SCHEMAS = FIXTURES / "oci-image-spec"

# Where the Deployment mounts the ConfigMap and the Secrets; every file gatehouse.yaml names
# is under it.
MOUNT_ROOT = "/etc/gatehouse/"
CONFIG_PATH = "/etc/gatehouse/config/gatehouse.yaml"
# A pod name as a Deployment makes them (the writer id is derived from it).
POD_NAME = "gatehouse-7d9f8c6b5-x2x8q"


@dataclass(frozen=True)
class Manifest:
    path: Path
    index: int  # position in a multi-document file
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.doc.get("kind", "")

    @property
    def name(self) -> str:
        return self.doc.get("metadata", {}).get("name", "")

    @property
    def namespace(self) -> str | None:
        return self.doc.get("metadata", {}).get("namespace")

    def __str__(self) -> str:
        return f"{self.path.relative_to(paths.REPO)}[{self.index}] {self.kind}/{self.name}"


def load(path: Path) -> list[Manifest]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return [Manifest(path, i, d) for i, d in enumerate(docs)]


def manifests(folder: Path) -> list[Manifest]:
    return [m for path in sorted(folder.glob("*.yaml")) for m in load(path)]


def all_manifests() -> list[Manifest]:
    return [m for m in manifests(KUBERNETES) + manifests(ISTIO) if m.kind != "Kustomization"]


def find(kind: str, name: str, where: list[Manifest] | None = None) -> Manifest:
    found = [m for m in (where if where is not None else all_manifests()) if m.kind == kind and m.name == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} manifests"
    return found[0]


# --- the service's configuration ----------------------------------------------------------


def configmap_gatehouse_yaml() -> str:
    return find("ConfigMap", "gatehouse-config").doc["data"]["gatehouse.yaml"]


def mounted_paths(text: str) -> list[str]:
    """Every absolute path under the mount root that the config names."""
    return sorted(set(re.findall(r"/etc/gatehouse/[\w./-]+", text)))


def materialize(text: str, root: Path) -> Path:
    """Writes gatehouse.yaml as the pod sees it, with the pod's /etc/gatehouse moved under
    `root`, so that the binary can be run on it here. Returns the file's path."""
    moved = text.replace(MOUNT_ROOT, f"{root}{MOUNT_ROOT}")
    config = Path(f"{root}{CONFIG_PATH}")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(moved)
    return config


def gatehouse(*args: object, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(paths.gatehouse_bin()), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    if check:
        assert result.returncode == 0, f"gatehouse {' '.join(map(str, args))}:\n{result.stdout}{result.stderr}"
    return result


def render_bootstrap(text: str, root: Path) -> dict[str, Any]:
    """What `gatehouse envoy-config` renders for gatehouse.yaml `text` in the pod (where the
    README renders it), its file paths as the pod sees them."""
    config = materialize(text, root)
    # On standard output, as the README renders it for the sidecar: the certificates inline
    # (`--out` would point them at SDS files next to the output, for a standalone Envoy).
    rendered = gatehouse("envoy-config", "--config", config, env={"POD_NAME": POD_NAME}).stdout
    return yaml.safe_load(rendered.replace(f"{root}{MOUNT_ROOT}", MOUNT_ROOT))


def rendered_listener(bootstrap: dict[str, Any]) -> dict[str, Any]:
    return bootstrap["static_resources"]["listeners"][0]


def rendered_hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    return rendered_listener(bootstrap)["filter_chains"][0]["filters"][0]["typed_config"]


def rendered_filter(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [f for f in rendered_hcm(bootstrap)["http_filters"] if f["name"] == name]
    return found["typed_config"]


def rendered_cluster(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == name]
    return found


def seconds(duration: str) -> float:
    """A protobuf JSON duration ("30s", "0.5s") or a Go one ("1m30s", "500ms") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"{duration!r} is not a duration")
    return sum(float(n) * units[u] for n, u in parts)


# --- Kubernetes schemas ------------------------------------------------------------------

# The oldest and the newest Kubernetes release this deployment is checked against: the
# oldest has everything it uses (the preStop sleep action, PDB unhealthyPodEvictionPolicy),
# the newest is the latest kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.31", "1.37")


def kubernetes_problems(m: Manifest, version: str) -> list[str]:
    try:
        kubernetes_validate.validate(m.doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        return [f"{m}: Kubernetes {version}: {where}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{m}: {e.message}"]
    return []


# --- Istio CRD schemas --------------------------------------------------------------------


@dataclass(frozen=True)
class Crd:
    group: str
    version: str
    kind: str
    schema: dict[str, Any]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def istio_crds() -> dict[tuple[str, str], Crd]:
    crds = {}
    for path in sorted(ISTIO_CRDS.glob("*.json")):
        raw = json.loads(path.read_text())
        crd = Crd(raw["group"], raw["version"], raw["kind"], raw["openAPIV3Schema"])
        crds[(crd.api_version, crd.kind)] = crd
    return crds


def strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it with strict field validation: an object
    that lists its properties takes no others unless it says x-kubernetes-preserve-unknown-fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_validator(crd: Crd) -> jsonschema.protocols.Validator:
    schema = strict(crd.schema)
    # The root also carries what every object has (ObjectMeta is checked by the API server).
    schema.setdefault("properties", {}).update(
        {
            "apiVersion": {"type": "string", "enum": [crd.api_version]},
            "kind": {"type": "string", "enum": [crd.kind]},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
                    "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        }
    )
    return jsonschema.Draft7Validator(schema)


def _duration_at_least_1ms(value: Any) -> bool:
    try:
        return seconds(value) >= 0.001
    except (TypeError, ValueError):
        return False


def _one_of(*fields: str):
    return lambda v: sum(f in v for f in fields) <= 1


# The CEL rules of the vendored schemas (x-kubernetes-validations), each as Python.
CEL_RULES: dict[str, Any] = {
    "duration(self) >= duration('1ms')": _duration_at_least_1ms,
    '!self.contains("*")': lambda v: "*" not in v,
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1": _one_of(
        "workloadSelector", "targetRefs"
    ),
    "0 < self && self <= 65535": lambda v: 0 < v <= 65535,
    'has(self.context) ? ((self.context == "WAYPOINT") ? has(self.waypoint) : !has(self.waypoint)) '
    ": !has(self.waypoint)": lambda v: ("waypoint" in v) == (v.get("context") == "WAYPOINT"),
    "self.size() == 0": lambda v: len(v) == 0,
    "(has(self.credentialName) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1": _one_of(
        "credentialName", "credentialNames"
    ),
    "(has(self.credentialNames) ? 1 : 0) + (has(self.tlsCertificates) ? 1 : 0) <= 1": _one_of(
        "credentialNames", "tlsCertificates"
    ),
    "(has(self.tlsCertificates) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1": _one_of(
        "tlsCertificates", "credentialNames"
    ),
}


def _cel_problems(schema: Any, value: Any, where: str) -> Iterator[str]:
    if not isinstance(schema, dict):
        return
    for rule in schema.get("x-kubernetes-validations", []):
        check = CEL_RULES.get(rule["rule"])
        if check is None:
            yield f"{where}: no Python equivalent for the CEL rule {rule['rule']!r}: add one to CEL_RULES"
        elif not check(value):
            yield f"{where}: {rule.get('message', rule['rule'])}"
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                yield from _cel_problems(sub, item, f"{where}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _cel_problems(schema["items"], item, f"{where}[{i}]")


HCM = "envoy.filters.network.http_connection_manager"
LISTENER_CLASS = {"LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER"}
ROUTE_CLASS = {"ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE"}


def envoyfilter_istiod_problems(spec: dict[str, Any]) -> Iterator[str]:
    """istiod's own checks of an EnvoyFilter beyond its schema (Istio 1.30.3,
    pkg/config/validation/envoyfilter/envoyfilter.go) that these manifests could break;
    that each patch value is a valid Envoy object is left to Envoy (the test validates it)."""
    if "workloadSelector" in spec and not spec["workloadSelector"].get("labels"):
        yield "spec.workloadSelector: no labels: it would apply to every workload in the namespace"
    for i, cp in enumerate(spec.get("configPatches", [])):
        at = f"spec.configPatches[{i}]"
        apply_to, patch, match = cp.get("applyTo"), cp.get("patch") or {}, cp.get("match") or {}
        if not apply_to:
            yield f"{at}: missing applyTo"
        if not patch.get("operation"):
            yield f"{at}: missing patch operation"
        elif patch["operation"] != "REMOVE" and not patch.get("value"):
            yield f"{at}: missing patch value for non-remove operation"
        if apply_to == "EXTENSION_CONFIG" and patch.get("operation") != "ADD":
            yield f"{at}: istiod applies only ADD to EXTENSION_CONFIG"
        if apply_to in LISTENER_CLASS and ({"routeConfiguration", "cluster"} & match.keys()):
            yield f"{at}: applyTo for listener class objects cannot have non listener match"
        if apply_to in ROUTE_CLASS and ({"listener", "cluster"} & match.keys()):
            yield f"{at}: applyTo for http route class objects cannot have non route configuration match"
        network = match.get("listener", {}).get("filterChain", {}).get("filter")
        if network is not None:
            if not network.get("name"):
                yield f"{at}: filter match has no name to match on"
            sub = network.get("subFilter")
            if sub is not None:
                if apply_to != "HTTP_FILTER":
                    yield f"{at}: subfilter match can be used with applyTo HTTP_FILTER only"
                if network.get("name") != HCM:
                    yield f"{at}: subfilter match requires filter match with {HCM}"
                if not sub.get("name"):
                    yield f"{at}: subfilter match has no name to match on"


def istio_problems(m: Manifest, crds: dict[tuple[str, str], Crd] | None = None) -> list[str]:
    crds = crds if crds is not None else istio_crds()
    crd = crds.get((m.doc.get("apiVersion", ""), m.kind))
    if crd is None:
        return [f"{m}: no vendored schema for {m.doc.get('apiVersion')} {m.kind}"]
    problems = [
        f"{m}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in crd_validator(crd).iter_errors(m.doc)
    ]
    problems += [f"{m}: {p}" for p in _cel_problems(crd.schema, m.doc, "")]
    if m.kind == "EnvoyFilter" and not problems:
        problems += [f"{m}: {p}" for p in envoyfilter_istiod_problems(m.doc["spec"])]
    return problems


def is_istio(m: Manifest) -> bool:
    return m.doc.get("apiVersion", "").split("/")[0].endswith(".istio.io")


# --- OCI image layout ------------------------------------------------------------------------

OCI_SCHEMA_FILES = {
    "oci-layout": "image-layout-schema.json",
    "index": "image-index-schema.json",
    "manifest": "image-manifest-schema.json",
    "config": "config-schema.json",
}


def _oci_registry() -> referencing.Registry:
    # The schemas' ids and $refs do not share one base: resolve any URI by its file name.
    def retrieve(uri: str) -> referencing.Resource:
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        contents = json.loads((OCI_SCHEMAS / name).read_text())
        return referencing.Resource.from_contents(contents, default_specification=referencing.jsonschema.DRAFT4)

    return referencing.Registry(retrieve=retrieve)


def oci_schema_problems(what: str, document: Any) -> list[str]:
    schema = json.loads((OCI_SCHEMAS / OCI_SCHEMA_FILES[what]).read_text())
    validator = jsonschema.Draft4Validator(schema, registry=_oci_registry())
    return [
        f"{what}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def deep_copy(value: Any) -> Any:
    return copy.deepcopy(value)
