//! The service's half of session binding (see `gatehouse_core::session`): it holds the
//! secret, gives the filter each request's binding key, and checks the session id a caller
//! sends. The secret never leaves the service; replicas share it through
//! `service.session_key_file`.

use std::fmt;

use gatehouse_core::session;

use crate::config::Config;

/// The secret that session tags are keyed with.
pub struct SessionSecret(Vec<u8>);

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecret(<secret>)")
    }
}

/// What a caller's `Mcp-Session-Id` turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCheck {
    /// No session id: a new session (initialize) or a stateless server.
    None,
    /// The caller's own session: forward the upstream's id.
    Bound(String),
    /// Not a session this caller opened on this upstream (the upstream's part, for records).
    Foreign(String),
}

impl SessionSecret {
    /// The key file's secret (created if missing), or a random one for this process only:
    /// then sessions end when the service restarts and replicas cannot share them.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        match &config.service.session_key_file {
            Some(path) => {
                let key = crate::masking::load_or_create_key(path, "session key")?;
                Ok(Self(hex::decode(key)?))
            }
            None => {
                tracing::info!(
                    "No service.session_key_file: MCP sessions are bound with a key of this process only \
                     (they end when it restarts, and replicas do not share them)."
                );
                Ok(Self(rand::random::<[u8; 32]>().to_vec()))
            }
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// A key for another purpose, derived from the secret under `label` (HMAC-SHA-256): the
    /// replicas share it as they share the secret.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        use hmac::Mac;
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The key that tags `subject`'s sessions on `upstream` (for the filter, hex).
    pub fn binding_key(&self, subject: &str, upstream: &str) -> Option<[u8; 32]> {
        session::binding_key(&self.0, subject, upstream)
    }

    /// Checks the session id a caller sent.
    pub fn check(&self, subject: &str, upstream: &str, presented: Option<&str>) -> SessionCheck {
        let Some(presented) = presented else {
            return SessionCheck::None;
        };
        match self
            .binding_key(subject, upstream)
            .and_then(|key| session::unbind(&key, presented).map(str::to_owned))
        {
            Some(id) => SessionCheck::Bound(id),
            None => SessionCheck::Foreign(session::upstream_part(presented).to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_caller_who_opened_a_session_gets_it_back() {
        let secret = SessionSecret::from_bytes(b"0123456789abcdef");
        let key = secret.binding_key("alice", "everything").unwrap();
        let bound = session::bind(&key, "sid-1").unwrap();
        assert_eq!(secret.check("alice", "everything", None), SessionCheck::None);
        assert_eq!(
            secret.check("alice", "everything", Some(&bound)),
            SessionCheck::Bound("sid-1".into())
        );
        for (who, upstream) in [("bob", "everything"), ("alice", "demo")] {
            assert_eq!(
                secret.check(who, upstream, Some(&bound)),
                SessionCheck::Foreign("sid-1".into())
            );
        }
        assert_eq!(
            secret.check("alice", "everything", Some("sid-1")),
            SessionCheck::Foreign("sid-1".into())
        );
        assert!(!format!("{secret:?}").contains("0123"));
    }
}
