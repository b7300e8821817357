"""Starting Envoy, a plain (Gatehouse-free) Envoy config, and admin-API helpers.

The plain config is a bare HTTP proxy: one listener, one route, one cluster. It is the
baseline the gateway is compared with (conformance, benchmarks) and, with
`request_headers_to_add`, the hop that gives a token-less client (the conformance
suite) a bearer token in front of the gateway.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from . import paths
from .procs import Proc, ProcessSet

_base_ids = itertools.count(1)


def plain_envoy_config(
    *,
    listen_port: int,
    admin_port: int,
    upstream_port: int,
    upstream_host: str = "127.0.0.1",
    cluster: str = "upstream",
    host_rewrite: str | None = None,
    request_headers_to_add: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Envoy bootstrap: 127.0.0.1:listen_port → upstream_host:upstream_port (HTTP/1.1).

    `host_rewrite` sets the Host the upstream sees (MCP servers with DNS-rebinding
    protection accept only their own host). Routes have no timeout (SSE streams live
    long); the stream idle timeout ends forgotten streams.
    """
    route: dict[str, Any] = {"cluster": cluster, "timeout": "0s", "idle_timeout": "300s"}
    if host_rewrite:
        route["host_rewrite_literal"] = host_rewrite
    route_entry: dict[str, Any] = {"match": {"prefix": "/"}, "route": route}
    if request_headers_to_add:
        route_entry["request_headers_to_add"] = [
            {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for k, v in request_headers_to_add.items()
        ]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "plain",
        "stream_idle_timeout": "300s",
        "access_log": [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
                },
            }
        ],
        "route_config": {
            "name": "plain",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route_entry]}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    return {
        "admin": {"address": _addr("127.0.0.1", admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "plain",
                    "address": _addr("127.0.0.1", listen_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": cluster,
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "load_assignment": {
                        "cluster_name": cluster,
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": _addr(upstream_host, upstream_port)}}]}
                        ],
                    },
                }
            ],
        },
    }


def _addr(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def write_config(config: Mapping[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def start_envoy(
    procs: ProcessSet, name: str, config_path: Path, admin_port: int, env: Mapping[str, str] | None = None
) -> Proc:
    """Start Envoy on `config_path` and wait until its admin API says LIVE.

    Several Envoys run side by side (parallel stacks), so each gets its own
    `--base-id` (hot-restart shared memory and socket names) and admin port.
    `env`: added to Envoy's environment (the masking token key reaches the filter this way).
    """
    proc = procs.start(
        name,
        [
            paths.envoy_bin(),
            "-c",
            config_path,
            "--base-id",
            str(_unique_base_id(admin_port)),
            "--log-level",
            "info",
            "--concurrency",
            "2",
        ],
        env=env,
    )
    proc.wait_http(f"http://127.0.0.1:{admin_port}/ready", ok=lambda r: r.status_code == 200)
    return proc


def _unique_base_id(admin_port: int) -> int:
    # The admin port is unique among running Envoys; the counter keeps ids distinct
    # within this run even if a port is reused later.
    return admin_port * 100 + next(_base_ids) % 100


class EnvoyAdmin:
    def __init__(self, admin_port: int) -> None:
        self.url = f"http://127.0.0.1:{admin_port}"

    def stats(self, pattern: str = "") -> dict[str, int]:
        """Counters and gauges whose name matches the regex `pattern`."""
        resp = httpx.get(f"{self.url}/stats", params={"filter": pattern} if pattern else None, timeout=5)
        resp.raise_for_status()
        out: dict[str, int] = {}
        for line in resp.text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def cluster_for_port(self, port: int) -> str:
        """Name of the cluster whose endpoint is 127.0.0.1:port (names are the config's business)."""
        resp = httpx.get(f"{self.url}/clusters", timeout=5)
        resp.raise_for_status()
        for line in resp.text.splitlines():
            m = re.match(r"^([^:]+)::127\.0\.0\.1:(\d+)::", line)
            if m and int(m.group(2)) == port:
                return m.group(1)
        raise AssertionError(f"No Envoy cluster has an endpoint 127.0.0.1:{port}:\n{resp.text[:2000]}")

    def upstream_rq_total(self, port: int) -> int:
        """How many requests Envoy has sent to the upstream listening on `port`."""
        cluster = self.cluster_for_port(port)
        key = f"cluster.{cluster}.upstream_rq_total"
        return self.stats(f"^{re.escape(key)}$").get(key, 0)


def main() -> None:
    """Print a plain Envoy bootstrap (benchmark baseline, or a token-adding hop):

    PYTHONPATH=tests .tools/venv/bin/python -m harness.envoy --listen 8090 --admin 9902 --upstream 3001 \\
        [--host-rewrite 127.0.0.1:3001] [--header "authorization=Bearer $TOKEN"] > plain.yaml
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=int, required=True, help="listener port on 127.0.0.1")
    parser.add_argument("--admin", type=int, required=True, help="admin port on 127.0.0.1")
    parser.add_argument("--upstream", type=int, required=True, help="upstream port on 127.0.0.1")
    parser.add_argument("--host-rewrite", help="Host header sent upstream")
    parser.add_argument("--header", action="append", default=[], help="NAME=VALUE added to every request")
    args = parser.parse_args()
    headers = dict(h.split("=", 1) for h in args.header)
    config = plain_envoy_config(
        listen_port=args.listen,
        admin_port=args.admin,
        upstream_port=args.upstream,
        host_rewrite=args.host_rewrite,
        request_headers_to_add=headers or None,
    )
    yaml.safe_dump(config, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
