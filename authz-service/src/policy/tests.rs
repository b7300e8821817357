use std::collections::BTreeSet;
use std::time::Instant;

use serde_json::json;

use super::*;

fn compile(yaml: &str) -> Policy {
    let raw: Vec<RawRule> = serde_yaml::from_str(yaml).unwrap();
    Policy::compile(&raw).unwrap()
}

fn groups(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn facts<'a>(groups: &'a BTreeSet<String>, tool: Option<&'a str>, arguments: Option<&'a Value>) -> Facts<'a> {
    Facts {
        subject: "alice",
        groups,
        upstream: "db",
        method: Some(if tool.is_some() { "tools/call" } else { "tools/list" }),
        tool,
        arguments,
    }
}

const RULES: &str = r#"
- id: prod-writes-need-approval
  groups: [eng]
  tools: ["run_*"]
  arguments:
    - {pointer: /env, equals: prod}
    - {pointer: /sql, regex: "(?i)^\\s*(delete|drop|update)"}
  outcome: approve
  approval: {approver_group: approvers, hold_seconds: 10}
- id: big-refunds-denied
  tools: [refund]
  arguments: [{pointer: /amount, gt: 1000}]
  outcome: deny
- id: eng-may-use-db
  groups: [eng]
  upstreams: [db]
  outcome: allow
"#;

#[test]
fn the_first_matching_rule_decides_and_is_named() {
    let policy = compile(RULES);
    let eng = groups(&["eng"]);
    let drop = json!({"env": "prod", "sql": "  DROP TABLE users"});
    let v = policy.evaluate(&facts(&eng, Some("run_sql"), Some(&drop)));
    assert_eq!(v.rule_id, Some("prod-writes-need-approval"));
    let Outcome::RequireApproval(spec) = v.outcome else {
        panic!("{v:?}")
    };
    assert_eq!(
        (spec.approver_group.as_str(), spec.hold_seconds, spec.single_use),
        ("approvers", 10, true)
    );

    let select = json!({"env": "prod", "sql": "select 1"});
    let v = policy.evaluate(&facts(&eng, Some("run_sql"), Some(&select)));
    assert_eq!((v.rule_id, v.outcome), (Some("eng-may-use-db"), &Outcome::Allow));

    let staging = json!({"env": "staging", "sql": "drop table t"});
    assert_eq!(
        policy.evaluate(&facts(&eng, Some("run_sql"), Some(&staging))).rule_id,
        Some("eng-may-use-db")
    );

    let refund = json!({"amount": 5000});
    let v = policy.evaluate(&facts(&eng, Some("refund"), Some(&refund)));
    assert_eq!((v.rule_id, v.outcome), (Some("big-refunds-denied"), &Outcome::Deny));
    let small = json!({"amount": "20"});
    assert_eq!(
        policy.evaluate(&facts(&eng, Some("refund"), Some(&small))).rule_id,
        Some("eng-may-use-db")
    );
}

#[test]
fn nothing_matching_is_denied_by_default() {
    let policy = compile(RULES);
    let ops = groups(&["ops"]);
    let v = policy.evaluate(&facts(&ops, Some("run_sql"), None));
    assert_eq!((v.rule_id, v.outcome), (None, &Outcome::Deny));
    assert_eq!(
        Policy::deny_all().evaluate(&facts(&ops, None, None)).outcome,
        &Outcome::Deny
    );
}

#[test]
fn argument_tests() {
    let policy = compile(
        r#"
- {id: one-of, arguments: [{pointer: /region, one_of: [eu-west-1, eu-central-1]}], outcome: allow}
- {id: absent, arguments: [{pointer: /force, present: false}], tools: [safe], outcome: allow}
- {id: lte, arguments: [{pointer: /limits/rows, lte: 100}], outcome: allow}
"#,
    );
    let any = groups(&[]);
    let eu = json!({"region": "eu-central-1"});
    assert_eq!(
        policy.evaluate(&facts(&any, Some("x"), Some(&eu))).rule_id,
        Some("one-of")
    );
    let forced = json!({"force": true});
    assert_eq!(policy.evaluate(&facts(&any, Some("safe"), Some(&forced))).rule_id, None);
    assert_eq!(
        policy.evaluate(&facts(&any, Some("safe"), Some(&json!({})))).rule_id,
        Some("absent")
    );
    let rows = json!({"limits": {"rows": 100}});
    assert_eq!(
        policy.evaluate(&facts(&any, Some("x"), Some(&rows))).rule_id,
        Some("lte")
    );
    let many = json!({"limits": {"rows": 101}});
    assert_eq!(policy.evaluate(&facts(&any, Some("x"), Some(&many))).rule_id, None);
    let not_a_number = json!({"limits": {"rows": "lots"}});
    assert_eq!(
        policy.evaluate(&facts(&any, Some("x"), Some(&not_a_number))).rule_id,
        None
    );
}

#[test]
fn a_tools_rule_never_matches_other_methods() {
    let policy = compile("- {id: t, tools: ['*'], outcome: allow}");
    let any = groups(&[]);
    assert_eq!(policy.evaluate(&facts(&any, None, None)).rule_id, None);
    assert_eq!(policy.evaluate(&facts(&any, Some("x"), None)).rule_id, Some("t"));
}

#[test]
fn every_problem_is_listed_with_its_path() {
    let raw: Vec<RawRule> = serde_yaml::from_str(
        r#"
- {id: a, outcome: approve}
- {id: a, outcome: allow, approval: {approver_group: x}}
- {id: c, outcome: deny, arguments: [{pointer: x, equals: 1, gt: 2}, {pointer: /y, regex: "("}]}
- {id: "", outcome: approve, approval: {approver_group: "", hold_seconds: 900, grant_seconds: 0}}
"#,
    )
    .unwrap();
    let problems = Policy::compile(&raw).unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "policy.rules[0].approval",
            "policy.rules[1].id",
            "policy.rules[1].approval",
            "policy.rules[2].arguments[0]",
            "policy.rules[2].arguments[0]",
            "policy.rules[2].arguments[1].regex",
            "policy.rules[3].id",
            "policy.rules[3].approval.approver_group",
            "policy.rules[3].approval.hold_seconds",
            "policy.rules[3].approval.grant_seconds",
        ],
        "{problems:?}"
    );
}

/// Not a benchmark (`make bench` measures it); a guard that 1,000 rules stay cheap.
#[test]
fn a_thousand_rules_are_evaluated_quickly() {
    let mut yaml = String::new();
    for n in 0..1000 {
        yaml.push_str(&format!(
            "- {{id: r{n}, groups: [g{n}], tools: ['tool_{n}_*'], arguments: [{{pointer: /n, gt: {n}}}], outcome: allow}}\n"
        ));
    }
    let policy = compile(&yaml);
    assert_eq!(policy.len(), 1000);
    let g = groups(&["g999"]);
    let args = json!({"n": 5000});
    let start = Instant::now();
    for _ in 0..100 {
        assert_eq!(
            policy.evaluate(&facts(&g, Some("tool_999_x"), Some(&args))).rule_id,
            Some("r999")
        );
    }
    assert!(
        start.elapsed().as_millis() < 1000,
        "{:?} for 100 evaluations",
        start.elapsed()
    );
}

#[test]
fn pointers_split_once_find_what_serde_json_finds() {
    let value = serde_json::json!({"a/b": {"m~n": [10, {"x": true}]}, "": 1, "list": [0, 1], "0": "zero"});
    for pointer in [
        "",
        "/a~1b",
        "/a~1b/m~0n",
        "/a~1b/m~0n/1/x",
        "/a~1b/m~0n/2",
        "/",
        "/list/01",
        "/list/+1",
        "/list/1",
        "/0",
        "/missing/x",
        "/list/x",
    ] {
        assert_eq!(
            super::lookup(&value, &super::pointer_tokens(pointer)),
            value.pointer(pointer),
            "{pointer:?}"
        );
    }
}

#[test]
fn a_key_that_differs_only_in_case_is_found_as_a_case_insensitive_upstream_would() {
    // Go's encoding/json would read `FORCE` and `ſql` (long s) as `force` and `sql`.
    let value = serde_json::json!({"FORCE": true, "ſql": "DROP TABLE t", "exact": 1, "EXACT": 2});
    let at = |p: &str| super::lookup(&value, &super::pointer_tokens(p)).cloned();
    assert_eq!(at("/force"), Some(serde_json::json!(true)));
    assert_eq!(at("/SQL"), Some(serde_json::json!("DROP TABLE t")));
    // An exact key wins over a folded one.
    assert_eq!(at("/exact"), Some(serde_json::json!(1)));
    assert_eq!(at("/missing"), None);
}

#[test]
fn the_upstream_index_keeps_file_order() {
    // Rules for one upstream, for two, and for any, interleaved: the index must find the
    // same first match as a scan in file order.
    let policy = compile(
        "
- {id: a-deny-x, upstreams: [a], tools: [x], outcome: deny}
- {id: any-allow-x, tools: [x], outcome: allow}
- {id: ab-deny-y, upstreams: [a, b], tools: [y], outcome: deny}
- {id: b-allow-y, upstreams: [b], tools: [y], outcome: allow}
- {id: any-deny-z, tools: [z], outcome: deny}
- {id: a-allow-z, upstreams: [a], tools: [z], outcome: allow}
- {id: b-allow-all, upstreams: [b], outcome: allow}
",
    );
    let g = groups(&["eng"]);
    for upstream in ["a", "b", "c"] {
        for tool in ["x", "y", "z", "w"] {
            let f = Facts {
                upstream,
                ..facts(&g, Some(tool), None)
            };
            let scan = policy.rules.iter().find(|r| r.matches(&f)).map(|r| r.id.as_str());
            assert_eq!(policy.evaluate(&f).rule_id, scan, "{upstream} {tool}");
        }
    }
    let f = Facts {
        upstream: "b",
        ..facts(&g, Some("x"), None)
    };
    assert_eq!(policy.evaluate(&f).rule_id, Some("any-allow-x"));
}

#[test]
fn conditions_match_what_a_lax_upstream_coerces_to_the_value() {
    let policy = compile(
        r#"
- {id: force, arguments: [{pointer: /force, equals: true}], outcome: deny}
- {id: replicas, arguments: [{pointer: /replicas, one_of: [0]}], outcome: deny}
- {id: amount, arguments: [{pointer: /amount, gt: 1000}], outcome: deny}
- {id: rest, outcome: allow}
"#,
    );
    let any = groups(&[]);
    let rule = |args: Value| {
        policy
            .evaluate(&facts(&any, Some("x"), Some(&args)))
            .rule_id
            .map(str::to_owned)
    };
    for force in [
        json!(true),
        json!("true"),
        json!(1),
        json!("yes"),
        json!("True"),
        json!(1.0),
    ] {
        assert_eq!(rule(json!({ "force": force })).as_deref(), Some("force"), "{force}");
    }
    for replicas in [json!(0), json!(0.0), json!("0"), json!(-0.0), json!(false)] {
        assert_eq!(
            rule(json!({ "replicas": replicas })).as_deref(),
            Some("replicas"),
            "{replicas}"
        );
    }
    for amount in [
        json!(1_000_000),
        json!("1_000_000"),
        json!("1e6"),
        json!(" 1001 "),
        json!(1000.5),
    ] {
        assert_eq!(rule(json!({ "amount": amount })).as_deref(), Some("amount"), "{amount}");
    }
    let harmless = json!({"force": "no", "replicas": 1, "amount": "1_000"});
    assert_eq!(rule(harmless).as_deref(), Some("rest"));
}

#[test]
fn explain_walks_the_rules_as_evaluate_does_and_says_why_each_missed() {
    let policy = compile(RULES);
    let eng = groups(&["eng"]);
    let ops = groups(&["ops"]);
    let drop = json!({"env": "prod", "sql": "DROP TABLE t"});
    let select = json!({"env": "prod", "sql": "SELECT 1"});
    let refund = json!({"amount": 5000});
    let cases = [
        facts(&eng, Some("run_sql"), Some(&drop)),
        facts(&eng, Some("run_sql"), Some(&select)),
        facts(&eng, Some("refund"), Some(&refund)),
        facts(&ops, Some("run_sql"), Some(&drop)),
        facts(&ops, None, None),
    ];
    for f in &cases {
        let (seen, verdict) = policy.explain(f);
        assert_eq!(verdict, policy.evaluate(f), "{f:?}");
        // Every rule before the decider says why it missed; the decider matched.
        let (last, before) = seen.split_last().expect("at least one rule looked at");
        assert!(before.iter().all(|c| c.mismatch.is_some()), "{seen:?}");
        assert_eq!(last.mismatch.is_none(), verdict.rule_id.is_some(), "{seen:?}");
    }
    let (seen, _) = policy.explain(&cases[1]);
    let why = seen[0].mismatch.as_deref().unwrap_or_default();
    assert!(why.starts_with("argument condition 2 (/sql matches"), "{why}");
    let (seen, _) = policy.explain(&cases[3]);
    assert_eq!(
        seen[0].mismatch.as_deref(),
        Some("no group of the caller is one of eng")
    );
}
