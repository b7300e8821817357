//! Audit records and the hash chain that makes the trail tamper-evident.
//!
//! Every record a writer appends holds the hash of the writer's previous record, and its
//! own hash covers its sequence number, writer, kind, request id, time, the previous hash
//! and its data, over a canonical JSON encoding. [`verify_chain`] recomputes all of it, so
//! an edit, a deletion, an insertion or a reordering of stored rows is found and named.
//!
//! Two encodings exist. Version 2 (written now) hashes the fields with the SHA-256 of the
//! data's canonical JSON, so a record's place in the chain can be proved without its content
//! (a [`Link`]: what a session export carries for the records of other sessions between its
//! own and a signed checkpoint). Version 1 (written before) hashed the data itself; a
//! record's hash holds if it is either, as each binds the same content.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The `prev_hash` of a writer's first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// The service decided on a request (allow or deny), before any upstream saw it.
    Request,
    /// The filter observed (part of) the answer the client received.
    Response,
    /// The filter refused a request as malformed before it reached the service.
    RequestRejected,
    /// A step of an approval: requested, notified, approved, denied, expired, used.
    Approval,
    /// The service's configuration at start or at a reload, taken or refused.
    ConfigChanged,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Response => "response",
            Self::RequestRejected => "request_rejected",
            Self::Approval => "approval",
            Self::ConfigChanged => "config_changed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "request" => Some(Self::Request),
            "response" => Some(Self::Response),
            "request_rejected" => Some(Self::RequestRejected),
            "approval" => Some(Self::Approval),
            "config_changed" => Some(Self::ConfigChanged),
            _ => None,
        }
    }
}

/// One record as stored and as hashed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the writer's chain, from 1, without gaps.
    pub seq: u64,
    /// Which service instance wrote the record; each writer has its own chain.
    pub writer: String,
    /// [`RecordKind`] as text, kept as stored so an unknown kind still verifies.
    pub kind: String,
    pub request_id: String,
    /// RFC 3339, UTC, as stored.
    pub recorded_at: String,
    pub prev_hash: String,
    pub hash: String,
    pub data: Value,
}

/// The [`RecordFields`] of anything with the record's field names (a record, a link).
macro_rules! fields_of {
    ($r:expr) => {
        RecordFields {
            seq: $r.seq,
            writer: &$r.writer,
            kind: &$r.kind,
            request_id: &$r.request_id,
            recorded_at: &$r.recorded_at,
            prev_hash: &$r.prev_hash,
        }
    };
}

impl Record {
    fn fields(&self) -> RecordFields<'_> {
        fields_of!(self)
    }

    /// The hash this record should carry, computed from everything but `hash` (version 2).
    pub fn compute_hash(&self) -> String {
        self.fields().hash(&canonical_json(&self.data))
    }

    /// Whether `hash` is this record's hash, in either encoding.
    pub fn hash_holds(&self) -> bool {
        let canonical = canonical_json(&self.data);
        let fields = self.fields();
        fields.hash(&canonical) == self.hash || fields.hash_v1(&canonical) == self.hash
    }

    /// This record's place in its chain without its content; `None` for a version 1 record,
    /// whose hash cannot be checked without its data.
    pub fn link(&self) -> Option<Link> {
        let data_sha256 = data_digest(&canonical_json(&self.data));
        let link = Link {
            seq: self.seq,
            writer: self.writer.clone(),
            kind: self.kind.clone(),
            request_id: self.request_id.clone(),
            recorded_at: self.recorded_at.clone(),
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
            data_sha256,
        };
        link.hash_holds().then_some(link)
    }
}

/// A record's place in its writer's chain without its data: everything its (version 2) hash
/// covers, the data by its SHA-256. Proves a chain runs through records whose content is not
/// shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub seq: u64,
    pub writer: String,
    pub kind: String,
    pub request_id: String,
    pub recorded_at: String,
    pub prev_hash: String,
    pub hash: String,
    pub data_sha256: String,
}

impl Link {
    /// Whether `hash` is the version 2 hash of these fields.
    pub fn hash_holds(&self) -> bool {
        fields_of!(self).hash_of_digest(&self.data_sha256) == self.hash
    }
}

/// SHA-256, hex, over the canonical encoding of a record's fields (version 2: with the
/// SHA-256 of the data's canonical JSON).
pub fn record_hash(
    seq: u64,
    writer: &str,
    kind: &str,
    request_id: &str,
    recorded_at: &str,
    prev_hash: &str,
    data: &Value,
) -> String {
    let fields = RecordFields {
        seq,
        writer,
        kind,
        request_id,
        recorded_at,
        prev_hash,
    };
    fields.hash(&canonical_json(data))
}

/// SHA-256, hex, of a record's canonical data: what a version 2 hash covers of it.
pub fn data_digest(canonical_data: &[u8]) -> String {
    hex::encode(Sha256::digest(canonical_data))
}

/// A record's fields but its data: with the data's [`canonical_json`], what its hash covers.
struct RecordFields<'a> {
    seq: u64,
    writer: &'a str,
    kind: &'a str,
    request_id: &'a str,
    recorded_at: &'a str,
    prev_hash: &'a str,
}

impl RecordFields<'_> {
    /// The hash written now (version 2).
    fn hash(&self, canonical_data: &[u8]) -> String {
        self.hash_of_digest(&data_digest(canonical_data))
    }

    /// Version 2: the fields and the data's digest, one fixed-order object.
    fn hash_of_digest(&self, data_sha256: &str) -> String {
        let mut buf = self.prefix(2);
        buf.extend_from_slice(b",\"data_sha256\":");
        write_str(data_sha256, &mut buf);
        buf.push(b'}');
        hex::encode(Sha256::digest(&buf))
    }

    /// Version 1 (records written before version 2): the fields and the data itself.
    fn hash_v1(&self, canonical_data: &[u8]) -> String {
        let mut buf = self.prefix(1);
        buf.extend_from_slice(b",\"data\":");
        let mut hasher = Sha256::new();
        hasher.update(&buf);
        hasher.update(canonical_data);
        hasher.update(b"}");
        hex::encode(hasher.finalize())
    }

    fn prefix(&self, version: u8) -> Vec<u8> {
        // A fixed-order object: the field set is part of the format, so a version tag leads it.
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(b"{\"v\":");
        buf.extend_from_slice(version.to_string().as_bytes());
        buf.extend_from_slice(b",\"seq\":");
        buf.extend_from_slice(self.seq.to_string().as_bytes());
        for (key, value) in [
            ("writer", self.writer),
            ("kind", self.kind),
            ("request_id", self.request_id),
            ("recorded_at", self.recorded_at),
            ("prev_hash", self.prev_hash),
        ] {
            buf.extend_from_slice(b",\"");
            buf.extend_from_slice(key.as_bytes());
            buf.extend_from_slice(b"\":");
            write_str(value, &mut buf);
        }
        buf
    }
}

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no insignificant white space,
/// strings and numbers as serde_json writes them. Independent of map ordering features.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            out.push(b'{');
            let by_bytes = |a: &&String, b: &&String| a.as_bytes() <= b.as_bytes();
            if map.keys().is_sorted_by(by_bytes) {
                // serde_json's default map iterates in this order already: no sorted copy.
                write_members(map.iter(), out);
            } else {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                write_members(entries.into_iter(), out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        // Scalars: serde_json's own compact writer is deterministic; writing to a Vec cannot fail.
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

fn write_members<'a>(members: impl Iterator<Item = (&'a String, &'a Value)>, out: &mut Vec<u8>) {
    for (i, (k, v)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(k, out);
        out.push(b':');
        write_canonical(v, out);
    }
}

/// A string as serde_json writes it (the same escapes as a `Value::String`).
fn write_str(s: &str, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The first place a writer's chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChainBreak {
    #[error("writer {writer}: record {seq} was edited (its hash does not match its contents)")]
    Edited { writer: String, seq: u64 },
    #[error("writer {writer}: record {expected} is missing (found {found} next)")]
    Missing { writer: String, expected: u64, found: u64 },
    #[error("writer {writer}: record {seq} appears more than once")]
    Duplicate { writer: String, seq: u64 },
    #[error(
        "writer {writer}: record {seq} does not follow record {prev} (inserted, reordered or its predecessor was altered)"
    )]
    Unlinked { writer: String, seq: u64, prev: u64 },
    #[error(
        "writer {writer}: the chain ends at record {last} but a signed checkpoint vouches for record {checkpoint} (records were deleted)"
    )]
    Truncated { writer: String, last: u64, checkpoint: u64 },
    #[error(
        "writer {writer}: record {seq} is not the record a signed checkpoint vouches for (the chain was rewritten)"
    )]
    Rewritten { writer: String, seq: u64 },
    #[error("writer {writer}: the checkpoint at record {seq} has an invalid signature")]
    BadCheckpoint { writer: String, seq: u64 },
}

impl ChainBreak {
    /// The sequence number of the first record found broken.
    pub fn seq(&self) -> u64 {
        match self {
            Self::Edited { seq, .. }
            | Self::Duplicate { seq, .. }
            | Self::Unlinked { seq, .. }
            | Self::Rewritten { seq, .. }
            | Self::BadCheckpoint { seq, .. } => *seq,
            Self::Missing { expected, .. } => *expected,
            Self::Truncated { last, .. } => last + 1,
        }
    }
}

/// Incremental verifier for one writer's records, fed in ascending `seq` order.
#[derive(Debug)]
pub struct ChainVerifier {
    writer: String,
    last_seq: u64,
    last_hash: String,
    /// seq → hash vouched for by checkpoints whose signatures were already verified.
    vouched: std::collections::BTreeMap<u64, String>,
}

impl ChainVerifier {
    pub fn new(writer: impl Into<String>) -> Self {
        Self {
            writer: writer.into(),
            last_seq: 0,
            last_hash: GENESIS_HASH.to_owned(),
            vouched: std::collections::BTreeMap::new(),
        }
    }

    /// Also checks the chain against checkpoints (their signatures already verified): each
    /// checkpointed record must carry the vouched-for hash, and the chain must reach the last.
    pub fn with_checkpoints(mut self, checkpoints: &[Checkpoint]) -> Self {
        self.vouched = checkpoints.iter().map(|c| (c.seq, c.hash.clone())).collect();
        self
    }

    /// Starts from a record whose own predecessor is not shown (a segment of a chain, as in a
    /// session export): the next record pushed must be `seq + 1` and follow `hash`.
    pub fn starting_after(mut self, seq: u64, hash: impl Into<String>) -> Self {
        self.last_seq = seq;
        self.last_hash = hash.into();
        self
    }

    /// Checks the next record of the writer's chain.
    pub fn push(&mut self, record: &Record) -> Result<(), ChainBreak> {
        self.push_entry(record.seq, &record.prev_hash, &record.hash, || record.hash_holds())
    }

    /// Checks the next link of the writer's chain (a record shown without its content).
    pub fn push_link(&mut self, link: &Link) -> Result<(), ChainBreak> {
        self.push_entry(link.seq, &link.prev_hash, &link.hash, || link.hash_holds())
    }

    fn push_entry(
        &mut self,
        seq: u64,
        prev_hash: &str,
        hash: &str,
        holds: impl FnOnce() -> bool,
    ) -> Result<(), ChainBreak> {
        let writer = self.writer.clone();
        if seq == self.last_seq && self.last_seq > 0 {
            return Err(ChainBreak::Duplicate { writer, seq });
        }
        if seq != self.last_seq + 1 {
            return Err(ChainBreak::Missing {
                writer,
                expected: self.last_seq + 1,
                found: seq,
            });
        }
        if !holds() {
            return Err(ChainBreak::Edited { writer, seq });
        }
        if prev_hash != self.last_hash {
            return Err(ChainBreak::Unlinked {
                writer,
                seq,
                prev: self.last_seq,
            });
        }
        if self.vouched.get(&seq).is_some_and(|h| h != hash) {
            return Err(ChainBreak::Rewritten { writer, seq });
        }
        self.last_seq = seq;
        self.last_hash = hash.to_owned();
        Ok(())
    }

    /// Ends verification: the chain must reach every checkpoint. Returns the record count.
    pub fn finish(&self) -> Result<u64, ChainBreak> {
        match self.vouched.keys().next_back() {
            Some(&top) if top > self.last_seq => Err(ChainBreak::Truncated {
                writer: self.writer.clone(),
                last: self.last_seq,
                checkpoint: top,
            }),
            _ => Ok(self.last_seq),
        }
    }

    /// The last verified record: its seq (0 if none) and hash.
    pub fn head(&self) -> (u64, &str) {
        (self.last_seq, &self.last_hash)
    }
}

/// Verifies one writer's whole chain; returns how many records held.
pub fn verify_chain<'a>(writer: &str, records: impl IntoIterator<Item = &'a Record>) -> Result<u64, ChainBreak> {
    verify_chain_with(writer, records, &[])
}

/// Verifies one writer's whole chain against its (signature-checked) checkpoints.
pub fn verify_chain_with<'a>(
    writer: &str,
    records: impl IntoIterator<Item = &'a Record>,
    checkpoints: &[Checkpoint],
) -> Result<u64, ChainBreak> {
    let mut verifier = ChainVerifier::new(writer).with_checkpoints(checkpoints);
    for record in records {
        verifier.push(record)?;
    }
    verifier.finish()
}

/// A signed statement that a writer's chain had record `seq` with hash `hash`. With the
/// signing key kept away from the store, it catches what a chain alone cannot: a rewrite of
/// every hash after an edit, and the deletion of the newest records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub writer: String,
    pub seq: u64,
    pub hash: String,
    pub signed_at: String,
    /// Ed25519 signature (hex) over [`Checkpoint::signed_bytes`].
    pub signature: String,
}

impl Checkpoint {
    /// The exact bytes that are signed.
    pub fn signed_bytes(writer: &str, seq: u64, hash: &str, signed_at: &str) -> Vec<u8> {
        let v = serde_json::json!({"v": 1, "writer": writer, "seq": seq, "hash": hash, "signed_at": signed_at});
        canonical_json(&v)
    }
}

/// Builds the next record of a chain: the writer's side of [`ChainVerifier`].
#[derive(Debug, Clone)]
pub struct ChainHead {
    pub writer: String,
    pub seq: u64,
    pub hash: String,
}

impl ChainHead {
    /// A chain with no records yet.
    pub fn genesis(writer: impl Into<String>) -> Self {
        Self {
            writer: writer.into(),
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }

    /// Appends a record and advances the head.
    pub fn append(&mut self, kind: &str, request_id: &str, recorded_at: &str, data: Value) -> Record {
        let canonical = canonical_json(&data);
        self.append_encoded(kind, request_id, recorded_at, data, &canonical)
    }

    /// [`append`](Self::append) with the data's [`canonical_json`] already made (the audit
    /// writer has it made before the record reaches the one thread that appends).
    pub fn append_encoded(
        &mut self,
        kind: &str,
        request_id: &str,
        recorded_at: &str,
        data: Value,
        canonical_data: &[u8],
    ) -> Record {
        let seq = self.seq + 1;
        let fields = RecordFields {
            seq,
            writer: &self.writer,
            kind,
            request_id,
            recorded_at,
            prev_hash: &self.hash,
        };
        let hash = fields.hash(canonical_data);
        let record = Record {
            seq,
            writer: self.writer.clone(),
            kind: kind.to_owned(),
            request_id: request_id.to_owned(),
            recorded_at: recorded_at.to_owned(),
            prev_hash: std::mem::replace(&mut self.hash, hash.clone()),
            hash,
            data,
        };
        self.seq = seq;
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: u64) -> Vec<Record> {
        let mut head = ChainHead::genesis("w1");
        (0..n)
            .map(|i| {
                head.append(
                    "request",
                    &format!("r{i}"),
                    "2026-01-01T00:00:00.000Z",
                    json!({"i": i, "tool": "echo"}),
                )
            })
            .collect()
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_spaces() {
        let v: Value = serde_json::from_str(r#"{ "b": [1, {"z": null, "a": "x"}], "a": 1.5 }"#).unwrap();
        assert_eq!(canonical_json(&v), br#"{"a":1.5,"b":[1,{"a":"x","z":null}]}"#.to_vec());
    }

    #[test]
    fn stored_data_rehashes_to_the_same_value() {
        // Records are hashed in memory, stored as text and re-hashed from the parsed text
        // by `verify`: every number must survive that round trip exactly.
        let text = r#"{"a":109.176039145055071,"b":1e300,"c":-0.0,"d":123456789012345678901234567890,"e":0.1,"f":18446744073709551615,"g":-9223372036854775808}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let stored = serde_json::to_string(&v).unwrap();
        let back: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(canonical_json(&v), canonical_json(&back));
        let h = |d: &Value| record_hash(1, "w", "k", "r", "t", GENESIS_HASH, d);
        assert_eq!(h(&v), h(&back));
    }

    #[test]
    fn hash_is_stable_across_key_order() {
        let a: Value = serde_json::from_str(r#"{"x":1,"y":2}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"y":2,"x":1}"#).unwrap();
        assert_eq!(
            record_hash(1, "w", "k", "r", "t", GENESIS_HASH, &a),
            record_hash(1, "w", "k", "r", "t", GENESIS_HASH, &b)
        );
    }

    #[test]
    fn hash_is_pinned() {
        // A change to the encoding breaks every stored trail: this value must never change.
        let h = record_hash(
            1,
            "w",
            "request",
            "r1",
            "2026-01-01T00:00:00.000Z",
            GENESIS_HASH,
            &json!({"a": 1}),
        );
        assert_eq!(h, PINNED_HASH);
        // Records written before version 2 still verify.
        let mut old = Record {
            seq: 1,
            writer: "w".into(),
            kind: "request".into(),
            request_id: "r1".into(),
            recorded_at: "2026-01-01T00:00:00.000Z".into(),
            prev_hash: GENESIS_HASH.into(),
            hash: PINNED_V1_HASH.into(),
            data: json!({"a": 1}),
        };
        assert!(old.hash_holds());
        assert!(old.link().is_none(), "a version 1 record cannot be shown as a link");
        old.data = json!({"a": 2});
        assert!(!old.hash_holds());
    }
    const PINNED_HASH: &str = "1dea6787038cb2a1a7e13ad11bf1220bd41c673195fcd6271b9f8c9549462996";
    const PINNED_V1_HASH: &str = "432a2b7748aef55b26e35ef21d0d0538a1ec97ce683bf495d3b929b4c22b0a97";

    #[test]
    fn a_link_proves_its_place_without_the_content() {
        let c = chain(3);
        let mut link = c[1].link().expect("a version 2 record");
        let mut v = ChainVerifier::new("w1");
        v.push(&c[0]).unwrap();
        v.push_link(&link).unwrap();
        v.push(&c[2]).unwrap();
        // A link whose digest or fields were changed no longer holds.
        link.data_sha256 = data_digest(b"{}");
        let mut v = ChainVerifier::new("w1");
        v.push(&c[0]).unwrap();
        assert_eq!(v.push_link(&link).unwrap_err().seq(), 2);
        // A segment of the chain verifies from the hash before it.
        let mut v = ChainVerifier::new("w1").starting_after(1, c[0].hash.clone());
        v.push(&c[1]).unwrap();
        v.push(&c[2]).unwrap();
        assert_eq!(v.finish(), Ok(3));
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify_chain("w1", &chain(5)), Ok(5));
        assert_eq!(verify_chain("w1", &[]), Ok(0));
    }

    #[test]
    fn an_edit_is_found() {
        let mut c = chain(5);
        c[2].data = json!({"i": 2, "tool": "rm_rf"});
        assert_eq!(
            verify_chain("w1", &c),
            Err(ChainBreak::Edited {
                writer: "w1".into(),
                seq: 3
            })
        );
    }

    #[test]
    fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
        let mut c = chain(5);
        c[2].data = json!({"i": 2, "tool": "rm_rf"});
        c[2].hash = c[2].compute_hash();
        assert_eq!(
            verify_chain("w1", &c),
            Err(ChainBreak::Unlinked {
                writer: "w1".into(),
                seq: 4,
                prev: 3
            })
        );
    }

    #[test]
    fn a_deletion_is_found() {
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(
            verify_chain("w1", &c),
            Err(ChainBreak::Missing {
                writer: "w1".into(),
                expected: 2,
                found: 3
            })
        );
    }

    #[test]
    fn a_deletion_with_renumbering_is_found() {
        let mut c = chain(5);
        c.remove(1);
        for (i, r) in c.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
        }
        assert_eq!(verify_chain("w1", &c).unwrap_err().seq(), 2);
    }

    #[test]
    fn an_insertion_is_found() {
        let mut c = chain(5);
        let mut forged = c[1].clone();
        forged.data = json!({"forged": true});
        c.insert(2, forged);
        assert_eq!(
            verify_chain("w1", &c),
            Err(ChainBreak::Duplicate {
                writer: "w1".into(),
                seq: 2
            })
        );
    }

    fn checkpoint_at(c: &[Record], seq: u64) -> Checkpoint {
        let r = &c[seq as usize - 1];
        Checkpoint {
            writer: "w1".into(),
            seq,
            hash: r.hash.clone(),
            signed_at: "t".into(),
            signature: String::new(),
        }
    }

    #[test]
    fn checkpoints_catch_a_rewritten_chain() {
        let mut c = chain(5);
        let cps = [checkpoint_at(&c, 4)];
        assert_eq!(verify_chain_with("w1", &c, &cps), Ok(5));
        // Edit record 2 and recompute every hash after it: the chain alone verifies again...
        c[1].data = json!({"forged": true});
        let mut head = ChainHead {
            writer: "w1".into(),
            seq: 1,
            hash: c[0].hash.clone(),
        };
        for r in c.iter_mut().skip(1) {
            let fresh = head.append(&r.kind, &r.request_id, &r.recorded_at, r.data.clone());
            *r = fresh;
        }
        assert_eq!(verify_chain("w1", &c), Ok(5));
        // ...but not against the checkpoint signed before the edit.
        assert_eq!(
            verify_chain_with("w1", &c, &cps),
            Err(ChainBreak::Rewritten {
                writer: "w1".into(),
                seq: 4
            })
        );
    }

    #[test]
    fn checkpoints_catch_a_deleted_tail() {
        let c = chain(5);
        let cps = [checkpoint_at(&c, 5)];
        assert_eq!(
            verify_chain_with("w1", &c[..3], &cps),
            Err(ChainBreak::Truncated {
                writer: "w1".into(),
                last: 3,
                checkpoint: 5
            })
        );
    }

    #[test]
    fn a_reordering_is_found() {
        let mut c = chain(5);
        c.swap(1, 3);
        let (a, b) = (c[1].seq, c[3].seq);
        c[1].seq = b;
        c[3].seq = a;
        assert_eq!(verify_chain("w1", &c).unwrap_err().seq(), 2);
    }
}
