//! Recall and precision of the built-in rules on the labeled corpus
//! (`tests/corpus/masking.jsonl`, or the file named by `GATEHOUSE_MASKING_CORPUS`).
//!
//! Each line is a sample of tool output: `text` or an MCP JSON-RPC body (`mcp_json`),
//! the secrets it holds and look-alikes (decoys) that must survive. A secret counts as
//! caught when its value no longer appears in the output, in clear or JSON-escaped (once
//! for JSON, twice for JSON inside a JSON string).

use std::collections::BTreeMap;
use std::path::PathBuf;

use gatehouse_core::mask::{JsonMasked, MaskCounts, Masker, Reveal};
use serde::Deserialize;

#[derive(Deserialize)]
struct Sample {
    id: String,
    format: String,
    input: String,
    secrets: Vec<Secret>,
    decoys: Vec<String>,
}

#[derive(Deserialize)]
struct Secret {
    kind: String,
    value: String,
}

fn corpus_path() -> PathBuf {
    std::env::var_os("GATEHOUSE_MASKING_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/masking.jsonl"))
}

/// `value` as it appears inside a JSON string literal (without the quotes).
fn json_escaped(value: &str) -> String {
    let quoted = serde_json::to_string(value).expect("a string serializes");
    quoted[1..quoted.len() - 1].to_owned()
}

/// Every way `value` can appear in the output: as is, escaped once, escaped twice.
fn forms(value: &str) -> Vec<String> {
    let once = json_escaped(value);
    let twice = json_escaped(&once);
    vec![value.to_owned(), once, twice]
}

fn mask(masker: &Masker, sample: &Sample) -> String {
    let none = Reveal::none();
    let mut counts = MaskCounts::default();
    match sample.format.as_str() {
        "text" => masker.mask_text(&sample.input, &none, &mut counts).into_owned(),
        "mcp_json" => match masker.mask_json(sample.input.as_bytes(), &none, &mut counts) {
            JsonMasked::Unchanged => sample.input.clone(),
            JsonMasked::Changed(bytes) => {
                let out = String::from_utf8(bytes).expect("masked JSON is UTF-8");
                serde_json::from_str::<serde_json::Value>(&out)
                    .unwrap_or_else(|e| panic!("{}: masked JSON does not parse: {e}\n{out}", sample.id));
                out
            }
            JsonMasked::NotJson => {
                let out = masker
                    .mask_bytes_as_text(sample.input.as_bytes(), &none, &mut counts)
                    .unwrap_or_else(|| sample.input.as_bytes().to_vec());
                String::from_utf8(out).expect("masked text is UTF-8")
            }
        },
        other => panic!("{}: unknown format {other:?}", sample.id),
    }
}

#[test]
fn corpus_recall_and_decoys() {
    let path = corpus_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let masker = Masker::default();
    let (mut secrets, mut caught, mut decoys, mut kept) = (0usize, 0usize, 0usize, 0usize);
    let mut missed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lost: Vec<String> = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let sample: Sample = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
        let out = mask(&masker, &sample);
        for secret in &sample.secrets {
            secrets += 1;
            if forms(&secret.value).iter().any(|f| out.contains(f.as_str())) {
                missed
                    .entry(secret.kind.clone())
                    .or_default()
                    .push(format!("{}: {:?}", sample.id, secret.value));
            } else {
                caught += 1;
            }
        }
        for decoy in &sample.decoys {
            decoys += 1;
            if forms(decoy).iter().any(|f| out.contains(f.as_str())) {
                kept += 1;
            } else {
                lost.push(format!("{}: {decoy:?}", sample.id));
            }
        }
    }
    let recall = caught as f64 / secrets.max(1) as f64;
    let precision = kept as f64 / decoys.max(1) as f64;
    println!(
        "corpus {}: recall {caught}/{secrets} = {recall:.4}, decoys kept {kept}/{decoys} = {precision:.4}",
        path.display()
    );
    for (kind, misses) in &missed {
        println!("missed {kind}: {}", misses.len());
        for m in misses {
            println!("  {m}");
        }
    }
    for l in &lost {
        println!("decoy masked: {l}");
    }
    assert!(secrets > 0, "the corpus has no secrets");
    assert!(recall >= 0.99, "recall {recall:.4} is below 0.99");
    assert!(precision >= 0.95, "decoys kept {precision:.4} is below 0.95");
}
