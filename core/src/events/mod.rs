//! Typed audit events: one type per thing the trail records, named for what happened.
//!
//! A record's [`RecordKind`] and its `data` both come from an event ([`AuditEvent`]). The
//! JSON each type writes is the record format on disk: field names, which fields are absent
//! and which are `null`, and number types are exactly what earlier builds wrote, so the
//! stored bytes (and the hashes over them) of a database written before these types existed
//! read back into them and write out unchanged (`core/tests/events.rs` pins both).
//!
//! Readers of the trail (the SIEM export, the session viewer) map from these types, so every
//! field says what it means. Optional fields come in two shapes that must not be mixed up:
//! `Option<T>` written as `null` when there is no value (the field is always there), and
//! `Option<T>` with `skip_serializing_if` (the field is absent unless it applies).

mod approval;
mod config;
mod request;
mod response;

pub use approval::{
    ApprovalDenied, ApprovalEvent, ApprovalExpired, ApprovalFacts, ApprovalGranted, ApprovalRequested,
    ApprovalUseReturned, ApprovalUsed, ApproverNotificationFailed, ApproversNotified, ArgumentsMasked, MaskedSpan,
};
pub use config::{ConfigChanged, ConfigChanges, ConfigDigests, Diff};
pub use request::{
    ApprovalRef, BatchMessage, ClientInfo, ContentDigest, Decision, FirstMessage, RequestAllowed, RequestDecided,
    RequestDenied, RequestFacts, USER_AGENT_MAX, UpstreamCredentialPresented,
};
pub use response::{EndReason, RequestRejected, ResponsePart, ResponsePartObserved, Withheld};

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::audit::RecordKind;

/// An event could not be read from (or written as) a record's data.
#[derive(Debug, Error)]
pub enum EventError {
    #[error("unknown record kind {0:?}")]
    UnknownKind(String),
    #[error("{kind} record: {source}")]
    Json {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Everything the trail records, one variant per [`RecordKind`].
#[derive(Debug, Clone, PartialEq)]
pub enum AuditEvent {
    /// The service's decision on a request (`request`). Boxed: the largest by far.
    Request(Box<RequestDecided>),
    /// One part of an answer the filter observed (`response`).
    Response(ResponsePartObserved),
    /// A request the filter refused before it reached the service (`request_rejected`).
    RequestRejected(RequestRejected),
    /// A step of an approval (`approval`).
    Approval(ApprovalEvent),
    /// The service's configuration at start or at a reload (`config_changed`).
    ConfigChanged(ConfigChanged),
}

impl AuditEvent {
    /// The kind of record this event is stored as.
    pub fn kind(&self) -> RecordKind {
        match self {
            Self::Request(_) => RecordKind::Request,
            Self::Response(_) => RecordKind::Response,
            Self::RequestRejected(_) => RecordKind::RequestRejected,
            Self::Approval(_) => RecordKind::Approval,
            Self::ConfigChanged(_) => RecordKind::ConfigChanged,
        }
    }

    /// The record's `data`: the event as a JSON value (object keys sorted, as stored and
    /// hashed by [`crate::audit::canonical_json`]).
    pub fn to_data(&self) -> Result<Value, EventError> {
        let kind = self.kind().as_str();
        let value = match self {
            Self::Request(e) => serde_json::to_value(e),
            Self::Response(e) => serde_json::to_value(e),
            Self::RequestRejected(e) => serde_json::to_value(e),
            Self::Approval(e) => serde_json::to_value(e),
            Self::ConfigChanged(e) => serde_json::to_value(e),
        };
        value.map_err(|source| EventError::Json { kind, source })
    }

    /// The record's `data`, as [`Self::to_data`], taking the event: a response's message (the
    /// bulk of it) is moved into the data rather than copied.
    pub fn into_data(self) -> Result<Value, EventError> {
        let Self::Response(mut part) = self else {
            return self.to_data();
        };
        let message = std::mem::take(&mut part.message);
        let mut data = serde_json::to_value(&part).map_err(|source| EventError::Json {
            kind: RecordKind::Response.as_str(),
            source,
        })?;
        if let Value::Object(fields) = &mut data {
            fields.insert("message".to_owned(), message);
        }
        Ok(data)
    }

    /// Reads a stored record's data back into its event.
    pub fn from_record(kind: &str, data: &Value) -> Result<Self, EventError> {
        let Some(record_kind) = RecordKind::parse(kind) else {
            return Err(EventError::UnknownKind(kind.to_owned()));
        };
        let json = |source| EventError::Json {
            kind: record_kind.as_str(),
            source,
        };
        Ok(match record_kind {
            RecordKind::Request => Self::Request(Box::new(RequestDecided::deserialize(data).map_err(json)?)),
            RecordKind::Response => Self::Response(ResponsePartObserved::deserialize(data).map_err(json)?),
            RecordKind::RequestRejected => Self::RequestRejected(RequestRejected::deserialize(data).map_err(json)?),
            RecordKind::Approval => Self::Approval(ApprovalEvent::deserialize(data).map_err(json)?),
            RecordKind::ConfigChanged => Self::ConfigChanged(ConfigChanged::deserialize(data).map_err(json)?),
        })
    }
}

macro_rules! event_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl From<$ty> for AuditEvent {
            fn from(event: $ty) -> Self {
                Self::$variant(event)
            }
        }
    )*};
}

impl From<RequestDecided> for AuditEvent {
    fn from(event: RequestDecided) -> Self {
        Self::Request(Box::new(event))
    }
}

event_from!(
    Response(ResponsePartObserved),
    RequestRejected(RequestRejected),
    Approval(ApprovalEvent),
    ConfigChanged(ConfigChanged),
);

/// `skip_serializing_if` for flags written only when set.
pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// A field that is absent (outer `None`), `null` (inner `None`) or a value: for fields an
/// earlier build wrote only in some cases, and then possibly as `null`.
pub(crate) mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &Option<Option<T>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            // Only reached without `skip_serializing_if`; absent is then written as null.
            None | Some(None) => s.serialize_none(),
            Some(Some(v)) => v.serialize(s),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}
