//! `gatehouse evidence`: a SOC 2 evidence pack for a period, read from the trail.
//!
//! One section per control, each a table (CSV, and in an HTML report an assessor can read)
//! with the numbers in `summary.json`: CC6.1 logical access (who could reach which upstream,
//! who did), CC6.2/6.3 approvals, CC6.7 confidentiality (masked values, answers withheld),
//! CC7.2 monitoring (trail completeness, the chain's verification, the newest checkpoints),
//! CC8.1 change management (`config_changed` records). The pack is a signed bundle
//! (`audit/bundle.rs`), checked by `gatehouse audit verify-export` like a session export.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use gatehouse_core::audit::{Checkpoint, Record};
use serde::Serialize;
use serde_json::{Value, json};

use crate::audit::bundle::{self, to_json_lines};
use crate::audit::checkpoint::{CheckpointSigner, signature_valid};
use crate::audit::{Store, verify};
use crate::config::Config;

pub const KIND: &str = "evidence";
const PAGE: u32 = 2_000;

/// One table: a name, its columns and rows (text cells).
#[derive(Debug, Clone, Serialize)]
struct Table {
    file: &'static str,
    title: &'static str,
    columns: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

#[derive(Debug, Default)]
struct ApprovalRow {
    requested_at: String,
    requester: String,
    upstream: String,
    tool: String,
    rule: String,
    outcome: String,
    approver: String,
    reason: String,
    decided_at: String,
    uses: u64,
}

#[derive(Debug, Default)]
struct UserRow {
    calls: u64,
    allowed: u64,
    denied: u64,
    tools: BTreeSet<String>,
    upstreams: BTreeSet<String>,
}

/// What one pass over the period's records gathers.
#[derive(Debug, Default)]
struct Gathered {
    records: u64,
    users: BTreeMap<String, UserRow>,
    /// request id → (upstream, allowed, at)
    requests: BTreeMap<String, (String, bool, String)>,
    answered: BTreeSet<String>,
    rejected: u64,
    approvals: BTreeMap<String, ApprovalRow>,
    /// (kind, upstream) → count
    masked: BTreeMap<(String, String), u64>,
    withheld: Vec<Vec<String>>,
    config: Vec<Vec<String>>,
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn joined(v: Option<&Value>) -> String {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Gathered {
    fn count_masked(&mut self, masked: Option<&Value>, upstream: &str) {
        for (kind, n) in masked.and_then(Value::as_object).into_iter().flatten() {
            *self.masked.entry((kind.clone(), upstream.to_owned())).or_insert(0) += n.as_u64().unwrap_or(0);
        }
    }

    fn add(&mut self, r: &Record) {
        self.records += 1;
        let d = &r.data;
        match r.kind.as_str() {
            "request" => {
                let subject = d
                    .get("subject")
                    .and_then(Value::as_str)
                    .unwrap_or("(no verified caller)");
                let upstream = text(d, "upstream");
                let allowed = d.get("decision").and_then(Value::as_str) == Some("allow");
                let user = self.users.entry(subject.to_owned()).or_default();
                user.calls += 1;
                if allowed {
                    user.allowed += 1;
                } else {
                    user.denied += 1;
                }
                if let Some(tool) = d.get("tool").and_then(Value::as_str) {
                    user.tools.insert(tool.to_owned());
                }
                if !upstream.is_empty() {
                    user.upstreams.insert(upstream.clone());
                }
                self.count_masked(d.get("masked"), &upstream);
                self.requests
                    .insert(r.request_id.clone(), (upstream, allowed, r.recorded_at.clone()));
            }
            "response" => {
                let upstream = self
                    .requests
                    .get(&r.request_id)
                    .map_or_else(String::new, |q| q.0.clone());
                self.count_masked(d.get("masked"), &upstream);
                if d.get("final") == Some(&Value::Bool(true)) {
                    self.answered.insert(r.request_id.clone());
                }
                if let Some(why) = d.get("withheld").and_then(Value::as_str) {
                    self.withheld.push(vec![
                        r.recorded_at.clone(),
                        r.request_id.clone(),
                        upstream,
                        why.to_owned(),
                    ]);
                }
            }
            "request_rejected" => self.rejected += 1,
            "approval" => {
                let id = text(d, "approval_id");
                let row = self.approvals.entry(id).or_default();
                match d.get("event").and_then(Value::as_str).unwrap_or_default() {
                    "requested" => {
                        row.requested_at = r.recorded_at.clone();
                        row.requester = text(d, "subject");
                        row.upstream = text(d, "upstream");
                        row.tool = text(d, "tool");
                        row.rule = text(d, "rule");
                        if row.outcome.is_empty() {
                            row.outcome = "pending".into();
                        }
                    }
                    event @ ("approved" | "denied") => {
                        row.outcome = event.to_owned();
                        row.approver = text(d, "approver");
                        row.reason = text(d, "reason");
                        row.decided_at = r.recorded_at.clone();
                    }
                    "expired" => {
                        row.outcome = "expired".into();
                        row.decided_at = r.recorded_at.clone();
                    }
                    "used" => row.uses += 1,
                    _ => {}
                }
                if row.requester.is_empty() {
                    row.requester = text(d, "subject");
                    row.upstream = text(d, "upstream");
                    row.tool = text(d, "tool");
                    row.rule = text(d, "rule");
                }
            }
            "config_changed" => {
                let c = d.get("changes");
                let diff = |part: &str| {
                    let p = c.and_then(|c| c.get(part));
                    let list = |k: &str| joined(p.and_then(|p| p.get(k)));
                    [list("added"), list("removed"), list("changed")]
                };
                let [rules_added, rules_removed, rules_changed] = diff("policy_rules");
                let [up_added, up_removed, up_changed] = diff("upstreams");
                let [rec_added, rec_removed, rec_changed] = diff("recording");
                self.config.push(vec![
                    r.recorded_at.clone(),
                    r.writer.clone(),
                    text(d, "event"),
                    text(d, "config_sha256"),
                    rules_added,
                    rules_removed,
                    rules_changed,
                    [up_added, up_removed, up_changed].join(" | "),
                    [rec_added, rec_removed, rec_changed].join(" | "),
                    c.and_then(|c| c.get("masking"))
                        .map(|m| if m == &Value::Bool(true) { "changed" } else { "" })
                        .unwrap_or_default()
                        .to_owned(),
                    joined(d.get("pending_restart")),
                    joined(d.get("problems")),
                ]);
            }
            _ => {}
        }
    }
}

/// Seconds between two record times (`None` if either does not parse).
fn seconds_between(from: &str, to: &str) -> Option<f64> {
    let parse = |s: &str| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok();
    Some((parse(to)? - parse(from)?).as_seconds_f64())
}

/// Who could reach which upstream: each upstream's groups, then each policy rule that can
/// apply to it (from the configuration in force when the pack is made).
fn access_rules(config: &Config) -> Vec<Vec<String>> {
    let doc: Value = serde_yaml::from_str(&config.text).unwrap_or(Value::Null);
    let rules = doc
        .pointer("/policy/rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut rows = Vec::new();
    for u in &config.upstreams {
        let groups = u.allow_groups.iter().cloned().collect::<Vec<_>>().join(" ");
        if rules.is_empty() {
            rows.push(vec![
                u.name.clone(),
                groups.clone(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                "allow (no policy: the groups decide)".into(),
            ]);
        }
        for rule in &rules {
            let names = joined(rule.get("upstreams"));
            if !names.is_empty() && !names.split(' ').any(|n| n == u.name) {
                continue;
            }
            rows.push(vec![
                u.name.clone(),
                groups.clone(),
                text(rule, "id"),
                joined(rule.get("groups")),
                joined(rule.get("subjects")),
                joined(rule.get("methods")),
                joined(rule.get("tools")),
                text(rule, "outcome"),
            ]);
        }
    }
    rows
}

/// A CSV cell: quoted when needed, and a leading `= + - @` neutralised (a caller chooses tool
/// names and subjects; a spreadsheet must not run them as formulas).
fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv(t: &Table) -> Vec<u8> {
    let mut out = String::new();
    out.push_str(&t.columns.join(","));
    out.push('\n');
    for row in &t.rows {
        out.push_str(&row.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out.into_bytes()
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A section's table as HTML; a numeric column named in `bars` gets a bar beside its value.
fn html_table(t: &Table, bars: Option<usize>) -> String {
    let mut out = format!("<table id=\"{}\"><thead><tr>", html_escape(t.file));
    for c in &t.columns {
        let _ = write!(out, "<th>{}</th>", html_escape(c));
    }
    out.push_str("</tr></thead><tbody>");
    let max = bars
        .map(|i| {
            t.rows
                .iter()
                .filter_map(|r| r.get(i)?.parse::<f64>().ok())
                .fold(0.0, f64::max)
        })
        .unwrap_or(0.0);
    for row in &t.rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            match (bars, cell.parse::<f64>()) {
                (Some(b), Ok(v)) if b == i && max > 0.0 => {
                    let width = (v / max * 100.0).round();
                    let _ = write!(
                        out,
                        "<td class=\"num\">{} <span class=\"bar\" style=\"width:{width}px\"></span></td>",
                        html_escape(cell)
                    );
                }
                _ => {
                    let _ = write!(out, "<td>{}</td>", html_escape(cell));
                }
            }
        }
        out.push_str("</tr>");
    }
    if t.rows.is_empty() {
        let _ = write!(
            out,
            "<tr><td colspan=\"{}\">none in this period</td></tr>",
            t.columns.len()
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// The pack for records with `from <= recorded_at < to` (RFC 3339, normalized).
pub async fn build(
    config: &Config,
    store: &Store,
    from: &str,
    to: &str,
    signer: &CheckpointSigner,
    external: &[Checkpoint],
) -> anyhow::Result<bundle::Built> {
    let mut g = Gathered::default();
    let mut after: Option<(String, String, u64)> = None;
    loop {
        let page = store
            .records_between(
                from,
                to,
                after.as_ref().map(|(a, w, s)| (a.as_str(), w.as_str(), *s)),
                PAGE,
            )
            .await?;
        for r in &page {
            g.add(r);
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => {
                after = Some((last.recorded_at.clone(), last.writer.clone(), last.seq));
            }
            _ => break,
        }
    }
    // CC7.2: the whole chain, as `audit verify` checks it, and each writer's newest checkpoint.
    let key = signer.public_key();
    let chain = match verify::verify_store_with(store, Some(&key), external).await {
        Ok(v) => json!({"verified": true, "writers": v.writers.iter().map(|w| json!({
            "writer": w.writer, "records": w.records, "checkpoints": w.checkpoints,
            "vouched_to": w.vouched, "unvouched": w.unvouched})).collect::<Vec<_>>()}),
        Err(e) => json!({"verified": false, "problem": e.to_string()}),
    };
    let mut newest: Vec<Checkpoint> = Vec::new();
    for writer in store.writers().await? {
        let mut cps = store.checkpoints(&writer).await?;
        cps.extend(external.iter().filter(|c| c.writer == writer).cloned());
        if let Some(c) = cps
            .into_iter()
            .filter(|c| signature_valid(&key, c))
            .max_by_key(|c| c.seq)
        {
            newest.push(c);
        }
    }

    let unanswered: Vec<Vec<String>> = g
        .requests
        .iter()
        .filter(|(id, (_, allowed, _))| *allowed && !g.answered.contains(*id))
        .map(|(id, (upstream, _, at))| vec![at.clone(), id.clone(), upstream.clone()])
        .collect();
    let allowed = g.requests.values().filter(|q| q.1).count();
    let tables = vec![
        Table {
            file: "cc6_1_access_rules.csv",
            title: "CC6.1 Who could reach which upstream (configuration in force)",
            columns: vec![
                "upstream",
                "allow_groups",
                "rule",
                "rule_groups",
                "rule_subjects",
                "methods",
                "tools",
                "outcome",
            ],
            rows: access_rules(config),
        },
        Table {
            file: "cc6_1_access_by_user.csv",
            title: "CC6.1 Who did: calls per user",
            columns: vec!["user", "calls", "allowed", "denied", "upstreams", "tools"],
            rows: g
                .users
                .iter()
                .map(|(user, u)| {
                    vec![
                        user.clone(),
                        u.calls.to_string(),
                        u.allowed.to_string(),
                        u.denied.to_string(),
                        u.upstreams.iter().cloned().collect::<Vec<_>>().join(" "),
                        u.tools.iter().cloned().collect::<Vec<_>>().join(" "),
                    ]
                })
                .collect(),
        },
        Table {
            file: "cc6_2_approvals.csv",
            title: "CC6.2/CC6.3 Approvals: every call an approve rule caught",
            columns: vec![
                "approval",
                "requested_at",
                "requester",
                "upstream",
                "tool",
                "rule",
                "outcome",
                "approver",
                "reason",
                "decided_at",
                "seconds_to_decide",
                "uses",
            ],
            rows: g
                .approvals
                .iter()
                .map(|(id, a)| {
                    vec![
                        id.clone(),
                        a.requested_at.clone(),
                        a.requester.clone(),
                        a.upstream.clone(),
                        a.tool.clone(),
                        a.rule.clone(),
                        a.outcome.clone(),
                        a.approver.clone(),
                        a.reason.clone(),
                        a.decided_at.clone(),
                        seconds_between(&a.requested_at, &a.decided_at)
                            .map(|s| format!("{s:.3}"))
                            .unwrap_or_default(),
                        a.uses.to_string(),
                    ]
                })
                .collect(),
        },
        Table {
            file: "cc6_7_masked.csv",
            title: "CC6.7 Values masked, by kind and upstream",
            columns: vec!["kind", "upstream", "count"],
            rows: g
                .masked
                .iter()
                .map(|((kind, upstream), n)| vec![kind.clone(), upstream.clone(), n.to_string()])
                .collect(),
        },
        Table {
            file: "cc6_7_withheld.csv",
            title: "CC6.7 Answers withheld from the client",
            columns: vec!["at", "request_id", "upstream", "why"],
            rows: g.withheld.clone(),
        },
        Table {
            file: "cc7_2_unanswered.csv",
            title: "CC7.2 Allowed requests without a final answer record",
            columns: vec!["at", "request_id", "upstream"],
            rows: unanswered.clone(),
        },
        Table {
            file: "cc8_1_config_changes.csv",
            title: "CC8.1 Configuration changes",
            columns: vec![
                "at",
                "writer",
                "event",
                "config_sha256",
                "rules_added",
                "rules_removed",
                "rules_changed",
                "upstreams (added | removed | changed)",
                "recording (added | removed | changed)",
                "masking",
                "pending_restart",
                "problems",
            ],
            rows: g.config.clone(),
        },
    ];
    let summary = json!({
        "period": {"from": from, "to": to},
        "records": g.records,
        "cc6_1": {"users": g.users.len(), "calls": g.users.values().map(|u| u.calls).sum::<u64>(),
                  "denied": g.users.values().map(|u| u.denied).sum::<u64>()},
        "cc6_2": {"approvals": g.approvals.len(),
                  "approved": g.approvals.values().filter(|a| a.outcome == "approved").count(),
                  "denied": g.approvals.values().filter(|a| a.outcome == "denied").count(),
                  "expired": g.approvals.values().filter(|a| a.outcome == "expired").count(),
                  "pending": g.approvals.values().filter(|a| a.outcome == "pending").count()},
        "cc6_7": {"masked": g.masked.values().sum::<u64>(), "withheld": g.withheld.len()},
        "cc7_2": {"requests_allowed": allowed, "without_final_answer": unanswered.len(),
                  "rejected_by_filter": g.rejected, "chain": chain,
                  "newest_checkpoints": newest},
        "cc8_1": {"config_changed": g.config.len()},
    });
    let html = report(from, to, &summary, &tables);
    let mut files: Vec<(String, Vec<u8>)> = tables.iter().map(|t| (t.file.to_owned(), csv(t))).collect();
    files.push(("summary.json".into(), serde_json::to_vec_pretty(&summary)?));
    files.push(("checkpoints.jsonl".into(), to_json_lines(&newest)?));
    files.push(("report.html".into(), html.into_bytes()));
    let about = json!({"from": from, "to": to, "records": g.records});
    let mut notes = Vec::new();
    if summary["cc7_2"]["chain"]["verified"] != Value::Bool(true) {
        notes.push("the trail's chain does NOT verify: see summary.json cc7_2.chain".to_owned());
    }
    bundle::build(KIND, about, notes, files, signer)
}

/// The HTML report: one section per control, tables and bars, no script.
fn report(from: &str, to: &str, summary: &Value, tables: &[Table]) -> String {
    let n = |path: &str| summary.pointer(path).map(ToString::to_string).unwrap_or_default();
    let section = |id: &str, title: &str, lead: String, parts: &[(&Table, Option<usize>)]| {
        let mut out = format!(
            "<section id=\"{id}\"><h2>{}</h2><p>{}</p>",
            html_escape(title),
            html_escape(&lead)
        );
        for (t, bars) in parts {
            let _ = write!(out, "<h3>{}</h3>{}", html_escape(t.title), html_table(t, *bars));
        }
        out.push_str("</section>");
        out
    };
    let t = |file: &str| tables.iter().find(|t| t.file == file).expect("every table is made");
    let chain = &summary["cc7_2"]["chain"];
    let chain_text = if chain["verified"] == Value::Bool(true) {
        "The hash chain of every writer verifies against its signed checkpoints.".to_owned()
    } else {
        format!(
            "The hash chain does NOT verify: {}",
            chain["problem"].as_str().unwrap_or("?")
        )
    };
    let mut body = String::new();
    body.push_str(&section(
        "cc6-1",
        "CC6.1 Logical access",
        format!(
            "{} users made {} calls; {} were denied.",
            n("/cc6_1/users"),
            n("/cc6_1/calls"),
            n("/cc6_1/denied")
        ),
        &[
            (t("cc6_1_access_rules.csv"), None),
            (t("cc6_1_access_by_user.csv"), Some(1)),
        ],
    ));
    body.push_str(&section(
        "cc6-2",
        "CC6.2 / CC6.3 Approvals",
        format!(
            "{} approvals: {} approved, {} denied, {} expired, {} pending.",
            n("/cc6_2/approvals"),
            n("/cc6_2/approved"),
            n("/cc6_2/denied"),
            n("/cc6_2/expired"),
            n("/cc6_2/pending")
        ),
        &[(t("cc6_2_approvals.csv"), None)],
    ));
    body.push_str(&section(
        "cc6-7",
        "CC6.7 Confidentiality",
        format!(
            "{} values masked in requests and answers; {} answers withheld.",
            n("/cc6_7/masked"),
            n("/cc6_7/withheld")
        ),
        &[(t("cc6_7_masked.csv"), Some(2)), (t("cc6_7_withheld.csv"), None)],
    ));
    body.push_str(&section(
        "cc7-2",
        "CC7.2 Monitoring: trail completeness",
        format!(
            "{} requests allowed, {} without a final answer record; {} requests refused by the filter. {chain_text}",
            n("/cc7_2/requests_allowed"),
            n("/cc7_2/without_final_answer"),
            n("/cc7_2/rejected_by_filter")
        ),
        &[(t("cc7_2_unanswered.csv"), None)],
    ));
    body.push_str(&section(
        "cc8-1",
        "CC8.1 Change management",
        format!(
            "{} configuration records (start, reload, refused reload).",
            n("/cc8_1/config_changed")
        ),
        &[(t("cc8_1_config_changes.csv"), None)],
    ));
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>Gatehouse evidence {from} to {to}</title><style>\
         body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:.5em 0 1.5em}}\
         th,td{{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}}th{{background:#f3f3f3}}\
         .bar{{display:inline-block;height:.8em;background:#4a7bd0;margin-left:.4em}}td.num{{white-space:nowrap}}\
         </style></head><body><h1>Gatehouse evidence</h1><p>Period: {} to {} (UTC, end excluded). \
         Every number is read from the audit trail; the files beside this report hold each table, \
         and manifest.json their SHA-256, signed with the checkpoint key \
         (<code>gatehouse audit verify-export</code>).</p>{body}</body></html>\n",
        html_escape(from),
        html_escape(to),
        from = html_escape(from),
        to = html_escape(to),
    )
}

/// Checks an evidence pack's own files beyond the bundle's signature: its checkpoints' signatures.
pub fn verify(opened: &bundle::Opened, key: &ed25519_dalek::VerifyingKey) -> Result<usize, String> {
    let cps: Vec<Checkpoint> = bundle::json_lines("checkpoints.jsonl", opened.file("checkpoints.jsonl")?)?;
    if let Some(bad) = cps.iter().find(|c| !signature_valid(key, c)) {
        return Err(format!(
            "checkpoints.jsonl: the checkpoint of writer {} at record {} has an invalid signature",
            bad.writer, bad.seq
        ));
    }
    opened.file("summary.json")?;
    opened.file("report.html")?;
    Ok(cps.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_formulas_neutralised() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("@sum"), "'@sum");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(html_escape("<script>&\"'"), "&lt;script&gt;&amp;&quot;&#39;");
    }
}
