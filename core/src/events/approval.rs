//! The steps of an approval (`approval` records): asked, announced to approvers, decided,
//! expired, used by a call and given back. The step is the discriminator (`"event"`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An `approval` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ApprovalEvent {
    Requested(ApprovalRequested),
    Notified(ApproversNotified),
    NotifyFailed(ApproverNotificationFailed),
    Approved(ApprovalGranted),
    Denied(ApprovalDenied),
    Expired(ApprovalExpired),
    Used(ApprovalUsed),
    UseReturned(ApprovalUseReturned),
}

impl ApprovalEvent {
    /// The approval every step names.
    pub fn approval(&self) -> &ApprovalFacts {
        match self {
            Self::Requested(e) => &e.approval,
            Self::Notified(e) => &e.approval,
            Self::NotifyFailed(e) => &e.approval,
            Self::Approved(e) => &e.approval,
            Self::Denied(e) => &e.approval,
            Self::Expired(e) => &e.approval,
            Self::Used(e) => &e.approval,
            Self::UseReturned(e) => &e.approval,
        }
    }

    /// The record's `event` value.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Requested(_) => "requested",
            Self::Notified(_) => "notified",
            Self::NotifyFailed(_) => "notify_failed",
            Self::Approved(_) => "approved",
            Self::Denied(_) => "denied",
            Self::Expired(_) => "expired",
            Self::Used(_) => "used",
            Self::UseReturned(_) => "use_returned",
        }
    }
}

/// What every approval record says about the approval and the call it is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalFacts {
    /// The approval's id (`apr_...`).
    pub approval_id: String,
    /// The caller whose call needs it.
    pub subject: String,
    /// The upstream the call goes to.
    pub upstream: String,
    /// The call's JSON-RPC method.
    pub mcp_method: String,
    /// The tool, prompt or resource the call names; `null` if none.
    pub tool: Option<String>,
    /// The policy rule that requires the approval.
    pub rule: String,
    /// The group whose members may decide.
    pub approver_group: String,
}

/// A call needs approval and none was pending for it: an approval was asked. The record's
/// request id is the request that asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequested {
    #[serde(flatten)]
    pub approval: ApprovalFacts,
    /// What approvers are shown: the tool's arguments (or another method's params), masked.
    pub arguments: Value,
    /// What masking changed in them (absent: nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked: Option<ArgumentsMasked>,
    /// When it expires undecided (RFC 3339, UTC).
    pub expires_at: String,
    /// Whether one approval lets one call through, or calls until the grant expires.
    pub single_use: bool,
    /// How long a grant lasts once approved, in seconds.
    pub grant_seconds: i64,
}

/// What masking changed in an approval's arguments, and what the rule said to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgumentsMasked {
    /// The rule's `masked_arguments` mode: `refuse`, `show_clear` or `show_masked`.
    pub mode: String,
    /// The masked values, where they were.
    pub spans: Vec<MaskedSpan>,
    /// Masked values beyond those listed.
    pub more: u64,
    /// The same in one sentence, as approvers read it.
    pub summary: String,
}

/// One masked value in an approval's arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedSpan {
    /// The kind the masker named (`email`, `aws_access_key`, ...).
    pub kind: String,
    /// RFC 6901 pointer of the argument that holds it (`""`: the arguments themselves).
    pub pointer: String,
    /// JSON text inside that string argument: the pointer within it (absent: not JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_pointer: Option<String>,
    /// Where the masked value started in the string, in characters; `null` when unknown.
    pub offset: Option<u64>,
    /// Characters of the original value; `null` where two masked values touch.
    pub length: Option<u64>,
}

/// Approvers were told of a new approval (webhook).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproversNotified {
    #[serde(flatten)]
    pub approval: ApprovalFacts,
    /// Deliveries tried, the successful one included.
    pub attempts: u32,
}

/// Approvers could not be told of a new approval (the webhook failed every retry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproverNotificationFailed {
    #[serde(flatten)]
    pub approval: ApprovalFacts,
    /// Deliveries tried.
    pub attempts: u32,
    /// Why the last one failed (never the webhook URL).
    pub error: String,
}

/// An approver approved (`"event": "approved"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalGranted {
    #[serde(flatten)]
    pub approval: ApprovalFacts,
    /// Who approved (their subject).
    pub approver: String,
    /// Their groups when they approved.
    pub approver_groups: Vec<String>,
    /// What they wrote; `null` when nothing.
    pub reason: Option<String>,
    /// Until when the grant lets calls through (RFC 3339, UTC).
    pub grant_expires_at: String,
}

/// An approver denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalDenied {
    #[serde(flatten)]
    pub approval: ApprovalFacts,
    /// Who denied (their subject).
    pub approver: String,
    /// Their groups when they denied.
    pub approver_groups: Vec<String>,
    /// Why (a denial needs a reason).
    pub reason: Option<String>,
}

/// Nobody decided in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalExpired {
    #[serde(flatten)]
    pub approval: ApprovalFacts,
}

/// A call went through on the approval's grant. The record's request id is that call's
/// (committed with its request record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalUsed {
    #[serde(flatten)]
    pub approval: ApprovalFacts,
    /// Calls let through by this approval so far, this one included.
    pub uses: i64,
    /// Whether the grant is spent by this use.
    pub single_use: bool,
    /// The request that asked for the approval.
    pub approval_request_id: String,
}

/// A use recorded as `used` was given back: the call was not let through after all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalUseReturned {
    #[serde(flatten)]
    pub approval: ApprovalFacts,
    /// Why, in words.
    pub reason: String,
}
