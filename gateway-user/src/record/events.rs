use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
};

use serde_json::Value;

/// Appends one JSON object per line, flushed per event so that a crash loses nothing already
/// reported. Every event also goes to the log at debug level, and to the metrics (which count
/// connections, sessions, reloads and approvals from them).
pub struct EventSink {
    file: Option<Mutex<File>>,
    metrics: Option<Arc<crate::telemetry::Metrics>>,
}

impl EventSink {
    pub fn disabled() -> Self {
        Self {
            file: None,
            metrics: None,
        }
    }

    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: Some(Mutex::new(file)),
            metrics: None,
        })
    }

    /// Every event from now on also feeds `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::telemetry::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// `event` names the kind; `fields` must be a JSON object.
    pub fn emit(&self, event: &str, mut fields: Value) {
        if let Some(obj) = fields.as_object_mut() {
            obj.insert("event".into(), event.into());
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default();
            obj.insert("ts_ms".into(), ts.into());
        }
        tracing::debug!(target: "agentgate::event", "{fields}");
        if let Some(m) = &self.metrics {
            m.event(event, &fields);
        }
        let Some(file) = &self.file else { return };
        let mut line = fields.to_string();
        line.push('\n');
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()) {
            tracing::error!("cannot write event log: {e}");
        }
    }
}
