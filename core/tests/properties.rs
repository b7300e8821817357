//! Deterministic, fuzz-like properties of the masking engine (a fixed-seed xorshift, so a
//! failure reproduces): valid JSON in gives valid JSON out, masking twice changes nothing
//! more, SSE output does not depend on how the stream is cut into chunks, and random
//! bytes never panic. The inputs are built from the labeled corpus' values and random
//! strings. The `fuzz/` crate explores the same properties with coverage guidance.

use std::path::PathBuf;

use gatehouse_core::mask::{JsonMasked, MaskCounts, Masker, Reveal, SseMasker};
use gatehouse_core::sse::SseFramer;
use serde_json::{Map, Value};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Values from the corpora (secrets, decoys) plus hand-picked edge cases, among them the
/// pieces every detector starts from.
fn fragments() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus");
    let mut out: Vec<String> = [
        "a@example.com",
        "4111 1111 1111 1111",
        "123-45-6789",
        "DE89 3704 0044 0532 0130 00",
        "+44 20 7946 0958",
        "(555) 123-4567",
        "password=hunter2",
        "\"token\": \"abc\"",
        "postgres://u:p@h/db",
        "-----BEGIN PRIVATE KEY-----\nabc",
        "-----END PRIVATE KEY-----",
        "https://hooks.slack.com/services/T0/B0/x",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
        "Authorization: Bearer x",
        "\\n",
        "\\\"",
        "{\"password\": 1}",
        "[1, \"a@b.io\"]",
        "é😀\u{2028}\u{0}",
        "[MASKED:email]",
        "=",
        ":",
        "@",
        "://",
        "curl -u ",
        " --user ",
        "u:p ",
        "<secret>",
        "</secret>",
        "getenv(\"api_token\", \"",
        "\")",
        " := ",
        " .= ",
        " || \"",
        "ZXlK",
        "xoxe.xoxp-1-",
        "hooks.slack.com/triggers/",
        "AWS Secret Access Key [None]: ",
        "xxxxxxxx",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let corpora = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path());
    for path in corpora.filter(|p| p.extension().is_some_and(|e| e == "jsonl")) {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            for s in v["secrets"].as_array().into_iter().flatten() {
                out.extend(s["value"].as_str().map(str::to_owned));
            }
            for d in v["decoys"].as_array().into_iter().flatten() {
                out.extend(d.as_str().map(str::to_owned));
            }
        }
    }
    out
}

const SEPARATORS: &[&str] = &[" ", "\n", "\t", "=", ": ", "\"", "\\", ",", "-", "+", "(", "."];
const LINE_ENDS: &[&[u8]] = &[b"\n", b"\r\n", b"\r"];

fn random_string(rng: &mut Rng, frags: &[String]) -> String {
    let mut s = String::new();
    for _ in 0..rng.below(6) {
        match rng.below(5) {
            0 | 1 => s.push_str(rng.pick(frags).as_str()),
            2 => s.push_str(SEPARATORS[rng.below(SEPARATORS.len())]),
            3 => {
                for _ in 0..rng.below(12) {
                    let c = char::from_u32(rng.below(0x2FF) as u32).unwrap_or('x');
                    s.push(c);
                }
            }
            _ => {
                for _ in 0..rng.below(20) {
                    s.push(char::from(b"0123456789 -"[rng.below(12)]));
                }
            }
        }
    }
    s
}

const KEYS: &[&str] = &[
    "text",
    "password",
    "db_password",
    "api_key",
    "token_type",
    "max_tokens",
    "data",
    "blob",
    "type",
    "uri",
    "id",
    "jsonrpc",
    "method",
    "result",
    "params",
    "error",
    "content",
    "aws_secret_access_key",
    "Authorization",
    "note",
];

fn random_value(rng: &mut Rng, frags: &[String], depth: usize) -> Value {
    let leaf = depth >= 5 || rng.chance(40);
    match (leaf, rng.below(10)) {
        (true, 0) => Value::Null,
        (true, 1) => Value::Bool(rng.chance(50)),
        (true, 2) => Value::from(rng.next() >> rng.below(64)),
        (true, 3) => Value::from(f64::from(rng.below(10_000) as u32) / 7.0),
        (true, 4) => Value::String(rng.pick(&["image", "audio", "resource", "text"]).to_string()),
        (true, 5) => {
            // JSON inside a string.
            let inner = random_value(rng, frags, depth + 2);
            Value::String(inner.to_string())
        }
        (true, _) => Value::String(random_string(rng, frags)),
        (false, n) if n < 4 => Value::Array((0..rng.below(5)).map(|_| random_value(rng, frags, depth + 1)).collect()),
        (false, _) => {
            let mut map = Map::new();
            for _ in 0..rng.below(6) {
                let key = if rng.chance(80) {
                    rng.pick(KEYS).to_string()
                } else {
                    random_string(rng, frags)
                };
                map.insert(key, random_value(rng, frags, depth + 1));
            }
            Value::Object(map)
        }
    }
}

#[test]
fn mask_json_keeps_json_valid_and_placeholders_stable() {
    let frags = fragments();
    let maskers = [Masker::default(), {
        let config = serde_json::from_value(serde_json::json!({
            "default_style": "token",
            "styles": {"credit_card": "last4", "sensitive_field": "last4"},
            "token_key": "00112233445566778899aabbccddeeff",
            "custom": [{"name": "ticket", "pattern": "(?i)ticket-\\d{1,12}"}],
        }))
        .expect("config");
        Masker::new(&config).expect("valid")
    }];
    let reveals = [Reveal::none(), Reveal::from_header("email,phone")];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..6000 {
        let mut value = random_value(&mut rng, &frags, 0);
        if rng.chance(30) {
            // Make it a message (or a batch of them).
            let mut map = Map::new();
            map.insert("jsonrpc".into(), "2.0".into());
            map.insert("id".into(), Value::from(round));
            map.insert("result".into(), value);
            value = Value::Object(map);
            if rng.chance(30) {
                value = Value::Array(vec![value.clone(), value]);
            }
        }
        let body = if rng.chance(50) {
            value.to_string()
        } else {
            serde_json::to_string_pretty(&value).expect("ser")
        };
        let masker = rng.pick(&maskers);
        let reveal = rng.pick(&reveals);
        let mut counts = MaskCounts::default();
        match masker.mask_json(body.as_bytes(), reveal, &mut counts) {
            JsonMasked::NotJson => panic!("round {round}: valid JSON reported as not JSON: {body}"),
            JsonMasked::Unchanged => assert!(counts.is_empty(), "round {round}: counts without a change"),
            JsonMasked::Changed(out) => {
                assert!(!counts.is_empty(), "round {round}: a change without counts");
                let parsed: Value = serde_json::from_slice(&out)
                    .unwrap_or_else(|e| panic!("round {round}: {e}\n{body}\n{}", String::from_utf8_lossy(&out)));
                // Masking the output again leaves every placeholder alone. (It may find
                // more: masking can create a word boundary next to a glued token.)
                let first = String::from_utf8_lossy(&out).into_owned();
                let mut again = MaskCounts::default();
                if let JsonMasked::Changed(twice) = masker.mask_json(parsed.to_string().as_bytes(), reveal, &mut again)
                {
                    let twice = String::from_utf8_lossy(&twice).into_owned();
                    let mut rest = first.as_str();
                    while let Some(at) = rest.find("[MASKED:") {
                        let end = rest[at..].find(']').map_or(rest.len(), |e| at + e + 1);
                        let placeholder = &rest[at..end];
                        assert!(
                            twice.contains(placeholder),
                            "round {round}: {placeholder} masked again\n{first}\n{twice}"
                        );
                        rest = &rest[end..];
                    }
                }
            }
        }
    }
}

#[test]
fn mask_text_never_panics_and_keeps_clean_text() {
    let frags = fragments();
    let masker = Masker::default();
    let mut rng = Rng(77);
    for _ in 0..10000 {
        let s = random_string(&mut rng, &frags);
        let mut counts = MaskCounts::default();
        let out = masker.mask_text(&s, &Reveal::none(), &mut counts);
        assert_eq!(counts.is_empty(), out == s, "{s:?} -> {out:?}");
        let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        masker.mask_bytes_as_text(&bytes, &Reveal::none(), &mut counts);
    }
}

fn random_stream(rng: &mut Rng, frags: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    if rng.chance(20) {
        out.extend_from_slice(b"\xEF\xBB\xBF");
    }
    for _ in 0..rng.below(8) {
        let eol = LINE_ENDS[rng.below(LINE_ENDS.len())];
        for _ in 0..1 + rng.below(4) {
            match rng.below(7) {
                0 => out.extend_from_slice(b": comment"),
                1 => out.extend_from_slice(b"event: message"),
                2 => out.extend_from_slice(format!("id: {}", rng.below(100)).as_bytes()),
                3 => out.extend_from_slice(b"retry: 10"),
                4 => {
                    let v = random_value(rng, frags, 2);
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(v.to_string().as_bytes());
                }
                _ => {
                    out.extend_from_slice(b"data: ");
                    let s = random_string(rng, frags).replace(['\r', '\n'], " ");
                    out.extend_from_slice(s.as_bytes());
                }
            }
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(eol);
    }
    if rng.chance(30) {
        out.extend_from_slice(b"data: tail a@example.com \xC3");
    }
    out
}

fn sse(masker: &Masker, reveal: &Reveal, chunks: &[&[u8]], max: usize) -> (Vec<u8>, Vec<String>, MaskCounts) {
    let mut m = SseMasker::new(max);
    let mut out = Vec::new();
    let mut records = Vec::new();
    let mut counts = MaskCounts::default();
    for chunk in chunks {
        m.push(masker, reveal, chunk, &mut out, &mut counts, |e| {
            records.push(format!("{e:?}"))
        });
        assert!(m.buffered_bytes() <= 2 * max + 8);
    }
    m.finish(masker, reveal, &mut out, &mut counts, |e| {
        records.push(format!("{e:?}"))
    });
    (out, records, counts)
}

/// Cuts `input` at `n` random points.
fn chunks<'a>(rng: &mut Rng, input: &'a [u8], n: usize) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = (0..n).map(|_| rng.below(input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for cut in cuts {
        out.push(&input[start..cut]);
        start = cut;
    }
    out.push(&input[start..]);
    out
}

#[test]
fn sse_output_does_not_depend_on_chunking() {
    let frags = fragments();
    let masker = Masker::default();
    let reveals = [Reveal::none(), Reveal::from_header("email")];
    let mut rng = Rng(4242);
    for round in 0..2500 {
        let input = random_stream(&mut rng, &frags);
        let max = *rng.pick(&[1 << 20, 64, 200]);
        let reveal = rng.pick(&reveals);
        let whole = sse(&masker, reveal, &[&input], max);
        for _ in 0..3 {
            let n = 1 + rng.below(6);
            let parts = chunks(&mut rng, &input, n);
            assert_eq!(
                sse(&masker, reveal, &parts, max),
                whole,
                "round {round}: {:?}",
                String::from_utf8_lossy(&input)
            );
        }
        // What reaches the client is valid UTF-8: invalid bytes never pass through.
        assert!(std::str::from_utf8(&whole.0).is_ok(), "round {round}");
    }
}

#[test]
fn random_bytes_never_panic() {
    let masker = Masker::default();
    let mut rng = Rng(99);
    for _ in 0..6000 {
        let len = rng.below(200);
        let input: Vec<u8> = (0..len)
            .map(|_| *rng.pick(b"data: \r\n\n:{}\"\\a@b.c0123456789-+=\xC3\xA9\xFF\xEF\xBB\xBF"))
            .collect();
        let parts = chunks(&mut rng, &input, 3);
        let max = 1 + rng.below(100);
        let a = sse(&masker, &Reveal::none(), &parts, max);
        let b = sse(&masker, &Reveal::none(), &[&input], max);
        assert_eq!(a, b);
        let mut framer = SseFramer::new(max);
        for p in &parts {
            framer.push(p);
        }
        framer.finish();
        let mut counts = MaskCounts::default();
        masker.mask_json(&input, &Reveal::none(), &mut counts);
        masker.mask_bytes_as_text(&input, &Reveal::none(), &mut counts);
    }
}

/// Masking never removes text that is not part of a validated secret: generated words
/// (SQL, prose, base64-looking runs of odd widths) between two delimiters that open and
/// close a secret's span (PEM markers, quotes after a sensitive key, an Authorization
/// line) all survive. (A closing quote is left out of the words: what a quote closes
/// after a sensitive key is the value.)
#[test]
fn text_between_delimiters_survives() {
    let words = [
        "UNION",
        "SELECT",
        "value",
        "FROM",
        "service_config",
        "WHERE",
        "1=1",
        "DROP",
        "TABLE",
        "users;",
        "--",
        "/*",
        "*/",
        "or",
        "and",
        "the",
        "AAAA",
        "QUJD",
        "x",
        "MIIB",
        "+/",
        "(",
        ")",
        "ALL",
    ];
    let openers = [
        "-----BEGIN PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----\n",
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n",
        "password = '",
        "token: \"",
        "\\\"secret\\\": \\\"",
        "Authorization: Bearer abc ",
        "Cookie: a=b; ",
        "api_key=",
    ];
    let closers = ["-----END PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----", "", "\n"];
    let m = Masker::default();
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for _ in 0..4000 {
        let n = 2 + rng.below(12);
        let mut middle = String::new();
        for k in 0..n {
            if k > 0 {
                let blanks: [&str; 4] = [" ", " ", "\n", "  "];
                let blank = blanks[rng.below(blanks.len())];
                middle.push_str(blank);
            }
            let word = words[rng.below(words.len())];
            middle.push_str(word);
        }
        let text = format!(
            "SELECT a {}{middle}{} tail",
            rng.pick(&openers[..]),
            rng.pick(&closers[..])
        );
        let out = m.mask_text(&text, &Reveal::none(), &mut MaskCounts::default());
        // Every word of the middle that has a blank on both sides (so it is no single
        // bare value after a key) is still there, in order.
        let inner: Vec<&str> = middle.split_whitespace().collect();
        let checked = inner.get(1..inner.len().saturating_sub(1)).unwrap_or_default();
        let mut from = 0;
        for word in checked {
            match out.get(from..).and_then(|rest| rest.find(word)) {
                Some(p) => from += p + word.len(),
                None => panic!("{word:?} was masked away:\n{text:?}\n{out:?}"),
            }
        }
        assert!(out.ends_with(" tail"), "{out:?}");
    }
}
