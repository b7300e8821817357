//! Which tools a caller may see in a `tools/list` answer.
//!
//! The service knows the policy; the filter sees the upstream's answer. So the service
//! works out, per request, which tool names this caller could call ([`ToolVisibility`]),
//! sends it to the filter in the `x-gatehouse-tools` response header of the OK Check
//! ([`TOOLS_HEADER`](crate::wire::TOOLS_HEADER)), and the filter drops every other tool from the `result.tools` of
//! the answer — a JSON body whole ([`ToolVisibility::filter_message`]), an SSE stream
//! event by event ([`SseToolFilter`]) — before it is masked and recorded. A caller then
//! never learns the name of a tool it may not call, and a denied call looks the same
//! whether or not the tool exists.
//!
//! Tool names are matched with [`glob_match`], the gateway's one glob: `*` matches any
//! run of characters, everything else matches itself.

use serde_json::Value;

use crate::sse::{SseEvent, SseFramer, write_event};

/// One step of a [`ToolVisibility`]: tools whose name matches `glob` are shown or hidden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibilityEntry {
    pub visible: bool,
    pub glob: String,
}

impl VisibilityEntry {
    pub fn shown(glob: impl Into<String>) -> Self {
        Self {
            visible: true,
            glob: glob.into(),
        }
    }

    pub fn hidden(glob: impl Into<String>) -> Self {
        Self {
            visible: false,
            glob: glob.into(),
        }
    }
}

/// Which tool names one caller may see: the first entry whose glob matches a name decides;
/// a name no entry matches is hidden.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolVisibility {
    entries: Vec<VisibilityEntry>,
}

/// Why an `x-gatehouse-tools` value was refused. The filter then hides every tool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolsHeaderError {
    #[error("not a JSON array of [\"+\"|\"-\", glob] pairs: {0}")]
    Malformed(String),
    #[error("entry {index} starts with {sign:?}, not \"+\" or \"-\"")]
    BadSign { index: usize, sign: String },
    #[error("the header came more than once")]
    Repeated,
}

impl ToolVisibility {
    /// Every tool is visible.
    pub fn all() -> Self {
        Self {
            entries: vec![VisibilityEntry::shown("*")],
        }
    }

    /// No tool is visible.
    pub fn none() -> Self {
        Self::default()
    }

    /// The entries in order, without the ones that can never decide: entries after a `*`
    /// (it matches every name), a glob an earlier entry already has, and hidden entries at
    /// the end (hiding is the default).
    pub fn new(entries: impl IntoIterator<Item = VisibilityEntry>) -> Self {
        let mut kept: Vec<VisibilityEntry> = Vec::new();
        for entry in entries {
            if kept.iter().any(|k| k.glob == entry.glob) {
                continue;
            }
            let matches_all = entry.glob == "*";
            kept.push(entry);
            if matches_all {
                break;
            }
        }
        while kept.last().is_some_and(|e| !e.visible) {
            kept.pop();
        }
        Self { entries: kept }
    }

    pub fn entries(&self) -> &[VisibilityEntry] {
        &self.entries
    }

    /// Whether a tool of this name may be shown.
    pub fn is_visible(&self, tool: &str) -> bool {
        self.entries
            .iter()
            .find(|e| glob_match(&e.glob, tool))
            .is_some_and(|e| e.visible)
    }

    /// Whether every name is visible (nothing to filter).
    pub fn shows_all(&self) -> bool {
        self.entries.first().is_some_and(|e| e.visible && e.glob == "*")
    }

    /// The header value: a JSON array of `["+"|"-", glob]` pairs, e.g.
    /// `[["+","find_*"],["-","*"]]`, in printable ASCII only (anything else is a `\u`
    /// escape), so that it survives as an HTTP header value.
    pub fn to_header(&self) -> String {
        let mut out = String::from("[");
        for (i, entry) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(if entry.visible { "[\"+\"," } else { "[\"-\"," });
            push_ascii_json_string(&mut out, &entry.glob);
            out.push(']');
        }
        out.push(']');
        out
    }

    /// Reads a header value written by [`to_header`](Self::to_header), as it is.
    pub fn from_header(value: &str) -> Result<Self, ToolsHeaderError> {
        let pairs: Vec<(String, String)> =
            serde_json::from_str(value).map_err(|e| ToolsHeaderError::Malformed(e.to_string()))?;
        let entries = pairs
            .into_iter()
            .enumerate()
            .map(|(index, (sign, glob))| match sign.as_str() {
                "+" => Ok(VisibilityEntry::shown(glob)),
                "-" => Ok(VisibilityEntry::hidden(glob)),
                _ => Err(ToolsHeaderError::BadSign { index, sign }),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// Drops each hidden tool from `result.tools` of a JSON-RPC response, or of every
    /// response in a batch; returns how many were dropped. A tool without a string `name`
    /// cannot be checked, so it is dropped too. Other messages are left alone.
    pub fn filter_value(&self, message: &mut Value) -> usize {
        match message {
            Value::Array(batch) => batch.iter_mut().map(|m| self.filter_value(m)).sum(),
            Value::Object(object) => {
                let Some(Value::Array(tools)) = object.get_mut("result").and_then(|r| r.get_mut("tools")) else {
                    return 0;
                };
                let before = tools.len();
                tools.retain(|tool| {
                    tool.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|name| self.is_visible(name))
                });
                before - tools.len()
            }
            _ => 0,
        }
    }

    /// [`filter_value`](Self::filter_value) over JSON bytes: the message re-encoded
    /// without its hidden tools, and how many were dropped; `None` when nothing was (or the
    /// bytes are not JSON), so they can pass as they are.
    pub fn filter_message(&self, bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
        if self.shows_all() {
            return None;
        }
        let mut message: Value = serde_json::from_slice(bytes).ok()?;
        let hidden = self.filter_value(&mut message);
        if hidden == 0 {
            return None;
        }
        let bytes = serde_json::to_vec(&message).ok()?;
        Some((bytes, hidden))
    }
}

/// Appends `text` as a JSON string in which every character outside printable ASCII is
/// a `\u` escape (UTF-16, as JSON wants).
fn push_ascii_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// `*` matches any run of characters (also none); everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let Some((first, after_first)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    // No allocation: the policy runs this for every rule of every call.
    let mut parts = after_first.split('*');
    let mut part = parts.next().unwrap_or_default();
    for next in parts {
        // The leftmost match leaves the most room for the parts after it.
        let Some((_, after)) = rest.split_once(part) else {
            return false;
        };
        rest = after;
        part = next;
    }
    rest.ends_with(part)
}

/// What [`SseToolFilter`] hands on, event by event, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEvent {
    /// The bytes of one event for the next stage: as received, or rebuilt without the
    /// hidden tools (`event`, `id`, `retry`, `data:` lines, LF line endings).
    Pass(Vec<u8>),
    /// An event over the size bound, which cannot be read whole and so cannot be
    /// filtered: it must not reach the client, whose stream gets `note` (an SSE comment)
    /// in its place.
    Withheld {
        note: Vec<u8>,
        id: Option<String>,
        /// Bytes of the event in the upstream stream.
        len: u64,
    },
}

/// Drops hidden tools from the `tools/list` results in an SSE stream, fed chunks split at
/// any byte. It carries at most one unfinished event, like the masker it feeds.
#[derive(Debug, Clone)]
pub struct SseToolFilter {
    framer: SseFramer,
    visibility: ToolVisibility,
}

impl SseToolFilter {
    /// `max_event_bytes` bounds one event: a larger one is withheld.
    pub fn new(visibility: ToolVisibility, max_event_bytes: usize) -> Self {
        Self {
            framer: SseFramer::new(max_event_bytes),
            visibility,
        }
    }

    /// Feeds one chunk: each completed event goes to `emit`. Returns how many tools were
    /// dropped.
    pub fn push(&mut self, chunk: &[u8], mut emit: impl FnMut(ToolEvent)) -> usize {
        let mut hidden = 0;
        let max = self.framer.max_event_bytes();
        let visibility = &self.visibility;
        self.framer
            .push_with(chunk, |event| hidden += filter_event(visibility, max, event, &mut emit));
        hidden
    }

    /// The stream ended: hands on what is held. An unfinished last event is passed only if
    /// its data is a whole JSON message with nothing to hide (or it has no data): it
    /// cannot otherwise be checked, and a client would not dispatch it anyway.
    pub fn finish(&mut self, mut emit: impl FnMut(ToolEvent)) -> usize {
        let end = self.framer.finish();
        let max = self.framer.max_event_bytes();
        let mut hidden = 0;
        for event in end.events {
            hidden += filter_event(&self.visibility, max, event, &mut emit);
        }
        if let Some(tail) = end.incomplete
            && !tail.truncated
            && hides_nothing(&self.visibility, max, &tail.raw)
        {
            emit(ToolEvent::Pass(tail.raw));
        }
        hidden
    }
}

/// Whether the bytes of an unfinished event, were it finished, would pass unchanged: no
/// data, or a whole JSON message with nothing to hide. (The framer's fields of an
/// unfinished event leave out its last, unterminated line.)
fn hides_nothing(visibility: &ToolVisibility, max: usize, raw: &[u8]) -> bool {
    let mut framer = SseFramer::new(max);
    let mut events = framer.push(&[raw, b"\n\n"].concat());
    events.extend(framer.finish().events);
    events.iter().all(|event| {
        !event.truncated
            && event.data.as_deref().is_none_or(|data| {
                serde_json::from_str::<Value>(data).is_ok_and(|mut message| visibility.filter_value(&mut message) == 0)
            })
    })
}

/// One complete event: passed, rebuilt without its hidden tools, or withheld.
fn filter_event(visibility: &ToolVisibility, max: usize, event: SseEvent, emit: &mut impl FnMut(ToolEvent)) -> usize {
    if event.truncated {
        emit(ToolEvent::Withheld {
            note: format!(": gatehouse withheld an event over {max} bytes\n\n").into_bytes(),
            id: event.id,
            len: event.len,
        });
        return 0;
    }
    let filtered = event
        .data
        .as_deref()
        .and_then(|data| visibility.filter_message(data.as_bytes()));
    match filtered {
        Some((data, hidden)) => {
            emit(ToolEvent::Pass(rebuild_event(&event, &String::from_utf8_lossy(&data))));
            hidden
        }
        None => {
            emit(ToolEvent::Pass(event.raw));
            0
        }
    }
}

/// The event with new data, LF line endings.
fn rebuild_event(event: &SseEvent, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    write_event(&mut out, event, data);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn visibility(entries: &[(bool, &str)]) -> ToolVisibility {
        ToolVisibility::new(entries.iter().map(|(visible, glob)| VisibilityEntry {
            visible: *visible,
            glob: (*glob).to_owned(),
        }))
    }

    fn names(message: &Value) -> Vec<&str> {
        message["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect()
    }

    fn tools_list(id: u64, names: &[&str]) -> Value {
        let tools: Vec<Value> = names
            .iter()
            .map(|n| json!({"name": n, "description": format!("does {n}"), "inputSchema": {"type": "object"}}))
            .collect();
        json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools, "nextCursor": "c2"}})
    }

    #[test]
    fn globs() {
        // The same cases as the service's masking::glob_match, whose semantics this keeps.
        assert!(glob_match("find_*", "find_customer"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(!glob_match("find_*", "get_customer"));
        assert!(!glob_match("a*bc", "abc_"));
        assert!(glob_match("*_config", "get_service_config"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "x"));
        assert!(glob_match("**", "anything"));
        assert!(glob_match("a*a*a", "aaa"));
        assert!(!glob_match("a*a*a", "aa"));
        assert!(glob_match("é*ü", "é-ü"));
    }

    #[test]
    fn the_first_matching_entry_decides_and_no_match_hides() {
        let v = visibility(&[(false, "find_secret"), (true, "find_*"), (true, "echo")]);
        assert!(v.is_visible("find_customer"));
        assert!(!v.is_visible("find_secret"), "an earlier hidden entry wins");
        assert!(v.is_visible("echo"));
        assert!(!v.is_visible("run_query"), "no entry: hidden");
        assert!(!ToolVisibility::none().is_visible("echo"));
        assert!(ToolVisibility::all().is_visible("anything") && ToolVisibility::all().shows_all());
        assert!(!v.shows_all());
    }

    #[test]
    fn entries_that_cannot_decide_are_dropped() {
        let v = visibility(&[
            (true, "find_*"),
            (false, "run_*"),
            (true, "find_*"),
            (false, "*"),
            (true, "echo"),
        ]);
        assert_eq!(v.entries(), [VisibilityEntry::shown("find_*")]);
        let v = visibility(&[(false, "find_secret"), (true, "*"), (false, "x")]);
        assert_eq!(
            v.entries(),
            [VisibilityEntry::hidden("find_secret"), VisibilityEntry::shown("*")]
        );
        assert_eq!(visibility(&[(false, "a"), (false, "*")]), ToolVisibility::none());
    }

    #[test]
    fn the_header_round_trips_in_printable_ascii() {
        let v = visibility(&[
            (false, "find_secret"),
            (true, "find_*"),
            (true, "naïve \"quoted\" \\ tool 🔧\n\u{7f}"),
        ]);
        let header = v.to_header();
        assert!(header.bytes().all(|b| (b' '..=b'~').contains(&b)), "{header}");
        assert!(header.starts_with(
            r#"[["-","find_secret"],["+","find_*"],["+","na\u00efve \"quoted\" \\ tool \ud83d\udd27\u000a\u007f"]]"#
        ));
        assert_eq!(ToolVisibility::from_header(&header), Ok(v));
        assert_eq!(ToolVisibility::none().to_header(), "[]");
        assert_eq!(ToolVisibility::all().to_header(), r#"[["+","*"]]"#);
        assert_eq!(
            ToolVisibility::from_header(" [ [\"+\" , \"*\"] ] "),
            Ok(ToolVisibility::all())
        );
    }

    #[test]
    fn a_bad_header_is_refused() {
        for bad in [
            "",
            "-",
            "[[\"+\"]]",
            "[[\"+\",\"a\",\"b\"]]",
            "{\"+\":\"*\"}",
            "[[\"+\",1]]",
            "[\"+*\"]",
        ] {
            assert!(
                matches!(ToolVisibility::from_header(bad), Err(ToolsHeaderError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            ToolVisibility::from_header(r#"[["+","a"],["*","b"]]"#),
            Err(ToolsHeaderError::BadSign {
                index: 1,
                sign: "*".into()
            })
        );
    }

    #[test]
    fn hidden_tools_are_dropped_from_results_and_batches() {
        let v = visibility(&[(true, "find_*"), (true, "echo")]);
        let mut message = tools_list(1, &["echo", "run_query", "find_customer", "drop_db"]);
        assert_eq!(v.filter_value(&mut message), 2);
        assert_eq!(names(&message), ["echo", "find_customer"]);
        assert_eq!(message["result"]["nextCursor"], "c2", "the rest is kept");
        assert_eq!(message["result"]["tools"][0]["description"], "does echo");

        let mut batch = json!([tools_list(1, &["run_query"]), tools_list(2, &["echo", "x"]), {"jsonrpc": "2.0", "id": 3, "result": {}}]);
        assert_eq!(v.filter_value(&mut batch), 2);
        assert_eq!(names(&batch[0]), Vec::<&str>::new());
        assert_eq!(names(&batch[1]), ["echo"]);

        // Tools that cannot be checked are dropped; other shapes are left alone.
        let mut odd = json!({"result": {"tools": [{"name": 7}, "echo", {"title": "echo"}, {"name": "echo"}]}});
        assert_eq!(v.filter_value(&mut odd), 3);
        assert_eq!(odd["result"]["tools"], json!([{"name": "echo"}]));
        for mut other in [
            json!({"result": {"tools": {"name": "x"}}}),
            json!({"error": {"code": 1, "message": "x"}}),
            json!({"method": "tools/list", "params": {"tools": [{"name": "x"}]}}),
            json!("x"),
        ] {
            let before = other.clone();
            assert_eq!(v.filter_value(&mut other), 0);
            assert_eq!(other, before);
        }
    }

    #[test]
    fn bytes_are_reencoded_only_when_a_tool_was_dropped() {
        let v = visibility(&[(true, "echo")]);
        let body = serde_json::to_vec(&tools_list(1, &["echo", "secret"])).unwrap();
        let (filtered, hidden) = v.filter_message(&body).unwrap();
        assert_eq!(hidden, 1);
        let filtered: Value = serde_json::from_slice(&filtered).unwrap();
        assert_eq!(names(&filtered), ["echo"]);
        let visible = serde_json::to_vec(&tools_list(1, &["echo"])).unwrap();
        assert_eq!(v.filter_message(&visible), None);
        assert_eq!(v.filter_message(b"{not json"), None);
        assert_eq!(ToolVisibility::all().filter_message(&body), None);
    }

    /// Feeds `chunks` and returns the bytes handed on (a withheld event as its note) and
    /// how many tools were dropped.
    fn run_sse(v: &ToolVisibility, max: usize, chunks: &[&[u8]]) -> (Vec<u8>, usize, Vec<ToolEvent>) {
        let mut filter = SseToolFilter::new(v.clone(), max);
        let mut events = Vec::new();
        let mut hidden = 0;
        for chunk in chunks {
            hidden += filter.push(chunk, |e| events.push(e));
        }
        hidden += filter.finish(|e| events.push(e));
        let mut out = Vec::new();
        for event in &events {
            match event {
                ToolEvent::Pass(bytes) => out.extend_from_slice(bytes),
                ToolEvent::Withheld { note, .. } => out.extend_from_slice(note),
            }
        }
        (out, hidden, events)
    }

    #[test]
    fn sse_events_lose_their_hidden_tools_the_same_at_every_split() {
        let v = visibility(&[(true, "find_*")]);
        let list = serde_json::to_string(&tools_list(2, &["find_customer", "run_query", "find_order"])).unwrap();
        let stream = format!(
            ": hi\r\n\r\nevent: message\r\nid: e1\r\nretry: 50\r\ndata: {list}\r\n\r\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"x\"}}\r\r"
        );
        let stream = stream.as_bytes();
        let (whole, hidden, events) = run_sse(&v, 1 << 16, &[stream]);
        assert_eq!(hidden, 1);
        assert_eq!(events.len(), 3);
        assert_eq!(
            events[0],
            ToolEvent::Pass(b": hi\r\n\r\n".to_vec()),
            "untouched events pass as they came"
        );
        assert_eq!(
            events[2],
            ToolEvent::Pass(b"data: {\"jsonrpc\":\"2.0\",\"method\":\"x\"}\r\r".to_vec())
        );
        let ToolEvent::Pass(rebuilt) = &events[1] else { panic!() };
        let rebuilt = String::from_utf8(rebuilt.clone()).unwrap();
        assert!(
            rebuilt.starts_with("event: message\nid: e1\nretry: 50\ndata: {"),
            "{rebuilt}"
        );
        assert!(rebuilt.ends_with("}\n\n"));
        let data: Value =
            serde_json::from_str(rebuilt.lines().nth(3).unwrap().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(names(&data), ["find_customer", "find_order"]);
        assert!(!contains(&whole, "run_query"));

        for i in 0..=stream.len() {
            let (a, b) = stream.split_at(i);
            let (out, n, _) = run_sse(&v, 1 << 16, &[a, b]);
            assert_eq!((out.as_slice(), n), (whole.as_slice(), 1), "split at {i}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run_sse(&v, 1 << 16, &bytes).0, whole, "byte by byte");
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn an_sse_event_too_large_to_filter_is_withheld() {
        let v = visibility(&[(true, "echo")]);
        let list = serde_json::to_string(&tools_list(2, &["echo", "secret_tool_name"])).unwrap();
        let stream = format!("id: big\ndata: {list}\n\ndata: 1\n\n");
        let (out, hidden, events) = run_sse(&v, 40, &[stream.as_bytes()]);
        assert_eq!(hidden, 0);
        assert!(!contains(&out, "secret_tool_name"));
        assert_eq!(
            events[0],
            ToolEvent::Withheld {
                note: b": gatehouse withheld an event over 40 bytes\n\n".to_vec(),
                id: Some("big".into()),
                len: (stream.len() - 9) as u64,
            }
        );
        assert_eq!(events[1], ToolEvent::Pass(b"data: 1\n\n".to_vec()));
    }

    #[test]
    fn an_unfinished_last_event_passes_only_if_it_hides_nothing() {
        let v = visibility(&[(true, "echo")]);
        let hiding = serde_json::to_string(&tools_list(2, &["echo", "secret"])).unwrap();
        let harmless = serde_json::to_string(&tools_list(2, &["echo"])).unwrap();
        let cut = format!("data: {}", &hiding[..hiding.len() - 3]);
        for (tail, passes) in [
            (format!("data: {hiding}\n"), false),
            (cut, false),
            (format!("data: {harmless}\n"), true),
            ("data: not json".to_owned(), false),
            (": just a comment".to_owned(), true),
        ] {
            let stream = format!("data: 1\n\n{tail}");
            let (out, _, _) = run_sse(&v, 1 << 16, &[stream.as_bytes()]);
            let want = if passes {
                stream.clone()
            } else {
                "data: 1\n\n".to_owned()
            };
            assert_eq!(String::from_utf8(out).unwrap(), want, "{tail:?}");
        }
    }
}
