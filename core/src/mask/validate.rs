//! Checksums and structural checks that tell a real card number, IBAN, SSN or JWT from a
//! string of the same shape (order numbers, account ids, hashes). Pure functions over
//! ASCII; none of them allocates except the JWT header parse.

use serde::Deserialize;

/// The Luhn (mod 10) check over ASCII digits.
pub(crate) fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &b) in digits.iter().rev().enumerate() {
        if !b.is_ascii_digit() {
            return false;
        }
        let d = u32::from(b - b'0');
        sum += if i % 2 == 1 {
            let dd = d * 2;
            if dd > 9 { dd - 9 } else { dd }
        } else {
            d
        };
    }
    sum.is_multiple_of(10)
}

/// Whether `digits` (13–19 ASCII digits) start with a card network's issuer prefix and
/// have a length that network issues, and pass Luhn.
pub(crate) fn is_card(digits: &[u8]) -> bool {
    let len = digits.len();
    if !(13..=19).contains(&len) {
        return false;
    }
    let prefix = |n: usize| -> u32 {
        digits
            .iter()
            .take(n)
            .fold(0u32, |acc, &b| acc * 10 + u32::from(b.wrapping_sub(b'0')))
    };
    let network_ok = match digits.first() {
        // Visa.
        Some(b'4') => matches!(len, 13 | 16 | 19),
        // Mastercard 51–55 (16), Maestro 50 and 56–58 (13–19).
        Some(b'5') => match prefix(2) {
            51..=55 => len == 16,
            50 | 56..=58 => true,
            _ => false,
        },
        // Mastercard's 2-series (2221–2720).
        Some(b'2') => (2221..=2720).contains(&prefix(4)) && len == 16,
        // Amex 34/37 (15), Diners 36 (14) and 300–305/38/39 (14 or 16), JCB 35 (16–19).
        Some(b'3') => match prefix(2) {
            34 | 37 => len == 15,
            36 => len == 14,
            30 | 38 | 39 => matches!(len, 14 | 16),
            35 => len >= 16,
            _ => false,
        },
        // Discover, UnionPay, Maestro 6x: 16–19.
        Some(b'6') => len >= 16,
        _ => false,
    };
    network_ok && luhn(digits)
}

/// The IBAN length of a country (ISO 13616 registry), or `None` for a code that has no
/// IBAN. Only listed countries are accepted: with the checksum alone, one random
/// `XX00…` identifier in 97 would pass.
pub(crate) fn iban_length(country: [u8; 2]) -> Option<usize> {
    const TABLE: &[(&[u8; 2], u8)] = &[
        (b"AD", 24),
        (b"AE", 23),
        (b"AL", 28),
        (b"AT", 20),
        (b"AZ", 28),
        (b"BA", 20),
        (b"BE", 16),
        (b"BG", 22),
        (b"BH", 22),
        (b"BI", 27),
        (b"BR", 29),
        (b"BY", 28),
        (b"CH", 21),
        (b"CR", 22),
        (b"CY", 28),
        (b"CZ", 24),
        (b"DE", 22),
        (b"DJ", 27),
        (b"DK", 18),
        (b"DO", 28),
        (b"EE", 20),
        (b"EG", 29),
        (b"ES", 24),
        (b"FI", 18),
        (b"FK", 18),
        (b"FO", 18),
        (b"FR", 27),
        (b"GB", 22),
        (b"GE", 22),
        (b"GI", 23),
        (b"GL", 18),
        (b"GR", 27),
        (b"GT", 28),
        (b"HR", 21),
        (b"HU", 28),
        (b"IE", 22),
        (b"IL", 23),
        (b"IQ", 23),
        (b"IS", 26),
        (b"IT", 27),
        (b"JO", 30),
        (b"KW", 30),
        (b"KZ", 20),
        (b"LB", 28),
        (b"LC", 32),
        (b"LI", 21),
        (b"LT", 20),
        (b"LU", 20),
        (b"LV", 21),
        (b"LY", 25),
        (b"MC", 27),
        (b"MD", 24),
        (b"ME", 22),
        (b"MK", 19),
        (b"MN", 20),
        (b"MR", 27),
        (b"MT", 31),
        (b"MU", 30),
        (b"NI", 28),
        (b"NL", 18),
        (b"NO", 15),
        (b"OM", 23),
        (b"PK", 24),
        (b"PL", 28),
        (b"PS", 29),
        (b"PT", 25),
        (b"QA", 29),
        (b"RO", 24),
        (b"RS", 22),
        (b"RU", 33),
        (b"SA", 24),
        (b"SC", 31),
        (b"SD", 18),
        (b"SE", 24),
        (b"SI", 19),
        (b"SK", 24),
        (b"SM", 27),
        (b"SO", 23),
        (b"ST", 25),
        (b"SV", 28),
        (b"TL", 23),
        (b"TN", 24),
        (b"TR", 26),
        (b"UA", 29),
        (b"VA", 22),
        (b"VG", 24),
        (b"XK", 20),
        (b"YE", 30),
    ];
    TABLE
        .iter()
        .find(|(code, _)| **code == country)
        .map(|(_, len)| usize::from(*len))
}

/// The ISO 7064 mod 97-10 check of an IBAN given as its characters without spaces
/// (`[A-Z0-9]`): the first four moved to the end, letters as 10–35, remainder 1.
pub(crate) fn iban_checksum_ok(chars: &[u8]) -> bool {
    let (head, tail) = chars.split_at(chars.len().min(4));
    let mut rem = 0u32;
    for &b in tail.iter().chain(head) {
        rem = match b {
            b'0'..=b'9' => (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(b - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}

/// The Social Security Administration never issues area 000, 666 or 900–999, group 00
/// or serial 0000.
pub(crate) fn ssn_ok(area: u32, group: u32, serial: u32) -> bool {
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Decodes unpadded base64url (also accepting the standard alphabet's `+` and `/`).
/// `None` if a character is outside the alphabet or the length is impossible.
pub(crate) fn base64url_decode(input: &[u8]) -> Option<Vec<u8>> {
    fn value(b: u8) -> Option<u32> {
        Some(u32::from(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        }))
    }
    if input.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    for chunk in input.chunks(4) {
        let mut acc = 0u32;
        for &b in chunk {
            acc = (acc << 6) | value(b)?;
        }
        // A chunk of n characters carries n*6 bits, of which the whole bytes count.
        let bits = chunk.len() * 6;
        acc <<= 24 - bits;
        let bytes = acc.to_be_bytes();
        out.extend(bytes.iter().skip(1).take(bits / 8));
    }
    Some(out)
}

/// Whether a JWT's first segment decodes to a JSON object naming an algorithm.
pub(crate) fn jwt_header_ok(segment: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Header {
        #[allow(dead_code)]
        alg: serde::de::IgnoredAny,
    }
    // Real headers are well under this; the bound keeps a hostile input cheap.
    if segment.len() > 4096 {
        return false;
    }
    base64url_decode(segment).is_some_and(|json| serde_json::from_slice::<Header>(&json).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_and_networks() {
        assert!(is_card(b"4111111111111111"));
        assert!(is_card(b"5555555555554444"));
        assert!(is_card(b"378282246310005"));
        assert!(is_card(b"6011111111111117"));
        assert!(is_card(b"30569309025904"));
        assert!(is_card(b"2223003122003222"));
        assert!(!is_card(b"4111111111111112"), "Luhn");
        assert!(!is_card(b"1111111111111117"), "no network starts with 1");
        assert!(!is_card(b"378282246310005000"), "Amex is 15 digits");
        assert!(!is_card(b"411111111111"), "too short");
    }

    #[test]
    fn iban_checks() {
        assert!(iban_checksum_ok(b"DE89370400440532013000"));
        assert!(iban_checksum_ok(b"GB82WEST12345698765432"));
        assert!(iban_checksum_ok(b"FR1420041010050500013M02606"));
        assert!(!iban_checksum_ok(b"DE89370400440532013001"));
        assert_eq!(iban_length(*b"DE"), Some(22));
        assert_eq!(iban_length(*b"FR"), Some(27));
        assert_eq!(iban_length(*b"US"), None);
    }

    #[test]
    fn ssn_rules() {
        assert!(ssn_ok(123, 45, 6789));
        assert!(!ssn_ok(0, 45, 6789));
        assert!(!ssn_ok(666, 45, 6789));
        assert!(!ssn_ok(912, 45, 6789));
        assert!(!ssn_ok(123, 0, 6789));
        assert!(!ssn_ok(123, 45, 0));
    }

    #[test]
    fn base64url() {
        assert_eq!(
            base64url_decode(b"eyJhbGciOiJIUzI1NiJ9").unwrap(),
            br#"{"alg":"HS256"}"#
        );
        assert_eq!(base64url_decode(b"YQ").unwrap(), b"a");
        assert_eq!(base64url_decode(b"YWI").unwrap(), b"ab");
        assert_eq!(base64url_decode(b"").unwrap(), b"");
        assert!(base64url_decode(b"Y").is_none());
        assert!(base64url_decode(b"a.b").is_none());
        assert!(jwt_header_ok(b"eyJhbGciOiJIUzI1NiJ9"));
        assert!(!jwt_header_ok(b"eyJ0eXAiOiJKV1QifQ"), "no alg");
        assert!(!jwt_header_ok(b"eyJhbGciOiJIUzI1NiJ"), "truncated");
    }
}
