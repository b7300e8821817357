//! The SSE pipeline of one answer, event by event: the tool filter of a `tools/list`
//! answer first (an event it cannot read within the bound is withheld), then the masker,
//! which carries at most one unfinished event from chunk to chunk.

use gatehouse_core::mask::{MaskCounts, MaskedEvent, Masker, Reveal, RevealPlan, SseMasker};
use gatehouse_core::tools::{SseToolFilter, ToolEvent};

/// The SSE pipeline of one answer: the tool filter (for a `tools/list`), then the masker.
pub(super) struct Stages<'a> {
    pub tools: Option<&'a mut SseToolFilter>,
    pub masker: &'a Masker,
    pub sse: &'a mut SseMasker,
}

impl Stages<'_> {
    /// Feeds one chunk (`end`: and flushes both stages): appends the client's bytes to
    /// `out`, what was masked for the client to `counts`, and each event to `events`.
    /// Returns how many tools were dropped.
    pub fn feed(
        self,
        reveal: &RevealPlan,
        chunk: &[u8],
        end: bool,
        out: &mut Vec<u8>,
        counts: &mut MaskCounts,
        events: &mut Vec<MaskedEvent>,
    ) -> usize {
        let Self { tools, masker, sse } = self;
        let mut hidden = 0;
        match tools {
            None => sse.push_for(masker, reveal, chunk, out, counts, |e| events.push(e)),
            Some(tools) => {
                let mut mask = |event: ToolEvent| match event {
                    ToolEvent::Pass(bytes) => sse.push_for(masker, reveal, &bytes, out, counts, |e| events.push(e)),
                    ToolEvent::Withheld { note, id, len } => {
                        // Through the masker, so that an event it still holds goes first.
                        sse.push_for(masker, reveal, &note, out, counts, |e| events.push(e));
                        // The record's event id is masked like every other value.
                        let id = id.map(|id| {
                            masker
                                .mask_text(&id, &Reveal::none(), &mut MaskCounts::default())
                                .into_owned()
                        });
                        events.push(MaskedEvent {
                            id,
                            len,
                            truncated: true,
                            ..MaskedEvent::default()
                        });
                    }
                };
                hidden += tools.push(chunk, &mut mask);
                if end {
                    hidden += tools.finish(&mut mask);
                }
            }
        }
        if end {
            sse.finish_for(masker, reveal, out, counts, |e| events.push(e));
        }
        hidden
    }
}
