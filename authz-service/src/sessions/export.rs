//! A verifiable session export: the session's records exactly as stored, the chain links that
//! connect them to a signed checkpoint, the checkpoints, and a signed manifest (a bundle,
//! `audit/bundle.rs`).
//!
//! A session's records are spread over its writers' chains between other sessions' records.
//! Those are carried as links ([`Link`]: every field their hash covers, the data by its
//! SHA-256), so the export proves each record sits in the chain a checkpoint signed without
//! showing anyone else's calls. A record written before hash version 2 cannot be a link and
//! is carried whole.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::VerifyingKey;
use gatehouse_core::audit::{ChainVerifier, Checkpoint, Link, Record};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Filed, Session, Sessions};
use crate::audit::Store;
use crate::audit::bundle::{self, Opened, json_lines, to_json_lines};
use crate::audit::checkpoint::{CheckpointSigner, signature_valid};

pub const KIND: &str = "session";
const SESSION: &str = "session.json";
const RECORDS: &str = "records.jsonl";
const CHAIN: &str = "chain.jsonl";
const CHECKPOINTS: &str = "checkpoints.jsonl";

/// The most records one exchange may have in an export (a long stream has one per event).
const RECORDS_PER_EXCHANGE: u32 = 1_000_000;
const PAGE: u32 = 1_000;

/// A record of another session in the chain between this session's records: a link, or the
/// whole record when it was hashed before links existed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChainEntry {
    Record(Record),
    Link(Link),
}

impl ChainEntry {
    fn seq(&self) -> u64 {
        match self {
            Self::Record(r) => r.seq,
            Self::Link(l) => l.seq,
        }
    }
}

/// What `session.json` holds: the session as indexed and its exchanges in order.
#[derive(Debug, Serialize, Deserialize)]
struct SessionFile {
    session: Value,
    exchanges: Vec<ExchangeRef>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ExchangeRef {
    n: u64,
    request_id: String,
    at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no session {0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// An export made: the signed bundle, to write as a directory or send as a tar archive.
#[derive(Debug)]
pub struct Exported {
    pub bundle: bundle::Built,
    pub session: Session,
}

/// Session `id`'s export. `external` are checkpoints kept outside the store (the checkpoint
/// log). Refuses a trail whose chain does not verify over the exported range.
pub async fn export(
    store: &Store,
    sessions: &Sessions,
    id: &str,
    signer: &CheckpointSigner,
    external: &[Checkpoint],
) -> Result<Exported, ExportError> {
    let Some(session) = sessions.get(id).await? else {
        return Err(ExportError::NotFound(id.to_owned()));
    };
    let mut filed: Vec<Filed> = Vec::new();
    loop {
        let page = sessions.exchanges(id, filed.len() as u64, PAGE).await?;
        let done = page.len() < PAGE as usize;
        filed.extend(page);
        if done {
            break;
        }
    }
    let mut mine: BTreeMap<String, BTreeMap<u64, Record>> = BTreeMap::new();
    for f in &filed {
        for r in store.request_records(&f.request_id, RECORDS_PER_EXCHANGE).await? {
            mine.entry(r.writer.clone()).or_default().insert(r.seq, r);
        }
    }
    let key = signer.public_key();
    let mut chain = Vec::new();
    let mut checkpoints = Vec::new();
    let mut writers = Vec::new();
    let mut notes = Vec::new();
    for (writer, records) in &mine {
        let (Some(&first), Some(&last)) = (records.keys().next(), records.keys().next_back()) else {
            continue;
        };
        let mut signed: Vec<Checkpoint> = store.checkpoints(writer).await?;
        signed.extend(external.iter().filter(|c| &c.writer == writer).cloned());
        signed.retain(|c| signature_valid(&key, c) && c.seq >= first);
        signed.sort_by_key(|c| c.seq);
        signed.dedup_by_key(|c| c.seq);
        // The chain runs on to the first checkpoint at or after the session's last record.
        let cover = signed.iter().find(|c| c.seq >= last).map(|c| c.seq);
        let end = cover.unwrap_or(last);
        signed.retain(|c| c.seq <= end);
        let mut verifier: Option<ChainVerifier> = None;
        let mut after = first - 1;
        while after < end {
            let page = store.chain_page(writer, after, PAGE).await?;
            let Some(tail) = page.last() else { break };
            after = tail.seq;
            for r in page.into_iter().take_while(|r| r.seq <= end) {
                let v = verifier.get_or_insert_with(|| {
                    ChainVerifier::new(writer.clone())
                        .with_checkpoints(&signed)
                        .starting_after(r.seq - 1, r.prev_hash.clone())
                });
                let refused = |b: gatehouse_core::audit::ChainBreak| {
                    ExportError::Refused(format!(
                        "the trail does not verify: {b} (run `gatehouse audit verify`); nothing was exported"
                    ))
                };
                // Another session's record goes in as its link, checked as one (the record's
                // data is encoded and hashed once); a version 1 record, or one whose hash does
                // not hold, as itself.
                let link = (!records.contains_key(&r.seq)).then(|| r.link()).flatten();
                match link {
                    Some(link) => {
                        v.push_link(&link).map_err(refused)?;
                        chain.push(ChainEntry::Link(link));
                    }
                    None => {
                        v.push(&r).map_err(refused)?;
                        if !records.contains_key(&r.seq) {
                            chain.push(ChainEntry::Record(r));
                        }
                    }
                }
            }
        }
        if verifier.as_ref().map(|v| v.head().0) != Some(end) {
            return Err(ExportError::Refused(format!(
                "writer {writer}: the trail ends before record {end}; nothing was exported"
            )));
        }
        let vouched = signed.last().map_or(0, |c| c.seq);
        if cover.is_none() {
            let from = records.keys().find(|&&s| s > vouched).copied().unwrap_or(first);
            notes.push(format!(
                "writer {writer}: records {from} to {last} are newer than its newest signed checkpoint; export again after the next checkpoint for them to be vouched for"
            ));
        }
        writers.push(json!({"writer": writer, "first": first, "last": last, "vouched_to": vouched}));
        checkpoints.extend(signed);
    }
    if session.status == "open" {
        notes.push(format!(
            "the session is open: this export holds its exchanges up to {}",
            session.last_at
        ));
    }
    let records: Vec<&Record> = mine.values().flat_map(BTreeMap::values).collect();
    let file = SessionFile {
        session: serde_json::to_value(&session).map_err(anyhow::Error::from)?,
        exchanges: filed
            .iter()
            .enumerate()
            .map(|(n, f)| ExchangeRef {
                n: n as u64,
                request_id: f.request_id.clone(),
                at: f.at.clone(),
            })
            .collect(),
    };
    let about = json!({
        "session": session.id,
        "status": session.status,
        "subject": session.subject,
        "upstream": session.upstream,
        "started_at": session.started_at,
        "last_at": session.last_at,
        "exchanges": filed.len(),
        "records": records.len(),
        "links": chain.len(),
        "writers": writers,
    });
    let files = vec![
        (
            SESSION.to_owned(),
            serde_json::to_vec_pretty(&file).map_err(anyhow::Error::from)?,
        ),
        (RECORDS.to_owned(), to_json_lines(&records)?),
        (CHAIN.to_owned(), to_json_lines(&chain)?),
        (CHECKPOINTS.to_owned(), to_json_lines(&checkpoints)?),
    ];
    let bundle = bundle::build(KIND, about, notes, files, signer)?;
    Ok(Exported { bundle, session })
}

/// An entry of a writer's chain in an export: a record of the session, or another's.
enum Entry<'a> {
    Mine(&'a Record),
    Other(&'a ChainEntry),
}

/// One writer's part of a verified export.
#[derive(Debug, PartialEq, Eq)]
pub struct WriterSpan {
    pub writer: String,
    pub first: u64,
    pub last: u64,
    /// The newest record a signed checkpoint in the export vouches for (0: none).
    pub vouched: u64,
}

/// What a session export's verification found.
#[derive(Debug)]
pub struct Checked {
    pub session: String,
    pub exchanges: usize,
    pub records: usize,
    pub links: usize,
    pub checkpoints: usize,
    pub writers: Vec<WriterSpan>,
    /// Records of the session no checkpoint in the export vouches for, per writer.
    pub unvouched: Vec<(String, u64, u64)>,
}

/// Checks an opened session export: every checkpoint's signature, each writer's chain through
/// the session's records and links (an edit, a removal, a reordering or an insertion breaks
/// it), each chain's end against a checkpoint, and that the records are the exchanges'.
pub fn verify(opened: &Opened, key: &VerifyingKey) -> Result<Checked, String> {
    let file: SessionFile = serde_json::from_slice(opened.file(SESSION)?).map_err(|e| format!("{SESSION}: {e}"))?;
    let records: Vec<Record> = json_lines(RECORDS, opened.file(RECORDS)?)?;
    let links: Vec<ChainEntry> = json_lines(CHAIN, opened.file(CHAIN)?)?;
    let checkpoints: Vec<Checkpoint> = json_lines(CHECKPOINTS, opened.file(CHECKPOINTS)?)?;
    if let Some(bad) = checkpoints.iter().find(|c| !signature_valid(key, c)) {
        return Err(format!(
            "{CHECKPOINTS}: the checkpoint of writer {} at record {} has an invalid signature",
            bad.writer, bad.seq
        ));
    }
    let requests: BTreeSet<&str> = file.exchanges.iter().map(|e| e.request_id.as_str()).collect();
    if let Some(r) = records.iter().find(|r| !requests.contains(r.request_id.as_str())) {
        return Err(format!(
            "{RECORDS}: writer {} record {} belongs to no exchange of the session",
            r.writer, r.seq
        ));
    }
    let answered: BTreeSet<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
    if let Some(e) = file
        .exchanges
        .iter()
        .find(|e| !answered.contains(e.request_id.as_str()))
    {
        return Err(format!("{RECORDS}: exchange {} has no record (removed)", e.n));
    }
    // Each writer's entries in the order the files give them, then checked as one chain.
    let mut by_writer: BTreeMap<&str, Vec<(u64, Entry)>> = BTreeMap::new();
    for r in &records {
        by_writer.entry(&r.writer).or_default().push((r.seq, Entry::Mine(r)));
    }
    for l in &links {
        let writer = match l {
            ChainEntry::Record(r) => &r.writer,
            ChainEntry::Link(l) => &l.writer,
        };
        if !by_writer.contains_key(writer.as_str()) {
            return Err(format!("{CHAIN}: writer {writer} has no record of the session"));
        }
        by_writer.entry(writer).or_default().push((l.seq(), Entry::Other(l)));
    }
    let mut writers = Vec::new();
    let mut unvouched = Vec::new();
    for (writer, mut entries) in by_writer {
        // Sorting by seq puts each entry where it claims to be; the chain then proves the claim.
        entries.sort_by_key(|(seq, _)| *seq);
        let signed: Vec<Checkpoint> = checkpoints.iter().filter(|c| c.writer == writer).cloned().collect();
        let first = entries.first().map_or(0, |e| e.0);
        let start_prev = match entries.first().map(|e| &e.1) {
            Some(Entry::Mine(r)) => r.prev_hash.clone(),
            Some(Entry::Other(ChainEntry::Record(r))) => r.prev_hash.clone(),
            Some(Entry::Other(ChainEntry::Link(l))) => l.prev_hash.clone(),
            None => continue,
        };
        if let Some(c) = signed.iter().find(|c| c.seq < first) {
            return Err(format!(
                "{CHECKPOINTS}: writer {writer}: the checkpoint at record {} is before the export's records",
                c.seq
            ));
        }
        let mut verifier = ChainVerifier::new(writer)
            .with_checkpoints(&signed)
            .starting_after(first.saturating_sub(1), start_prev);
        for (_, entry) in &entries {
            let (pushed, file) = match entry {
                Entry::Mine(r) => (verifier.push(r), RECORDS),
                Entry::Other(ChainEntry::Record(r)) => (verifier.push(r), CHAIN),
                Entry::Other(ChainEntry::Link(l)) => (verifier.push_link(l), CHAIN),
            };
            pushed.map_err(|b| format!("{file}: {b}"))?;
        }
        verifier.finish().map_err(|b| format!("{CHAIN}: {b}"))?;
        let vouched = signed.iter().map(|c| c.seq).max().unwrap_or(0);
        let mine: Vec<u64> = entries
            .iter()
            .filter(|e| matches!(e.1, Entry::Mine(_)))
            .map(|e| e.0)
            .collect();
        let last = mine.last().copied().unwrap_or(0);
        if let Some(&from) = mine.iter().find(|&&s| s > vouched) {
            unvouched.push((writer.to_owned(), from, last));
        }
        writers.push(WriterSpan {
            writer: writer.to_owned(),
            first,
            last,
            vouched,
        });
    }
    let session = file.session.get("id").and_then(Value::as_str).unwrap_or("?").to_owned();
    Ok(Checked {
        session,
        exchanges: file.exchanges.len(),
        records: records.len(),
        links: links.len(),
        checkpoints: checkpoints.len(),
        writers,
        unvouched,
    })
}
