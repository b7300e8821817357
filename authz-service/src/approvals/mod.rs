//! Just-in-time approvals: a call a rule marks `approve` waits for a human decision.
//!
//! A call that needs approval creates an approval, or joins the pending one of an identical
//! call (same caller, upstream, method, tool and canonical arguments: the approval's key).
//! The Check then holds the call up to the rule's hold time; approved in time, it goes
//! through. Otherwise the client gets a JSON-RPC error with the approval's id, status and
//! the approvers' page, and the same call sent again once approved is let through (once,
//! or for the grant's lifetime). A denial stands for the grant's lifetime too.
//!
//! Approvers decide with their own token over REST (`rest/approvals.rs`) or the page; they
//! must be in the rule's approver group and may not decide on their own calls. Every step
//! (requested, notified, approved, denied, expired, used, use_returned) is an `approval` record in the
//! audit trail. The state lives in the `approvals` table next to the trail, so pending
//! approvals survive a restart.
//!
//! Approvers never approve text they could not read: when masking changed a call's
//! arguments, the approval says what was masked where (`masked.rs`), and the rule's
//! `masked_arguments` decides: refuse the call (the default), show approvers the clear
//! arguments (sealed in the database while pending, never in the trail: `replicas.rs`), or
//! show them masked.
//!
//! One caller cannot fill the gateway with waiting calls: held Checks and pending approvals
//! are capped per caller across every replica of the database (and held Checks in all, per
//! replica); over a cap the call is refused, not held.
//!
//! Transitions (create, decide, expire) take turns — in-process, and on PostgreSQL under an
//! advisory lock across replicas — and write their record before the state changes, so
//! exactly one decision wins and the trail never lacks a step that the state shows.

pub mod masked;
pub mod notify;
pub mod replicas;
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::audit::canonical_json;
use gatehouse_core::events::{
    ApprovalDenied, ApprovalEvent, ApprovalExpired, ApprovalFacts, ApprovalGranted, ApprovalRequested,
    ApprovalUseReturned, ApprovalUsed, ArgumentsMasked,
};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;
use thiserror::Error;
use tokio::sync::watch;

use crate::audit::{AuditError, AuditLog, NewRecord, format_time};
use crate::metrics::Metrics;
use crate::policy::{ApprovalSpec, MaskedArguments};

pub use masked::MaskReport;
pub use notify::Notifier;
pub use replicas::Replicas;
pub use store::ApprovalStore;

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
    /// A single-use grant that let its call through.
    Used,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Used => "used",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Approved, Self::Denied, Self::Expired, Self::Used]
            .into_iter()
            .find(|status| status.as_str() == s)
    }
}

/// One approval. Arguments are masked: the table, like the trail, never holds a clear value.
#[derive(Debug, Clone)]
pub struct Approval {
    pub id: String,
    pub status: Status,
    pub subject: String,
    pub upstream: String,
    pub method: String,
    pub tool: Option<String>,
    pub arguments: Value,
    pub rule: String,
    pub approver_group: String,
    pub single_use: bool,
    pub grant_ms: i64,
    /// The request that asked first.
    pub request_id: String,
    pub requested_ms: i64,
    pub expires_ms: i64,
    pub decided_ms: Option<i64>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub grant_expires_ms: Option<i64>,
    pub uses: i64,
    /// What masking changed in the arguments, and what the rule said to do about it
    /// (`None`: the arguments are shown as sent).
    pub masking: Option<Masking>,
}

/// An approval whose arguments masking changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Masking {
    pub mode: MaskedArguments,
    #[serde(flatten)]
    pub report: MaskReport,
}

impl Masking {
    /// What the `requested` record says was masked where; never a clear value.
    fn to_event(&self) -> ArgumentsMasked {
        ArgumentsMasked {
            mode: self.mode.as_str().to_owned(),
            spans: self.report.spans.iter().map(masked::MaskedSpan::to_event).collect(),
            more: self.report.more as u64,
            summary: self.report.sentence(),
        }
    }

    /// The same for the REST API and the page.
    fn to_json(&self) -> Value {
        serde_json::to_value(self.to_event()).unwrap_or(Value::Null)
    }
}

impl Approval {
    /// Why `approver` may not decide on this approval at `now` (`None`: they may). The REST
    /// view's `can_decide` and [`Approvals::decide`] ask this one question.
    pub fn refusal_for(&self, approver: &crate::identity::Principal, now: i64) -> Option<DecideError> {
        if !approver.groups.contains(&self.approver_group) {
            return Some(DecideError::Forbidden(format!(
                "only members of {:?} may decide on this approval",
                self.approver_group
            )));
        }
        if approver.subject == self.subject {
            return Some(DecideError::Forbidden("you cannot decide on your own request".into()));
        }
        if self.status != Status::Pending || self.expires_ms <= now {
            let mut as_it_stands = self.clone();
            if as_it_stands.status == Status::Pending {
                // Not swept yet, but over.
                as_it_stands.status = Status::Expired;
            }
            return Some(DecideError::Conflict(Box::new(as_it_stands)));
        }
        None
    }

    /// The approval as the REST API and the page show it.
    pub fn expires_at(&self) -> String {
        time_of(self.expires_ms)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "status": self.status,
            "subject": self.subject,
            "upstream": self.upstream,
            "method": self.method,
            "tool": self.tool,
            "arguments": self.arguments,
            "rule": self.rule,
            "approver_group": self.approver_group,
            "requested_at": time_of(self.requested_ms),
            "expires_at": self.expires_at(),
            "decided_at": self.decided_ms.map(time_of),
            "decided_by": self.decided_by,
            "reason": self.reason,
            "grant_expires_at": self.grant_expires_ms.map(time_of),
            "single_use": self.single_use,
            "uses": self.uses,
            "request_id": self.request_id,
            "masked": self.masking.as_ref().map(Masking::to_json),
        })
    }

    /// What every record of this approval says about it.
    fn facts(&self) -> ApprovalFacts {
        ApprovalFacts {
            approval_id: self.id.clone(),
            subject: self.subject.clone(),
            upstream: self.upstream.clone(),
            mcp_method: self.method.clone(),
            tool: self.tool.clone(),
            rule: self.rule.clone(),
            approver_group: self.approver_group.clone(),
        }
    }
}

pub(crate) fn time_of(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(format_time)
        .unwrap_or_default()
}

pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// One call that a rule says needs approval.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub subject: &'a str,
    pub upstream: &'a str,
    pub method: &'a str,
    pub tool: Option<&'a str>,
    /// The request's `params` as sent, without `_meta`: with the method they are what the
    /// call acts on (tool and arguments, prompt, resource URI, ...), so they make the key.
    /// Never stored.
    pub params: Option<&'a Value>,
    /// What approvers are shown: the tool's arguments (or the params of other methods), masked.
    pub masked_arguments: &'a Value,
    pub rule: &'a str,
    pub spec: &'a ApprovalSpec,
    pub request_id: &'a str,
}

impl Call<'_> {
    /// What approvers would read in clear: the tool's arguments, or the other methods' params.
    fn clear_arguments(&self) -> Value {
        let params = self.params.cloned().unwrap_or(Value::Null);
        if self.method == "tools/call" {
            params.get("arguments").cloned().unwrap_or(Value::Null)
        } else {
            params
        }
    }
}

/// What the approval gate says about a call.
#[derive(Debug)]
pub enum Gate {
    /// A grant lets the call through; `used` is its record, to commit with the request's,
    /// and `hold` gives the use back unless kept.
    Granted {
        approval: Box<Approval>,
        used: NewRecord,
        hold: GrantUse,
    },
    /// Not let through; the approval's status says why: still `pending` (newly asked,
    /// joined, or the hold ran out), `denied`, or `expired` while the call was held.
    Stopped(Approval),
    /// Refused before any approval was asked or any hold began.
    Refused(Refusal),
}

/// Why a call that needs approval was refused outright.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// Masking changed the arguments, and the rule says `masked_arguments: refuse`.
    MaskedArguments(MaskReport),
    /// The caller already has `limit` calls held (or all callers together, `total`).
    TooManyHeld { limit: u32, total: bool },
    /// The caller already has `limit` pending approvals.
    TooManyPending { limit: u32 },
}

impl Refusal {
    /// The HTTP status of the answer.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::MaskedArguments(_) => 403,
            Self::TooManyHeld { .. } | Self::TooManyPending { .. } => 429,
        }
    }

    /// The JSON-RPC error code of the answer.
    pub fn jsonrpc_code(&self) -> i64 {
        use gatehouse_core::jsonrpc_error;
        match self {
            Self::MaskedArguments(_) => jsonrpc_error::FORBIDDEN,
            Self::TooManyHeld { .. } | Self::TooManyPending { .. } => jsonrpc_error::APPROVAL_LIMIT,
        }
    }

    /// What the client is told (kinds and pointers only, never a value).
    pub fn message(&self) -> String {
        match self {
            Self::MaskedArguments(report) => format!(
                "This call needs an approval, but the gateway masks some of its arguments ({}), so an approver \
                 could not read what they would approve. It was refused and not forwarded: send it without those values.",
                report.sentence()
            ),
            Self::TooManyHeld { limit, total: false } => format!(
                "This call needs an approval, and you already have {limit} calls waiting for one: it was not held \
                 or forwarded. Send it again once some are decided."
            ),
            Self::TooManyHeld { total: true, .. } => "This call needs an approval, and the gateway is holding as \
                 many calls as it can: it was not held or forwarded. Send it again later."
                .into(),
            Self::TooManyPending { limit } => format!(
                "This call needs an approval, and you already have {limit} approvals pending: no new one was \
                 asked and the call was not forwarded. Send it again once some are decided or expired."
            ),
        }
    }

    /// For the record and the log.
    pub fn reason(&self) -> String {
        match self {
            Self::MaskedArguments(report) => format!(
                "masked arguments ({}) and masked_arguments: refuse",
                report.kinds().join(", ")
            ),
            Self::TooManyHeld { limit, total: false } => {
                format!("caller already holds {limit} calls (max_held_per_caller)")
            }
            Self::TooManyHeld { limit, total: true } => format!("{limit} calls held in all (max_held)"),
            Self::TooManyPending { limit } => {
                format!("caller already has {limit} pending approvals (max_pending_per_caller)")
            }
        }
    }

    /// More for the JSON-RPC error's `data`.
    pub fn data(&self) -> Value {
        match self {
            Self::MaskedArguments(report) => json!({"masked": report}),
            Self::TooManyHeld { limit, total } => {
                json!({"limit": if *total { "max_held" } else { "max_held_per_caller" }, "max": limit})
            }
            Self::TooManyPending { limit } => json!({"limit": "max_pending_per_caller", "max": limit}),
        }
    }
}

#[derive(Debug, Error)]
pub enum ApprovalError {
    #[error("approvals store: {0}")]
    Store(#[from] sqlx::Error),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Why a decision was refused; the text is safe to show the approver.
#[derive(Debug, Error)]
pub enum DecideError {
    #[error("no such approval")]
    NotFound,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the approval is already {}", .0.status.as_str())]
    Conflict(Box<Approval>),
    /// Approving would mean approving text the approver could not read.
    #[error("{0}")]
    Unreadable(String),
    #[error(transparent)]
    Unavailable(#[from] ApprovalError),
}

/// One use of a grant, given back when dropped unless [`GrantUse::keep`] was called: the
/// call it was taken for was not let through (its records could not be committed, or Envoy
/// gave up on the Check). Once its `used` record is committed ([`GrantUse::recorded`]), a
/// use given back is recorded too (`use_returned`), so the trail never shows a use whose
/// call did not go out without saying so.
pub struct GrantUse {
    store: ApprovalStore,
    approval_id: String,
    kept: bool,
    /// The `use_returned` record, prepared when the use was taken.
    returned: Option<Box<NewRecord>>,
    /// The trail to write it to, once `used` is in it.
    audit: Option<AuditLog>,
}

impl GrantUse {
    /// The call was let through: the use stands.
    pub fn keep(mut self) {
        self.kept = true;
    }

    /// The `used` record is committed: a use given back from now on is recorded.
    pub fn recorded(&mut self, audit: &AuditLog) {
        self.audit = Some(audit.clone());
    }
}

impl std::fmt::Debug for GrantUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantUse")
            .field("approval_id", &self.approval_id)
            .field("kept", &self.kept)
            .field("recorded", &self.audit.is_some())
            .finish()
    }
}

impl Drop for GrantUse {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let (store, id) = (self.store.clone(), std::mem::take(&mut self.approval_id));
        let (record, audit) = (self.returned.take(), self.audit.take());
        tracing::warn!(approval_id = %id, "A call that used an approval was not let through; the use is given back.");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let (Some(audit), Some(record)) = (audit, record)
                    && let Err(error) = audit.append(vec![*record]).await
                {
                    tracing::error!(approval_id = %id, %error, "Could not record that an approval's use was given back.");
                }
                if let Err(error) = store.restore_use(&id).await {
                    tracing::error!(approval_id = %id, %error, "Could not give back an approval's use.");
                }
            });
        }
    }
}

/// The approvals of one service. It is given what it uses when it is made (its store, the
/// audit trail, the metrics, the notifier and its caps) and knows nothing of the service
/// around it; the Check and the REST API share it through an `Arc`.
pub struct Approvals {
    store: ApprovalStore,
    keys: CallKeys,
    limits: Limits,
    audit: AuditLog,
    metrics: Metrics,
    notifier: Notifier,
    /// Bumped on every decision and expiry: held Checks wake and look again.
    changed: watch::Sender<u64>,
    /// Calls held in a Check by this replica now (`max_held`), and per caller.
    held: std::sync::Mutex<Held>,
    /// What the replicas share about held calls: per caller, per approval, and the clear
    /// arguments of pending `show_clear` approvals (sealed; never in the trail).
    replicas: Arc<Replicas>,
}

/// Makes the key of a call.
#[derive(Clone)]
pub struct CallKeys {
    /// Keys the approval key (the masking token key, so a low-entropy argument cannot be
    /// guessed from a key); without one, a plain hash.
    key: Option<Vec<u8>>,
}

impl CallKeys {
    pub fn new(key: Option<Vec<u8>>) -> Self {
        Self { key }
    }

    /// The key of a call: identical calls share it.
    pub fn of(&self, call: &Call<'_>) -> String {
        let canonical = canonical_json(&json!({
            "subject": call.subject,
            "upstream": call.upstream,
            "method": call.method,
            "tool": call.tool,
            "params": call.params.cloned().unwrap_or(Value::Null),
            // A grant answers one rule's question to one group: a changed rule asks anew.
            "rule": call.rule,
            "approver_group": call.spec.approver_group,
        }));
        match &self.key {
            Some(key) => match Hmac::<Sha256>::new_from_slice(key) {
                Ok(mut mac) => {
                    mac.update(&canonical);
                    hex::encode(mac.finalize().into_bytes())
                }
                Err(_) => hex::encode(<Sha256 as sha2::Digest>::digest(&canonical)),
            },
            None => hex::encode(<Sha256 as sha2::Digest>::digest(&canonical)),
        }
    }
}

/// The caps on held calls and pending approvals (`approvals.max_*`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_held_per_caller: u32,
    pub max_held: u32,
    pub max_pending_per_caller: u32,
}

impl From<&crate::config::Approvals> for Limits {
    fn from(config: &crate::config::Approvals) -> Self {
        Self {
            max_held_per_caller: config.max_held_per_caller,
            max_held: config.max_held,
            max_pending_per_caller: config.max_pending_per_caller,
        }
    }
}

/// One held call: counted in this replica's `max_held`, and a row of `held_calls` (the
/// caller's cap across replicas, "alice is waiting") until [`HeldSlot::end`] — or until
/// dropped, when Envoy gives up on the Check.
struct HeldSlot<'a> {
    approvals: &'a Approvals,
    subject: String,
    /// Its `held_calls` row, once taken.
    row: Option<String>,
    /// The approval its row says it waits on.
    waits_on: Option<String>,
}

impl HeldSlot<'_> {
    /// The call stops waiting: its row goes before the gate answers, so the caller's next
    /// call finds its cap as it should. Cancelled half-way, `Drop` deletes it (again).
    async fn end(mut self) {
        if let Some(row) = self.row.clone() {
            self.approvals.replicas.release(row).await;
            self.row = None;
        }
    }
}

impl Drop for HeldSlot<'_> {
    fn drop(&mut self) {
        self.approvals
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .release(&self.subject);
        if let Some(row) = self.row.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let replicas = Arc::clone(&self.approvals.replicas);
            runtime.spawn(async move { replicas.release(row).await });
        }
    }
}

/// The calls this replica holds in a Check now, in all and per caller.
#[derive(Default)]
struct Held {
    total: u32,
    by_subject: HashMap<String, u32>,
}

impl Held {
    fn release(&mut self, subject: &str) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.by_subject.get_mut(subject) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_subject.remove(subject);
            }
        }
    }
}

/// Why a `show_clear` approval whose clear arguments are gone cannot be approved.
const UNREADABLE: &str = "the arguments of this call were masked and the gateway can no longer show them in clear \
     (it restarted without a session key file, or replicas do not share one): it cannot be approved as is. \
     Deny it, or wait for the caller to send the call again, which shows them.";

/// How often a held Check looks at its approval even without a wake-up.
const HOLD_POLL: Duration = Duration::from_secs(1);
/// How often pending approvals are checked for expiry.
pub const SWEEP: Duration = Duration::from_secs(1);

impl Approvals {
    /// The approvals kept in `store`, recorded in `audit` and announced by `notifier`.
    pub fn new(
        store: ApprovalStore,
        keys: CallKeys,
        limits: Limits,
        audit: AuditLog,
        metrics: Metrics,
        notifier: Notifier,
        replicas: Replicas,
    ) -> Self {
        Self {
            store,
            keys,
            limits,
            audit,
            metrics,
            notifier,
            changed: watch::channel(0).0,
            held: std::sync::Mutex::default(),
            replicas: Arc::new(replicas),
        }
    }

    /// What the replicas share about held calls.
    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    /// Where an approver decides on this approval.
    pub fn approver_url(&self, id: &str) -> String {
        self.notifier.approver_url(id)
    }

    /// Per approval, the calls held on it now by any live replica: since when (ms since the
    /// epoch) the first has waited, and how many. An approval no call waits on (the caller
    /// gave up or retries later) is absent.
    pub async fn waiting(&self) -> Result<HashMap<String, (i64, u32)>, ApprovalError> {
        Ok(self.replicas.waiting().await?)
    }

    /// A held slot for `subject`, or why there is none: this replica's `max_held` first,
    /// then the caller's calls held on every live replica.
    async fn hold_slot(&self, subject: &str) -> Result<Result<HeldSlot<'_>, Refusal>, ApprovalError> {
        let limits = &self.limits;
        {
            let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if held.total >= limits.max_held {
                return Ok(Err(Refusal::TooManyHeld {
                    limit: limits.max_held,
                    total: true,
                }));
            }
            // This replica alone holds (or is taking) the caller's whole share: refused
            // without a database round trip, so a flood of one caller's calls never queues
            // on the database in front of other callers.
            let mine = held.by_subject.entry(subject.to_owned()).or_default();
            if *mine >= limits.max_held_per_caller {
                return Ok(Err(Refusal::TooManyHeld {
                    limit: limits.max_held_per_caller,
                    total: false,
                }));
            }
            *mine += 1;
            held.total += 1;
        }
        // Counted from here, and its row deleted, on every way out below (also when the Check
        // is cancelled while the row is being inserted).
        let mut slot = HeldSlot {
            approvals: self,
            subject: subject.to_owned(),
            row: Some(replicas::new_held_id()),
            waits_on: None,
        };
        let row = slot.row.clone().unwrap_or_default();
        if !self.replicas.hold(&row, subject, limits.max_held_per_caller).await? {
            slot.row = None;
            return Ok(Err(Refusal::TooManyHeld {
                limit: limits.max_held_per_caller,
                total: false,
            }));
        }
        Ok(Ok(slot))
    }

    /// The clear arguments of a pending approval, if they are kept and readable here.
    pub async fn clear_arguments(&self, id: &str) -> Result<Option<Value>, ApprovalError> {
        Ok(self.replicas.clear(id).await?)
    }

    /// Drops the clear arguments of approvals no longer pending; a failure only delays it
    /// (every heartbeat does it too).
    async fn forget_settled_clear(&self) {
        if let Err(error) = self.replicas.forget_settled_clear().await {
            tracing::warn!(%error, "Could not delete the clear arguments of decided approvals yet.");
        }
    }

    /// Whether an approver can read what they would approve: the arguments were not
    /// masked, the rule shows them masked, or their clear form is kept and opens here.
    pub async fn readable(&self, a: &Approval) -> Result<bool, ApprovalError> {
        Ok(match &a.masking {
            None => true,
            Some(m) => m.mode != MaskedArguments::ShowClear || self.clear_arguments(&a.id).await?.is_some(),
        })
    }

    pub fn store(&self) -> &ApprovalStore {
        &self.store
    }

    /// Decides what happens to a call that needs approval, holding it up to `hold`.
    pub async fn gate(self: &Arc<Self>, call: &Call<'_>, hold: Duration) -> Result<Gate, ApprovalError> {
        let mut slot = None;
        let gate = self.gate_holding(call, hold, &mut slot).await;
        if let Some(slot) = slot {
            slot.end().await;
        }
        gate
    }

    /// [`Approvals::gate`], with the held slot it takes (if the call waits) left in `slot`.
    async fn gate_holding<'a>(
        self: &'a Arc<Self>,
        call: &Call<'_>,
        hold: Duration,
        slot: &mut Option<HeldSlot<'a>>,
    ) -> Result<Gate, ApprovalError> {
        let key = self.keys.of(call);
        let clear = call.clear_arguments();
        let report = MaskReport::of(&clear, call.masked_arguments);
        let masking = (!report.is_empty()).then_some(Masking {
            mode: call.spec.masked_arguments,
            report,
        });
        if let Some(Masking {
            mode: MaskedArguments::Refuse,
            report,
        }) = &masking
        {
            return Ok(Gate::Refused(Refusal::MaskedArguments(report.clone())));
        }
        let shown_clear = masking
            .as_ref()
            .filter(|m| m.mode == MaskedArguments::ShowClear)
            .map(|_| clear);
        let deadline = tokio::time::Instant::now() + hold;
        let mut wake = self.changed.subscribe();
        let mut asked: Option<String> = None;
        // The approval whose clear arguments this call has kept.
        let mut kept_clear: Option<String> = None;
        loop {
            self.expire_due().await?;
            // The approval this call waits on ended without a grant for it.
            if let Some(id) = &asked {
                match self.store.get(id).await? {
                    Some(a) if matches!(a.status, Status::Expired | Status::Denied) => return Ok(Gate::Stopped(a)),
                    _ => {}
                }
            }
            if let Some(approval) = self.store.use_grant(&key, now_ms()).await? {
                let used = NewRecord::from_event(
                    call.request_id,
                    ApprovalEvent::Used(ApprovalUsed {
                        approval: approval.facts(),
                        uses: approval.uses,
                        single_use: approval.single_use,
                        approval_request_id: approval.request_id.clone(),
                    }),
                )?;
                let returned = NewRecord::from_event(
                    call.request_id,
                    ApprovalEvent::UseReturned(ApprovalUseReturned {
                        approval: approval.facts(),
                        reason:
                            "the call was not let through after all (Envoy gave up on the Check): the use is given back"
                                .into(),
                    }),
                )?;
                let hold = GrantUse {
                    store: self.store.clone(),
                    approval_id: approval.id.clone(),
                    kept: false,
                    returned: Some(Box::new(returned)),
                    audit: None,
                };
                return Ok(Gate::Granted {
                    approval: Box::new(approval),
                    used,
                    hold,
                });
            }
            if let Some(denial) = self.store.standing_denial(&key, now_ms()).await? {
                return Ok(Gate::Stopped(denial));
            }
            // Only a call that will wait takes a held slot; one a grant lets through never does.
            if slot.is_none() && !hold.is_zero() {
                match self.hold_slot(call.subject).await? {
                    Ok(s) => *slot = Some(s),
                    Err(refusal) => return Ok(Gate::Refused(refusal)),
                }
            }
            // Joins the pending one, or asks anew (also when a twin call used up the grant).
            let approval = match self.join_or_ask(call, &key, masking.as_ref()).await? {
                Ok(approval) => approval,
                Err(refusal) => return Ok(Gate::Refused(refusal)),
            };
            if let Some(clear) = &shown_clear
                && approval.status == Status::Pending
                && kept_clear.as_ref() != Some(&approval.id)
            {
                // Also after a restart: the caller's retry makes the approval readable again.
                self.replicas.keep_clear(&approval.id, clear).await?;
                kept_clear = Some(approval.id.clone());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Gate::Stopped(approval));
            }
            // Approvers see that someone is waiting on this approval (on any replica).
            if let Some(held) = slot.as_mut()
                && held.waits_on.as_ref() != Some(&approval.id)
                && let Some(row) = &held.row
            {
                self.replicas.waits_on(row, &approval.id).await?;
                held.waits_on = Some(approval.id.clone());
            }
            asked = Some(approval.id);
            // Wait for a change (or the next poll).
            let _ = tokio::time::timeout(HOLD_POLL.min(deadline - now), wake.changed()).await;
        }
    }

    /// The pending approval of this call, or a new one (recorded, then announced).
    async fn join_or_ask(
        self: &Arc<Self>,
        call: &Call<'_>,
        key: &str,
        masking: Option<&Masking>,
    ) -> Result<Result<Approval, Refusal>, ApprovalError> {
        let now = now_ms();
        let approval = Approval {
            id: new_approval_id(),
            status: Status::Pending,
            subject: call.subject.to_owned(),
            upstream: call.upstream.to_owned(),
            method: call.method.to_owned(),
            tool: call.tool.map(str::to_owned),
            arguments: call.masked_arguments.clone(),
            rule: call.rule.to_owned(),
            approver_group: call.spec.approver_group.clone(),
            single_use: call.spec.single_use,
            grant_ms: (call.spec.grant_seconds * 1000) as i64,
            request_id: call.request_id.to_owned(),
            requested_ms: now,
            expires_ms: now + (call.spec.expires_seconds * 1000) as i64,
            decided_ms: None,
            decided_by: None,
            reason: None,
            grant_expires_ms: None,
            uses: 0,
            masking: masking.cloned(),
        };
        // In its own task: a Check that Envoy gives up on must not stop it half-way.
        let (approvals, key) = (Arc::clone(self), key.to_owned());
        tokio::spawn(async move { approvals.ask(approval, &key).await })
            .await
            .map_err(|e| ApprovalError::Audit(AuditError::Invalid(format!("approval task failed: {e}"))))?
    }

    /// Joins the pending approval of `key`, or records `approval` as asked and stores it.
    async fn ask(&self, approval: Approval, key: &str) -> Result<Result<Approval, Refusal>, ApprovalError> {
        // Create, decide and expire take turns (each writes its record, then changes state).
        let turn = self.store.turn().await?;
        if let Some(pending) = self.store.pending_for(key).await? {
            return Ok(Ok(pending));
        }
        // Counted in the turn: concurrent asks of one caller cannot all pass the cap.
        let limit = self.limits.max_pending_per_caller;
        if self.store.pending_count(&approval.subject).await? >= u64::from(limit) {
            return Ok(Err(Refusal::TooManyPending { limit }));
        }
        let requested = ApprovalEvent::Requested(ApprovalRequested {
            approval: approval.facts(),
            arguments: approval.arguments.clone(),
            masked: approval.masking.as_ref().map(Masking::to_event),
            expires_at: time_of(approval.expires_ms),
            single_use: approval.single_use,
            grant_seconds: approval.grant_ms / 1000,
        });
        // The record first: the state never shows an approval the trail lacks.
        self.audit.append_event(&approval.request_id, requested).await?;
        self.store.insert(&approval, key).await?;
        turn.end().await?;
        self.metrics.approvals_requested.inc();
        tracing::info!(approval_id = %approval.id, subject = %approval.subject, rule = %approval.rule, "Approval requested.");
        self.notifier.announce(&approval);
        Ok(Ok(approval))
    }

    /// An approver's decision. The first decision on a pending approval wins; every other
    /// one gets [`DecideError::Conflict`] with the approval as it stands.
    pub async fn decide(
        &self,
        id: &str,
        approver: &crate::identity::Principal,
        approve: bool,
        reason: Option<String>,
    ) -> Result<Approval, DecideError> {
        let reason = reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
        if !approve && reason.is_none() {
            return Err(DecideError::Invalid("a denial needs a reason".into()));
        }
        if reason.as_ref().is_some_and(|r| r.chars().count() > 1000) {
            return Err(DecideError::Invalid("the reason is longer than 1000 characters".into()));
        }
        self.expire_due().await?;
        let mut turn = self.store.turn().await.map_err(ApprovalError::from)?;
        let mut approval = self
            .store
            .get(id)
            .await
            .map_err(ApprovalError::from)?
            .ok_or(DecideError::NotFound)?;
        let now = now_ms();
        if let Some(refusal) = approval.refusal_for(approver, now) {
            return Err(refusal);
        }
        if approve && !self.readable(&approval).await? {
            return Err(DecideError::Unreadable(UNREADABLE.into()));
        }
        approval.status = if approve { Status::Approved } else { Status::Denied };
        approval.decided_ms = Some(now);
        approval.decided_by = Some(approver.subject.clone());
        approval.reason = reason;
        let until = now + approval.grant_ms;
        approval.grant_expires_ms = approve.then_some(until);
        let (approval_facts, approver_groups) = (approval.facts(), approver.groups.iter().cloned().collect());
        let decided = if approve {
            ApprovalEvent::Approved(ApprovalGranted {
                approval: approval_facts,
                approver: approver.subject.clone(),
                approver_groups,
                reason: approval.reason.clone(),
                grant_expires_at: time_of(until),
            })
        } else {
            ApprovalEvent::Denied(ApprovalDenied {
                approval: approval_facts,
                approver: approver.subject.clone(),
                approver_groups,
                reason: approval.reason.clone(),
            })
        };
        self.audit
            .append_event(&approval.request_id, decided)
            .await
            .map_err(ApprovalError::from)?;
        if !self.store.decide(&approval).await.map_err(ApprovalError::from)? {
            // Cannot happen while transitions take turns; say so loudly if it does.
            tracing::error!(approval_id = %approval.id, "A recorded decision found the approval no longer pending.");
        }
        turn.changed();
        turn.end().await.map_err(ApprovalError::from)?;
        if approve {
            self.metrics.approvals_approved.inc();
        } else {
            self.metrics.approvals_denied.inc();
        }
        self.forget_settled_clear().await;
        tracing::info!(approval_id = %approval.id, approver = %approver.subject, decision = approval.status.as_str(), "Approval decided.");
        self.changed.send_modify(|n| *n += 1);
        Ok(approval)
    }

    /// Expires pending approvals whose time is up (each recorded first), in batches.
    pub async fn expire_due(&self) -> Result<(), ApprovalError> {
        let now = now_ms();
        if !self.store.any_due(now).await? {
            return Ok(());
        }
        let mut turn = self.store.turn().await?;
        loop {
            let due = self.store.due(now).await?;
            if due.is_empty() {
                return Ok(turn.end().await?);
            }
            let records = due
                .iter()
                .map(|a| {
                    let expired = ApprovalEvent::Expired(ApprovalExpired { approval: a.facts() });
                    NewRecord::from_event(a.request_id.clone(), expired)
                })
                .collect::<Result<_, _>>()?;
            self.audit.append(records).await?;
            // Exactly the rows just recorded (in the turn none of them can change).
            let ids: Vec<&str> = due.iter().map(|a| a.id.as_str()).collect();
            self.store.expire(&ids).await?;
            self.forget_settled_clear().await;
            for a in &due {
                tracing::info!(approval_id = %a.id, "Approval expired.");
            }
            self.metrics.approvals_expired.add(due.len() as u64);
            self.changed.send_modify(|n| *n += 1);
            turn.changed();
            if due.len() < store::DUE_BATCH {
                return Ok(turn.end().await?);
            }
        }
    }
}

/// Wakes the calls this replica holds when another replica announces a change (PostgreSQL
/// `LISTEN`), until `stop`. Held calls also look every [`HOLD_POLL`], so a lost notification
/// (the connection dropped and is being made again) delays a release, never loses it.
pub async fn listen_for_changes(approvals: Arc<Approvals>, pool: sqlx::PgPool, mut stop: watch::Receiver<bool>) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "Cannot listen for approval changes of other replicas; will try again.");
                tokio::select! {
                    () = tokio::time::sleep(HOLD_POLL) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        if let Err(error) = listener.listen(store::CHANGED_CHANNEL).await {
            tracing::warn!(%error, "Cannot listen for approval changes of other replicas; will try again.");
            tokio::time::sleep(HOLD_POLL).await;
            continue;
        }
        tracing::debug!(
            channel = store::CHANGED_CHANNEL,
            "Listening for approval changes of other replicas."
        );
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => {
                        tracing::debug!("Another replica changed approvals.");
                        approvals.changed.send_modify(|n| *n += 1);
                    }
                    // The connection was lost: a change may have been missed meanwhile.
                    Ok(None) => approvals.changed.send_modify(|n| *n += 1),
                    Err(error) => {
                        tracing::warn!(%error, "Lost the approval change notifications; listening again.");
                        approvals.changed.send_modify(|n| *n += 1);
                        break;
                    }
                },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Expires approvals every [`SWEEP`] until `stop`.
pub async fn sweep(approvals: Arc<Approvals>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(SWEEP) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(error) = approvals.expire_due().await {
            tracing::warn!(%error, "Could not expire approvals; will try again.");
        }
    }
}

fn new_approval_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("apr_{}", hex::encode(bytes))
}

#[cfg(test)]
pub(crate) mod tests;
