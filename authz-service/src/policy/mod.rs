//! Policy: per-tool, argument-aware rules deciding allow, deny or "needs approval".
//!
//! Rules are checked in order; the first whose every condition holds decides, and its id
//! is recorded with the decision. No rule matching means deny. A rule's conditions:
//! caller groups or subjects, upstream, MCP method, tool name (glob) and tool arguments
//! (JSON pointer with equals / one-of / regex / numeric comparison; bool and number
//! conditions match every spelling a lax upstream reads as that value, see [`coerce`]).
//! Everything is compiled once ([`Policy::compile`]) so that evaluation is a scan over prepared rules.
//!
//! This module is pure: [`Policy::evaluate`] takes the request's facts and returns the
//! decision; the Check wires it in.

use std::collections::{BTreeSet, HashMap};

use serde::Deserialize;
use serde_json::Value;

use gatehouse_core::tools::glob_match;

mod coerce;
pub mod reload;
pub mod visibility;

pub use reload::InForce;

/// What a rule decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    RequireApproval(ApprovalSpec),
}

/// How an approval works for a rule that requires one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSpec {
    /// Members of this group may approve (never the caller themself).
    pub approver_group: String,
    /// How long the Check waits for a decision before answering with the approval id.
    pub hold_seconds: u64,
    /// How long an approval stays pending before it expires.
    pub expires_seconds: u64,
    /// How long a granted approval lets the same call through.
    pub grant_seconds: u64,
    /// The grant is used up by the first call it lets through.
    pub single_use: bool,
    /// What happens when masking changed the arguments approvers would read.
    pub masked_arguments: MaskedArguments,
}

/// `approval.masked_arguments`: what approvers get when masking changed a call's arguments
/// (they cannot approve text they could not read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskedArguments {
    /// The call is refused with a clear error, before any approval is asked.
    #[default]
    Refuse,
    /// Approvers (only they, over REST with their token) see the clear arguments, kept in
    /// the service's memory while the approval is pending; records stay masked.
    ShowClear,
    /// Approvers see the masked arguments and what was masked where: for values approvers
    /// need not read (verified secrets of bounded length).
    ShowMasked,
}

impl MaskedArguments {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refuse => "refuse",
            Self::ShowClear => "show_clear",
            Self::ShowMasked => "show_masked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Refuse, Self::ShowClear, Self::ShowMasked]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// The facts of one request that rules look at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub subject: &'a str,
    pub groups: &'a BTreeSet<String>,
    pub upstream: &'a str,
    pub method: Option<&'a str>,
    /// The tool name of a `tools/call` (`None` for every other method).
    pub tool: Option<&'a str>,
    pub arguments: Option<&'a Value>,
}

/// The decision and the rule that made it (`None`: no rule matched, default deny).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<'p> {
    pub rule_id: Option<&'p str>,
    pub outcome: &'p Outcome,
}

/// The compiled rules.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    /// Positions of the rules naming each upstream, ascending.
    by_upstream: HashMap<String, Vec<usize>>,
    /// Positions of the rules for any upstream, ascending.
    any_upstream: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Rule {
    id: String,
    groups: Option<BTreeSet<String>>,
    subjects: Option<BTreeSet<String>>,
    upstreams: Option<BTreeSet<String>>,
    methods: Option<Vec<String>>,
    tools: Option<Vec<String>>,
    arguments: Vec<ArgumentCondition>,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
struct ArgumentCondition {
    /// The pointer's reference tokens, unescaped once at compile time.
    tokens: Vec<String>,
    test: ArgumentTest,
}

#[derive(Debug, Clone)]
enum ArgumentTest {
    Equals(Value),
    OneOf(Vec<Value>),
    Regex(regex::Regex),
    Compare { op: CompareOp, value: f64 },
    Present(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CompareOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

static DENY: Outcome = Outcome::Deny;

impl Policy {
    /// No rules: everything is denied.
    pub fn deny_all() -> Self {
        Self::indexed(Vec::new())
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Compiles `policy.rules`; every problem is listed with its path.
    pub fn compile(raw: &[RawRule]) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut ids = BTreeSet::new();
        let mut rules = Vec::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            let at = format!("policy.rules[{i}]");
            let problem = |problems: &mut Vec<(String, String)>, field: &str, message: String| {
                problems.push((format!("{at}{field}"), message));
            };
            if r.id.trim().is_empty() {
                problem(&mut problems, ".id", "must not be empty".into());
            } else if !ids.insert(r.id.clone()) {
                problem(&mut problems, ".id", format!("{:?} is used by an earlier rule", r.id));
            }
            let outcome = match (r.outcome, &r.approval) {
                (RawOutcome::Allow, None) => Outcome::Allow,
                (RawOutcome::Deny, None) => Outcome::Deny,
                (RawOutcome::Allow | RawOutcome::Deny, Some(_)) => {
                    problem(
                        &mut problems,
                        ".approval",
                        "only a rule with outcome `approve` takes an approval".into(),
                    );
                    Outcome::Deny
                }
                (RawOutcome::Approve, None) => {
                    problem(&mut problems, ".approval", "required with outcome `approve`".into());
                    Outcome::Deny
                }
                (RawOutcome::Approve, Some(a)) => {
                    if a.approver_group.trim().is_empty() {
                        problem(&mut problems, ".approval.approver_group", "must not be empty".into());
                    }
                    if a.hold_seconds > 300 {
                        problem(
                            &mut problems,
                            ".approval.hold_seconds",
                            "at most 300 (a Check cannot wait longer)".into(),
                        );
                    }
                    if !(1..=7 * 24 * 3600).contains(&a.expires_seconds) {
                        problem(
                            &mut problems,
                            ".approval.expires_seconds",
                            "must be between 1 and 604800".into(),
                        );
                    }
                    if !(1..=30 * 24 * 3600).contains(&a.grant_seconds) {
                        problem(
                            &mut problems,
                            ".approval.grant_seconds",
                            "must be between 1 and 2592000".into(),
                        );
                    }
                    Outcome::RequireApproval(ApprovalSpec {
                        approver_group: a.approver_group.clone(),
                        hold_seconds: a.hold_seconds,
                        expires_seconds: a.expires_seconds,
                        grant_seconds: a.grant_seconds,
                        single_use: a.single_use,
                        masked_arguments: a.masked_arguments,
                    })
                }
            };
            let mut arguments = Vec::new();
            for (j, c) in r.arguments.iter().enumerate() {
                let field = format!(".arguments[{j}]");
                if !(c.pointer.is_empty() || c.pointer.starts_with('/')) {
                    problem(
                        &mut problems,
                        &field,
                        format!("pointer {:?} must be empty or start with '/'", c.pointer),
                    );
                }
                let tests = [
                    c.equals.clone().map(ArgumentTest::Equals),
                    c.one_of.clone().map(ArgumentTest::OneOf),
                    c.regex
                        .as_deref()
                        .map(|re| match regex::RegexBuilder::new(re).size_limit(1 << 20).build() {
                            Ok(re) => ArgumentTest::Regex(re),
                            Err(e) => {
                                problem(&mut problems, &format!("{field}.regex"), e.to_string());
                                ArgumentTest::Present(false)
                            }
                        }),
                    c.gt.map(|value| ArgumentTest::Compare {
                        op: CompareOp::Gt,
                        value,
                    }),
                    c.gte.map(|value| ArgumentTest::Compare {
                        op: CompareOp::Gte,
                        value,
                    }),
                    c.lt.map(|value| ArgumentTest::Compare {
                        op: CompareOp::Lt,
                        value,
                    }),
                    c.lte.map(|value| ArgumentTest::Compare {
                        op: CompareOp::Lte,
                        value,
                    }),
                    c.present.map(ArgumentTest::Present),
                ];
                let mut given: Vec<ArgumentTest> = tests.into_iter().flatten().collect();
                if given.len() != 1 {
                    let message = "give exactly one of equals, one_of, regex, gt, gte, lt, lte, present";
                    problem(&mut problems, &field, message.into());
                }
                if let Some(test) = given.pop() {
                    arguments.push(ArgumentCondition {
                        tokens: pointer_tokens(&c.pointer),
                        test,
                    });
                }
            }
            let set = |v: &Option<Vec<String>>| v.as_ref().map(|v| v.iter().cloned().collect::<BTreeSet<_>>());
            rules.push(Rule {
                id: r.id.clone(),
                groups: set(&r.groups),
                subjects: set(&r.subjects),
                upstreams: set(&r.upstreams),
                methods: r.methods.clone(),
                tools: r.tools.clone(),
                arguments,
                outcome,
            });
        }
        if problems.is_empty() {
            Ok(Self::indexed(rules))
        } else {
            Err(problems)
        }
    }

    /// Indexes the rules by upstream: a call only looks at the rules for its upstream and
    /// those for any, which keeps a scan of many per-upstream rules short.
    fn indexed(rules: Vec<Rule>) -> Self {
        let mut by_upstream: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_upstream = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            match &rule.upstreams {
                Some(names) => names
                    .iter()
                    .for_each(|name| by_upstream.entry(name.clone()).or_default().push(i)),
                None => any_upstream.push(i),
            }
        }
        Self {
            rules,
            by_upstream,
            any_upstream,
        }
    }

    /// Each approval rule's id and hold time.
    pub fn holds(&self) -> impl Iterator<Item = (&str, u64)> {
        self.rules.iter().filter_map(|r| match &r.outcome {
            Outcome::RequireApproval(spec) => Some((r.id.as_str(), spec.hold_seconds)),
            _ => None,
        })
    }

    /// The first rule whose every condition holds decides; none → deny.
    pub fn evaluate(&self, facts: &Facts<'_>) -> Verdict<'_> {
        let named = self.by_upstream.get(facts.upstream).map_or(&[][..], Vec::as_slice);
        let (mut a, mut b) = (named.iter().peekable(), self.any_upstream.iter().peekable());
        // The two ascending lists, merged: the rules in file order.
        while let Some(&i) = match (a.peek(), b.peek()) {
            (Some(&&x), Some(&&y)) if x < y => a.next(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => None,
        } {
            let rule = &self.rules[i];
            if rule.matches(facts) {
                return Verdict {
                    rule_id: Some(&rule.id),
                    outcome: &rule.outcome,
                };
            }
        }
        Verdict {
            rule_id: None,
            outcome: &DENY,
        }
    }
}

/// One rule as `explain` shows it: its id, and why it did not match (`None`: it matched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Considered<'p> {
    pub rule_id: &'p str,
    pub mismatch: Option<String>,
}

impl Policy {
    /// Every rule the call is looked at by, in order, up to the one that decides (the same
    /// walk as [`evaluate`](Self::evaluate)), and the verdict.
    pub fn explain(&self, facts: &Facts<'_>) -> (Vec<Considered<'_>>, Verdict<'_>) {
        let mut seen = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let for_upstream = rule.upstreams.as_ref().is_none_or(|u| u.contains(facts.upstream));
            if !for_upstream {
                continue;
            }
            let mismatch = rule.mismatch(facts);
            let decides = mismatch.is_none();
            seen.push(Considered {
                rule_id: &rule.id,
                mismatch,
            });
            if decides {
                let verdict = Verdict {
                    rule_id: Some(&self.rules[i].id),
                    outcome: &self.rules[i].outcome,
                };
                return (seen, verdict);
            }
        }
        (
            seen,
            Verdict {
                rule_id: None,
                outcome: &DENY,
            },
        )
    }
}

impl Rule {
    /// Why this rule does not match the call: its first condition that fails, in words.
    fn mismatch(&self, f: &Facts<'_>) -> Option<String> {
        let list = |items: &mut dyn Iterator<Item = &String>| items.map(String::as_str).collect::<Vec<_>>().join(", ");
        if let Some(tools) = &self.tools
            && !f.tool.is_some_and(|t| tools.iter().any(|g| glob_match(g, t)))
        {
            return Some(match f.tool {
                Some(tool) => format!("tool {tool:?} is not one of {}", list(&mut tools.iter())),
                None => format!("only for tools/call of {}", list(&mut tools.iter())),
            });
        }
        if let Some(methods) = &self.methods
            && !f.method.is_some_and(|m| methods.iter().any(|g| glob_match(g, m)))
        {
            return Some(format!(
                "method {:?} is not one of {}",
                f.method.unwrap_or("(none)"),
                list(&mut methods.iter())
            ));
        }
        if let Some(subjects) = &self.subjects
            && !subjects.contains(f.subject)
        {
            return Some(format!(
                "subject {:?} is not one of {}",
                f.subject,
                list(&mut subjects.iter())
            ));
        }
        if let Some(groups) = &self.groups
            && groups.is_disjoint(f.groups)
        {
            return Some(format!("no group of the caller is one of {}", list(&mut groups.iter())));
        }
        self.arguments.iter().position(|c| !c.holds(f.arguments)).map(|n| {
            format!(
                "argument condition {} ({}) does not hold",
                n + 1,
                self.arguments[n].describe()
            )
        })
    }

    fn matches(&self, f: &Facts<'_>) -> bool {
        let in_set = |set: &Option<BTreeSet<String>>, value: &str| set.as_ref().is_none_or(|s| s.contains(value));
        let globs = |globs: &Option<Vec<String>>, value: Option<&str>| match globs {
            None => true,
            Some(globs) => value.is_some_and(|v| globs.iter().any(|g| glob_match(g, v))),
        };
        // Cheapest and most selective first: a full scan of 1,000 rules is the worst case.
        in_set(&self.upstreams, f.upstream)
            && globs(&self.tools, f.tool)
            && globs(&self.methods, f.method)
            && in_set(&self.subjects, f.subject)
            && self.groups.as_ref().is_none_or(|g| !g.is_disjoint(f.groups))
            && self.arguments.iter().all(|c| c.holds(f.arguments))
    }
}

impl ArgumentCondition {
    /// `/sql regex "…"`, `/force equals true`, `/n gt 10`, `/x present`.
    fn describe(&self) -> String {
        let pointer: String = self.tokens.iter().map(|t| format!("/{t}")).collect();
        let test = match &self.test {
            ArgumentTest::Equals(v) => format!("equals {v}"),
            ArgumentTest::OneOf(vs) => format!("one of {}", Value::Array(vs.clone())),
            ArgumentTest::Regex(re) => format!("matches {:?}", re.as_str()),
            ArgumentTest::Compare { op, value } => format!("{op:?} {value}").to_lowercase(),
            ArgumentTest::Present(true) => "present".to_owned(),
            ArgumentTest::Present(false) => "absent".to_owned(),
        };
        format!("{pointer} {test}")
    }

    fn holds(&self, arguments: Option<&Value>) -> bool {
        let value = arguments.and_then(|a| lookup(a, &self.tokens));
        match (&self.test, value) {
            (ArgumentTest::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            // As the upstream reads the value: `"yes"` is `true` there, `"1_000"` is 1000.
            (ArgumentTest::Equals(want), Some(v)) => coerce::lax_equals(want, v),
            (ArgumentTest::OneOf(options), Some(v)) => options.iter().any(|o| coerce::lax_equals(o, v)),
            (ArgumentTest::Regex(re), Some(Value::String(s))) => re.is_match(s),
            (ArgumentTest::Regex(_), Some(_)) => false,
            (ArgumentTest::Compare { op, value: bound }, Some(v)) => {
                let Some(n) = coerce::lax_number(v).map(coerce::Number::as_f64) else {
                    return false;
                };
                match op {
                    CompareOp::Gt => n > *bound,
                    CompareOp::Gte => n >= *bound,
                    CompareOp::Lt => n < *bound,
                    CompareOp::Lte => n <= *bound,
                }
            }
        }
    }
}

/// RFC 6901: "" is the whole value; "/a~1b/0" is ["a/b", "0"].
fn pointer_tokens(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// `Value::pointer` over tokens split once (it would unescape them on every call). A key
/// that matches only after case folding counts too: an upstream that reads JSON keys
/// case-insensitively (Go's encoding/json) acts on `{"FORCE": true}` as on `force`, so the
/// rule must see it. Two keys that fold alike never get this far (the request is refused).
fn lookup<'v>(value: &'v Value, tokens: &[String]) -> Option<&'v Value> {
    tokens.iter().try_fold(value, |v, token| match v {
        Value::Object(map) => map.get(token).or_else(|| {
            let folded = gatehouse_core::mcp::fold_key(token);
            map.iter()
                .find(|(k, _)| gatehouse_core::mcp::fold_key(k) == folded)
                .map(|(_, v)| v)
        }),
        Value::Array(items) => {
            // As RFC 6901 (and serde_json): no sign, no leading zero.
            if token.starts_with('+') || (token.len() > 1 && token.starts_with('0')) {
                return None;
            }
            token.parse::<usize>().ok().and_then(|i| items.get(i))
        }
        _ => None,
    })
}

/// One rule as written in `gatehouse.yaml` (`policy.rules[]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: String,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub subjects: Option<Vec<String>>,
    #[serde(default)]
    pub upstreams: Option<Vec<String>>,
    /// MCP methods (globs), e.g. `tools/call`.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Tool names (globs); a rule with `tools` only matches `tools/call`.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    #[serde(default)]
    pub arguments: Vec<RawArgumentCondition>,
    pub outcome: RawOutcome,
    #[serde(default)]
    pub approval: Option<RawApproval>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawOutcome {
    Allow,
    Deny,
    Approve,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApproval {
    pub approver_group: String,
    #[serde(default = "default_hold_seconds")]
    pub hold_seconds: u64,
    #[serde(default = "default_expires_seconds")]
    pub expires_seconds: u64,
    #[serde(default = "default_grant_seconds")]
    pub grant_seconds: u64,
    #[serde(default = "default_single_use")]
    pub single_use: bool,
    #[serde(default)]
    pub masked_arguments: MaskedArguments,
}

fn default_hold_seconds() -> u64 {
    30
}
fn default_expires_seconds() -> u64 {
    3600
}
fn default_grant_seconds() -> u64 {
    600
}
fn default_single_use() -> bool {
    true
}

/// One condition on the tool arguments: the value at `pointer` (RFC 6901) and exactly one
/// test.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArgumentCondition {
    pub pointer: String,
    #[serde(default)]
    pub equals: Option<Value>,
    #[serde(default)]
    pub one_of: Option<Vec<Value>>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub gt: Option<f64>,
    #[serde(default)]
    pub gte: Option<f64>,
    #[serde(default)]
    pub lt: Option<f64>,
    #[serde(default)]
    pub lte: Option<f64>,
    #[serde(default)]
    pub present: Option<bool>,
}

#[cfg(test)]
mod tests;
