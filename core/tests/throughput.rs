//! Native throughput of the masking engine (ignored by default: it means something only
//! in release mode). Run with
//! `cargo test --release -p gatehouse-core --test throughput -- --ignored --nocapture`.
//!
//! Inputs are ~1 MB: mixed text (prose, log lines, JSON-looking rows with the usual
//! look-alikes, a secret every ~2 KB), the same text as a tools/call answer, an SSE
//! stream of ~64 KiB events, and two adversarial texts (digits, `@`).

use std::time::Instant;

use gatehouse_core::mask::{JsonMasked, MaskCounts, Masker, Reveal, SseMasker};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chars(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| char::from(alphabet[self.below(alphabet.len() as u64) as usize]))
            .collect()
    }
}

const WORDS: &[&str] = &[
    "the",
    "deployment",
    "of",
    "service",
    "finished",
    "after",
    "retrying",
    "cache",
    "request",
    "handler",
    "returned",
    "rows",
    "from",
    "replica",
    "customer",
    "invoice",
    "was",
    "updated",
    "by",
    "scheduler",
    "queue",
    "Depth",
    "is",
    "normal",
    "and",
    "latency",
    "stayed",
    "under",
    "budget",
    "for",
    "region",
    "eu-west-1",
    "Shard",
    "index",
];
const SECRETS: &[&str] = &[
    "AKIAIOSFODNN7EXAMPLE",
    "jane.doe@example.com",
    "4111 1111 1111 1111",
    "123-45-6789",
    "DE89370400440532013000",
    "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "+44 20 7946 0958",
    "postgres://app:s3cr3t@db.internal:5432/app",
    "password=hunter2",
];

fn mixed_text(bytes: usize, seed: u64) -> String {
    let mut rng = Rng(seed);
    let hex = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes + 256);
    let mut since = 0;
    while out.len() < bytes {
        let line = if since > 2048 {
            since = 0;
            format!("contact: {}", SECRETS[rng.below(SECRETS.len() as u64) as usize])
        } else {
            match rng.below(4) {
                0 => {
                    (0..8 + rng.below(12))
                        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
                        .collect::<Vec<_>>()
                        .join(" ")
                        + "."
                }
                1 => format!(
                    "2026-11-23T10:{:02}:{:02}Z INFO request_id={} commit={} took {} ms",
                    rng.below(60),
                    rng.below(60),
                    rng.chars(hex, 32),
                    rng.chars(hex, 40),
                    rng.below(900)
                ),
                2 => format!(
                    "{{\"order\": \"ORDER-{}\", \"account\": \"{}\", \"instance\": \"i-{}\", \"total\": {}.{:02}}}",
                    rng.chars(b"0123456789", 16),
                    rng.chars(b"0123456789", 12),
                    rng.chars(hex, 17),
                    rng.below(10_000),
                    rng.below(100)
                ),
                _ => format!(
                    "id {}-{}-{}-{}-{} version v{}.{}.{} status ok",
                    rng.chars(hex, 8),
                    rng.chars(hex, 4),
                    rng.chars(hex, 4),
                    rng.chars(hex, 4),
                    rng.chars(hex, 12),
                    rng.below(10),
                    rng.below(40),
                    rng.below(100)
                ),
            }
        };
        since += line.len() + 1;
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn answer(text: &str) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": text}], "isError": false}})
        .to_string()
}

fn sse(bytes: usize, event_bytes: usize) -> String {
    let mut out = String::new();
    let mut seed = 11;
    while out.len() < bytes {
        let note = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/message",
            "params": {"level": "info", "data": mixed_text(event_bytes, seed)}});
        seed += 1;
        out.push_str("event: message\ndata: ");
        out.push_str(&note.to_string());
        out.push_str("\n\n");
    }
    out
}

/// The median rate in MB/s of `runs` calls of `f` over `len` bytes, and what `f` found.
fn rate(len: usize, runs: usize, mut f: impl FnMut() -> u64) -> (f64, u64) {
    let mut found = 0;
    let mut rates: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            found = f();
            len as f64 / 1e6 / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(|a, b| a.total_cmp(b));
    (rates[runs / 2], found)
}

#[test]
#[ignore = "a measurement: run in release mode with --ignored --nocapture"]
fn throughput() {
    let masker = Masker::default();
    let none = Reveal::none();
    let runs = 15;
    let text = mixed_text(1 << 20, 7);
    let digits: String = {
        let mut rng = Rng(3);
        (0..1 << 20)
            .map(|i| {
                if i % 17 == 16 {
                    ' '
                } else if i % 5 == 4 {
                    '-'
                } else {
                    char::from(b'0' + rng.below(10) as u8)
                }
            })
            .collect()
    };
    let ats: String = "a@b.".repeat(1 << 18);
    let json = answer(&text);
    let stream = sse(1 << 20, 64 * 1024);

    let only = std::env::var("ONLY").unwrap_or_default();
    let report = |name: &str, len: usize, f: &mut dyn FnMut() -> u64| {
        if !name.contains(only.as_str()) {
            return;
        }
        let (mbs, found) = rate(len, runs, f);
        println!("{name:<28} {mbs:>8.1} MB/s  ({found} masked)");
    };
    report("mask_text mixed", text.len(), &mut || {
        let mut c = MaskCounts::default();
        std::hint::black_box(masker.mask_text(&text, &none, &mut c));
        c.total()
    });
    let custom: gatehouse_core::mask::MaskConfig = serde_json::from_value(serde_json::json!({
        "custom": [{"name": "ticket", "pattern": "(?i)\\bticket-\\d{4,}\\b"}]
    }))
    .expect("config");
    let custom = Masker::new(&custom).expect("valid");
    report("mask_text mixed, 1 custom", text.len(), &mut || {
        let mut c = MaskCounts::default();
        std::hint::black_box(custom.mask_text(&text, &none, &mut c));
        c.total()
    });
    report("mask_text digits", digits.len(), &mut || {
        let mut c = MaskCounts::default();
        std::hint::black_box(masker.mask_text(&digits, &none, &mut c));
        c.total()
    });
    report("mask_text @-heavy", ats.len(), &mut || {
        let mut c = MaskCounts::default();
        std::hint::black_box(masker.mask_text(&ats, &none, &mut c));
        c.total()
    });
    report("mask_json tools/call", json.len(), &mut || {
        let mut c = MaskCounts::default();
        assert!(matches!(
            masker.mask_json(json.as_bytes(), &none, &mut c),
            JsonMasked::Changed(_)
        ));
        c.total()
    });
    report("SseMasker 64 KiB events", stream.len(), &mut || {
        let mut c = MaskCounts::default();
        let mut m = SseMasker::new(1 << 20);
        let mut out = Vec::with_capacity(stream.len());
        for chunk in stream.as_bytes().chunks(16 * 1024) {
            m.push(&masker, &none, chunk, &mut out, &mut c, |_| {});
        }
        m.finish(&masker, &none, &mut out, &mut c, |_| {});
        c.total()
    });
}
