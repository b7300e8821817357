use std::collections::BTreeSet;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::json;

use super::*;
use crate::test_support;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn verifies_dev_tokens_and_refuses_forgeries() {
    let dir = tempfile::tempdir().unwrap();
    let server = test_support::start(dir.path()).await;
    let state = server.state.clone();
    let dev = state.dev_issuer.as_ref().unwrap();
    let v = &state.identity;
    let issuer = state.config.identity.issuer.clone();

    let groups: BTreeSet<String> = ["eng".to_owned(), "ops".to_owned()].into();
    let good = dev.mint("alice", &groups, "gatehouse", 60).unwrap();
    let p = v.verify_header(Some(&format!("Bearer {good}"))).await.unwrap();
    assert_eq!(
        p,
        Principal {
            subject: "alice".into(),
            groups
        }
    );

    let claims = |patch: serde_json::Value| {
        let mut c = json!({"iss": issuer, "sub": "alice", "aud": "gatehouse", "exp": now() + 60, "nbf": now() - 5});
        for (k, val) in patch.as_object().unwrap() {
            c[k] = val.clone();
        }
        dev.sign_claims(&c).unwrap()
    };
    assert!(matches!(
        v.verify(&claims(json!({"exp": now() - 10}))).await,
        Err(IdentityError::Expired)
    ));
    assert!(matches!(
        v.verify(&claims(json!({"aud": "other"}))).await,
        Err(IdentityError::Invalid(_))
    ));
    assert!(matches!(
        v.verify(&claims(json!({"iss": "https://evil.example"}))).await,
        Err(IdentityError::Invalid(_))
    ));
    assert!(matches!(
        v.verify(&claims(json!({"nbf": now() + 600}))).await,
        Err(IdentityError::Invalid(_))
    ));
    assert!(matches!(
        v.verify(&claims(json!({"sub": ""}))).await,
        Err(IdentityError::Invalid(_))
    ));

    // alg: none, with the signature stripped.
    let payload = good.split('.').nth(1).unwrap();
    let none = format!(
        "{}.{payload}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#)
    );
    assert!(v.verify(&none).await.is_err());

    // HS256 "signed" with the issuer's public key material as the HMAC secret.
    let kid = dev.jwks()["keys"][0]["kid"].as_str().unwrap().to_owned();
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some(kid);
    let secret = serde_json::to_vec(&dev.jwks()["keys"][0]).unwrap();
    let hs = jsonwebtoken::encode(
        &header,
        &json!({"iss": issuer, "sub": "mallory", "aud": "gatehouse", "exp": now() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .unwrap();
    assert!(matches!(v.verify(&hs).await, Err(IdentityError::UnsupportedAlgorithm)));

    // A tampered payload.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&json!({"iss": issuer, "sub": "root", "aud": "gatehouse", "exp": now() + 60})).unwrap(),
    );
    assert!(matches!(
        v.verify(&parts.join(".")).await,
        Err(IdentityError::Invalid(_))
    ));

    assert!(matches!(v.verify_header(None).await, Err(IdentityError::Missing)));
    assert!(matches!(
        v.verify_header(Some("Basic YWxpY2U6eA==")).await,
        Err(IdentityError::Missing)
    ));
    assert!(matches!(v.verify("not-a-jwt").await, Err(IdentityError::Malformed)));
    server.stop();
}

#[tokio::test]
async fn an_unreachable_issuer_is_reported_as_unavailable() {
    let cfg = config::Identity {
        issuer: format!("http://127.0.0.1:{}", test_support::free_port()),
        audience: "gatehouse".into(),
        groups_claim: "groups".into(),
        leeway_seconds: 0,
        jwks_url: None,
        dev_issuer: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let dev = dev_issuer::DevIssuer::load_or_create(&dir.path().join("k.pem"), &cfg.issuer).unwrap();
    let token = dev.mint("alice", &BTreeSet::new(), "gatehouse", 60).unwrap();
    let v = Verifier::new(cfg);
    assert!(matches!(v.verify(&token).await, Err(IdentityError::KeysUnavailable(_))));
}

#[test]
fn bearer_tokens_are_parsed_strictly() {
    assert_eq!(bearer_token(Some("Bearer abc")), Some("abc"));
    assert_eq!(bearer_token(Some("bearer   abc ")), Some("abc"));
    assert_eq!(bearer_token(Some("Bearer ")), None);
    assert_eq!(bearer_token(Some("Token abc")), None);
    assert_eq!(bearer_token(None), None);
}

#[test]
fn groups_claim_accepts_lists_and_strings() {
    assert_eq!(
        groups_from_claim(Some(&json!(["a", "b", 3]))),
        ["a".to_owned(), "b".to_owned()].into()
    );
    assert_eq!(
        groups_from_claim(Some(&json!("a b"))),
        ["a".to_owned(), "b".to_owned()].into()
    );
    assert!(groups_from_claim(Some(&json!({"a": 1}))).is_empty());
}

#[test]
fn a_groups_claim_may_be_a_path_into_nested_claims() {
    let claims = json!({"realm_access": {"roles": ["ops", "eng"]}, "a.b": ["flat"], "roles": "x"});
    let claims = claims.as_object().unwrap();
    let at = |name: &str| groups_from_claim(claim_at(claims, name));
    assert_eq!(at("realm_access.roles"), ["eng".to_owned(), "ops".to_owned()].into());
    assert_eq!(at("a.b"), ["flat".to_owned()].into(), "a claim named with a dot wins");
    assert_eq!(at("roles"), ["x".to_owned()].into());
    assert!(at("realm_access.missing").is_empty());
}

#[tokio::test]
async fn a_cached_token_still_expires() {
    let dir = tempfile::tempdir().unwrap();
    let server = test_support::start(dir.path()).await;
    let state = server.state.clone();
    let dev = state.dev_issuer.as_ref().unwrap();
    let token = dev.mint("alice", &BTreeSet::new(), "gatehouse", 1).unwrap();
    assert!(state.identity.verify(&token).await.is_ok());
    assert!(state.identity.verify(&token).await.is_ok(), "served from the cache");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(matches!(
        state.identity.verify(&token).await,
        Err(IdentityError::Expired)
    ));
    server.stop();
}

#[tokio::test]
async fn a_token_is_good_for_its_own_audience_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = test_support::start(dir.path()).await;
    let state = server.state.clone();
    let dev = state.dev_issuer.as_ref().unwrap();
    let approvals = state.config.approvals.audience.clone();
    let groups: BTreeSet<String> = ["approvers".to_owned()].into();
    let mcp = dev.mint("bob", &groups, "gatehouse", 60).unwrap();
    let approver = dev.mint("bob", &groups, &approvals, 60).unwrap();
    let header = |t: &str| format!("Bearer {t}");
    // Each verified once for its own audience first, so a cached verification cannot leak.
    assert!(state.identity.verify_header(Some(&header(&mcp))).await.is_ok());
    assert!(
        state
            .identity
            .verify_header_for(Some(&header(&approver)), &approvals)
            .await
            .is_ok()
    );
    assert!(matches!(
        state.identity.verify_header_for(Some(&header(&mcp)), &approvals).await,
        Err(IdentityError::Invalid(_))
    ));
    assert!(matches!(
        state.identity.verify_header(Some(&header(&approver))).await,
        Err(IdentityError::Invalid(_))
    ));
    server.stop();
}
