//! The archive's pure parts: keys, segments, signed digests, and the verifier on an archive
//! held in memory, intact and tampered with each way S3 allows (or a bucket without Object
//! Lock would); and the archive state's moves on SQLite.

use std::collections::BTreeMap;

use gatehouse_core::audit::{ChainHead, Record};
use serde_json::{Value, json};

use super::digest::{self, Digest, DigestError, LockRef, PreviousRef, SegmentWriter};
use super::s3::{Fetched, Version};
use super::verify::{self, Objects, ProblemKind, Report};
use crate::audit::checkpoint::CheckpointSigner;

const PREFIX: &str = "trail/";
const WRITER: &str = "gh-1";

fn signer(dir: &tempfile::TempDir, name: &str) -> CheckpointSigner {
    CheckpointSigner::load_or_create(&dir.path().join(name)).unwrap()
}

fn records(writer: &str, n: u64) -> Vec<Record> {
    let mut head = ChainHead::genesis(writer);
    (1..=n)
        .map(|i| {
            head.append(
                "request",
                &format!("{i:032x}"),
                &format!("2026-03-01T10:00:{:02}.000Z", i % 60),
                json!({"tool": "echo", "i": i}),
            )
        })
        .collect()
}

fn segment(records: &[Record]) -> digest::Segment {
    let mut out = SegmentWriter::new();
    for r in records {
        out.push(r.clone()).unwrap();
    }
    out.finish().unwrap().unwrap()
}

fn lock() -> LockRef {
    LockRef {
        mode: "GOVERNANCE".into(),
        retain_until: "2027-03-01T10:00:05Z".into(),
    }
}

/// One object version in [`Memory`]; `bytes: None` is a delete marker.
#[derive(Clone)]
struct Stored {
    version_id: String,
    bytes: Option<Vec<u8>>,
    modified: String,
    lock: Option<(String, String)>,
}

/// A versioned bucket in memory.
#[derive(Default)]
struct Memory {
    objects: BTreeMap<String, Vec<Stored>>,
    clock: u64,
}

impl Memory {
    fn add(&mut self, key: &str, bytes: Option<Vec<u8>>, lock: Option<(String, String)>) -> String {
        self.clock += 1;
        let version_id = format!("v{}", self.clock);
        self.objects.entry(key.to_owned()).or_default().push(Stored {
            version_id: version_id.clone(),
            bytes,
            modified: format!("2026-03-01T11:00:00.{:09}Z", self.clock),
            lock,
        });
        version_id
    }

    fn put(&mut self, key: &str, bytes: Vec<u8>) -> String {
        let retention = Some(("GOVERNANCE".to_owned(), "2027-03-01T10:00:05Z".to_owned()));
        self.add(key, Some(bytes), retention)
    }

    fn delete(&mut self, key: &str) {
        self.add(key, None, None);
    }

    /// Every version gone (what Object Lock would refuse).
    fn remove(&mut self, key: &str) {
        self.objects.remove(key).unwrap();
    }

    /// The original version's bytes changed in place (a bucket without Object Lock).
    fn edit(&mut self, key: &str, f: impl FnOnce(&mut Vec<u8>)) {
        f(self.objects.get_mut(key).unwrap()[0].bytes.as_mut().unwrap());
    }

    fn bytes(&self, key: &str) -> Vec<u8> {
        self.objects[key][0].bytes.clone().unwrap()
    }
}

impl Objects for Memory {
    fn prefix(&self) -> &str {
        PREFIX
    }

    async fn versions(&self) -> Result<Vec<Version>, String> {
        let mut out = Vec::new();
        for (key, versions) in &self.objects {
            // As S3 lists them: a key's versions newest first.
            for (i, v) in versions.iter().enumerate().rev() {
                out.push(Version {
                    key: key.clone(),
                    version_id: v.version_id.clone(),
                    delete_marker: v.bytes.is_none(),
                    is_latest: i + 1 == versions.len(),
                    last_modified: v.modified.clone(),
                });
            }
        }
        Ok(out)
    }

    async fn fetch(&self, key: &str, version_id: &str) -> Result<Fetched, String> {
        let v = self.objects[key]
            .iter()
            .find(|v| v.version_id == version_id)
            .ok_or("no such version")?;
        Ok(Fetched {
            bytes: v.bytes.clone().ok_or("a delete marker")?,
            lock_mode: v.lock.as_ref().map(|l| l.0.clone()),
            retain_until: v.lock.as_ref().map(|l| l.1.clone()),
        })
    }
}

/// Seals `records` into `bucket` in segments of `sizes` records, as the sealer does.
fn seal(bucket: &mut Memory, signer: &CheckpointSigner, records: &[Record], sizes: &[usize]) {
    let mut previous: Option<PreviousRef> = None;
    let mut at = 0;
    for &n in sizes {
        let part = &records[at..at + n];
        at += n;
        let writer = &part[0].writer;
        let (first, last) = (part[0].seq, part[n - 1].seq);
        let seg = segment(part);
        let d = Digest::of(PREFIX, writer, first, last, &seg, previous.take(), lock());
        let bytes = d.sign(signer);
        bucket.put(&d.segment.key, seg.bytes.clone());
        let key = digest::digest_key(PREFIX, writer, first, last);
        previous = Some(PreviousRef {
            key: key.clone(),
            sha256: digest::sha256_hex(&bytes),
        });
        bucket.put(&key, bytes);
    }
}

/// An archive of 12 records in segments of 5, 5 and 2.
fn archive(dir: &tempfile::TempDir) -> (Memory, CheckpointSigner, Vec<Record>) {
    let signer = signer(dir, "cp.pem");
    let records = records(WRITER, 12);
    let mut bucket = Memory::default();
    seal(&mut bucket, &signer, &records, &[5, 5, 2]);
    (bucket, signer, records)
}

async fn check(bucket: &Memory, signer: &CheckpointSigner) -> Report {
    verify::verify(bucket, &signer.public_key()).await.unwrap()
}

/// The one problem found, as (kind, key).
async fn problem(bucket: &Memory, signer: &CheckpointSigner) -> (ProblemKind, String, String) {
    let report = check(bucket, signer).await;
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let p = &report.problems[0];
    (p.kind, p.key.clone(), p.detail.clone())
}

fn seg_key(first: u64, last: u64) -> String {
    digest::segment_key(PREFIX, WRITER, first, last)
}

fn dig_key(first: u64, last: u64) -> String {
    digest::digest_key(PREFIX, WRITER, first, last)
}

/// A digest object with its signed part changed by `f` (the signature left as it was).
fn tampered_digest(bytes: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut object: Value = serde_json::from_slice(bytes).unwrap();
    f(&mut object["digest"]);
    serde_json::to_vec_pretty(&object).unwrap()
}

#[test]
fn writer_ids_become_one_safe_path_element_and_back() {
    for (id, folder) in [
        ("gh-1", "gh-1"),
        ("gw.example_2~", "gw.example_2~"),
        ("a/b%c d", "a%2Fb%25c%20d"),
        (".", "%2E"),
        ("..", "%2E%2E"),
        ("é", "%C3%A9"),
    ] {
        assert_eq!(digest::writer_folder(id), folder);
        assert_eq!(digest::writer_of_folder(folder).as_deref(), Some(id));
    }
    // Only the one spelling the archive writes reads back.
    assert_eq!(digest::writer_of_folder("%2d"), None);
    assert_eq!(digest::writer_of_folder("a/b"), None);
    assert_eq!(digest::writer_of_folder("%ZZ"), None);
}

#[test]
fn keys_name_the_writer_and_the_range_and_parse_back() {
    let key = digest::segment_key("p/", "a/b", 1, 25);
    assert_eq!(
        key,
        "p/a%2Fb/segments/00000000000000000001-00000000000000000025.jsonl.gz"
    );
    let parsed = digest::parse_key(key.strip_prefix("p/").unwrap()).unwrap();
    assert_eq!(
        (parsed.writer.as_str(), parsed.kind, parsed.first, parsed.last),
        ("a/b", digest::KeyKind::Segment, 1, 25)
    );
    let key = digest::digest_key("", "w", 26, 30);
    assert_eq!(key, "w/digests/00000000000000000026-00000000000000000030.json");
    assert_eq!(digest::parse_key(&key).unwrap().kind, digest::KeyKind::Digest);
    for bad in [
        "w/digests/1-2.json",
        "w/digests/00000000000000000002-00000000000000000001.json",
        "w/digests/00000000000000000000-00000000000000000001.json",
        "w/other/00000000000000000001-00000000000000000002.json",
        "w/segments/00000000000000000001-00000000000000000002.json",
        "README",
    ] {
        assert_eq!(digest::parse_key(bad), None, "{bad}");
    }
}

#[test]
fn the_same_records_make_the_same_segment_and_digest_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer(&dir, "cp.pem");
    let records = records(WRITER, 7);
    let (a, b) = (segment(&records), segment(&records));
    assert_eq!(a.bytes, b.bytes, "gzip with no name and no time");
    assert_eq!(&a.bytes[4..8], &[0, 0, 0, 0], "mtime 0");
    assert_eq!(digest::read_segment(&a.bytes).unwrap(), records);
    let lines = {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&a.bytes[..]), &mut text).unwrap();
        text
    };
    assert_eq!(lines.lines().count(), 7);
    assert_eq!(
        serde_json::from_str::<Value>(lines.lines().next().unwrap()).unwrap(),
        serde_json::to_value(&records[0]).unwrap(),
        "each line is the record as stored"
    );
    let da = Digest::of(PREFIX, WRITER, 1, 7, &a, None, lock());
    let db = Digest::of(PREFIX, WRITER, 1, 7, &b, None, lock());
    assert_eq!(
        da.sign(&signer),
        db.sign(&signer),
        "Ed25519 signatures are deterministic"
    );
    let later = Digest::of(
        PREFIX,
        WRITER,
        1,
        7,
        &b,
        None,
        LockRef {
            retain_until: "2027-03-02T00:00:00Z".into(),
            ..lock()
        },
    );
    assert!(da.same_seal(&later), "sealed again on another day");
    assert!(!da.same_seal(&Digest::of(PREFIX, WRITER, 1, 8, &b, None, lock())));
}

#[test]
fn a_digest_opens_only_under_its_key_and_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (signer, other) = (signer(&dir, "cp.pem"), signer(&dir, "other.pem"));
    let seg = segment(&records(WRITER, 3));
    let d = Digest::of(PREFIX, WRITER, 1, 3, &seg, None, lock());
    let bytes = d.sign(&signer);
    assert_eq!(Digest::open(&bytes, &signer.public_key()).unwrap(), d);
    assert_eq!(
        Digest::open(&bytes, &other.public_key()),
        Err(DigestError::BadSignature)
    );
    let edited = tampered_digest(&bytes, |d| d["last_seq"] = json!(4));
    assert_eq!(
        Digest::open(&edited, &signer.public_key()),
        Err(DigestError::BadSignature)
    );
    let added = tampered_digest(&bytes, |d| d["note"] = json!("x"));
    assert_eq!(
        Digest::open(&added, &signer.public_key()),
        Err(DigestError::BadSignature)
    );
    assert!(matches!(
        Digest::open(b"{}", &signer.public_key()),
        Err(DigestError::Unreadable(_))
    ));
    // Signed over the canonical form: the object's layout does not matter.
    let compact = serde_json::to_vec(&serde_json::from_slice::<Value>(&bytes).unwrap()).unwrap();
    assert_eq!(Digest::open(&compact, &signer.public_key()).unwrap(), d);
}

#[test]
fn retention_runs_from_the_last_record_or_the_day_of_a_late_seal() {
    let now = time::macros::datetime!(2026-03-01 10:30:00 UTC);
    let until = digest::retain_until("2026-03-01T10:00:05.250Z", now, 30);
    assert_eq!(digest::format_seconds(until), "2026-03-31T10:00:06Z");
    // Sealed days late: counted from the start of the day it is sealed.
    let until = digest::retain_until("2026-02-01T10:00:05.000Z", now, 30);
    assert_eq!(digest::format_seconds(until), "2026-03-31T00:00:00Z");
}

#[test]
fn archive_urls_name_a_bucket_and_a_prefix() {
    assert_eq!(
        verify::parse_archive_url("s3://b/p").unwrap(),
        ("b".to_owned(), "p/".to_owned())
    );
    assert_eq!(
        verify::parse_archive_url("s3://b").unwrap(),
        ("b".to_owned(), String::new())
    );
    assert_eq!(
        verify::parse_archive_url("s3://b/a/b/").unwrap(),
        ("b".to_owned(), "a/b/".to_owned())
    );
    assert!(verify::parse_archive_url("https://b/p").is_err());
    assert!(verify::parse_archive_url("s3:///p").is_err());
}

#[tokio::test]
async fn an_intact_archive_verifies_with_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bucket, signer, _) = archive(&dir);
    // Another writer, whose id needs encoding.
    seal(&mut bucket, &signer, &records("gw/2", 3), &[3]);
    let report = check(&bucket, &signer).await;
    assert!(report.verified(), "{:?}", report.problems);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let w = &report.writers[0];
    assert_eq!(
        (w.writer.as_str(), w.segments, w.records, w.first_seq, w.last_seq),
        (WRITER, 3, 12, 1, 12)
    );
    assert_eq!(w.newest_digest.as_deref(), Some(dig_key(11, 12).as_str()));
    assert_eq!(w.newest_record_at.as_deref(), Some("2026-03-01T10:00:12.000Z"));
    assert_eq!(report.writers[1].writer, "gw/2");
    // A key outside the layout is only a warning.
    bucket.put("trail/README", b"hello".to_vec());
    let report = check(&bucket, &signer).await;
    assert!(report.verified());
    assert_eq!(
        report.warnings,
        ["trail/README: not an object of the archive's layout (ignored)"]
    );
}

#[tokio::test]
async fn a_segment_uploaded_twice_with_the_same_bytes_still_verifies() {
    // What a seal cut short between the segment and its digest leaves once sealed again.
    let dir = tempfile::tempdir().unwrap();
    let (mut bucket, signer, _) = archive(&dir);
    let again = bucket.bytes(&seg_key(6, 10));
    bucket.put(&seg_key(6, 10), again);
    let again = bucket.bytes(&dig_key(6, 10));
    bucket.put(&dig_key(6, 10), again);
    assert!(check(&bucket, &signer).await.verified());
}

#[tokio::test]
async fn a_deleted_segment_or_digest_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bucket, signer, _) = archive(&dir);
    bucket.delete(&seg_key(6, 10));
    let (kind, key, detail) = problem(&bucket, &signer).await;
    assert_eq!((kind, key), (ProblemKind::Deleted, seg_key(6, 10)));
    assert!(detail.starts_with("a delete marker hides it"), "{detail}");

    let (mut bucket, signer, _) = archive(&dir);
    bucket.delete(&dig_key(1, 5));
    assert_eq!(problem(&bucket, &signer).await.0, ProblemKind::Deleted);
    assert_eq!(problem(&bucket, &signer).await.1, dig_key(1, 5));

    // Deleted, then put back as it was: still a deletion.
    let (mut bucket, signer, _) = archive(&dir);
    let bytes = bucket.bytes(&dig_key(6, 10));
    bucket.delete(&dig_key(6, 10));
    bucket.put(&dig_key(6, 10), bytes);
    let (kind, key, detail) = problem(&bucket, &signer).await;
    assert_eq!((kind, key), (ProblemKind::Deleted, dig_key(6, 10)));
    assert!(detail.contains("and put again"), "{detail}");
}

#[tokio::test]
async fn a_replaced_segment_or_digest_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bucket, signer, records) = archive(&dir);
    let mut forged = records[5..10].to_vec();
    forged[2].data = json!({"tool": "rm -rf"});
    bucket.put(&seg_key(6, 10), segment(&forged).bytes);
    let (kind, key, detail) = problem(&bucket, &signer).await;
    assert_eq!((kind, key), (ProblemKind::Replaced, seg_key(6, 10)));
    assert!(
        detail.contains("holds other bytes than the original version"),
        "{detail}"
    );

    let (mut bucket, signer, _) = archive(&dir);
    let edited = tampered_digest(&bucket.bytes(&dig_key(11, 12)), |d| d["records"] = json!(1));
    bucket.put(&dig_key(11, 12), edited);
    let (kind, key, _) = problem(&bucket, &signer).await;
    assert_eq!((kind, key), (ProblemKind::Replaced, dig_key(11, 12)));
}

#[tokio::test]
async fn an_edited_segment_or_digest_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bucket, signer, _) = archive(&dir);
    bucket.edit(&seg_key(1, 5), |b| b.push(0));
    let (kind, key, detail) = problem(&bucket, &signer).await;
    assert_eq!((kind, key), (ProblemKind::Edited, seg_key(1, 5)));
    assert!(detail.starts_with("its SHA-256 is "), "{detail}");

    let (mut bucket, signer, _) = archive(&dir);
    bucket.edit(&dig_key(6, 10), |b| {
        *b = tampered_digest(b, |d| d["last_hash"] = json!("0".repeat(64)));
    });
    let (kind, key, _) = problem(&bucket, &signer).await;
    assert_eq!((kind, key), (ProblemKind::Forged, dig_key(6, 10)));
}

#[tokio::test]
async fn a_digest_signed_with_another_key_is_forged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bucket, signer, records) = archive(&dir);
    let mallory = self::signer(&dir, "mallory.pem");
    // The attacker re-seals the last segment with edited records under their own key.
    let mut forged = records[10..12].to_vec();
    forged[1].data = json!({"tool": "nothing to see"});
    forged[1].hash = forged[1].compute_hash();
    let seg = segment(&forged);
    let previous = Some(PreviousRef {
        key: dig_key(6, 10),
        sha256: digest::sha256_hex(&bucket.bytes(&dig_key(6, 10))),
    });
    let d = Digest::of(PREFIX, WRITER, 11, 12, &seg, previous, lock());
    bucket.edit(&seg_key(11, 12), |b| *b = seg.bytes.clone());
    bucket.edit(&dig_key(11, 12), |b| *b = d.sign(&mallory));
    let (kind, key, detail) = problem(&bucket, &signer).await;
    assert_eq!((kind, key), (ProblemKind::Forged, dig_key(11, 12)));
    assert!(detail.contains("not the checkpoint key's"), "{detail}");
}

#[tokio::test]
async fn a_segment_removed_from_the_middle_is_found_however_the_rest_is_rechained() {
    let dir = tempfile::tempdir().unwrap();
    // Removed with its digest, nothing else touched: the next digest starts too late.
    let (mut bucket, signer, _) = archive(&dir);
    bucket.remove(&seg_key(6, 10));
    bucket.remove(&dig_key(6, 10));
    let (kind, key, detail) = problem(&bucket, &signer).await;
    assert_eq!(kind, ProblemKind::Missing);
    assert!(
        key.starts_with(&format!("{PREFIX}{WRITER}/digests/00000000000000000006-")),
        "{key}"
    );
    assert!(detail.contains("no digest covers records 6 to 10"), "{detail}");

    // Its digest alone removed: the segment is named as the one no digest vouches for.
    let (mut bucket, signer, _) = archive(&dir);
    bucket.remove(&dig_key(6, 10));
    let (kind, key, _) = problem(&bucket, &signer).await;
    assert_eq!((kind, key), (ProblemKind::Missing, dig_key(6, 10)));

    // Re-chained without the key: the next digest renumbered to follow the first, its
    // previous link and first hash set to the first digest's. Its signature fails.
    let (mut bucket, signer, records) = archive(&dir);
    bucket.remove(&seg_key(6, 10));
    bucket.remove(&dig_key(6, 10));
    let mut renumbered: Vec<Record> = records[10..12].to_vec();
    let mut head = records[4].clone();
    for r in &mut renumbered {
        r.seq = head.seq + 1;
        r.prev_hash = head.hash.clone();
        r.hash = r.compute_hash();
        head = r.clone();
    }
    let seg = segment(&renumbered);
    let original = Digest::open(&bucket.bytes(&dig_key(11, 12)), &signer.public_key()).unwrap();
    let previous = Some(PreviousRef {
        key: dig_key(1, 5),
        sha256: digest::sha256_hex(&bucket.bytes(&dig_key(1, 5))),
    });
    let forged = Digest::of(PREFIX, WRITER, 6, 7, &seg, previous, lock());
    let mut object: Value = serde_json::from_slice(&bucket.bytes(&dig_key(11, 12))).unwrap();
    object["digest"] = serde_json::to_value(&forged).unwrap();
    assert_ne!(forged, original);
    bucket.remove(&seg_key(11, 12));
    bucket.remove(&dig_key(11, 12));
    bucket.put(&seg_key(6, 7), seg.bytes);
    bucket.put(&dig_key(6, 7), serde_json::to_vec(&object).unwrap());
    let (kind, key, _) = problem(&bucket, &signer).await;
    assert_eq!((kind, key), (ProblemKind::Forged, dig_key(6, 7)));
}

#[tokio::test]
async fn a_segment_without_its_digest_is_unvouched() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bucket, signer, _) = archive(&dir);
    bucket.remove(&dig_key(11, 12));
    let (kind, key, detail) = problem(&bucket, &signer).await;
    assert_eq!((kind, key), (ProblemKind::Unvouched, seg_key(11, 12)));
    assert!(detail.contains(&dig_key(11, 12)), "{detail}");
}

#[tokio::test]
async fn the_first_segment_missing_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bucket, signer, _) = archive(&dir);
    bucket.remove(&seg_key(1, 5));
    bucket.remove(&dig_key(1, 5));
    let (kind, _, detail) = problem(&bucket, &signer).await;
    assert_eq!(kind, ProblemKind::Missing);
    assert!(detail.contains("no digest covers records 1 to 5"), "{detail}");

    // Only the segment gone: its digest names it.
    let (mut bucket, signer, _) = archive(&dir);
    bucket.remove(&seg_key(1, 5));
    let (kind, key, _) = problem(&bucket, &signer).await;
    assert_eq!((kind, key), (ProblemKind::Missing, seg_key(1, 5)));
}

#[tokio::test]
async fn records_that_do_not_hold_or_link_are_named_even_under_a_valid_digest() {
    // Sealed by the archive as the trail held them: an edited record in the database.
    let dir = tempfile::tempdir().unwrap();
    let signer = signer(&dir, "cp.pem");
    let mut recs = records(WRITER, 10);
    recs[7].data = json!({"edited": true});
    let mut bucket = Memory::default();
    seal(&mut bucket, &signer, &recs, &[5, 5]);
    let (kind, key, detail) = problem(&bucket, &signer).await;
    assert_eq!((kind, key), (ProblemKind::RecordBroken, seg_key(6, 10)));
    assert!(detail.contains("record 8 was edited"), "{detail}");

    // A chain restarted between two segments (each signed): the link across them breaks.
    let mut recs = records(WRITER, 5);
    let mut head = ChainHead::genesis(WRITER);
    head.seq = 5;
    recs.extend((6..=8).map(|i| head.append("request", &format!("{i:032x}"), "2026-03-01T10:01:00.000Z", json!({}))));
    let mut bucket = Memory::default();
    seal(&mut bucket, &signer, &recs, &[5, 3]);
    let (kind, key, detail) = problem(&bucket, &signer).await;
    assert_eq!((kind, key), (ProblemKind::ChainBroken, dig_key(6, 8)));
    assert!(detail.contains("its first record follows hash"), "{detail}");
}

#[tokio::test]
async fn a_digest_moved_to_another_range_or_writer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bucket, signer, _) = archive(&dir);
    let bytes = bucket.bytes(&dig_key(11, 12));
    bucket.remove(&dig_key(11, 12));
    bucket.put(&dig_key(11, 13), bytes);
    let (kind, key, detail) = problem(&bucket, &signer).await;
    assert_eq!((kind, key), (ProblemKind::Edited, dig_key(11, 13)));
    assert!(detail.contains("not what its key says"), "{detail}");
}

#[tokio::test]
async fn objects_without_retention_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bucket, signer, _) = archive(&dir);
    bucket.objects.get_mut(&seg_key(1, 5)).unwrap()[0].lock = None;
    bucket.objects.get_mut(&dig_key(1, 5)).unwrap()[0].lock =
        Some(("GOVERNANCE".into(), "2026-04-01T00:00:00Z".into()));
    let report = check(&bucket, &signer).await;
    assert!(report.verified());
    assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
    assert!(report.warnings[0].contains("retained until 2026-04-01T00:00:00Z, its digest says 2027-03-01T10:00:05Z"));
    assert!(report.warnings[1].starts_with(&format!("{} (version v1): no Object Lock retention", seg_key(1, 5))));
}

#[tokio::test]
async fn the_archive_state_moves_only_from_where_it_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let store = crate::audit::Store::open(&url, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let states = super::States::new(&store);
    assert!(states.all().await.unwrap().is_empty());
    // Planned once; a second plan of the same start (another replica) is refused.
    assert!(states.plan("w", 0, 5).await.unwrap());
    assert!(!states.plan("w", 0, 7).await.unwrap());
    let planned = super::State {
        sealed_seq: 0,
        digest_sha256: None,
        digest_key: None,
        pending_last: Some(5),
    };
    assert_eq!(states.all().await.unwrap()["w"], planned);
    // Sealed only as planned.
    assert!(!states.sealed("w", 0, 6, "k6", "x").await.unwrap());
    assert!(states.sealed("w", 0, 5, "k5", "aa").await.unwrap());
    assert!(!states.sealed("w", 0, 5, "k5", "aa").await.unwrap(), "not twice");
    assert_eq!(
        states.all().await.unwrap()["w"],
        super::State {
            sealed_seq: 5,
            digest_sha256: Some("aa".into()),
            digest_key: Some("k5".into()),
            pending_last: None,
        }
    );
    assert!(!states.plan("w", 0, 9).await.unwrap(), "not from an old start");
    assert!(states.plan("w", 5, 9).await.unwrap());
    assert!(states.sealed("w", 5, 9, "k9", "bb").await.unwrap());
    assert_eq!(states.all().await.unwrap()["w"].sealed_seq, 9);
}
