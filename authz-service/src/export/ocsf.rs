//! The OCSF form of an audit record (`format: ocsf` of an exporter): one event of the Open
//! Cybersecurity Schema Framework, version [`OCSF_VERSION`], per record, whatever the record.
//!
//! | record | OCSF class |
//! | --- | --- |
//! | `request`, `response` (a part of the answer), `request_rejected` | API Activity (6003) |
//! | `request` refused for its token, before anyone was identified | Authentication (3002), Logon |
//! | `approval` (each step) | Entity Management (3004): the approval is the entity |
//! | `config_changed` | Application Lifecycle (6002): Gatehouse started or updated |
//! | an unknown kind, or data this build cannot read | Base Event (0), the data in `unmapped` |
//!
//! `docs/OCSF.md` has every field and the reasons. Events carry only what the record holds (it
//! is masked already) and the mapping's constants; where OCSF requires an attribute the record
//! cannot fill (the caller's network address, a caller no token identified) it holds
//! [`UNKNOWN`]. Every record's chain position and hash are in `unmapped`. The events validate
//! against the JSON Schemas of OCSF [`OCSF_VERSION`] in `tests/ocsf/` (`tests/harness/ocsf.py`).

use gatehouse_core::audit::Record;
use gatehouse_core::events::{
    ApprovalEvent, AuditEvent, ConfigChanged, EventError, RequestDecided, RequestDenied, RequestFacts, RequestRejected,
    ResponsePartObserved,
};
use serde::Serialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The OCSF version every event says it is (`metadata.version`): the first with the
/// `ai_operation` profile, whose `message_context` describes MCP traffic.
pub const OCSF_VERSION: &str = "1.8.0";

/// What an attribute OCSF requires holds when the record has nothing for it.
pub const UNKNOWN: &str = "unknown";

const PRODUCT: &str = "Gatehouse";
const LOG_NAME: &str = "audit";

/// The OCSF event of one record. Never fails: a record it cannot read becomes a Base Event
/// that carries its data.
pub fn event(record: &Record) -> Value {
    let mapped = match AuditEvent::from_record(&record.kind, &record.data) {
        Ok(AuditEvent::Request(decided)) => match &*decided {
            RequestDecided::Deny(denied) if is_authentication_failure(denied) => token_refused(denied),
            decided => call(record, decided),
        },
        Ok(AuditEvent::Response(part)) => response(record, &part),
        Ok(AuditEvent::RequestRejected(rejected)) => rejected_request(record, &rejected),
        Ok(AuditEvent::Approval(step)) => approval(record, &step),
        Ok(AuditEvent::ConfigChanged(config)) => config_changed(record, &config),
        Err(error) => unreadable(record, &error),
    };
    mapped.finish(record)
}

/// An OCSF enum value and its caption (an `*_id` attribute and its sibling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Id(u32, &'static str);

/// An event class and its category.
#[derive(Debug, Clone, Copy)]
struct Class {
    uid: u32,
    name: &'static str,
    category: Id,
}

const API_ACTIVITY: Class = Class {
    uid: 6003,
    name: "API Activity",
    category: Id(6, "Application Activity"),
};
const APPLICATION_LIFECYCLE: Class = Class {
    uid: 6002,
    name: "Application Lifecycle",
    category: Id(6, "Application Activity"),
};
const AUTHENTICATION: Class = Class {
    uid: 3002,
    name: "Authentication",
    category: Id(3, "Identity & Access Management"),
};
const ENTITY_MANAGEMENT: Class = Class {
    uid: 3004,
    name: "Entity Management",
    category: Id(3, "Identity & Access Management"),
};
const BASE_EVENT: Class = Class {
    uid: 0,
    name: "Base Event",
    category: Id(0, "Uncategorized"),
};

/// Activities by class (each class numbers its own).
mod activity {
    use super::Id;

    pub const CREATE: Id = Id(1, "Create");
    pub const READ: Id = Id(2, "Read");
    pub const UPDATE: Id = Id(3, "Update");
    pub const DELETE: Id = Id(4, "Delete");
    pub const LOGON: Id = Id(1, "Logon");
    pub const START: Id = Id(3, "Start");
    /// Application Lifecycle's (8), not Entity Management's (3).
    pub const APP_UPDATE: Id = Id(8, "Update");
    pub const OTHER: u32 = 99;
}

mod severity {
    use super::Id;

    pub const UNKNOWN: Id = Id(0, "Unknown");
    pub const INFORMATIONAL: Id = Id(1, "Informational");
    pub const LOW: Id = Id(2, "Low");
    pub const MEDIUM: Id = Id(3, "Medium");
}

mod status {
    use super::Id;

    pub const SUCCESS: Id = Id(1, "Success");
    pub const FAILURE: Id = Id(2, "Failure");
}

/// `action_id` and `disposition_id` (the `security_control` profile).
mod control {
    use super::Id;

    pub const ALLOWED: Id = Id(1, "Allowed");
    pub const DENIED: Id = Id(2, "Denied");
    pub const MODIFIED: Id = Id(4, "Modified");
    pub const BLOCKED: Id = Id(2, "Blocked");
    pub const APPROVED: Id = Id(8, "Approved");
    pub const REJECTED: Id = Id(25, "Rejected");
}

/// Authentication's `auth_protocol_id`: callers present OAuth 2.0 bearer tokens (MCP
/// authorization).
const OAUTH2: Id = Id(6, "OAUTH 2.0");
/// `message_context.ai_role_id` of a `tools/call`: the message invokes a tool.
const AI_ROLE_TOOL: Id = Id(3, "Tool");
/// `managed_entity.type_id`: OCSF has no type for an approval.
const ENTITY_OTHER: u32 = 99;

/// What happened, in the event's class: a known activity, or Other (99) named by the source.
#[derive(Debug, Clone)]
struct Activity {
    id: u32,
    /// `activity_name`: the caption, or for Other the record's own word (`tools/call`).
    name: String,
    /// For `type_name`.
    caption: &'static str,
}

impl Activity {
    fn known(id: Id) -> Self {
        Self {
            id: id.0,
            name: id.1.to_owned(),
            caption: id.1,
        }
    }

    fn other(name: &str) -> Self {
        Self {
            id: activity::OTHER,
            name: name.to_owned(),
            caption: "Other",
        }
    }
}

/// `status_id`, `status_code` and `status_detail`.
#[derive(Debug, Clone)]
struct Outcome {
    status: Id,
    code: Option<String>,
    detail: Option<String>,
}

impl Outcome {
    fn success(detail: Option<&str>) -> Self {
        Self {
            status: status::SUCCESS,
            code: None,
            detail: detail.map(str::to_owned),
        }
    }

    fn failure(code: Option<u32>, detail: &str) -> Self {
        Self {
            status: status::FAILURE,
            code: code.map(|c| c.to_string()),
            detail: Some(detail.to_owned()),
        }
    }
}

/// What Gatehouse did as a security control (the `security_control` profile).
#[derive(Debug, Clone, Copy)]
struct Control {
    action: Option<Id>,
    disposition: Id,
}

const LET_THROUGH: Control = Control {
    action: Some(control::ALLOWED),
    disposition: control::ALLOWED,
};
const STOPPED: Control = Control {
    action: Some(control::DENIED),
    disposition: control::BLOCKED,
};

/// A JSON object that leaves out what the record does not have (`None`, `null`): OCSF has
/// no `null` values.
#[derive(Debug, Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn new() -> Self {
        Self::default()
    }

    fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.set(key, value);
        self
    }

    fn set(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        if !value.is_null() {
            self.0.insert(key.to_owned(), value);
        }
    }
}

impl From<Obj> for Value {
    fn from(obj: Obj) -> Self {
        Value::Object(obj.0)
    }
}

/// A record's typed part as JSON (they always serialize; `null` is left out if not).
fn to_json(value: &impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// One event being built: [`Mapped::finish`] adds what every event carries.
#[derive(Debug)]
struct Mapped {
    class: Class,
    activity: Activity,
    severity: Id,
    outcome: Option<Outcome>,
    control: Option<Control>,
    message: String,
    /// The class's own attributes.
    attributes: Obj,
    /// The filter instance that observed it (`metadata.loggers`), for records the filter made.
    logger: Option<Value>,
    /// What the record holds that OCSF has no attribute for.
    unmapped: Obj,
}

impl Mapped {
    fn new(class: Class, activity: Activity, severity: Id, message: String) -> Self {
        Self {
            class,
            activity,
            severity,
            outcome: None,
            control: None,
            message,
            attributes: Obj::new(),
            logger: None,
            unmapped: Obj::new(),
        }
    }

    fn finish(self, record: &Record) -> Value {
        let Self {
            class,
            activity,
            severity,
            outcome,
            control,
            message,
            attributes,
            logger,
            unmapped,
        } = self;
        let mut profiles = Vec::new();
        if control.is_some() {
            profiles.push("security_control");
        }
        if attributes.0.contains_key("message_context") {
            profiles.push("ai_operation");
        }
        let (time, timezone_offset) = time_of(&record.recorded_at);
        let metadata = Obj::new()
            .with("version", OCSF_VERSION)
            .with("product", json!({"name": PRODUCT, "vendor_name": PRODUCT}))
            .with("uid", format!("{}:{}", record.writer, record.seq))
            .with("correlation_uid", record.request_id.as_str())
            .with("log_name", LOG_NAME)
            .with("event_code", record.kind.as_str())
            .with("original_time", record.recorded_at.as_str())
            .with("profiles", (!profiles.is_empty()).then_some(profiles))
            .with("loggers", logger.map(|l| vec![l]));
        let mut event = attributes
            .with("class_uid", class.uid)
            .with("class_name", class.name)
            .with("category_uid", class.category.0)
            .with("category_name", class.category.1)
            .with("activity_id", activity.id)
            .with("activity_name", activity.name)
            .with("type_uid", u64::from(class.uid) * 100 + u64::from(activity.id))
            .with("type_name", format!("{}: {}", class.name, activity.caption))
            .with("severity_id", severity.0)
            .with("severity", severity.1)
            .with("time", time)
            .with("timezone_offset", timezone_offset)
            .with("message", message)
            .with("metadata", metadata);
        if let Some(outcome) = outcome {
            event.set("status_id", outcome.status.0);
            event.set("status", outcome.status.1);
            event.set("status_code", outcome.code);
            event.set("status_detail", outcome.detail);
        }
        if let Some(control) = control {
            event.set("action_id", control.action.map(|a| a.0));
            event.set("action", control.action.map(|a| a.1));
            event.set("disposition_id", control.disposition.0);
            event.set("disposition", control.disposition.1);
        }
        let mut chain = Obj::new()
            .with("kind", record.kind.as_str())
            .with("writer", record.writer.as_str())
            .with("seq", record.seq)
            .with("hash", record.hash.as_str())
            .with("prev_hash", record.prev_hash.as_str());
        chain.0.extend(unmapped.0);
        event.with("unmapped", chain).into()
    }
}

/// `time` (Unix milliseconds) and `timezone_offset` (minutes) of a record's RFC 3339
/// `recorded_at`; time 0 if it does not parse (`metadata.original_time` keeps the text).
fn time_of(recorded_at: &str) -> (i64, Option<i16>) {
    match OffsetDateTime::parse(recorded_at, &Rfc3339) {
        Ok(at) => (
            i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or_default(),
            Some(at.offset().whole_minutes()),
        ),
        Err(_) => (0, None),
    }
}

/// A denial before any caller was identified that is about the token: refused (401), or not
/// verifiable because the issuer's keys are unavailable (503). Other denials without a subject
/// (a malformed body, a misrouted request) come before identity and stay API Activity.
fn is_authentication_failure(denied: &RequestDenied) -> bool {
    denied.request.subject.is_none() && matches!(denied.status, 401 | 503)
}

/// A refusal is Low; one for the gateway's own trouble (a 5xx status) is Medium.
fn denial_severity(http_status: u16) -> Id {
    if http_status >= 500 {
        severity::MEDIUM
    } else {
        severity::LOW
    }
}

/// The activity of an MCP call by its JSON-RPC method, or for a bodiless request by its HTTP
/// method. A `tools/call` is Other: a tool may read, change or delete, and only its server
/// knows which.
fn api_activity(mcp_method: Option<&str>, http_method: &str, operation: &str) -> Activity {
    let known = match mcp_method {
        // Opens a session.
        Some("initialize") => Some(activity::CREATE),
        Some(
            "tools/list"
            | "prompts/list"
            | "prompts/get"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
            | "completion/complete"
            | "tasks/get"
            | "tasks/list"
            | "tasks/result",
        ) => Some(activity::READ),
        Some("resources/subscribe") => Some(activity::CREATE),
        Some("resources/unsubscribe") => Some(activity::DELETE),
        Some("logging/setLevel") => Some(activity::UPDATE),
        Some(_) => None,
        None => match http_method {
            // Opens the stream of the server's messages.
            "GET" => Some(activity::READ),
            // Ends the session.
            "DELETE" => Some(activity::DELETE),
            _ => None,
        },
    };
    known.map_or_else(|| Activity::other(operation), Activity::known)
}

/// `resource_details.type` of what a method names.
fn target_type(mcp_method: Option<&str>) -> &'static str {
    match mcp_method {
        Some("tools/call") => "mcp_tool",
        Some("prompts/get") => "mcp_prompt",
        Some(m) if m.starts_with("resources/") => "mcp_resource",
        _ => "mcp_target",
    }
}

/// A caller by their verified subject (`sub`, both `uid` and `name`: the token names no
/// other), or [`UNKNOWN`] when no token identified one.
fn user(subject: Option<&str>, groups: &[String]) -> Value {
    let Some(subject) = subject else {
        return json!({"name": UNKNOWN});
    };
    let groups: Vec<Value> = groups.iter().map(|g| json!({"name": g})).collect();
    Obj::new()
        .with("uid", subject)
        .with("name", subject)
        .with("groups", (!groups.is_empty()).then_some(groups))
        .into()
}

/// The source of a call: OCSF requires one, and no record holds the caller's address.
fn unknown_endpoint() -> Value {
    json!({"name": UNKNOWN})
}

fn http_request(http_method: &str, path: &str, user_agent: Option<&str>) -> Value {
    Obj::new()
        .with("http_method", http_method)
        .with("url", json!({"path": path}))
        .with("user_agent", user_agent)
        .into()
}

fn named(name: Option<&str>) -> Option<Value> {
    name.map(|n| json!({"name": n}))
}

/// How a message names what it acts on: `tools/call "lookup"`.
fn target(operation: &str, tool: Option<&str>) -> String {
    match tool {
        Some(tool) => format!("{operation} {tool:?}"),
        None => operation.to_owned(),
    }
}

/// A call the service decided on (`request`), allowed or denied.
fn call(record: &Record, decided: &RequestDecided) -> Mapped {
    let facts = decided.facts();
    let first = facts.message.as_ref();
    let mcp_method = first.and_then(|m| m.mcp_method.as_deref());
    // A JSON-RPC response from the client names no method; a bodiless request has no message.
    let operation = mcp_method
        .or_else(|| first.map(|m| m.message_kind.as_str()))
        .unwrap_or(&facts.http_method);
    let tool = first.and_then(|m| m.tool.as_deref());
    let who = facts.subject.as_deref().unwrap_or("an unidentified caller");
    let upstream = facts.upstream.as_deref().unwrap_or("no upstream");
    let denied = match decided {
        RequestDecided::Allow(_) => None,
        RequestDecided::Deny(denied) => Some(denied),
    };
    let (outcome, control, severity) = match decided {
        RequestDecided::Allow(allowed) => (
            Outcome::success(Some(&allowed.reason)),
            LET_THROUGH,
            severity::INFORMATIONAL,
        ),
        RequestDecided::Deny(denied) => (
            Outcome::failure(Some(denied.status.into()), &denied.reason),
            STOPPED,
            denial_severity(denied.status),
        ),
    };
    let verb = if denied.is_some() { "Denied" } else { "Allowed" };
    let message = format!("{verb} {} on {upstream} for {who}", target(operation, tool));
    let mut mapped = Mapped::new(
        API_ACTIVITY,
        api_activity(mcp_method, &facts.http_method, operation),
        severity,
        message,
    );
    mapped.outcome = Some(outcome);
    mapped.control = Some(control);
    let authorization = Obj::new()
        .with("decision", if denied.is_some() { "deny" } else { "allow" })
        .with("policy", facts.policy_rule.as_ref().and_then(|r| named(r.as_deref())));
    let client_name = facts.client.as_ref().and_then(|c| c.name.as_deref());
    let actor = Obj::new()
        .with("user", user(facts.subject.as_deref(), &facts.groups))
        .with("session", facts.session_id.as_deref().map(|id| json!({"uid": id})))
        .with("app_name", client_name)
        .with("authorizations", vec![Value::from(authorization)]);
    mapped.attributes = Obj::new()
        .with("actor", actor)
        .with(
            "api",
            Obj::new()
                .with("operation", operation)
                .with("service", named(facts.upstream.as_deref()))
                .with("version", facts.protocol_version.as_deref())
                .with(
                    "request",
                    Obj::new()
                        .with("uid", record.request_id.as_str())
                        .with("data", request_data(facts)),
                ),
        )
        .with("resources", resources(facts))
        .with(
            "http_request",
            http_request(&facts.http_method, &facts.path, facts.user_agent.as_deref()),
        )
        .with("http_response", denied.map(|d| json!({"code": d.status})))
        .with("src_endpoint", unknown_endpoint())
        .with("message_context", message_context(facts, mcp_method));
    mapped.unmapped = Obj::new()
        .with("masked", facts.masked.as_ref().map(to_json))
        .with("recording", facts.recording.as_deref())
        .with("content", facts.content.as_ref().map(to_json))
        .with("upstream_credential", facts.upstream_credential.as_ref().map(to_json))
        .with("approval", facts.approval.as_ref().map(to_json))
        .with(
            "client_protocol_version",
            facts.client.as_ref().and_then(|c| c.protocol_version.as_deref()),
        );
    if let RequestDecided::Allow(allowed) = decided {
        mapped.unmapped.set("revealed", allowed.revealed.clone());
    }
    mapped
}

/// `api.request.data`: the messages as recorded (arguments masked, or left out under
/// `metadata` recording).
fn request_data(facts: &RequestFacts) -> Option<Value> {
    let mut data = Obj::new();
    if let Some(first) = &facts.message {
        data.set("message_kind", first.message_kind.as_str());
        data.set("jsonrpc_id", first.jsonrpc_id.clone());
        data.set("arguments", first.arguments.clone());
    }
    data.set("batch", facts.batch.as_ref().map(to_json));
    (!data.0.is_empty()).then(|| data.into())
}

/// What the call's messages name (a tool, prompt or resource), each once.
fn resources(facts: &RequestFacts) -> Option<Vec<Value>> {
    let named: Vec<(Option<&str>, &str)> = match &facts.batch {
        Some(batch) => batch
            .iter()
            .filter_map(|m| Some((m.method.as_deref(), m.tool.as_deref()?)))
            .collect(),
        None => facts
            .message
            .iter()
            .filter_map(|m| Some((m.mcp_method.as_deref(), m.tool.as_deref()?)))
            .collect(),
    };
    let mut resources: Vec<Value> = Vec::new();
    for (method, name) in named {
        let resource = json!({"name": name, "type": target_type(method)});
        if !resources.contains(&resource) {
            resources.push(resource);
        }
    }
    (!resources.is_empty()).then_some(resources)
}

/// The `ai_operation` profile's view of an MCP message: the client application, the MCP
/// server and session. The record names no model, so there is no `ai_model`.
fn message_context(facts: &RequestFacts, mcp_method: Option<&str>) -> Option<Value> {
    let application = facts.client.as_ref().and_then(|c| {
        let name = c.name.as_deref()?;
        Some(Obj::new().with("name", name).with("version", c.version.as_deref()))
    });
    let service = named(facts.upstream.as_deref());
    if application.is_none() && service.is_none() {
        return None;
    }
    let role = (mcp_method == Some("tools/call")).then_some(AI_ROLE_TOOL);
    Some(
        Obj::new()
            .with("uid", facts.session_id.as_deref())
            .with("application", application)
            .with("service", service)
            .with("ai_role_id", role.map(|r| r.0))
            .with("ai_role", role.map(|r| r.1))
            .into(),
    )
}

/// A request refused before a caller was identified, for its token: a failed logon.
fn token_refused(denied: &RequestDenied) -> Mapped {
    let facts = &denied.request;
    let upstream = facts.upstream.as_deref();
    let message = format!("Token refused for {}: {}", upstream.unwrap_or(PRODUCT), denied.reason);
    let severity = denial_severity(denied.status);
    let mut mapped = Mapped::new(AUTHENTICATION, Activity::known(activity::LOGON), severity, message);
    mapped.outcome = Some(Outcome::failure(Some(denied.status.into()), &denied.reason));
    mapped.control = Some(STOPPED);
    mapped.attributes = Obj::new()
        .with("user", user(None, &[]))
        // The MCP server the caller tried to reach behind Gatehouse (the gateway if none).
        .with("service", json!({"name": upstream.unwrap_or(PRODUCT)}))
        .with("auth_protocol_id", OAUTH2.0)
        .with("auth_protocol", OAUTH2.1)
        .with(
            "http_request",
            http_request(&facts.http_method, &facts.path, facts.user_agent.as_deref()),
        )
        .with("http_response", json!({"code": denied.status}));
    mapped.unmapped = Obj::new()
        .with("session_id", facts.session_id.as_deref())
        .with("protocol_version", facts.protocol_version.as_deref())
        .with("message", facts.message.as_ref().map(to_json))
        .with("batch", facts.batch.as_ref().map(to_json))
        .with("masked", facts.masked.as_ref().map(to_json))
        .with("recording", facts.recording.as_deref())
        .with("content", facts.content.as_ref().map(to_json));
    mapped
}

/// The filter instance that observed a record, and when by its clock.
fn filter_logger(source: &str, observed_at_unix_ms: u64) -> Value {
    json!({"name": source, "logged_time": observed_at_unix_ms})
}

/// One part of an upstream's answer (`response`). The record does not repeat the call: the
/// caller and the method are in the request's event with the same `api.request.uid`.
fn response(record: &Record, part: &ResponsePartObserved) -> Mapped {
    // A part is a JSON-RPC result or error, or a request or notification of the server.
    let server_method = part.message.get("method").and_then(Value::as_str);
    let operation = server_method.unwrap_or("response");
    let mut problems = Vec::new();
    if part.is_error {
        problems.push(match part.error_code {
            Some(code) => format!("JSON-RPC error {code}"),
            None => "JSON-RPC error".to_owned(),
        });
    }
    if part.http_status >= 400 {
        problems.push(format!("HTTP {}", part.http_status));
    }
    if let Some(withheld) = &part.withheld {
        problems.push(format!("withheld from the client: {withheld}"));
    }
    if let Some(end) = part.end_reason.as_deref().filter(|r| *r != "complete") {
        problems.push(format!("ended: {end}"));
    }
    let outcome = Outcome {
        status: if problems.is_empty() {
            status::SUCCESS
        } else {
            status::FAILURE
        },
        code: Some(part.http_status.to_string()),
        detail: (!problems.is_empty()).then(|| problems.join("; ")),
    };
    let control = if part.withheld.is_some() {
        STOPPED
    } else if part.masked.values().any(|n| *n > 0) {
        Control {
            action: Some(control::MODIFIED),
            disposition: control::ALLOWED,
        }
    } else {
        LET_THROUGH
    };
    let last = if part.is_final { ", the last" } else { "" };
    let message = format!(
        "Answer part {}{last} to request {}: HTTP {}",
        part.part, record.request_id, part.http_status
    );
    // A forged or replayed part: another record for this part was stored first.
    let severity = if part.conflict {
        severity::MEDIUM
    } else {
        severity::INFORMATIONAL
    };
    let mut mapped = Mapped::new(API_ACTIVITY, Activity::other(operation), severity, message);
    mapped.outcome = Some(outcome);
    mapped.control = Some(control);
    let error_message = part
        .message
        .get("error")
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str);
    let api_response = Obj::new()
        .with("code", part.error_code.filter(|_| part.is_error))
        .with("error_message", error_message)
        .with("data", part.message.clone());
    let actor = Obj::new()
        .with("user", user(None, &[]))
        .with("session", part.session_id.as_deref().map(|id| json!({"uid": id})));
    mapped.attributes = Obj::new()
        .with("actor", actor)
        .with(
            "api",
            Obj::new()
                .with("operation", operation)
                .with("request", json!({"uid": record.request_id}))
                .with(
                    "response",
                    (!api_response.0.is_empty()).then(|| Value::from(api_response)),
                ),
        )
        .with(
            "http_response",
            Obj::new()
                .with("code", part.http_status)
                .with("content_type", part.content_type.as_deref())
                .with("body_length", part.body_bytes),
        )
        .with("src_endpoint", unknown_endpoint());
    mapped.logger = Some(filter_logger(&part.source, part.observed_at_unix_ms));
    mapped.unmapped = Obj::new()
        .with("part", part.part)
        .with("final", part.is_final)
        .with("jsonrpc_id", part.jsonrpc_id.as_deref())
        .with("sse_event_id", part.sse_event_id.as_deref())
        .with("masked", (!part.masked.is_empty()).then(|| to_json(&part.masked)))
        .with("revealed", (!part.revealed.is_empty()).then(|| part.revealed.clone()))
        .with("withheld", part.withheld.as_deref())
        .with("truncated", part.truncated.then_some(true))
        .with("end_reason", part.end_reason.as_deref())
        .with("content", part.content.as_ref().map(to_json))
        .with("conflict", part.conflict.then_some(true));
    mapped
}

/// A request the filter refused before the service saw it (`request_rejected`).
fn rejected_request(record: &Record, rejected: &RequestRejected) -> Mapped {
    let mcp_method = rejected.mcp_method.as_deref();
    let operation = mcp_method.unwrap_or(&rejected.http_method);
    let message = format!("Refused by the filter: {}", rejected.reason);
    let severity = if rejected.conflict {
        severity::MEDIUM
    } else {
        severity::LOW
    };
    let mut mapped = Mapped::new(
        API_ACTIVITY,
        api_activity(mcp_method, &rejected.http_method, operation),
        severity,
        message,
    );
    mapped.outcome = Some(Outcome::failure(Some(rejected.http_status), &rejected.reason));
    mapped.control = Some(STOPPED);
    let actor = Obj::new()
        .with("user", user(rejected.subject.as_deref(), &[]))
        .with("session", rejected.session_id.as_deref().map(|id| json!({"uid": id})));
    mapped.attributes = Obj::new()
        .with("actor", actor)
        .with(
            "api",
            Obj::new()
                .with("operation", operation)
                .with("version", rejected.protocol_version.as_deref())
                .with("request", json!({"uid": record.request_id}))
                .with("response", json!({"code": rejected.jsonrpc_code})),
        )
        .with(
            "http_request",
            http_request(&rejected.http_method, &rejected.path, None),
        )
        .with("http_response", json!({"code": rejected.http_status}))
        .with("src_endpoint", unknown_endpoint());
    mapped.logger = Some(filter_logger(&rejected.source, rejected.observed_at_unix_ms));
    mapped.unmapped = Obj::new().with("conflict", rejected.conflict.then_some(true));
    mapped
}

/// A step of an approval: the approval is a managed entity, asked for (Create), decided,
/// used or expired (Update); telling approvers is Other.
fn approval(record: &Record, step: &ApprovalEvent) -> Mapped {
    let facts = step.approval();
    let id = &facts.approval_id;
    let caller = || user(Some(&facts.subject), &[]);
    // What the gateway does by itself.
    let gateway = || json!({"app_name": PRODUCT});
    // `None`: Other, named by the step.
    let (activity, actor, severity, message) = match step {
        ApprovalEvent::Requested(_) => (
            Some(activity::CREATE),
            json!({"user": caller()}),
            severity::INFORMATIONAL,
            format!(
                "{} asked for approval {id} of {} on {} (rule {:?}, approvers {:?})",
                facts.subject,
                target(&facts.mcp_method, facts.tool.as_deref()),
                facts.upstream,
                facts.rule,
                facts.approver_group
            ),
        ),
        ApprovalEvent::Notified(e) => (
            None,
            gateway(),
            severity::INFORMATIONAL,
            format!("Approvers of {id} were told ({} attempts)", e.attempts),
        ),
        ApprovalEvent::NotifyFailed(e) => (
            None,
            gateway(),
            severity::MEDIUM,
            format!("Approvers of {id} could not be told ({} attempts)", e.attempts),
        ),
        ApprovalEvent::Approved(e) => (
            Some(activity::UPDATE),
            json!({"user": user(Some(&e.approver), &e.approver_groups)}),
            severity::INFORMATIONAL,
            format!("{} approved {id} for {}", e.approver, facts.subject),
        ),
        ApprovalEvent::Denied(e) => (
            Some(activity::UPDATE),
            json!({"user": user(Some(&e.approver), &e.approver_groups)}),
            severity::LOW,
            format!("{} denied {id} for {}", e.approver, facts.subject),
        ),
        ApprovalEvent::Expired(_) => (
            Some(activity::UPDATE),
            gateway(),
            severity::LOW,
            format!("Approval {id} expired undecided"),
        ),
        ApprovalEvent::Used(e) => (
            Some(activity::UPDATE),
            json!({"user": caller()}),
            severity::INFORMATIONAL,
            format!(
                "A call by {} went through on approval {id} (use {})",
                facts.subject, e.uses
            ),
        ),
        ApprovalEvent::UseReturned(_) => (
            Some(activity::UPDATE),
            gateway(),
            severity::INFORMATIONAL,
            format!("A use of approval {id} was given back"),
        ),
    };
    let activity = activity.map_or_else(|| Activity::other(step.name()), Activity::known);
    let mut mapped = Mapped::new(ENTITY_MANAGEMENT, activity, severity, message);
    mapped.outcome = Some(match step {
        ApprovalEvent::NotifyFailed(e) => Outcome::failure(None, &e.error),
        ApprovalEvent::UseReturned(e) => Outcome::success(Some(&e.reason)),
        _ => Outcome::success(None),
    });
    let (disposition, comment) = match step {
        ApprovalEvent::Approved(e) => (Some(control::APPROVED), e.reason.as_deref()),
        ApprovalEvent::Denied(e) => (Some(control::REJECTED), e.reason.as_deref()),
        _ => (None, None),
    };
    mapped.control = disposition.map(|disposition| Control {
        action: None,
        disposition,
    });
    let entity = Obj::new()
        .with("uid", id.as_str())
        .with("name", target(&facts.mcp_method, facts.tool.as_deref()))
        .with("type_id", ENTITY_OTHER)
        .with("type", "Approval")
        .with("user", caller())
        .with("policy", json!({"name": facts.rule}))
        // The step as recorded: arguments (masked), approvers, expiry, uses.
        .with("data", record.data.clone());
    mapped.attributes = Obj::new()
        .with("actor", actor)
        .with("entity", entity)
        .with("comment", comment);
    mapped
}

/// The service's configuration at start (Start) or at a reload (Update), taken or refused.
fn config_changed(record: &Record, config: &ConfigChanged) -> Mapped {
    let (activity, outcome, severity) = match config.event.as_str() {
        "loaded" => (
            Activity::known(activity::START),
            Outcome::success(None),
            severity::INFORMATIONAL,
        ),
        "reloaded" => (
            Activity::known(activity::APP_UPDATE),
            Outcome::success(
                (!config.pending_restart.is_empty())
                    .then(|| {
                        format!(
                            "takes effect at the next restart: {}",
                            config.pending_restart.join(", ")
                        )
                    })
                    .as_deref(),
            ),
            severity::INFORMATIONAL,
        ),
        "reload_refused" => (
            Activity::known(activity::APP_UPDATE),
            Outcome::failure(None, &config.problems.join("; ")),
            severity::MEDIUM,
        ),
        other => (Activity::other(other), Outcome::success(None), severity::INFORMATIONAL),
    };
    let message = format!(
        "Configuration {} from {} (SHA-256 {})",
        config.event.replace('_', " "),
        config.source,
        config.config_sha256
    );
    let mut mapped = Mapped::new(APPLICATION_LIFECYCLE, activity, severity, message);
    mapped.outcome = Some(outcome);
    mapped.attributes = Obj::new().with("app", json!({"name": PRODUCT, "vendor_name": PRODUCT}));
    // The file, its digests and what changed: OCSF has no attributes for them.
    mapped.unmapped = Obj::new().with("config", record.data.clone());
    mapped
}

/// A record of a kind this build does not know, or whose data it cannot read: kept whole.
fn unreadable(record: &Record, error: &EventError) -> Mapped {
    let message = match error {
        EventError::UnknownKind(kind) => format!("A record of a kind this build does not know ({kind:?})"),
        EventError::Json { .. } => format!("A record this build could not read: {error}"),
    };
    let mut mapped = Mapped::new(BASE_EVENT, Activity::other(&record.kind), severity::UNKNOWN, message);
    mapped.unmapped = Obj::new()
        .with("data", record.data.clone())
        .with("error", error.to_string());
    mapped
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use gatehouse_core::audit::GENESIS_HASH;

    use super::*;

    /// A record as the writer stores it: chained and hashed.
    fn record(seq: u64, kind: &str, data: Value) -> Record {
        let mut record = Record {
            seq,
            writer: "gatehouse-1".into(),
            kind: kind.into(),
            request_id: "237f91547b8e4ecc269f490a0c0135c8".into(),
            recorded_at: "2026-12-02T17:38:24.455Z".into(),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
            data,
        };
        record.hash = record.compute_hash();
        record
    }

    fn mapped(kind: &str, data: Value) -> Value {
        let event = event(&record(7, kind, data));
        check_invariants(&event);
        event
    }

    /// What every event must hold, whatever its class.
    fn check_invariants(event: &Value) {
        assert!(!has_null(event), "null in {event:#}");
        let n = |key: &str| event[key].as_u64().unwrap_or_else(|| panic!("no {key} in {event:#}"));
        assert_eq!(n("type_uid"), n("class_uid") * 100 + n("activity_id"), "{event:#}");
        assert_eq!(event["metadata"]["version"], OCSF_VERSION);
        assert!(event["time"].is_i64() && event["severity_id"].is_u64());
        for key in ["kind", "writer", "seq", "hash", "prev_hash"] {
            assert!(
                event["unmapped"].get(key).is_some(),
                "unmapped.{key} missing in {event:#}"
            );
        }
    }

    fn has_null(value: &Value) -> bool {
        match value {
            Value::Null => true,
            Value::Array(items) => items.iter().any(has_null),
            // `unmapped` and `*.data` hold what the record holds, nulls included.
            Value::Object(fields) => fields
                .iter()
                .any(|(k, v)| !matches!(k.as_str(), "unmapped" | "data") && has_null(v)),
            _ => false,
        }
    }

    fn tool_call_allowed() -> Value {
        json!({
            "arguments": {"who": "[MASKED:email]"}, "decision": "allow", "groups": ["eng", "ops"],
            "http_method": "POST", "jsonrpc_id": 2, "masked": {"email": 1}, "mcp_method": "tools/call",
            "message_kind": "request", "path": "/mcp", "policy_rule": "other-tools",
            "protocol_version": "2025-11-25", "reason": "allowed by rule \"other-tools\"",
            "session_id": "upstream-session-1", "subject": "alice", "tool": "lookup",
            "upstream": "everything", "upstream_credential": {"header": "x-api-key", "type": "static_header"},
            "user_agent": "python-httpx/0.28.1"
        })
    }

    fn initialize_allowed() -> Value {
        json!({
            "arguments": null, "client": {"name": "claude-code", "protocol_version": "2025-11-25", "version": "2.0.1"},
            "decision": "allow", "groups": ["eng"], "http_method": "POST", "jsonrpc_id": 1,
            "mcp_method": "initialize", "message_kind": "request", "path": "/mcp", "policy_rule": "session",
            "protocol_version": null, "reason": "allowed by rule \"session\"", "session_id": null,
            "subject": "alice", "tool": null, "upstream": "everything"
        })
    }

    fn policy_denied() -> Value {
        json!({
            "arguments": {"table": "customers"}, "decision": "deny", "groups": ["eng"], "http_method": "POST",
            "jsonrpc_id": 5, "mcp_method": "tools/call", "message_kind": "request", "path": "/mcp",
            "policy_rule": "no-drops", "protocol_version": "2025-11-25", "reason": "denied by rule \"no-drops\"",
            "session_id": "upstream-session-1", "status": 403, "subject": "alice", "tool": "drop_table",
            "upstream": "everything"
        })
    }

    fn token_expired() -> Value {
        json!({
            "arguments": {}, "decision": "deny", "groups": [], "http_method": "POST", "jsonrpc_id": 3,
            "mcp_method": "tools/call", "message_kind": "request", "path": "/mcp",
            "protocol_version": "2025-11-25", "reason": "the bearer token has expired",
            "session_id": "upstream-session-1", "status": 401, "subject": null, "tool": "lookup",
            "upstream": "everything", "user_agent": "mcp-client/1.0"
        })
    }

    fn response_part() -> Value {
        json!({
            "body_bytes": 141, "content_type": "application/json", "end_reason": "complete", "error_code": null,
            "final": true, "http_status": 200, "is_error": false, "jsonrpc_id": "2",
            "masked": {"aws_access_key_id": 1, "email": 1},
            "message": {"id": 2, "jsonrpc": "2.0", "result": {"content": [
                {"text": "key [MASKED:aws_access_key_id] belongs to [MASKED:email]", "type": "text"}
            ]}},
            "observed_at_unix_ms": 1796247529698u64, "part": 0, "revealed": [], "source": "gatehouse/1/678e4b1b",
            "sse_event_id": null, "truncated": false, "withheld": null
        })
    }

    fn rejected() -> Value {
        json!({
            "decision": "deny", "http_method": "POST", "http_status": 400, "jsonrpc_code": -32700,
            "mcp_method": null, "observed_at_unix_ms": 1796247530804u64, "path": "/mcp",
            "protocol_version": "2025-11-25", "reason": "invalid JSON: key must be a string at line 1 column 2",
            "session_id": "upstream-session-1", "source": "gatehouse/1/678e4b1b", "subject": "alice"
        })
    }

    fn approval_step(step: &str, extra: Value) -> Value {
        let mut data = json!({
            "approval_id": "apr_001bd3c67c285eae80aa5bb9", "approver_group": "approvers", "event": step,
            "mcp_method": "tools/call", "rule": "deploy-needs-approval", "subject": "alice", "tool": "deploy",
            "upstream": "everything"
        });
        if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), extra) {
            data.extend(extra);
        }
        data
    }

    fn config(event: &str) -> Value {
        json!({
            "event": event, "source": "/etc/gatehouse/gatehouse.yaml",
            "config_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "digests": {
                "masking": "", "policy_rules": {"deny-drops": "ab"}, "recording": {},
                "sections": {"policy": "cd"}, "upstreams": {"everything": "ef"}
            },
            "changes": {
                "masking": false, "policy_rules": {"added": ["deny-drops"], "changed": [], "removed": []},
                "recording": {"added": [], "changed": [], "removed": []}, "sections": ["policy"],
                "upstreams": {"added": [], "changed": [], "removed": []}
            },
            "problems": if event == "reload_refused" { json!(["policy.rules[0].id: missing"]) } else { json!([]) }
        })
    }

    #[test]
    fn an_allowed_tool_call_is_api_activity_with_its_caller_tool_and_decision() {
        let e = mapped("request", tool_call_allowed());
        assert_eq!(e["class_uid"], 6003);
        assert_eq!(e["category_uid"], 6);
        // A tool may read or write: Other, named by the method.
        assert_eq!(
            (&e["activity_id"], &e["activity_name"]),
            (&json!(99), &json!("tools/call"))
        );
        assert_eq!(e["type_uid"], 600399);
        assert_eq!(e["type_name"], "API Activity: Other");
        assert_eq!(e["actor"]["user"]["uid"], "alice");
        assert_eq!(e["actor"]["user"]["name"], "alice");
        assert_eq!(e["actor"]["user"]["groups"], json!([{"name": "eng"}, {"name": "ops"}]));
        assert_eq!(e["actor"]["session"]["uid"], "upstream-session-1");
        assert_eq!(
            e["actor"]["authorizations"],
            json!([{"decision": "allow", "policy": {"name": "other-tools"}}])
        );
        assert_eq!(e["api"]["operation"], "tools/call");
        assert_eq!(e["api"]["service"]["name"], "everything");
        assert_eq!(e["api"]["version"], "2025-11-25");
        assert_eq!(e["api"]["request"]["uid"], "237f91547b8e4ecc269f490a0c0135c8");
        assert_eq!(
            e["api"]["request"]["data"]["arguments"],
            json!({"who": "[MASKED:email]"})
        );
        assert_eq!(e["api"]["request"]["data"]["jsonrpc_id"], 2);
        assert_eq!(e["resources"], json!([{"name": "lookup", "type": "mcp_tool"}]));
        assert_eq!(
            e["http_request"],
            json!({"http_method": "POST", "url": {"path": "/mcp"}, "user_agent": "python-httpx/0.28.1"})
        );
        assert_eq!(e["src_endpoint"], json!({"name": UNKNOWN}));
        assert_eq!((&e["status_id"], &e["status"]), (&json!(1), &json!("Success")));
        assert_eq!(e["status_detail"], "allowed by rule \"other-tools\"");
        assert_eq!(
            (&e["disposition_id"], &e["disposition"]),
            (&json!(1), &json!("Allowed"))
        );
        assert_eq!((&e["action_id"], &e["severity_id"]), (&json!(1), &json!(1)));
        assert!(
            e.get("http_response").is_none(),
            "the answer is in the response records"
        );
        assert_eq!(
            e["message_context"],
            json!({"uid": "upstream-session-1", "service": {"name": "everything"}, "ai_role_id": 3, "ai_role": "Tool"})
        );
        assert!(e.get("ai_model").is_none(), "the record names no model");
        assert_eq!(e["message"], "Allowed tools/call \"lookup\" on everything for alice");
        assert_eq!(e["time"], 1_796_233_104_455_i64);
        assert_eq!(e["timezone_offset"], 0);
    }

    #[test]
    fn metadata_names_the_record_and_unmapped_holds_its_chain_position() {
        let r = record(7, "request", tool_call_allowed());
        let e = event(&r);
        let m = &e["metadata"];
        assert_eq!(m["version"], OCSF_VERSION);
        assert_eq!(m["product"], json!({"name": "Gatehouse", "vendor_name": "Gatehouse"}));
        assert_eq!(m["uid"], "gatehouse-1:7");
        assert_eq!(m["correlation_uid"], r.request_id);
        assert_eq!(m["log_name"], "audit");
        assert_eq!(m["event_code"], "request");
        assert_eq!(m["original_time"], "2026-12-02T17:38:24.455Z");
        assert_eq!(m["profiles"], json!(["security_control", "ai_operation"]));
        let u = &e["unmapped"];
        assert_eq!(
            (&u["kind"], &u["writer"], &u["seq"]),
            (&json!("request"), &json!("gatehouse-1"), &json!(7))
        );
        assert_eq!((&u["hash"], &u["prev_hash"]), (&json!(r.hash), &json!(GENESIS_HASH)));
        assert_eq!(u["masked"], json!({"email": 1}));
        assert_eq!(
            u["upstream_credential"],
            json!({"header": "x-api-key", "type": "static_header"})
        );
    }

    #[test]
    fn mcp_methods_map_to_crud_activities() {
        let activity_of = |method: Option<&str>, http: &str| {
            let a = api_activity(method, http, method.unwrap_or(http));
            (a.id, a.name)
        };
        assert_eq!(activity_of(Some("initialize"), "POST"), (1, "Create".into()));
        assert_eq!(activity_of(Some("tools/list"), "POST"), (2, "Read".into()));
        assert_eq!(activity_of(Some("resources/read"), "POST"), (2, "Read".into()));
        assert_eq!(activity_of(Some("prompts/get"), "POST"), (2, "Read".into()));
        assert_eq!(activity_of(Some("logging/setLevel"), "POST"), (3, "Update".into()));
        assert_eq!(activity_of(Some("resources/unsubscribe"), "POST"), (4, "Delete".into()));
        assert_eq!(activity_of(Some("tools/call"), "POST"), (99, "tools/call".into()));
        assert_eq!(
            activity_of(Some("notifications/initialized"), "POST"),
            (99, "notifications/initialized".into())
        );
        assert_eq!(activity_of(None, "GET"), (2, "Read".into()));
        assert_eq!(activity_of(None, "DELETE"), (4, "Delete".into()));
    }

    #[test]
    fn an_initialize_names_the_client_application() {
        let e = mapped("request", initialize_allowed());
        assert_eq!((&e["activity_id"], &e["type_uid"]), (&json!(1), &json!(600301)));
        assert_eq!(e["actor"]["app_name"], "claude-code");
        assert!(e["actor"].get("session").is_none(), "no session yet");
        assert_eq!(
            e["message_context"],
            json!({"application": {"name": "claude-code", "version": "2.0.1"}, "service": {"name": "everything"}})
        );
        assert!(e.get("resources").is_none() && e["api"].get("version").is_none());
        assert_eq!(e["unmapped"]["client_protocol_version"], "2025-11-25");
    }

    #[test]
    fn a_denied_call_is_blocked_with_its_reason_and_status() {
        let e = mapped("request", policy_denied());
        assert_eq!(e["class_uid"], 6003);
        assert_eq!(
            (&e["disposition_id"], &e["disposition"]),
            (&json!(2), &json!("Blocked"))
        );
        assert_eq!((&e["action_id"], &e["action"]), (&json!(2), &json!("Denied")));
        assert_eq!((&e["status_id"], &e["status"]), (&json!(2), &json!("Failure")));
        assert_eq!(e["status_detail"], "denied by rule \"no-drops\"");
        assert_eq!(e["status_code"], "403");
        assert_eq!(e["http_response"], json!({"code": 403}));
        assert_eq!(e["severity_id"], 2);
        assert_eq!(
            e["actor"]["authorizations"],
            json!([{"decision": "deny", "policy": {"name": "no-drops"}}])
        );
        assert_eq!(e["resources"], json!([{"name": "drop_table", "type": "mcp_tool"}]));
        assert_eq!(e["api"]["request"]["data"]["arguments"], json!({"table": "customers"}));
    }

    #[test]
    fn a_default_deny_names_no_policy() {
        let mut data = policy_denied();
        data["policy_rule"] = Value::Null;
        data["reason"] = json!("denied by no rule matched (default deny)");
        let e = mapped("request", data);
        assert_eq!(e["actor"]["authorizations"], json!([{"decision": "deny"}]));
        assert_eq!(e["status_detail"], "denied by no rule matched (default deny)");
    }

    #[test]
    fn a_refused_token_is_a_failed_logon_by_an_unknown_user() {
        let e = mapped("request", token_expired());
        assert_eq!((&e["class_uid"], &e["category_uid"]), (&json!(3002), &json!(3)));
        assert_eq!((&e["activity_id"], &e["activity_name"]), (&json!(1), &json!("Logon")));
        assert_eq!(e["type_uid"], 300201);
        assert_eq!((&e["status_id"], &e["status"]), (&json!(2), &json!("Failure")));
        assert_eq!(e["status_detail"], "the bearer token has expired");
        assert_eq!(e["status_code"], "401");
        assert_eq!(e["user"], json!({"name": UNKNOWN}));
        assert_eq!(e["service"], json!({"name": "everything"}));
        assert_eq!(
            (&e["auth_protocol_id"], &e["auth_protocol"]),
            (&json!(6), &json!("OAUTH 2.0"))
        );
        assert_eq!(e["disposition_id"], 2);
        assert_eq!(e["http_request"]["user_agent"], "mcp-client/1.0");
        assert!(e.get("actor").is_none() && e.get("api").is_none());
        assert_eq!(e["unmapped"]["message"]["tool"], "lookup");
        assert_eq!(e["metadata"]["profiles"], json!(["security_control"]));
    }

    #[test]
    fn unverifiable_tokens_are_failed_logons_and_other_anonymous_denials_are_not() {
        let mut keys = token_expired();
        keys["status"] = json!(503);
        keys["reason"] = json!("the identity provider's keys cannot be fetched right now");
        let e = mapped("request", keys);
        assert_eq!((&e["class_uid"], &e["severity_id"]), (&json!(3002), &json!(3)));

        let misrouted = json!({
            "decision": "deny", "groups": [], "http_method": "DELETE", "path": "/x",
            "protocol_version": "2025-06-18", "reason": "route names no known upstream", "session_id": "s",
            "status": 500, "subject": null, "upstream": null
        });
        let e = mapped("request", misrouted);
        assert_eq!(e["class_uid"], 6003);
        assert_eq!(
            (&e["activity_id"], &e["api"]["operation"]),
            (&json!(4), &json!("DELETE"))
        );
        assert_eq!(e["actor"]["user"], json!({"name": UNKNOWN}));
        assert_eq!((&e["disposition_id"], &e["severity_id"]), (&json!(2), &json!(3)));
        assert!(e.get("message_context").is_none(), "no upstream, no client");
    }

    #[test]
    fn a_batch_names_every_tool_once_and_keeps_its_messages() {
        let mut data = tool_call_allowed();
        data["batch"] = json!([
            {"arguments": {"n": 1}, "jsonrpc_id": 8, "kind": "request", "method": "tools/call", "tool": "lookup"},
            {"arguments": {"n": 2}, "jsonrpc_id": 9, "kind": "request", "method": "tools/call", "tool": "lookup"},
            {"arguments": null, "jsonrpc_id": 10, "kind": "request", "method": "resources/read", "tool": "file:///x"}
        ]);
        let e = mapped("request", data);
        assert_eq!(
            e["resources"],
            json!([{"name": "lookup", "type": "mcp_tool"}, {"name": "file:///x", "type": "mcp_resource"}])
        );
        assert_eq!(e["api"]["request"]["data"]["batch"][1]["arguments"], json!({"n": 2}));
    }

    #[test]
    fn a_response_part_is_api_activity_joined_to_its_request() {
        let e = mapped("response", response_part());
        assert_eq!(e["class_uid"], 6003);
        assert_eq!(
            (&e["activity_id"], &e["activity_name"]),
            (&json!(99), &json!("response"))
        );
        assert_eq!(e["api"]["request"]["uid"], "237f91547b8e4ecc269f490a0c0135c8");
        assert_eq!(e["api"]["operation"], "response");
        assert_eq!(e["api"]["response"]["data"]["result"]["content"][0]["type"], "text");
        assert_eq!(
            e["http_response"],
            json!({"code": 200, "content_type": "application/json", "body_length": 141})
        );
        assert_eq!((&e["status_id"], &e["status_code"]), (&json!(1), &json!("200")));
        // Masked values: the control changed what the client saw.
        assert_eq!((&e["action_id"], &e["action"]), (&json!(4), &json!("Modified")));
        assert_eq!(e["disposition_id"], 1);
        assert_eq!(e["actor"]["user"], json!({"name": UNKNOWN}));
        assert_eq!(
            e["metadata"]["loggers"],
            json!([{"name": "gatehouse/1/678e4b1b", "logged_time": 1_796_247_529_698_u64}])
        );
        assert_eq!(e["unmapped"]["masked"], json!({"aws_access_key_id": 1, "email": 1}));
        assert_eq!(
            (&e["unmapped"]["part"], &e["unmapped"]["final"]),
            (&json!(0), &json!(true))
        );
        assert!(e["unmapped"].get("conflict").is_none());
    }

    #[test]
    fn a_withheld_errored_or_conflicting_part_says_so() {
        let mut data = response_part();
        data["withheld"] = json!("binary");
        data["masked"] = json!({});
        data["message"] = Value::Null;
        let e = mapped("response", data);
        assert_eq!((&e["disposition_id"], &e["action_id"]), (&json!(2), &json!(2)));
        assert_eq!(e["status_detail"], "withheld from the client: binary");
        assert!(e["api"].get("response").is_none());

        let mut data = response_part();
        data["is_error"] = json!(true);
        data["error_code"] = json!(-32003);
        data["http_status"] = json!(403);
        data["message"] = json!({
            "error": {"code": -32003, "message": "You are not allowed to make this call."}, "id": 5, "jsonrpc": "2.0"
        });
        data["conflict"] = json!(true);
        data["end_reason"] = json!("client_gone");
        let e = mapped("response", data);
        assert_eq!(e["status"], "Failure");
        assert_eq!(
            e["status_detail"],
            "JSON-RPC error -32003; HTTP 403; ended: client_gone"
        );
        assert_eq!(e["api"]["response"]["code"], -32003);
        assert_eq!(
            e["api"]["response"]["error_message"],
            "You are not allowed to make this call."
        );
        assert_eq!(
            (&e["severity_id"], &e["unmapped"]["conflict"]),
            (&json!(3), &json!(true))
        );
    }

    #[test]
    fn a_server_notification_in_a_stream_is_named_by_its_method() {
        let mut data = response_part();
        data["final"] = json!(false);
        data["message"] = json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info"}});
        let e = mapped("response", data);
        assert_eq!(e["activity_name"], "notifications/message");
        assert_eq!(e["api"]["operation"], "notifications/message");
    }

    #[test]
    fn a_rejected_request_is_blocked_api_activity() {
        let e = mapped("request_rejected", rejected());
        assert_eq!(e["class_uid"], 6003);
        assert_eq!((&e["activity_id"], &e["activity_name"]), (&json!(99), &json!("POST")));
        assert_eq!((&e["disposition_id"], &e["status_id"]), (&json!(2), &json!(2)));
        assert_eq!(
            e["status_detail"],
            "invalid JSON: key must be a string at line 1 column 2"
        );
        assert_eq!(e["status_code"], "400");
        assert_eq!(e["api"]["response"], json!({"code": -32700}));
        assert_eq!(e["http_response"], json!({"code": 400}));
        assert_eq!(e["actor"]["user"], json!({"uid": "alice", "name": "alice"}));
        assert_eq!(e["metadata"]["loggers"][0]["name"], "gatehouse/1/678e4b1b");
        assert_eq!(e["metadata"]["event_code"], "request_rejected");
    }

    #[test]
    fn approval_steps_are_entity_management_of_the_approval() {
        let requested = approval_step(
            "requested",
            json!({
                "arguments": {"env": "prod", "notify": "[MASKED:email]"}, "expires_at": "2026-12-02T22:38:50.948Z",
                "grant_seconds": 600, "single_use": true
            }),
        );
        let e = mapped("approval", requested);
        assert_eq!((&e["class_uid"], &e["category_uid"]), (&json!(3004), &json!(3)));
        assert_eq!((&e["activity_id"], &e["type_uid"]), (&json!(1), &json!(300401)));
        assert_eq!(e["actor"]["user"]["uid"], "alice");
        let entity = &e["entity"];
        assert_eq!(entity["uid"], "apr_001bd3c67c285eae80aa5bb9");
        assert_eq!(entity["name"], "tools/call \"deploy\"");
        assert_eq!((&entity["type_id"], &entity["type"]), (&json!(99), &json!("Approval")));
        assert_eq!(entity["user"]["uid"], "alice");
        assert_eq!(entity["policy"]["name"], "deploy-needs-approval");
        assert_eq!(entity["data"]["arguments"]["notify"], "[MASKED:email]");
        assert!(e.get("disposition_id").is_none() && e["metadata"].get("profiles").is_none());

        let approved = approval_step(
            "approved",
            json!({
                "approver": "bob", "approver_groups": ["approvers"], "grant_expires_at": "2026-12-02T21:48:51.834Z",
                "reason": "ok for staging"
            }),
        );
        let e = mapped("approval", approved);
        assert_eq!(e["activity_id"], 3);
        assert_eq!(
            e["actor"]["user"],
            json!({"uid": "bob", "name": "bob", "groups": [{"name": "approvers"}]})
        );
        assert_eq!(
            (&e["disposition_id"], &e["disposition"]),
            (&json!(8), &json!("Approved"))
        );
        assert!(e.get("action_id").is_none());
        assert_eq!(e["comment"], "ok for staging");

        let denied = approval_step(
            "denied",
            json!({"approver": "bob", "approver_groups": ["approvers"], "reason": "not during the freeze"}),
        );
        let e = mapped("approval", denied);
        assert_eq!(
            (&e["disposition_id"], &e["disposition"]),
            (&json!(25), &json!("Rejected"))
        );
        assert_eq!(e["comment"], "not during the freeze");

        let failed = approval_step(
            "notify_failed",
            json!({"attempts": 2, "error": "the webhook answered 500 Internal Server Error"}),
        );
        let e = mapped("approval", failed);
        assert_eq!(
            (&e["activity_id"], &e["activity_name"]),
            (&json!(99), &json!("notify_failed"))
        );
        assert_eq!((&e["status_id"], &e["severity_id"]), (&json!(2), &json!(3)));
        assert_eq!(e["status_detail"], "the webhook answered 500 Internal Server Error");
        assert_eq!(e["actor"], json!({"app_name": "Gatehouse"}));

        let e = mapped("approval", approval_step("expired", json!({})));
        assert_eq!(
            (&e["activity_id"], &e["actor"]["app_name"]),
            (&json!(3), &json!("Gatehouse"))
        );
        let used = approval_step(
            "used",
            json!({"approval_request_id": "8c2142175c391521ff079a264bea3f3e", "single_use": true, "uses": 1}),
        );
        let e = mapped("approval", used);
        assert_eq!(
            (&e["activity_id"], &e["actor"]["user"]["uid"]),
            (&json!(3), &json!("alice"))
        );
    }

    #[test]
    fn config_changes_are_application_lifecycle_of_gatehouse() {
        let e = mapped("config_changed", config("loaded"));
        assert_eq!((&e["class_uid"], &e["category_uid"]), (&json!(6002), &json!(6)));
        assert_eq!((&e["activity_id"], &e["activity_name"]), (&json!(3), &json!("Start")));
        assert_eq!(e["app"], json!({"name": "Gatehouse", "vendor_name": "Gatehouse"}));
        assert_eq!(e["status_id"], 1);
        assert_eq!(
            e["unmapped"]["config"]["config_sha256"],
            config("loaded")["config_sha256"]
        );
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("/etc/gatehouse/gatehouse.yaml"))
        );

        let e = mapped("config_changed", config("reloaded"));
        assert_eq!((&e["activity_id"], &e["type_uid"]), (&json!(8), &json!(600208)));

        let e = mapped("config_changed", config("reload_refused"));
        assert_eq!((&e["activity_id"], &e["status_id"]), (&json!(8), &json!(2)));
        assert_eq!(e["status_detail"], "policy.rules[0].id: missing");
        assert_eq!(e["severity_id"], 3);
    }

    #[test]
    fn an_unknown_kind_or_unreadable_data_is_kept_as_a_base_event() {
        let e = mapped("future_kind", json!({"anything": [1, null]}));
        assert_eq!((&e["class_uid"], &e["category_uid"]), (&json!(0), &json!(0)));
        assert_eq!(
            (&e["activity_id"], &e["activity_name"]),
            (&json!(99), &json!("future_kind"))
        );
        assert_eq!(e["type_uid"], 99);
        assert_eq!(e["unmapped"]["data"], json!({"anything": [1, null]}));

        let e = mapped("request", json!({"decision": "maybe"}));
        assert_eq!(e["class_uid"], 0);
        assert!(
            e["unmapped"]["error"]
                .as_str()
                .is_some_and(|m| m.contains("request record"))
        );
        assert_eq!(e["unmapped"]["data"], json!({"decision": "maybe"}));

        let e = mapped("approval", Value::Null);
        assert_eq!(e["class_uid"], 0);
    }

    #[test]
    fn an_unparseable_time_is_zero_and_kept_as_original_time() {
        let mut r = record(1, "request", tool_call_allowed());
        r.recorded_at = "yesterday".into();
        let e = event(&r);
        assert_eq!(e["time"], 0);
        assert!(e.get("timezone_offset").is_none());
        assert_eq!(e["metadata"]["original_time"], "yesterday");
    }

    /// Every record of the fixture trails and goldens (`core/tests/fixtures/`), and those above.
    fn samples() -> Vec<Record> {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures");
        let mut records = Vec::new();
        for name in ["audit-v1.jsonl", "audit-v2.jsonl"] {
            let text = std::fs::read_to_string(fixtures.join(name)).expect("a fixture trail");
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let mut row: Value = serde_json::from_str(line).expect("a fixture row");
                // The stored data is text, as the database holds it.
                let data = serde_json::from_str(row["data"].as_str().expect("data as text")).expect("data");
                row["data"] = data;
                records.push(serde_json::from_value(row).expect("a record"));
            }
        }
        let goldens = std::fs::read_to_string(fixtures.join("events.golden.jsonl")).expect("the goldens");
        for (n, line) in goldens.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let golden: Value = serde_json::from_str(line).expect("a golden");
            let kind = golden["kind"].as_str().expect("a kind");
            records.push(record(100 + n as u64, kind, golden["data"].clone()));
        }
        let mut seq = 200;
        let mut add = |kind: &str, data: Value| {
            seq += 1;
            records.push(record(seq, kind, data));
        };
        add("request", tool_call_allowed());
        add("request", initialize_allowed());
        add("request", policy_denied());
        add("request", token_expired());
        add("response", response_part());
        add("request_rejected", rejected());
        for event in ["loaded", "reloaded", "reload_refused"] {
            add("config_changed", config(event));
        }
        add("future_kind", json!({"anything": [1, null]}));
        add("request", json!({"decision": "maybe"}));
        records
    }

    /// Every sample maps to a well-formed event. With `GATEHOUSE_OCSF_SAMPLES=<file>` the events
    /// are also written there, one per line, for the schema validator:
    /// `tests/.. python -m harness.ocsf <file>` (docs/OCSF.md).
    #[test]
    fn every_sample_record_maps_to_one_event() {
        let records = samples();
        assert!(records.len() > 80, "{} samples", records.len());
        let events: Vec<Value> = records.iter().map(event).collect();
        let mut classes = std::collections::BTreeSet::new();
        for (record, event) in records.iter().zip(&events) {
            check_invariants(event);
            assert_eq!(event["metadata"]["uid"], format!("{}:{}", record.writer, record.seq));
            classes.insert(event["class_uid"].as_u64().unwrap_or_default());
        }
        assert_eq!(classes.into_iter().collect::<Vec<_>>(), [0, 3002, 3004, 6002, 6003]);
        if let Some(path) = std::env::var_os("GATEHOUSE_OCSF_SAMPLES") {
            let lines: Vec<String> = events.iter().map(Value::to_string).collect();
            std::fs::write(path, lines.join("\n") + "\n").expect("the samples file");
        }
    }
}
