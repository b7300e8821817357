//! The proxy-wasm shell: adapts the SDK's callbacks, moving bytes from the host into the
//! pure modules and their decisions back out. Only built for `wasm32`.
//!
//! One root context per VM (one VM per Envoy worker) owns the ingest call and the state its
//! HTTP contexts share through an `Rc` ([`crate::shared`]: the record queue, the answers
//! held for it, the counters). Host constraints that shape this code:
//! - The request headers are paused while the body is read; the Envoy `PluginConfig`
//!   must set `allow_on_headers_stop_iteration: true`, or body callbacks never arrive.
//! - Headers are only changed in the header callbacks, where Envoy allows it.
//! - A gRPC callout started from `on_vm_start`/`on_configure` never runs, so ingest
//!   starts from `on_tick`.
//! - An answer is masked before it goes on: a JSON (or other non-SSE) answer's headers are
//!   held while its body is buffered, so a refused answer can still be replaced by a local
//!   reply; once the headers have gone on (SSE), a stream that cannot be masked is reset.
//! - ext_authz runs after this filter on the way in, so on the way out its
//!   `x-gatehouse-reveal` and `x-gatehouse-tools` response headers are already there when
//!   the headers reach this filter, which reads and removes them; so is its
//!   `x-gatehouse-session-key`, with which the filter tags the upstream's `Mcp-Session-Id`.

use std::rc::Rc;

use gatehouse_core::mcp::SESSION_ID_HEADER;
use gatehouse_core::wire::{self, REQUEST_ID_HEADER, TOOLS_HEADER};
use log::{debug, error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::body::{self, After, BodyBuffer};
use crate::config::{self, Config};
use crate::host::{self, buffer, map, stream};
use crate::metrics::Metrics;
use crate::queue::{self, Outcome, Record, Shipper};
use crate::request::{self, HeadDecision, Rejection, RequestHead, SessionHeaders};
use crate::response::{self, EndReason, Plan, ResponseHead, ResponseMasker, Withheld};
use crate::shared::{self, Shared};

/// Log a failing ingest on the first failure and then once per this many in a row.
const FAILURE_LOG_EVERY: u32 = 20;
/// Response code details of the filter's own answers (seen in Envoy access logs).
const REJECTED_DETAILS: &str = "gatehouse_rejected";
const WITHHELD_DETAILS: &str = "gatehouse_withheld";
/// The proxy-wasm status for an argument the host cannot use.
const BAD_ARGUMENT: u32 = 2;

/// Called once when the host loads the module. Envoy refuses host calls here
/// ("restricted_callback"), so the host's log level is only read in `on_configure`.
pub fn start() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(Root::new(context_id)));
}

/// Follows the host's log level for the `wasm` component (`--component-log-level`), so
/// debug lines are not even formatted unless asked for.
fn follow_host_log_level() {
    let level = match host::log_level() {
        Some(0) => LogLevel::Trace,
        Some(1) => LogLevel::Debug,
        Some(3) => LogLevel::Warn,
        Some(4) => LogLevel::Error,
        Some(5) => LogLevel::Critical,
        _ => LogLevel::Info,
    };
    proxy_wasm::set_log_level(level);
}

struct Root {
    context_id: u32,
    shared: Rc<Shared>,
    config: Option<Rc<Config>>,
    source: String,
}

impl Root {
    fn new(context_id: u32) -> Self {
        let limits = Config::default().queue_limits();
        Self {
            context_id,
            shared: Rc::new(Shared::new(
                limits,
                host::now_nanos() ^ u64::from(context_id).rotate_left(48),
            )),
            config: None,
            source: String::new(),
        }
    }

    /// Sends the next batch if none is in flight and it is time.
    fn flush(&mut self) {
        let Some(config) = self.config.clone() else {
            return;
        };
        let metrics = self.shared.metrics();
        let now = host::now_ms();
        let batch = {
            let Some(mut shipper) = self.shared.shipper() else {
                return;
            };
            if let Some(outcome) = shipper.expire(now) {
                warn!("Audit ingest call unanswered past its timeout; retrying its batch");
                self.report(outcome, &metrics, &shipper);
            }
            shipper.begin(&self.source, now)
        };
        let Some(batch) = batch else { return };
        let result = proxy_wasm::hostcalls::dispatch_grpc_call(
            &config.ingest_cluster,
            queue::INGEST_SERVICE,
            queue::INGEST_METHOD,
            Vec::new(),
            Some(&batch),
            config.ingest_timeout,
        );
        let Some(mut shipper) = self.shared.shipper() else {
            return;
        };
        match result {
            Ok(token) => shipper.dispatched(token),
            Err(status) => {
                let outcome = shipper.dispatch_failed(now);
                if shipper.consecutive_failures() % FAILURE_LOG_EVERY == 1 {
                    warn!(
                        "Could not start the audit ingest call to cluster {:?}: host status {status:?} \
                         (is the cluster defined, with HTTP/2?)",
                        config.ingest_cluster
                    );
                }
                self.report(outcome, &metrics, &shipper);
            }
        }
    }

    /// Sends the next batch if none is in flight, gives the room left to held-back answers'
    /// records, and resumes the answers whose records are all queued. Resuming comes last: a
    /// stream resumed may run its callbacks inside this one, and the SDK would then file an
    /// ingest call made after it under that stream's context instead of the root's.
    fn ship_and_release(&mut self) {
        self.flush();
        let resume = self.shared.drain_stalled();
        if resume.is_empty() {
            return;
        }
        // The first flush found the queue empty or a call in flight; the parts just queued
        // go now if it was empty.
        self.flush();
        for context_id in &resume {
            let resumed =
                host::set_effective_context(*context_id).and_then(|()| host::continue_stream(stream::HTTP_RESPONSE));
            if let Err(status) = resumed {
                // The stream may have ended meanwhile; its records are queued either way.
                debug!(
                    "Could not resume the held answer of context {context_id}: host status {}",
                    status.0
                );
            }
        }
        if let Err(status) = host::set_effective_context(self.context_id) {
            error!("Could not return to the root context: host status {}", status.0);
        }
        debug!("Resumed {} answer(s) held for the audit queue", resume.len());
    }

    fn report(&self, outcome: Outcome, metrics: &Metrics, shipper: &Shipper) {
        for (metric, by) in metrics.of_outcome(outcome) {
            shared::count(metric, by);
        }
        if let Outcome::Requeued { records, .. } = outcome {
            debug!(
                "Audit ingest failed; {records} records back in the queue ({} queued, {} dropped in all)",
                shipper.len(),
                shipper.dropped_total()
            );
        }
    }
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, _response_size: usize) {
        let metrics = self.shared.metrics();
        let now = host::now_ms();
        let (outcome, worth_a_call) = {
            let Some(mut shipper) = self.shared.shipper() else {
                return;
            };
            let failures_before = shipper.consecutive_failures();
            let outcome = shipper.finished(token_id, status_code, now);
            match outcome {
                Outcome::Sent { .. } if failures_before > 0 => {
                    info!("Audit ingest recovered after {failures_before} failed calls");
                }
                Outcome::Requeued { .. } if shipper.consecutive_failures() % FAILURE_LOG_EVERY == 1 => {
                    let message = host::grpc_status_message().unwrap_or_default();
                    warn!(
                        "Audit ingest failed with gRPC status {status_code} ({message}); retrying \
                         with backoff, {} records queued",
                        shipper.len()
                    );
                }
                Outcome::Discarded { records } => {
                    let message = host::grpc_status_message().unwrap_or_default();
                    error!("Audit ingest refused a batch as invalid ({message}); dropped its {records} records");
                }
                _ => {}
            }
            self.report(outcome, &metrics, &shipper);
            (outcome, shipper.worth_a_call())
        };
        // Keep up under load, and free room for held answers: the next batch goes now, not
        // at the next tick. A few records wait for the tick.
        if matches!(outcome, Outcome::Sent { .. }) && (worth_a_call || self.shared.answers_held()) {
            self.ship_and_release();
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        follow_host_log_level();
        let bytes = match host::buffer(buffer::PLUGIN_CONFIGURATION, 0, usize::MAX) {
            Ok(bytes) => bytes,
            Err(status) => {
                error!("Could not read the plugin configuration: host status {}", status.0);
                return false;
            }
        };
        let config = match config::parse(&bytes) {
            Ok(config) => config,
            Err(e) => {
                error!("{e}");
                return false;
            }
        };
        let tick_ms = u32::try_from(config.flush_interval.as_millis()).unwrap_or(u32::MAX);
        if let Err(status) = host::set_tick_period_ms(tick_ms) {
            error!("Could not set the flush tick: host status {}", status.0);
            return false;
        }
        self.shared.define_metrics();
        let plugin = host::property(&["plugin_name"])
            .ok()
            .flatten()
            .map(|name| String::from_utf8_lossy(&name).into_owned())
            .unwrap_or_else(|| "gatehouse".to_owned());
        // Every worker has its own VM and may number its root context the same, so a
        // random tag tells the workers apart.
        // (8 hex characters of an id's random part: it starts after the 12 of the time.)
        let tag = wire::format_request_id(0, &self.shared.random_bytes());
        self.source = format!("{plugin}/{}/{}", self.context_id, tag.get(12..20).unwrap_or_default());
        if let Some(mut shipper) = self.shared.shipper() {
            let dropped = shipper.set_limits(config.queue_limits());
            shared::count(self.shared.metrics().dropped, dropped);
        }
        info!(
            "Gatehouse filter configured as {}: max body {} bytes, max answer {} bytes, {} custom \
             masking rule(s), ingest to cluster {:?} every {} ms",
            self.source,
            config.max_body_bytes,
            config.max_response_bytes,
            config.masking.rules.custom.len(),
            config.ingest_cluster,
            tick_ms
        );
        if config.origins.hosts.is_none() || config.origins.origins.is_none() {
            warn!(
                "No allowed_hosts or allowed_origins in the filter configuration: requests with a foreign \
                 Host or Origin are not refused (DNS rebinding); `gatehouse envoy-config` renders both"
            );
        }
        self.config = Some(Rc::new(config));
        true
    }

    fn on_tick(&mut self) {
        self.ship_and_release();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK panics on `None`, so an unconfigured root still gets contexts; they
        // refuse every request (fail closed).
        Some(Box::new(Http {
            context_id,
            config: self.config.clone(),
            shared: Rc::clone(&self.shared),
            phase: Phase::Start,
            request_id: None,
            head: None,
            reply_id: None,
            lists_tools: false,
            response: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    /// Headers held while the POST body is buffered.
    ReadingBody,
    /// Let through; the answer is recorded.
    Forwarded,
    /// Answered by the filter; recorded as a rejection.
    Rejected,
}

struct Http {
    context_id: u32,
    config: Option<Rc<Config>>,
    shared: Rc<Shared>,
    phase: Phase,
    request_id: Option<String>,
    head: Option<RequestHead>,
    /// The request's JSON-RPC id, for an error sent in place of the answer.
    reply_id: Option<serde_json::Value>,
    /// The request holds a `tools/list`: its answer shows only the caller's tools.
    lists_tools: bool,
    response: Option<ResponseMasker>,
}

impl Http {
    fn request_headers(&mut self, end_of_stream: bool) -> Action {
        let request_id = self.shared.new_request_id();
        self.request_id = Some(request_id.clone());
        let Some(config) = self.config.clone() else {
            return self.reject(Rejection::internal("the filter is not configured"));
        };
        let headers = match host::header_pairs(map::REQUEST_HEADERS) {
            Ok(headers) => headers,
            Err(status) => {
                return self.reject(Rejection::internal(format!(
                    "request headers unreadable: host status {}",
                    status.0
                )));
            }
        };
        // A spoofed header that stayed could be trusted further along: if one cannot be
        // removed, the request does not go on.
        for name in request::spoofed_header_names(headers.iter().map(|(n, _)| n.as_str())) {
            if let Err(status) = host::remove_header(map::REQUEST_HEADERS, &name) {
                return self.reject(Rejection::internal(format!(
                    "could not remove client-sent header {name}: host status {}",
                    status.0
                )));
            }
            debug!("Removed client-sent header {name} from request {request_id}");
        }
        if let Err(status) = host::set_header(map::REQUEST_HEADERS, REQUEST_ID_HEADER, &request_id) {
            return self.reject(Rejection::internal(format!(
                "could not set {REQUEST_ID_HEADER}: host status {}",
                status.0
            )));
        }
        // A compressed answer cannot be masked (it would be refused): ask for none.
        if let Err(status) = host::set_header(map::REQUEST_HEADERS, "accept-encoding", "identity") {
            warn!(
                "Could not set accept-encoding on request {request_id}: host status {} (a compressed \
                 answer will be refused)",
                status.0
            );
        }
        let head = RequestHead::from_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        // Before anything else: Envoy rewrites Host on the way up, so the upstream's own
        // DNS-rebinding check never sees the client's.
        let decision = match request::check_origin(&head, &config.origins) {
            Err(rejection) => HeadDecision::Reject(rejection),
            Ok(()) => request::check_head(&head, end_of_stream, config.max_body_bytes),
        };
        self.head = Some(head);
        match decision {
            HeadDecision::Forward => self.forward(None),
            HeadDecision::ReadBody => {
                self.phase = Phase::ReadingBody;
                Action::Pause
            }
            HeadDecision::Checked(Ok(summary)) => self.forward(Some(summary)),
            HeadDecision::Reject(rejection) | HeadDecision::Checked(Err(rejection)) => self.reject(rejection),
        }
    }

    /// Checks the whole buffered body (`size` bytes, or as much as there is).
    fn check_buffered_body(&mut self, size: usize) -> Action {
        let body = match host::buffer(buffer::REQUEST_BODY, 0, size) {
            Ok(body) => body,
            Err(status) => {
                return self.reject(Rejection::internal(format!(
                    "request body unreadable: host status {}",
                    status.0
                )));
            }
        };
        let max = self.config.as_ref().map_or(0, |c| c.max_body_bytes);
        if let Err(rejection) = request::check_body_size(body.len(), max) {
            return self.reject(rejection);
        }
        let Some(head) = self.head.as_ref() else {
            return self.reject(Rejection::internal("body before headers"));
        };
        match request::check_body(head, &body) {
            Ok(summary) => self.forward(Some(summary)),
            Err(rejection) => self.reject(rejection),
        }
    }

    fn forward(&mut self, summary: Option<request::RequestSummary>) -> Action {
        self.phase = Phase::Forwarded;
        if let Some(head) = self.head.as_mut() {
            // Only a rejection record needs the token; do not keep it longer.
            head.bearer_token = None;
        }
        self.reply_id = summary.as_ref().and_then(request::RequestSummary::reply_id);
        self.lists_tools = summary.as_ref().is_some_and(|s| s.lists_tools);
        if let (Some(s), Some(id)) = (summary, self.request_id.as_deref()) {
            debug!(
                "Request {id} is MCP: method {:?}, target {:?}, id {:?}, {} message(s)",
                s.method, s.target, s.jsonrpc_id, s.messages
            );
        }
        Action::Continue
    }

    fn reject(&mut self, rejection: Rejection) -> Action {
        self.phase = Phase::Rejected;
        let request_id = self.request_id.clone().unwrap_or_default();
        let body = rejection.body();
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("content-type", b"application/json"),
            (REQUEST_ID_HEADER, request_id.as_bytes()),
        ];
        headers.extend(rejection.extra_headers().iter().map(|(n, v)| (*n, v.as_bytes())));
        if let Err(status) = host::send_local_response(rejection.status, REJECTED_DETAILS, &headers, &body) {
            error!(
                "Could not answer rejected request {request_id} ({}): host status {}",
                rejection.reason, status.0
            );
        }
        let head = self.head.take().unwrap_or_default();
        debug!(
            "Rejected request {request_id} ({} {}) with {}: {}",
            head.method, head.path, rejection.status, rejection.reason
        );
        shared::count(self.shared.metrics().rejected, 1);
        let record = rejection.record(&head, &request_id, host::now_ms());
        self.shared.enqueue(Record::Rejected(record));
        Action::Pause
    }
}

impl Http {
    /// Finishes a body step: counts what was masked, and withholds what must not go on.
    fn after_body(&mut self, after: After<host::Status>, now: u64) -> Action {
        let request_id = self.request_id.clone().unwrap_or_default();
        let context_id = self.context_id;
        let action = match after {
            After::Continue => Action::Continue,
            After::Pause => Action::Pause,
            After::Withhold { headers_held } => self.withhold(headers_held),
            After::ReplaceFailed(status) => {
                error!(
                    "Could not replace the answer to request {request_id} with its masked form: host status {}",
                    status.0
                );
                let shared = &self.shared;
                let headers_held = match (self.response.as_mut(), self.config.as_ref()) {
                    (Some(response), Some(config)) => {
                        response.refuse(&config.masking.masker, Withheld::Unreadable, now, &mut |part| {
                            shared.enqueue_part(context_id, part)
                        });
                        response.kind() != response::BodyKind::EventStream
                    }
                    _ => false,
                };
                self.withhold(headers_held)
            }
        };
        if let Some(response) = self.response.as_mut() {
            let counts = response.take_client_counts();
            self.shared.count_masked(&request_id, &counts);
            let hidden = response.take_tools_hidden();
            if hidden > 0 {
                debug!("Kept {hidden} tool(s) the caller may not call from the answer to request {request_id}");
                shared::count(self.shared.metrics().tools_hidden, hidden);
            }
        }
        action
    }

    /// One step of the answer: the bytes after what is held back are masked and applied, and
    /// the answer goes on, is withheld, or waits until its records are queued.
    fn answer_step(&mut self, input: AnswerInput) -> Action {
        let (Some(config), Some(response)) = (self.config.clone(), self.response.as_mut()) else {
            return Action::Continue;
        };
        let shared = &self.shared;
        let context_id = self.context_id;
        let masker = &config.masking.masker;
        let now = host::now_ms();
        // A held-back answer's buffer starts with what was masked already; only the rest is new.
        let held = shared.held_bytes(context_id);
        let read = |n: usize| read_response_body(context_id, held, n);
        let mut record = |part| shared.enqueue_part(context_id, part);
        let started = host::now_nanos();
        let (after, masked_bytes) = match input {
            AnswerInput::Body { size, end_of_stream } => {
                let new = size.saturating_sub(held);
                let step = response.on_body(masker, new, end_of_stream, read, now, &mut record);
                let applied = body::apply(&mut ResponseBody, step, held, size);
                let metrics = shared.metrics();
                shared::count(metrics.body_ns, host::now_nanos().saturating_sub(started));
                if end_of_stream {
                    shared::count(metrics.answers, 1);
                }
                applied
            }
            AnswerInput::Trailers => {
                let step = response.on_trailers(masker, read, now, &mut record);
                body::apply(&mut ResponseBody, step, held, held)
            }
        };
        let action = self.after_body(after, now);
        self.hold_until_recorded(action, masked_bytes)
    }

    /// An answer that would go on while some of its records wait for room in the queue is
    /// paused instead, with its first `masked_bytes` bytes ready; the root resumes it.
    fn hold_until_recorded(&mut self, action: Action, masked_bytes: usize) -> Action {
        if matches!(action, Action::Continue) && self.shared.must_hold(self.context_id, masked_bytes) {
            debug!(
                "Holding the answer to request {} until its records fit in the audit queue",
                self.request_id.as_deref().unwrap_or_default()
            );
            return Action::Pause;
        }
        action
    }

    /// The answer must not reach the client: a 502 JSON-RPC error replaces it while its
    /// headers are held; after that (or if the host refuses the reply), the stream is reset.
    fn withhold(&mut self, headers_held: bool) -> Action {
        let request_id = self.request_id.clone().unwrap_or_default();
        shared::count(self.shared.metrics().withheld, 1);
        let Some(response) = self.response.as_ref() else {
            return Action::Pause;
        };
        let reason = response.withheld().map_or("", Withheld::as_str);
        warn!("Withheld the answer to request {request_id} from the client: {reason}");
        if headers_held {
            let (status, body) = response.local_reply();
            let headers: [(&str, &[u8]); 2] = [
                ("content-type", b"application/json"),
                (REQUEST_ID_HEADER, request_id.as_bytes()),
            ];
            match host::send_local_response(status, WITHHELD_DETAILS, &headers, &body) {
                Ok(()) => return Action::Pause,
                Err(status) => error!(
                    "Could not replace the withheld answer to request {request_id}: host status {}; \
                     resetting the stream",
                    status.0
                ),
            }
        }
        if let Err(status) = host::close_stream(stream::HTTP_RESPONSE) {
            error!(
                "Could not reset the stream of request {request_id}: host status {}",
                status.0
            );
        }
        Action::Pause
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.phase != Phase::Start {
            return Action::Continue;
        }
        self.request_headers(end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.phase {
            Phase::ReadingBody => {}
            Phase::Rejected => return Action::Pause,
            Phase::Start | Phase::Forwarded => return Action::Continue,
        }
        let max = self.config.as_ref().map_or(0, |c| c.max_body_bytes);
        // Envoy passes the size of everything buffered so far, so this catches a chunked
        // body as soon as it goes over, without reading it.
        if let Err(rejection) = request::check_body_size(body_size, max) {
            return self.reject(rejection);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.check_buffered_body(body_size)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match self.phase {
            Phase::ReadingBody => {
                let max = self.config.as_ref().map_or(0, |c| c.max_body_bytes);
                self.check_buffered_body(max.saturating_add(1))
            }
            Phase::Rejected => Action::Pause,
            Phase::Start | Phase::Forwarded => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let context_id = self.context_id;
        let Some(request_id) = self.request_id.clone() else {
            return Action::Continue;
        };
        if let Err(status) = host::set_header(map::RESPONSE_HEADERS, REQUEST_ID_HEADER, &request_id) {
            warn!(
                "Could not set {REQUEST_ID_HEADER} on the answer to {request_id}: host status {}",
                status.0
            );
        }
        let mut session = SessionHeaders::default();
        let mut upstream_headers = Vec::new();
        let head = match host::header_pairs(map::RESPONSE_HEADERS) {
            Ok(pairs) => {
                session = SessionHeaders::from_headers(pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
                let head = ResponseHead::from_headers(pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
                upstream_headers = pairs;
                Some(head)
            }
            Err(status) => {
                warn!(
                    "Could not read the response headers of request {request_id}: host status {}",
                    status.0
                );
                None
            }
        };
        // The client never sees the service's decisions: an answer that would carry one
        // is refused.
        let mut header_stuck = false;
        if let Some(head) = head.as_ref() {
            for name in head.decision_headers(session.key_present) {
                if let Err(status) = host::remove_header(map::RESPONSE_HEADERS, name) {
                    error!(
                        "Could not remove {name} from the answer to {request_id}: host status {}",
                        status.0
                    );
                    header_stuck = true;
                }
            }
            // The client gets the upstream's session id tagged for its caller; if the tag
            // cannot be set, the bare id must not go on as if it were one.
            if let Some(bound) = &session.bound
                && let Err(status) = host::set_header(map::RESPONSE_HEADERS, SESSION_ID_HEADER, bound)
            {
                error!(
                    "Could not tag the session id on the answer to {request_id}: host status {}",
                    status.0
                );
                header_stuck = true;
            }
            if session.untagged && self.phase == Phase::Forwarded {
                warn!(
                    "The answer to {request_id} carries a session id but the Check gave no key: it goes \
                     on untagged, and the gateway will refuse it when it comes back"
                );
            }
            if let Some(Err(e)) = &head.tools {
                error!("Unreadable {TOOLS_HEADER} on the answer to {request_id} ({e}): every tool is hidden");
            }
            // Header values are masked like the body; one that cannot be replaced withholds
            // the answer.
            if let Some(config) = self.config.as_ref() {
                for (name, masked) in response::masked_headers(&config.masking.masker, &upstream_headers) {
                    if let Err(status) = host::set_header(map::RESPONSE_HEADERS, &name, &masked) {
                        error!(
                            "Could not mask header {name} of the answer to {request_id}: host status {}",
                            status.0
                        );
                        header_stuck = true;
                    }
                }
            }
        }
        // Only one answer per request is masked and recorded (a local reply that replaces a
        // withheld answer goes straight to the client, but if it came through, it is ours).
        if self.phase != Phase::Forwarded || self.response.is_some() {
            return Action::Continue;
        }
        let Some(config) = self.config.clone() else {
            return Action::Continue;
        };
        let limits = response::Limits {
            record_max: config.record_message_max_bytes,
            max_event_bytes: config.max_body_bytes,
            max_response_bytes: config.max_response_bytes,
        };
        let readable = head.is_some() && !header_stuck;
        let mut response = ResponseMasker::new(&request_id, head.unwrap_or_default(), self.reply_id.take(), limits);
        response.set_session_id(session.upstream_id.take());
        if self.lists_tools {
            response.filter_tools();
        }
        let shared = &self.shared;
        let now = host::now_ms();
        let masker = &config.masking.masker;
        let mut plan = if readable {
            response.on_headers(end_of_stream, now, &mut |part| shared.enqueue_part(context_id, part))
        } else {
            response.refuse(masker, Withheld::Unreadable, now, &mut |part| {
                shared.enqueue_part(context_id, part)
            });
            Plan::Withhold
        };
        if matches!(plan, Plan::Stream | Plan::Buffer)
            && let Err(status) = host::remove_header(map::RESPONSE_HEADERS, "content-length")
        {
            error!(
                "Could not remove content-length from the answer to {request_id}: host status {}",
                status.0
            );
            response.refuse(masker, Withheld::Unreadable, now, &mut |part| {
                shared.enqueue_part(context_id, part)
            });
            plan = Plan::Withhold;
        }
        if !response.reveal().is_empty() {
            debug!(
                "Answer to request {request_id} may show {}",
                response.reveal().to_header()
            );
        }
        self.response = Some(response);
        match plan {
            Plan::Pass | Plan::Stream => Action::Continue,
            Plan::Buffer => Action::Pause,
            Plan::Withhold => self.withhold(true),
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.answer_step(AnswerInput::Body {
            size: body_size,
            end_of_stream,
        })
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.answer_step(AnswerInput::Trailers)
    }

    fn on_log(&mut self) {
        self.record_unfinished_answer();
        // Its records still wait for room, if any; there is nothing left to resume.
        self.shared.forget_stream(self.context_id);
    }
}

impl Http {
    /// The stream is over: an answer that did not finish gets its final part now.
    fn record_unfinished_answer(&mut self) {
        let context_id = self.context_id;
        if self.phase != Phase::Forwarded {
            return;
        }
        let Some(request_id) = self.request_id.as_deref() else {
            return;
        };
        if self.response.as_ref().is_some_and(ResponseMasker::is_finished) {
            return;
        }
        let details = host::property(&["response", "code_details"])
            .ok()
            .flatten()
            .map(|d| String::from_utf8_lossy(&d).into_owned());
        let withheld = response::withheld_by_envoy(details.as_deref());
        let reason = match withheld {
            Some(_) => EndReason::Complete,
            None => response::abort_reason(details.as_deref()),
        };
        let now = host::now_ms();
        debug!("Answer to request {request_id} ended early: {reason} ({details:?})");
        let shared = &self.shared;
        match (self.response.as_mut(), self.config.as_ref()) {
            (Some(response), Some(config)) => {
                response.on_abort(&config.masking.masker, reason, withheld, now, &mut |part| {
                    shared.enqueue_part(context_id, part)
                });
            }
            _ => shared.enqueue_part(context_id, response::unanswered(request_id, reason, now)),
        }
        if let Some(withheld) = withheld {
            warn!("Envoy withheld the answer to request {request_id} ({withheld}): raise its buffer limit?");
            shared::count(shared.metrics().withheld, 1);
        }
    }
}

/// What an answer step was called with.
enum AnswerInput {
    Body { size: usize, end_of_stream: bool },
    Trailers,
}

/// The host's response body buffer.
struct ResponseBody;

impl BodyBuffer for ResponseBody {
    type Error = host::Status;

    fn read(&mut self, start: usize, len: usize) -> Result<Vec<u8>, host::Status> {
        host::buffer(buffer::RESPONSE_BODY, start, len)
    }

    fn replace_start(&mut self, len: usize, bytes: &[u8]) -> Result<(), host::Status> {
        host::set_buffer(buffer::RESPONSE_BODY, 0, len, bytes)
    }

    fn short() -> host::Status {
        host::Status(BAD_ARGUMENT)
    }
}

fn read_response_body(context_id: u32, offset: usize, size: usize) -> Option<Vec<u8>> {
    match host::buffer(buffer::RESPONSE_BODY, offset, size) {
        Ok(bytes) => Some(bytes),
        Err(status) => {
            warn!(
                "Could not read {size} response bytes of context {context_id}: host status {}",
                status.0
            );
            None
        }
    }
}
