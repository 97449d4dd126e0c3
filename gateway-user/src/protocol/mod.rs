//! Protocol handlers, one module per target protocol.

pub mod postgres;
pub mod tcp;
