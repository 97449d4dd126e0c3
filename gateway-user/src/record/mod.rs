//! What the gateway saw. Connection and capture events go out as JSON lines (`--events`), for
//! people and tests. Sessions, statements and approvals are records: each one an entry of the
//! hash-chained audit journal in the record database ([`db`], [`journal`]), written off the data
//! path by the [`Recorder`].

mod db;
mod events;
pub mod journal;
#[cfg(test)]
mod plans;
mod recorder;
pub mod sink;
mod sqlite;

pub use db::{Appender, Db, DbError, SharedDb};
pub use events::EventSink;
pub use journal::Entry;
pub use recorder::{
    now_ms, CommandOutput, NullStore, Record, Recorder, SessionClose, SessionOpen, Statement,
};

pub const DEFAULT_RECORD_DB: &str = "/var/lib/agentgate/record.db";
