use std::path::Path;

use super::*;

pub(crate) const GOOD: &str = r#"
service:
  rest_listen: 127.0.0.1:9090
  grpc_listen: 127.0.0.1:9091
  public_url: http://127.0.0.1:8080
  grpc_plaintext: true
identity:
  issuer: http://127.0.0.1:9090/dev
  audience: gatehouse
  dev_issuer: { enabled: true, key_file: state/dev.pem }
audit:
  database: sqlite://state/audit.db
  writer_id: gh-1
  auditor_group: auditors
upstreams:
  - name: everything
    url: http://127.0.0.1:3001/mcp
    path: /mcp
    allow_groups: [eng]
  - name: other
    url: https://mcp.example.com/v1/mcp
    allow_groups: [eng, ops]
envoy:
  admin_listen: 127.0.0.1:9901
  http_listen: 127.0.0.1:8080
  wasm: target/gatehouse_filter.wasm
"#;

#[test]
fn a_good_file_validates_with_defaults_and_resolved_paths() {
    let c = Config::parse(GOOD, Path::new("/etc/gh/gatehouse.yaml")).unwrap();
    assert_eq!(c.identity.groups_claim, "groups");
    assert_eq!(c.audit.database, "sqlite:///etc/gh/state/audit.db");
    assert_eq!(c.envoy.wasm, Path::new("/etc/gh/target/gatehouse_filter.wasm"));
    assert_eq!(c.upstreams[1].path, "/mcp/other");
    assert_eq!(c.upstreams[1].authority(), "mcp.example.com");
    assert!(c.upstreams[1].is_tls());
    assert_eq!(
        c.identity.dev_issuer.unwrap().key_file,
        Path::new("/etc/gh/state/dev.pem")
    );
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let bad = GOOD
        .replace("127.0.0.1:9091", "nowhere")
        .replace("http://127.0.0.1:3001/mcp", "ftp://x")
        .replace("allow_groups: [eng]\n", "allow_groups: []\n")
        .replace("name: other", "name: everything");
    let errs = Config::parse(&bad, Path::new("g.yaml")).unwrap_err();
    let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "service.grpc_listen",
            "upstreams[0].url",
            "upstreams[0].allow_groups",
            "upstreams[1].name"
        ],
        "{errs}"
    );
}

#[test]
fn the_grpc_listener_needs_mtls_unless_plaintext_is_asked_for_on_loopback() {
    let parse = |text: &str| Config::parse(text, Path::new("/etc/gh/g.yaml"));
    let paths = |text: &str| -> Vec<String> { parse(text).unwrap_err().0.into_iter().map(|e| e.path).collect() };
    // Neither TLS nor an explicit plaintext: refused.
    let silent = GOOD.replace("  grpc_plaintext: true\n", "");
    assert_eq!(paths(&silent), ["service.grpc_tls"]);
    // Plaintext off loopback: refused, even when asked for.
    let exposed = GOOD.replace("grpc_listen: 127.0.0.1:9091", "grpc_listen: 0.0.0.0:9091");
    assert_eq!(paths(&exposed), ["service.grpc_plaintext"]);
    // mTLS anywhere: its files resolved against the config's folder.
    let tls = silent.replace(
        "grpc_listen: 127.0.0.1:9091",
        "grpc_listen: 0.0.0.0:9091\n  grpc_tls: {ca_file: tls/ca.crt, cert_file: tls/s.crt, key_file: tls/s.key, \
         client_cert_file: tls/c.crt, client_key_file: /abs/c.key}",
    );
    let c = parse(&tls).unwrap();
    let t = c.service.grpc_tls.unwrap();
    assert_eq!(t.ca_file, Path::new("/etc/gh/tls/ca.crt"));
    assert_eq!(t.client_key_file, Path::new("/abs/c.key"));
    // Both at once is a contradiction.
    let both = tls.replace(
        "grpc_listen: 0.0.0.0:9091",
        "grpc_listen: 0.0.0.0:9091\n  grpc_plaintext: true",
    );
    assert_eq!(paths(&both), ["service.grpc_plaintext"]);
}

#[test]
fn envoy_admin_stays_on_loopback_unless_said_otherwise() {
    let exposed = GOOD.replace("admin_listen: 127.0.0.1:9901", "admin_listen: 0.0.0.0:9901");
    let errs = Config::parse(&exposed, Path::new("g.yaml")).unwrap_err();
    assert_eq!(errs.0[0].path, "envoy.admin_listen", "{errs}");
    let allowed = exposed.replace(
        "admin_listen: 0.0.0.0:9901",
        "admin_listen: 0.0.0.0:9901\n  admin_allow_remote: true",
    );
    assert!(Config::parse(&allowed, Path::new("g.yaml")).is_ok());
}

#[test]
fn unknown_fields_are_refused() {
    let bad = GOOD.replace("  audience: gatehouse", "  audience: gatehouse\n  audiense: typo");
    let errs = Config::parse(&bad, Path::new("g.yaml")).unwrap_err();
    assert!(errs.to_string().contains("audiense"), "{errs}");
}

#[test]
fn a_partial_file_gets_every_structural_problem() {
    let text = "service:\n  rest_listen: [1]\n  bogus: 1\nidentity:\n  issuer: https://idp.example\n\
                upstreams:\n  - name: a\n    url: http://x\n    colour: blue\nextra: 1\n";
    let errs = Config::parse(text, Path::new("g.yaml")).unwrap_err();
    let got: Vec<(&str, &str)> = errs.0.iter().map(|e| (e.path.as_str(), e.message.as_str())).collect();
    assert_eq!(
        got,
        [
            (
                "extra",
                "unknown section (expected one of service, identity, audit, upstreams, envoy, masking, policy, approvals, recording)"
            ),
            ("service.rest_listen", "invalid type: sequence, expected a string"),
            ("service.bogus", "unknown field `bogus`"),
            ("service.grpc_listen", "missing: this field is required"),
            ("service.public_url", "missing: this field is required"),
            ("identity.audience", "missing: this field is required"),
            ("audit", "missing: this section is required"),
            ("upstreams[0].colour", "unknown field `colour`"),
            ("envoy", "missing: this section is required"),
            // Then the values, checked with stand-ins for what is missing.
            (
                "service.grpc_tls",
                "required: Envoy must call the service over mTLS (or set grpc_plaintext: true on a loopback grpc_listen)"
            ),
            (
                "upstreams[0].allow_groups",
                "no group may use this upstream; list at least one"
            ),
        ],
        "{errs}"
    );
}

#[test]
fn a_partial_file_gets_its_value_problems_too_but_none_about_what_stands_in() {
    let text = "service:\n  grpc_listen: nowhere\n  grpc_plaintext: true\n\
                upstreams:\n  - {name: orders, url: 'ftp://x', allow_groups: [eng], path: [1]}\n";
    let errs = Config::parse(text, Path::new("g.yaml")).unwrap_err();
    let got: Vec<(&str, &str)> = errs.0.iter().map(|e| (e.path.as_str(), e.message.as_str())).collect();
    assert_eq!(
        got,
        [
            ("service.rest_listen", "missing: this field is required"),
            ("service.public_url", "missing: this field is required"),
            ("identity", "missing: this section is required"),
            ("audit", "missing: this section is required"),
            ("upstreams[0].path", "invalid type: sequence, expected a string"),
            ("envoy", "missing: this section is required"),
            ("service.grpc_listen", "\"nowhere\" is not an IP:port address"),
            ("upstreams[0].url", "\"ftp://x\" must be an absolute http or https URL"),
        ],
        "{errs}"
    );
    assert!(!errs.to_string().contains("stand-in"), "{errs}");
}

#[test]
fn https_needs_a_certificate() {
    let bad = GOOD.replace("  http_listen: 127.0.0.1:8080", "  https_listen: 127.0.0.1:8443");
    let errs = Config::parse(&bad, Path::new("g.yaml")).unwrap_err();
    let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["envoy.tls_cert", "envoy.tls_key"]);
}

#[test]
fn masking_rules_and_reveal_are_validated_together() {
    let good = format!(
        "{GOOD}masking:\n  token_key_file: state/mask.key\n  styles: {{email: token, credit_card: last4}}\n  custom: [{{name: employee_id, pattern: 'EMP-[0-9]{{6}}'}}]\n  reveal:\n    - {{kinds: [email], groups: [support], upstreams: [everything], tools: ['find_*']}}\n"
    );
    let c = Config::parse(&good, Path::new("/etc/gh/gatehouse.yaml")).unwrap();
    assert_eq!(
        c.masking.token_key_file.as_deref(),
        Some(Path::new("/etc/gh/state/mask.key"))
    );
    assert_eq!(c.masking.reveal.len(), 1);
    assert_eq!(c.masking.rules.custom[0].name, "employee_id");

    let bad = format!(
        "{GOOD}masking:\n  default_style: token\n  custom: [{{name: bad, pattern: '(unclosed'}}]\n  reveal:\n    - {{kinds: [email], groups: [], upstreams: [nowhere]}}\n    - {{kinds: [no_such_kind], groups: [g]}}\n"
    );
    let errs = Config::parse(&bad, Path::new("g.yaml")).unwrap_err();
    let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "masking.token_key_file",
            "masking.custom[0].pattern",
            "masking.reveal[0].groups",
            "masking.reveal[0].upstreams",
            "masking.reveal[1].kinds",
        ],
        "{errs}"
    );
}

#[test]
fn max_response_bytes_is_bounded() {
    let bad = GOOD.replace("  wasm:", "  max_response_bytes: 10\n  wasm:");
    let errs = Config::parse(&bad, Path::new("g.yaml")).unwrap_err();
    assert_eq!(errs.0[0].path, "envoy.max_response_bytes");
}

#[test]
fn approvals_default_to_the_rest_listener_page_and_check_their_webhook() {
    let c = Config::parse(GOOD, Path::new("/etc/gh/gatehouse.yaml")).unwrap();
    assert_eq!(c.approvals.ui_url.as_str(), "http://127.0.0.1:9090/ui");
    assert!(c.approvals.webhook.is_none());

    let bad = format!("{GOOD}approvals:\n  webhook: {{ url: \"ftp://hooks.example/secret-part\", attempts: 0 }}\n");
    let errors = Config::parse(&bad, Path::new("/g.yaml")).unwrap_err();
    let text = errors.to_string();
    assert!(
        text.contains("approvals.webhook: the URL must be an http or https URL"),
        "{text}"
    );
    assert!(text.contains("approvals.webhook.attempts"), "{text}");
    assert!(!text.contains("secret-part"), "a webhook URL is a secret: {text}");

    let good = format!("{GOOD}approvals:\n  webhook: {{ url: \"https://hooks.example/secret-part\" }}\n");
    let c = Config::parse(&good, Path::new("/g.yaml")).unwrap();
    assert!(!format!("{:?}", c.approvals).contains("secret-part"));
}

#[test]
fn a_hold_longer_than_the_check_timeout_is_refused() {
    let rule = "policy:\n  rules:\n    - { id: slow, tools: [x], outcome: approve, approval: { approver_group: ops, hold_seconds: 30 } }\n";
    let errors = Config::parse(&format!("{GOOD}{rule}"), Path::new("/g.yaml")).unwrap_err();
    assert!(
        errors
            .0
            .iter()
            .any(|e| e.path == "envoy.ext_authz_timeout_ms" && e.message.contains("31000")),
        "{errors}"
    );
    let raised = GOOD.replace("  wasm: target", "  ext_authz_timeout_ms: 31000\n  wasm: target");
    assert!(Config::parse(&format!("{raised}{rule}"), Path::new("/g.yaml")).is_ok());
}

#[test]
fn an_upstream_ca_file_must_exist_and_goes_with_https_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    let with = |url: &str, ca: &str| {
        GOOD.replace(
            "    url: https://mcp.example.com/v1/mcp\n",
            &format!("    url: {url}\n    ca_file: {ca}\n"),
        )
    };
    let c = Config::parse(
        &with("https://mcp.example.com/v1/mcp", "ca.crt"),
        &dir.path().join("g.yaml"),
    )
    .unwrap();
    assert_eq!(
        c.upstreams[1].ca_file.as_deref(),
        Some(dir.path().join("ca.crt").as_path())
    );
    let rendered = crate::envoy_config::render(&c).unwrap();
    assert!(
        rendered.contains(&dir.path().join("ca.crt").display().to_string()),
        "the cluster does not trust the configured CA file"
    );

    let errors = Config::parse(
        &with("http://mcp.example.com/v1/mcp", "missing.crt"),
        &dir.path().join("g.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        errors.contains("upstreams[1].ca_file: only an https upstream"),
        "{errors}"
    );
    assert!(errors.contains("upstreams[1].ca_file: cannot read"), "{errors}");
}

#[test]
fn a_static_header_credential_is_checked_and_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), "sk-secret-part\n").unwrap();
    let with = |credentials: &str| {
        GOOD.replace(
            "    allow_groups: [eng, ops]\n",
            &format!("    allow_groups: [eng, ops]\n    credentials: {credentials}\n"),
        )
    };
    let good = with("{ type: static_header, header: X-Api-Key, value_file: key }");
    let c = Config::parse(&good, &dir.path().join("g.yaml")).unwrap();
    match &c.upstreams[1].credentials {
        UpstreamCredentials::StaticHeader { header, value } => {
            assert_eq!((header.as_str(), value.0.as_str()), ("x-api-key", "sk-secret-part"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!format!("{c:?}").contains("sk-secret-part"), "Debug shows the secret");

    for (credentials, expected) in [
        (
            "{ type: static_header, header: host, value_file: key }",
            "credentials.header",
        ),
        (
            "{ type: static_header, header: x-gatehouse-reveal, value_file: key }",
            "credentials.header",
        ),
        (
            "{ type: static_header, header: x-api-key, value_file: nope }",
            "credentials.value_file: cannot read",
        ),
        (
            "{ type: static_header, header: x-api-key, value_env: GATEHOUSE_UNSET_VAR_FOR_TEST }",
            "is not set",
        ),
        (
            "{ type: static_header, header: x-api-key }",
            "exactly one of value_file and value_env",
        ),
        (
            "{ type: static_header, header: x-api-key, value_file: key, extra: 1 }",
            "unknown field",
        ),
    ] {
        let errors = match Config::parse(&with(credentials), &dir.path().join("g.yaml")) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted {credentials}"),
        };
        assert!(errors.contains(expected), "{credentials}: {errors}");
        assert!(!errors.contains("sk-secret-part"), "{errors}");
    }
}

#[test]
fn an_aws_sigv4_credential_is_checked_as_sts_would() {
    let dir = tempfile::tempdir().unwrap();
    let with = |credentials: &str| {
        GOOD.replace(
            "    allow_groups: [eng, ops]\n",
            &format!("    allow_groups: [eng, ops]\n    credentials: {credentials}\n"),
        )
    };
    let good = with(
        "{ type: aws_sigv4, role_arn: \"arn:aws:iam::123456789012:role/mcp/caller\", region: eu-west-1, \
         service: execute-api, external_id: ext-1, session_policy: { Version: \"2012-10-17\" }, \
         sts_endpoint: \"http://127.0.0.1:5000/\", tag_groups: [\"eng*\"] }",
    );
    let c = Config::parse(&good, &dir.path().join("g.yaml")).unwrap();
    match &c.upstreams[1].credentials {
        UpstreamCredentials::AwsSigv4(a) => {
            assert_eq!(a.session_duration.as_secs(), 3600, "the default");
            assert_eq!(a.session_policy.as_deref(), Some(r#"{"Version":"2012-10-17"}"#));
            assert_eq!(a.sts_endpoint.as_ref().map(|u| u.port()), Some(Some(5000)));
        }
        other => panic!("{other:?}"),
    }
    let base = "type: aws_sigv4, role_arn: \"arn:aws:iam::123456789012:role/r\", region: us-east-1, service: lambda";
    for (more, expected) in [
        ("role_arn: \"arn:aws:iam::123:role/r\"", "credentials.role_arn"),
        ("role_arn: \"arn:aws:iam::123456789012:user/r\"", "credentials.role_arn"),
        ("region: US_EAST", "credentials.region"),
        ("service: \"\"", "credentials.service"),
        ("session_duration_s: 600", "900 to 43200"),
        ("session_duration_s: 50000", "900 to 43200"),
        ("external_id: x", "credentials.external_id"),
        ("sts_endpoint: \"ftp://sts\"", "credentials.sts_endpoint"),
        ("sts_endpoint: \"http://sts.example.com\"", "must be https"),
        (
            "role_arn: \"arn:awsx:iam::123456789012:role/r\"",
            "credentials.role_arn",
        ),
        ("external_id: \"two words\"", "credentials.external_id"),
        ("roles: []", "unknown field"),
    ] {
        // Each case replaces one key of the base (a YAML mapping may not repeat a key).
        let key = more.split(':').next().unwrap_or_default();
        let kept: Vec<&str> = base
            .split(", ")
            .filter(|kv| !kv.starts_with(&format!("{key}:")))
            .collect();
        let credentials = format!("{{ {}, {more} }}", kept.join(", "));
        let errors = match Config::parse(&with(&credentials), &dir.path().join("g.yaml")) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted {credentials}"),
        };
        assert!(errors.contains(expected), "{credentials}: {errors}");
    }
}

#[test]
fn approvals_have_their_own_audience_and_caps() {
    let c = Config::parse(GOOD, Path::new("/g.yaml")).unwrap();
    assert_eq!(c.approvals.audience, "gatehouse-approvals");
    assert_ne!(c.approvals.audience, c.identity.audience);
    assert_eq!(
        (
            c.approvals.max_held_per_caller,
            c.approvals.max_pending_per_caller,
            c.approvals.max_held
        ),
        (8, 20, 256)
    );
    let bad =
        format!("{GOOD}approvals:\n  audience: gatehouse\n  max_held_per_caller: 300\n  max_pending_per_caller: 0\n");
    let text = Config::parse(&bad, Path::new("/g.yaml")).unwrap_err().to_string();
    assert!(
        text.contains("approvals.audience: must differ from identity.audience"),
        "{text}"
    );
    assert!(
        text.contains("approvals.max_pending_per_caller: must be at least 1"),
        "{text}"
    );
    assert!(
        text.contains("approvals.max_held_per_caller: must not be more than approvals.max_held"),
        "{text}"
    );
}

#[test]
fn extra_hosts_and_origins_are_checked_and_lower_cased() {
    let with = |extra: &str| {
        GOOD.replace(
            "  wasm: target/gatehouse_filter.wasm",
            &format!("  wasm: target/gatehouse_filter.wasm\n{extra}"),
        )
    };
    let good = with(
        "  allowed_hosts: [MCP.example.com, \"10.0.0.5:8443\", \"[::1]:8080\"]\n  allowed_origins: [\"https://App.example.com\", \"http://localhost:3000\"]",
    );
    let c = Config::parse(&good, Path::new("/etc/gh/gatehouse.yaml")).unwrap();
    assert_eq!(
        c.envoy.allowed_hosts,
        ["mcp.example.com", "10.0.0.5:8443", "[::1]:8080"]
    );
    assert_eq!(
        c.envoy.allowed_origins,
        ["https://app.example.com", "http://localhost:3000"]
    );
    assert_eq!(c.service.session_key_file, None);

    let bad = with(
        "  allowed_hosts: [\"\", \"http://x.example.com\", \"x.example.com/path\", \"a b\"]\n  allowed_origins: [\"https://app.example.com/\", \"app.example.com\", \"ftp://x.example.com\", \"https://a.example.com/p\"]",
    );
    let errors = Config::parse(&bad, Path::new("/etc/gh/gatehouse.yaml")).unwrap_err();
    let paths: Vec<_> = errors.0.iter().map(|e| e.path.as_str()).collect();
    for i in 0..4 {
        assert!(
            paths.contains(&format!("envoy.allowed_hosts[{i}]").as_str()),
            "{errors:?}"
        );
        assert!(
            paths.contains(&format!("envoy.allowed_origins[{i}]").as_str()),
            "{errors:?}"
        );
    }
}

#[test]
fn the_session_key_file_is_resolved_against_the_config() {
    let text = GOOD.replace(
        "  public_url: http://127.0.0.1:8080",
        "  public_url: http://127.0.0.1:8080\n  session_key_file: state/session.key",
    );
    let c = Config::parse(&text, Path::new("/etc/gh/gatehouse.yaml")).unwrap();
    assert_eq!(
        c.service.session_key_file.as_deref(),
        Some(Path::new("/etc/gh/state/session.key"))
    );
}

#[test]
fn auditors_have_their_own_audience() {
    let c = Config::parse(GOOD, Path::new("/g.yaml")).unwrap();
    assert_eq!(c.audit.audience, "gatehouse-audit");
    let same = GOOD.replace(
        "  auditor_group: auditors",
        "  auditor_group: auditors\n  audience: gatehouse",
    );
    let errs = Config::parse(&same, Path::new("/g.yaml")).unwrap_err();
    assert_eq!(errs.0[0].path, "audit.audience", "{errs}");
}
