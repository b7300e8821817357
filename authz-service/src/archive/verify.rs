//! `gatehouse audit verify --archive s3://bucket/prefix`: checks the archive alone, with the
//! checkpoint public key and no database.
//!
//! Every version of every object under the prefix is listed (ListObjectVersions). An object's
//! content is its oldest version, the one the archive put under retention; a later version
//! that differs is a replacement, a delete marker a deletion. Per writer, the digests are
//! walked in seq order: each must be signed by the checkpoint key, name the previous digest
//! by key and SHA-256, start where the previous one ended (the first at record 1), and match
//! its segment's SHA-256 and size; the segments' records are one hash chain from the first
//! (each record's hash holds, each follows the last, across segments). The first piece that
//! does not hold is named with its key, per writer; a segment no digest vouches for is one
//! too. Retention shorter than the digest says, or none, is a warning.
//!
//! The walk is generic over [`Objects`] so that the checks run on objects in memory in tests.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use ed25519_dalek::VerifyingKey;
use gatehouse_core::audit::{ChainVerifier, GENESIS_HASH};

use super::digest::{self, Digest, DigestError, KeyKind};
use super::s3::{Bucket, Fetched, Version};

/// Where the archive's objects come from.
pub trait Objects: Sync {
    /// The prefix every key starts with (empty, or ending with `/`).
    fn prefix(&self) -> &str;
    /// Every version and delete marker under the prefix.
    fn versions(&self) -> impl Future<Output = Result<Vec<Version>, String>> + Send;
    /// One version's bytes and retention.
    fn fetch(&self, key: &str, version_id: &str) -> impl Future<Output = Result<Fetched, String>> + Send;
}

/// An archive in an S3 bucket.
pub struct S3Objects {
    pub bucket: Bucket,
    pub prefix: String,
}

impl Objects for S3Objects {
    fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn versions(&self) -> Result<Vec<Version>, String> {
        self.bucket.versions(&self.prefix).await
    }

    async fn fetch(&self, key: &str, version_id: &str) -> Result<Fetched, String> {
        self.bucket.get_version(key, version_id).await
    }
}

/// `s3://bucket/prefix` as (bucket, prefix normalized like the config's: empty or ending `/`).
pub fn parse_archive_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| format!("{url:?} is not an s3://bucket/prefix URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("{url:?} names no bucket"));
    }
    let mut prefix = prefix.trim_start_matches('/').to_owned();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    Ok((bucket.to_owned(), prefix))
}

/// What kind of piece is broken or missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A delete marker hides it (or did).
    Deleted,
    /// A later version holds other bytes.
    Replaced,
    /// Not in the bucket at all (every version removed), or never uploaded.
    Missing,
    /// Its bytes are not what its digest (or its key) says.
    Edited,
    /// A digest whose signature is not the checkpoint key's.
    Forged,
    /// The digests do not form one chain (previous digest, seq ranges).
    ChainBroken,
    /// A record whose hash does not hold, or that does not follow the one before it.
    RecordBroken,
    /// A segment no digest vouches for.
    Unvouched,
}

impl ProblemKind {
    fn label(self) -> &'static str {
        match self {
            Self::Deleted => "DELETED",
            Self::Replaced => "REPLACED",
            Self::Missing => "MISSING",
            Self::Edited => "EDITED",
            Self::Forged => "FORGED",
            Self::ChainBroken => "CHAIN BROKEN",
            Self::RecordBroken => "RECORD BROKEN",
            Self::Unvouched => "UNVOUCHED",
        }
    }
}

/// The first broken or missing piece of one writer's archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub writer: String,
    pub kind: ProblemKind,
    /// The object at fault (or, for one that is missing, the key it would have).
    pub key: String,
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.kind.label(), self.key, self.detail)
    }
}

/// One writer's archive as far as it verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterSummary {
    pub writer: String,
    pub segments: u64,
    pub records: u64,
    /// The seq range the verified segments cover (0, 0 when none).
    pub first_seq: u64,
    pub last_seq: u64,
    /// The newest verified digest: its key, when it was uploaded, its last record's time.
    pub newest_digest: Option<String>,
    pub newest_uploaded: Option<String>,
    pub newest_record_at: Option<String>,
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Report {
    pub writers: Vec<WriterSummary>,
    /// At most one per writer: its first broken or missing piece.
    pub problems: Vec<Problem>,
    /// Not breaks: objects outside the layout, retention missing or shorter than signed.
    pub warnings: Vec<String>,
}

impl Report {
    pub fn verified(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One key's versions, oldest first.
#[derive(Debug, Default)]
struct History {
    versions: Vec<Version>,
}

/// An object's content: its oldest version.
struct Original {
    fetched: Fetched,
    version: Version,
}

/// Verifies the whole archive under `key`. `Err` only when the bucket cannot be read.
pub async fn verify(objects: &impl Objects, key: &VerifyingKey) -> Result<Report, String> {
    let prefix = objects.prefix().to_owned();
    let mut report = Report::default();
    // S3 lists a key's versions newest first; the list position breaks a tie of times.
    let mut by_key: BTreeMap<String, Vec<(usize, Version)>> = BTreeMap::new();
    for (i, v) in objects.versions().await?.into_iter().enumerate() {
        by_key.entry(v.key.clone()).or_default().push((i, v));
    }
    let mut writers: BTreeMap<String, Layout> = BTreeMap::new();
    let mut histories = BTreeMap::new();
    for (key, mut versions) in by_key {
        versions.sort_by(|(i, a), (j, b)| a.last_modified.cmp(&b.last_modified).then(j.cmp(i)));
        let parsed = key.strip_prefix(&prefix).and_then(digest::parse_key);
        let Some(parsed) = parsed else {
            report
                .warnings
                .push(format!("{key}: not an object of the archive's layout (ignored)"));
            continue;
        };
        let layout = writers.entry(parsed.writer).or_default();
        let ranges = match parsed.kind {
            KeyKind::Segment => &mut layout.segments,
            KeyKind::Digest => &mut layout.digests,
        };
        ranges.insert((parsed.first, parsed.last), key.clone());
        histories.insert(
            key,
            History {
                versions: versions.into_iter().map(|(_, v)| v).collect(),
            },
        );
    }
    for (writer, layout) in writers {
        let mut walk = Walk {
            objects,
            key,
            prefix: &prefix,
            writer: &writer,
            histories: &histories,
            warnings: &mut report.warnings,
            summary: WriterSummary {
                writer: writer.clone(),
                ..WriterSummary::default()
            },
        };
        let outcome = walk.run(&layout).await?;
        report.writers.push(walk.summary);
        if let Err(problem) = outcome {
            report.problems.push(problem);
        }
    }
    Ok(report)
}

/// One writer's keys by seq range.
#[derive(Debug, Default)]
struct Layout {
    segments: BTreeMap<(u64, u64), String>,
    digests: BTreeMap<(u64, u64), String>,
}

/// The digest before the one being checked.
struct Previous {
    key: String,
    sha256: String,
    last_seq: u64,
    last_hash: String,
}

struct Walk<'a, O> {
    objects: &'a O,
    key: &'a VerifyingKey,
    prefix: &'a str,
    writer: &'a str,
    histories: &'a BTreeMap<String, History>,
    warnings: &'a mut Vec<String>,
    summary: WriterSummary,
}

/// The walk's answer: `Err(String)` when the bucket could not be read, `Ok(Err(problem))`
/// at the first broken piece.
type Checked<T> = Result<Result<T, Problem>, String>;

impl<O: Objects> Walk<'_, O> {
    fn problem(&self, kind: ProblemKind, key: &str, detail: impl Into<String>) -> Problem {
        Problem {
            writer: self.writer.to_owned(),
            kind,
            key: key.to_owned(),
            detail: detail.into(),
        }
    }

    async fn run(&mut self, layout: &Layout) -> Checked<()> {
        let mut chain = ChainVerifier::new(self.writer);
        let mut previous: Option<Previous> = None;
        for (&(first, last), digest_key) in &layout.digests {
            let expected_first = previous.as_ref().map_or(1, |p| p.last_seq + 1);
            if first > expected_first {
                // The digest that should come next is not there; name it by the segment that
                // starts there, if any.
                let missing = layout
                    .segments
                    .keys()
                    .find(|(f, _)| *f == expected_first)
                    .map(|&(f, l)| digest::digest_key(self.prefix, self.writer, f, l));
                let detail = format!(
                    "no digest covers records {expected_first} to {} (the next digest, {digest_key}, starts at record {first})",
                    first - 1
                );
                let key = missing.unwrap_or_else(|| {
                    format!(
                        "{}{}/digests/{expected_first:020}-…",
                        self.prefix,
                        digest::writer_folder(self.writer)
                    )
                });
                return Ok(Err(self.problem(ProblemKind::Missing, &key, detail)));
            }
            if first < expected_first {
                return Ok(Err(self.problem(
                    ProblemKind::ChainBroken,
                    digest_key,
                    format!(
                        "it covers records {first} to {last}, which overlap the digest before it (up to record {})",
                        expected_first - 1
                    ),
                )));
            }
            let original = match self.original(digest_key).await? {
                Ok(o) => o,
                Err(p) => return Ok(Err(p)),
            };
            let digest = match Digest::open(&original.fetched.bytes, self.key) {
                Ok(d) => d,
                Err(DigestError::BadSignature) => {
                    return Ok(Err(self.problem(
                        ProblemKind::Forged,
                        digest_key,
                        "its signature is not the checkpoint key's (edited, or signed with another key)",
                    )));
                }
                Err(e @ DigestError::Unreadable(_)) => {
                    return Ok(Err(self.problem(ProblemKind::Edited, digest_key, e.to_string())));
                }
            };
            let segment_key = digest::segment_key(self.prefix, self.writer, first, last);
            if digest.writer != self.writer
                || digest.first_seq != first
                || digest.last_seq != last
                || digest.segment.key != segment_key
            {
                return Ok(Err(self.problem(
                    ProblemKind::Edited,
                    digest_key,
                    format!(
                        "it vouches for writer {:?}, records {} to {}, segment {}: not what its key says (moved or copied)",
                        digest.writer, digest.first_seq, digest.last_seq, digest.segment.key
                    ),
                )));
            }
            self.check_retention(digest_key, &original, &digest.object_lock);
            let sha256 = digest::sha256_hex(&original.fetched.bytes);
            if let Err(p) = self.check_link(digest_key, &digest, previous.as_ref()) {
                return Ok(Err(p));
            }
            // The segment it vouches for.
            if !self.histories.contains_key(&segment_key) {
                return Ok(Err(self.problem(
                    ProblemKind::Missing,
                    &segment_key,
                    format!("not in the bucket; digest {digest_key} vouches for it"),
                )));
            }
            let segment = match self.original(&segment_key).await? {
                Ok(o) => o,
                Err(p) => return Ok(Err(p)),
            };
            self.check_retention(&segment_key, &segment, &digest.object_lock);
            let records = match self.check_segment(&segment_key, &segment.fetched.bytes, &digest, &mut chain) {
                Ok(n) => n,
                Err(p) => return Ok(Err(p)),
            };
            let s = &mut self.summary;
            s.segments += 1;
            s.records += records;
            if s.first_seq == 0 {
                s.first_seq = first;
            }
            s.last_seq = last;
            s.newest_digest = Some(digest_key.clone());
            s.newest_uploaded = Some(original.version.last_modified.clone());
            s.newest_record_at = Some(digest.last_recorded_at.clone());
            previous = Some(Previous {
                key: digest_key.clone(),
                sha256,
                last_seq: last,
                last_hash: digest.last_hash,
            });
        }
        // Segments no digest vouches for (a digest deleted with every version, or an upload
        // cut short between the segment and its digest).
        if let Some(((first, last), key)) = layout.segments.iter().find(|(r, _)| !layout.digests.contains_key(r)) {
            return Ok(Err(self.problem(
                ProblemKind::Unvouched,
                key,
                format!(
                    "no digest vouches for records {first} to {last} ({} is not in the bucket)",
                    digest::digest_key(self.prefix, self.writer, *first, *last)
                ),
            )));
        }
        Ok(Ok(()))
    }

    /// The digest names the one before it, by key and SHA-256, and its chain goes on from it.
    fn check_link(&self, digest_key: &str, digest: &Digest, previous: Option<&Previous>) -> Result<(), Problem> {
        match (previous, &digest.previous) {
            (None, None) => {}
            (None, Some(named)) => {
                return Err(self.problem(
                    ProblemKind::Missing,
                    &named.key,
                    format!(
                        "not in the bucket; {digest_key}, the writer's first digest there, names it as its previous"
                    ),
                ));
            }
            (Some(p), None) => {
                return Err(self.problem(
                    ProblemKind::ChainBroken,
                    digest_key,
                    format!("it names no previous digest, but follows {}", p.key),
                ));
            }
            (Some(p), Some(named)) if named.key != p.key || named.sha256 != p.sha256 => {
                return Err(self.problem(
                    ProblemKind::ChainBroken,
                    digest_key,
                    format!(
                        "it names {} (SHA-256 {}) as its previous digest, but the one before it is {} (SHA-256 {})",
                        named.key, named.sha256, p.key, p.sha256
                    ),
                ));
            }
            (Some(_), Some(_)) => {}
        }
        let expected = previous.map_or(GENESIS_HASH, |p| p.last_hash.as_str());
        if digest.first_prev_hash != expected {
            return Err(self.problem(
                ProblemKind::ChainBroken,
                digest_key,
                format!(
                    "its first record follows hash {}, but the previous digest ends at hash {expected}",
                    digest.first_prev_hash
                ),
            ));
        }
        Ok(())
    }

    /// The segment's bytes are the ones its digest vouches for, and its records go on with
    /// the writer's chain. Returns its record count.
    fn check_segment(
        &self,
        segment_key: &str,
        bytes: &[u8],
        digest: &Digest,
        chain: &mut ChainVerifier,
    ) -> Result<u64, Problem> {
        let sha256 = digest::sha256_hex(bytes);
        if sha256 != digest.segment.sha256 || bytes.len() as u64 != digest.segment.bytes {
            return Err(self.problem(
                ProblemKind::Edited,
                segment_key,
                format!(
                    "its SHA-256 is {sha256} ({} bytes), its digest says {} ({} bytes)",
                    bytes.len(),
                    digest.segment.sha256,
                    digest.segment.bytes
                ),
            ));
        }
        let records = digest::read_segment(bytes).map_err(|e| self.problem(ProblemKind::Edited, segment_key, e))?;
        if records.len() as u64 != digest.records {
            return Err(self.problem(
                ProblemKind::RecordBroken,
                segment_key,
                format!("it holds {} records, its digest says {}", records.len(), digest.records),
            ));
        }
        for record in &records {
            if record.writer != self.writer || record.seq < digest.first_seq || record.seq > digest.last_seq {
                return Err(self.problem(
                    ProblemKind::RecordBroken,
                    segment_key,
                    format!(
                        "record {} of writer {:?} is outside the segment's writer and range",
                        record.seq, record.writer
                    ),
                ));
            }
            chain
                .push(record)
                .map_err(|b| self.problem(ProblemKind::RecordBroken, segment_key, b.to_string()))?;
        }
        let (first, last) = (records.first(), records.last());
        if first.map(|r| r.prev_hash.as_str()) != Some(digest.first_prev_hash.as_str())
            || last.map(|r| r.hash.as_str()) != Some(digest.last_hash.as_str())
        {
            return Err(self.problem(
                ProblemKind::RecordBroken,
                segment_key,
                "its first and last records are not the ones its digest names",
            ));
        }
        Ok(records.len() as u64)
    }

    /// The object's oldest version; a delete marker, or a later version with other bytes, is
    /// the problem found.
    async fn original(&self, key: &str) -> Checked<Original> {
        let Some(history) = self.histories.get(key) else {
            return Ok(Err(self.problem(ProblemKind::Missing, key, "not in the bucket")));
        };
        if let Some(marker) = history.versions.iter().rev().find(|v| v.delete_marker) {
            let detail = if marker.is_latest {
                format!(
                    "a delete marker hides it (version {}, {})",
                    marker.version_id, marker.last_modified
                )
            } else {
                format!(
                    "it was deleted (delete marker {}, {}) and put again",
                    marker.version_id, marker.last_modified
                )
            };
            return Ok(Err(self.problem(ProblemKind::Deleted, key, detail)));
        }
        let mut versions = history.versions.iter();
        let Some(oldest) = versions.next() else {
            return Ok(Err(self.problem(ProblemKind::Missing, key, "not in the bucket")));
        };
        let fetched = self.objects.fetch(key, &oldest.version_id).await?;
        let sha256 = digest::sha256_hex(&fetched.bytes);
        for later in versions {
            let other = self.objects.fetch(key, &later.version_id).await?;
            if digest::sha256_hex(&other.bytes) != sha256 {
                return Ok(Err(self.problem(
                    ProblemKind::Replaced,
                    key,
                    format!(
                        "version {} ({}) holds other bytes than the original version {} ({})",
                        later.version_id, later.last_modified, oldest.version_id, oldest.last_modified
                    ),
                )));
            }
        }
        Ok(Ok(Original {
            fetched,
            version: oldest.clone(),
        }))
    }

    /// Warns when the object is not retained as its digest says it was put.
    fn check_retention(&mut self, key: &str, object: &Original, signed: &digest::LockRef) {
        let parse = |t: &str| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok();
        let version = &object.version.version_id;
        match (&object.fetched.lock_mode, &object.fetched.retain_until) {
            (Some(mode), Some(until)) => {
                if mode != &signed.mode {
                    self.warnings.push(format!(
                        "{key} (version {version}): retention mode {mode}, its digest says {}",
                        signed.mode
                    ));
                }
                if parse(until) < parse(&signed.retain_until) {
                    self.warnings.push(format!(
                        "{key} (version {version}): retained until {until}, its digest says {}",
                        signed.retain_until
                    ));
                }
            }
            _ => self.warnings.push(format!(
                "{key} (version {version}): no Object Lock retention is visible (none, or no s3:GetObjectRetention permission)"
            )),
        }
    }
}
