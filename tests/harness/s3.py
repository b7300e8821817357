"""S3 for the archive (`archive:`): moto's S3 served in this process on a free port.

`S3Server` serves moto on 127.0.0.1 (path-style, any access key: moto's authentication is
off), keeps every PutObject as it arrived (headers and body) so that a test can check what
AWS would ask of it (the checksum Object Lock requires, the retention headers, the SigV4
signature, checked with botocore), and can be stopped and started again on the same port
with the same buckets (a dependency that dies for a while). `env()` is the environment the
gateway and the CLI must run with: the test key, nothing else of AWS.

    s3 = S3Server()
    bucket = s3.create_locked_bucket()      # Object Lock on (and so versioning)
    ... make_stack(archive={"s3": {"bucket": bucket, "endpoint": s3.url, ...}})

moto keeps its state per process. `S3Server` never resets it (each bucket has a fresh name);
`harness.aws.AwsSts` does reset it when it starts and turns IAM authentication on while it
runs, which this server's key would fail: do not use the two in one test.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import io
import json
import ssl
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from .aws import AWS_ENV_VARS
from .procs import free_port

ACCESS_KEY_ID = "AKIAGATEHOUSEARCHIVE"
SECRET_ACCESS_KEY = "archive-test-secret-key"
REGION = "us-east-1"

_UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>S3 is down (test)</Message></Error>"
)


@dataclass
class Put:
    """A PutObject as it arrived."""

    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def key(self) -> str:
        """The object's key ("" for a bucket's own PUT)."""
        return self.path.split("?")[0].lstrip("/").partition("/")[2]

    def signature_valid(self, port: int) -> bool:
        """Whether botocore, an implementation independent of the gateway's, computes the
        same SigV4 signature over what arrived with the test's secret key."""
        auth = self.headers.get("authorization", "")
        fields = dict(p.strip().partition("=")[::2] for p in auth.partition(" ")[2].split(","))
        signed = fields.get("SignedHeaders", "").split(";")
        request = AWSRequest(
            method="PUT",
            url=f"http://127.0.0.1:{port}{self.path}",
            headers={name: self.headers[name] for name in signed if name in self.headers},
            data=self.body,
        )
        request.context["timestamp"] = self.headers.get("x-amz-date", "")
        signer = S3SigV4Auth(Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY), "s3", REGION)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        return hmac.compare_digest(expected, fields.get("Signature", ""))


class S3Server:
    """moto's S3 on 127.0.0.1:`port` (in this process), stoppable."""

    def __init__(self, tls_dir: Path | None = None) -> None:
        """`tls_dir`: serve HTTPS with its server.crt and server.key (scripts/gen-tls.sh;
        clients trust its ca.crt)."""
        self.tls_dir = tls_dir
        self.port = free_port()
        self.down = False
        self._lock = threading.Lock()
        self._puts: list[Put] = []
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_dir else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Serves (again, on the same port, with the buckets as they were)."""
        self.down = False
        context = None
        if self.tls_dir:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls_dir / "server.crt", self.tls_dir / "server.key")
        self._server = make_server(
            "127.0.0.1", self.port, self._wsgi, threaded=True, request_handler=_Quiet, ssl_context=context
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """S3 is down: new connections are refused, and a request on a connection kept
        alive from before gets a 503 and the connection closed, until `start()`."""
        self.down = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.stop()

    def env(self, tmp_dir: Path) -> dict[str, str | None]:
        """What the gateway's (and the CLI's) environment must be: the test key and region,
        nothing else of AWS (None: unset)."""
        env: dict[str, str | None] = dict.fromkeys(AWS_ENV_VARS)
        env.update(
            AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
            AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
            AWS_REGION=REGION,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(tmp_dir / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(tmp_dir / "no-aws-credentials"),
        )
        return env

    def client(self) -> Any:
        """A boto3 S3 client on this server (what a test, or an attacker, does with the bucket)."""
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            verify=str(self.tls_dir / "ca.crt") if self.tls_dir else None,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def create_locked_bucket(self, name: str | None = None) -> str:
        """A new bucket with Object Lock enabled (S3 turns versioning on with it); no default
        retention, so what the archive does not lock is not locked."""
        name = name or f"gatehouse-archive-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        return name

    def puts(self) -> list[Put]:
        """Every PutObject so far, in arrival order (bucket PUTs left out)."""
        with self._lock:
            return [p for p in self._puts if p.key]

    # --- reading and changing a bucket as a test (or an attacker) would ---------------------
    def versions(self, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
        """Every version and delete marker under `prefix` (a marker has "DeleteMarker": True)."""
        s3, out = self.client(), []
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
            out += [{**v, "DeleteMarker": False} for v in page.get("Versions", [])]
            out += [{**m, "DeleteMarker": True} for m in page.get("DeleteMarkers", [])]
        return out

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys whose newest version is not a delete marker, sorted."""
        return sorted(v["Key"] for v in self.versions(bucket, prefix) if v["IsLatest"] and not v["DeleteMarker"])

    def retention(self, bucket: str, key: str, version_id: str | None = None) -> dict[str, Any]:
        """{"mode", "until"} of a version (the newest without `version_id`), from HeadObject's
        lock headers: moto 5.2 does not implement GetObjectRetention (it answers 500)."""
        extra = {"VersionId": version_id} if version_id else {}
        head = self.client().head_object(Bucket=bucket, Key=key, **extra)
        return {"mode": head.get("ObjectLockMode"), "until": head.get("ObjectLockRetainUntilDate")}

    def get(self, bucket: str, key: str, version_id: str | None = None) -> bytes:
        extra = {"VersionId": version_id} if version_id else {}
        return self.client().get_object(Bucket=bucket, Key=key, **extra)["Body"].read()

    def put(self, bucket: str, key: str, body: bytes, lock: dict[str, Any] | None = None) -> str:
        """A new version of `key`; its version id. `lock`: {"mode", "until"} retention."""
        extra: dict[str, Any] = {}
        if lock:
            extra = {
                "ObjectLockMode": lock["mode"],
                "ObjectLockRetainUntilDate": lock["until"],
                "ChecksumAlgorithm": "SHA256",
            }
        return self.client().put_object(Bucket=bucket, Key=key, Body=body, **extra)["VersionId"]

    def delete(self, bucket: str, key: str, version_id: str | None = None) -> str | None:
        """Without a version: a delete marker (its version id); with one: that version gone,
        bypassing GOVERNANCE retention (what an administrator with the permission can do)."""
        s3 = self.client()
        if version_id is None:
            return s3.delete_object(Bucket=bucket, Key=key).get("VersionId")
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version_id, BypassGovernanceRetention=True)
        return None

    def purge(self, bucket: str, key: str) -> None:
        """Every version of `key` gone, as if it had never been uploaded."""
        for v in self.versions(bucket, key):
            if v["Key"] == key:
                self.delete(bucket, key, v["VersionId"])

    def overwrite(self, bucket: str, key: str, body: bytes) -> None:
        """`key` holds `body` and nothing else, with retention as before (an edit in place)."""
        lock = self.retention(bucket, key)
        self.purge(bucket, key)
        self.put(bucket, key, body, lock)

    def copy_bucket(self, bucket: str) -> str:
        """A new locked bucket holding the current version of every object of `bucket`, with
        its retention (a fresh copy of an archive to tamper with)."""
        copy = self.create_locked_bucket()
        for key in self.keys(bucket):
            self.put(copy, key, self.get(bucket, key), self.retention(bucket, key))
        return copy

    # --- inside ---------------------------------------------------------------------------
    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if self.down:
            start_response("503 Service Unavailable", [("Content-Type", "application/xml"), ("Connection", "close")])
            return [_UNAVAILABLE]
        if environ["REQUEST_METHOD"] == "PUT":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
            for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                if environ.get(name):
                    headers[name.replace("_", "-").lower()] = environ[name]
            path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
            if environ.get("QUERY_STRING") and "?" not in path:
                path += "?" + environ["QUERY_STRING"]
            with self._lock:
                self._puts.append(Put(path, headers, body))
        return self._moto(environ, start_response)


class _Quiet(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


# --- the archive's objects -----------------------------------------------------------------


def sha256_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


def segment_records(body: bytes) -> list[dict[str, Any]]:
    """A segment object's records, as stored."""
    return [json.loads(line) for line in gzip.decompress(body).decode().splitlines() if line]


def canonical_json(value: Any) -> bytes:
    """The canonical JSON the gateway signs (keys sorted, no white space), for digests, whose
    keys are ASCII and whose values are strings, integers, null and objects."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
