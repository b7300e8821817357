//! Which tools a caller may see: the policy read backwards, from rules to tool names.
//!
//! A `tools/list` answer shows only the tools the caller could call, so that a denied call
//! does not tell whether the tool exists. Arguments are only known at call time, so a tool
//! is visible when *some* call of it could be allowed (or approved): an argument-conditional
//! allow shows its tools, an argument-conditional deny hides nothing. The filter applies the
//! result ([`ToolVisibility`], sent in the `x-gatehouse-tools` header of the OK Check).

use std::collections::BTreeSet;

use gatehouse_core::tools::{ToolVisibility, VisibilityEntry};

use super::{Outcome, Policy, Rule};
use gatehouse_core::tools::glob_match;

/// The method whose calls the visibility is about.
const TOOLS_CALL: &str = "tools/call";

impl Policy {
    /// The tools this caller could call on `upstream`: the rules that can decide one of its
    /// `tools/call`s, in order, each showing (allow, approve) or hiding (deny) its tools;
    /// a tool no rule decides is hidden, as its calls are denied.
    pub fn tool_visibility(&self, subject: &str, groups: &BTreeSet<String>, upstream: &str) -> ToolVisibility {
        let mut entries = Vec::new();
        for rule in self
            .rules
            .iter()
            .filter(|r| r.decides_calls_of(subject, groups, upstream))
        {
            let visible = match rule.outcome {
                Outcome::Allow | Outcome::RequireApproval(_) => true,
                Outcome::Deny if rule.arguments.is_empty() => false,
                // Calls with other arguments get past it, to the rules after it.
                Outcome::Deny => continue,
            };
            let entry = |glob: &str| VisibilityEntry {
                visible,
                glob: glob.to_owned(),
            };
            match &rule.tools {
                None => entries.push(entry("*")),
                Some(globs) => entries.extend(globs.iter().map(|g| entry(g))),
            }
        }
        ToolVisibility::new(entries)
    }
}

impl Rule {
    /// Whether this rule can match a `tools/call` by this caller on this upstream, whatever
    /// the tool and arguments (the conditions [`Rule::matches`] checks first).
    fn decides_calls_of(&self, subject: &str, groups: &BTreeSet<String>, upstream: &str) -> bool {
        self.groups.as_ref().is_none_or(|g| !g.is_disjoint(groups))
            && self.subjects.as_ref().is_none_or(|s| s.contains(subject))
            && self.upstreams.as_ref().is_none_or(|u| u.contains(upstream))
            && self
                .methods
                .as_ref()
                .is_none_or(|m| m.iter().any(|g| glob_match(g, TOOLS_CALL)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{Facts, RawRule};
    use super::*;

    fn compile(yaml: &str) -> Policy {
        let raw: Vec<RawRule> = serde_yaml::from_str(yaml).unwrap();
        Policy::compile(&raw).unwrap()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn shown(glob: &str) -> VisibilityEntry {
        VisibilityEntry::shown(glob)
    }

    fn hidden(glob: &str) -> VisibilityEntry {
        VisibilityEntry::hidden(glob)
    }

    const RULES: &str = r#"
- id: session
  methods: [initialize, "notifications/*", tools/list, ping]
  outcome: allow
- id: no-drops
  tools: ["drop_*"]
  outcome: deny
- id: big-refunds-denied
  tools: [refund]
  arguments: [{pointer: /amount, gt: 1000}]
  outcome: deny
- id: support-reads
  groups: [support]
  tools: ["find_*", refund]
  outcome: allow
- id: prod-sql-needs-approval
  groups: [eng]
  tools: [run_sql]
  arguments: [{pointer: /env, equals: prod}]
  outcome: approve
  approval: {approver_group: approvers}
- id: eng-everything-on-db
  groups: [eng]
  upstreams: [db]
  outcome: allow
- id: bob-echo
  subjects: [bob]
  tools: [echo]
  outcome: allow
"#;

    #[test]
    fn rules_are_read_in_order_for_the_caller() {
        let policy = compile(RULES);
        let support = policy.tool_visibility("sam", &set(&["support"]), "crm");
        assert_eq!(
            support.entries(),
            [hidden("drop_*"), shown("find_*"), shown("refund")],
            "the method-only rule and the argument-conditional deny decide no tool"
        );
        assert!(support.is_visible("find_customer") && support.is_visible("refund"));
        assert!(!support.is_visible("run_sql") && !support.is_visible("echo"));

        let eng = policy.tool_visibility("erin", &set(&["eng"]), "db");
        assert_eq!(eng.entries(), [hidden("drop_*"), shown("run_sql"), shown("*")]);
        assert!(!eng.is_visible("drop_table"), "the deny before the catch-all wins");
        assert!(eng.is_visible("anything_else"));

        // The upstream, the subject and the groups must fit.
        let eng_elsewhere = policy.tool_visibility("erin", &set(&["eng"]), "crm");
        assert_eq!(eng_elsewhere.entries(), [hidden("drop_*"), shown("run_sql")]);
        let bob = policy.tool_visibility("bob", &set(&["sales"]), "crm");
        assert_eq!(bob.entries(), [hidden("drop_*"), shown("echo")]);
        assert_eq!(
            policy.tool_visibility("mallory", &set(&["sales"]), "crm"),
            ToolVisibility::none()
        );
        assert_eq!(
            Policy::deny_all().tool_visibility("bob", &set(&[]), "db"),
            ToolVisibility::none()
        );
    }

    #[test]
    fn argument_conditions_show_an_allow_and_ignore_a_deny() {
        let policy = compile(
            r#"
- id: small-refunds
  tools: [refund]
  arguments: [{pointer: /amount, lte: 100}]
  outcome: allow
- id: no-prod
  tools: ["run_*"]
  arguments: [{pointer: /env, equals: prod}]
  outcome: deny
- id: runs
  tools: [run_sql]
  outcome: allow
"#,
        );
        let v = policy.tool_visibility("a", &set(&["x"]), "db");
        assert_eq!(v.entries(), [shown("refund"), shown("run_sql")]);
        assert!(!v.is_visible("run_shell"));
    }

    #[test]
    fn a_rule_for_other_methods_decides_no_tool() {
        let policy = compile(
            r#"
- id: lists
  methods: [tools/list]
  outcome: allow
- id: all-calls-of-admins
  groups: [admin]
  methods: ["tools/*"]
  outcome: allow
- id: no-calls
  methods: [tools/call]
  outcome: deny
- id: never-reached
  outcome: allow
"#,
        );
        assert_eq!(
            policy.tool_visibility("a", &set(&["admin"]), "db"),
            ToolVisibility::all()
        );
        assert_eq!(
            policy.tool_visibility("a", &set(&["eng"]), "db"),
            ToolVisibility::none(),
            "the deny-all on calls hides everything after it"
        );
    }

    #[test]
    fn what_is_visible_is_what_could_be_called() {
        let policy = compile(RULES);
        let cases = [
            ("sam", set(&["support"]), "crm"),
            ("erin", set(&["eng"]), "db"),
            ("erin", set(&["eng"]), "crm"),
            ("bob", set(&["sales", "support"]), "db"),
            ("mallory", set(&[]), "db"),
        ];
        let tools = ["find_customer", "refund", "drop_table", "run_sql", "echo", "other"];
        let arguments = [json!({}), json!({"amount": 5000, "env": "prod"}), json!({"env": "dev"})];
        for (subject, groups, upstream) in &cases {
            let v = policy.tool_visibility(subject, groups, upstream);
            for tool in tools {
                let callable = arguments.iter().any(|args| {
                    let facts = Facts {
                        subject,
                        groups,
                        upstream,
                        method: Some(TOOLS_CALL),
                        tool: Some(tool),
                        arguments: Some(args),
                    };
                    policy.evaluate(&facts).outcome != &Outcome::Deny
                });
                assert_eq!(v.is_visible(tool), callable, "{subject} {groups:?} {upstream} {tool}");
            }
        }
    }
}
