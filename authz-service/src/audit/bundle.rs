//! Signed bundles: a directory of files and a manifest naming each with its SHA-256, the
//! manifest signed with the checkpoint key. A session export and an evidence pack are
//! bundles; `gatehouse audit verify-export` checks any of them offline with the public key.
//!
//! The signature makes every file's bytes the signer's; what the files claim (records in a
//! chain, checkpoints) is checked on top by the kind's own verifier.

use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::checkpoint::CheckpointSigner;

/// The manifest's file name; its signature is in [`SIGNATURE`].
pub const MANIFEST: &str = "manifest.json";
/// The hex Ed25519 signature over the manifest's bytes, as written.
pub const SIGNATURE: &str = "manifest.sig";
/// The bundle format this code writes and reads.
pub const FORMAT: &str = "gatehouse-bundle/1";

/// What a bundle is, and what each of its files holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// `session` or `evidence`: which verifier reads the files.
    pub kind: String,
    pub created_at: String,
    /// What the bundle is about (a session's id and status, an evidence period).
    pub about: Value,
    /// Things a reader must know (an open session, records no checkpoint vouches for yet).
    #[serde(default)]
    pub notes: Vec<String>,
    pub files: BTreeMap<String, FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

/// A file name a bundle may hold: one plain name, no directories.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && name != MANIFEST
        && name != SIGNATURE
}

/// A signed bundle in memory: its manifest and every file, the manifest and its signature
/// included, ready to be written as a directory or a tar archive.
#[derive(Debug)]
pub struct Built {
    pub manifest: Manifest,
    pub files: Vec<(String, Vec<u8>)>,
}

/// Lists `files` in a manifest of `kind` and signs it.
pub fn build(
    kind: &str,
    about: Value,
    notes: Vec<String>,
    mut files: Vec<(String, Vec<u8>)>,
    signer: &CheckpointSigner,
) -> anyhow::Result<Built> {
    let mut listed = BTreeMap::new();
    for (name, bytes) in &files {
        anyhow::ensure!(plain_name(name), "not a bundle file name: {name:?}");
        listed.insert(
            name.clone(),
            FileEntry {
                sha256: hex::encode(Sha256::digest(bytes)),
                bytes: bytes.len() as u64,
            },
        );
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        kind: kind.into(),
        created_at: super::now_rfc3339(),
        about,
        notes,
        files: listed,
    };
    let mut text = serde_json::to_vec_pretty(&manifest)?;
    text.push(b'\n');
    let signature = format!("{}\n", hex::encode(signer.sign_bytes(&text)));
    files.push((MANIFEST.into(), text));
    files.push((SIGNATURE.into(), signature.into_bytes()));
    Ok(Built { manifest, files })
}

impl Built {
    /// Writes the bundle into `dir`, which must not exist or be empty (an export never
    /// overwrites evidence). The directory is created 0700.
    pub fn write_dir(&self, dir: &Path) -> anyhow::Result<()> {
        match std::fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    anyhow::bail!("{} is not empty: an export never overwrites files", dir.display());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode_private()
                    .create(dir)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            }
            Err(e) => anyhow::bail!("cannot read {}: {e}", dir.display()),
        }
        for (name, bytes) in &self.files {
            std::fs::write(dir.join(name), bytes).map_err(|e| anyhow::anyhow!("cannot write {name}: {e}"))?;
        }
        Ok(())
    }

    /// The bundle as a tar archive whose entries sit in one directory named `top`.
    pub fn tar(&self, top: &str) -> anyhow::Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        let mtime = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        for (name, bytes) in &self.files {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o600);
            header.set_mtime(mtime);
            builder.append_data(&mut header, format!("{top}/{name}"), bytes.as_slice())?;
        }
        Ok(builder.into_inner()?)
    }
}

trait PrivateDir {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateDir for std::fs::DirBuilder {
    #[cfg(unix)]
    fn mode_private(&mut self) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, 0o700)
    }
    #[cfg(not(unix))]
    fn mode_private(&mut self) -> &mut Self {
        self
    }
}

/// A bundle whose signature and file hashes held: its manifest and each file's bytes.
#[derive(Debug)]
pub struct Opened {
    pub manifest: Manifest,
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Opened {
    /// A listed file's bytes (a kind's verifier asks only for the files its kind has).
    pub fn file(&self, name: &str) -> Result<&[u8], String> {
        self.files
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| format!("the manifest lists no {name}"))
    }
}

/// The most bytes a bundle read from a tar archive may hold.
const TAR_MAX: u64 = 4 << 30;

/// Reads every file of a bundle: a directory, or a tar archive of one (as the REST API sends).
pub fn read(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut files = BTreeMap::new();
    if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| e.to_string())?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(entry.path()).map_err(|e| format!("{name}: cannot read it: {e}"))?;
            files.insert(name, bytes);
        }
        return Ok(files);
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut archive = tar::Archive::new(std::io::Read::take(file, TAR_MAX));
    let entries = archive
        .entries()
        .map_err(|e| format!("{}: not a tar archive: {e}", path.display()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("{}: not a tar archive: {e}", path.display()))?;
        if entry.header().entry_type().is_dir() {
            continue;
        }
        // Only the base name counts: the archive is read into memory, never unpacked.
        let name = entry
            .path()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .ok_or_else(|| format!("{}: an entry without a file name", path.display()))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).map_err(|e| format!("{name}: cannot read it: {e}"))?;
        if files.insert(name.clone(), bytes).is_some() {
            return Err(format!("{name}: in the archive twice"));
        }
    }
    Ok(files)
}

/// Checks the manifest's signature under `key`, then every listed file's size and SHA-256;
/// a file the manifest does not list is an error too (something was added). The first
/// problem is returned, naming the file.
pub fn open(path: &Path, key: &VerifyingKey) -> Result<Opened, String> {
    let mut present = read(path)?;
    let text = present
        .remove(MANIFEST)
        .ok_or_else(|| format!("{MANIFEST}: missing (not an export)"))?;
    let signature = present
        .remove(SIGNATURE)
        .ok_or_else(|| format!("{SIGNATURE}: missing (the export is not signed)"))?;
    let signature = String::from_utf8_lossy(&signature);
    if !super::checkpoint::bytes_signed(key, &text, signature.trim()) {
        return Err(format!(
            "{MANIFEST}: its signature does not hold under this public key (the manifest was changed, or signed by another key)"
        ));
    }
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| format!("{MANIFEST}: not a bundle manifest: {e}"))?;
    if manifest.format != FORMAT {
        return Err(format!(
            "{MANIFEST}: format {:?}, this gatehouse reads {FORMAT:?}",
            manifest.format
        ));
    }
    let mut files = BTreeMap::new();
    for (name, entry) in &manifest.files {
        if !plain_name(name) {
            return Err(format!("{MANIFEST}: lists {name:?}, not a bundle file name"));
        }
        let bytes = present
            .remove(name)
            .ok_or_else(|| format!("{name}: listed in the manifest but missing"))?;
        if bytes.len() as u64 != entry.bytes || hex::encode(Sha256::digest(&bytes)) != entry.sha256 {
            return Err(format!(
                "{name}: its SHA-256 is not the manifest's (the file was changed)"
            ));
        }
        files.insert(name.clone(), bytes);
    }
    if let Some(name) = present.keys().next() {
        return Err(format!("{name}: not listed in the manifest (added after the export)"));
    }
    Ok(Opened { manifest, files })
}

/// Reads JSON lines, naming the file and line of the first that does not parse.
pub fn json_lines<T: serde::de::DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<Vec<T>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| format!("{name}: not UTF-8"))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{name}:{}: {e}", i + 1)))
        .collect()
}

/// Values as JSON lines.
pub fn to_json_lines<T: Serialize>(values: &[T]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for v in values {
        serde_json::to_writer(&mut out, v)?;
        out.push(b'\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    /// Builds a bundle and writes it into `dir`, as the export commands do.
    fn write(
        dir: &Path,
        kind: &str,
        about: Value,
        notes: Vec<String>,
        files: Vec<(String, Vec<u8>)>,
        signer: &CheckpointSigner,
    ) -> anyhow::Result<()> {
        build(kind, about, notes, files, signer)?.write_dir(dir)
    }

    fn signer(dir: &Path) -> CheckpointSigner {
        CheckpointSigner::load_or_create(&dir.join("key.pem")).unwrap()
    }

    fn written(tmp: &Path) -> (PathBuf, VerifyingKey) {
        let key = signer(tmp);
        let dir = tmp.join("bundle");
        write(
            &dir,
            "test",
            json!({"n": 1}),
            vec![],
            vec![
                ("a.jsonl".into(), b"{\"x\":1}\n".to_vec()),
                ("b.csv".into(), b"x\n1\n".to_vec()),
            ],
            &key,
        )
        .unwrap();
        (dir, key.public_key())
    }

    #[test]
    fn a_written_bundle_opens() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, key) = written(tmp.path());
        let opened = open(&dir, &key).unwrap();
        assert_eq!(opened.file("b.csv").unwrap(), b"x\n1\n");
        assert_eq!(opened.manifest.kind, "test");
    }

    #[test]
    fn any_change_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, key) = written(tmp.path());
        std::fs::write(dir.join("b.csv"), b"x\n2\n").unwrap();
        assert!(open(&dir, &key).unwrap_err().starts_with("b.csv:"));

        let (dir, key) = {
            let t = tmp.path().join("2");
            std::fs::create_dir(&t).unwrap();
            written(&t)
        };
        std::fs::write(dir.join("extra.txt"), b"!").unwrap();
        assert!(open(&dir, &key).unwrap_err().starts_with("extra.txt:"));
        std::fs::remove_file(dir.join("extra.txt")).unwrap();
        std::fs::remove_file(dir.join("a.jsonl")).unwrap();
        assert!(open(&dir, &key).unwrap_err().starts_with("a.jsonl:"));

        // A manifest edited to match an edited file no longer carries a valid signature.
        let (dir, key) = {
            let t = tmp.path().join("3");
            std::fs::create_dir(&t).unwrap();
            written(&t)
        };
        let text = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
        std::fs::write(dir.join(MANIFEST), text.replace("\"n\": 1", "\"n\": 2")).unwrap();
        assert!(open(&dir, &key).unwrap_err().contains("signature"));
        // And another key's signature is refused.
        let other = CheckpointSigner::load_or_create(&tmp.path().join("other.pem")).unwrap();
        let (dir, _) = {
            let t = tmp.path().join("4");
            std::fs::create_dir(&t).unwrap();
            written(&t)
        };
        assert!(open(&dir, &other.public_key()).unwrap_err().contains("signature"));
    }

    #[test]
    fn a_tar_of_a_bundle_opens_like_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let key = signer(tmp.path());
        let built = build(
            "test",
            json!({}),
            vec![],
            vec![("a.jsonl".into(), b"1\n".to_vec())],
            &key,
        )
        .unwrap();
        let tar = tmp.path().join("b.tar");
        std::fs::write(&tar, built.tar("export").unwrap()).unwrap();
        let opened = open(&tar, &key.public_key()).unwrap();
        assert_eq!(opened.file("a.jsonl").unwrap(), b"1\n");
    }

    #[test]
    fn a_bundle_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _) = written(tmp.path());
        let again = write(&dir, "test", json!({}), vec![], vec![], &signer(tmp.path()));
        assert!(again.unwrap_err().to_string().contains("not empty"));
        assert!(
            write(
                &tmp.path().join("x"),
                "t",
                json!({}),
                vec![],
                vec![("../up".into(), vec![])],
                &signer(tmp.path())
            )
            .is_err()
        );
    }
}
