#!/usr/bin/env python3
"""Writes the Istio EnvoyFilter that puts Gatehouse in front of one MCP server.

Everything in it is copied from what `gatehouse envoy-config` renders from gatehouse.yaml:
the filter's configuration, ext_authz, and the two clusters that carry Checks and the
filter's records to the service (mTLS with the service's own CA, circuit breakers, health
checks). The sidecar then runs what a standalone Envoy runs; only the filter's code comes
from the OCI image, and the filters sit in the sidecar's inbound chain (deploy/README.md).

    kubectl -n gatehouse exec deploy/gatehouse -- \\
        gatehouse envoy-config --config /etc/gatehouse/config/gatehouse.yaml > envoy.yaml
    python3 deploy/istio/render_envoyfilter.py --envoy-config envoy.yaml \\
        --upstream everything --namespace mcp --workload mcp-everything --port 3001 \\
        > deploy/istio/envoyfilter-everything.yaml

Needs Python 3.9+ and PyYAML.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

WASM_FILTER = "envoy.filters.http.wasm"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
# The clusters envoy-config renders for the service (gatehouse_grpc: Checks;
# gatehouse_ingest: the filter's records).
SERVICE_CLUSTERS = ("gatehouse_grpc", "gatehouse_ingest")
HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
# The names of the two filters in the sidecar's chain: Gatehouse's own, so that they never
# collide with an ext_authz filter Istio adds for an AuthorizationPolicy with action CUSTOM.
FILTER_NAME = "gatehouse.wasm"
AUTHZ_NAME = "gatehouse.ext_authz"
# The label of MCP servers behind Gatehouse (the EnvoyFilter and the NetworkPolicy select it).
MCP_SERVER_LABEL = "gatehouse.io/mcp-server"


def rendered_parts(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """The pieces of a rendered bootstrap that the sidecar needs: the first MCP listener's
    wasm and ext_authz filters, its local reply mapper, its buffer limit, and the name of
    each upstream's route."""
    listener = bootstrap["static_resources"]["listeners"][0]
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = {f["name"]: f for f in hcm["http_filters"]}
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    upstreams = {}
    for route in routes:
        extension = route.get("typed_per_filter_config", {}).get(EXT_AUTHZ_FILTER, {})
        name = extension.get("check_settings", {}).get("context_extensions", {}).get("upstream")
        if name:
            upstreams[name] = route
    return {
        "wasm": filters[WASM_FILTER]["typed_config"],
        "ext_authz": filters[EXT_AUTHZ_FILTER]["typed_config"],
        "local_reply_config": hcm["local_reply_config"],
        "buffer_limit": listener["per_connection_buffer_limit_bytes"],
        "upstreams": upstreams,
        "clusters": [clusters[name] for name in SERVICE_CLUSTERS],
    }


def envoy_filter(
    bootstrap: dict[str, Any],
    *,
    upstream: str,
    namespace: str,
    workload: str,
    port: int,
    image: str,
) -> dict[str, Any]:
    parts = rendered_parts(bootstrap)
    if upstream not in parts["upstreams"]:
        known = ", ".join(sorted(parts["upstreams"])) or "none"
        raise SystemExit(f"error: gatehouse.yaml has no upstream {upstream!r} (it has: {known})")
    for cluster in parts["clusters"]:
        for address in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
            host = address["endpoint"]["address"]["socket_address"]["address"]
            if host in ("0.0.0.0", "::") or host.startswith("127."):
                raise SystemExit(
                    f"error: the service is reached at {host}: set service.grpc_endpoints in gatehouse.yaml "
                    "to the service's headless Service (deploy/kubernetes/configmap.yaml)"
                )

    wasm = copy.deepcopy(parts["wasm"])
    # istio-agent fetches the OCI image and hands Envoy a local file (FAIL_CLOSED: if it
    # cannot, the agent puts a deny-all filter in its place). The cluster is never used.
    wasm["config"]["vm_config"]["code"] = {
        "remote": {"http_uri": {"uri": image, "cluster": "_", "timeout": "30s"}},
    }

    inbound = {
        "context": "SIDECAR_INBOUND",
        "listener": {
            "portNumber": port,
            "filterChain": {"filter": {"name": HCM_FILTER, "subFilter": {"name": ROUTER_FILTER}}},
        },
    }
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {
            "name": f"gatehouse-{upstream}",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "gatehouse", "gatehouse.io/upstream": upstream},
        },
        "spec": {
            "workloadSelector": {
                "labels": {"app.kubernetes.io/name": workload, MCP_SERVER_LABEL: "true"},
            },
            "configPatches": [
                # The service's two clusters, as rendered: Checks, and the filter's records.
                *(
                    {
                        "applyTo": "CLUSTER",
                        "match": {"context": "SIDECAR_OUTBOUND"},
                        "patch": {"operation": "ADD", "value": cluster},
                    }
                    for cluster in parts["clusters"]
                ),
                # The filter's configuration, served to the sidecar over ECDS.
                {
                    "applyTo": "EXTENSION_CONFIG",
                    "patch": {"operation": "ADD", "value": {"name": FILTER_NAME, "typed_config": wasm}},
                },
                # Then, just before the router: the filter, then ext_authz.
                {
                    "applyTo": "HTTP_FILTER",
                    "match": inbound,
                    "patch": {
                        "operation": "INSERT_BEFORE",
                        "value": {
                            "name": FILTER_NAME,
                            "config_discovery": {
                                "config_source": {"ads": {}, "initial_fetch_timeout": "0s"},
                                "type_urls": [WASM_TYPE, RBAC_TYPE],
                            },
                        },
                    },
                },
                {
                    "applyTo": "HTTP_FILTER",
                    "match": inbound,
                    "patch": {
                        "operation": "INSERT_BEFORE",
                        "value": {"name": AUTHZ_NAME, "typed_config": parts["ext_authz"]},
                    },
                },
                # Which upstream this port is, for the Check (a route's context extension).
                {
                    "applyTo": "VIRTUAL_HOST",
                    "match": {"context": "SIDECAR_INBOUND", "routeConfiguration": {"portNumber": port}},
                    "patch": {
                        "operation": "MERGE",
                        "value": {
                            "typed_per_filter_config": {
                                AUTHZ_NAME: {
                                    "@type": PER_ROUTE_TYPE,
                                    "check_settings": {"context_extensions": {"upstream": upstream}},
                                },
                            },
                        },
                    },
                },
                # A JSON-RPC error, not an empty body, when the service cannot be reached.
                {
                    "applyTo": "NETWORK_FILTER",
                    "match": {
                        "context": "SIDECAR_INBOUND",
                        "listener": {"portNumber": port, "filterChain": {"filter": {"name": HCM_FILTER}}},
                    },
                    "patch": {
                        "operation": "MERGE",
                        "value": {
                            "typed_config": {"@type": HCM_TYPE, "local_reply_config": parts["local_reply_config"]},
                        },
                    },
                },
                # Room for a whole JSON answer to be held and masked, and for an oversized
                # request to get the filter's JSON-RPC 413.
                {
                    "applyTo": "LISTENER",
                    "match": {"context": "SIDECAR_INBOUND", "listener": {"name": "virtualInbound"}},
                    "patch": {
                        "operation": "MERGE",
                        "value": {"per_connection_buffer_limit_bytes": parts["buffer_limit"]},
                    },
                },
            ],
        },
    }


HEADER = """\
# Generated by deploy/istio/render_envoyfilter.py from what `gatehouse envoy-config` renders
# for deploy/kubernetes/configmap.yaml; regenerate it when gatehouse.yaml changes (the
# commands are in deploy/README.md). One per MCP server behind Gatehouse.
#
# Puts Gatehouse on the sidecar's inbound port {port} of the pods labelled
# app.kubernetes.io/name={workload} and {label}=true: the wasm filter
# (from the OCI image, FAIL_CLOSED, allow_on_headers_stop_iteration), then ext_authz to the
# service (failure_mode_allow false, the request body as bytes), just before the router;
# the route names the upstream "{upstream}" for the Check. The two clusters to the service
# present the client certificate the pod mounts into its sidecar (example-mcp-server.yaml).
"""


class _Dumper(yaml.SafeDumper):
    """Writes repeated values out in full: no YAML anchors in a manifest people read."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envoy-config", type=Path, required=True, help="the output of `gatehouse envoy-config`")
    parser.add_argument("--upstream", required=True, help="the upstream's name in gatehouse.yaml")
    parser.add_argument("--namespace", required=True, help="the MCP server's namespace")
    parser.add_argument("--workload", required=True, help="the MCP server pods' app.kubernetes.io/name label")
    parser.add_argument("--port", type=int, required=True, help="the MCP server's port (its sidecar's inbound port)")
    parser.add_argument(
        "--image",
        default="oci://registry.example.com/gatehouse/gatehouse-filter:0.1.0",
        help="the filter's OCI image (make wasm-oci; deploy/README.md)",
    )
    args = parser.parse_args(argv)

    bootstrap = yaml.safe_load(args.envoy_config.read_text())
    manifest = envoy_filter(
        bootstrap,
        upstream=args.upstream,
        namespace=args.namespace,
        workload=args.workload,
        port=args.port,
        image=args.image,
    )
    sys.stdout.write(
        HEADER.format(port=args.port, workload=args.workload, label=MCP_SERVER_LABEL, upstream=args.upstream)
    )
    sys.stdout.write(yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100))
    return 0


if __name__ == "__main__":
    sys.exit(main())
