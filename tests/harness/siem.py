"""Real SIEM receivers for the export's end-to-end tests, each on a free 127.0.0.1 port.

- `OtlpReceiver(tls_dir=None)`: OTLP/HTTP logs, `POST /v1/logs` with a protobuf
  `ExportLogsServiceRequest`, decoded with the official `opentelemetry-proto` package
  (gzip'd bodies too). It answers 200 with an empty `ExportLogsServiceResponse`.
- `HecReceiver(tls_dir, token)`: Splunk's HTTP Event Collector, `POST
  /services/collector/event`, with Splunk's answers: `{"text":"Success","code":0}`, 401
  `Token is required` (code 2) or `Invalid authorization` (code 3), 403 `Invalid token`
  (code 4), 400 `Invalid data format` (code 6), 503 `Server is busy` (code 9).
- `Rsyslog(tls_dir)`: Debian's real `rsyslogd` as a child process (`harness.procs.Proc`: own
  log, dies with the test process) in a temporary directory, with `imtcp` over TLS (the
  `ossl` netstream driver, anonymous clients) or plain TCP (`tls_dir=None`), every message
  written by `omfile` as one JSON object a line. Octet-counted framing (RFC 6587) is imtcp's
  default; frames and messages up to `max_message_bytes` (default 4 MiB). Needs
  `apt-get install rsyslog rsyslog-openssl`.

The HTTP receivers run in this process (`serve_in_thread`, TLS with `tls_dir`'s
server.crt/key from scripts/gen-tls.sh). Each has an outage switch: `fail_next(n)` answers the
next n requests with 503, `down()` stops listening (connections are refused) and `up()`
listens again on the same port. `Rsyslog` has `stop()` and `start()` for the same.

Everything received is kept: `OtlpReceiver.records` (each log record as a dict, attributes
flattened, the resource's and scope's with it), `HecReceiver.events` (each HEC event object
as sent) and `.requests` (what each request was: gzip'd, authorized, how many events),
`Rsyslog.messages()` (each message's header fields, structured data and its MSG decoded as
JSON). `wait_for(n)` waits until there are at least n.

Note for TLS syslog clients: rsyslog's `ossl` driver throws away frames it had received but
not yet parsed when a connection ends without TLS's close_notify (a plain `close()`), so a
client that sends and closes must `unwrap()` its socket first.

    otlp = OtlpReceiver(tls_dir)          # otlp.url: https://127.0.0.1:PORT/v1/logs
    records = otlp.wait_for(3)            # [{"body": "...", "attributes": {...}, ...}]
    otlp.fail_next(2); otlp.down(); otlp.up(); otlp.close()
    syslog = Rsyslog(tls_dir, log_dir)    # syslog.port; syslog.stop(); syslog.start()
    syslog.wait_for(1)[0]["event"]        # the JSON of the message
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from .mcp_servers import serve_in_thread
from .procs import Proc, free_port, tcp_open

INSTALL_HINT = "apt-get install rsyslog rsyslog-openssl"


def _wait(what: str, ready: Callable[[], list[Any]], n: int, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = ready()
        if len(got) >= n:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {len(got)} after {timeout:.0f}s, expected at least {n}")
        time.sleep(0.05)


class _HttpReceiver:
    """An in-process HTTP(S) receiver with an outage switch; subclasses answer `handle`."""

    name = "receiver"
    path = "/"

    def __init__(self, tls_dir: Path | None) -> None:
        self.tls_dir = tls_dir
        self.port = free_port()
        self._lock = threading.Lock()
        self._fail = 0
        # Bodies longer than this (as sent, compressed or not) are answered 413, as a
        # collector's max_request_body_size or HEC's max_content_length would.
        self.max_body: int | None = None
        self._server: ThreadingHTTPServer | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_dir else 'http'}://127.0.0.1:{self.port}{self.path}"

    def fail_next(self, n: int) -> None:
        """Answer the next `n` requests 503 (each kept nothing)."""
        with self._lock:
            self._fail = n

    def down(self) -> None:
        """Stop listening: connections are refused until `up()`."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def up(self) -> None:
        if self._server is None:
            self._server = serve_in_thread(self.port, self._handler_class(), self.name, self.tls_dir)

    def close(self) -> None:
        self.down()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _too_large(self, body: bytes) -> bool:
        return self.max_body is not None and len(body) > self.max_body

    def _failing(self) -> bool:
        with self._lock:
            if self._fail > 0:
                self._fail -= 1
                return True
            return False

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        """(status, content type, body) for one POST; headers lower-cased."""
        raise NotImplementedError

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, content_type, answer = receiver.handle(self.path, headers, body)
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        return Handler


def _any_value(value: Any) -> Any:
    """An OTLP AnyValue as Python: str, bool, int, float, bytes, list or dict."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def _attributes(key_values: Any) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in key_values}


class OtlpReceiver(_HttpReceiver):
    """OTLP/HTTP logs (protobuf) on `url` (`/v1/logs`)."""

    name = "otlp-receiver"
    path = "/v1/logs"

    def __init__(self, tls_dir: Path | None = None) -> None:
        self._records: list[dict[str, Any]] = []
        self._requests: list[dict[str, Any]] = []
        self._reject = 0
        # Records this says yes to (given the record as `records` lists it) are rejected
        # in a partial success, the others kept, as a collector's own limits or filters do.
        self.reject_when: Callable[[dict[str, Any]], bool] | None = None
        super().__init__(tls_dir)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every log record received, in order: `time_unix_nano`, `observed_time_unix_nano`,
        `severity_number`, `severity_text`, `event_name`, `body`, `attributes` (flat dict),
        `resource` (its attributes), `scope` and `scope_version`."""
        with self._lock:
            return list(self._records)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Each request: `headers` (lower-cased), `gzip`, `records` (how many), `status`."""
        with self._lock:
            return list(self._requests)

    def reject_next(self, n: int) -> None:
        """Answer the next `n` requests 200 with a partial success that rejected every
        record (each kept nothing)."""
        with self._lock:
            self._reject = n

    def wait_for(self, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        return _wait("OTLP log records", lambda: self.records, n, timeout)

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        zipped = headers.get("content-encoding") == "gzip"
        request = {"headers": headers, "gzip": zipped, "records": 0}

        def answer(status: int, content_type: str, text: bytes) -> tuple[int, str, bytes]:
            request["status"] = status
            with self._lock:
                self._requests.append(request)
            return status, content_type, text

        if path != self.path:
            return answer(404, "text/plain", b"not found")
        if self._failing():
            return answer(503, "text/plain", b"unavailable (fail_next)")
        if self._too_large(body):
            return answer(413, "text/plain", b"request body too large")
        if not headers.get("content-type", "").startswith("application/x-protobuf"):
            return answer(415, "text/plain", b"only application/x-protobuf")
        try:
            message = ExportLogsServiceRequest.FromString(gzip.decompress(body) if zipped else body)
        except (DecodeError, OSError, EOFError, zlib.error) as exc:
            return answer(400, "text/plain", f"cannot decode: {exc}".encode())
        records = []
        for resource_logs in message.resource_logs:
            resource = _attributes(resource_logs.resource.attributes)
            for scope_logs in resource_logs.scope_logs:
                for r in scope_logs.log_records:
                    records.append(
                        {
                            "time_unix_nano": r.time_unix_nano,
                            "observed_time_unix_nano": r.observed_time_unix_nano,
                            "severity_number": r.severity_number,
                            "severity_text": r.severity_text,
                            "event_name": r.event_name,
                            "body": _any_value(r.body),
                            "attributes": _attributes(r.attributes),
                            "resource": resource,
                            "scope": scope_logs.scope.name,
                            "scope_version": scope_logs.scope.version,
                        }
                    )
        request["records"] = len(records)
        response = ExportLogsServiceResponse()
        refused = [r for r in records if self.reject_when and self.reject_when(r)]
        with self._lock:
            rejecting = self._reject > 0
            if rejecting:
                self._reject -= 1
            else:
                self._records.extend(r for r in records if r not in refused)
        if rejecting:
            response.partial_success.rejected_log_records = len(records)
            response.partial_success.error_message = "rejected on purpose (reject_next)"
        elif refused:
            response.partial_success.rejected_log_records = len(refused)
            response.partial_success.error_message = "rejected on purpose (reject_when)"
        return answer(200, "application/x-protobuf", response.SerializeToString())


def _hec_answer(status: int, text: str, code: int, **extra: Any) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps({"text": text, "code": code, **extra}).encode()


class HecReceiver(_HttpReceiver):
    """Splunk HEC on `url` (`/services/collector/event`), taking only `token`."""

    name = "hec-receiver"
    path = "/services/collector/event"

    def __init__(self, tls_dir: Path | None, token: str) -> None:
        self.token = token
        self._events: list[dict[str, Any]] = []
        self._requests: list[dict[str, Any]] = []
        super().__init__(tls_dir)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event object taken, as sent (`time`, `host`, `event`, `fields`, ...)."""
        with self._lock:
            return list(self._events)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Each request: `headers`, `gzip`, `authorized`, `events` (how many), `status`."""
        with self._lock:
            return list(self._requests)

    def wait_for(self, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        return _wait("HEC events", lambda: self.events, n, timeout)

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        zipped = headers.get("content-encoding") == "gzip"
        authorization = headers.get("authorization")
        request: dict[str, Any] = {
            "headers": headers,
            "gzip": zipped,
            "authorized": authorization == f"Splunk {self.token}",
            "events": 0,
        }

        def answer(result: tuple[int, str, bytes]) -> tuple[int, str, bytes]:
            request["status"] = result[0]
            with self._lock:
                self._requests.append(request)
            return result

        if path.split("?")[0] != self.path:
            return answer(_hec_answer(404, "The requested URL was not found on this server.", 404))
        if authorization is None:
            return answer(_hec_answer(401, "Token is required", 2))
        if not authorization.startswith("Splunk "):
            return answer(_hec_answer(401, "Invalid authorization", 3))
        if not request["authorized"]:
            return answer(_hec_answer(403, "Invalid token", 4))
        if self._failing():
            return answer(_hec_answer(503, "Server is busy", 9))
        if self._too_large(body):
            return answer(_hec_answer(413, "Content length too large", 27))
        try:
            text = (gzip.decompress(body) if zipped else body).decode()
            events = _concatenated_json(text)
        except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError):
            return answer(_hec_answer(400, "Invalid data format", 6, **{"invalid-event-number": 0}))
        for number, event in enumerate(events):
            if not isinstance(event, dict) or "event" not in event:
                return answer(_hec_answer(400, "Event field is required", 12, **{"invalid-event-number": number}))
        request["events"] = len(events)
        with self._lock:
            self._events.extend(events)
        return answer(_hec_answer(200, "Success", 0))


def _concatenated_json(text: str) -> list[Any]:
    """JSON values one after another, whitespace between them allowed (HEC's batch format)."""
    decoder = json.JSONDecoder()
    values, at = [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return values
        value, at = decoder.raw_decode(text, at)
        values.append(value)


# Each message as one JSON object: its RFC 5424 header, structured data and MSG.
_RSYSLOG_CONF = """\
global(
  workDirectory="{work}"
  maxMessageSize="{max_bytes}"
{tls_globals})
module(load="imtcp" MaxFrameSize="{max_frame}"{tls_module})
template(name="gatehouse" type="list" option.jsonf="on") {{
  property(outname="pri" name="pri" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="structured_data" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}}
ruleset(name="siem") {{
  action(type="omfile" file="{out}" template="gatehouse")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="siem")
"""

_TLS_GLOBALS = """\
  defaultNetstreamDriver="ossl"
  defaultNetstreamDriverCAFile="{tls}/ca.crt"
  defaultNetstreamDriverCertFile="{tls}/server.crt"
  defaultNetstreamDriverKeyFile="{tls}/server.key"
"""

_TLS_MODULE = ' StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="anon"'

_SD_ELEMENT = re.compile(r'\[([^ \]]+)((?: [^= \]"]+="(?:[^"\\]|\\.)*")*)\]')
_SD_PARAM = re.compile(r' ([^= \]"]+)="((?:[^"\\]|\\.)*)"')
_SD_ESCAPE = re.compile(r"\\([\"\\\]])")


def parse_structured_data(text: str) -> dict[str, dict[str, str]]:
    """RFC 5424 STRUCTURED-DATA as {SD-ID: {name: value}}; `-` is none."""
    elements: dict[str, dict[str, str]] = {}
    for match in _SD_ELEMENT.finditer(text if text != "-" else ""):
        params = {name: _SD_ESCAPE.sub(r"\1", value) for name, value in _SD_PARAM.findall(match.group(2))}
        elements[match.group(1)] = params
    return elements


class Rsyslog:
    """Debian's rsyslogd receiving RFC 5424 over TCP (TLS with `tls_dir`) on 127.0.0.1:`port`."""

    def __init__(
        self, tls_dir: Path | None, log_dir: Path | None = None, *, max_message_bytes: int = 4 * 1024 * 1024
    ) -> None:
        binary = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        if not Path(binary).exists():
            raise RuntimeError(f"rsyslogd is not installed ({INSTALL_HINT})")
        self.binary = binary
        self.tls_dir = tls_dir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="gatehouse-rsyslog-"))
        self.log_dir = log_dir or self.dir / "logs"
        self.out = self.dir / "messages.jsonl"
        (self.dir / "work").mkdir()
        tls_globals = _TLS_GLOBALS.format(tls=tls_dir.resolve()) if tls_dir else ""
        self.conf = self.dir / "rsyslog.conf"
        self.conf.write_text(
            _RSYSLOG_CONF.format(
                work=self.dir / "work",
                max_bytes=max_message_bytes,
                # The frame is the message and its octet count; past it imtcp loses the framing.
                max_frame=max_message_bytes + 64,
                tls_globals=tls_globals,
                tls_module=_TLS_MODULE if tls_dir else "",
                out=self.out,
                port=self.port,
            )
        )
        self.proc: Proc | None = None
        self.start()

    def start(self) -> Rsyslog:
        """Starts rsyslogd (again, on the same port and output file) and waits for it to listen."""
        if self.proc and self.proc.alive():
            return self
        argv = [self.binary, "-n", "-f", self.conf, "-i", self.dir / "rsyslogd.pid"]
        self.proc = Proc("rsyslogd", argv, self.log_dir)
        self.proc.wait_until(lambda: tcp_open(self.port), f"listening on 127.0.0.1:{self.port}")
        return self

    def stop(self) -> None:
        """Stops rsyslogd (SIGTERM): connections are closed, new ones refused until `start()`."""
        if self.proc:
            self.proc.stop()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Rsyslog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self) -> str:
        return self.proc.log_tail() if self.proc else ""

    def messages(self) -> list[dict[str, Any]]:
        """Every message received, in order: `pri`, `facility`, `severity`, `timestamp`,
        `hostname`, `app_name`, `procid`, `msgid`, `structured_data` (as sent),
        `sd` ({SD-ID: {name: value}}), `id` (the `id` parameter of the first element that has
        one), `msg` and `event` (`msg` as JSON; None if it is not)."""
        with contextlib.suppress(FileNotFoundError):
            lines = self.out.read_text(encoding="utf-8").splitlines()
            return [self._message(json.loads(line)) for line in lines if line.strip()]
        return []

    @staticmethod
    def _message(fields: dict[str, Any]) -> dict[str, Any]:
        pri = int(fields.get("pri") or 0)
        sd = parse_structured_data(fields.get("structured_data") or "-")
        msg = fields.get("msg") or ""
        try:
            event = json.loads(msg)
        except ValueError:
            event = None
        ids = [params["id"] for params in sd.values() if "id" in params]
        return {
            **fields,
            "pri": pri,
            "facility": pri // 8,
            "severity": pri % 8,
            "sd": sd,
            "id": ids[0] if ids else None,
            "msg": msg,
            "event": event,
        }

    def wait_for(self, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        return _wait("rsyslog messages", self.messages, n, timeout)
