//! The audit stream: one JSON line per refused request (and per allowed one when enabled).
//!
//! The proxy's logging phase hands an [`AuditEvent`] to [`AuditSink::record`], which only
//! enqueues it; a dedicated thread does the writing, so a slow disk never stalls requests.
//! If the queue is full the event is counted as dropped and logged, never blocking.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use serde::Serialize;

use crate::config::AuditConfig;

const QUEUE_CAPACITY: usize = 65_536;

#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    #[serde(with = "crate::state::time_rfc3339")]
    pub timestamp: SystemTime,
    pub user: String,
    pub roles: Vec<String>,
    pub method: String,
    pub path: String,
    pub route: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The HTTP status the client got from datagate's decision.
    pub status: u16,
    pub reason: String,
    pub policy_revision: u64,
    /// The request's OpenTelemetry trace id, when traces are exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// One change made through the admin API (also kept in the store, `GET /api/audit`).
#[derive(Debug, Clone, Serialize)]
pub struct AdminChangeEvent {
    #[serde(with = "crate::state::time_rfc3339")]
    pub timestamp: SystemTime,
    /// Login of the caller who made the change.
    pub actor: String,
    /// e.g. `datasource_permission.set`.
    pub action: String,
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub store_revision: i64,
    pub policy_revision: u64,
}

/// A line on the audit stream.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum AuditLine {
    Request(AuditEvent),
    AdminChange {
        #[serde(rename = "type")]
        line_type: &'static str,
        #[serde(flatten)]
        event: AdminChangeEvent,
    },
}

pub struct AuditSink {
    sender: SyncSender<AuditLine>,
    log_allowed: bool,
    dropped: AtomicU64,
}

impl AuditSink {
    /// Opens the configured output (`stdout`, `stderr` or an append-only file) and starts
    /// the writer thread.
    pub fn open(config: &AuditConfig, base_dir: &Path) -> std::io::Result<AuditSink> {
        let mut output: Box<dyn Write + Send> = match config.output.as_deref() {
            None | Some("stdout") => Box::new(std::io::stdout()),
            Some("stderr") => Box::new(std::io::stderr()),
            Some(path) => {
                let path = base_dir.join(path);
                Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?,
                )
            }
        };
        let (sender, receiver) = sync_channel::<AuditLine>(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("datagate-audit".to_string())
            .spawn(move || {
                for event in receiver {
                    match serde_json::to_string(&event) {
                        Ok(line) => {
                            if let Err(error) =
                                writeln!(output, "{line}").and_then(|()| output.flush())
                            {
                                tracing::error!(%error, "audit write failed");
                            }
                        }
                        Err(error) => tracing::error!(%error, "audit event not serialisable"),
                    }
                }
            })?;
        Ok(AuditSink {
            sender,
            log_allowed: config.log_allowed,
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether allowed requests are audited too (refusals always are).
    pub fn wants(&self, allowed: bool) -> bool {
        !allowed || self.log_allowed
    }

    pub fn record(&self, event: AuditEvent) {
        self.send(AuditLine::Request(event));
    }

    /// Admin changes are always audited, whatever `audit.log_allowed` says.
    pub fn record_admin_change(&self, event: AdminChangeEvent) {
        self.send(AuditLine::AdminChange {
            line_type: "admin_change",
            event,
        });
    }

    fn send(&self, line: AuditLine) {
        match self.sender.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(dropped, "audit queue full or closed: event dropped");
            }
        }
    }
}
