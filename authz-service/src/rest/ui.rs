//! The approvers' page (`/ui`): a static page whose script lists pending approvals and
//! approves or denies them through `/v1/approvals` with the approver's own bearer token.
//! The auditors' replay page (`/ui/sessions`, `/ui/sessions/{id}`): sessions and their
//! timelines through `/v1/sessions` with the auditor's own bearer token.
//!
//! The page, its script and its style are compiled in and served as separate routes so the
//! page can forbid inline script and style (CSP). The page itself needs no authentication:
//! it holds no data, and every API call it makes carries the approver's token.

use std::sync::Arc;

use axum::{
    Router,
    http::{HeaderName, header},
    response::IntoResponse,
    routing::get,
};

use crate::AppState;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");
const SESSIONS_HTML: &str = include_str!("ui/sessions.html");
const SESSIONS_JS: &str = include_str!("ui/sessions.js");
const SESSIONS_CSS: &str = include_str!("ui/sessions.css");

/// Same-origin script, style and API calls only; no frames, forms, plugins or base URL.
/// Caller-supplied text (tool names, arguments) is rendered as text, and this is the net
/// under that rule.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(script))
        .route("/ui/app.css", get(style))
        .route("/ui/sessions", get(sessions))
        .route("/ui/sessions/{id}", get(sessions))
        .route("/ui/sessions.js", get(sessions_script))
        .route("/ui/sessions.css", get(sessions_style))
}

/// The replay page, for the list and for one session alike (its script reads the path).
async fn sessions() -> impl IntoResponse {
    served("text/html; charset=utf-8", SESSIONS_HTML)
}

async fn sessions_script() -> impl IntoResponse {
    served("text/javascript; charset=utf-8", SESSIONS_JS)
}

async fn sessions_style() -> impl IntoResponse {
    served("text/css; charset=utf-8", SESSIONS_CSS)
}

fn served(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    let headers: [(HeaderName, &'static str); 6] = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    (headers, body)
}

async fn index() -> impl IntoResponse {
    served("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> impl IntoResponse {
    served("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> impl IntoResponse {
    served("text/css; charset=utf-8", APP_CSS)
}

#[cfg(test)]
mod tests {
    use axum::{
        body::Body,
        http::{Request, StatusCode},
    };
    use tower::ServiceExt;

    use super::CSP;
    use crate::{rest, test_support};

    async fn get(path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let dir = tempfile::tempdir().unwrap();
        let server = test_support::start(dir.path()).await;
        let resp = rest::router(server.state.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        server.stop();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (parts.status, parts.headers, String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn header<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> &'a str {
        headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    #[tokio::test]
    async fn the_replay_page_is_served_like_the_approvers_page() {
        for path in ["/ui/sessions", "/ui/sessions/s_0123abcd"] {
            let (status, headers, body) = get(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(header(&headers, "content-security-policy"), CSP, "{path}");
            assert!(
                body.contains(r#"<script src="/ui/sessions.js" defer></script>"#),
                "{body}"
            );
            assert!(!body.contains("<script>") && !body.contains("<style") && !body.contains(" style="));
        }
        for path in ["/ui/sessions.js", "/ui/sessions.css"] {
            let (status, headers, body) = get(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(header(&headers, "content-security-policy"), CSP, "{path}");
            assert!(!body.is_empty());
        }
    }

    #[tokio::test]
    async fn the_page_is_served_with_a_strict_policy() {
        let (status, headers, body) = get("/ui").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
        assert_eq!(
            header(&headers, "content-security-policy"),
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'"
        );
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        assert_eq!(header(&headers, "referrer-policy"), "no-referrer");
        assert_eq!(header(&headers, "cache-control"), "no-store");
        assert!(body.contains(r#"<script src="/ui/app.js" defer></script>"#), "{body}");
        assert!(body.contains(r#"<link rel="stylesheet" href="/ui/app.css">"#), "{body}");
        // Nothing inline for the CSP to have to allow, and nothing from elsewhere.
        assert!(!body.contains("<script>") && !body.contains("<style") && !body.contains(" style="));
        assert!(!body.contains("http://") && !body.contains("https://"));
    }

    #[tokio::test]
    async fn script_and_style_have_their_own_types_and_the_same_headers() {
        for (path, content_type) in [
            ("/ui/app.js", "text/javascript; charset=utf-8"),
            ("/ui/app.css", "text/css; charset=utf-8"),
        ] {
            let (status, headers, body) = get(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(header(&headers, "content-type"), content_type, "{path}");
            assert_eq!(header(&headers, "content-security-policy"), CSP, "{path}");
            assert_eq!(header(&headers, "x-content-type-options"), "nosniff", "{path}");
            assert_eq!(header(&headers, "cache-control"), "no-store", "{path}");
            assert!(!body.is_empty(), "{path}");
        }
    }

    #[tokio::test]
    async fn the_script_renders_data_as_text_only() {
        for script in ["/ui/app.js", "/ui/sessions.js"] {
            let (_, _, js) = get(script).await;
            no_markup_sinks(script, &js);
        }
    }

    fn no_markup_sinks(script: &str, js: &str) {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!js.contains(sink), "{script} must not use {sink}");
        }
        assert!(!js.contains("console."), "{script} must not log (tokens)");
    }

    #[tokio::test]
    async fn an_unknown_ui_path_is_a_json_404() {
        let (status, _, body) = get("/ui/nope.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("no such endpoint"), "{body}");
    }
}
