//! What the gateway saw. Connection and capture events go out as JSON lines (`--events`), for
//! people and tests; sessions and statements go through the [`Recorder`] to a SQLite store. The
//! recording issue grows the store into the tamper-evident audit store; the shapes stay.

mod events;
mod recorder;
mod sqlite;

pub use events::EventSink;
pub use recorder::{now_ms, Record, Recorder, SessionClose, SessionOpen, Statement};
#[cfg(test)]
pub use recorder::{Store, StoreError};

pub const DEFAULT_RECORD_DB: &str = "/var/lib/agentgate/record.db";
