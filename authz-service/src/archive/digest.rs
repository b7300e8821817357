//! What the archive puts in the bucket, as pure functions: object keys, a segment's bytes,
//! and the signed digest that vouches for it. The sealer ([`super::run`]) and the verifier
//! ([`super::verify`]) both use them, so what one writes the other reads.
//!
//! Layout under the configured prefix, per writer (its id percent-encoded, [`writer_folder`]):
//! `{writer}/segments/{first:020}-{last:020}.jsonl.gz` and
//! `{writer}/digests/{first:020}-{last:020}.json`, where first..=last is the seq range sealed.
//!
//! Everything in a segment and its digest is a function of the records, the previous digest
//! and the lock settings (no clock reading but the UTC day of a late seal): sealing a range
//! again after a crash writes the same bytes under the same keys.

use std::io::{Read, Write};

use ed25519_dalek::VerifyingKey;
use gatehouse_core::audit::{Record, canonical_json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::audit::checkpoint::{CheckpointSigner, bytes_signed};

/// The digest format this code writes and reads.
pub const FORMAT: &str = "gatehouse-archive-digest/1";
/// The most bytes a segment may decompress to when read back (a hostile bucket must not
/// exhaust the verifier's memory).
pub const SEGMENT_MAX_BYTES: u64 = 4 << 30;

/// A writer id as one path element of a key: ASCII letters, digits and `-_.~` as they are,
/// every other byte (`/` and `%` included) as `%XX`; an id of dots only is encoded whole so
/// that it never reads as `.` or `..`.
pub fn writer_folder(writer: &str) -> String {
    let dots_only = writer.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(writer.len());
    for b in writer.bytes() {
        let plain = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') || (b == b'.' && !dots_only);
        if plain {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The writer id a folder name encodes; `None` when it is not one [`writer_folder`] writes.
pub fn writer_of_folder(folder: &str) -> Option<String> {
    let bytes = folder.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = folder.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let writer = String::from_utf8(out).ok()?;
    (writer_folder(&writer) == folder).then_some(writer)
}

/// The keys of one sealed range.
pub fn segment_key(prefix: &str, writer: &str, first: u64, last: u64) -> String {
    format!(
        "{prefix}{}/segments/{first:020}-{last:020}.jsonl.gz",
        writer_folder(writer)
    )
}

pub fn digest_key(prefix: &str, writer: &str, first: u64, last: u64) -> String {
    format!("{prefix}{}/digests/{first:020}-{last:020}.json", writer_folder(writer))
}

/// What a key under the prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    Segment,
    Digest,
}

/// A key of the archive layout, read back: whose, which kind, which range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    pub writer: String,
    pub kind: KeyKind,
    pub first: u64,
    pub last: u64,
}

/// Reads `key` (without the prefix) as an archive key; `None` when it is not one.
pub fn parse_key(rest: &str) -> Option<ParsedKey> {
    let (folder, rest) = rest.split_once('/')?;
    let (kind, name) = rest.split_once('/')?;
    let (kind, range) = match kind {
        "segments" => (KeyKind::Segment, name.strip_suffix(".jsonl.gz")?),
        "digests" => (KeyKind::Digest, name.strip_suffix(".json")?),
        _ => return None,
    };
    let (first, last) = range.split_once('-')?;
    let number = |s: &str| (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u64>().ok())?;
    let (first, last) = (number(first)?, number(last)?);
    (first >= 1 && first <= last).then_some(())?;
    Some(ParsedKey {
        writer: writer_of_folder(folder)?,
        kind,
        first,
        last,
    })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A segment being written: each record as stored, one JSON line, into gzip with no name and
/// no time in its header (the same records give the same bytes).
pub struct SegmentWriter {
    gz: flate2::write::GzEncoder<Vec<u8>>,
    first: Option<Record>,
    last: Option<Record>,
    records: u64,
    /// The bytes of the lines written, before gzip.
    raw_bytes: u64,
}

/// A written segment: the gzip object's bytes, and the records it holds (by count, and its
/// first and last).
#[derive(Debug, Clone)]
pub struct Segment {
    pub bytes: Vec<u8>,
    pub records: u64,
    pub first: Record,
    pub last: Record,
}

impl Default for SegmentWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl SegmentWriter {
    pub fn new() -> Self {
        Self {
            gz: flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::default()),
            first: None,
            last: None,
            records: 0,
            raw_bytes: 0,
        }
    }

    /// The bytes of the records pushed so far, as lines before gzip.
    pub fn raw_bytes(&self) -> u64 {
        self.raw_bytes
    }

    pub fn push(&mut self, record: Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.gz.write_all(&line)?;
        self.raw_bytes += line.len() as u64;
        self.records += 1;
        if self.first.is_none() {
            self.first = Some(record.clone());
        }
        self.last = Some(record);
        Ok(())
    }

    /// The segment; `None` when no record was pushed.
    pub fn finish(self) -> std::io::Result<Option<Segment>> {
        let bytes = self.gz.finish()?;
        Ok(self.first.zip(self.last).map(|(first, last)| Segment {
            bytes,
            records: self.records,
            first,
            last,
        }))
    }
}

/// A segment object's records, in the order they are in it; an error names what is wrong.
pub fn read_segment(gz: &[u8]) -> Result<Vec<Record>, String> {
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .take(SEGMENT_MAX_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| format!("not gzip: {e}"))?;
    let text = std::str::from_utf8(&text).map_err(|_| "not UTF-8 text".to_owned())?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| serde_json::from_str(line).map_err(|e| format!("line {}: not a record: {e}", i + 1)))
        .collect()
}

/// The signed part of a digest object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    pub format: String,
    pub writer: String,
    /// The seq range sealed (every record of the writer in it, as the trail held them).
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
    /// The first record's `prev_hash` and the last one's `hash`: the chain runs through.
    pub first_prev_hash: String,
    pub last_hash: String,
    pub first_recorded_at: String,
    pub last_recorded_at: String,
    pub segment: SegmentRef,
    /// The writer's digest before this one (`None` for its first).
    pub previous: Option<PreviousRef>,
    pub object_lock: LockRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRef {
    pub key: String,
    /// Of the gzip object's bytes.
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousRef {
    pub key: String,
    /// Of the previous digest object's bytes.
    pub sha256: String,
}

/// The retention both objects were uploaded with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockRef {
    /// `COMPLIANCE` or `GOVERNANCE`.
    pub mode: String,
    /// RFC 3339, whole seconds, UTC.
    pub retain_until: String,
}

/// A digest object: the digest and the hex Ed25519 signature of its canonical JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedDigest {
    digest: Value,
    signature: String,
}

impl Digest {
    /// The digest of `segment`, the records `first ..= last` of `writer`, under `prefix`.
    pub fn of(
        prefix: &str,
        writer: &str,
        first: u64,
        last: u64,
        segment: &Segment,
        previous: Option<PreviousRef>,
        object_lock: LockRef,
    ) -> Self {
        Self {
            format: FORMAT.into(),
            writer: writer.to_owned(),
            first_seq: first,
            last_seq: last,
            records: segment.records,
            first_prev_hash: segment.first.prev_hash.clone(),
            last_hash: segment.last.hash.clone(),
            first_recorded_at: segment.first.recorded_at.clone(),
            last_recorded_at: segment.last.recorded_at.clone(),
            segment: SegmentRef {
                key: segment_key(prefix, writer, first, last),
                sha256: sha256_hex(&segment.bytes),
                bytes: segment.bytes.len() as u64,
            },
            previous,
            object_lock,
        }
    }

    /// The digest object's bytes, signed with the checkpoint key.
    pub fn sign(&self, signer: &CheckpointSigner) -> Vec<u8> {
        let digest = serde_json::to_value(self).unwrap_or(Value::Null);
        let signature = hex::encode(signer.sign_bytes(&canonical_json(&digest)));
        let mut bytes = serde_json::to_vec_pretty(&SignedDigest { digest, signature }).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Reads a digest object and checks its signature under `key`.
    pub fn open(bytes: &[u8], key: &VerifyingKey) -> Result<Self, DigestError> {
        let signed: SignedDigest = serde_json::from_slice(bytes).map_err(|e| DigestError::Unreadable(e.to_string()))?;
        if !bytes_signed(key, &canonical_json(&signed.digest), &signed.signature) {
            return Err(DigestError::BadSignature);
        }
        let digest: Self = serde_json::from_value(signed.digest).map_err(|e| DigestError::Unreadable(e.to_string()))?;
        if digest.format != FORMAT {
            return Err(DigestError::Unreadable(format!("unknown format {:?}", digest.format)));
        }
        Ok(digest)
    }

    /// Whether `other` seals the same records the same way, whatever retention it was given
    /// (a range sealed again on another day).
    pub fn same_seal(&self, other: &Self) -> bool {
        let strip = |d: &Self| Self {
            object_lock: LockRef {
                mode: d.object_lock.mode.clone(),
                retain_until: String::new(),
            },
            ..d.clone()
        };
        strip(self) == strip(other)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("not a digest: {0}")]
    Unreadable(String),
    #[error("its signature is not the checkpoint key's")]
    BadSignature,
}

/// Until when a segment whose last record is `last_recorded_at` is kept: `days` after that
/// record, or after the start of `today` (UTC) if that is later (a late seal must still
/// retain it `days` from about now). Whole seconds.
pub fn retain_until(last_recorded_at: &str, today: time::OffsetDateTime, days: u32) -> time::OffsetDateTime {
    let recorded =
        time::OffsetDateTime::parse(last_recorded_at, &time::format_description::well_known::Rfc3339).unwrap_or(today);
    let day_start = today.replace_time(time::Time::MIDNIGHT);
    let from = recorded.max(day_start);
    let until = from + time::Duration::days(i64::from(days));
    // Up to the next whole second.
    let whole = until.replace_nanosecond(0).unwrap_or(until);
    if whole < until {
        whole + time::Duration::SECOND
    } else {
        whole
    }
}

/// RFC 3339 in whole seconds, UTC (`2026-05-01T10:00:00Z`).
pub fn format_seconds(t: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.to_offset(time::UtcOffset::UTC).format(&format).unwrap_or_default()
}
