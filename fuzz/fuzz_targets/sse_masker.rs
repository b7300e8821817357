//! Arbitrary bytes as an SSE stream, cut at fuzzer-chosen points: `SseMasker` gives the
//! same output and records for any chunking and never panics; the plain `SseFramer`
//! yields the same events for any chunking.

#![no_main]

use gatehouse_core::mask::{MaskCounts, Masker, Reveal, SseMasker};
use gatehouse_core::sse::SseFramer;
use libfuzzer_sys::fuzz_target;

/// Splits `stream` at the points encoded in `cuts` (one byte each, as fractions).
fn split<'a>(stream: &'a [u8], cuts: &[u8]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|&c| usize::from(c) * stream.len() / 255).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for p in points {
        out.push(&stream[start..p]);
        start = p;
    }
    out.push(&stream[start..]);
    out
}

fn run(masker: &Masker, reveal: &Reveal, max: usize, chunks: &[&[u8]]) -> (Vec<u8>, Vec<String>, MaskCounts) {
    let mut s = SseMasker::new(max);
    let mut out = Vec::new();
    let mut records = Vec::new();
    let mut counts = MaskCounts::default();
    for chunk in chunks {
        s.push(masker, reveal, chunk, &mut out, &mut counts, |e| {
            records.push(format!("{e:?}"))
        });
        assert!(s.buffered_bytes() <= 2 * max + 2);
    }
    s.finish(masker, reveal, &mut out, &mut counts, |e| {
        records.push(format!("{e:?}"))
    });
    (out, records, counts)
}

fn frame(max: usize, chunks: &[&[u8]]) -> String {
    let mut f = SseFramer::new(max);
    let mut events = Vec::new();
    for chunk in chunks {
        events.extend(f.push(chunk));
    }
    let end = f.finish();
    format!("{events:?} {end:?}")
}

fuzz_target!(|data: &[u8]| {
    // Layout: [max selector][number of cuts n][n cut bytes][stream...].
    let Some((&sel, rest)) = data.split_first() else { return };
    let Some((&n, rest)) = rest.split_first() else { return };
    let n = usize::from(n % 8).min(rest.len());
    let (cuts, stream) = rest.split_at(n);
    let max = match sel % 4 {
        0 => 1 << 20,
        1 => 16,
        2 => 64,
        _ => 1 + usize::from(sel),
    };
    let masker = Masker::default();
    let reveal = if sel & 0x80 == 0 {
        Reveal::none()
    } else {
        Reveal::from_header("email")
    };
    let chunks = split(stream, cuts);
    let whole = run(&masker, &reveal, max, &[stream]);
    assert_eq!(
        run(&masker, &reveal, max, &chunks),
        whole,
        "chunking changed the output"
    );
    assert!(
        std::str::from_utf8(&whole.0).is_ok(),
        "invalid UTF-8 reached the client"
    );
    assert_eq!(frame(max, &chunks), frame(max, &[stream]));
});
