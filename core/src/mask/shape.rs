//! What a secret looks like, as opposed to a stand-in for one: documentation and config
//! templates are full of `ghp_xxxx…`, `AKIAXXXXXXXXXXXXXXXX`, `Bearer $API_KEY`,
//! `password: <your password>` and `curl -u user:pass`. Masking those hides nothing and
//! makes the record and the approver's view wrong, so the detectors ask these questions of
//! a candidate before they mask it. Pure functions over bytes; nothing allocates.

/// Bits of Shannon entropy per byte of `value` (0 for an empty value).
pub(crate) fn entropy(value: &[u8]) -> f64 {
    if value.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in value {
        if let Some(c) = counts.get_mut(usize::from(b)) {
            *c += 1;
        }
    }
    let n = value.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Whether the random part of a token is a fill rather than random: one byte makes up half
/// of it or more (`xxxx…`, `XXXX…`, `aaaa…`) or six equal bytes follow one another. A
/// random body of the alphabets tokens use does either with a probability well under one
/// in a million.
pub(crate) fn looks_filled(body: &[u8]) -> bool {
    if body.len() < 4 {
        return false;
    }
    let mut counts = [0u16; 256];
    let mut same = 1;
    let mut prev: Option<u8> = None;
    for &b in body {
        if let Some(c) = counts.get_mut(usize::from(b)) {
            *c = c.saturating_add(1);
        }
        match prev {
            Some(p) if p == b => same += 1,
            _ => same = 1,
        }
        if same >= 6 {
            return true;
        }
        prev = Some(b);
    }
    let top = counts.iter().copied().max().unwrap_or(0);
    usize::from(top) * 2 >= body.len()
}

/// Words that stand for a secret in templates and examples, never one themselves.
const PLACEHOLDER_WORDS: &[&[u8]] = &[
    b"password",
    b"passwd",
    b"pass",
    b"pwd",
    b"secret",
    b"token",
    b"apikey",
    b"api_key",
    b"key",
    b"changeme",
    b"changeit",
    b"example",
    b"sample",
    b"dummy",
    b"placeholder",
    b"redacted",
    b"hidden",
    b"masked",
    b"test",
    b"todo",
    b"tbd",
    b"fixme",
    b"value",
    b"none",
    b"null",
    b"nil",
    b"undefined",
    b"true",
    b"false",
    b"empty",
    b"default",
    b"required",
    b"optional",
    b"string",
    b"username",
    b"user",
];

/// Whether `value`, found where a secret would be (after a sensitive key, as a password in
/// a URL or a command line), is a stand-in for one:
/// - empty or one character (`PuttyPassword=0`);
/// - a placeholder word (`password`, `changeme`, `<none>`, `null`, …);
/// - a variable or template reference: `$VAR`, `${VAR}`, `$1`, `%VAR%`, `{{ .Values.x }}`,
///   `${{ secrets.X }}`, `@VAR@`;
/// - a bracketed description: `<your token>`, `[PASSWORD]`, `{base64(user:pass)}`;
/// - a fill (`xxxx`, `****`, `####`, `••••`, `yyy`) or an ellipsis (`...`, `…`);
/// - a `your_…` name (`YOUR_API_KEY`, `your-token-here`).
pub(crate) fn is_placeholder(value: &[u8]) -> bool {
    let v = trim_quotes(value);
    if v.len() <= 1 {
        return true;
    }
    if PLACEHOLDER_WORDS.iter().any(|w| v.eq_ignore_ascii_case(w)) {
        return true;
    }
    let first = v.first().copied().unwrap_or(0);
    let last = v.last().copied().unwrap_or(0);
    let reference = match first {
        b'$' => v
            .get(1)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'{' | b'(')),
        b'%' | b'@' => last == first && v.len() > 2,
        _ => false,
    };
    if reference || contains(v, b"{{") || contains(v, b"${") {
        return true;
    }
    let bracketed = matches!((first, last), (b'<', b'>') | (b'[', b']'))
        || ((first, last) == (b'{', b'}') && v.iter().any(|&b| matches!(b, b'(' | b' ' | b'$' | b'.' | b'<' | b'[')));
    if bracketed {
        return true;
    }
    if contains(v, b"...") || contains(v, "…".as_bytes()) || contains(v, "•".as_bytes()) {
        return true;
    }
    let one_byte = v.iter().all(|&b| b == first);
    if one_byte
        || (v.len() >= 4
            && v.iter()
                .all(|b| matches!(b, b'x' | b'X' | b'*' | b'#' | b'.' | b'-' | b'_' | b'?')))
    {
        return true;
    }
    if filled_run(v, 4) || (v.len() >= 8 && looks_filled(v)) {
        return true;
    }
    if names_a_secret(v) {
        return true;
    }
    // `YOUR_API_KEY`, `your-token-here`: `your` and a separator, not `yourmom123`.
    v.len() >= 6
        && v.get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"your"))
        && matches!(v.get(4), Some(b'_' | b'-' | b' ' | b'.'))
}

/// Whether `value` could be a generated secret rather than a word, a name or a number:
/// at least 8 bytes, a letter and a digit (or a base64 symbol) in it, and at least 3 bits of
/// entropy per byte. For values found under keys that only sometimes hold a secret
/// (`credentials`, `auth`), where `"auth": "basic"` and `"creds": "vault"` are common.
pub(crate) fn looks_generated(value: &[u8]) -> bool {
    let v = trim_quotes(value);
    v.len() >= 8
        && !names_a_version(v)
        && v.iter().any(u8::is_ascii_alphabetic)
        && v.iter().any(|&b| b.is_ascii_digit() || matches!(b, b'+' | b'/' | b'='))
        && !is_placeholder(v)
        && !looks_filled(v)
        && entropy(v) >= 3.0
}

/// Whether `v` is the name of a secret rather than one: no digit, and a word of it (split
/// at case changes and punctuation) is `token`, `password`, `secret` or `key`
/// (`SLACK_BOT_TOKEN`, `xoxb-Slack_BOT_TOKEN`, `my-api-key`, `MyPassword`).
fn names_a_secret(v: &[u8]) -> bool {
    if v.iter().any(u8::is_ascii_digit) || v.len() > 64 {
        return false;
    }
    let mut start = 0;
    let mut words = 0;
    let mut named = false;
    for end in 1..=v.len() {
        let prev = v.get(end - 1).copied().unwrap_or(0);
        let next = v.get(end).copied().unwrap_or(0);
        let boundary = !next.is_ascii_alphabetic() || (prev.is_ascii_lowercase() && next.is_ascii_uppercase());
        if !boundary {
            continue;
        }
        let word = v.get(start..end).unwrap_or_default();
        if word.first().is_some_and(u8::is_ascii_alphabetic) {
            words += 1;
            named |= [&b"token"[..], b"password", b"passwd", b"secret", b"key"]
                .iter()
                .any(|w| word.eq_ignore_ascii_case(w));
        }
        start = if next.is_ascii_alphabetic() { end } else { end + 1 };
    }
    named && words >= 2
}

/// Whether `v` is a name with a version (`jjwt-jackson-0.11.2`, `app@1.4.0`): it ends with
/// dotted numbers right after `-`, `_`, `@`, `:` or `v`.
fn names_a_version(v: &[u8]) -> bool {
    let tail = v.iter().rev().take_while(|b| b.is_ascii_digit() || **b == b'.').count();
    let version = v.get(v.len() - tail..).unwrap_or_default();
    let before = v.len().checked_sub(tail + 1).and_then(|i| v.get(i)).copied();
    version.contains(&b'.')
        && version.first().is_some_and(u8::is_ascii_digit)
        && matches!(before, Some(b'-' | b'_' | b'@' | b':' | b'v'))
}

/// A run of `n` or more of one fill byte (`x`, `X`, `*`, `#`).
fn filled_run(v: &[u8], n: usize) -> bool {
    let mut run = 0;
    let mut prev = 0u8;
    for &b in v {
        run = if b == prev { run + 1 } else { 1 };
        prev = b;
        if run >= n && matches!(b, b'x' | b'X' | b'*' | b'#') {
            return true;
        }
    }
    false
}

fn trim_quotes(v: &[u8]) -> &[u8] {
    match (v.first(), v.last()) {
        (Some(&a), Some(&b)) if v.len() >= 2 && a == b && matches!(a, b'"' | b'\'' | b'`') => {
            v.get(1..v.len() - 1).unwrap_or_default()
        }
        _ => v,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_are_not_random() {
        for body in [
            &b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"[..],
            b"XXXXXXXXXXXXXXXX",
            b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            b"Ab0000000Cd",
        ] {
            assert!(looks_filled(body), "{}", String::from_utf8_lossy(body));
        }
        for body in [
            &b"hFWCEPyYngFb51yBMWXaSCrUZoL8g5ubbbPI"[..],
            b"Q7ZMB2LRX4T6PWKD",
            b"e708ba56e1517a99f6b5fb07349476ef",
            b"5171572773297",
            b"2345672345672345",
            b"aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        ] {
            assert!(!looks_filled(body), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn placeholders_by_shape() {
        for v in [
            "0",
            "",
            "password",
            "'PASSWORD'",
            "changeme",
            "$API_KEY",
            "${DB_PASSWORD}",
            "$1",
            "$(cat pw.txt)",
            "%API_KEY%",
            "@TOKEN@",
            "{{ .Values.token }}",
            "${{ secrets.TOKEN }}",
            "<your token>",
            "[PASSWORD]",
            "{base64(email:password)}",
            "...",
            "sk-...abcd",
            "xxxxx",
            "yyy",
            "**********",
            "XXXXXXXXXXXX",
            "ab####cd",
            "YOUR_API_KEY",
            "xoxb-Slack_BOT_TOKEN",
            "SLACK_BOT_TOKEN",
            "MyPassword",
            "AIzaAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "your-token-here",
        ] {
            assert!(is_placeholder(v.as_bytes()), "{v:?}");
        }
        for v in [
            "hunter22",
            "P@ssw0rd$1",
            "yqDVtkqPECriaLRi",
            "{ZqL5kVrX1n8tA2}",
            "d2LkV78zLx!t",
            "abc",
            "42",
            "k1",
            "1234",
            "you2know",
            "yourmom123",
            "Password1",
        ] {
            assert!(!is_placeholder(v.as_bytes()), "{v:?}");
        }
    }

    #[test]
    fn generated_values_have_letters_digits_and_entropy() {
        assert!(looks_generated(
            b"0afae57f3ccfd9d7f5767067bc48b30f719e271ba470488056e37ab35d4b6506"
        ));
        assert!(looks_generated(b"am9obmRvZTpkMDY5NGIxYi1jMTcxLTQ4ODYt"));
        for v in [
            "basic",
            "vault",
            "bearer-token",
            "aaaaaaaa1",
            "jane.doe",
            "12345678",
            "${CREDS}",
        ] {
            assert!(!looks_generated(v.as_bytes()), "{v:?}");
        }
    }
}
