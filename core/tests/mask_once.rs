//! One walk does not parse and walk the same JSON text twice (a tool result's `content` text
//! and its `structuredContent` carry the same JSON): masking a message with repeated JSON
//! texts gives exactly what masking each copy on its own gives, counts included.

use gatehouse_core::mask::{MaskCounts, Masker, Reveal};
use serde_json::{Value, json};

fn rows(contact: &str) -> String {
    json!([
        {"id": 1, "name": "Alice Martin", "contact": contact, "plan": "pro", "note": "renewal due in march"},
        {"id": 2, "name": "Bob Stone", "contact": "[MASKED:email]", "plan": "free", "note": "no open tickets"},
    ])
    .to_string()
}

/// Each string of `message` masked alone (a fresh walk each), and the counts summed.
fn each_alone(masker: &Masker, message: &Value) -> (Value, MaskCounts) {
    let mut out = message.clone();
    let mut counts = MaskCounts::default();
    let mut mask = |v: &mut Value| {
        masker.mask_value(v, &Reveal::none(), &mut counts);
    };
    if let Some(content) = out.pointer_mut("/result/content/0/text") {
        mask(content);
    }
    if let Some(structured) = out.pointer_mut("/result/structuredContent/result") {
        mask(structured);
    }
    if let Some(nested) = out.pointer_mut("/result/structuredContent/wrapped") {
        mask(nested);
    }
    (out, counts)
}

fn answer(text: &str, wrapped: Option<String>) -> Value {
    let mut structured = json!({"result": text});
    if let Some(w) = wrapped {
        structured["wrapped"] = Value::String(w);
    }
    json!({"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": text}], "structuredContent": structured}})
}

#[test]
fn repeated_json_texts_mask_as_each_copy_alone() {
    let masker = Masker::default();
    let clean = rows("[MASKED:email]");
    let secret = rows("alice.martin@example.com");
    let twice_keyed =
        r#"{"contact":"[MASKED:email]","contact":"x","pad":"................................................"}"#
            .to_owned();
    let cases = [
        answer(&clean, None),
        answer(&secret, None),
        answer(&twice_keyed, None),
        // The same text one level deeper: its depth is part of what was found clean.
        answer(&clean, Some(json!({"inner": clean}).to_string())),
        answer(&secret, Some(json!({"inner": secret}).to_string())),
    ];
    for message in cases {
        let (expected, expected_counts) = each_alone(&masker, &message);
        let mut masked = message.clone();
        let mut counts = MaskCounts::default();
        let changed = masker.mask_message(&mut masked, &Reveal::none(), &mut counts);
        assert_eq!(masked, expected, "{message}");
        assert_eq!(counts, expected_counts, "{message}");
        assert_eq!(changed, masked != message, "{message}");
    }
}
