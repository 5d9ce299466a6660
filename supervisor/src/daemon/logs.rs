//! Per-capsule log files: `$ELASTOS_HOME/logs/<name>.log`, one timestamped line per output line or
//! lifecycle event, capped in size (one rotated file kept) and in rate (a capsule that floods its
//! output loses lines, counted in a note, instead of filling the disk or slowing the supervisor).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use elastos::text::sanitize_capped;

/// A log file is rotated to `<name>.log.1` when it passes this size.
pub const MAX_LOG_BYTES: u64 = 4 << 20;
/// Lines per second a capsule may log on average, and the burst it may spend at once.
const RATE_PER_SEC: f64 = 500.0;
const BURST: f64 = 2000.0;
/// Longest line kept; the rest is cut.
const MAX_LINE: usize = 4096;

struct Inner {
    file: Option<File>,
    written: u64,
    tokens: f64,
    last: Instant,
    dropped: u64,
}

pub struct CapsuleLog {
    path: PathBuf,
    inner: Mutex<Inner>,
}

pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

impl CapsuleLog {
    pub fn open(dir: &Path, name: &str) -> CapsuleLog {
        let path = log_path(dir, name);
        let file = open_append(&path);
        let written = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        CapsuleLog {
            path,
            inner: Mutex::new(Inner {
                file,
                written,
                tokens: BURST,
                last: Instant::now(),
                dropped: 0,
            }),
        }
    }

    /// One line of the capsule's output (`stream` is stdout or stderr), rate limited.
    pub fn output(&self, stream: &str, line: &str) {
        self.output_at(stream, line, Instant::now());
    }

    /// [`Self::output`] at a given instant: the rate limit's clock, injectable for its tests.
    fn output_at(&self, stream: &str, line: &str, now: Instant) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let refill = now.duration_since(g.last).as_secs_f64() * RATE_PER_SEC;
        g.tokens = (g.tokens + refill).min(BURST);
        g.last = now;
        if g.tokens < 1.0 {
            g.dropped += 1;
            return;
        }
        g.tokens -= 1.0;
        if g.dropped > 0 {
            let note = format!(
                "{} lines dropped: output faster than {RATE_PER_SEC} lines/s",
                g.dropped
            );
            g.dropped = 0;
            self.write(&mut g, "elastos", &note);
        }
        self.write(&mut g, stream, line);
    }

    /// A lifecycle event (started, exited, restarting…): never rate limited.
    pub fn event(&self, text: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.write(&mut g, "elastos", text);
    }

    fn write(&self, g: &mut Inner, stream: &str, text: &str) {
        let line = format!(
            "{} {stream} {}\n",
            humantime::format_rfc3339_millis(std::time::SystemTime::now()),
            sanitize_capped(text, MAX_LINE)
        );
        if g.written + line.len() as u64 > MAX_LOG_BYTES {
            let rotated = self.path.with_extension("log.1");
            let _ = fs::rename(&self.path, rotated);
            g.file = open_append(&self.path);
            g.written = 0;
        }
        if let Some(f) = g.file.as_mut() {
            if f.write_all(line.as_bytes()).is_ok() {
                g.written += line.len() as u64;
            }
        }
    }
}

fn open_append(path: &Path) -> Option<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_and_counted_and_control_characters_are_escaped() {
        let tmp = tempfile::tempdir().unwrap();
        let log = CapsuleLog::open(tmp.path(), "noisy");
        log.event("started");
        let t0 = Instant::now();
        for i in 0..10_000 {
            log.output_at("stdout", &format!("line {i}\x1b[31m"), t0);
        }
        // 20 ms later, ten lines' worth of budget has come back.
        log.output_at("stdout", "after", t0 + std::time::Duration::from_millis(20));
        let text = fs::read_to_string(log_path(tmp.path(), "noisy")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // The event, the burst, the note of the drop, and the line after it.
        assert_eq!(
            lines.len(),
            1 + BURST as usize + 2,
            "{} lines kept",
            lines.len()
        );
        assert!(lines[BURST as usize].contains(" stdout line 1999"));
        assert!(
            lines[BURST as usize + 1].contains("8000 lines dropped"),
            "{}",
            lines[BURST as usize + 1]
        );
        assert!(lines[BURST as usize + 2].ends_with("after"));
        assert!(text.contains("lines dropped"), "no note of the drop");
        assert!(!text.contains('\x1b'), "escape reached the log");
    }
}
