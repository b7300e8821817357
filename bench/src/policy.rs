//! Decision cost (issue 4): what evaluating a 1,000-rule policy costs per request.
//!
//! [`scenario`] is the one generator of the rules: the native measurement here and the
//! gateway `scripts/bench.py` starts (from `--rules-out`) judge the same policy. The rules
//! mix groups, subjects, upstreams, exact tool names and globs, methods, argument
//! conditions (regex, one-of, numeric comparisons, presence, equality), denies and a few
//! approval rules, drawn from a fixed seed. A drawn rule that would decide one of the
//! measured requests is drawn again, so that with first-match evaluation:
//! - `last_rule`: the load generator's call (the same body, see [`crate::call_body`]) is
//!   allowed by the last rule, after every other rule was tried (the worst case for a
//!   match);
//! - `no_rule`: the same caller's call of a neighbouring tool matches nothing and is
//!   denied by default, after every rule was tried;
//! - `early`: a support agent's call is allowed by the fourth rule.

use std::{collections::BTreeSet, path::Path, time::Instant};

use gatehouse_service::policy::{Facts, Policy, RawRule};
use serde_json::{Value, json};

use crate::mixed::Rng;
use crate::{timed, us};

pub const RULES: usize = 1000;
/// The caller of `last_rule` and `no_rule`: the subject and groups of the token the
/// gateway benchmark mints.
const SUBJECT: &str = "bench";
const GROUPS: &[&str] = &["eng"];
const UPSTREAM: &str = "crm";
/// The tool the last rule allows (the load generator calls it).
const TOOL: &str = "get_order";
/// A tool no rule allows this caller.
const UNMATCHED_TOOL: &str = "update_order";
/// Where the rule that decides `early` sits (0-based).
const EARLY: usize = 3;

const UPSTREAMS: &[&str] = &["crm", "billing", "warehouse", "tickets", "wiki", "analytics"];
const ALL_GROUPS: &[&str] = &[
    "eng",
    "support",
    "finance",
    "sales",
    "ops",
    "data",
    "security",
    "legal",
    "hr",
    "marketing",
    "contractors",
    "leads",
];
const VERBS: &[&str] = &["get", "list", "search", "create", "update", "delete", "export"];
const NOUNS: &[&str] = &[
    "customer", "invoice", "order", "ticket", "page", "report", "shipment", "refund", "account", "note",
];
const TOOL_GLOBS: &[&str] = &[
    "db_*",
    "fs_*",
    "git_*",
    "k8s_*",
    "get_*",
    "list_*",
    "search_*",
    "export_*",
    "*_report",
    "*_customer",
];
const METHODS: &[&str] = &["resources/read", "resources/list", "prompts/*", "tools/list"];

/// One measured request.
struct Request {
    name: &'static str,
    subject: &'static str,
    groups: BTreeSet<String>,
    upstream: &'static str,
    tool: &'static str,
    arguments: Value,
}

impl Request {
    fn facts(&self) -> Facts<'_> {
        Facts {
            subject: self.subject,
            groups: &self.groups,
            upstream: self.upstream,
            method: Some("tools/call"),
            tool: Some(self.tool),
            arguments: Some(&self.arguments),
        }
    }
}

fn requests() -> [Request; 3] {
    let body: Value = serde_json::from_slice(&crate::call_body(TOOL)).expect("the load body is JSON");
    let arguments = body.pointer("/params/arguments").cloned().unwrap_or(Value::Null);
    let caller = || GROUPS.iter().map(|g| (*g).to_owned()).collect::<BTreeSet<_>>();
    [
        Request {
            name: "last_rule",
            subject: SUBJECT,
            groups: caller(),
            upstream: UPSTREAM,
            tool: TOOL,
            arguments: arguments.clone(),
        },
        Request {
            name: "no_rule",
            subject: SUBJECT,
            groups: caller(),
            upstream: UPSTREAM,
            tool: UNMATCHED_TOOL,
            arguments,
        },
        Request {
            name: "early",
            subject: "sam@example.com",
            groups: BTreeSet::from(["support".to_owned()]),
            upstream: "tickets",
            tool: "get_ticket",
            arguments: json!({"id": "T-1042"}),
        },
    ]
}

/// 1 to `max` distinct items.
fn some(rng: &mut Rng, items: &[&str], max: u64) -> Vec<String> {
    let mut picked: Vec<String> = (0..=rng.below(max)).map(|_| rng.pick(items).to_owned()).collect();
    picked.sort();
    picked.dedup();
    picked
}

/// 1 to `max` distinct tool names and globs.
fn tools(rng: &mut Rng, max: u64) -> Vec<String> {
    let mut tools: Vec<String> = (0..=rng.below(max))
        .map(|_| match rng.below(3) {
            0 => rng.pick(TOOL_GLOBS).to_owned(),
            _ => format!("{}_{}", rng.pick(VERBS), rng.pick(NOUNS)),
        })
        .collect();
    tools.sort();
    tools.dedup();
    tools
}

/// 1 to `max` conditions, on distinct arguments.
fn conditions(rng: &mut Rng, max: u64) -> Vec<Value> {
    let mut conditions: Vec<Value> = (0..=rng.below(max)).map(|_| condition(rng)).collect();
    conditions.sort_by(|a, b| a["pointer"].as_str().cmp(&b["pointer"].as_str()));
    conditions.dedup_by(|a, b| a["pointer"] == b["pointer"]);
    conditions
}

fn condition(rng: &mut Rng) -> Value {
    match rng.below(9) {
        0..3 => dangerous(rng),
        3 => json!({"pointer": "/format", "one_of": ["csv", "json", "parquet"]}),
        4 => json!({"pointer": "/region", "one_of": ["eu-west-1", "eu-central-1"]}),
        5 => json!({"pointer": "/amount", "gt": 10 * (1 + rng.below(100))}),
        6 => json!({"pointer": "/limit", "lte": 1000}),
        7 => json!({"pointer": "/confirm", "present": true}),
        _ => json!({"pointer": "/dry_run", "equals": true}),
    }
}

fn dangerous(rng: &mut Rng) -> Value {
    match rng.below(3) {
        0 => json!({"pointer": "/sql", "regex": r"(?i)\b(drop|truncate|delete)\b"}),
        1 => json!({"pointer": "/path", "regex": r"^/(etc|root|var/lib)/"}),
        _ => json!({"pointer": "/message", "regex": r"(?i)password|secret|token"}),
    }
}

fn random_rule(rng: &mut Rng, n: usize) -> Value {
    let mut rule = match rng.below(100) {
        0..40 => json!({
            "id": format!("allow-tools-{n:04}"),
            "groups": some(rng, ALL_GROUPS, 2),
            "tools": tools(rng, 3),
            "outcome": "allow",
        }),
        40..60 => json!({
            "id": format!("allow-arguments-{n:04}"),
            "groups": some(rng, ALL_GROUPS, 2),
            "tools": tools(rng, 2),
            "arguments": conditions(rng, 2),
            "outcome": "allow",
        }),
        60..75 => json!({
            "id": format!("deny-dangerous-{n:04}"),
            "tools": tools(rng, 2),
            "arguments": [dangerous(rng)],
            "outcome": "deny",
        }),
        75..80 => json!({
            "id": format!("approve-amount-{n:04}"),
            "groups": some(rng, ALL_GROUPS, 2),
            "tools": [format!("{}_{}", rng.pick(&["create", "update", "delete"]), rng.pick(NOUNS))],
            "arguments": [{"pointer": "/amount", "gt": 100 * (1 + rng.below(50))}],
            "outcome": "approve",
            "approval": {"approver_group": "leads", "hold_seconds": 5 * rng.below(5)},
        }),
        80..90 => json!({
            "id": format!("allow-subject-{n:04}"),
            "subjects": [format!("user{}@example.com", rng.below(500))],
            "tools": tools(rng, 2),
            "outcome": "allow",
        }),
        90..95 => json!({
            "id": format!("allow-methods-{n:04}"),
            "groups": some(rng, ALL_GROUPS, 2),
            "methods": [rng.pick(METHODS)],
            "outcome": "allow",
        }),
        // Near misses of the measured call: its caller, upstream and tool, but arguments
        // it does not have.
        _ => json!({
            "id": format!("allow-near-miss-{n:04}"),
            "groups": GROUPS,
            "upstreams": [UPSTREAM],
            "tools": [rng.pick(&[TOOL, "get_*", "*_order"])],
            "arguments": conditions(rng, 2),
            "outcome": "allow",
        }),
    };
    // Most rules name the upstream they are about.
    if let Some(obj) = rule.as_object_mut().filter(|_| rng.below(10) < 7) {
        obj.entry("upstreams").or_insert_with(|| json!([rng.pick(UPSTREAMS)]));
    }
    rule
}

fn compile(rules: &[Value]) -> Policy {
    let raw: Vec<RawRule> = serde_json::from_value(Value::Array(rules.to_vec())).expect("generated rules parse");
    Policy::compile(&raw).unwrap_or_else(|problems| panic!("generated rules compile: {problems:?}"))
}

/// The rules, in order: drawn ones (none deciding a measured request), the rule that
/// decides `early` at [`EARLY`], and the allow rule for the load's call last.
fn scenario(requests: &[Request]) -> Vec<Value> {
    let mut rng = Rng::new(4);
    let mut rules = Vec::with_capacity(RULES);
    while rules.len() < RULES - 1 {
        if rules.len() == EARLY {
            rules.push(json!({
                "id": "allow-support-tickets",
                "groups": ["support"],
                "upstreams": ["tickets"],
                "tools": ["get_ticket", "list_tickets", "search_tickets"],
                "outcome": "allow",
            }));
            continue;
        }
        let rule = random_rule(&mut rng, rules.len());
        let one = compile(std::slice::from_ref(&rule));
        if requests.iter().all(|r| one.evaluate(&r.facts()).rule_id.is_none()) {
            rules.push(rule);
        }
    }
    rules.push(json!({
        "id": "allow-eng-crm-get-order",
        "groups": GROUPS,
        "upstreams": [UPSTREAM],
        "tools": [TOOL],
        "arguments": [{"pointer": "/message", "regex": "^[a-z ]{1,200}$"}],
        "outcome": "allow",
    }));
    rules
}

/// What kinds of rules the policy holds (for the report).
fn mix(rules: &[Value]) -> Value {
    let count = |f: &dyn Fn(&Value) -> bool| rules.iter().filter(|r| f(r)).count();
    let outcome = |o: &'static str| move |r: &Value| r["outcome"] == o;
    json!({
        "allow": count(&outcome("allow")),
        "deny": count(&outcome("deny")),
        "approve": count(&outcome("approve")),
        "with_arguments": count(&|r| r.get("arguments").is_some()),
        "with_tool_globs": count(&|r| {
            r["tools"].as_array().is_some_and(|t| t.iter().any(|g| g.as_str().is_some_and(|g| g.contains('*'))))
        }),
        "with_upstreams": count(&|r| r.get("upstreams").is_some()),
    })
}

/// Sorted times of `iterations` runs of `f`, each timed alone, after a warm-up.
/// Compiles the rules and times `Policy::evaluate` for each request; writes the rules and
/// the caller to `rules_out` when given.
pub fn run(iterations: u32, rules_out: Option<&Path>) -> anyhow::Result<Value> {
    let requests = requests();
    let rules = scenario(&requests);
    if let Some(path) = rules_out {
        let file = json!({
            "subject": SUBJECT,
            "groups": GROUPS,
            "upstream": UPSTREAM,
            "upstreams": UPSTREAMS,
            "tool": TOOL,
            "rules": rules,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&file)?)?;
    }
    let start = Instant::now();
    let policy = compile(&rules);
    let compile_ms = start.elapsed().as_secs_f64() * 1000.0;
    let timer = timed(iterations, || {
        std::hint::black_box(());
    });
    let mut out = json!({
        "rules": policy.len(),
        "iterations": iterations,
        "compile_ms": compile_ms,
        "timer_overhead_us": us(&timer, 0.5),
        "mix": mix(&rules),
    });
    for request in &requests {
        let facts = request.facts();
        let verdict = policy.evaluate(&facts);
        let position = verdict
            .rule_id
            .and_then(|id| rules.iter().position(|r| r["id"] == id))
            .map(|i| i + 1);
        let times = timed(iterations, || {
            std::hint::black_box(policy.evaluate(std::hint::black_box(&facts)));
        });
        out[request.name] = json!({
            "decided_by": verdict.rule_id,
            "position": position,
            "outcome": format!("{:?}", verdict.outcome),
            "p50_us": us(&times, 0.5),
            "p99_us": us(&times, 0.99),
            "max_us": us(&times, 1.0),
        });
    }
    let position = |name: &str| out[name]["position"].as_u64();
    anyhow::ensure!(
        position("last_rule") == Some(RULES as u64)
            && position("no_rule").is_none()
            && position("early") == Some(EARLY as u64 + 1),
        "the generated policy does not decide the measured requests as intended: {out}"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_measured_requests_are_decided_as_intended() {
        let out = super::run(10, None).expect("the scenario holds");
        assert_eq!(out["rules"], super::RULES);
    }
}
