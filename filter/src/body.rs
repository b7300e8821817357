//! How one step of an answer ([`Step`]) reaches the host's response body buffer. The glue
//! gives the host's buffer ([`BodyBuffer`]); the rules are here, tested natively against a
//! buffer that behaves as Envoy's does.

use crate::response::Step;

/// The answer's body as the host holds it. Envoy only replaces a body from its start (or
/// appends), which is all [`BodyBuffer::replace_start`] asks of it.
pub trait BodyBuffer {
    type Error;
    /// Bytes `start..start + len` (fewer if the buffer is shorter).
    fn read(&mut self, start: usize, len: usize) -> Result<Vec<u8>, Self::Error>;
    /// Replaces the first `len` bytes with `bytes`.
    fn replace_start(&mut self, len: usize, bytes: &[u8]) -> Result<(), Self::Error>;
    /// The error for a buffer shorter than what the filter knows it holds.
    fn short() -> Self::Error;
}

/// What became of a body step, once its bytes (borrowed from the masker) are applied.
#[derive(Debug, PartialEq, Eq)]
pub enum After<E> {
    Continue,
    Pause,
    Withhold {
        headers_held: bool,
    },
    /// The host would not take the masked bytes: the unmasked ones must not go on.
    ReplaceFailed(E),
}

/// Applies a body step to the bytes after the first `offset` (masked output already, held
/// back with a paused answer) of a body of `body_size`; returns what comes next and the
/// body's size once applied.
pub fn apply<B: BodyBuffer>(
    buffer: &mut B,
    step: Step<'_>,
    offset: usize,
    body_size: usize,
) -> (After<B::Error>, usize) {
    match step {
        Step::Continue => (After::Continue, body_size),
        Step::Pause => (After::Pause, body_size),
        Step::Replace { len, bytes } => match replace_after(buffer, offset, len, bytes) {
            Ok(()) => (After::Continue, body_size.saturating_sub(len) + bytes.len()),
            Err(e) => (After::ReplaceFailed(e), body_size),
        },
        Step::Withhold { headers_held } => (After::Withhold { headers_held }, body_size),
    }
}

/// Replaces `len` body bytes after the first `offset` with `bytes`: a held prefix is read
/// and written back with them.
fn replace_after<B: BodyBuffer>(buffer: &mut B, offset: usize, len: usize, bytes: &[u8]) -> Result<(), B::Error> {
    if offset == 0 {
        return buffer.replace_start(len, bytes);
    }
    let mut body = buffer.read(0, offset)?;
    if body.len() != offset {
        return Err(B::short());
    }
    body.extend_from_slice(bytes);
    buffer.replace_start(offset + len, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer that, like Envoy's, only replaces from its start.
    struct Buffer(Vec<u8>);

    impl BodyBuffer for Buffer {
        type Error = &'static str;
        fn read(&mut self, start: usize, len: usize) -> Result<Vec<u8>, &'static str> {
            let end = (start + len).min(self.0.len());
            Ok(self.0.get(start..end).unwrap_or_default().to_vec())
        }
        fn replace_start(&mut self, len: usize, bytes: &[u8]) -> Result<(), &'static str> {
            if len > self.0.len() {
                return Err("past the end");
            }
            self.0.splice(..len, bytes.iter().copied());
            Ok(())
        }
        fn short() -> &'static str {
            "short"
        }
    }

    #[test]
    fn masked_bytes_replace_only_what_follows_the_held_prefix() {
        let mut b = Buffer(b"HELD:secret tail".to_vec());
        let step = Step::Replace {
            len: 6,
            bytes: b"[MASKED]",
        };
        assert_eq!(apply(&mut b, step, 5, 16), (After::Continue, 18));
        assert_eq!(b.0, b"HELD:[MASKED] tail");
        let mut b = Buffer(b"secret".to_vec());
        let step = Step::Replace { len: 6, bytes: b"x" };
        assert_eq!(apply(&mut b, step, 0, 6), (After::Continue, 1));
        assert_eq!(b.0, b"x");
    }

    #[test]
    fn a_buffer_that_is_not_what_it_should_be_fails_the_step() {
        // Shorter than the held prefix: nothing is written.
        let mut b = Buffer(b"HE".to_vec());
        let step = Step::Replace { len: 1, bytes: b"x" };
        assert_eq!(apply(&mut b, step, 5, 6), (After::ReplaceFailed("short"), 6));
        assert_eq!(b.0, b"HE");
        let mut b = Buffer(b"ab".to_vec());
        let step = Step::Replace { len: 9, bytes: b"x" };
        assert_eq!(apply(&mut b, step, 0, 9), (After::ReplaceFailed("past the end"), 9));
    }

    #[test]
    fn other_steps_leave_the_buffer_alone() {
        let mut b = Buffer(b"abc".to_vec());
        assert_eq!(apply(&mut b, Step::Continue, 0, 3), (After::Continue, 3));
        assert_eq!(apply(&mut b, Step::Pause, 1, 3), (After::Pause, 3));
        assert_eq!(
            apply(&mut b, Step::Withhold { headers_held: true }, 0, 3),
            (After::Withhold { headers_held: true }, 3)
        );
        assert_eq!(b.0, b"abc");
    }
}
