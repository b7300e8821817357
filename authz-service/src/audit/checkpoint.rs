//! Signed checkpoints: every so often the writer signs (writer, seq, hash) of its chain head
//! with an Ed25519 key that the audit store does not hold.
//!
//! Someone who can write to the store can rewrite every hash after an edit, or delete the
//! newest records, and the chain alone still verifies; a checkpoint signed before that
//! catches both. Auditors verify with the public key only (`gatehouse audit public-key`).

use std::{io::Write, path::Path};

use ed25519_dalek::{
    Signature, Signer, SigningKey, Verifier, VerifyingKey,
    pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding},
};
use gatehouse_core::audit::{ChainHead, Checkpoint};

/// Signs checkpoints for one writer.
pub struct CheckpointSigner {
    key: SigningKey,
}

impl CheckpointSigner {
    /// Loads the key, or creates one (mode 0600) if the file does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(pem) => Ok(Self {
                key: SigningKey::from_pkcs8_pem(&pem)
                    .map_err(|e| anyhow::anyhow!("{} is not a PKCS#8 Ed25519 key: {e}", path.display()))?,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
                let key = SigningKey::from_bytes(&seed);
                crate::private_file::write_private(path, key.to_pkcs8_pem(LineEnding::LF)?.as_bytes())?;
                tracing::warn!(key_file = %path.display(), "Created a new audit checkpoint key. Keep it away from the audit store, and give auditors its public key.");
                Ok(Self { key })
            }
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// Loads an existing key; never creates one (what signs an export must be the key that
    /// signs the trail's checkpoints).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the checkpoint key {}: {e}", path.display()))?;
        Ok(Self {
            key: SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{} is not a PKCS#8 Ed25519 key: {e}", path.display()))?,
        })
    }

    /// Signs arbitrary bytes (a bundle's manifest).
    pub fn sign_bytes(&self, bytes: &[u8]) -> [u8; 64] {
        self.key.sign(bytes).to_bytes()
    }

    pub fn sign(&self, head: &ChainHead, signed_at: &str) -> Checkpoint {
        let bytes = Checkpoint::signed_bytes(&head.writer, head.seq, &head.hash, signed_at);
        Checkpoint {
            writer: head.writer.clone(),
            seq: head.seq,
            hash: head.hash.clone(),
            signed_at: signed_at.to_owned(),
            signature: hex::encode(self.key.sign(&bytes).to_bytes()),
        }
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn public_key_pem(&self) -> anyhow::Result<String> {
        Ok(self.public_key().to_public_key_pem(LineEnding::LF)?)
    }
}

/// Reads a public key PEM (SPKI) or, for convenience, derives it from a private key file.
pub fn load_public_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    let pem = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    if let Ok(key) = VerifyingKey::from_public_key_pem(&pem) {
        return Ok(key);
    }
    SigningKey::from_pkcs8_pem(&pem)
        .map(|k| k.verifying_key())
        .map_err(|e| anyhow::anyhow!("{} holds no Ed25519 public or private key: {e}", path.display()))
}

/// Whether a checkpoint's signature is valid under `key`.
pub fn signature_valid(key: &VerifyingKey, c: &Checkpoint) -> bool {
    bytes_signed(
        key,
        &Checkpoint::signed_bytes(&c.writer, c.seq, &c.hash, &c.signed_at),
        &c.signature,
    )
}

/// Whether `signature` (hex) is `key`'s signature of `bytes`.
pub fn bytes_signed(key: &VerifyingKey, bytes: &[u8], signature: &str) -> bool {
    let Ok(sig) = hex::decode(signature) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&sig) else {
        return false;
    };
    key.verify(bytes, &sig).is_ok()
}

/// Appends a checkpoint as one JSON line and syncs it (a new log is created 0600).
pub fn append_to_log(path: &Path, c: &Checkpoint) -> anyhow::Result<()> {
    let mut file = crate::private_file::open_private_append(path)?;
    let mut line = serde_json::to_vec(c)?;
    line.push(b'\n');
    file.write_all(&line)?;
    file.sync_data()?;
    Ok(())
}

/// Reads a checkpoint log (JSON lines). A line that does not parse is an error: the log is
/// evidence, and a damaged one must be looked at.
pub fn read_log(path: &Path) -> anyhow::Result<Vec<Checkpoint>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{}:{}: not a checkpoint: {e}", path.display(), i + 1))
        })
        .collect()
}
