//! Terminal progress and JSON status lines.

use std::io::{IsTerminal, Write};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_engine::util::rfc3339;
use cairn_engine::Progress;
use cairn_format::{Id, Snapshot};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

/// Renders a [`Progress`] until dropped.
pub struct Reporter {
    /// Dropping it wakes the renderer at once (a sleeping poll would delay every exit).
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Show `progress` as a bar on stderr when it is a terminal, and/or as JSON status lines
    /// on stdout every second with `json`.
    pub fn start(what: &'static str, progress: Arc<Progress>, json: bool, quiet: bool) -> Reporter {
        let (stop, wake) = channel::<()>();
        let tty = std::io::stderr().is_terminal() && !quiet;
        if !tty && !json {
            return Reporter {
                stop: None,
                thread: None,
            };
        }
        let thread = std::thread::spawn(move || {
            let bar = if tty {
                let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
                b.set_style(
                    ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                Some(b)
            } else {
                None
            };
            let start = Instant::now();
            let mut last_json = Instant::now();
            while let Err(RecvTimeoutError::Timeout) = wake.recv_timeout(Duration::from_millis(100))
            {
                let files = Progress::get(&progress.files);
                let bytes = Progress::get(&progress.bytes);
                let total = Progress::get(&progress.total_bytes);
                let total_files = Progress::get(&progress.total_files);
                let errors = Progress::get(&progress.errors);
                let secs = start.elapsed().as_secs_f64().max(0.001);
                let rate = bytes as f64 / secs;
                // A fraction and an ETA only once there is a total and a rate to go by.
                let fraction = (total > 0).then(|| (bytes as f64 / total as f64).min(1.0));
                let eta = fraction
                    .filter(|_| rate > 0.0 && secs > 1.0)
                    .map(|_| (total.saturating_sub(bytes) as f64 / rate) as u64);
                if let Some(b) = &bar {
                    let files_text = if total_files > 0 {
                        format!("{files}/{total_files} files")
                    } else {
                        format!("{files} files")
                    };
                    let bytes_text = match fraction {
                        Some(f) => format!(
                            "{}/{} {:.1}%",
                            human_bytes(bytes),
                            human_bytes(total),
                            100.0 * f
                        ),
                        None => human_bytes(bytes),
                    };
                    b.set_message(format!(
                        "{what}: {files_text}, {bytes_text}, {}/s{}{}",
                        human_bytes(rate as u64),
                        eta.map(|e| format!(", ETA {}:{:02}:{:02}", e / 3600, e / 60 % 60, e % 60))
                            .unwrap_or_default(),
                        if errors > 0 {
                            format!(", {errors} errors")
                        } else {
                            String::new()
                        }
                    ));
                    b.tick();
                }
                if json && last_json.elapsed() >= Duration::from_secs(1) {
                    last_json = Instant::now();
                    let line = serde_json::json!({
                        "message_type": "status", "action": what, "seconds_elapsed": secs,
                        "percent_done": fraction.unwrap_or(0.0), "seconds_remaining": eta,
                        "files_done": files, "total_files": total_files,
                        "bytes_done": bytes, "total_bytes": total, "error_count": errors,
                    });
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                }
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
        });
        Reporter {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(crate) fn snapshot_json(id: &Id, s: &Snapshot) -> Value {
    json!({
        "id": id.to_hex(), "short_id": id.short(), "time": rfc3339(&s.time), "parent": s.parent.map(|p| p.to_hex()),
        "tree": s.tree.to_hex(), "paths": s.paths.iter().map(|p| lossy(p)).collect::<Vec<_>>(),
        "hostname": s.hostname, "username": s.username, "uid": s.uid, "gid": s.gid, "tags": s.tags,
        "excludes": s.excludes, "program_version": s.program_version, "summary": s.summary,
    })
}
