//! Arbitrary bytes into `Masker::mask_json` (and the text fallback): no panic, and when the
//! input is JSON the output is JSON too.

#![no_main]

use gatehouse_core::mask::{JsonMasked, MaskConfig, MaskCounts, Masker, Reveal, Style};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the masker and what is revealed, so styles get exercised too.
    let (selector, body) = data.split_first().map_or((0, data), |(s, rest)| (*s, rest));
    let masker = if selector & 1 == 0 {
        Masker::default()
    } else {
        Masker::new(&MaskConfig {
            default_style: Style::Token,
            styles: [
                ("credit_card".to_owned(), Style::Last4),
                ("sensitive_field".to_owned(), Style::Last4),
            ]
            .into(),
            token_key: Some("00112233445566778899aabbccddeeff".to_owned()),
            ..MaskConfig::default()
        })
        .expect("valid config")
    };
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
