use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;

use super::sign::{Outgoing, sign_request, upstream_path_and_query};
use super::*;

fn aws(tag_groups: Option<Vec<&str>>) -> AwsSigv4 {
    AwsSigv4 {
        role_arn: "arn:aws:iam::123456789012:role/mcp".into(),
        region: "us-east-1".into(),
        service: "execute-api".into(),
        session_duration: Duration::from_secs(900),
        external_id: None,
        session_policy: None,
        sts_endpoint: None,
        tag_groups: tag_groups.map(|g| g.into_iter().map(str::to_owned).collect()),
    }
}

fn caller(subject: &str, groups: &[&str]) -> Principal {
    Principal {
        subject: subject.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect::<BTreeSet<_>>(),
    }
}

fn session() -> Session {
    let credentials = Credentials::new(
        "ASIAEXAMPLE",
        "secret-key-example",
        Some("token-example".into()),
        None,
        "test",
    );
    Session {
        identity: credentials.into(),
        access_key_id: "ASIAEXAMPLE".into(),
        expires: SystemTime::now() + Duration::from_secs(900),
    }
}

const REQUEST: Outgoing<'static> = Outgoing {
    method: "POST",
    authority: "abc.execute-api.us-east-1.amazonaws.com",
    path_and_query: "/prod/mcp",
    body: br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
};

#[test]
fn session_names_follow_sts() {
    for ok in ["alice", "alice@example.com", "a.b+c=d,e_f-g", &"x".repeat(64)] {
        assert!(is_session_name(ok), "{ok}");
    }
    for bad in ["a", "", "alice smith", "alice/x", "ålice", &"x".repeat(65)] {
        assert!(!is_session_name(bad), "{bad}");
    }
}

#[test]
fn each_group_the_config_lets_through_is_a_tag() {
    let tags = session_tags(&aws(None), &caller("alice", &["eng", "approvers"])).unwrap_or_default();
    assert_eq!(
        tags,
        [
            ("group:approvers".to_owned(), "true".to_owned()),
            ("group:eng".to_owned(), "true".to_owned())
        ]
    );
    let tags = session_tags(
        &aws(Some(vec!["eng*"])),
        &caller("alice", &["eng", "engineering", "ops"]),
    )
    .unwrap_or_default();
    assert_eq!(
        tags.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(),
        ["group:eng", "group:engineering"]
    );
}

#[test]
fn groups_aws_cannot_tag_are_refused_not_dropped() {
    assert!(matches!(
        session_tags(&aws(None), &caller("alice", &["eng#1"])),
        Err(AwsError::Group(_))
    ));
    let many: Vec<String> = (0..51).map(|i| format!("g{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(matches!(
        session_tags(&aws(None), &caller("alice", &many)),
        Err(AwsError::TooManyTags)
    ));
    // Left out by tag_groups, a group that could not be a tag is no problem.
    assert!(session_tags(&aws(Some(vec!["eng"])), &caller("alice", &["eng", "eng#1"])).is_ok());
}

#[test]
fn the_signature_covers_method_path_host_body_and_time() {
    let s = session();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let sig = |r: Outgoing<'_>, t: SystemTime| {
        let headers = sign_request(&s, "us-east-1", "execute-api", r, t).unwrap_or_default();
        headers
            .into_iter()
            .map(|(name, value)| (name, value.0))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let base = sig(REQUEST, t);
    assert_eq!(
        base.keys().map(String::as_str).collect::<Vec<_>>(),
        ["authorization", "x-amz-date", "x-amz-security-token"]
    );
    let auth = &base["authorization"];
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/20270115/us-east-1/execute-api/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature="),
        "{auth}"
    );
    assert_eq!(base["x-amz-security-token"], "token-example");
    assert_eq!(sig(REQUEST, t), base, "signing is deterministic");
    for changed in [
        Outgoing {
            method: "GET",
            ..REQUEST
        },
        Outgoing {
            path_and_query: "/prod/mcp2",
            ..REQUEST
        },
        Outgoing {
            path_and_query: "/prod/mcp?x=1",
            ..REQUEST
        },
        Outgoing {
            authority: "abc.execute-api.us-east-1.amazonaws.com:8443",
            ..REQUEST
        },
        Outgoing { body: b"{}", ..REQUEST },
    ] {
        assert_ne!(sig(changed, t)["authorization"], base["authorization"], "{changed:?}");
    }
    assert_ne!(
        sig(REQUEST, t + Duration::from_secs(1))["authorization"],
        base["authorization"]
    );
}

#[test]
fn the_route_keeps_the_query_and_replaces_the_path() {
    assert_eq!(upstream_path_and_query("/prod/mcp", "/mcp/aws"), "/prod/mcp");
    assert_eq!(
        upstream_path_and_query("/prod/mcp", "/mcp/aws?a=1&b=2"),
        "/prod/mcp?a=1&b=2"
    );
}

#[test]
fn debug_output_hides_the_secrets() {
    let text = format!("{:?}", session());
    assert!(
        !text.contains("secret-key-example") && !text.contains("token-example"),
        "{text}"
    );
}
