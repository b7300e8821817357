//! Tells approvers about a new approval: a Slack-compatible webhook (`{"text": ...}`),
//! retried with backoff. The outcome is an approval record (`notified` or
//! `notify_failed`). The webhook URL is a secret and never appears in a log or record.

use std::time::Duration;

use gatehouse_core::events::{ApprovalEvent, ApproverNotificationFailed, ApproversNotified};
use serde_json::json;
use url::Url;

use super::{Approval, time_of};
use crate::audit::AuditLog;
use crate::config::Webhook;
use crate::metrics::Metrics;

/// The first retry waits this long; each next one twice as long.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Tells approvers where to decide, and records whether they were told.
#[derive(Clone)]
pub struct Notifier {
    webhook: Option<Webhook>,
    /// The approvers' page (in JSON-RPC errors and notifications).
    ui_url: Url,
    audit: AuditLog,
    metrics: Metrics,
}

impl Notifier {
    pub fn new(config: &crate::config::Approvals, audit: AuditLog, metrics: Metrics) -> Self {
        Self {
            webhook: config.webhook.clone(),
            ui_url: config.ui_url.clone(),
            audit,
            metrics,
        }
    }

    /// Where an approver decides on this approval.
    pub fn approver_url(&self, id: &str) -> String {
        let mut url = self.ui_url.clone();
        url.query_pairs_mut().append_pair("approval", id);
        url.to_string()
    }

    /// Sends the notification in the background (the Check does not wait for it).
    pub fn announce(&self, approval: &Approval) {
        let Some(webhook) = self.webhook.clone() else {
            return;
        };
        let body = message(approval, &self.approver_url(&approval.id));
        let (audit, metrics, approval) = (self.audit.clone(), self.metrics.clone(), approval.clone());
        tokio::spawn(async move { record(&audit, &metrics, &approval, deliver(&webhook, &body).await).await });
    }
}

/// Records how a notification went (`notified` or `notify_failed`).
async fn record(audit: &AuditLog, metrics: &Metrics, approval: &Approval, outcome: Result<u32, (u32, String)>) {
    let event = match &outcome {
        Ok(attempts) => ApprovalEvent::Notified(ApproversNotified {
            approval: approval.facts(),
            attempts: *attempts,
        }),
        Err((attempts, error)) => ApprovalEvent::NotifyFailed(ApproverNotificationFailed {
            approval: approval.facts(),
            attempts: *attempts,
            error: error.clone(),
        }),
    };
    match &outcome {
        Ok(_) => metrics.approval_notifications.inc(),
        Err((_, error)) => {
            metrics.approval_notification_failures.inc();
            tracing::warn!(approval_id = %approval.id, error, "Could not notify approvers.");
        }
    }
    if let Err(error) = audit.append_event(&approval.request_id, event).await {
        tracing::error!(approval_id = %approval.id, %error, "Could not record the notification.");
    }
}

/// Slack's text escaping (`&`, `<`, `>`), and no backticks: names come from callers and must
/// not turn into mentions, links or broken formatting.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('`', "'")
}

/// The Slack-compatible body.
fn message(a: &Approval, approver_url: &str) -> serde_json::Value {
    let what = a
        .tool
        .as_deref()
        .map_or(escape(&a.method), |t| format!("the tool `{}`", escape(t)));
    let mut text = format!(
        "Gatehouse: {} asks to call {what} on `{}` (rule `{}`). Members of `{}` can approve or deny until {}: {}",
        escape(&a.subject),
        escape(&a.upstream),
        escape(&a.rule),
        escape(&a.approver_group),
        time_of(a.expires_ms),
        approver_url,
    );
    if let Some(masking) = &a.masking {
        text.push_str(&masked_note(masking));
    }
    json!({ "text": text })
}

/// What approvers are told when masking changed the arguments.
fn masked_note(masking: &super::Masking) -> String {
    let shown = match masking.mode {
        crate::policy::MaskedArguments::ShowClear => {
            "the page shows you the clear arguments: read them before you approve"
        }
        _ => "you will see them masked",
    };
    // Kinds, pointers and numbers only; pointers come from the caller's keys.
    format!(
        "\nWARNING: the arguments were changed by masking ({}); {shown}.",
        escape(&masking.report.sentence())
    )
}

/// Posts until a 2xx answer or `attempts` tries; Ok(tries) or Err((tries, why)).
async fn deliver(webhook: &Webhook, body: &serde_json::Value) -> Result<u32, (u32, String)> {
    let client = match reqwest::Client::builder()
        .timeout(webhook.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => return Err((0, format!("cannot build an HTTP client: {}", e.without_url()))),
    };
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=webhook.attempts {
        match client.post(webhook.url.clone()).json(body).send().await {
            Ok(resp) if resp.status().is_success() => return Ok(attempt),
            Ok(resp) => last = format!("the webhook answered {}", resp.status()),
            Err(e) => last = format!("the webhook could not be reached: {}", e.without_url()),
        }
        if attempt < webhook.attempts {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    Err((webhook.attempts, last))
}

#[cfg(test)]
mod tests {
    #[test]
    fn caller_chosen_names_cannot_mention_or_link() {
        let text = super::escape("x` <!channel> <https://evil|Approve here> & more");
        assert_eq!(text, "x' &lt;!channel&gt; &lt;https://evil|Approve here&gt; &amp; more");
    }

    #[test]
    fn the_notice_says_plainly_what_was_masked() {
        use crate::approvals::{MaskReport, Masking};
        use crate::policy::MaskedArguments;
        let report = MaskReport::of(
            &serde_json::json!({"sql": "x a@b.io y"}),
            &serde_json::json!({"sql": "x [MASKED:email] y"}),
        );
        for (mode, shown) in [
            (MaskedArguments::ShowClear, "clear arguments"),
            (MaskedArguments::ShowMasked, "masked"),
        ] {
            let note = super::masked_note(&Masking {
                mode,
                report: report.clone(),
            });
            assert!(
                note.contains("WARNING: the arguments were changed by masking"),
                "{note}"
            );
            assert!(
                note.contains("email in argument /sql at character 2, 6 characters"),
                "{note}"
            );
            assert!(note.contains(shown), "{note}");
            assert!(!note.contains("a@b.io"), "{note}");
        }
    }
}
