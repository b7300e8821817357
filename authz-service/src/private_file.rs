//! Files only the service's user may read: keys, the audit store, the checkpoint log, and a
//! rendered Envoy config that holds a key. Files are created 0600 and the folders the
//! service creates for them 0700; a folder or file that already exists keeps its mode.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Creates `dir` and any missing parents, mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates the folder `path` goes in, if it has one.
pub fn create_parent_dir(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => create_private_dir(dir),
        None => Ok(()),
    }
}

/// Options that create a missing file with mode 0600.
pub fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Opens `path` for appending, creating it (0600, and its folder 0700) if missing.
pub fn open_private_append(path: &Path) -> std::io::Result<File> {
    create_parent_dir(path)?;
    private_options().create(true).append(true).open(path)
}

/// Creates `path` empty (0600, and its folder 0700) unless it exists, so that a program that
/// creates it with its own default mode (SQLite: 0644) finds it already there.
pub fn ensure_private_file(path: &Path) -> std::io::Result<()> {
    create_parent_dir(path)?;
    match private_options().write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether others than the owner may read or write `path` (always false off Unix).
pub fn is_shared(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Writes `bytes` to `path` with mode 0600, atomically (a temporary file, synced, then
/// renamed over `path`), creating the folder if needed.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    create_parent_dir(path)?;
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut file = private_options().write(true).create(true).truncate(true).open(&tmp)?;
    // A temporary file left by an older run keeps its mode on open: set it.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    fn mode(path: &std::path::Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_file_is_replaced_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key.pem");
        super::write_private(&path, b"one").unwrap();
        super::write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(&dir.path().join("sub")), 0o700);
        }
    }

    #[cfg(unix)]
    #[test]
    fn appended_and_ensured_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a/b/log");
        std::io::Write::write_all(&mut super::open_private_append(&log).unwrap(), b"x").unwrap();
        assert_eq!(mode(&log), 0o600);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&dir.path().join("a/b")), 0o700);
        let db = dir.path().join("c/db");
        super::ensure_private_file(&db).unwrap();
        super::ensure_private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert!(!super::is_shared(&db));
    }
}
