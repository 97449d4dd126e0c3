//! What the gateway saw, for people and for tests: connection and capture events as JSON lines.
//! The recording issue replaces this with the tamper-evident session store; the event shapes
//! stay.

mod events;

pub use events::EventSink;
