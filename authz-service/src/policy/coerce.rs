//! Argument values as a lax upstream reads them.
//!
//! The official Python SDK validates tool arguments with pydantic in lax mode, which turns
//! `"yes"`, `1` and `"true"` into `True` for a `bool` parameter and `"1_000"`, `"1e3"` and
//! `1000.0` into 1000 for a number. A condition that compared JSON strictly would let those
//! spellings past a rule written against the value the upstream acts on, so a bool or
//! number condition matches every spelling such an upstream reads as that value. Strings,
//! null, arrays and objects compare exactly.

use serde_json::Value;

/// A number as read from a JSON number, a numeric string or a bool; integers stay exact.
#[derive(Debug, Clone, Copy)]
pub(super) enum Number {
    Int(i128),
    Float(f64),
}

impl Number {
    pub(super) fn as_f64(self) -> f64 {
        match self {
            // Rounds beyond 2^53, as the f64 bounds of gt/gte/lt/lte do.
            #[allow(clippy::cast_precision_loss)]
            Self::Int(n) => n as f64,
            Self::Float(x) => x,
        }
    }

    fn same(self, other: Self) -> bool {
        match (self, other) {
            (Self::Int(a), Self::Int(b)) => a == b,
            // f64 equality: -0.0 == 0, NaN equals nothing.
            (a, b) => a.as_f64() == b.as_f64(),
        }
    }
}

/// Whether `value` is what a lax upstream reads as the condition's `want`.
pub(super) fn lax_equals(want: &Value, value: &Value) -> bool {
    match want {
        Value::Bool(b) => lax_bool(value) == Some(*b),
        Value::Number(_) => lax_number(want).zip(lax_number(value)).is_some_and(|(a, b)| a.same(b)),
        _ => want == value,
    }
}

/// A bool as pydantic's lax mode reads one: 0/1 (also as floats) and the usual words.
pub(super) fn lax_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(_) => match lax_number(value)?.as_f64() {
            0.0 => Some(false),
            1.0 => Some(true),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
            "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A number as a lax upstream reads one: a JSON number, a bool as 1 or 0, or a string
/// holding a number (surrounding whitespace, `_` between digits, a fraction or exponent).
pub(super) fn lax_number(value: &Value) -> Option<Number> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .map(Number::Int)
            .or_else(|| n.as_f64().map(Number::Float)),
        Value::Bool(b) => Some(Number::Int(i128::from(*b))),
        Value::String(s) => numeric_string(s),
        _ => None,
    }
}

fn numeric_string(s: &str) -> Option<Number> {
    let s = s.trim();
    let bytes = s.as_bytes();
    let mut plain = String::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        if c == '_' {
            // Python's int() and float() take `_` only between two digits.
            let digit_at = |j: Option<usize>| j.and_then(|j| bytes.get(j)).is_some_and(u8::is_ascii_digit);
            if !(digit_at(i.checked_sub(1)) && digit_at(i.checked_add(1))) {
                return None;
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .parse::<i128>()
        .map(Number::Int)
        .ok()
        .or_else(|| plain.parse::<f64>().ok().map(Number::Float))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_bool_matches_what_pydantic_reads_as_that_bool() {
        for yes in [
            json!(true),
            json!(1),
            json!(1.0),
            json!("1"),
            json!("true"),
            json!("True"),
            json!("TRUE"),
            json!("yes"),
            json!("Y"),
            json!("on"),
            json!("t"),
            json!(" yes "),
        ] {
            assert!(lax_equals(&json!(true), &yes), "{yes}");
            assert!(!lax_equals(&json!(false), &yes), "{yes}");
        }
        for no in [
            json!(false),
            json!(0),
            json!(0.0),
            json!(-0.0),
            json!("0"),
            json!("false"),
            json!("No"),
            json!("n"),
            json!("OFF"),
            json!("f"),
        ] {
            assert!(lax_equals(&json!(false), &no), "{no}");
            assert!(!lax_equals(&json!(true), &no), "{no}");
        }
        for neither in [
            json!(2),
            json!(0.5),
            json!("1.0"),
            json!("yess"),
            json!(""),
            json!(null),
            json!([true]),
        ] {
            assert_eq!(lax_bool(&neither), None, "{neither}");
        }
    }

    #[test]
    fn a_number_matches_numeric_strings_and_bools() {
        for zero in [
            json!(0),
            json!(0.0),
            json!(-0.0),
            json!("0"),
            json!(" 0 "),
            json!("0.0"),
            json!("-0"),
            json!("0e5"),
            json!(false),
        ] {
            assert!(lax_equals(&json!(0), &zero), "{zero}");
            assert!(lax_equals(&json!(0.0), &zero), "{zero}");
        }
        for million in [
            json!(1_000_000),
            json!(1e6),
            json!("1_000_000"),
            json!("1000000.0"),
            json!("1e6"),
            json!("1E+6"),
            json!("+1000000"),
            json!("\t1_000_000\n"),
        ] {
            assert_eq!(lax_number(&million).map(Number::as_f64), Some(1e6), "{million}");
        }
        assert!(lax_equals(&json!(1), &json!(true)));
        for not_a_number in [
            json!("1__000"),
            json!("_1"),
            json!("1_"),
            json!("1_.5"),
            json!("0x10"),
            json!("one"),
            json!(""),
            json!(null),
        ] {
            assert!(lax_number(&not_a_number).is_none(), "{not_a_number}");
        }
    }

    #[test]
    fn integers_compare_exactly_and_strings_stay_exact() {
        assert!(lax_equals(
            &json!(9_007_199_254_740_993_u64),
            &json!("9007199254740993")
        ));
        assert!(!lax_equals(
            &json!(9_007_199_254_740_993_u64),
            &json!(9_007_199_254_740_992_u64)
        ));
        assert!(!lax_equals(&json!("prod"), &json!("Prod")));
        assert!(!lax_equals(&json!("1"), &json!(1)));
        assert!(!lax_equals(&json!("true"), &json!(true)));
        assert!(lax_equals(&json!(null), &json!(null)));
        assert!(!lax_equals(&json!(1.5), &json!("nan")));
    }
}
