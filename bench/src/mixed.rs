//! Deterministic "mixed" tool output for the masking benchmarks: prose, log lines and
//! JSON-looking rows, with a secret or a piece of personal data every ~2 KB, and the
//! look-alikes real output carries (UUIDs, git SHAs, order numbers, account ids).
//!
//! The same generator feeds the native measurement and the upstream behind Envoy, so both
//! mask the same bytes.

/// A small xorshift generator: the text must be the same on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items
            .get(self.below(items.len() as u64) as usize)
            .copied()
            .unwrap_or_default()
    }

    fn chars(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| char::from(alphabet[self.below(alphabet.len() as u64) as usize]))
            .collect()
    }

    fn digits(&mut self, n: usize) -> String {
        self.chars(b"0123456789", n)
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const HEX: &[u8] = b"0123456789abcdef";
const WORDS: &[&str] = &[
    "the",
    "deployment",
    "of",
    "service",
    "finished",
    "after",
    "retrying",
    "cache",
    "warm",
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
    "depth",
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
    "shard",
    "index",
];

fn luhn_complete(prefix: &str) -> String {
    // The check digit that makes prefix + digit pass the Luhn test.
    let sum: u32 = prefix
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let dd = d * 2;
                if dd > 9 { dd - 9 } else { dd }
            } else {
                d
            }
        })
        .sum();
    format!("{prefix}{}", (10 - sum % 10) % 10)
}

fn iban_de(rng: &mut Rng) -> String {
    let bban = rng.digits(18);
    // ISO 7064 mod 97-10: BBAN + "DE00" with letters as numbers (D=13, E=14).
    let digits = format!("{bban}131400");
    let rem = digits
        .bytes()
        .fold(0u64, |acc, b| (acc * 10 + u64::from(b - b'0')) % 97);
    format!("DE{:02}{bban}", 98 - rem)
}

/// One secret or piece of personal data, of a kind chosen at random.
pub fn secret(rng: &mut Rng) -> String {
    match rng.below(9) {
        0 => format!("AKIA{}", rng.chars(BASE32, 16)),
        1 => format!(
            "{}.{}@example.com",
            rng.pick(WORDS),
            rng.chars(b"abcdefghijklmnopqrstuvwxyz", 6)
        ),
        2 => luhn_complete(&format!("4{}", rng.digits(14))),
        3 => format!(
            "{}-{}-{}",
            100 + rng.below(565),
            10 + rng.below(89),
            1000 + rng.below(8999)
        ),
        4 => iban_de(rng),
        5 => format!("ghp_{}", rng.chars(ALNUM, 36)),
        6 => format!(
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI{}In0.{}",
            rng.chars(ALNUM, 12),
            rng.chars(ALNUM, 43)
        ),
        7 => format!("+1 415 555 {:04}", rng.below(10_000)),
        _ => format!("postgres://app:{}@db.internal:5432/app", rng.chars(ALNUM, 14)),
    }
}

fn line(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => {
            let n = 8 + rng.below(12) as usize;
            let words: Vec<&str> = (0..n).map(|_| rng.pick(WORDS)).collect();
            format!("{}.", words.join(" "))
        }
        1 => format!(
            "2026-11-23T10:{:02}:{:02}Z INFO request_id={} commit={} took {} ms",
            rng.below(60),
            rng.below(60),
            rng.chars(HEX, 32),
            rng.chars(HEX, 40),
            rng.below(900)
        ),
        2 => format!(
            "{{\"order\": \"ORDER-{}\", \"account\": \"{}\", \"instance\": \"i-{}\", \"total\": {}.{:02}}}",
            rng.digits(16),
            rng.digits(12),
            rng.chars(HEX, 17),
            rng.below(10_000),
            rng.below(100)
        ),
        _ => format!(
            "id {}-{}-{}-{}-{} version v{}.{}.{} status ok",
            rng.chars(HEX, 8),
            rng.chars(HEX, 4),
            rng.chars(HEX, 4),
            rng.chars(HEX, 4),
            rng.chars(HEX, 12),
            rng.below(10),
            rng.below(40),
            rng.below(100)
        ),
    }
}

/// About `bytes` of mixed text (lines end with `\n`), with a secret every ~2 KB.
pub fn text(bytes: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut out = String::with_capacity(bytes + 256);
    let mut since_secret = 0usize;
    while out.len() < bytes {
        let l = if since_secret > 2048 {
            since_secret = 0;
            format!("contact: {}", secret(&mut rng))
        } else {
            line(&mut rng)
        };
        since_secret += l.len() + 1;
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// A tools/call answer whose text content is ~`bytes` of mixed text.
pub fn tools_call_answer(id: &serde_json::Value, bytes: usize) -> serde_json::Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {"content": [{"type": "text", "text": text(bytes, 7)}], "isError": false},
    })
}

/// An SSE answer of ~`bytes`: progress notifications of ~`event_bytes` of mixed text each,
/// then the final result.
pub fn sse_answer(id: &serde_json::Value, bytes: usize, event_bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + 1024);
    let mut seed = 11;
    while out.len() < bytes {
        let note = serde_json::json!({
            "jsonrpc": "2.0",
            "method": "notifications/message",
            "params": {"level": "info", "data": text(event_bytes, seed)},
        });
        seed += 1;
        out.push_str("event: message\ndata: ");
        out.push_str(&note.to_string());
        out.push_str("\n\n");
    }
    let result = tools_call_answer(id, 256);
    out.push_str("event: message\ndata: ");
    out.push_str(&result.to_string());
    out.push_str("\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_valid() {
        let card = luhn_complete("411111111111111");
        assert_eq!(card, "4111111111111111");
        let mut rng = Rng::new(3);
        let iban = iban_de(&mut rng);
        let moved = format!("{}{}", &iban[4..], &iban[..4]);
        let numeric: String = moved
            .chars()
            .map(|c| {
                if c.is_ascii_digit() {
                    c.to_string()
                } else {
                    (c as u32 - 55).to_string()
                }
            })
            .collect();
        let rem = numeric
            .bytes()
            .fold(0u64, |acc, b| (acc * 10 + u64::from(b - b'0')) % 97);
        assert_eq!(rem, 1, "{iban}");
    }

    #[test]
    fn text_is_deterministic_and_sized() {
        let a = text(10_000, 5);
        assert_eq!(a, text(10_000, 5));
        assert!(a.len() >= 10_000 && a.len() < 10_400);
        assert!(a.contains("contact: "));
    }
}
