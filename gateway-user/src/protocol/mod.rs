//! Protocol handlers, one module per target protocol.

pub mod tcp;
