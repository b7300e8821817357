//! A JSON-lines file (one event per line) for a log shipper to tail (Fluent Bit, Vector, a
//! Splunk forwarder). A batch is acknowledged once written and synced to disk. The file is
//! rotated when it reaches `max_bytes` or `max_age`: `trail.jsonl` becomes `trail.jsonl.1`
//! (the newest rotated), the older ones move up one, and those past `keep` are deleted. A
//! batch is never split across two files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::export;

use super::{super::Outgoing, SinkError};

#[derive(Debug)]
pub struct FileSink {
    config: export::FileSink,
    /// When the current file was started (its first write by this sink, or its creation).
    started: Option<SystemTime>,
}

impl FileSink {
    pub fn new(config: &export::FileSink) -> Self {
        Self {
            config: config.clone(),
            started: None,
        }
    }

    pub async fn send(&mut self, batch: &[Outgoing]) -> Result<(), SinkError> {
        let mut text = String::new();
        for o in batch {
            text.push_str(o.line());
            text.push('\n');
        }
        let config = self.config.clone();
        let started = self.started;
        let started = tokio::task::spawn_blocking(move || append(&config, started, text.as_bytes()))
            .await
            .map_err(|e| SinkError::new(format!("the file writer stopped: {e}")))??;
        self.started = Some(started);
        Ok(())
    }
}

/// Rotates if due, appends `bytes` and syncs; returns when the current file was started.
fn append(config: &export::FileSink, started: Option<SystemTime>, bytes: &[u8]) -> Result<SystemTime, SinkError> {
    let path = &config.path;
    let error = |what: &str, e: std::io::Error| SinkError::new(format!("cannot {what} {}: {e}", path.display()));
    let existing = std::fs::metadata(path).ok();
    let size = existing.as_ref().map_or(0, |m| m.len());
    let started = started
        .or_else(|| {
            existing
                .as_ref()
                .and_then(|m| m.created().or_else(|_| m.modified()).ok())
        })
        .unwrap_or_else(SystemTime::now);
    let too_old = config
        .max_age
        .is_some_and(|age| started.elapsed().unwrap_or(Duration::ZERO) >= age);
    let too_big = size > 0 && size + bytes.len() as u64 > config.max_bytes;
    let started = if size > 0 && (too_old || too_big) {
        rotate(path, config.keep).map_err(|e| error("rotate", e))?;
        SystemTime::now()
    } else {
        started
    };
    let file = open_append(path).map_err(|e| error("open", e))?;
    let size = whole_lines(&file).map_err(|e| error("read", e))?;
    // A batch is written whole or not at all: a failed write (a full disk) is cut off again,
    // so that the batch sent again starts on a line of its own.
    let written = (&file).write_all(bytes).and_then(|()| file.sync_data());
    if let Err(e) = written {
        let _ = file.set_len(size);
        return Err(error("write", e));
    }
    Ok(started)
}

/// Cuts a last line without its newline (what a crash in the middle of a write leaves: the
/// batch is sent again whole) and returns the file's size.
fn whole_lines(file: &std::fs::File) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let size = file.metadata()?.len();
    if size == 0 {
        return Ok(0);
    }
    let mut reader = file;
    let mut tail = vec![0u8; size.min(1 << 20) as usize];
    reader.seek(SeekFrom::Start(size - tail.len() as u64))?;
    reader.read_exact(&mut tail)?;
    if tail.last() == Some(&b'\n') {
        return Ok(size);
    }
    // A line longer than what was read is cut whole.
    let keep = match tail.iter().rposition(|b| *b == b'\n') {
        Some(at) => size - tail.len() as u64 + at as u64 + 1,
        None if size <= tail.len() as u64 => 0,
        None => size - tail.len() as u64,
    };
    file.set_len(keep)?;
    Ok(keep)
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true).read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Readable by the shipper's group, never by everyone.
        options.mode(0o640);
    }
    options.open(path)
}

/// `path` → `path.1`, `path.1` → `path.2`, …; `path.{keep}` is deleted.
fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    let numbered = |n: u32| -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    match std::fs::remove_file(numbered(keep)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    for n in (1..keep).rev() {
        match std::fs::rename(numbered(n), numbered(n + 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(path, numbered(1))?;
    // The rename is durable once the directory is synced.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, max_bytes: u64, keep: u32) -> export::FileSink {
        export::FileSink {
            path: dir.join("trail.jsonl"),
            max_bytes,
            max_age: None,
            keep,
        }
    }

    #[test]
    fn a_full_file_rotates_keeping_the_newest_and_never_splits_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), 10, 2);
        let mut started = None;
        for batch in ["a\nb\n", "c\n", "d\ne\nf\n", "g\nh\ni\nj\nk\n"] {
            started = Some(append(&c, started, batch.as_bytes()).unwrap());
        }
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        assert_eq!(read("trail.jsonl"), "g\nh\ni\nj\nk\n");
        assert_eq!(read("trail.jsonl.1"), "d\ne\nf\n");
        assert_eq!(read("trail.jsonl.2"), "a\nb\nc\n");
        assert!(!dir.path().join("trail.jsonl.3").exists(), "keep: 2");
    }

    #[test]
    fn a_line_cut_by_a_crash_is_removed_before_the_batch_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), 1 << 20, 3);
        std::fs::write(&c.path, "{\"seq\":1}\n{\"seq\":2}\n{\"se").unwrap();
        append(&c, None, b"{\"seq\":2}\n{\"seq\":3}\n").unwrap();
        let text = std::fs::read_to_string(&c.path).unwrap();
        assert_eq!(text, "{\"seq\":1}\n{\"seq\":2}\n{\"seq\":2}\n{\"seq\":3}\n");
    }

    #[test]
    fn an_old_file_rotates_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), 1 << 20, 3);
        c.max_age = Some(Duration::from_secs(60));
        let long_ago = SystemTime::now() - Duration::from_secs(120);
        append(&c, Some(SystemTime::now()), b"first\n").unwrap();
        let started = append(&c, Some(long_ago), b"second\n").unwrap();
        assert!(started.elapsed().unwrap() < Duration::from_secs(60));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("trail.jsonl.1")).unwrap(),
            "first\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("trail.jsonl")).unwrap(),
            "second\n"
        );
    }
}
