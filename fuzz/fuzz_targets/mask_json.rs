//! Arbitrary bytes into `Masker::mask_json` (and the text fallback): no panic, and when the
//! input is JSON the output is JSON too.

#![no_main]

use std::sync::OnceLock;

use gatehouse_core::mask::{
    AllowTarget, Entropy, GitleaksAllowlist, GitleaksRule, JsonMasked, MaskConfig, MaskCounts, Masker, Reveal, Style,
};
use libfuzzer_sys::fuzz_target;

/// The default rules, and styles plus imported gitleaks rules (a secret group, keywords,
/// entropy, allowlists on the line and by stop word), compiled once.
fn maskers() -> &'static [Masker; 2] {
    static MASKERS: OnceLock<[Masker; 2]> = OnceLock::new();
    MASKERS.get_or_init(|| {
        let rule = |id: &str, regex: &str, keyword: &str, group: usize| GitleaksRule {
            id: id.to_owned(),
            regex: regex.to_owned(),
            secret_group: group,
            entropy: Entropy(2.0),
            keywords: vec![keyword.to_owned()],
            allowlists: vec![
                GitleaksAllowlist {
                    regexes: vec![r"(?i)#\s*test".to_owned()],
                    target: AllowTarget::Line,
                    ..GitleaksAllowlist::default()
                },
                GitleaksAllowlist {
                    stopwords: vec!["example".to_owned()],
                    ..GitleaksAllowlist::default()
                },
            ],
        };
        let styled = Masker::new(&MaskConfig {
            default_style: Style::Token,
            styles: [
                ("credit_card".to_owned(), Style::Last4),
                ("sensitive_field".to_owned(), Style::Last4),
            ]
            .into(),
            token_key: Some("00112233445566778899aabbccddeeff".to_owned()),
            gitleaks: vec![
                rule("vendor-token", r"\b(vt_[A-Za-z0-9]{20,40})\b", "vt_", 0),
                rule(
                    "vendor-assigned",
                    r#"(?i)[\w.-]{0,50}?(?:vendor)(?:[ \t\w.-]{0,20})[\s'"]{0,3}(?:=|:)[\x60'"\s=]{0,5}([a-z0-9]{16})(?:[\x60'"\s;]|$)"#,
                    "vendor",
                    1,
                ),
            ],
            ..MaskConfig::default()
        })
        .expect("valid config");
        [Masker::default(), styled]
    })
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the masker and what is revealed, so styles get exercised too.
    let (selector, body) = data.split_first().map_or((0, data), |(s, rest)| (*s, rest));
    let masker = &maskers()[usize::from(selector & 1)];
    let reveal = if selector & 2 == 0 {
        Reveal::none()
    } else {
        Reveal::from_header("email,phone")
    };
    let mut counts = MaskCounts::default();
    let is_json = serde_json::from_slice::<serde_json::Value>(body).is_ok();
    match masker.mask_json(body, &reveal, &mut counts) {
        JsonMasked::NotJson => {
            assert!(!is_json, "valid JSON reported as not JSON");
            let out = masker.mask_bytes_as_text(body, &reveal, &mut counts);
            if let Some(out) = out {
                assert!(std::str::from_utf8(&out).is_ok(), "text output is UTF-8");
            }
        }
        JsonMasked::Unchanged => assert!(is_json && counts.is_empty()),
        JsonMasked::Changed(out) => {
            assert!(is_json);
            serde_json::from_slice::<serde_json::Value>(&out).expect("masked JSON parses");
        }
    }
});
