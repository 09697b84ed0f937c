//! `--event-monitor path=FILE|fd=N`: one JSON object per line for each lifecycle and migration
//! event, in Cloud Hypervisor's shape: `{"timestamp":{"secs":S,"nanos":N},"source":"vm",
//! "event":"booted","properties":null}`, the timestamp counted from the VMM's start.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

#[derive(Clone)]
pub(crate) struct EventMonitor {
    out: Option<Arc<Mutex<Box<dyn Write + Send>>>>,
    start: Instant,
}

#[derive(Serialize)]
struct Timestamp {
    secs: u64,
    nanos: u32,
}

#[derive(Serialize)]
struct Event<'a> {
    timestamp: Timestamp,
    source: &'a str,
    event: &'a str,
    properties: Option<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum EventMonitorError {
    #[error("--event-monitor takes path=FILE or fd=N, not '{0}'")]
    Syntax(String),
    #[error("--event-monitor: cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--event-monitor: fd {0} is not an open file descriptor")]
    BadFd(i32),
}

impl EventMonitor {
    /// A monitor that writes nothing.
    pub(crate) fn none() -> Self {
        EventMonitor {
            out: None,
            start: Instant::now(),
        }
    }

    /// Parses `path=FILE` (created or appended to) or `fd=N` (an open descriptor this process
    /// inherited, which it then owns).
    pub(crate) fn open(arg: &str) -> Result<Self, EventMonitorError> {
        let out: Box<dyn Write + Send> = match arg.split_once('=') {
            Some(("path", path)) if !path.is_empty() => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| EventMonitorError::Open {
                        path: path.to_string(),
                        source,
                    })?,
            ),
            Some(("fd", n)) => {
                let fd: i32 = n
                    .parse()
                    .ok()
                    .filter(|fd| *fd > 2)
                    .ok_or_else(|| EventMonitorError::Syntax(arg.to_string()))?;
                // SAFETY: F_GETFD only reads the descriptor's flags; it tells whether `fd` is
                // open in this process.
                if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                    return Err(EventMonitorError::BadFd(fd));
                }
                // SAFETY: `fd` is open (checked above) and was handed to this process for the
                // event monitor: nothing else in the VMM uses or closes it, so the File owns it.
                Box::new(unsafe { std::fs::File::from_raw_fd(fd) })
            }
            _ => return Err(EventMonitorError::Syntax(arg.to_string())),
        };
        Ok(EventMonitor {
            out: Some(Arc::new(Mutex::new(out))),
            start: Instant::now(),
        })
    }

    /// Writes one event; a write error is logged, never fatal.
    pub(crate) fn emit(&self, source: &str, event: &str, properties: Option<serde_json::Value>) {
        let Some(out) = &self.out else {
            return;
        };
        let t = self.start.elapsed();
        let e = Event {
            timestamp: Timestamp {
                secs: t.as_secs(),
                nanos: t.subsec_nanos(),
            },
            source,
            event,
            properties,
        };
        let Ok(mut line) = serde_json::to_vec(&e) else {
            return;
        };
        line.push(b'\n');
        let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = w.write_all(&line).and_then(|()| w.flush()) {
            log::warn!("event monitor: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_lines_in_cloud_hypervisors_shape() {
        let path = std::env::temp_dir().join(format!("vmm-events-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let m = EventMonitor::open(&format!("path={}", path.display())).unwrap();
        m.emit("vm", "booted", None);
        m.emit(
            "migration",
            "finished",
            Some(serde_json::json!({"downtime_ms": 2.5})),
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["source"], "vm");
        assert_eq!(lines[0]["event"], "booted");
        assert!(lines[0]["properties"].is_null());
        assert!(lines[0]["timestamp"]["secs"].is_u64() && lines[0]["timestamp"]["nanos"].is_u64());
        assert_eq!(lines[1]["properties"]["downtime_ms"], 2.5);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn bad_arguments_are_errors() {
        for arg in ["", "file=/x", "path=", "fd=x", "fd=1"] {
            assert!(
                matches!(EventMonitor::open(arg), Err(EventMonitorError::Syntax(_))),
                "{arg}"
            );
        }
        assert!(matches!(
            EventMonitor::open("fd=987654"),
            Err(EventMonitorError::BadFd(987654))
        ));
        assert!(matches!(
            EventMonitor::open("path=/nonexistent-dir/events"),
            Err(EventMonitorError::Open { .. })
        ));
    }
}
