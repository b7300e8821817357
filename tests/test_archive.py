"""The S3 archive (`archive:`) on a real S3 API (moto, harness/s3.py) with Object Lock: the
trail sealed into segments and signed digests under retention, verified from the bucket
alone by `gatehouse audit verify --archive`; each way of tampering with the bucket named by
the key of the broken piece; a crash between a segment and its digest sealed again to the
same bytes; a restart that continues the digest chain; and S3 down for a while without a
call failing, the archive behind on /healthz, then caught up."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.export import trail
from harness.s3 import REGION, S3Server, canonical_json, segment_records, sha256_b64
from harness.stack import Stack, gatehouse, gen_tls, tools_call
from harness.store_sql import open_store

pytestmark = [pytest.mark.gateway]

PREFIX = "trail/"
WRITER = "gatehouse-test"
KEY_RE = re.compile(r"^trail/(?P<writer>[^/]+)/(?P<kind>segments|digests)/(?P<first>\d{20})-(?P<last>\d{20})\.")


def serve_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls_dir: Path | None = None) -> S3Server:
    """moto S3; the environment (inherited by the gateway and the CLI) holds its key and
    nothing else of AWS."""
    server = S3Server(tls_dir)
    for name, value in server.env(tmp_path).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return server


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    server = serve_s3(tmp_path, monkeypatch)
    yield server
    server.close()


def archive_config(s3: S3Server, bucket: str, **more) -> dict:
    return {
        "s3": {
            "bucket": bucket,
            "prefix": PREFIX,
            "region": REGION,
            "endpoint": s3.url,
            "object_lock": {"mode": "GOVERNANCE", "days": 1},
            "segment_records": 5,
            "segment_seconds": 1,
            **more,
        }
    }


def calls(stack: Stack, n: int, start: int = 0) -> None:
    token = stack.token("alice")
    for i in range(start, start + n):
        resp = stack.post(tools_call("echo", {"message": f"call {i}"}, request_id=i + 1), token=token)
        assert resp.status_code == 200, resp.text


def ranges(s3: S3Server, bucket: str, kind: str) -> dict[str, list[tuple[int, int]]]:
    """Per writer folder, the seq ranges of the current objects of one kind, in order."""
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for key in s3.keys(bucket, PREFIX):
        m = KEY_RE.match(key)
        assert m, f"an object outside the layout: {key}"
        if m["kind"] == kind:
            out[m["writer"]].append((int(m["first"]), int(m["last"])))
    return {w: sorted(r) for w, r in out.items()}


def wait_archived(stack: Stack, s3: S3Server, bucket: str, timeout: float = 30.0) -> dict[tuple[str, int], str]:
    """Waits until every record of the trail is in a digest (and the trail stopped growing:
    answers are recorded after the calls return); returns the trail."""
    deadline = time.monotonic() + timeout
    while True:
        expected = trail(stack)
        heads: dict[str, int] = defaultdict(int)
        for writer, seq in expected:
            heads[writer] = max(heads[writer], seq)
        sealed = {w: r[-1][1] for w, r in ranges(s3, bucket, "digests").items()}
        if sealed == dict(heads) and len(trail(stack)) == len(expected):
            return expected
        assert time.monotonic() < deadline, f"after {timeout} s the archive seals {sealed}, the trail is at {heads}"
        time.sleep(0.3)


def public_key(stack: Stack) -> Path:
    path = stack.dir / "checkpoint-public.pem"
    path.write_text(gatehouse("audit", "public-key", "--config", stack.config_path).stdout)
    return path


def verify_archive(s3: S3Server, bucket: str, key: Path, *more: str | Path, prefix: str = PREFIX):
    args = ["--archive", f"s3://{bucket}/{prefix}", "--public-key", key, "--endpoint", s3.url, *more]
    return gatehouse("audit", "verify", *args, check=False)


def seg_key(first: int, last: int, writer: str = WRITER) -> str:
    return f"{PREFIX}{writer}/segments/{first:020}-{last:020}.jsonl.gz"


def dig_key(first: int, last: int, writer: str = WRITER) -> str:
    return f"{PREFIX}{writer}/digests/{first:020}-{last:020}.json"


def health(stack: Stack) -> dict:
    return httpx.get(f"{stack.rest_url}/healthz").json()


@pytest.mark.both_backends
def test_the_trail_is_sealed_under_object_lock_and_verifies_from_the_bucket_alone(make_stack, s3):
    bucket = s3.create_locked_bucket()
    stack = make_stack(upstream="echo", archive=archive_config(s3, bucket))
    calls(stack, 12)
    expected = wait_archived(stack, s3, bucket)
    head = max(seq for w, seq in expected if w == WRITER)

    # Segments of at most 5 records and their digests, the same ranges, from record 1 on
    # without a gap or an overlap.
    segments, digests = ranges(s3, bucket, "segments")[WRITER], ranges(s3, bucket, "digests")[WRITER]
    assert segments == digests
    assert segments[0][0] == 1 and segments[-1][1] == head
    for (_, last), (first, _) in zip(segments, segments[1:], strict=False):
        assert first == last + 1, segments
    assert all(last - first < 5 for first, last in segments), segments

    # Each segment holds the records as stored; its digest names it, its hashes and the
    # digest before it.
    previous = None
    for first, last in segments:
        body = s3.get(bucket, seg_key(first, last))
        records = segment_records(body)
        assert [r["seq"] for r in records] == list(range(first, last + 1))
        assert all(r["hash"] == expected[(WRITER, r["seq"])] for r in records)
        signed = json.loads(s3.get(bucket, dig_key(first, last)))
        digest = signed["digest"]
        assert digest["segment"] == {
            "key": seg_key(first, last),
            "sha256": hashlib.sha256(body).hexdigest(),
            "bytes": len(body),
        }
        assert (digest["first_seq"], digest["last_seq"], digest["records"]) == (first, last, len(records))
        assert (digest["first_prev_hash"], digest["last_hash"]) == (records[0]["prev_hash"], records[-1]["hash"])
        assert digest["previous"] == previous
        assert digest["object_lock"]["mode"] == "GOVERNANCE"
        assert re.fullmatch(r"[0-9a-f]{128}", signed["signature"])
        previous = {
            "key": dig_key(first, last),
            "sha256": hashlib.sha256(s3.get(bucket, dig_key(first, last))).hexdigest(),
        }

    # Every version in the bucket is under retention for about a day.
    versions = s3.versions(bucket)
    assert len(versions) == 2 * len(segments), "one version per object: nothing uploaded twice"
    for v in versions:
        retention = s3.retention(bucket, v["Key"], v["VersionId"])
        assert retention["mode"] == "GOVERNANCE"
        left = retention["until"] - dt.datetime.now(dt.UTC)
        assert dt.timedelta(hours=23) < left <= dt.timedelta(days=1, minutes=1), (v["Key"], retention)

    # What AWS asks of an upload under Object Lock: a checksum (here the SHA-256, which S3
    # checks), the retention headers, and a valid SigV4 signature.
    puts = s3.puts()
    assert len(puts) == 2 * len(segments)
    for put in puts:
        assert put.headers["x-amz-sdk-checksum-algorithm"] == "SHA256", put.headers
        assert put.headers["x-amz-checksum-sha256"] == sha256_b64(put.body)
        assert put.headers["x-amz-object-lock-mode"] == "GOVERNANCE"
        assert put.headers["x-amz-object-lock-retain-until-date"].endswith("Z")
        assert put.signature_valid(s3.port), put.headers

    verified = verify_archive(s3, bucket, public_key(stack))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"writer {WRITER}: {len(segments)} segments, records 1 to {head} in one chain" in verified.stdout
    assert verified.stdout.rstrip().endswith("Archive verified."), verified.stdout
    assert "WARNING" not in verified.stdout, verified.stdout

    status = health(stack)
    assert status["export"]["archive"]["active"] and status["export_behind"] == [], status
    metrics = httpx.get(f"{stack.rest_url}/metrics").text
    sent = re.search(r'gatehouse_export_sent_total\{exporter="archive",sink="s3"\} (\d+)', metrics)
    assert sent and int(sent.group(1)) >= head, metrics


def test_a_segment_ends_at_the_record_that_brings_it_to_segment_bytes(make_stack, s3):
    """Large records: a due range is sealed as several segments, each going on only while
    under `segment_bytes` (before gzip), in one chain that verifies."""
    bucket = s3.create_locked_bucket()
    most = 8192
    config = archive_config(s3, bucket, segment_records=20, segment_seconds=3600, segment_bytes=most)
    stack = make_stack(upstream="echo", archive=config)
    token = stack.token("alice")
    for i in range(20):
        message = f"call {i} " + "x" * 3000
        resp = stack.post(tools_call("echo", {"message": message}, request_id=i + 1), token=token)
        assert resp.status_code == 200, resp.text

    # Sealed while 20 records wait: until fewer than 20 are left, the trail (answers are
    # ingested after the calls return) and the bucket unchanged over a poll.
    deadline, previous = time.monotonic() + 30, None
    while True:
        head = max(seq for w, seq in trail(stack) if w == WRITER)
        segments = ranges(s3, bucket, "segments").get(WRITER, [])
        digests = ranges(s3, bucket, "digests").get(WRITER, [])
        now = (head, segments, digests)
        if segments and segments == digests and segments[-1][1] > head - 20 and now == previous:
            break
        previous = now
        assert time.monotonic() < deadline, now
        time.sleep(0.5)
    assert segments[0][0] == 1 and len(segments) >= 3, segments
    for (_, last), (first, _) in zip(segments, segments[1:], strict=False):
        assert first == last + 1, segments
    for first, last in segments:
        lines = gzip.decompress(s3.get(bucket, seg_key(first, last))).splitlines(keepends=True)
        assert len(lines) == last - first + 1, (first, last)
        sizes = [len(line) for line in lines]
        assert sum(sizes[:-1]) < most <= sum(sizes), (first, last, sizes)

    sealed = segments[-1][1]
    verified = verify_archive(s3, bucket, public_key(stack))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"writer {WRITER}: {len(segments)} segments, records 1 to {sealed} in one chain" in verified.stdout


def test_each_tampering_with_the_bucket_is_named(make_stack, s3):
    bucket = s3.create_locked_bucket()
    stack = make_stack(upstream="echo", archive=archive_config(s3, bucket))
    calls(stack, 10)
    wait_archived(stack, s3, bucket)
    key = public_key(stack)
    stack.service.stop()
    segments = ranges(s3, bucket, "segments")[WRITER]
    assert len(segments) >= 4, segments
    middle, last = segments[1], segments[-1]
    attacker = Ed25519PrivateKey.generate()

    def edited_segment(body: bytes) -> bytes:
        records = segment_records(body)
        records[0]["data"] = {"edited": True}
        return gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in records))

    def edited_digest(body: bytes, change: Callable[[dict], None], sign: bool = False) -> bytes:
        signed = json.loads(body)
        change(signed["digest"])
        if sign:
            signed["signature"] = attacker.sign(canonical_json(signed["digest"])).hex()
        return json.dumps(signed, indent=2).encode()

    def later(digest: dict) -> None:
        digest["last_recorded_at"] = "2030-01-01T00:00:00.000Z"

    def remove_middle_and_rechain(copy: str) -> None:
        # Segment and digest gone with every version; the next digest re-linked to the one
        # before them (its key, SHA-256 and last hash), its signature left as it was.
        before, after = segments[0], segments[2]
        s3.purge(copy, seg_key(*middle))
        s3.purge(copy, dig_key(*middle))
        prev_body = s3.get(copy, dig_key(*before))
        prev = json.loads(prev_body)["digest"]

        def relink(digest: dict) -> None:
            digest["previous"] = {"key": dig_key(*before), "sha256": hashlib.sha256(prev_body).hexdigest()}
            digest["first_prev_hash"] = prev["last_hash"]

        s3.overwrite(copy, dig_key(*after), edited_digest(s3.get(copy, dig_key(*after)), relink))

    cases: list[tuple[str, Callable[[str], object], str, str]] = [
        ("a segment deleted", lambda c: s3.delete(c, seg_key(*middle)), "DELETED", seg_key(*middle)),
        ("a digest deleted", lambda c: s3.delete(c, dig_key(*middle)), "DELETED", dig_key(*middle)),
        (
            "a segment replaced by a new version",
            lambda c: s3.put(c, seg_key(*middle), edited_segment(s3.get(c, seg_key(*middle)))),
            "REPLACED",
            seg_key(*middle),
        ),
        (
            "a digest replaced by a new version with a field changed",
            lambda c: s3.put(c, dig_key(*middle), edited_digest(s3.get(c, dig_key(*middle)), later)),
            "REPLACED",
            dig_key(*middle),
        ),
        (
            "a segment edited in place",
            lambda c: s3.overwrite(c, seg_key(*middle), edited_segment(s3.get(c, seg_key(*middle)))),
            "EDITED",
            seg_key(*middle),
        ),
        (
            "a digest edited in place",
            lambda c: s3.overwrite(c, dig_key(*middle), edited_digest(s3.get(c, dig_key(*middle)), later)),
            "FORGED",
            dig_key(*middle),
        ),
        (
            "a digest re-signed with another key",
            lambda c: s3.overwrite(c, dig_key(*middle), edited_digest(s3.get(c, dig_key(*middle)), later, sign=True)),
            "FORGED",
            dig_key(*middle),
        ),
        (
            "a segment removed from the middle, the digests re-chained",
            remove_middle_and_rechain,
            "MISSING",
            f"{PREFIX}{WRITER}/digests/{middle[0]:020}-",
        ),
        ("the newest digest removed", lambda c: s3.purge(c, dig_key(*last)), "UNVOUCHED", seg_key(*last)),
    ]
    intact = verify_archive(s3, bucket, key)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    for what, tamper, label, named in cases:
        copy = s3.copy_bucket(bucket)
        assert verify_archive(s3, copy, key).returncode == 0, f"the copy for {what!r} verifies"
        tamper(copy)
        found = verify_archive(s3, copy, key)
        assert found.returncode == 1, f"{what}: {found.stdout}{found.stderr}"
        broken = [line for line in found.stdout.splitlines() if line.startswith("BROKEN:")]
        assert len(broken) == 1, f"{what}: {found.stdout}"
        assert broken[0].startswith(f"BROKEN: writer {WRITER}: {label}: {named}"), f"{what}: {broken[0]}"
        assert found.stdout.rstrip().endswith("The archive does NOT verify."), found.stdout
    # The original bucket was never touched.
    assert verify_archive(s3, bucket, key).returncode == 0


@pytest.mark.both_backends
def test_a_seal_cut_short_is_sealed_again_to_the_same_bytes_and_a_restart_continues_the_chain(make_stack, s3):
    bucket = s3.create_locked_bucket()
    stack = make_stack(upstream="echo", archive=archive_config(s3, bucket))
    calls(stack, 8)
    wait_archived(stack, s3, bucket)

    def plan_the_last_again() -> tuple[int, int]:
        """The state as a crash leaves it: the newest range planned, not confirmed; its range."""
        stack.service.stop()
        (a, b), (c, d) = ranges(s3, bucket, "digests")[WRITER][-2:]
        before = hashlib.sha256(s3.get(bucket, dig_key(a, b))).hexdigest()
        with open_store(stack) as db:
            db.execute(
                "UPDATE archive_state SET sealed_seq = ?, digest_sha256 = ?, digest_key = ?, pending_last = ? "
                "WHERE writer = ?",
                (b, before, dig_key(a, b), d, WRITER),
            )
        return c, d

    # Killed after the segment, before the digest: the digest is uploaded again, the same
    # bytes, and the segment (already there) is not uploaded twice.
    c, d = plan_the_last_again()
    cut = dig_key(c, d)
    original = s3.get(bucket, cut)
    s3.purge(bucket, cut)
    uploads = len(s3.puts())
    stack.start_service()
    wait_archived(stack, s3, bucket)
    assert s3.get(bucket, cut) == original
    uploaded = [p.key for p in s3.puts()[uploads:]]
    assert uploaded.count(cut) == 1 and seg_key(c, d) not in uploaded, uploaded

    # Killed after the digest, before its state was written: nothing is uploaded again.
    c, d = plan_the_last_again()
    uploads = len(s3.puts())
    stack.start_service()
    deadline = time.monotonic() + 15
    while True:
        with open_store(stack) as db:
            row = db.execute(
                "SELECT sealed_seq, pending_last FROM archive_state WHERE writer = ?", (WRITER,)
            ).fetchone()
        if row["sealed_seq"] >= d and row["pending_last"] is None:
            break
        assert time.monotonic() < deadline, dict(row)
        time.sleep(0.2)
    uploaded = [p.key for p in s3.puts()[uploads:]]
    assert dig_key(c, d) not in uploaded and seg_key(c, d) not in uploaded, uploaded

    # A kill -9 while calls go on, then a graceful restart: the chain goes on across both.
    calls(stack, 6, start=100)
    stack.crash_service()
    stack.start_service()
    calls(stack, 6, start=200)
    wait_archived(stack, s3, bucket)
    stack.restart_service()
    calls(stack, 4, start=300)
    expected = wait_archived(stack, s3, bucket)
    head = max(seq for w, seq in expected if w == WRITER)
    digests = ranges(s3, bucket, "digests")[WRITER]
    assert digests == ranges(s3, bucket, "segments")[WRITER]
    assert [first for first, _ in digests] == [1] + [last + 1 for _, last in digests[:-1]], digests
    assert digests[-1][1] == head
    versions = defaultdict(set)
    for v in s3.versions(bucket):
        versions[v["Key"]].add(hashlib.sha256(s3.get(bucket, v["Key"], v["VersionId"])).hexdigest())
    assert all(len(shas) == 1 for shas in versions.values()), "no key holds two different versions"
    verified = verify_archive(s3, bucket, public_key(stack))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"records 1 to {head} in one chain" in verified.stdout, verified.stdout


def test_a_delete_marker_on_the_newest_digest_neither_stalls_the_archive_nor_hides(make_stack, s3):
    """An administrator "deletes" the newest digest while the service is down (a delete marker:
    the version stays under its retention). After the restart the archive links the next digest
    to the one it uploaded, as archive_state names it, and goes on sealing; verify names the
    delete marker, and nothing else."""
    bucket = s3.create_locked_bucket()
    stack = make_stack(upstream="echo", archive=archive_config(s3, bucket))
    calls(stack, 6)
    wait_archived(stack, s3, bucket)
    newest = ranges(s3, bucket, "digests")[WRITER][-1]
    stack.service.stop()
    assert s3.delete(bucket, dig_key(*newest)), "a delete marker"
    stack.start_service()
    calls(stack, 6, start=100)
    expected = wait_archived(stack, s3, bucket)
    head = max(seq for w, seq in expected if w == WRITER)
    after = [r for r in ranges(s3, bucket, "digests")[WRITER] if r[0] > newest[1]]
    assert after and after[0][0] == newest[1] + 1 and after[-1][1] == head, after
    linked = json.loads(s3.get(bucket, dig_key(*after[0])))["digest"]["previous"]
    assert linked["key"] == dig_key(*newest), linked
    found = verify_archive(s3, bucket, public_key(stack))
    assert found.returncode == 1, found.stdout + found.stderr
    broken = [line for line in found.stdout.splitlines() if line.startswith("BROKEN:")]
    assert broken == [line for line in broken if f"DELETED: {dig_key(*newest)}" in line] and len(broken) == 1, broken


def test_s3_down_never_blocks_a_call_and_the_archive_catches_up(make_stack, s3):
    bucket = s3.create_locked_bucket()
    stack = make_stack(upstream="echo", archive=archive_config(s3, bucket))
    calls(stack, 3)
    wait_archived(stack, s3, bucket)

    s3.stop()
    started = time.monotonic()
    calls(stack, 12, start=100)
    assert time.monotonic() - started < 10, "the calls did not wait for S3"
    deadline = time.monotonic() + 20
    while True:
        status = health(stack)
        archive = status["export"]["archive"]
        if archive["behind"] and archive["last_error"]:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert status["status"] == "ok" and status["export_behind"] == ["archive"], status
    assert "S3 PutObject" in archive["last_error"], archive
    assert "secret" not in json.dumps(status).lower()
    metrics = httpx.get(f"{stack.rest_url}/metrics").text
    failures = re.search(r'gatehouse_export_failures_total\{exporter="archive",sink="s3"\} (\d+)', metrics)
    assert failures and int(failures.group(1)) >= 1, metrics
    calls(stack, 3, start=200)

    s3.start()
    expected = wait_archived(stack, s3, bucket, timeout=60)
    deadline = time.monotonic() + 20
    while (archive := health(stack)["export"]["archive"])["behind"]:
        assert time.monotonic() < deadline, archive
        time.sleep(0.3)
    assert archive["last_error"] is None and archive["lag_records"] == 0, archive
    head = max(seq for w, seq in expected if w == WRITER)
    verified = verify_archive(s3, bucket, public_key(stack))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"records 1 to {head} in one chain" in verified.stdout, verified.stdout


def test_an_https_endpoint_is_trusted_through_its_ca_file(make_stack, tmp_path, monkeypatch):
    tls = tmp_path / "s3-tls"
    gen_tls(tls)
    s3 = serve_s3(tmp_path, monkeypatch, tls_dir=tls)
    try:
        bucket = s3.create_locked_bucket()
        stack = make_stack(upstream="echo", archive=archive_config(s3, bucket, ca_file=str(tls / "ca.crt")))
        calls(stack, 3)
        wait_archived(stack, s3, bucket)
        key = public_key(stack)
        verified = verify_archive(s3, bucket, key, "--ca-file", tls / "ca.crt")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        # Without it the system's roots do not know the CA: the bucket is not read at all.
        untrusted = verify_archive(s3, bucket, key)
        assert untrusted.returncode == 2, untrusted.stdout + untrusted.stderr
        assert "cannot read the archive: S3 ListObjectVersions trail/" in untrusted.stderr, untrusted.stderr
        # A prefix that holds nothing is no verified archive.
        empty = verify_archive(s3, bucket, key, "--ca-file", tls / "ca.crt", prefix="nothing-here")
        assert empty.returncode == 1 and "holds no segment here" in empty.stdout, empty.stdout
    finally:
        s3.close()
