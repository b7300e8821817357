//! A built-in OIDC issuer for demos and tests: it signs tokens with an ES256 key kept in a
//! local file and publishes a discovery document and JWKS like any IdP.
//!
//! It is off unless `identity.dev_issuer.enabled` is set; anyone who can read the key file
//! can mint any identity, so it has no place in production.

use std::{
    collections::BTreeSet,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::{
    ecdsa::SigningKey,
    pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding},
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The path, under the service's REST address, where the dev issuer lives.
pub const PATH_PREFIX: &str = "/dev";

pub struct DevIssuer {
    issuer: String,
    kid: String,
    x: String,
    y: String,
    encoding: EncodingKey,
}

impl DevIssuer {
    /// Loads the key from `key_file`, creating a new one (mode 0600) if the file is missing.
    pub fn load_or_create(key_file: &Path, issuer: &str) -> anyhow::Result<Self> {
        let signing = match std::fs::read_to_string(key_file) {
            Ok(pem) => SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{} is not a PKCS#8 P-256 key: {e}", key_file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(key_file)?,
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", key_file.display())),
        };
        let pem = signing.to_pkcs8_pem(LineEnding::LF)?;
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes())?;
        let point = signing.verifying_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            anyhow::bail!("the dev issuer key has no affine coordinates");
        };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        // RFC 7638 thumbprint: a kid that changes whenever the key does.
        let thumb = Sha256::digest(format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#));
        let kid = URL_SAFE_NO_PAD.encode(thumb);
        Ok(Self {
            issuer: issuer.to_owned(),
            kid,
            x,
            y,
            encoding,
        })
    }

    /// Signs an access token.
    pub fn mint(
        &self,
        subject: &str,
        groups: &BTreeSet<String>,
        audience: &str,
        ttl_seconds: u64,
    ) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = json!({
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "groups": groups,
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &self.encoding)?)
    }

    /// Signs arbitrary claims (tests use it to forge expired or misdirected tokens).
    pub fn sign_claims(&self, claims: &Value) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "kid": self.kid, "use": "sig", "alg": "ES256",
        }]})
    }

    /// The discovery document; `base` is the issuer URL as clients fetch it.
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/jwks.json", self.issuer),
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
        })
    }
}

fn create_key(path: &Path) -> anyhow::Result<SigningKey> {
    let key = SigningKey::random(&mut rand::rngs::OsRng);
    let pem = key.to_pkcs8_pem(LineEnding::LF)?;
    crate::private_file::write_private(path, pem.as_bytes())?;
    tracing::warn!(key_file = %path.display(), "Created a new dev issuer key. Dev tokens are for demos and tests only.");
    Ok(key)
}
